//! What one replica learned about a reward, every replica knows: fulfilment verdicts
//! remembered for `fulfilment.remember`, shared through `fulfilment.verdict_topic`.
//!
//! FirstPromoter asks about a pending reward again at every fulfilment check. Without memory,
//! a fulfiller that answers after the hold ended (counted `late`) is asked again at the next
//! check and never gets its `fulfilled` to FirstPromoter, and two checks that overlap publish
//! two requests for one reward. So:
//! - every reply the reply consumer matches to a request of this replica's, held or released
//!   (late), becomes the reward's latest verdict, here at once and on the topic for the others;
//! - a request about to be published marks its reward `asking` until its hold ends, here at once
//!   and, once Kafka has the request, on the topic;
//! - a `fulfilment_pending` whose reward has a `fulfilled` verdict is answered 200 at once
//!   (`remembered`); one whose reward is being asked about waits, within its own deadline, for
//!   that request's verdict (`joined`); a `pending` or `failed` verdict asks again.
//!
//! Why a topic of its own, keyed by reward and compacted, and not the reply topic read from
//! the window's start: a reply carries only a correlation id; only the replica that issued the
//! request knows which reward it is about. That replica writes what it learned under the
//! reward's key; every replica reads the last `remember` of it at start (readiness waits for
//! that, bounded by `dedup.load_timeout`) and then follows it. Compaction keeps one record per
//! reward; the window bounds what is read.
//!
//! v2 has no held request: a commission FirstPromoter marked fulfilled (`mark_fulfilled`
//! answered) is remembered as `v2:<commission id>` `fulfilled`, and an approval of it seen
//! again (another event id, after the dedup window) is routed without a new request.
//!
//! Records: key `v1:<data.id>` or `v2:<commission id>`; value `{"at":<ms>,"asking_until":<ms>}` or
//! `{"at":<ms>,"outcome":"fulfilled|pending|failed","reason":"..."}`. A record older than what
//! is known of its reward (an echo of this replica's own) changes nothing.
//!
//! What it cannot do: a reply to a request whose replica died before the reply came is read by
//! nobody who knows its reward; the next check asks again (as before). Two checks of one reward
//! that reach two replicas within the time one replica's `asking` takes to reach the other
//! (about [`crate::kafka::follow::FETCH_WAIT`] plus a write) both publish.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::correlator::{Outcome, Reply};
use crate::kafka::follow::{Follow, FollowState, Sink};
use crate::kafka::publisher::Publisher;
use crate::kafka::record::OutboundRecord;
use crate::kafka::topics::NewTopicSpec;
use crate::metrics::Metrics;

/// What `/readyz` says the relay does while the verdict topic cannot be read.
pub const WITHOUT_TOPIC: &str =
    "verdicts are remembered per process only (not required for readiness)";

/// Longest a verdict's reason is kept (as the answer to FirstPromoter says it).
const MAX_REASON_CHARS: usize = 200;
/// Longest reward key read from the topic.
const MAX_KEY_BYTES: usize = 140;
/// How far ahead of the reader's clock (and of Kafka's timestamp) a record's time may be.
const MAX_SKEW_MS: u64 = 1000;

/// What a wait for another check's verdict came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    /// Its verdict.
    Verdict(Reply),
    /// Nobody asks about the reward any more (its request could not be published): ask.
    NobodyAsking,
    /// The deadline came first.
    TimedOut,
}

/// What is known of a reward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Some replica's request about it is held until then.
    Asking { until: SystemTime },
    /// A fulfiller's latest verdict.
    Answered(Reply),
}

