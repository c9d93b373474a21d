//! Held requests waiting for their reply, matched by correlation id.
//!
//! A [`Hold`] is the only owner of a pending entry: its `Drop` removes the entry, so a client
//! that hangs up, a timeout and a shutdown all free it the same way, and nothing can leak. The
//! map's lock is held for a map operation only, never across `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;

/// What the downstream fulfiller decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Delivered: FirstPromoter marks the reward fulfilled (200).
    Fulfilled,
    /// Not yet: the reward stays pending (`fulfilment.pending_status`).
    Pending,
    /// Could not: FirstPromoter retries (`fulfilment.failed_status`).
    Failed,
}

impl Outcome {
    /// The label used in metrics and response bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fulfilled => "fulfilled",
            Self::Pending => "pending",
            Self::Failed => "failed",
        }
    }
}

/// A reply message's value: `{"outcome": "...", "reason": "optional text"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reply {
    /// The decision.
    pub outcome: Outcome,
    /// Free text for people; passed back to FirstPromoter in the response body, shortened.
    #[serde(default)]
    pub reason: Option<String>,
}

/// How a held request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The fulfiller answered in time.
    Answered(Reply),
    /// No answer before the deadline.
    TimedOut,
    /// The relay is shutting down and released the hold.
    Released,
}

/// Where a delivered reply went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// To the request waiting for it.
    Held,
    /// Its request was released recently (timeout, hang-up, shutdown).
    Late,
    /// No request of this replica's ever had this id (normal with several replicas).
    Unmatched,
}

impl Matched {
    /// The `reason` label of `fp_relay_fulfilment_replies_ignored_total`, for ignored replies.
    pub fn ignored_reason(self) -> Option<&'static str> {
        match self {
            Self::Held => None,
            Self::Late => Some("late"),
            Self::Unmatched => Some("unmatched"),
        }
    }
}

/// The reward a held request asks about, and when it asked (see
/// [`super::verdicts::Verdicts::now`]).
#[derive(Debug, Clone)]
pub struct Asked {
    /// `v1:<data.id>`.
    pub reward: Arc<str>,
    /// When the ask started, in milliseconds since the epoch.
    pub at: u64,
}

/// A held request: where its reply goes, and what it asks about.
type Waiting = (oneshot::Sender<Reply>, Option<Asked>);

/// Ids released recently, so a reply for one is "late" rather than "unmatched" (and its
/// verdict is still remembered for its reward).
struct Released {
    /// Ids in release order, for expiry.
    order: VecDeque<(Instant, Uuid)>,
    /// The same ids, for lookup, with the reward each asked about.
    ids: HashMap<Uuid, Option<Asked>>,
    /// How long an id is remembered.
    retention: Duration,
    /// Most ids remembered; the oldest go first.
    capacity: usize,
}

impl Released {
    fn remember(&mut self, id: Uuid, reward: Option<Asked>, now: Instant) {
        self.expire(now);
        if self.order.len() >= self.capacity {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        self.order.push_back((now, id));
        self.ids.insert(id, reward);
    }

    /// `Some(reward)` when `id` was released recently.
    fn get(&mut self, id: &Uuid, now: Instant) -> Option<Option<Asked>> {
        self.expire(now);
        self.ids.get(id).cloned()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, id)) = self.order.front().copied() {
            if now.duration_since(at) < self.retention {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&id);
        }
    }
}

/// The table of held requests.
pub struct Correlator {
    /// Held requests by correlation id, with the reward each asks about.
    pending: Mutex<HashMap<Uuid, Waiting>>,
    /// Recently released ids.
    released: Mutex<Released>,
    /// `fulfilment.max_in_flight`.
    max_in_flight: usize,
    /// Cancelled on shutdown: every hold answers at once.
    release_all: CancellationToken,
    /// For the in-flight gauge.
    metrics: Arc<Metrics>,
    /// When a hold last began or ended (the reply consumer rests after a quiet spell).
    last_activity: Mutex<Instant>,
    /// Woken when a hold begins.
    began: tokio::sync::Notify,
    /// How long a released id is remembered (and so how long replies still matter after the
    /// last hold ended).
    late_retention: Duration,
    /// Where every verdict on a reward is remembered; `None` with `fulfilment.remember` off.
    verdicts: Option<Arc<super::verdicts::Verdicts>>,
}

