//! The writer thread: appends what arrives, fsyncs once per batch (group commit), registers
//! every durable write in the [`Index`] in write order before anyone is told, undoes a batch
//! whose write or fsync failed, and rotates segments.
//!
//! Why the writer registers, not the caller: registration in write order means a segment can
//! never look empty while a record written into it waits to be counted (callers resume in any
//! order; a rotation between two replies once let a segment be deleted under a record already
//! answered 202). Why undo: a partial frame left in the file shifts every later record, which
//! would then fail its checksum at replay, and ends every later scan after a restart.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;

use super::fault::Faults;
use super::index::{Index, Status};
use super::journal::{self, ActiveSegment, Location};

/// A segment is closed and a new one started beyond this size (smaller for a small spool:
/// see [`segment_bytes`]).
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// The smallest segment size a small spool uses.
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

/// The segment size for a spool of `max_bytes`: an eighth of it, between 64 KiB and 16 MiB, so
/// that what finished segments waste is a small part of any spool.
pub fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 8).clamp(MIN_SEGMENT_BYTES, SEGMENT_BYTES)
}

/// A write's claim, between its requester (who may give up at its deadline) and the writer.
pub mod claim {
    /// Not taken yet: the requester may still cancel it.
    pub const WAITING: u8 = 0;
    /// Taken by the writer: it will be written (or fail), whatever the requester does now.
    pub const TAKEN: u8 = 1;
    /// Cancelled by the requester before the writer took it: never written.
    pub const CANCELLED: u8 = 2;
}
/// Most records written per fsync.
const MAX_BATCH: usize = 512;

/// One write for the writer thread.
pub struct WriteRequest {
    /// A framed journal record.
    pub frame: Vec<u8>,
    /// For an event: its sequence number and the status it takes once durable.
    pub event: Option<(u64, Status)>,
    /// Told once the record is durable and registered, or why it is not.
    pub reply: oneshot::Sender<io::Result<()>>,
    /// For an append its requester may give up on: see [`claim`]. A cancelled write is
    /// skipped and answered with `ErrorKind::Interrupted`.
    pub claim: Option<Arc<AtomicU8>>,
    /// Start a new segment after this batch if the current one holds nothing pending, so
    /// that it can be deleted (a drained spool frees its disk).
    pub rotate: bool,
}

impl WriteRequest {
    /// A request with no claim and no rotation.
    pub fn new(
        frame: Vec<u8>,
        event: Option<(u64, Status)>,
        reply: oneshot::Sender<io::Result<()>>,
    ) -> Self {
        Self {
            frame,
            event,
            reply,
            claim: None,
            rotate: false,
        }
    }
}

/// The writer's state.
pub struct Writer {
    dir: PathBuf,
    active: ActiveSegment,
    index: Arc<Mutex<Index>>,
    /// Set when a failed batch could not be cut back: the length the segment must return to
    /// before anything else is appended to it.
    undo_to: Option<u64>,
    /// Passed to every segment it creates.
    faults: Faults,
    /// Rotate beyond this size ([`segment_bytes`]).
    segment_bytes: u64,
}

impl Writer {
    /// A writer appending to `active`.
    pub fn new(
        dir: &Path,
        active: ActiveSegment,
        index: Arc<Mutex<Index>>,
        faults: Faults,
        segment_bytes: u64,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            active,
            index,
            undo_to: None,
            faults,
            segment_bytes,
        }
    }

    /// Serves requests until every sender is gone.
    pub fn run(mut self, requests: &mpsc::Receiver<WriteRequest>) {
        while let Ok(first) = requests.recv() {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            let mut next = Some(first);
            while let Some(request) = next.take() {
                // A requester that gave up before the writer got to it: never written.
                let cancelled = request.claim.as_ref().is_some_and(|claim| {
                    claim
                        .compare_exchange(
                            claim::WAITING,
                            claim::TAKEN,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_err()
                });
                if cancelled {
                    let _ = request.reply.send(Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "cancelled before it was written",
                    )));
                } else {
                    batch.push(request);
                }
                if batch.len() < MAX_BATCH {
                    next = requests.try_recv().ok();
                }
            }
            if batch.is_empty() {
                continue;
            }
            let rotate = batch.iter().any(|r| r.rotate);
            match self.write(&batch) {
                Ok(offsets) => {
                    self.register(&batch, &offsets);
                    for request in batch {
                        let _ = request.reply.send(Ok(()));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, records = batch.len(), "spool write failed; the batch is refused and undone");
                    for request in batch {
                        let _ = request
                            .reply
                            .send(Err(io::Error::new(error.kind(), error.to_string())));
                    }
                }
            }
            let spent = rotate
                && self
                    .index
                    .lock()
                    .expect("lock not poisoned")
                    .active_is_spent();
            if self.active.len >= self.segment_bytes || spent {
                self.rotate();
            }
        }
    }

    /// Appends and fsyncs `batch`; on failure the segment is cut back to where it was.
    fn write(&mut self, batch: &[WriteRequest]) -> io::Result<Vec<u64>> {
        if let Some(len) = self.undo_to {
            self.active.truncate(len)?;
            self.undo_to = None;
        }
        let start = self.active.len;
        let result = batch
            .iter()
            .map(|request| self.active.append(&request.frame))
            .collect::<io::Result<Vec<u64>>>()
            .and_then(|offsets| self.active.sync().map(|()| offsets));
        if let Err(failed) = &result {
            if let Err(error) = self.active.truncate(start) {
                tracing::error!(%error, "cannot cut a failed spool write back; starting a new segment");
                self.active.len = start;
                self.undo_to = Some(start);
                self.rotate();
            } else if failed.raw_os_error() == Some(libc::EFBIG) {
                // The file may grow no further (RLIMIT_FSIZE, a filesystem's file size limit):
                // the next write goes to a new segment.
                self.rotate();
            }
        }
        result
    }

    /// Records every durable write of `batch` in the index, in write order.
    fn register(&self, batch: &[WriteRequest], offsets: &[u64]) {
        let segment = self.active.id;
        let mut index = self.index.lock().expect("lock not poisoned");
        for (request, &offset) in batch.iter().zip(offsets) {
            let len = request.frame.len() as u64;
            let event = request.event.map(|(seq, status)| {
                let body =
                    u32::try_from(len).expect("frames are small") - journal::FRAME_HEADER as u32;
                (
                    seq,
                    Location {
                        segment,
                        offset,
                        len: body,
                    },
                    status,
                )
            });
            index.written(segment, len, event);
        }
    }

    /// Starts the next segment; on failure keeps appending to the current one.
    fn rotate(&mut self) {
        match ActiveSegment::create(&self.dir, self.active.id + 1, &self.faults) {
            Ok(next) => {
                self.active = next;
                self.undo_to = None;
                self.index
                    .lock()
                    .expect("lock not poisoned")
                    .rotated(self.active.id);
            }
            Err(error) => {
                tracing::error!(%error, "cannot start a new spool segment; continuing in the current one")
            }
        }
    }
}