/// The reward a v1 `fulfilment_pending` body is about: `v1:<data.id>` (FirstPromoter's
/// fulfilment record id, a number or a string); `None` without one.
pub fn reward_of(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Body {
        data: Data,
    }
    #[derive(Deserialize)]
    struct Data {
        id: serde_json::Value,
    }
    let body: Body = serde_json::from_slice(payload).ok()?;
    match body.data.id {
        serde_json::Value::Number(id) => Some(format!("v1:{id}")),
        serde_json::Value::String(id) if !id.is_empty() && id.len() <= 128 => {
            Some(format!("v1:{id}"))
        }
        _ => None,
    }
}

/// A record's value on the verdict topic.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// When it was learned, in milliseconds since the epoch (the writer's clock).
    at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    asking_until: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl Record {
    fn known(self) -> Option<(u64, Known)> {
        let known = match (self.asking_until, self.outcome) {
            (Some(until), None) => Known::Asking {
                until: UNIX_EPOCH + Duration::from_millis(until),
            },
            (None, Some(outcome)) => Known::Answered(Reply {
                outcome,
                reason: self.reason,
            }),
            _ => return None,
        };
        Some((self.at, known))
    }
}

/// What is known of each reward, and when it was learned.
#[derive(Default)]
struct Table {
    entries: HashMap<String, (u64, Known)>,
    /// The same rewards by when, oldest first, for expiry and the cap.
    order: BTreeMap<(u64, String), ()>,
}

/// The rewards remembered; see the module documentation.
pub struct Verdicts {
    table: Mutex<Table>,
    /// Woken whenever something is learned.
    learned: Notify,
    remember: Duration,
    max: usize,
    topic: String,
    publisher: Arc<Publisher>,
    ack_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Reads every replica's verdicts.
    follow: Arc<Follow>,
}

impl Verdicts {
    /// Verdicts remembered for `fulfilment.remember`, shared on `fulfilment.verdict_topic`;
    /// nothing is read until [`Verdicts::follow`].
    pub fn new(
        config: &crate::config::Config,
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
        state: Arc<FollowState>,
    ) -> Arc<Self> {
        let settings = &config.fulfilment;
        let mut follow = Follow::new(
            &settings.verdict_topic,
            settings.remember,
            "verdict-consumer",
            "fulfilment verdicts",
        );
        follow.state = state;
        follow.ready_gauge = Some(metrics.fulfilment_verdicts_ready.clone());
        follow.create = settings.create_reply_topic.then(|| {
            NewTopicSpec::compacted_for(settings.reply_topic_partitions, settings.remember)
        });
        Arc::new(Self {
            table: Mutex::default(),
            learned: Notify::new(),
            remember: settings.remember,
            max: settings.remember_max,
            topic: settings.verdict_topic.clone(),
            publisher,
            ack_timeout: config.kafka.ack_timeout,
            metrics,
            follow: Arc::new(follow),
        })
    }

    /// Readiness and detail.
    pub fn state(&self) -> Arc<FollowState> {
        self.follow.state.clone()
    }

    /// Reads the last `remember` of the topic and then every new record until `stop`.
    pub async fn follow(
        self: Arc<Self>,
        settings: crate::kafka::Settings,
        watch: Arc<crate::kafka::outage::ClusterWatch>,
        load_timeout: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let metrics = self.metrics.clone();
        self.follow
            .clone()
            .run(self, settings, watch, metrics, load_timeout, stop)
            .await;
    }

    /// What is known of `reward` now: an `asking` whose hold ended, or anything older than
    /// `remember`, is not.
    pub fn lookup(&self, reward: &str) -> Option<Known> {
        let now = SystemTime::now();
        let mut table = self.table.lock().expect("lock not poisoned");
        self.expire(&mut table, now);
        match table.entries.get(reward) {
            Some((_, Known::Asking { until })) if *until <= now => None,
            Some((_, known)) => Some(known.clone()),
            None => None,
        }
    }

    /// The time an ask starts under: its hold carries it, and the verdict that answers it is
    /// dated just after it (so a late verdict of an older ask never overrides a newer one).
    pub fn now() -> u64 {
        millis(SystemTime::now())
    }