impl Correlator {
    /// A correlator holding at most `max_in_flight` requests, remembering released ids for
    /// `late_retention`, and every verdict in `verdicts`.
    pub fn new(
        max_in_flight: usize,
        late_retention: Duration,
        metrics: Arc<Metrics>,
        verdicts: Option<Arc<super::verdicts::Verdicts>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            verdicts,
            pending: Mutex::new(HashMap::new()),
            released: Mutex::new(Released {
                order: VecDeque::new(),
                ids: HashMap::new(),
                retention: late_retention,
                capacity: max_in_flight.saturating_mul(4).max(1024),
            }),
            max_in_flight,
            release_all: CancellationToken::new(),
            metrics,
            last_activity: Mutex::new(Instant::now()),
            began: tokio::sync::Notify::new(),
            late_retention,
        })
    }

    /// How long no request has been held and none released: replies read now could match
    /// nothing, not even as late. Zero while any request is held.
    pub fn quiet_for(&self) -> Duration {
        if self.in_flight() > 0 {
            return Duration::ZERO;
        }
        self.last_activity
            .lock()
            .expect("lock not poisoned")
            .elapsed()
    }

    /// How long after the last hold replies still matter (as late ones).
    pub fn late_retention(&self) -> Duration {
        self.late_retention
    }

    /// Resolves when a hold begins (at once if one began since the last call).
    pub async fn hold_began(&self) {
        self.began.notified().await;
    }

    fn note_activity(&self) {
        *self.last_activity.lock().expect("lock not poisoned") = Instant::now();
    }

    /// Registers a new held request about `reward` (its verdict is remembered), or `None` when
    /// `max_in_flight` are already held.
    pub fn hold(self: &Arc<Self>, reward: Option<Asked>) -> Option<Hold> {
        let id = Uuid::new_v4();
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().expect("lock not poisoned");
            if pending.len() >= self.max_in_flight {
                return None;
            }
            pending.insert(id, (tx, reward));
        }
        self.note_activity();
        self.began.notify_one();
        self.metrics.fulfilment_in_flight.inc();
        Some(Hold {
            correlator: self.clone(),
            id,
            rx,
        })
    }

    /// Hands `reply` to the request held under `id`, if there is one, and remembers it as
    /// the verdict on its reward (late ones too).
    pub fn deliver(&self, id: Uuid, reply: Reply) -> Matched {
        let sender = self.pending.lock().expect("lock not poisoned").remove(&id);
        let (matched, reward) = match sender {
            // A send error means the hold is being dropped right now: its client is gone.
            Some((sender, reward)) => {
                self.learned(reward.as_ref(), &reply);
                let _ = sender.send(reply);
                return Matched::Held;
            }
            None => match self
                .released
                .lock()
                .expect("lock not poisoned")
                .get(&id, Instant::now())
            {
                Some(reward) => (Matched::Late, reward),
                None => (Matched::Unmatched, None),
            },
        };
        self.learned(reward.as_ref(), &reply);
        matched
    }

    fn learned(&self, asked: Option<&Asked>, reply: &Reply) {
        if let (Some(verdicts), Some(asked)) = (&self.verdicts, asked) {
            verdicts.learned(&asked.reward, asked.at, reply);
        }
    }

    /// Resolves when the relay releases every hold (shutdown).
    pub async fn released(&self) {
        self.release_all.cancelled().await;
    }

    /// Requests held right now.
    pub fn in_flight(&self) -> usize {
        self.pending.lock().expect("lock not poisoned").len()
    }

    /// Answers every held request, and every later one at once: the relay is shutting down.
    pub fn release_all(&self) {
        self.release_all.cancel();
    }

    /// True once [`Correlator::release_all`] was called: no reply will be waited for.
    pub fn releasing(&self) -> bool {
        self.release_all.is_cancelled()
    }
}

