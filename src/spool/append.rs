//! Appending to the spool: the durable write behind a `202 spooled`, its deadline, the bound on
//! what waits for the writer, the room check, and the probe after a failed write.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::store::{size_of, Tally};
use super::writer::{claim, Request};
use super::{free_bytes, Spool, SpoolError, MAX_QUEUED_APPENDS, MIN_FREE_BYTES, PROBE_INTERVAL};
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
    ) -> Result<i64, SpoolError> {
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
    ) -> Result<i64, SpoolError> {
        let Ok(queued) = self.queued.try_acquire() else {
            return Err(SpoolError::Busy(MAX_QUEUED_APPENDS));
        };
        let size = Tally {
            records: 1,
            bytes: size_of(&record),
        };
        let (reply, written) = oneshot::channel();
        {
            // Counted as a backlog from here, so an event behind it waits for it (receive
            // order); sent under the same lock, so the writer sees appends in that order.
            let mut held = self.held();
            self.check_room(held.bytes(), size.bytes)?;
            held.writing.add(size);
            let request = Request::Append {
                record,
                received_ms,
                in_flight: attempt.is_some(),
                claim,
                reply,
            };
            if !self.send(request) {
                held.writing.sub(size);
                return Err(SpoolError::Io(io::Error::other("the spool writer stopped")));
            }
        }
        let result = written
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the spool writer stopped")));
        self.held().writing.sub(size);
        drop(queued);
        let id = match result {
            Ok(id) => id,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                // Cancelled at the deadline before the writer took it: nothing was written.
                return Err(SpoolError::Late);
            }
            Err(error) => {
                self.failing.store(true, Ordering::Release);
                self.probe_until_writable();
                return Err(SpoolError::Io(error));
            }
        };
        self.failing.store(false, Ordering::Release);
        self.metrics.spooled.inc();
        self.refresh_metrics();
        match attempt {
            Some(attempt) => {
                tokio::spawn(async move {
                    let delivered = attempt.outcome().await.is_ok();
                    self.settle(id, delivered).await;
                });
            }
            None => self.wake.notify_one(),
        }
        Ok(id)
    }

    /// After a failed write: probes the disk every [`PROBE_INTERVAL`] with a real write and
    /// commit of the largest record a request may bring (a row of the `probe` table, deleted
    /// again) until it works, then says the spool accepts again. Without it, readiness waited for a successful write, which cannot come
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
                let bytes = spool.limits.largest_record;
                if !spool.send(Request::Probe { bytes, reply }) {
                    break;
                }
                if let Ok(Ok(())) = written.await {
                    if spool.failing.swap(false, Ordering::AcqRel) {
                        tracing::info!("the spool's disk takes writes again");
                    }
                }
            }
            spool.probing.store(false, Ordering::Release);
            // A failure that came in after the loop's last look found the probe still
            // running and started none: look again.
            if spool.failing.load(Ordering::Acquire) {
                spool.probe_until_writable();
            }
        });
    }

    /// `spool.max_bytes` (against `held` bytes) and the disk's free space, for one more record
    /// of `len` bytes.
    fn check_room(&self, held: u64, len: u64) -> Result<(), SpoolError> {
        if held + len > self.limits.max_bytes {
            return Err(SpoolError::Full {
                bytes: held,
                max: self.limits.max_bytes,
            });
        }
        match free_bytes(&self.dir) {
            Some(free) if free < len + MIN_FREE_BYTES => Err(SpoolError::DiskFull { free }),
            _ => Ok(()),
        }
    }
}