    /// A request about `reward` (asked at `at`, from [`Verdicts::now`]) is about to be
    /// published, held until `until`: later checks wait for its verdict.
    pub fn asking(&self, reward: &str, at: u64, until: SystemTime) {
        self.apply(reward, at, Known::Asking { until });
    }

    /// The request asked at `at` is in Kafka: the other replicas learn of it, unless its
    /// verdict came first (the record would then follow the verdict on the compacted topic
    /// and outlive it).
    pub fn asked(self: &Arc<Self>, reward: &str, at: u64, until: SystemTime) {
        let still_asking = matches!(
            self.table.lock().expect("lock not poisoned").entries.get(reward),
            Some((known_at, Known::Asking { .. })) if *known_at == at
        );
        if !still_asking {
            return;
        }
        let record = Record {
            at,
            asking_until: Some(millis(until)),
            outcome: None,
            reason: None,
        };
        self.write(reward, &record, "asking");
    }

    /// The request asked at `at` could not be published: nobody is asking after all, and the
    /// checks waiting for it ask themselves.
    pub fn not_asked(&self, reward: &str, at: u64) {
        {
            let mut table = self.table.lock().expect("lock not poisoned");
            if matches!(table.entries.get(reward), Some((known_at, Known::Asking { .. })) if *known_at == at)
            {
                table.entries.remove(reward);
                table.order.remove(&(at, reward.to_owned()));
            }
        }
        self.learned.notify_waiters();
    }

    /// A fulfiller answered the request about `reward` asked at `asked_at` (held or late):
    /// remembered here, waiters woken, and written for the other replicas.
    pub fn learned(self: &Arc<Self>, reward: &str, asked_at: u64, reply: &Reply) {
        let at = asked_at.saturating_add(1);
        let reply = bounded(reply.clone());
        self.apply(reward, at, Known::Answered(reply.clone()));
        let record = Record {
            at,
            asking_until: None,
            outcome: Some(reply.outcome),
            reason: reply.reason,
        };
        self.write(reward, &record, "verdict");
    }

    /// FirstPromoter marked the v2 commission `reward` (`v2:<id>`) fulfilled: remembered here
    /// and written for the other replicas, so an approval seen again asks no fulfiller.
    pub fn marked(self: &Arc<Self>, reward: &str) {
        let reply = Reply {
            outcome: Outcome::Fulfilled,
            reason: None,
        };
        self.learned(reward, Self::now(), &reply);
    }

    /// Whether `reward` is known `fulfilled`.
    pub fn fulfilled(&self, reward: &str) -> bool {
        matches!(
            self.lookup(reward),
            Some(Known::Answered(Reply {
                outcome: Outcome::Fulfilled,
                ..
            }))
        )
    }

    /// Waits until the request being asked about `reward` has a verdict, nobody asks any more,
    /// or `deadline`. A request whose hold ended is still waited for: its verdict may come late.
    pub async fn wait(&self, reward: &str, deadline: Instant) -> Waited {
        loop {
            let notified = self.learned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let known = self
                .table
                .lock()
                .expect("lock not poisoned")
                .entries
                .get(reward)
                .map(|(_, known)| known.clone());
            match known {
                Some(Known::Answered(reply)) => return Waited::Verdict(reply),
                Some(Known::Asking { .. }) => {}
                None => return Waited::NobodyAsking,
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return Waited::TimedOut,
            }
        }
    }

