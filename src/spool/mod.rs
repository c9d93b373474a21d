//! The durable spool: when Kafka cannot take a standard event within `spool.handoff_after`,
//! the event is appended to an fsynced on-disk journal and the relay answers 202 `spooled`.
//! A background task replays the journal to Kafka in receive order and deletes what Kafka
//! has acknowledged. The journal survives restarts and crashes (see [`journal`]).
//!
//! Exactly once where it can be known: a record whose direct publish attempt was still in
//! flight at the handoff is held back until that attempt's delivery report says how it ended;
//! if it succeeded, the record is only marked done, never replayed. Only an attempt that was in
//! flight when the process died can end up twice in Kafka; `fp-event-id` lets consumers drop it.
//!
//! Layout: [`journal`] (the on-disk format), [`index`] (what is pending where), [`writer`]
//! (the thread that appends, fsyncs and registers), [`replay`] (back to Kafka), [`fault`]
//! (the seam tests use to fail its file operations).

pub mod fault;
pub mod index;
pub mod journal;
pub mod replay;
pub mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, Notify};

use self::fault::Faults;
use self::index::{Index, Status};
use self::journal::{ActiveSegment, Entry, Found, SpooledEvent};
use self::writer::{WriteRequest, Writer};
use crate::kafka::publisher::PendingDelivery;
use crate::kafka::record::OutboundRecord;
use crate::metrics::Metrics;

/// Free space the spool always leaves on its filesystem, whatever `spool.max_bytes` says: the
/// done-markers that let it shrink need room too, and so does everything else on the disk.
pub const MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;

/// Why a record could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({bytes} of {max} bytes)")]
    Full { bytes: u64, max: u64 },
    #[error("the spool's disk is nearly full ({free} bytes free)")]
    DiskFull { free: u64 },
    #[error("cannot write the spool: {0}")]
    Io(#[from] io::Error),
}

/// How often the disk is probed after a failed write.
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The file beside the segments that keeps records no topic would take.
pub const QUARANTINE_FILE: &str = "quarantine.log";

/// The header a quarantined record carries: why Kafka refused it and its dead letter.
pub const QUARANTINE_REASON_HEADER: &str = "fp-quarantine-reason";

/// Hands out sequence numbers in the order writes reach the writer thread.
struct Sequencer {
    next: u64,
    writer: mpsc::Sender<WriteRequest>,
}

