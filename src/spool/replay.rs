//! Replay: sends spooled records to Kafka in receive order, in batches, and forgets each once
//! Kafka has it (or, refused for good, the dead-letter topic has it).
//!
//! - **Batches**: up to [`BATCH`] records from the head are handed to the producer at once (in
//!   order, so per-key order holds: one idempotent producer keeps a partition's order), then
//!   they are deleted in one transaction. One record and one fsync at a time drained only
//!   100-200 records a second.
//! - **One copy per record**: each record's delivery is awaited to its final report (bounded by
//!   librdkafka's `message.timeout.ms`, i.e. `spool.delivery_timeout`), never abandoned at a
//!   deadline and sent again while the first copy is still queued.
//! - **Poison records**: a record Kafka refuses for good (too large, not authorised, no such
//!   topic) goes to the dead-letter topic with the reason instead of blocking every record
//!   behind it forever.
//! - **Transient is not permanent**: "no such topic" is also what a cluster restarting empty
//!   answers for a few seconds. A topic is taken for missing only once it has been refused so
//!   for `spool.unknown_topic_wait`; until then its records wait, and nothing of a backlog is
//!   dead-lettered (or quarantined) because of a restart.
//! - **What cannot be read holds nothing back**: when the database keeps failing to read
//!   ([`SET_ASIDE_AFTER`] tries), live events stop waiting behind its records (they go on to
//!   Kafka) while replay keeps trying with backoff; files that could not be read at start
//!   (set aside, an old journal) are tried again with backoff and taken in once they read.
//! - **Shutdown**: a batch handed to the producer is settled before replay stops (its outcomes
//!   and deletes), so that a restart replays nothing Kafka already has.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::store::Stored;
use super::Spool;
use crate::kafka::publisher::{refusal_reason, PendingDelivery, PublishError, Publisher};
use crate::kafka::record::OutboundRecord;

/// Most records handed to the producer per batch.
pub const BATCH: usize = 512;
/// First and longest pause between replay attempts while Kafka refuses.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Consecutive failed reads of the database before live events stop waiting behind it.
pub const SET_ASIDE_AFTER: u32 = 3;
/// First and longest pause between retries of files that could not be read.
const ASIDE_RETRY_MIN: Duration = Duration::from_secs(5);
const ASIDE_RETRY_MAX: Duration = Duration::from_secs(300);

/// What replay remembers between batches.
#[derive(Default)]
struct State {
    /// Topics refused as unknown, and since when.
    unknown_since: HashMap<String, Instant>,
    /// Failed reads of the database in a row.
    failed_reads: u32,
    /// When to try the files that could not be read again, and the pause after that.
    troubled_retry: Option<(Instant, Duration)>,
}

/// What replay needs besides the spool.
pub struct Replay {
    pub publisher: Arc<Publisher>,
    /// Where records Kafka refuses for good are kept (`kafka.dead_letter_topic`).
    pub dead_letter_topic: String,
    /// How long to wait for room in the producer's queue.
    pub enqueue_timeout: Duration,
    /// How long a topic must have been refused as unknown before its records are
    /// dead-lettered (`spool.unknown_topic_wait`).
    pub unknown_topic_wait: Duration,
    /// With `dedup.topic`: a record some replica already published is not written again, and
    /// each record written is marked for the others.
    pub shared_dedup: Option<Arc<crate::dedup::shared::Shared>>,
}

