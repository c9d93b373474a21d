//! The durable spool: when Kafka cannot take a standard event within `spool.handoff_after`,
//! the event is appended to an fsynced on-disk journal and the relay answers 202 `spooled`.
//! A background task replays the journal to Kafka in receive order and deletes what Kafka
//! has acknowledged. The journal survives restarts and crashes (see [`journal`]).
//!
//! Exactly once where it can be known: a record whose direct publish attempt was still in
//! flight at the handoff is held back until that attempt's delivery report says how it ended;
//! if it succeeded, the record is only marked done, never replayed. Only an attempt that was in
//! flight when the process died can end up twice in Kafka; `fp-event-id` lets consumers drop it.

pub mod journal;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use self::journal::{ActiveSegment, Entry, Location, SpooledEvent};
use crate::kafka::publisher::{PendingDelivery, Publisher};
use crate::kafka::record::OutboundRecord;
use crate::metrics::Metrics;

/// A segment is closed and a new one started beyond this size.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Size of a done-marker's frame: header, kind, sequence number.
const DONE_FRAME_LEN: u64 = journal::FRAME_HEADER as u64 + 1 + 8;
/// Most records written per fsync.
const MAX_BATCH: usize = 512;
/// First and longest pause between replay attempts while Kafka refuses.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Why a record could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({bytes} of {max} bytes)")]
    Full { bytes: u64, max: u64 },
    #[error("cannot write the spool: {0}")]
    Io(#[from] io::Error),
}

/// Where a spooled record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Being written; not durable yet.
    Writing,
    /// Durable, but the direct publish attempt has not reported yet.
    InFlight,
    /// Durable and waiting for replay.
    Ready,
}

#[derive(Debug)]
struct Pending {
    location: Option<Location>,
    received_ms: u64,
    status: Status,
}

#[derive(Debug, Default)]
struct State {
    /// Not yet in Kafka, by sequence number (receive order).
    pending: BTreeMap<u64, Pending>,
    /// Per segment: pending records in it, and its size.
    segments: BTreeMap<u64, (usize, u64)>,
    /// Total bytes of all segments.
    bytes: u64,
}

/// One write for the writer thread.
struct WriteRequest {
    frame: Vec<u8>,
    reply: oneshot::Sender<io::Result<(u64, u64)>>,
}