    /// Rewards remembered now.
    pub fn len(&self) -> usize {
        self.table.lock().expect("lock not poisoned").entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps `known` as what is known of `reward` since `at`, unless something later is known
    /// or the reward is known `fulfilled` (FirstPromoter is told 200 once and never asks
    /// again; a later `failed` or `pending` of an older ask must not make a relay ask again).
    fn apply(&self, reward: &str, at: u64, known: Known) {
        let now = SystemTime::now();
        if now
            .duration_since(UNIX_EPOCH + Duration::from_millis(at))
            .is_ok_and(|age| age >= self.remember)
        {
            return;
        }
        {
            let mut table = self.table.lock().expect("lock not poisoned");
            if let Some((known_at, old)) = table.entries.get(reward) {
                let fulfilled = |k: &Known| {
                    matches!(
                        k,
                        Known::Answered(Reply {
                            outcome: Outcome::Fulfilled,
                            ..
                        })
                    )
                };
                if *known_at >= at || (fulfilled(old) && !fulfilled(&known)) {
                    return;
                }
                let old = (*known_at, reward.to_owned());
                table.order.remove(&old);
            }
            table.entries.insert(reward.to_owned(), (at, known));
            table.order.insert((at, reward.to_owned()), ());
            self.expire(&mut table, now);
            self.metrics
                .fulfilment_verdicts_remembered
                .set(i64::try_from(table.entries.len()).unwrap_or(i64::MAX));
        }
        self.learned.notify_waiters();
    }

    /// Forgets what is older than `remember`, and the oldest beyond `remember_max` rewards.
    fn expire(&self, table: &mut Table, now: SystemTime) {
        let oldest_kept = millis(now.checked_sub(self.remember).unwrap_or(UNIX_EPOCH));
        while let Some(((at, reward), ())) = table.order.first_key_value() {
            if *at >= oldest_kept && table.entries.len() <= self.max {
                break;
            }
            let reward = reward.clone();
            table.order.pop_first();
            table.entries.remove(&reward);
        }
    }

    /// Writes `record` under `reward` in the background; counted by `kind` and result.
    fn write(self: &Arc<Self>, reward: &str, record: &Record, kind: &'static str) {
        let record = OutboundRecord {
            topic: self.topic.clone(),
            key: Some(reward.to_owned()),
            payload: serde_json::to_vec(record)
                .expect("a record serialises")
                .into(),
            headers: Vec::new(),
        };
        let verdicts = self.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + verdicts.ack_timeout;
            let result = verdicts.publisher.publish(&record, deadline).await;
            let label = if result.is_ok() { "ok" } else { "failed" };
            verdicts
                .metrics
                .fulfilment_verdicts_written
                .with_label_values(&[kind, label])
                .inc();
            if let Err(error) = result {
                tracing::debug!(%error, topic = %verdicts.topic, kind, "verdict not written");
            }
        });
    }
}

impl Sink for Verdicts {
    fn read(&self, key: Option<&[u8]>, value: Option<&[u8]>, written: SystemTime) -> u64 {
        let reward = key
            .filter(|k| {
                k.len() <= MAX_KEY_BYTES && (k.starts_with(b"v1:") || k.starts_with(b"v2:"))
            })
            .and_then(|k| std::str::from_utf8(k).ok());
        let record = value.and_then(|v| serde_json::from_slice::<Record>(v).ok());
        let (Some(reward), Some((at, known))) = (reward, record.and_then(Record::known)) else {
            self.metrics
                .fulfilment_verdicts_read
                .with_label_values(&["foreign"])
                .inc();
            return 0;
        };
        self.metrics
            .fulfilment_verdicts_read
            .with_label_values(&["ok"])
            .inc();
        // A record dated ahead of Kafka's timestamp or this clock (a forged one, or a writer
        // whose clock runs ahead) would outrank every record after it.
        let cap = millis(written)
            .min(millis(SystemTime::now()))
            .saturating_add(MAX_SKEW_MS);
        let known = match known {
            Known::Answered(reply) => Known::Answered(bounded(reply)),
            asking => asking,
        };
        self.apply(reward, at.min(cap), known);
        1
    }
}