impl Replay {
    /// Replays until `stop`.
    pub async fn run(self, spool: Arc<Spool>, stop: CancellationToken) {
        let mut pause = RETRY_MIN;
        let mut state = State {
            troubled_retry: Some((Instant::now() + ASIDE_RETRY_MIN, ASIDE_RETRY_MIN)),
            ..State::default()
        };
        loop {
            // Never a new batch once stopping; a batch already handed over is settled below.
            if stop.is_cancelled() {
                return;
            }
            self.retry_troubled(&spool, &mut state).await;
            let head = match spool.head(BATCH).await {
                Ok(head) => {
                    if state.failed_reads > 0 {
                        state.failed_reads = 0;
                        spool.set_readable(true);
                    }
                    Ok(head)
                }
                Err(error) => {
                    state.failed_reads += 1;
                    if state.failed_reads == SET_ASIDE_AFTER {
                        spool.set_readable(false);
                    }
                    Err(error)
                }
            };
            let (failure, read_failure) = match head {
                Ok(head) if head.is_empty() => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = spool.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                Ok(head) => {
                    let (done, failure) = self.send_batch(&spool, head, &mut state).await;
                    spool.metrics.spool_replayed.inc_by(done.len() as u64);
                    spool.mark_done(&done).await;
                    (failure, None)
                }
                Err(error) => (None, Some(error)),
            };
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

    /// Tries the files that could not be read when their retry is due, backing off while they
    /// still fail.
    async fn retry_troubled(&self, spool: &Arc<Spool>, state: &mut State) {
        if spool.unreadable_files() == 0 {
            state.troubled_retry = None;
            return;
        }
        let (due, pause) = *state
            .troubled_retry
            .get_or_insert((Instant::now() + ASIDE_RETRY_MIN, ASIDE_RETRY_MIN));
        if Instant::now() < due {
            return;
        }
        state.troubled_retry = match spool.take_in().await {
            0 => None,
            _ => {
                let next = (pause * 2).min(ASIDE_RETRY_MAX);
                Some((Instant::now() + pause, next))
            }
        };
    }

    /// Sends `records` and waits for each to be settled. Returns the ids now in
    /// Kafka (or on the dead-letter topic), and the first retriable failure, if any.
    async fn send_batch(
        &self,
        spool: &Arc<Spool>,
        records: Vec<Stored>,
        state: &mut State,
    ) -> (Vec<i64>, Option<PublishError>) {
        let deadline = tokio::time::Instant::now() + self.enqueue_timeout;
        let mut in_flight: Vec<(i64, OutboundRecord, Result<PendingDelivery, PublishError>)> =
            Vec::with_capacity(records.len());
        let mut done = Vec::with_capacity(records.len());
        for Stored {
            id: seq, record, ..
        } in records
        {
            if let Some(shared) = &self.shared_dedup {
                if record.topic != self.dead_letter_topic && shared.published(&record) {
                    // At-least-once replay (a write whose acknowledgement was lost) or another
                    // replica took the event: it is in its topic already.
                    shared.note_suppressed(&record);
                    done.push(seq);
                    continue;
                }
            }
            let sent = self.publisher.send(&record, deadline).await;
            let stop = sent.as_ref().is_err_and(|e| !e.is_permanent());
            in_flight.push((seq, record, sent));
            if stop {
                // Keep receive order: nothing after a record that must be retried.
                break;
            }
        }
        let mut failure = None;
        for (seq, record, sent) in in_flight {
            let outcome = match sent {
                Ok(pending) => pending.outcome().await.map(|_| ()),
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => {
                    state.unknown_since.remove(&record.topic);
                    // Only an event in its own topic is published; a spooled dead letter may
                    // still be redriven.
                    if let (Some(shared), false) =
                        (&self.shared_dedup, record.topic == self.dead_letter_topic)
                    {
                        shared.mark_record(&record);
                    }
                    done.push(seq);
                }
                Err(error)
                    if error.is_permanent()
                        && !confirmed(state, &record.topic, &error, self.unknown_topic_wait) =>
                {
                    failure.get_or_insert(error);
                }
                Err(error) if error.is_permanent() => {
                    match self.dead_letter(seq, record.clone(), &error).await {
                        Ok(()) => done.push(seq),
                        Err(refused)
                            if refused.is_permanent()
                                && confirmed(
                                    state,
                                    &self.dead_letter_topic,
                                    &refused,
                                    self.unknown_topic_wait,
                                ) =>
                        {
                            // Refused for good twice: kept on local disk so replay goes on.
                            let reason = format!(
                                "{}; dead letter: {}",
                                refusal_reason(&error),
                                refusal_reason(&refused)
                            );
                            match spool.quarantine(seq, &reason).await {
                                Ok(()) => {
                                    // Kept, not done: no longer pending, so replay goes on
                                    // behind it, and only a requeue deletes it.
                                    tracing::error!(seq, topic = %record.topic, %reason, "neither the topic nor the dead-letter topic takes a spooled event; kept it quarantined in the spool (fp-relay spool requeue)");
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
        seq: i64,
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

/// Whether a permanent refusal of `topic` stands: always, except "unknown topic", which must
/// have been said of the topic for `wait` (a cluster restarting empty says it for a few
/// seconds of topics that come back).
fn confirmed(state: &mut State, topic: &str, error: &PublishError, wait: Duration) -> bool {
    if !error.may_be_transient() {
        return true;
    }
    let since = *state
        .unknown_since
        .entry(topic.to_owned())
        .or_insert_with(Instant::now);
    let confirmed = since.elapsed() >= wait;
    if !confirmed {
        tracing::warn!(topic, %error, waited = ?since.elapsed(), "Kafka says the topic does not exist; waiting before dead-lettering its spooled events (a cluster may be restarting)");
    }
    confirmed
}