/// The spool.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Sequence numbers in receive order; taken together with the channel send.
    order: Mutex<(u64, mpsc::Sender<WriteRequest>)>,
    state: Mutex<State>,
    /// Wakes the replay task.
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering every record not yet in Kafka.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, SpoolError> {
        std::fs::create_dir_all(dir)?;
        let mut state = State::default();
        let mut events = BTreeMap::new();
        let mut done = std::collections::HashSet::new();
        let mut corrupt = 0;
        let segments = journal::list_segments(dir)?;
        for &id in &segments {
            let scan = journal::scan(dir, id)?;
            corrupt += scan.corrupt;
            state.segments.insert(id, (0, scan.bytes));
            state.bytes += scan.bytes;
            done.extend(scan.done);
            for (event, location) in scan.events {
                events.insert(event.seq, (event.received_ms, location));
            }
        }
        let next_seq = events
            .keys()
            .next_back()
            .map_or(0, |s| s + 1)
            .max(done.iter().max().map_or(0, |s| s + 1));
        for (seq, (received_ms, location)) in
            events.into_iter().filter(|(seq, _)| !done.contains(seq))
        {
            state
                .segments
                .get_mut(&location.segment)
                .expect("scanned")
                .0 += 1;
            state.pending.insert(
                seq,
                Pending {
                    location: Some(location),
                    received_ms,
                    status: Status::Ready,
                },
            );
        }
        if corrupt > 0 {
            tracing::error!(corrupt, dir = %dir.display(), "skipped damaged spool records (torn or corrupt); they will not be replayed");
        }
        if !state.pending.is_empty() {
            tracing::warn!(
                records = state.pending.len(),
                "found spooled events not yet in Kafka; replaying them"
            );
        }
        let active = ActiveSegment::create(dir, segments.last().map_or(0, |id| id + 1))?;
        state.segments.insert(active.id, (0, 0));
        let (sender, receiver) = mpsc::channel();
        let writer_dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("fp-relay-spool".into())
            .spawn(move || write_loop(&writer_dir, active, &receiver))?;
        metrics.spool_corrupt_records.inc_by(corrupt);
        let spool = Arc::new(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            order: Mutex::new((next_seq, sender)),
            state: Mutex::new(state),
            wake: Notify::new(),
            metrics,
        });
        spool.delete_finished_segments();
        spool.refresh_metrics();
        Ok(spool)
    }

    /// True while records wait for Kafka: new events queue behind them to keep receive order.
    pub fn has_backlog(&self) -> bool {
        !self
            .state
            .lock()
            .expect("lock not poisoned")
            .pending
            .is_empty()
    }

    /// Appends `record` durably. With `attempt`, the record's direct publish is still in flight:
    /// it is replayed only if that attempt fails.
    pub async fn append(
        self: &Arc<Self>,
        record: &OutboundRecord,
        received: SystemTime,
        attempt: Option<PendingDelivery>,
    ) -> Result<u64, SpoolError> {
        let received_ms = received
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (reply, done) = oneshot::channel();
        let (seq, frame_len) = {
            let mut order = self.order.lock().expect("lock not poisoned");
            let seq = order.0;
            let frame = journal::encode(&Entry::Event(to_spooled(record, seq, received_ms)));
            {
                let mut state = self.state.lock().expect("lock not poisoned");
                if state.bytes + frame.len() as u64 > self.max_bytes {
                    return Err(SpoolError::Full {
                        bytes: state.bytes,
                        max: self.max_bytes,
                    });
                }
                state.pending.insert(
                    seq,
                    Pending {
                        location: None,
                        received_ms,
                        status: Status::Writing,
                    },
                );
            }
            order.0 += 1;
            let len = frame.len();
            if order.1.send(WriteRequest { frame, reply }).is_err() {
                self.state
                    .lock()
                    .expect("lock not poisoned")
                    .pending
                    .remove(&seq);
                return Err(SpoolError::Io(io::Error::other("the spool writer stopped")));
            }
            (seq, len as u64)
        };
        let written = done
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the spool writer stopped")));
        let (segment, offset) = match written {
            Ok(position) => position,
            Err(error) => {
                self.state
                    .lock()
                    .expect("lock not poisoned")
                    .pending
                    .remove(&seq);
                return Err(SpoolError::Io(error));
            }
        };
        {
            let mut state = self.state.lock().expect("lock not poisoned");
            let entry = state.segments.entry(segment).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += frame_len;
            state.bytes += frame_len;
            if let Some(pending) = state.pending.get_mut(&seq) {
                let len = u32::try_from(frame_len).expect("frames are small")
                    - journal::FRAME_HEADER as u32;
                pending.location = Some(Location {
                    segment,
                    offset,
                    len,
                });
                pending.status = if attempt.is_some() {
                    Status::InFlight
                } else {
                    Status::Ready
                };
            }
        }
        self.metrics.spooled.inc();
        self.refresh_metrics();
        match attempt {
            Some(attempt) => {
                let spool = self.clone();
                tokio::spawn(async move {
                    let delivered = attempt.outcome().await.is_ok();
                    spool.settle(seq, delivered).await;
                });
            }
            None => self.wake.notify_one(),
        }
        Ok(seq)
    }

    /// The in-flight attempt for `seq` ended: delivered means done, otherwise replay it.
    async fn settle(&self, seq: u64, delivered: bool) {
        if delivered {
            self.mark_done(seq).await;
        } else {
            if let Some(pending) = self
                .state
                .lock()
                .expect("lock not poisoned")
                .pending
                .get_mut(&seq)
            {
                pending.status = Status::Ready;
            }
            self.wake.notify_one();
        }
    }

    /// Records durably that `seq` is in Kafka, forgets it, and deletes finished segments.
    async fn mark_done(&self, seq: u64) {
        let (reply, done) = oneshot::channel();
        let sent = {
            let order = self.order.lock().expect("lock not poisoned");
            order
                .1
                .send(WriteRequest {
                    frame: journal::encode(&Entry::Done(seq)),
                    reply,
                })
                .is_ok()
        };
        let written = if sent { done.await.ok() } else { None };
        let mut state = self.state.lock().expect("lock not poisoned");
        if let Some(Ok((segment, _))) = written {
            let marker = DONE_FRAME_LEN;
            state.segments.entry(segment).or_insert((0, 0)).1 += marker;
            state.bytes += marker;
        }
        if let Some(pending) = state.pending.remove(&seq) {
            if let Some(location) = pending.location {
                if let Some(segment) = state.segments.get_mut(&location.segment) {
                    segment.0 = segment.0.saturating_sub(1);
                }
            }
        }
        drop(state);
        self.delete_finished_segments();
        self.refresh_metrics();
    }

    /// Deletes segments, oldest first, while they hold nothing pending (never the newest).
    fn delete_finished_segments(&self) {
        let mut state = self.state.lock().expect("lock not poisoned");
        let newest = state.segments.keys().next_back().copied();
        while let Some((&id, &(pending, bytes))) = state.segments.iter().next() {
            if pending > 0 || Some(id) == newest {
                break;
            }
            match std::fs::remove_file(journal::segment_path(&self.dir, id)) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(%error, segment = id, "cannot delete a finished spool segment");
                    break;
                }
            }
            state.segments.remove(&id);
            state.bytes = state.bytes.saturating_sub(bytes);
        }
    }

    /// Replays pending records to Kafka in receive order until `stop`.
    pub async fn replay(
        self: Arc<Self>,
        publisher: Arc<Publisher>,
        ack_timeout: Duration,
        stop: CancellationToken,
    ) {
        let mut pause = RETRY_MIN;
        loop {
            let head = {
                let state = self.state.lock().expect("lock not poisoned");
                state
                    .pending
                    .iter()
                    .next()
                    .map(|(seq, p)| (*seq, p.status, p.location))
            };
            let (seq, location) = match head {
                Some((seq, Status::Ready, Some(location))) => (seq, location),
                // Nothing, or the head is still being written or still in flight: wait.
                _ => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            };
            let dir = self.dir.clone();
            let event = match tokio::task::spawn_blocking(move || {
                journal::read_event(&dir, location)
            })
            .await
            {
                Ok(Ok(event)) => event,
                Ok(Err(error)) => {
                    tracing::error!(%error, seq, "a spooled record is damaged; skipping it");

                    self.metrics.spool_corrupt_records.inc();
                    self.mark_done(seq).await;
                    continue;
                }
                Err(_) => return,
            };
            let record = from_spooled(event);
            match publisher
                .publish(&record, tokio::time::Instant::now() + ack_timeout)
                .await
            {
                Ok(_) => {
                    self.metrics.spool_replayed.inc();
                    self.mark_done(seq).await;
                    pause = RETRY_MIN;
                }
                Err(error) => {
                    tracing::warn!(%error, seq, ?pause, "replay to Kafka failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Updates the spool gauges (also called at every scrape, for the oldest record's age).
    pub fn refresh_metrics(&self) {
        let state = self.state.lock().expect("lock not poisoned");
        self.metrics
            .spool_bytes
            .set(i64::try_from(state.bytes).unwrap_or(i64::MAX));
        self.metrics
            .spool_records
            .set(i64::try_from(state.pending.len()).unwrap_or(i64::MAX));
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let oldest = state
            .pending
            .values()
            .next()
            .map_or(0, |p| now_ms.saturating_sub(p.received_ms));
        self.metrics
            .spool_oldest_age_seconds
            .set(oldest as f64 / 1000.0);
    }
}

fn to_spooled(record: &OutboundRecord, seq: u64, received_ms: u64) -> SpooledEvent {
    SpooledEvent {
        seq,
        received_ms,
        topic: record.topic.clone(),
        key: record.key.clone(),
        headers: record
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        payload: record.payload.clone(),
    }
}

fn from_spooled(event: SpooledEvent) -> OutboundRecord {
    OutboundRecord {
        topic: event.topic,
        key: event.key,
        payload: event.payload,
        headers: event
            .headers
            .into_iter()
            .map(|(k, v)| (k.into(), v))
            .collect(),
    }
}

/// The writer thread: appends what arrives, fsyncs once per batch (group commit), rotates
/// segments, and answers each write with its position once it is durable.
fn write_loop(dir: &Path, mut active: ActiveSegment, requests: &mpsc::Receiver<WriteRequest>) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let mut positions = Vec::with_capacity(batch.len());
        let mut failure = None;
        for request in &batch {
            match active.append(&request.frame) {
                Ok(offset) => positions.push((active.id, offset)),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        if failure.is_none() {
            failure = active.sync().err();
        }
        match failure {
            None => {
                for (request, position) in batch.into_iter().zip(positions) {
                    let _ = request.reply.send(Ok(position));
                }
            }
            Some(error) => {
                tracing::error!(%error, "spool write failed");
                for request in batch {
                    let _ = request
                        .reply
                        .send(Err(io::Error::new(error.kind(), error.to_string())));
                }
            }
        }
        if active.len >= SEGMENT_BYTES {
            match ActiveSegment::create(dir, active.id + 1) {
                Ok(next) => active = next,
                Err(error) => {
                    tracing::error!(%error, "cannot start a new spool segment; continuing in the current one")
                }
            }
        }
    }
}
