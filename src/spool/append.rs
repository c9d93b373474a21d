//! Appending to the spool: the durable write behind a `202 spooled`, its deadline, the bound on
//! what waits for the writer, the room check, and the probe after a failed write.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::index::Status;
use super::journal::{self, Entry};
use super::writer::{claim, WriteRequest};
use super::{
    free_bytes, to_spooled, Spool, SpoolError, MAX_QUEUED_APPENDS, MIN_FREE_BYTES, PROBE_INTERVAL,
    PROBE_SEQ,
};
use crate::kafka::publisher::PendingDelivery;
use crate::kafka::record::OutboundRecord;

impl Spool {
    /// Appends `record` durably, or gives up at `deadline` without writing it. With `attempt`,
    /// the record's direct publish is still in flight: it is replayed only if that attempt
    /// fails.
    ///
    /// The work runs in its own task: a client that hangs up (dropping the request future)
    /// cannot leave a record half-registered, which used to stall replay until a restart. At
    /// the deadline the write is cancelled unless the writer has taken it already; then its
    /// result is awaited, so what the client is told is what happened: a record is never
    /// written after its request was answered 503 (outside dedup and the body budget).
    pub async fn append(
        self: &Arc<Self>,
        record: &OutboundRecord,
        received: SystemTime,
        attempt: Option<PendingDelivery>,
        deadline: tokio::time::Instant,
    ) -> Result<u64, SpoolError> {
        let received_ms = received
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let spool = self.clone();
        let frame_source = record.clone();
        let claim = Arc::new(AtomicU8::new(claim::WAITING));
        let taken = claim.clone();
        let mut task = tokio::spawn(async move {
            spool
                .append_owned(frame_source, received_ms, attempt, taken)
                .await
        });
        let failed = |_| Err(SpoolError::Io(io::Error::other("the spool task failed")));
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(joined) => joined.unwrap_or_else(failed),
            Err(_) => {
                let cancelled = claim
                    .compare_exchange(
                        claim::WAITING,
                        claim::CANCELLED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok();
                if cancelled {
                    Err(SpoolError::Late)
                } else {
                    task.await.unwrap_or_else(failed)
                }
            }
        }
    }

    async fn append_owned(
        self: Arc<Self>,
        record: OutboundRecord,
        received_ms: u64,
        attempt: Option<PendingDelivery>,
        claim: Arc<AtomicU8>,
    ) -> Result<u64, SpoolError> {
        let Ok(queued) = self.queued.try_acquire() else {
            return Err(SpoolError::Busy(MAX_QUEUED_APPENDS));
        };
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
            let len = frame.len() as u64;
            self.check_room(len)?;
            self.index().reserve(seq, received_ms, len);
            let request = WriteRequest {
                claim: Some(claim),
                ..WriteRequest::new(frame, Some((seq, status)), reply)
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
        drop(queued);
        if let Err(error) = result {
            self.index().unreserve(seq);
            if error.kind() == io::ErrorKind::Interrupted {
                // Cancelled at the deadline before the writer took it: nothing was written.
                return Err(SpoolError::Late);
            }
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

    /// After a failed write: probes the disk every [`PROBE_INTERVAL`] with a real record (a
    /// done-marker for no event, appended and fsynced by the writer in the segment events go
    /// to, which also cuts back what the failure left) until it works, then says the spool
    /// accepts again. Without it, readiness waited for a successful write, which cannot come
    /// while the replica is out of its Service; a probe that wrote nothing (it once appended
    /// an empty frame) said "writable" while every real write still failed (EFBIG, EDQUOT).
    fn probe_until_writable(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let spool = self.clone();
        tokio::spawn(async move {
            while spool.failing.load(Ordering::Acquire) {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let (reply, written) = oneshot::channel();
                let probe =
                    WriteRequest::new(journal::encode(&Entry::Done(PROBE_SEQ)), None, reply);
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

    /// `spool.max_bytes` and the disk's free space, for one more frame of `len` bytes.
    fn check_room(&self, len: u64) -> Result<(), SpoolError> {
        let bytes = self.held_bytes();
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
}
