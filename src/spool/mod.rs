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
//! One owner per directory: the relay or `spool drain` that opens it holds an exclusive lock
//! for its whole life ([`journal::take_ownership`]); a second one is refused at once.
//!
//! Layout: [`journal`] (the on-disk format, scan and files), [`index`] (what is pending where),
//! [`writer`] (the thread that appends, fsyncs, registers and rotates), [`replay`] (back to
//! Kafka), [`requeue`] (quarantine.log back to Kafka), [`fault`] (the seam tests use to fail
//! its file operations).

mod append;
pub mod fault;
pub mod index;
pub mod journal;
pub mod replay;
pub mod requeue;
pub mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, Notify};

use self::fault::Faults;
use self::index::Index;
use self::journal::{ActiveSegment, Entry, Found, SpooledEvent};
use self::writer::{WriteRequest, Writer};
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
    #[error(transparent)]
    Owned(#[from] journal::OwnerError),
    #[error("the spool's write queue is full ({0} appends waiting)")]
    Busy(usize),
    #[error("the spool did not take the event before the deadline; it was not written")]
    Late,
}

/// Most appends waiting for the writer thread at once; beyond it, 503 at once instead of a
/// queue that grows without bound while the disk is slow.
pub const MAX_QUEUED_APPENDS: usize = 4096;