/// The spool.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Taken for each write, so sequence order is write order.
    sequencer: Mutex<Sequencer>,
    /// What is pending where; shared with the writer thread.
    index: Arc<Mutex<Index>>,
    /// True after a write failed, until a write or a probe of the disk succeeds: readiness
    /// says the spool cannot accept meanwhile.
    failing: AtomicBool,
    /// True while a task probes the disk after a failed write.
    probing: AtomicBool,
    /// The file operations' fault-injection seam ([`Faults::none`] outside tests).
    faults: Faults,
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
        Self::open_with_faults(dir, max_bytes, metrics, Faults::none())
    }

    /// [`Spool::open`] with injected file faults.
    ///
    /// Recovery keeps only where each pending record is (sequence, location, time), never a
    /// payload: start-up memory does not grow with the spool (payloads are read back at replay,
    /// a batch at a time). Done-markers always follow their event, so scanning segments oldest
    /// first and forgetting an event at its marker leaves exactly what Kafka does not have.
    pub fn open_with_faults(
        dir: &Path,
        max_bytes: u64,
        metrics: Arc<Metrics>,
        faults: Faults,
    ) -> Result<Arc<Self>, SpoolError> {
        journal::create_private_dir(dir)?;
        let segments = journal::list_segments(dir)?;
        let active = ActiveSegment::create(dir, segments.last().map_or(0, |id| id + 1), &faults)?;
        let mut index = Index::new(active.id);
        let (mut next_seq, mut corrupt) = (0, 0);
        for &id in &segments {
            let scan = journal::scan(dir, id, &faults, |found| match found {
                Found::Event {
                    seq,
                    received_ms,
                    location,
                } => {
                    next_seq = next_seq.max(seq + 1);
                    index.recover(seq, received_ms, location);
                }
                Found::Done(seq) => {
                    next_seq = next_seq.max(seq + 1);
                    index.done(seq);
                }
            })?;
            corrupt += scan.corrupt;
            index.add_segment(id, scan.bytes);
        }
        if corrupt > 0 {
            tracing::error!(corrupt, dir = %dir.display(), "skipped damaged spool records (torn or corrupt); they will not be replayed");
        }
        if !index.is_empty() {
            tracing::warn!(
                records = index.len(),
                "found spooled events not yet in Kafka; replaying them"
            );
        }
        let index = Arc::new(Mutex::new(index));
        let (sender, receiver) = mpsc::channel();
        let writer = Writer::new(dir, active, index.clone(), faults.clone());
        std::thread::Builder::new()
            .name("fp-relay-spool".into())
            .spawn(move || writer.run(&receiver))?;
        metrics.spool_corrupt_records.inc_by(corrupt);
        let spool = Arc::new(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            sequencer: Mutex::new(Sequencer {
                next: next_seq,
                writer: sender,
            }),
            index,
            failing: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            faults,
            wake: Notify::new(),
            metrics,
        });
        spool.delete_finished_segments();
        spool.refresh_metrics();
        Ok(spool)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().expect("lock not poisoned")
    }

    /// Records not yet in Kafka.
    pub fn pending(&self) -> usize {
        self.index().len()
    }

    /// True while records wait for Kafka: new events queue behind them to keep receive order.
    pub fn has_backlog(&self) -> bool {
        !self.index().is_empty()
    }

    /// True when the spool can take events: room under `max_bytes` and on the disk, and the
    /// last write succeeded. With the spool on, this is what readiness means during an outage.
    pub fn accepting(&self) -> bool {
        !self.failing.load(Ordering::Acquire)
            && self.index().bytes() < self.max_bytes
            && free_bytes(&self.dir).is_none_or(|free| free > MIN_FREE_BYTES)
    }

    /// Appends `record` durably. With `attempt`, the record's direct publish is still in flight:
    /// it is replayed only if that attempt fails.
    ///
    /// The work runs in its own task: a client that hangs up (dropping the request future)
    /// cannot leave a record half-registered, which used to stall replay until a restart.
    pub async fn append(
        self: &Arc<Self>,
        record: &OutboundRecord,
        received: SystemTime,
        attempt: Option<PendingDelivery>,
    ) -> Result<u64, SpoolError> {
        let received_ms = received
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let spool = self.clone();
        let frame_source = record.clone();
        tokio::spawn(async move { spool.append_owned(frame_source, received_ms, attempt).await })
            .await
            .unwrap_or_else(|_| Err(SpoolError::Io(io::Error::other("the spool task failed"))))
    }

    async fn append_owned(
        self: Arc<Self>,
        record: OutboundRecord,
        received_ms: u64,
        attempt: Option<PendingDelivery>,
    ) -> Result<u64, SpoolError> {
        let status = if attempt.is_some() {
            Status::InFlight
        } else {
            Status::Ready
        };
        let (reply, written) = oneshot::channel();
        let seq = {
            let mut sequencer = self.sequencer.lock().expect("lock not poisoned");
            let seq = sequencer.next;
            let frame = journal::encode(&Entry::Event(to_spooled(&record, seq, received_ms)));
            self.check_room(frame.len() as u64)?;
            self.index().reserve(seq, received_ms);
            let request = WriteRequest {
                frame,
                event: Some((seq, status)),
                reply,
            };
            if sequencer.writer.send(request).is_err() {
                self.index().unreserve(seq);
                return Err(SpoolError::Io(io::Error::other("the spool writer stopped")));
            }
            sequencer.next += 1;
            seq
        };
        let result = written
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the spool writer stopped")));
        if let Err(error) = result {
            self.index().unreserve(seq);
            self.failing.store(true, Ordering::Release);
            self.probe_until_writable();
            return Err(SpoolError::Io(error));
        }
        self.failing.store(false, Ordering::Release);
        self.metrics.spooled.inc();
        self.refresh_metrics();
        match attempt {
            Some(attempt) => {
                tokio::spawn(async move {
                    let delivered = attempt.outcome().await.is_ok();
                    self.settle(seq, delivered).await;
                });
            }
            None => self.wake.notify_one(),
        }
        Ok(seq)
    }

    /// After a failed write: probes the disk (an fsync through the writer, which also cuts
    /// back what the failure left) every [`PROBE_INTERVAL`] until it works, then says the
    /// spool accepts again. Without it, readiness waited for a successful write, which cannot
    /// come while the replica is out of its Service.
    fn probe_until_writable(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let spool = self.clone();
        tokio::spawn(async move {
            while spool.failing.load(Ordering::Acquire) {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let (reply, written) = oneshot::channel();
                let probe = WriteRequest {
                    frame: Vec::new(),
                    event: None,
                    reply,
                };
                let sent = spool
                    .sequencer
                    .lock()
                    .expect("lock not poisoned")
                    .writer
                    .send(probe);
                if sent.is_err() {
                    break;
                }
                if let Ok(Ok(())) = written.await {
                    if spool.failing.swap(false, Ordering::AcqRel) {
                        tracing::info!("the spool's disk takes writes again");
                    }
                }
            }
            spool.probing.store(false, Ordering::Release);
        });
    }

    /// Keeps a record that neither its topic nor the dead-letter topic will take (a topic's
    /// `max.message.bytes` below it, a dead-letter topic denied by ACL) in `quarantine.log`
    /// beside the segments, in the journal's format with the reason as a header, so that replay
    /// can go on behind it. `Err` when the file cannot be written: the record stays pending.
    pub async fn quarantine(
        self: &Arc<Self>,
        seq: u64,
        record: &OutboundRecord,
        reason: &str,
    ) -> io::Result<()> {
        let mut event = to_spooled(record, seq, 0);
        event
            .headers
            .push((QUARANTINE_REASON_HEADER.to_owned(), reason.to_owned()));
        let frame = journal::encode(&Entry::Event(event));
        let (path, faults) = (self.dir.join(QUARANTINE_FILE), self.faults.clone());
        tokio::task::spawn_blocking(move || journal::append_durably(&path, &frame, &faults))
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the quarantine write failed")))?;
        self.metrics.spool_quarantined.inc();
        Ok(())
    }

    /// `spool.max_bytes` and the disk's free space, for one more frame of `len` bytes.
    fn check_room(&self, len: u64) -> Result<(), SpoolError> {
        let bytes = self.index().bytes();
        if bytes + len > self.max_bytes {
            return Err(SpoolError::Full {
                bytes,
                max: self.max_bytes,
            });
        }
        match free_bytes(&self.dir) {
            Some(free) if free < len + MIN_FREE_BYTES => Err(SpoolError::DiskFull { free }),
            _ => Ok(()),
        }
    }

    /// The in-flight attempt for `seq` ended: delivered means done, otherwise replay it.
    async fn settle(&self, seq: u64, delivered: bool) {
        if delivered {
            self.mark_done(&[seq]).await;
        } else {
            self.index().make_ready(seq);
            self.wake.notify_one();
        }
    }

    /// Records durably that `seqs` are in Kafka, forgets them, and deletes finished segments.
    /// A marker that cannot be written costs a duplicate after a restart, never a loss.
    async fn mark_done(&self, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        let replies: Vec<_> = {
            let sequencer = self.sequencer.lock().expect("lock not poisoned");
            seqs.iter()
                .filter_map(|&seq| {
                    let (reply, written) = oneshot::channel();
                    let request = WriteRequest {
                        frame: journal::encode(&Entry::Done(seq)),
                        event: None,
                        reply,
                    };
                    sequencer.writer.send(request).ok().map(|()| written)
                })
                .collect()
        };
        for written in replies {
            if let Ok(Err(error)) = written.await {
                tracing::warn!(%error, "cannot record a replayed event as done; it may be replayed again after a restart");
            }
        }
        {
            let mut index = self.index();
            for &seq in seqs {
                index.done(seq);
            }
        }
        self.delete_finished_segments();
        self.refresh_metrics();
    }

    /// Deletes segments nothing pending needs any more (oldest first), then makes the
    /// deletions durable by syncing the directory.
    fn delete_finished_segments(&self) {
        let mut index = self.index();
        let mut deleted = false;
        for id in index.deletable() {
            match journal::remove_segment(&self.dir, id, &self.faults) {
                Ok(()) => deleted = true,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(%error, segment = id, "cannot delete a finished spool segment");
                    break;
                }
            }
            index.remove_segment(id);
        }
        drop(index);
        if deleted {
            if let Err(error) = journal::sync_dir(&self.dir, &self.faults) {
                tracing::warn!(%error, "cannot sync the spool directory after deleting segments");
            }
        }
    }

    /// Replays pending records to Kafka until `stop` (see [`replay`]).
    pub async fn replay(
        self: Arc<Self>,
        replay: replay::Replay,
        stop: tokio_util::sync::CancellationToken,
    ) {
        replay.run(self, stop).await;
    }

    /// Updates the spool gauges (also called at every scrape, for the oldest record's age).
    pub fn refresh_metrics(&self) {
        let index = self.index();
        self.metrics
            .spool_bytes
            .set(i64::try_from(index.bytes()).unwrap_or(i64::MAX));
        self.metrics
            .spool_records
            .set(i64::try_from(index.len()).unwrap_or(i64::MAX));
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let oldest = index
            .oldest()
            .map_or(0, |p| now_ms.saturating_sub(p.received_ms));
        self.metrics
            .spool_oldest_age_seconds
            .set(oldest as f64 / 1000.0);
    }
}

/// Bytes available to this process on the filesystem holding `dir`; `None` if unknown.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `stat` is writable memory of the
    // right type; statvfs fills it completely when it returns 0.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
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

#[cfg(test)]
mod model_tests;
