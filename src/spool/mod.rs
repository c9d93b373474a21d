//! The durable spool: when Kafka cannot take a standard event within `spool.handoff_after`,
//! the event is committed to an SQLite database in `spool.dir` and the relay answers 202
//! `spooled`. A background task replays it to Kafka in receive order and deletes what Kafka
//! has acknowledged. It survives restarts and crashes: SQLite's commit is the promise.
//!
//! Exactly once where it can be known: a record whose direct publish attempt was still in
//! flight at the handoff is held back until that attempt's delivery report says how it ended;
//! if it succeeded, the record is deleted, never replayed. Only an attempt that was in flight
//! when the process died can end up twice in Kafka; `fp-event-id` lets consumers drop it.
//!
//! Nothing is deleted that was not read and delivered: a database that cannot be opened, read
//! or trusted is renamed aside (`spool.db.unreadable-<ms>`), never removed, and the relay goes
//! on with a new one; a set-aside file (or a directory of the old journal format) that reads
//! again is taken in whole, once ([`import`]).
//!
//! One owner per directory: the relay or `spool drain` that opens it holds an exclusive lock
//! for its whole life ([`files::take_ownership`]); a second one is refused at once.
//!
//! Layout: [`store`] (the database), [`writer`] (the thread that writes it, and what it
//! holds), [`append`] (the write behind a 202), [`replay`] (back to Kafka), [`requeue`]
//! (quarantined records back to Kafka), [`import`] (the old journal, files set aside),
//! [`journal`] (the old format, read only), [`files`] (the directory and its owner),
//! [`fault`] (the seam tests use to fail its operations).

mod append;
pub mod fault;
pub mod files;
pub mod import;
pub mod journal;
pub mod replay;
pub mod requeue;
pub mod store;
pub mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, Notify};

use self::fault::Faults;
use self::store::{Store, Stored, DB_FILE};
use self::writer::{Held, Request, Writer};
use crate::metrics::Metrics;

/// Free space the spool always leaves on its filesystem, whatever `spool.max_bytes` says:
/// SQLite's WAL and the deletes that let the spool shrink need room too, and so does
/// everything else on the disk.
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
    Owned(#[from] files::OwnerError),
    #[error("the spool's write queue is full ({0} appends waiting)")]
    Busy(usize),
    #[error("the spool did not take the event before the deadline; it was not written")]
    Late,
}

/// Most appends waiting for the writer thread at once; beyond it, 503 at once instead of a
/// queue that grows without bound while the disk is slow.
pub const MAX_QUEUED_APPENDS: usize = 4096;

/// How often the disk is probed after a failed write.
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The header a quarantined record carried in the old journal's quarantine.log.
pub const QUARANTINE_REASON_HEADER: &str = "fp-quarantine-reason";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The spool's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `spool.max_bytes`: pending and quarantined records together.
    pub max_bytes: u64,
    /// The largest record an append may bring (`http.max_body_bytes` and its headers):
    /// readiness says "not ready" when one would not fit.
    pub largest_record: u64,
}

impl Limits {
    /// No limit: for `spool drain` and tools that only take records out.
    pub fn none() -> Self {
        Self {
            max_bytes: u64::MAX,
            largest_record: 0,
        }
    }
}

