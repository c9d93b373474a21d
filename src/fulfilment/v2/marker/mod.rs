//! Acts on v2 replies: a `fulfilled` reply becomes a `mark_fulfilled` call for its commission.
//!
//! At least once, exactly once where it can be known: replies are read in a consumer group
//! (`fulfilment.v2.consumer_group`), so each reply goes to one replica, and offsets are
//! committed only after FirstPromoter answered for every reply up to them. A reply written
//! while every relay was down is read when one starts (a new group starts at the earliest
//! offset). A replica that dies between FirstPromoter's answer and its commit leaves the reply
//! to be read again; FirstPromoter then says "already fulfilled", which counts as done.
//!
//! Answers (classified once, in `api.rs`):
//! - a several-id call that is anything but a plain success is split, and each id asked alone,
//!   so one commission's answer never settles another's;
//! - faults of the relay's own settings (401, a 403 or 404 not about a commission, a redirect,
//!   TLS, DNS) pause marking for every commission, retried with capped backoff with the API
//!   check on `/readyz` failing, until the API accepts the call again: nothing is dead-lettered;
//! - timeouts, connection failures, 429 and 5xx are retried, each pause the larger of the
//!   backoff and `Retry-After`, capped at `retry_max` and never zero, each commission until
//!   `give_up_after` past its reply's Kafka timestamp (so the deadline survives restarts, and
//!   every waiting commission is tried in every round, none behind another), then the reply
//!   is dead-lettered with the last reason;
//! - any other 4xx dead-letters that commission's reply with FirstPromoter's message.
//!
//! `fp-relay redrive` puts dead-lettered replies back on the reply topic. While retrying, the
//! reply partitions are paused and the consumer keeps polling, so the replica keeps its group
//! membership however long FirstPromoter is away (`max.poll.interval.ms`). `pending` and
//! `failed` replies call nothing; a malformed reply is dead-lettered with what is wrong.
//!
//! Over 500 lines: reading, settling (with retries and the split of a refused batch), dead
//! letters and commits are one loop whose order is the guarantee; the API client and the
//! approval rules live beside it (`api.rs`, `mod.rs`).

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::{CallResult, FirstPromoterApi, MARK_FULFILLED, MAX_IDS_PER_CALL};
use crate::config::{Config, KafkaConfig};
use crate::firstpromoter::client::{backoff, ApiClient};
use crate::fulfilment::correlator::{Outcome, Reply};
use crate::kafka::context::RelayContext;
use crate::kafka::outage::ClusterWatch;
use crate::kafka::publisher::Publisher;
use crate::kafka::record::{headers, OutboundRecord};
use crate::metrics::Metrics;

/// Most replies handled (and committed) together.
const MAX_BATCH: usize = 100;
/// How long to wait for more replies once one arrived, so several can share a call.
const GATHER: Duration = Duration::from_millis(20);
/// Pause after a consumer error (the reply topic may not exist yet).
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// A consumer of the v2 replies in `group`, built from `kafka`.
fn build(
    kafka: &KafkaConfig,
    group: &str,
    metrics: &Arc<Metrics>,
    watch: &Arc<ClusterWatch>,
) -> Result<Arc<StreamConsumer<RelayContext>>, KafkaError> {
    let config = crate::kafka::group_consumer_config(kafka, group);
    let context = RelayContext::new(metrics.clone(), watch.clone(), "fulfilment-v2");
    let consumer: StreamConsumer<RelayContext> = config.create_with_context(context)?;
    crate::kafka::aws::hand_first_token(&config, consumer.client());
    Ok(Arc::new(consumer))
}

/// How often the assigned-partitions gauge is refreshed.
const ASSIGNMENT_CHECK: Duration = Duration::from_secs(1);
/// Consumer errors are logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Header on a dead-lettered v2 reply: the commission FirstPromoter refused to mark.
pub const COMMISSION_ID_HEADER: &str = "fp-commission-id";
/// Dead-letter reason of a v2 reply whose correlation id no reply key signed.
pub const UNREQUESTED_REPLY: &str = "unrequested_reply";