/// The sequence number of the probe's marker: a done-marker for no event, written after a
/// failed write to prove the disk takes a real write and fsync again.
const PROBE_SEQ: u64 = u64::MAX;

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
    /// This process's hold on the directory, released when the spool is dropped (`None` only
    /// for the fault-injection tests, which reopen in one process what a crash releases).
    _owner: Option<journal::Owner>,
    /// Appends waiting for the writer ([`MAX_QUEUED_APPENDS`]).
    queued: tokio::sync::Semaphore,
    /// Bytes of quarantine.log, counted against `max_bytes`.
    quarantine_bytes: AtomicU64,
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
    /// Opens (or creates) the spool in `dir`, recovering every record not yet in Kafka, and
    /// owns the directory until the spool is dropped: a second owner is refused
    /// ([`SpoolError::Owned`]).
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, SpoolError> {
        journal::create_private_dir(dir)?;
        let owner = journal::take_ownership(dir)?;
        Self::open_inner(dir, max_bytes, metrics, Faults::none(), Some(owner))
    }

    /// [`Spool::open`] with injected file faults and without the ownership lock (the tests
    /// that use it reopen the directory in one process to model a crash).
    pub fn open_with_faults(
        dir: &Path,
        max_bytes: u64,
        metrics: Arc<Metrics>,
        faults: Faults,
    ) -> Result<Arc<Self>, SpoolError> {
        Self::open_inner(dir, max_bytes, metrics, faults, None)
    }

    /// Opening proper.
    ///
    /// Recovery keeps only where each pending record is (sequence, location, time), never a
    /// payload: start-up memory does not grow with the spool (payloads are read back at replay,
    /// a batch at a time). Done-markers always follow their event, so scanning segments oldest
    /// first and forgetting an event at its marker leaves exactly what Kafka does not have.
    fn open_inner(
        dir: &Path,
        max_bytes: u64,
        metrics: Arc<Metrics>,
        faults: Faults,
        owner: Option<journal::Owner>,
    ) -> Result<Arc<Self>, SpoolError> {
        journal::create_private_dir(dir)?;
        let segments = journal::list_segments(dir)?;
        let active = ActiveSegment::create(dir, segments.last().map_or(0, |id| id + 1), &faults)?;
        let mut index = Index::new(active.id);
        let (mut next_seq, mut corrupt, mut unreadable) = (0, 0, false);
        for &id in &segments {
            let scanned = journal::scan(dir, id, &faults, |found| match found {
                Found::Done(PROBE_SEQ) => {}
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
                    index.recovered_done(seq);
                }
            });
            match scanned {
                Ok(scan) => {
                    corrupt += scan.corrupt;
                    index.add_segment(id, scan.bytes);
                }
                // One segment that cannot be read never stops the relay: it is kept, counted
                // and scanned again later, and nothing it holds is lost or replayed twice.
                Err(error) => {
                    let bytes =
                        std::fs::metadata(journal::segment_path(dir, id)).map_or(0, |m| m.len());
                    tracing::error!(%error, segment = id, bytes, "cannot read a spool segment; keeping it and trying again later (the rest of the spool is replayed meanwhile)");
                    index.add_unreadable(id, bytes);
                    // Its sequence numbers are unknown: none of them may be given out again.
                    next_seq += bytes / journal::MIN_FRAME as u64 + 1;
                    unreadable = true;
                }
            }
        }
        if unreadable {
            // The count above is not a bound when the segments before the unreadable one were
            // deleted (all done): its numbers start wherever the sequence stood then, not at 0,
            // and a new event given one of them replaced the old one at the next recovery (found
            // by model_tests: a read error at start-up, then appends, lost an acknowledged event).
            // The clock in microseconds is above every number handed out before: spool appends
            // are fsynced writes, far fewer than one a microsecond, and a number taken from the
            // clock at an earlier start only grew by the appends since.
            let micros = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
            next_seq = next_seq.max(micros);
        }
        let index = Arc::new(Mutex::new(index));
        let (sender, receiver) = mpsc::channel();
        let writer = Writer::new(
            dir,
            active,
            index.clone(),
            faults.clone(),
            writer::segment_bytes(max_bytes),
        );
        std::thread::Builder::new()
            .name("fp-relay-spool".into())
            .spawn(move || writer.run(&receiver))?;
        metrics.spool_corrupt_records.inc_by(corrupt);
        let quarantined = std::fs::metadata(dir.join(QUARANTINE_FILE)).map_or(0, |m| m.len());
        let spool = Arc::new(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            _owner: owner,
            queued: tokio::sync::Semaphore::new(MAX_QUEUED_APPENDS),
            quarantine_bytes: AtomicU64::new(quarantined),
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
            && self.held_bytes() < self.max_bytes
            && free_bytes(&self.dir).is_none_or(|free| free > MIN_FREE_BYTES)
    }

    /// What `max_bytes` limits: spooled events not yet in Kafka, and quarantine.log. Done
    /// records are not counted: their segments are deleted (or rotated out) once done.
    fn held_bytes(&self) -> u64 {
        self.index().pending_bytes() + self.quarantine_bytes.load(Ordering::Acquire)
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
        let len = frame.len() as u64;
        tokio::task::spawn_blocking(move || journal::append_durably(&path, &frame, &faults))
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the quarantine write failed")))?;
        self.quarantine_bytes.fetch_add(len, Ordering::AcqRel);
        self.metrics.spool_quarantined.inc();
        self.refresh_metrics();
        Ok(())
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
                    let request =
                        WriteRequest::new(journal::encode(&Entry::Done(seq)), None, reply);
                    sequencer.writer.send(request).ok().map(|()| written)
                })
                .collect()
        };
        for written in replies {
            if let Ok(Err(error)) = written.await {
                tracing::warn!(%error, "cannot record a replayed event as done; it may be replayed again after a restart");
            }
        }
        let spent = {
            let mut index = self.index();
            for &seq in seqs {
                index.done(seq);
            }
            index.active_is_spent()
        };
        if spent {
            self.rotate_spent().await;
        }
        self.delete_finished_segments();
        self.refresh_metrics();
    }

    /// Asks the writer to start a new segment if the current one holds nothing pending (it
    /// checks again itself: an append may have come in meanwhile), so that the drained one can
    /// be deleted.
    async fn rotate_spent(&self) {
        let (reply, written) = oneshot::channel();
        let request = WriteRequest {
            rotate: true,
            ..WriteRequest::new(Vec::new(), None, reply)
        };
        let sent = self
            .sequencer
            .lock()
            .expect("lock not poisoned")
            .writer
            .send(request);
        if sent.is_ok() {
            let _ = written.await;
        }
    }

    /// Passes by the records of `segment`, which cannot be read right now (see
    /// [`index`]); retried by [`Spool::retry_troubled`].
    fn set_aside(&self, segment: u64) {
        if self.index().set_aside(segment) {
            tracing::error!(segment, dir = %self.dir.display(), "a spool segment cannot be read; setting it aside and retrying it with backoff (newer events are replayed meanwhile)");
        }
        self.refresh_metrics();
    }

    /// Tries the segments that were set aside or could not be scanned again; those that read
    /// now rejoin the replay (their records first, as the oldest). Returns how many remain.
    async fn retry_troubled(self: &Arc<Self>) -> usize {
        let (aside, unreadable) = {
            let index = self.index();
            (index.aside(), index.unreadable())
        };
        let (dir, faults) = (self.dir.clone(), self.faults.clone());
        for (segment, location) in aside {
            let (dir, faults) = (dir.clone(), faults.clone());
            let read = tokio::task::spawn_blocking(move || {
                journal::read_events(&dir, &[location], &faults)
            })
            .await;
            if let Ok(results) = read {
                if results.first().is_some_and(|r| {
                    r.as_ref().is_ok() || r.as_ref().is_err_and(journal::is_damage)
                }) {
                    self.index().restore(segment);
                    tracing::info!(
                        segment,
                        "a spool segment set aside reads again; replaying it"
                    );
                }
            }
        }
        for id in unreadable {
            let (dir, faults) = (dir.clone(), faults.clone());
            let mut found = Vec::new();
            let scanned = tokio::task::spawn_blocking(move || {
                let scan = journal::scan(&dir, id, &faults, |f| found.push(f));
                scan.map(|scan| (scan, found))
            })
            .await;
            if let Ok(Ok((scan, found))) = scanned {
                let mut index = self.index();
                for found in found {
                    match found {
                        Found::Done(PROBE_SEQ) => {}
                        Found::Event {
                            seq,
                            received_ms,
                            location,
                        } => index.recover(seq, received_ms, location),
                        Found::Done(seq) => index.recovered_done(seq),
                    }
                }
                index.rescued(id);
                drop(index);
                self.metrics.spool_corrupt_records.inc_by(scan.corrupt);
                tracing::info!(
                    segment = id,
                    "a spool segment that could not be read at start-up reads now; replaying it"
                );
                self.wake.notify_one();
            }
        }
        self.refresh_metrics();
        self.index().troubled_segments()
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
        let quarantined = self.quarantine_bytes.load(Ordering::Acquire);
        self.metrics
            .spool_pending_bytes
            .set(i64::try_from(index.pending_bytes() + quarantined).unwrap_or(i64::MAX));
        self.metrics
            .spool_quarantine_bytes
            .set(i64::try_from(quarantined).unwrap_or(i64::MAX));
        self.metrics
            .spool_segments_set_aside
            .set(i64::try_from(index.troubled_segments()).unwrap_or(i64::MAX));
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
