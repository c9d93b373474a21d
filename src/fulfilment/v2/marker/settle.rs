//! Settling a batch: each reply read, each fulfilled commission marked in one call with
//! others, then alone (the split of a refused batch), in rounds of retries until marked,
//! refused, or past its deadline; what was not marked is dead-lettered.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::call::{Settled, Step};
use super::read::{Read, ReadReply};
use super::{Marker, UNREQUESTED_REPLY};
use crate::firstpromoter::client::backoff;
use crate::fulfilment::correlator::Outcome;
use crate::fulfilment::v2::api::MAX_IDS_PER_CALL;

impl Marker {
    /// Acts on every reply of `batch`; false when stopped before all were settled.
    pub(super) async fn settle_batch(&self, batch: &[ReadReply], stop: &CancellationToken) -> bool {
        let mut to_mark: Vec<u64> = Vec::new();
        let mut fulfilled: Vec<(u64, &ReadReply)> = Vec::new();
        for reply in batch {
            let (commission, outcome) = match self.read(reply) {
                Read::NotOurs => continue,
                Read::Malformed(why) => {
                    let reason = format!("malformed_reply: {why}");
                    if !self.dead_letter(None, reply, &reason, stop).await {
                        return self.stopped();
                    }
                    continue;
                }
                Read::Unrequested(commission) => {
                    if !self
                        .dead_letter(Some(commission), reply, UNREQUESTED_REPLY, stop)
                        .await
                    {
                        return self.stopped();
                    }
                    continue;
                }
                Read::Reply(commission, outcome) => (commission, outcome),
            };
            self.metrics
                .fulfilment_v2_replies
                .with_label_values(&[outcome.as_str()])
                .inc();
            let trace_id = reply.trace_id();
            if outcome == Outcome::Fulfilled {
                tracing::info!(
                    commission,
                    %trace_id,
                    "v2 fulfiller fulfilled the reward; telling FirstPromoter"
                );
                if !to_mark.contains(&commission) {
                    to_mark.push(commission);
                }
                fulfilled.push((commission, reply));
            } else {
                tracing::info!(
                    commission,
                    %trace_id,
                    outcome = outcome.as_str(),
                    "v2 fulfiller did not fulfil; FirstPromoter not called"
                );
            }
        }
        if to_mark.is_empty() {
            return true;
        }
        let oldest = fulfilled
            .iter()
            .filter_map(|(_, r)| r.written_at)
            .min()
            .unwrap_or_else(SystemTime::now);
        // Each commission's deadline, from Kafka's clock: the oldest of its replies' timestamps
        // plus give_up_after, so that it holds across restarts and never waits behind another.
        let mut deadlines: BTreeMap<u64, SystemTime> = BTreeMap::new();
        for (commission, reply) in &fulfilled {
            let written = reply.written_at.unwrap_or_else(SystemTime::now);
            let deadline = deadlines.entry(*commission).or_insert(written);
            *deadline = (*deadline).min(written);
        }
        for deadline in deadlines.values_mut() {
            *deadline += self.give_up_after;
        }
        let mut settled: BTreeMap<u64, Settled> = BTreeMap::new();
        // Up to MAX_IDS_PER_CALL in one call; anything but a plain success for several ids
        // is asked again id by id, so no commission's answer settles another's.
        let mut alone: Vec<u64> = Vec::new();
        for chunk in to_mark.chunks(MAX_IDS_PER_CALL) {
            if chunk.len() == 1 {
                alone.push(chunk[0]);
                continue;
            }
            self.show_waiting(to_mark.len() - settled.len(), oldest);
            match self.call(chunk, stop).await {
                Some(Step::Settled(Settled::Marked)) => {
                    settled.extend(chunk.iter().map(|id| (*id, Settled::Marked)));
                }
                Some(_) => alone.extend_from_slice(chunk),
                None => return self.stopped(),
            }
        }
        // Then each commission alone, all of them in every round, until each is marked,
        // refused, or past its deadline while FirstPromoter keeps failing.
        let mut attempt: u32 = 0;
        while !alone.is_empty() {
            let mut again = Vec::new();
            let mut pause = Duration::ZERO;
            let mut paused = false;
            for id in alone {
                if paused {
                    // The settings are refused: nobody's call can tell more this round.
                    again.push(id);
                    continue;
                }
                self.show_waiting(to_mark.len() - settled.len(), oldest);
                match self.call(&[id], stop).await {
                    Some(Step::Settled(result)) => {
                        settled.insert(id, result);
                    }
                    Some(Step::Retry {
                        result,
                        after,
                        detail,
                    }) => {
                        let deadline = deadlines.get(&id).copied().unwrap_or(oldest);
                        if SystemTime::now() >= deadline {
                            tracing::warn!(commission = id, result, %detail, after = ?self.give_up_after, "mark_fulfilled kept failing; giving up on this commission (dead-lettered)");
                            settled.insert(
                                id,
                                Settled::Rejected(format!(
                                    "firstpromoter_gave_up: {result} for {}: {detail}",
                                    humantime::format_duration(self.give_up_after)
                                )),
                            );
                        } else {
                            tracing::warn!(commission = id, result, %detail, attempt = attempt + 1, "mark_fulfilled failed; retrying");
                            pause = pause.max(after.unwrap_or_default());
                            again.push(id);
                        }
                    }
                    Some(Step::Paused) => {
                        paused = true;
                        again.push(id);
                    }
                    None => return self.stopped(),
                }
            }
            if again.is_empty() {
                break;
            }
            // The larger of what the server asked for and the backoff: a Retry-After of 0
            // (or in the past) must not become a loop without pauses.
            let pause = pause
                .max(backoff(self.retry_initial, self.retry_max, attempt))
                .min(self.retry_max);
            attempt = attempt.saturating_add(1);
            if !self.pause(pause, again.len(), oldest, stop).await {
                return self.stopped();
            }
            alone = again;
        }
        self.show_waiting(0, oldest);
        if let Some(verdicts) = &self.verdicts {
            for (commission, _) in settled.iter().filter(|(_, s)| **s == Settled::Marked) {
                verdicts.marked(&format!("v2:{commission}"));
            }
        }
        for (commission, reply) in fulfilled {
            if let Some(Settled::Rejected(reason)) = settled.get(&commission) {
                if !self
                    .dead_letter(Some(commission), reply, reason, stop)
                    .await
                {
                    return self.stopped();
                }
            }
        }
        true
    }

    fn stopped(&self) -> bool {
        self.show_waiting(0, SystemTime::now());
        false
    }

    pub(super) fn show_waiting(&self, waiting: usize, oldest: SystemTime) {
        self.metrics
            .fulfilment_v2_waiting
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        let age = if waiting == 0 {
            0.0
        } else {
            oldest.elapsed().unwrap_or_default().as_secs_f64()
        };
        self.metrics.fulfilment_v2_oldest_waiting_age.set(age);
    }
}
