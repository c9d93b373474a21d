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
//! - **Transient is not permanent**: "no such topic" is also what a cluster restarting empty
//!   answers for a few seconds. A topic is taken for missing only once it has been refused so
//!   for `spool.unknown_topic_wait`; until then its records wait, and nothing of a backlog is
//!   dead-lettered (or quarantined) because of a restart.
//! - **One bad segment never stalls the rest**: a segment that keeps failing to read (a system
//!   error, not damage) is set aside after [`SET_ASIDE_AFTER`] tries; newer records go on, and
//!   the segment is tried again with backoff until it reads.
//! - **Shutdown**: a batch handed to the producer is settled before replay stops (its outcomes
//!   and done-markers), so that a restart replays nothing Kafka already has.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
/// Consecutive failed reads of one segment before it is set aside.
pub const SET_ASIDE_AFTER: u32 = 3;
/// First and longest pause between retries of segments set aside.
const ASIDE_RETRY_MIN: Duration = Duration::from_secs(5);
const ASIDE_RETRY_MAX: Duration = Duration::from_secs(300);

/// What replay remembers between batches.
#[derive(Default)]
struct State {
    /// Topics refused as unknown, and since when.
    unknown_since: HashMap<String, Instant>,
    /// The segment that failed to read last, and how many times in a row.
    failing_segment: Option<(u64, u32)>,
    /// When to try the troubled segments again, and the pause after that.
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
            let (done, failure) = self.send_batch(&spool, records, &mut state).await;
            spool.metrics.spool_replayed.inc_by(done.len() as u64);
            spool.mark_done(&done).await;
            if let Some((segment, _)) = &read_failure {
                let tries = match state.failing_segment {
                    Some((failed, tries)) if failed == *segment => tries + 1,
                    _ => 1,
                };
                state.failing_segment = Some((*segment, tries));
                if tries >= SET_ASIDE_AFTER {
                    spool.set_aside(*segment);
                    state.failing_segment = None;
                    state
                        .troubled_retry
                        .get_or_insert((Instant::now() + ASIDE_RETRY_MIN, ASIDE_RETRY_MIN));
                    continue;
                }
            } else {
                state.failing_segment = None;
            }
            let failure = failure
                .map(|error| format!("Kafka: {error}"))
                .or(read_failure.map(|(_, error)| format!("cannot read the spool: {error}")));
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

    /// Tries the segments set aside (or unreadable since start-up) when their retry is due,
    /// backing off while they still fail.
    async fn retry_troubled(&self, spool: &Arc<Spool>, state: &mut State) {
        let Some((due, pause)) = state.troubled_retry else {
            return;
        };
        if Instant::now() < due {
            return;
        }
        state.troubled_retry = match spool.retry_troubled().await {
            0 => None,
            _ => {
                let next = (pause * 2).min(ASIDE_RETRY_MAX);
                Some((Instant::now() + pause, next))
            }
        };
    }

    /// Sends `records` and waits for each to be settled. Returns the sequence numbers now in
    /// Kafka (or on the dead-letter topic), and the first retriable failure, if any.
    async fn send_batch(
        &self,
        spool: &Arc<Spool>,
        records: Vec<(u64, OutboundRecord)>,
        state: &mut State,
    ) -> (Vec<u64>, Option<PublishError>) {
        let deadline = tokio::time::Instant::now() + self.enqueue_timeout;
        let mut in_flight: Vec<(u64, OutboundRecord, Result<PendingDelivery, PublishError>)> =
            Vec::with_capacity(records.len());
        let mut done = Vec::with_capacity(records.len());
        for (seq, record) in records {
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

/// Reads the records at `head` back from disk. A damaged record (it will never read back) is
/// counted, logged and marked done: it cannot be published. A read the system failed (out of
/// descriptors or memory, a disk error) ends the batch there and is returned with its segment,
/// so that replay pauses and reads it again (and sets the segment aside if it keeps failing):
/// it never marks a record done. `None` if the runtime is shutting down.
pub(super) async fn read(
    spool: &Arc<Spool>,
    head: Vec<(u64, Location)>,
) -> Option<(Vec<(u64, OutboundRecord)>, Option<(u64, std::io::Error)>)> {
    let (dir, faults) = (spool.dir.clone(), spool.faults.clone());
    let locations: Vec<Location> = head.iter().map(|(_, location)| *location).collect();
    let read = tokio::task::spawn_blocking(move || journal::read_events(&dir, &locations, &faults))
        .await
        .ok()?;
    let mut records = Vec::with_capacity(read.len());
    let mut damaged = Vec::new();
    let mut failure = None;
    for ((seq, location), event) in head.into_iter().zip(read) {
        match event {
            Ok(event) => records.push((seq, from_spooled(event))),
            Err(error) if journal::is_damage(&error) => {
                tracing::error!(%error, seq, "a spooled record is damaged; skipping it");
                damaged.push(seq);
            }
            Err(error) => failure = Some((location.segment, error)),
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