/// One reply as read from Kafka, kept until its commission is settled.
struct ReadReply {
    partition: i32,
    offset: i64,
    correlation_id: Option<String>,
    key: Option<String>,
    payload: Bytes,
    headers: Vec<(String, String)>,
    /// Kafka's timestamp, for the oldest-waiting gauge.
    written_at: Option<SystemTime>,
}

impl ReadReply {
    /// The trace id of the reply's `traceparent` (a fulfiller continues the request's trace),
    /// or `-`.
    fn trace_id(&self) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k == crate::trace::TRACEPARENT || k == crate::trace::CE_TRACEPARENT)
            .and_then(|(_, v)| crate::trace::trace_id_of(v))
            .unwrap_or_else(|| "-".to_owned())
    }

    fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let mut pairs = Vec::new();
        let mut correlation_id = None;
        if let Some(list) = message.headers() {
            for header in list.iter() {
                let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
                if header.key == headers::CORRELATION_ID {
                    correlation_id = Some(value.trim().to_owned());
                }
                pairs.push((header.key.to_owned(), value));
            }
        }
        Self {
            partition: message.partition(),
            offset: message.offset(),
            correlation_id,
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            headers: pairs,
            written_at: message
                .timestamp()
                .to_millis()
                .and_then(|ms| u64::try_from(ms).ok())
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }
}

/// How one commission ended.
#[derive(Debug, Clone, PartialEq)]
enum Settled {
    /// FirstPromoter marked it (or had already).
    Marked,
    /// Not marked, for good (refused, or failing past `give_up_after`): the dead-letter reason.
    Rejected(String),
}

/// What one call came to.
enum Step {
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

/// What a reply read from the topic is.
enum Read {
    /// A v1 reply: the v1 reply consumer's, not ours.
    NotOurs,
    /// A v2 reply.
    Reply(u64, Outcome),
    /// Nobody can act on it: why.
    Malformed(&'static str),
    /// Well formed, but to no request a relay issued (its correlation id's signature does not
    /// verify): forged, or from another account's relay. Never acted on.
    Unrequested(u64),
}

/// The v2 reply reader and API caller; see the module documentation.
pub struct Marker {
    /// Replaced (rebuilt, rejoining the group) when Kafka credentials change in their files.
    consumer: std::sync::RwLock<Arc<StreamConsumer<RelayContext>>>,
    /// The Kafka settings as they are now.
    settings: crate::kafka::Settings,
    /// `fulfilment.v2.consumer_group`.
    group: String,
    /// Given to every consumer's context.
    watch: Arc<ClusterWatch>,
    topic: String,
    api: FirstPromoterApi,
    publisher: Arc<Publisher>,
    dead_letter_topic: String,
    ack_timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    /// `fulfilment.v2.give_up_after`.
    give_up_after: Duration,
    metrics: Arc<Metrics>,
    /// False while calls to FirstPromoter fail in ways that are retried; shown on `/readyz`
    /// for information (readiness never depends on FirstPromoter).
    api_reachable: Arc<AtomicBool>,
    /// Replies read while waiting to retry (the consumer keeps polling then); handled next.
    backlog: Mutex<VecDeque<ReadReply>>,
    /// Verifies that a reply answers a request some relay issued.
    keys: super::ReplyKeys,
}

impl Marker {
    /// Builds the consumer and the API client; nothing talks to either until [`Marker::spawn`].
    pub fn new(
        config: &Config,
        kafka: crate::kafka::Settings,
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
        watch: Arc<ClusterWatch>,
        api_reachable: Arc<AtomicBool>,
        client: Arc<ApiClient>,
    ) -> Result<Self, crate::StartError> {
        let settings = &config.fulfilment.v2;
        let consumer = build(&kafka.borrow(), &settings.consumer_group, &metrics, &watch)?;
        Ok(Self {
            consumer: std::sync::RwLock::new(consumer),
            settings: kafka,
            group: settings.consumer_group.clone(),
            watch,
            topic: config.fulfilment.reply_topic.clone(),
            api: FirstPromoterApi::new(client),
            publisher,
            dead_letter_topic: config.kafka.dead_letter_topic.clone(),
            ack_timeout: config.kafka.ack_timeout,
            retry_initial: config.firstpromoter.retry_initial,
            retry_max: config.firstpromoter.retry_max,
            give_up_after: settings.give_up_after,
            metrics,
            api_reachable,
            backlog: Mutex::new(VecDeque::new()),
            keys: super::ReplyKeys::new(config),
        })
    }