/// `reply` with its reason cut to [`MAX_REASON_CHARS`].
fn bounded(mut reply: Reply) -> Reply {
    if let Some(reason) = &mut reply.reason {
        if let Some((cut, _)) = reason.char_indices().nth(MAX_REASON_CHARS) {
            reason.truncate(cut);
        }
    }
    reply
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(max: usize) -> Arc<Verdicts> {
        let mut config = crate::config::Config::default();
        config.fulfilment.remember_max = max;
        config.fulfilment.remember = Duration::from_secs(3600);
        let metrics = Arc::new(Metrics::new());
        // Never connects: nothing here writes (apply and lookup only).
        let publisher = Arc::new(
            Publisher::new(
                crate::kafka::producer_configs(&config.kafka, Duration::from_secs(1)),
                Duration::from_secs(1),
                metrics.clone(),
                Arc::default(),
            )
            .unwrap(),
        );
        Verdicts::new(&config, publisher, metrics, Arc::default())
    }

    fn answered(outcome: Outcome) -> Known {
        Known::Answered(Reply {
            outcome,
            reason: None,
        })
    }

    #[test]
    fn the_reward_is_data_id_as_a_number_or_a_string() {
        assert_eq!(
            reward_of(br#"{"event":{"id":1},"data":{"id":771204}}"#).as_deref(),
            Some("v1:771204")
        );
        assert_eq!(
            reward_of(br#"{"data":{"id":"rw-9"}}"#).as_deref(),
            Some("v1:rw-9")
        );
        for body in [
            &br#"{"data":{}}"#[..],
            br#"{"data":{"id":null}}"#,
            br#"{"data":{"id":""}}"#,
            b"[1]",
        ] {
            assert_eq!(reward_of(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_later_record_wins_and_an_older_echo_changes_nothing() {
        let v = verdicts(10);
        let now = millis(SystemTime::now());
        let until = SystemTime::now() + Duration::from_secs(10);
        v.apply("v1:1", now, Known::Asking { until });
        v.apply("v1:1", now + 5, answered(Outcome::Fulfilled));
        // The echo of the asking record, read back from the topic after the verdict.
        v.apply("v1:1", now, Known::Asking { until });
        assert_eq!(v.lookup("v1:1"), Some(answered(Outcome::Fulfilled)));
        // A fulfilled reward stays fulfilled: a late `pending` of an older ask changes nothing.
        v.apply("v1:1", now + 9, answered(Outcome::Pending));
        assert_eq!(v.lookup("v1:1"), Some(answered(Outcome::Fulfilled)));
        // Otherwise the later record wins.
        v.apply("v1:11", now, answered(Outcome::Failed));
        v.apply("v1:11", now + 9, answered(Outcome::Pending));
        assert_eq!(v.lookup("v1:11"), Some(answered(Outcome::Pending)));
    }

    #[test]
    fn an_asking_whose_hold_ended_is_not_known_and_old_records_are_ignored() {
        let v = verdicts(10);
        let now = SystemTime::now();
        v.apply(
            "v1:2",
            millis(now),
            Known::Asking {
                until: now - Duration::from_millis(1),
            },
        );
        assert_eq!(v.lookup("v1:2"), None);
        let old = now - Duration::from_secs(7200);
        v.apply("v1:3", millis(old), answered(Outcome::Fulfilled));
        assert_eq!(v.lookup("v1:3"), None, "older than remember");
    }

    #[test]
    fn the_cap_forgets_the_oldest_rewards_first() {
        let v = verdicts(3);
        let now = millis(SystemTime::now());
        for n in 0..5u64 {
            v.apply(&format!("v1:{n}"), now + n, answered(Outcome::Pending));
        }
        assert_eq!(v.len(), 3);
        assert_eq!(v.lookup("v1:1"), None);
        assert!(v.lookup("v1:4").is_some());
        // A reward learned again moves to the young end; its old place is gone with it.
        v.apply("v1:2", now + 10, answered(Outcome::Failed));
        v.apply("v1:9", now + 11, answered(Outcome::Failed));
        assert_eq!(v.len(), 3);
        assert!(v.lookup("v1:2").is_some());
        assert_eq!(v.lookup("v1:3"), None);
        assert_eq!(v.table.lock().unwrap().order.len(), 3);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_verdict_learned_while_it_waits() {
        let v = verdicts(10);
        let until = SystemTime::now() + Duration::from_secs(5);
        let at = Verdicts::now();
        v.asking("v1:7", at, until);
        let waiter = tokio::spawn({
            let v = v.clone();
            async move {
                v.wait("v1:7", Instant::now() + Duration::from_secs(5))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        v.apply("v1:7", at + 1, answered(Outcome::Fulfilled));
        assert_eq!(
            waiter.await.unwrap(),
            Waited::Verdict(Reply {
                outcome: Outcome::Fulfilled,
                reason: None
            })
        );
        // An ask whose hold ended is still waited for, up to the waiter's deadline.
        v.asking("v1:8", Verdicts::now(), SystemTime::now());
        assert_eq!(
            v.wait("v1:8", Instant::now() + Duration::from_millis(20))
                .await,
            Waited::TimedOut
        );
        // An ask that could not be published sends its waiters to ask themselves.
        let at = Verdicts::now() + 10;
        v.asking("v1:9", at, until);
        let waiter = tokio::spawn({
            let v = v.clone();
            async move {
                v.wait("v1:9", Instant::now() + Duration::from_secs(5))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        v.not_asked("v1:9", at);
        assert_eq!(waiter.await.unwrap(), Waited::NobodyAsking);
    }

    #[test]
    fn verdict_records_read_back_and_anything_else_is_foreign() {
        let v = verdicts(10);
        let at = millis(SystemTime::now());
        let value = format!(r#"{{"at":{at},"outcome":"fulfilled","reason":"sent"}}"#);
        assert_eq!(
            v.read(Some(b"v1:5"), Some(value.as_bytes()), SystemTime::now()),
            1
        );
        assert_eq!(
            v.lookup("v1:5"),
            Some(Known::Answered(Reply {
                outcome: Outcome::Fulfilled,
                reason: Some("sent".to_owned())
            }))
        );
        for value in [
            &br#"{"at":1}"#[..],
            br#"{"at":1,"outcome":"maybe"}"#,
            b"FPDM",
        ] {
            assert_eq!(v.read(Some(b"v1:6"), Some(value), SystemTime::now()), 0);
        }
        assert_eq!(v.read(None, Some(value.as_bytes()), SystemTime::now()), 0);
        assert_eq!(
            v.read(Some(b"other:5"), Some(value.as_bytes()), SystemTime::now()),
            0
        );
        assert_eq!(
            v.metrics
                .fulfilment_verdicts_read
                .with_label_values(&["foreign"])
                .get(),
            5
        );
    }

    #[test]
    fn a_record_dated_in_the_future_is_capped_and_reasons_are_bounded() {
        let v = verdicts(10);
        let now = millis(SystemTime::now());
        let year = 365 * 24 * 3600 * 1000;
        let forged = format!(
            r#"{{"at":{},"outcome":"failed","reason":"{}"}}"#,
            now + year,
            "x".repeat(5000)
        );
        v.read(Some(b"v1:12"), Some(forged.as_bytes()), SystemTime::now());
        let entry = v.table.lock().unwrap().entries.get("v1:12").cloned();
        let (at, known) = entry.expect("kept");
        assert!(at <= now + 2 * MAX_SKEW_MS, "capped: {}", at - now);
        let Known::Answered(reply) = known else {
            panic!("a verdict")
        };
        assert_eq!(
            reply.reason.map(|r| r.chars().count()),
            Some(MAX_REASON_CHARS)
        );
        // So a real record a few seconds later still wins.
        v.apply("v1:12", now + 5000, answered(Outcome::Pending));
        assert_eq!(v.lookup("v1:12"), Some(answered(Outcome::Pending)));
    }
}
