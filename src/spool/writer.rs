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
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;

use super::fault::Faults;
use super::index::{Index, Status};
use super::journal::{self, ActiveSegment, Location};

/// A segment is closed and a new one started beyond this size.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
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
}

impl Writer {
    /// A writer appending to `active`.
    pub fn new(
        dir: &Path,
        active: ActiveSegment,
        index: Arc<Mutex<Index>>,
        faults: Faults,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            active,
            index,
            undo_to: None,
            faults,
        }
    }

    /// Serves requests until every sender is gone.
    pub fn run(mut self, requests: &mpsc::Receiver<WriteRequest>) {
        while let Ok(first) = requests.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
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
            if self.active.len >= SEGMENT_BYTES {
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
        if result.is_err() {
            if let Err(error) = self.active.truncate(start) {
                tracing::error!(%error, "cannot cut a failed spool write back; starting a new segment");
                self.active.len = start;
                self.undo_to = Some(start);
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