    /// Reads replies until `stop` is cancelled; work not finished then is not committed and is
    /// picked up again by whichever replica reads the partition next.
    pub fn spawn(self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if let Err(error) = self.consumer().subscribe(&[&self.topic]) {
                tracing::error!(%error, topic = %self.topic, "cannot subscribe to the reply topic; v2 fulfilment is off");
                return;
            }
            tracing::info!(topic = %self.topic, endpoint = %self.api.endpoint(), "v2 fulfilment: acting on fulfilled replies");
            self.run(&stop).await;
            // Leaving the group blocks while librdkafka says goodbye.
            let consumer = self.consumer();
            drop(self);
            let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        })
    }

    async fn run(&self, stop: &CancellationToken) {
        let mut last_error_log: Option<Instant> = None;
        let mut tick = tokio::time::interval(ASSIGNMENT_CHECK);
        let mut settings = self.settings.clone();
        // Closed when no credentials come from files: nothing will ever change.
        let mut listening = true;
        loop {
            let consumer = self.consumer();
            let waiting = self.backlog.lock().expect("lock not poisoned").pop_front();
            let first = match waiting {
                Some(reply) => Ok(reply),
                None => tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        self.show_assignment();
                        continue;
                    }
                    changed = settings.changed(), if listening => {
                        match changed {
                            Ok(()) => {
                                let kafka = settings.borrow_and_update().clone();
                                self.rebuild(&kafka).await;
                            }
                            Err(_) => listening = false,
                        }
                        continue;
                    }
                    message = consumer.recv() => message.map(|m| ReadReply::from_message(&m)),
                },
            };
            let first = match first {
                Ok(reply) => reply,
                Err(error) => {
                    if last_error_log.is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL) {
                        tracing::warn!(%error, topic = %self.topic, "v2 fulfilment cannot read replies; retrying");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(ERROR_PAUSE) => continue,
                    }
                }
            };
            let mut batch = vec![first];
            {
                let mut backlog = self.backlog.lock().expect("lock not poisoned");
                while batch.len() < MAX_BATCH {
                    let Some(reply) = backlog.pop_front() else {
                        break;
                    };
                    batch.push(reply);
                }
            }
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout(GATHER, consumer.recv()).await {
                    Ok(Ok(message)) => batch.push(ReadReply::from_message(&message)),
                    _ => break,
                }
            }
            if !self.settle_batch(&batch, stop).await {
                return;
            }
            if let Err(error) = self.commit(&batch).await {
                // Another replica took the partition over and reads these replies again;
                // FirstPromoter will answer "already fulfilled" for what was marked here.
                tracing::warn!(%error, "v2 fulfilment could not commit its progress");
            }
        }
    }

    /// The consumer in use.
    fn consumer(&self) -> Arc<StreamConsumer<RelayContext>> {
        self.consumer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the consumer with one built from `kafka` (new credentials): it joins the group
    /// again, and replies not committed yet are read again by whoever gets their partition.
    async fn rebuild(&self, kafka: &KafkaConfig) {
        let fresh = match build(kafka, &self.group, &self.metrics, &self.watch) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(%error, "cannot build the v2 reply consumer with the new Kafka credentials; keeping the old one");
                return;
            }
        };
        if let Err(error) = fresh.subscribe(&[&self.topic]) {
            tracing::error!(%error, "cannot subscribe the rebuilt v2 reply consumer; keeping the old one");
            return;
        }
        tracing::info!("Kafka credentials changed; the v2 reply consumer was rebuilt with them");
        let old = std::mem::replace(
            &mut *self.consumer.write().unwrap_or_else(|p| p.into_inner()),
            fresh,
        );
        // Leaving the group blocks while librdkafka says goodbye.
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
    }

    /// Acts on every reply of `batch`; false when stopped before all were settled.
    async fn settle_batch(&self, batch: &[ReadReply], stop: &CancellationToken) -> bool {
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

    /// How many reply partitions this replica reads now (0 while the group rebalances).
    fn show_assignment(&self) {
        let assigned = self.consumer().assignment().map_or(0, |list| list.count());
        self.metrics
            .fulfilment_v2_assigned_partitions
            .set(i64::try_from(assigned).unwrap_or(i64::MAX));
    }

    fn stopped(&self) -> bool {
        self.show_waiting(0, SystemTime::now());
        false
    }

    /// What a reply is: a v1 reply (not ours), a v2 one, or one nobody can act on (counted
    /// and logged here, dead-lettered by the caller).
    fn read(&self, reply: &ReadReply) -> Read {
        let why = match reply.correlation_id.as_deref() {
            None => "no fp-correlation-id header",
            Some(id) if !super::is_v2(id) => return Read::NotOurs,
            Some(id) => {
                let outcome = serde_json::from_slice::<Reply>(&reply.payload)
                    .ok()
                    .map(|r| r.outcome);
                match (super::commission_of(id), outcome) {
                    (Some(commission), Some(_)) if !self.keys.verify(id) => {
                        self.metrics
                            .fulfilment_v2_replies
                            .with_label_values(&["unrequested"])
                            .inc();
                        tracing::warn!(
                            partition = reply.partition,
                            offset = reply.offset,
                            commission,
                            "a v2 reply to no request this relay issued (its correlation id is \
                             not signed with a reply key) goes to the dead-letter topic; \
                             FirstPromoter is not called"
                        );
                        return Read::Unrequested(commission);
                    }
                    (Some(commission), Some(outcome)) => return Read::Reply(commission, outcome),
                    (None, _) => "the correlation id names no commission (v2:<commission>:<id>)",
                    (_, None) => "the value is not JSON with a known outcome",
                }
            }
        };
        self.metrics
            .fulfilment_v2_replies
            .with_label_values(&["malformed"])
            .inc();
        tracing::warn!(
            partition = reply.partition,
            offset = reply.offset,
            why,
            "a malformed v2 fulfilment reply goes to the dead-letter topic"
        );
        Read::Malformed(why)
    }

    /// One `mark_fulfilled` call for `ids`, counted and logged: settled (`Marked`, or marked
    /// already; `Rejected(reason)` when not marked for good), worth another try, or paused for
    /// the relay's own settings; `None` when stopped first. For several ids, anything but a
    /// plain success is `Rejected`: the caller asks again id by id.
    async fn call(&self, ids: &[u64], stop: &CancellationToken) -> Option<Step> {
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
    async fn pause(
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

    fn show_waiting(&self, waiting: usize, oldest: SystemTime) {
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

    /// Keeps a reply that cannot be acted on (its commission refused, given up on, or the reply
    /// malformed) on the dead-letter topic, retrying while Kafka cannot take it; false when
    /// stopped first.
    async fn dead_letter(
        &self,
        commission: Option<u64>,
        reply: &ReadReply,
        reason: &str,
        stop: &CancellationToken,
    ) -> bool {
        let mut headers: Vec<(Cow<'static, str>, String)> = reply
            .headers
            .iter()
            .map(|(k, v)| (Cow::Owned(k.clone()), v.clone()))
            .collect();
        if let Some(commission) = commission {
            headers.push((COMMISSION_ID_HEADER.into(), commission.to_string()));
        }
        let record = OutboundRecord {
            topic: self.topic.clone(),
            key: reply.key.clone(),
            payload: reply.payload.clone(),
            headers,
        }
        .into_dead_letter(&self.dead_letter_topic, reason);
        let mut attempt = 0;
        loop {
            let deadline = Instant::now() + self.ack_timeout;
            match self.publisher.publish(&record, deadline).await {
                Ok(_) => {
                    self.metrics.dead_lettered.inc();
                    self.metrics.fulfilment_v2_dead_lettered.inc();
                    return true;
                }
                Err(error) => {
                    tracing::warn!(?commission, %error, "cannot dead-letter a v2 reply yet; retrying");
                }
            }
            let pause = backoff(self.retry_initial, self.retry_max, attempt);
            attempt += 1;
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Commits, per partition, the offset after the last reply of `batch`.
    async fn commit(&self, batch: &[ReadReply]) -> Result<(), KafkaError> {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for reply in batch {
            let entry = next.entry(reply.partition).or_insert(reply.offset + 1);
            *entry = (*entry).max(reply.offset + 1);
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in next {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        }
        let consumer = self.consumer();
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }
}
