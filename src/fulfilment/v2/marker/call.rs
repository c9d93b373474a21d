//! One `mark_fulfilled` call, counted and logged, and what it came to ([`Step`]); and the
//! pause between rounds of retries, during which the consumer keeps polling.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use rdkafka::consumer::Consumer;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::read::ReadReply;
use super::Marker;
use crate::fulfilment::v2::api::{CallResult, MARK_FULFILLED};

/// How one commission ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Settled {
    /// FirstPromoter marked it (or had already).
    Marked,
    /// Not marked, for good (refused, or failing past `give_up_after`): the dead-letter reason.
    Rejected(String),
}

/// What one call came to.
pub(super) enum Step {
    Settled(Settled),
    /// FirstPromoter failed in a way another try may not (timeout, 429, 5xx).
    Retry {
        result: &'static str,
        after: Option<Duration>,
        detail: String,
    },
    /// The relay's own settings are refused: try again later, never give up.
    Paused,
}

impl Marker {
    /// One `mark_fulfilled` call for `ids`, counted and logged: settled (`Marked`, or marked
    /// already; `Rejected(reason)` when not marked for good), worth another try, or paused for
    /// the relay's own settings; `None` when stopped first. For several ids, anything but a
    /// plain success is `Rejected`: the caller asks again id by id.
    pub(super) async fn call(&self, ids: &[u64], stop: &CancellationToken) -> Option<Step> {
        let several = ids.len() > 1;
        let started = Instant::now();
        let result = tokio::select! {
            _ = stop.cancelled() => return None,
            result = self.api.mark_fulfilled(ids) => result,
        };
        self.metrics
            .firstpromoter_api_calls
            .with_label_values(&[MARK_FULFILLED, result.label()])
            .inc();
        self.metrics
            .firstpromoter_api_call_duration
            .with_label_values(&[MARK_FULFILLED])
            .observe(started.elapsed().as_secs_f64());
        Some(match result {
            CallResult::Marked | CallResult::AlreadyFulfilled
                if !several || result == CallResult::Marked =>
            {
                self.api_reachable.store(true, Ordering::Release);
                self.metrics.fulfilment_v2_marked.inc_by(ids.len() as u64);
                tracing::info!(commissions = ?ids, result = result.label(), "FirstPromoter marked the reward fulfilled");
                Step::Settled(Settled::Marked)
            }
            CallResult::Misconfigured { result, detail } => {
                // Nothing is known about any commission: pause everyone, lose nothing.
                self.api_reachable.store(false, Ordering::Release);
                tracing::warn!(commissions = ?ids, result, %detail, "FirstPromoter refuses the relay's settings (api_key, account_id, api_url); marking paused until it accepts them");
                Step::Paused
            }
            CallResult::Retry { .. } if several => {
                Step::Settled(Settled::Rejected(format!("{}: split", result.label())))
            }
            CallResult::Retry {
                result,
                after,
                detail,
            } => {
                self.api_reachable.store(false, Ordering::Release);
                Step::Retry {
                    result,
                    after,
                    detail,
                }
            }
            other => {
                self.api_reachable.store(true, Ordering::Release);
                let reason = match &other {
                    CallResult::Rejected { status, message } => {
                        format!("firstpromoter_{status}: {message}")
                    }
                    CallResult::Partial { detail } => {
                        format!("firstpromoter_partial: {detail}")
                    }
                    _ => format!("{}: split", other.label()),
                };
                if !several {
                    tracing::warn!(commissions = ?ids, %reason, "FirstPromoter did not mark the reward fulfilled");
                }
                Step::Settled(Settled::Rejected(reason))
            }
        })
    }

    /// Sleeps `pause`, keeping the oldest-waiting gauge current; false when stopped. The reply
    /// partitions are paused meanwhile and the consumer keeps polling (what it still delivers
    /// waits in the backlog), so a long wait does not cost the group membership.
    pub(super) async fn pause(
        &self,
        pause: Duration,
        waiting: usize,
        oldest: SystemTime,
        stop: &CancellationToken,
    ) -> bool {
        let consumer = self.consumer();
        let paused = consumer.assignment().ok();
        if let Some(list) = &paused {
            let _ = consumer.pause(list);
        }
        let until = Instant::now() + pause;
        let mut stopped = false;
        while Instant::now() < until {
            self.show_waiting(waiting, oldest);
            let tick = until.min(Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = stop.cancelled() => {
                    stopped = true;
                    break;
                }
                _ = tokio::time::sleep_until(tick) => {}
                message = consumer.recv() => {
                    if let Ok(message) = message {
                        let reply = ReadReply::from_message(&message);
                        self.backlog.lock().expect("lock not poisoned").push_back(reply);
                    }
                }
            }
        }
        if let Some(list) = &paused {
            let _ = consumer.resume(list);
        }
        !stopped
    }
}