/// One held request. Dropping it frees its entry.
pub struct Hold {
    correlator: Arc<Correlator>,
    /// The `fp-correlation-id` sent downstream.
    id: Uuid,
    /// Where the reply arrives.
    rx: oneshot::Receiver<Reply>,
}

impl Hold {
    /// The correlation id to put on the request.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Waits for the reply until `deadline`, or until the relay releases every hold.
    pub async fn wait(&mut self, deadline: Instant) -> Verdict {
        tokio::select! {
            biased;
            reply = &mut self.rx => match reply {
                Ok(reply) => Verdict::Answered(reply),
                // The sender only goes away with the entry, which only this hold removes.
                Err(_) => Verdict::Released,
            },
            _ = self.correlator.release_all.cancelled() => Verdict::Released,
            _ = tokio::time::sleep_until(deadline) => Verdict::TimedOut,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let still_pending = self
            .correlator
            .pending
            .lock()
            .expect("lock not poisoned")
            .remove(&self.id);
        if let Some((_, reward)) = still_pending {
            self.correlator
                .released
                .lock()
                .expect("lock not poisoned")
                .remember(self.id, reward, Instant::now());
        }
        self.correlator.note_activity();
        self.correlator.metrics.fulfilment_in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn correlator(max: usize) -> Arc<Correlator> {
        Correlator::new(max, Duration::from_secs(60), Arc::new(Metrics::new()), None)
    }

    fn reply(outcome: Outcome) -> Reply {
        Reply {
            outcome,
            reason: None,
        }
    }

    #[tokio::test]
    async fn a_reply_reaches_its_held_request() {
        let c = correlator(10);
        let mut hold = c.hold(None).unwrap();
        assert_eq!(
            c.deliver(hold.id(), reply(Outcome::Fulfilled)),
            Matched::Held
        );
        let verdict = hold.wait(Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(verdict, Verdict::Answered(reply(Outcome::Fulfilled)));
    }

    #[tokio::test(start_paused = true)]
    async fn no_reply_times_out_and_a_later_reply_is_late() {
        let c = correlator(10);
        let mut hold = c.hold(None).unwrap();
        let id = hold.id();
        assert_eq!(
            hold.wait(Instant::now() + Duration::from_secs(10)).await,
            Verdict::TimedOut
        );
        drop(hold);
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.deliver(id, reply(Outcome::Pending)), Matched::Late);
        assert_eq!(
            c.deliver(Uuid::new_v4(), reply(Outcome::Pending)),
            Matched::Unmatched
        );
    }

    #[tokio::test(start_paused = true)]
    async fn late_ids_are_forgotten_after_retention() {
        let c = correlator(10);
        let id = c.hold(None).unwrap().id();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(c.deliver(id, reply(Outcome::Pending)), Matched::Unmatched);
    }

    #[test]
    fn dropping_a_hold_frees_its_entry_and_the_gauge() {
        let c = correlator(10);
        let hold = c.hold(None).unwrap();
        assert_eq!(c.in_flight(), 1);
        assert_eq!(c.metrics.fulfilment_in_flight.get(), 1);
        drop(hold);
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.metrics.fulfilment_in_flight.get(), 0);
    }

    #[test]
    fn holds_beyond_the_cap_are_refused() {
        let c = correlator(2);
        let _a = c.hold(None).unwrap();
        let _b = c.hold(None).unwrap();
        assert!(c.hold(None).is_none());
    }

    #[tokio::test]
    async fn release_all_answers_every_hold() {
        let c = correlator(10);
        let mut hold = c.hold(None).unwrap();
        c.release_all();
        assert_eq!(
            hold.wait(Instant::now() + Duration::from_secs(60)).await,
            Verdict::Released
        );
    }

    #[test]
    fn reply_json_parses_with_and_without_reason() {
        let r: Reply = serde_json::from_str(r#"{"outcome":"failed","reason":"no stock"}"#).unwrap();
        assert_eq!(r.outcome, Outcome::Failed);
        assert_eq!(r.reason.as_deref(), Some("no stock"));
        assert!(serde_json::from_str::<Reply>(r#"{"outcome":"maybe"}"#).is_err());
    }
}