/// The spool.
pub struct Spool {
    dir: PathBuf,
    limits: Limits,
    /// This process's hold on the directory, released when the spool is dropped (`None` only
    /// for the fault-injection tests, which reopen in one process what a crash releases).
    _owner: Option<files::Owner>,
    /// Appends waiting for the writer ([`MAX_QUEUED_APPENDS`]).
    queued: tokio::sync::Semaphore,
    /// The writer thread's queue; sending in the order appends arrive is receive order.
    writer: Mutex<mpsc::Sender<Request>>,
    /// The connection replay and the gauges read with (WAL: readers never wait for the writer).
    reader: Mutex<Store>,
    /// What the database holds; kept by the writer.
    held: Arc<Mutex<Held>>,
    /// True after a write failed, until a write or a probe of the disk succeeds: readiness
    /// says the spool cannot accept meanwhile.
    failing: AtomicBool,
    /// True while a task probes the disk after a failed write.
    probing: AtomicBool,
    /// Damaged records met by imports (the old journal's torn tails).
    corrupt: Arc<AtomicU64>,
    /// Wakes the replay task.
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, taking in whatever an earlier process left, and
    /// owns the directory until the spool is dropped: a second owner is refused
    /// ([`SpoolError::Owned`]).
    pub fn open(
        dir: &Path,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, SpoolError> {
        files::create_private_dir(dir)?;
        let owner = files::take_ownership(dir)?;
        Self::open_inner(dir, limits, metrics, Faults::none(), Some(owner))
    }

    /// [`Spool::open`] with injected faults and without the ownership lock (the tests that use
    /// it reopen the directory in one process to model a crash).
    pub fn open_with_faults(
        dir: &Path,
        limits: Limits,
        metrics: Arc<Metrics>,
        faults: Faults,
    ) -> Result<Arc<Self>, SpoolError> {
        Self::open_inner(dir, limits, metrics, faults, None)
    }

    /// Opening proper: a database that cannot be opened, read or trusted is set aside and a
    /// new one started (the relay goes on; nothing of the old one is removed). Start-up memory
    /// does not grow with the spool: only totals are read (replay reads a batch at a time).
    fn open_inner(
        dir: &Path,
        limits: Limits,
        metrics: Arc<Metrics>,
        faults: Faults,
        owner: Option<files::Owner>,
    ) -> Result<Arc<Self>, SpoolError> {
        files::create_private_dir(dir)?;
        let path = dir.join(DB_FILE);
        import::finish_move(&path, &faults)?;
        let store = match Store::open(&path, &faults) {
            Ok(store) => store,
            // Another process holds a lock (sqlite3 recovering the WAL): not a reason to set a
            // healthy database aside.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Err(error.into()),
            // The disk refused a write (full, a file size limit): about the disk, not the file;
            // a new database would not fit either.
            Err(error) if error.kind() == io::ErrorKind::StorageFull => return Err(error.into()),
            Err(error) if path.exists() => {
                let aside = import::move_aside(&path, &faults)?;
                tracing::error!(%error, file = %aside.display(), "cannot read the spool's database; set it aside, starting a new one, and trying it again later (nothing of it is deleted)");
                Store::open(&path, &faults)?
            }
            Err(error) => return Err(error.into()),
        };
        let reader = Store::connect(&path, &faults)?;
        let held = Arc::new(Mutex::new(Held::default()));
        let corrupt = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            store,
            held: held.clone(),
            dir: dir.to_path_buf(),
            faults: faults.clone(),
            corrupt: corrupt.clone(),
        };
        writer.take_in();
        // The totals are what drain, readiness and the backlog go by: a spool whose totals
        // cannot be read does not start (a drain that saw none said "empty" over records).
        let totals = writer.store.totals()?;
        {
            let mut held = held.lock().expect("lock not poisoned");
            held.pending = totals.pending;
            held.quarantined = totals.quarantined;
        }
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("fp-relay-spool".into())
            .spawn(move || writer.run(&receiver))?;
        let spool = Arc::new(Self {
            dir: dir.to_path_buf(),
            limits,
            _owner: owner,
            queued: tokio::sync::Semaphore::new(MAX_QUEUED_APPENDS),
            writer: Mutex::new(sender),
            reader: Mutex::new(reader),
            held,
            failing: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            corrupt,
            wake: Notify::new(),
            metrics,
        });
        spool.refresh_metrics();
        Ok(spool)
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().expect("lock not poisoned")
    }

    /// Sends `request` to the writer; `false` if it has stopped.
    fn send(&self, request: Request) -> bool {
        self.writer
            .lock()
            .expect("lock not poisoned")
            .send(request)
            .is_ok()
    }

    /// Records not yet in Kafka (readable or not).
    pub fn pending(&self) -> usize {
        usize::try_from(self.held().pending_records()).unwrap_or(usize::MAX)
    }

    /// Records kept because no topic would take them (`fp-relay spool requeue`).
    pub fn quarantined(&self) -> usize {
        usize::try_from(self.held().quarantined.records).unwrap_or(usize::MAX)
    }

    /// Files that could not be read (set aside, or an old journal): kept and retried.
    pub fn unreadable_files(&self) -> usize {
        self.held().unreadable_files
    }

    /// True while readable records wait for Kafka: new events queue behind them to keep
    /// receive order. Records that cannot be read now hold nothing back.
    pub fn has_backlog(&self) -> bool {
        let held = self.held();
        held.writing.records > 0 || (!held.unreadable_now && held.pending_records() > 0)
    }

    /// True when the spool can take events: room under `max_bytes` and on the disk for the
    /// largest record a request may bring, and the last write succeeded. With the spool on,
    /// this is what readiness means during an outage.
    pub fn accepting(&self) -> bool {
        let largest = self.limits.largest_record;
        !self.failing.load(Ordering::Acquire)
            && self.held().bytes().saturating_add(largest) <= self.limits.max_bytes
            && free_bytes(&self.dir).is_none_or(|free| free >= largest + MIN_FREE_BYTES)
    }

    /// Keeps record `id`, which neither its topic nor the dead-letter topic will take (a
    /// topic's `max.message.bytes` below it, a dead-letter topic denied by ACL), as quarantined
    /// with `reason`, so that replay can go on behind it. `Err` when that cannot be written:
    /// the record stays pending.
    pub async fn quarantine(&self, id: i64, reason: &str) -> io::Result<()> {
        let (reply, done) = oneshot::channel();
        let sent = self.send(Request::Quarantine {
            id,
            reason: reason.to_owned(),
            reply,
        });
        if !sent {
            return Err(io::Error::other("the spool writer stopped"));
        }
        done.await
            .unwrap_or_else(|_| Err(io::Error::other("the spool writer stopped")))?;
        self.metrics.spool_quarantined.inc();
        self.refresh_metrics();
        Ok(())
    }

    /// The in-flight attempt for `id` ended: delivered means done, otherwise replay it.
    async fn settle(&self, id: i64, delivered: bool) {
        if delivered {
            self.mark_done(&[id]).await;
        }
        self.held().unsettled.remove(&id);
        if !delivered {
            self.wake.notify_one();
        }
    }

