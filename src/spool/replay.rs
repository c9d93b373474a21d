//! Replay: sends spooled records to Kafka in receive order, in batches, and forgets each once
//! Kafka has it (or, refused for good, the dead-letter topic has it).
//!
//! - **Batches**: up to [`BATCH`] records from the head are handed to the producer at once (in
//!   order, so per-key order holds: one idempotent producer keeps a partition's order), then
//!   their done-markers are written with one fsync. One record and one fsync at a time drained
//!   only 100-200 records a second.
//! - **One copy per record**: each record's delivery is awaited to its final report (bounded by
//!   librdkafka's `message.timeout.ms`, i.e. `spool.delivery_timeout`), never abandoned at a
//!   deadline and sent again while the first copy is still queued.
//! - **Poison records**: a record Kafka refuses for good (too large, not authorised, no such
//!   topic) goes to the dead-letter topic with the reason instead of blocking every record
//!   behind it forever.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::journal::{self, Location};
use super::{from_spooled, Spool};
use crate::kafka::publisher::{refusal_reason, PendingDelivery, PublishError, Publisher};
use crate::kafka::record::OutboundRecord;

/// Most records handed to the producer per batch.
pub const BATCH: usize = 512;
/// First and longest pause between replay attempts while Kafka refuses.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What replay needs besides the spool.
pub struct Replay {
    pub publisher: Arc<Publisher>,
    /// Where records Kafka refuses for good are kept (`kafka.dead_letter_topic`).
    pub dead_letter_topic: String,
    /// How long to wait for room in the producer's queue.
    pub enqueue_timeout: Duration,
}

impl Replay {
    /// Replays until `stop`.
    pub async fn run(self, spool: Arc<Spool>, stop: CancellationToken) {
        let mut pause = RETRY_MIN;
        loop {
            let head = spool.index().ready_head(BATCH);
            if head.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = spool.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let Some((records, read_failure)) = read(&spool, head).await else {
                return;
            };
            let (done, failure) = self.send_batch(&spool, records).await;
            spool.metrics.spool_replayed.inc_by(done.len() as u64);
            spool.mark_done(&done).await;
            let failure = failure
                .map(|error| format!("Kafka: {error}"))
                .or(read_failure.map(|error| format!("cannot read the spool: {error}")));
            match failure {
                None => pause = RETRY_MIN,
                Some(error) => {
                    tracing::warn!(%error, ?pause, "replay failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Sends `records` and waits for each to be settled. Returns the sequence numbers now in
    /// Kafka (or on the dead-letter topic), and the first retriable failure, if any.
    async fn send_batch(
        &self,
        spool: &Arc<Spool>,
        records: Vec<(u64, OutboundRecord)>,
    ) -> (Vec<u64>, Option<PublishError>) {
        let deadline = tokio::time::Instant::now() + self.enqueue_timeout;
        let mut in_flight: Vec<(u64, OutboundRecord, Result<PendingDelivery, PublishError>)> =
            Vec::with_capacity(records.len());
        for (seq, record) in records {
            let sent = self.publisher.send(&record, deadline).await;
            let stop = sent.as_ref().is_err_and(|e| !e.is_permanent());
            in_flight.push((seq, record, sent));
            if stop {
                // Keep receive order: nothing after a record that must be retried.
                break;
            }
        }
        let mut done = Vec::with_capacity(in_flight.len());
        let mut failure = None;
        for (seq, record, sent) in in_flight {
            let outcome = match sent {
                Ok(pending) => pending.outcome().await.map(|_| ()),
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => done.push(seq),
                Err(error) if error.is_permanent() => {
                    match self.dead_letter(seq, record.clone(), &error).await {
                        Ok(()) => done.push(seq),
                        Err(refused) if refused.is_permanent() => {
                            // Refused for good twice: kept on local disk so replay goes on.
                            let reason = format!(
                                "{}; dead letter: {}",
                                refusal_reason(&error),
                                refusal_reason(&refused)
                            );
                            match spool.quarantine(seq, &record, &reason).await {
                                Ok(()) => {
                                    tracing::error!(seq, topic = %record.topic, %reason, "neither the topic nor the dead-letter topic takes a spooled event; kept it in the spool's quarantine.log");
                                    done.push(seq);
                                }
                                Err(io) => {
                                    tracing::error!(seq, error = %io, "cannot quarantine a spooled event no topic takes; it stays pending");
                                    failure.get_or_insert(refused);
                                }
                            }
                        }
                        Err(dead_letter_error) => {
                            failure.get_or_insert(dead_letter_error);
                        }
                    }
                }
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        (done, failure)
    }

    /// Moves a record Kafka refused for good to the dead-letter topic.
    async fn dead_letter(
        &self,
        seq: u64,
        record: OutboundRecord,
        error: &PublishError,
    ) -> Result<(), PublishError> {
        let original = record.topic.clone();
        let record = record.into_dead_letter(&self.dead_letter_topic, &refusal_reason(error));
        let deadline = tokio::time::Instant::now() + self.enqueue_timeout;
        self.publisher
            .send(&record, deadline)
            .await?
            .outcome()
            .await?;
        tracing::warn!(seq, topic = %original, %error, "Kafka refused a spooled event for good; moved it to the dead-letter topic");
        Ok(())
    }
}

/// Reads the records at `head` back from disk. A damaged record (it will never read back) is
/// counted, logged and marked done: it cannot be published. A read the system failed (out of
/// descriptors or memory, a disk error) ends the batch there and is returned, so that replay
/// pauses and reads it again: it never marks a record done. `None` if the runtime is shutting
/// down.
pub(super) async fn read(
    spool: &Arc<Spool>,
    head: Vec<(u64, Location)>,
) -> Option<(Vec<(u64, OutboundRecord)>, Option<std::io::Error>)> {
    let (dir, faults) = (spool.dir.clone(), spool.faults.clone());
    let locations: Vec<Location> = head.iter().map(|(_, location)| *location).collect();
    let read = tokio::task::spawn_blocking(move || journal::read_events(&dir, &locations, &faults))
        .await
        .ok()?;
    let mut records = Vec::with_capacity(read.len());
    let mut damaged = Vec::new();
    let mut failure = None;
    for ((seq, _), event) in head.into_iter().zip(read) {
        match event {
            Ok(event) => records.push((seq, from_spooled(event))),
            Err(error) if journal::is_damage(&error) => {
                tracing::error!(%error, seq, "a spooled record is damaged; skipping it");
                damaged.push(seq);
            }
            Err(error) => failure = Some(error),
        }
    }
    if !damaged.is_empty() {
        spool
            .metrics
            .spool_corrupt_records
            .inc_by(damaged.len() as u64);
        spool.mark_done(&damaged).await;
    }
    Some((records, failure))
}