    /// Deletes `ids`, which Kafka has. A delete that fails costs a duplicate after a restart,
    /// never a loss: until then this process does not replay them again.
    pub async fn mark_done(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        if let Err(error) = self.delete(ids).await {
            tracing::warn!(%error, "cannot delete replayed events from the spool; they may be replayed again after a restart");
        }
    }

    /// Deletes record `id`, which Kafka has (a requeued one): `Err` if the delete failed.
    pub async fn forget(&self, id: i64) -> io::Result<()> {
        self.delete(&[id]).await
    }

    async fn delete(&self, ids: &[i64]) -> io::Result<()> {
        let (reply, done) = oneshot::channel();
        let result = if self.send(Request::Delete {
            ids: ids.to_vec(),
            reply,
        }) {
            done.await
                .unwrap_or_else(|_| Err(io::Error::other("the spool writer stopped")))
        } else {
            Err(io::Error::other("the spool writer stopped"))
        };
        self.refresh_metrics();
        result
    }

    /// Up to `max` pending records from the head, in order, that replay may send now: it stops
    /// at the first whose direct attempt is still in flight (receive order is kept). `Err` when
    /// the database cannot be read.
    pub async fn head(self: &Arc<Self>, max: usize) -> io::Result<Vec<Stored>> {
        let spool = self.clone();
        tokio::task::spawn_blocking(move || {
            let reader = spool.reader.lock().expect("lock not poisoned");
            let skip = |id: i64| spool.held().delivered.contains(&id);
            loop {
                let deletes = spool.held().deletes;
                let mut records = reader.read(false, 0, max, &skip)?;
                let held = spool.held();
                // A delete committed during the read (an in-flight attempt that was delivered
                // and settled meanwhile) may have removed a record read here, and with it its
                // in-flight mark: read again, or it would be sent twice.
                if held.deletes != deletes {
                    continue;
                }
                // A delete that failed meanwhile (a settled attempt): in Kafka already.
                records.retain(|r| !held.delivered.contains(&r.id));
                if let Some(stop) = records.iter().position(|r| held.unsettled.contains(&r.id)) {
                    records.truncate(stop);
                }
                return Ok(records);
            }
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the spool read failed")))
    }

    /// Up to `max` quarantined records with ids above `after`, in order.
    pub async fn quarantined_after(
        self: &Arc<Self>,
        after: i64,
        max: usize,
    ) -> io::Result<Vec<Stored>> {
        let spool = self.clone();
        tokio::task::spawn_blocking(move || {
            let reader = spool.reader.lock().expect("lock not poisoned");
            reader.read(true, after, max, &|_| false)
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the spool read failed")))
    }

    /// Says whether replay can read the database now: while it cannot, live events stop
    /// waiting behind records nobody can send.
    fn set_readable(&self, readable: bool) {
        let was = std::mem::replace(&mut self.held().unreadable_now, !readable);
        if was == readable {
            if readable {
                tracing::info!("the spool's database reads again; replaying it");
            } else {
                tracing::error!(dir = %self.dir.display(), "the spool's database cannot be read; new events go on to Kafka meanwhile, and its records follow once it reads (late and out of order)");
            }
        }
        self.refresh_metrics();
    }

    /// Tries the files that could not be read; returns how many still cannot.
    async fn take_in(&self) -> usize {
        let (reply, done) = oneshot::channel();
        if !self.send(Request::TakeIn { reply }) {
            return 0;
        }
        let left = done.await.unwrap_or(0);
        self.wake.notify_one();
        self.refresh_metrics();
        left
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
        let held = self.held();
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.metrics
            .spool_records
            .set(gauge(held.pending_records()));
        self.metrics
            .spool_pending_bytes
            .set(gauge(held.pending.bytes + held.quarantined.bytes));
        self.metrics
            .spool_quarantine_bytes
            .set(gauge(held.quarantined.bytes));
        self.metrics.spool_files_set_aside.set(gauge(
            held.unreadable_files as u64 + u64::from(held.unreadable_now),
        ));
        let empty = held.pending_records() == 0;
        drop(held);
        let on_disk: u64 = ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                std::fs::metadata(self.dir.join(format!("{DB_FILE}{suffix}"))).ok()
            })
            .map(|m| m.len())
            .sum();
        self.metrics.spool_bytes.set(gauge(on_disk));
        let corrupt = self.corrupt.swap(0, Ordering::Relaxed);
        self.metrics.spool_corrupt_records.inc_by(corrupt);
        let oldest = if empty {
            Some(None)
        } else {
            // Never waits for a replay read in progress: the gauge keeps its last value.
            self.reader
                .try_lock()
                .ok()
                .and_then(|reader| reader.oldest_ms().ok())
        };
        if let Some(oldest) = oldest {
            let age = oldest.map_or(0, |ms| now_ms().saturating_sub(ms));
            self.metrics
                .spool_oldest_age_seconds
                .set(age as f64 / 1000.0);
        }
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

#[cfg(test)]
mod model_tests;
