//! The producer wrapper: idempotent, `acks=all`, every write awaited to its delivery report and
//! bounded by a deadline, and rebuilt when librdkafka declares it fatally broken.
//!
//! Why rebuild: a cluster that forgets the idempotent producer's id (a broker restarted with
//! in-memory storage, an unclean leader election) makes librdkafka raise a fatal error, after
//! which that producer instance never produces again. Everything the broken producer had in
//! flight fails, so it is answered 503, never claimed; the next request gets a fresh producer.
//!
//! librdkafka does not always call that fatal: against a broker that lost the producer id it
//! can also bump its epoch and retry "unknown producer id" forever, delivering nothing. So a
//! producer whose last few writes all went unacknowledged is replaced too, at most once per
//! `ack_timeout`. During a plain outage that costs one cheap rebuild per `ack_timeout`; a
//! replaced producer keeps delivering what it already holds until its last writer is done.
//!
//! Load-aware batching: a generation may hold a second producer that lingers to fill batches
//! ([`super::producer_configs`]). A write takes it when `above_in_flight` writes already await
//! their acknowledgement, else the first producer, which sends at once: one request at a time
//! waits for nothing, and under load records leave in fewer, larger produce requests. Both are
//! built, checked for fatal errors, replaced, flushed and probed together, as one.
//!
//! Why a topic is looked up before its first write: librdkafka reports a topic that does not
//! exist only after `topic.metadata.propagation.max.ms` (30 s), long past `ack_timeout`; with
//! broker auto-create off, a new event type or a typo in `kafka.topics` was a 503 per request
//! (lost for v1) and, three timeouts in a row, a replaced producer. A metadata request for the
//! topic answers at once: missing (or not authorised) is a permanent refusal, dead-lettered,
//! remembered for [`RECHECK_MISSING`]; a topic that exists is remembered for good. The request
//! allows auto-creation, as a write would. While the cluster is known to be down nothing is
//! looked up, and a lookup that got no answer is not tried again for [`RECHECK_MISSING`]: an
//! outage must not add a wait to every write (spool replay after a restart writes many).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::classify::{classify, Class};
use super::context::RelayContext;
use super::outage::ClusterWatch;
use super::record::OutboundRecord;
use crate::metrics::Metrics;

/// Consecutive unacknowledged writes after which the producer is presumed stuck.
const STUCK_AFTER_FAILURES: u32 = 3;

/// Pause between attempts to enqueue while the producer's queue is full.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(10);

/// Longest wait for a topic's metadata before its first write.
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a topic found missing is refused before it is looked up again.
pub const RECHECK_MISSING: Duration = Duration::from_secs(10);

/// Most topics remembered (they come from event types; the table starts over past this).
const MAX_KNOWN_TOPICS: usize = 10_000;

/// What the cluster said about a topic.
#[derive(Debug, Clone, Copy)]
enum TopicState {
    Exists,
    /// Missing or refused, with the code, since then.
    Refused(RDKafkaErrorCode, Instant),
    /// The lookup got no answer (or a passing state) then: writes go ahead meanwhile.
    Unanswered(Instant),
}

impl TopicState {
    /// Whether a write to the topic may go ahead.
    fn verdict(self) -> Result<(), PublishError> {
        match self {
            Self::Exists | Self::Unanswered(_) => Ok(()),
            Self::Refused(code, _) => {
                Err(PublishError::Refused(KafkaError::MessageProduction(code)))
            }
        }
    }
}

/// The settings a [`Publisher`] builds its producers from ([`super::producer_configs`]).
#[derive(Clone)]
pub struct ProducerConfigs {
    /// The producer that sends each write at once; the typed settings already in it.
    pub immediate: ClientConfig,
    /// The same settings lingering to fill batches, and the number of writes in flight from
    /// which new writes take it; `None`: one producer.
    pub batching: Option<(ClientConfig, usize)>,
}

impl From<ClientConfig> for ProducerConfigs {
    /// One producer.
    fn from(immediate: ClientConfig) -> Self {
        Self {
            immediate,
            batching: None,
        }
    }
}

/// Which producer a write takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The batching one once enough writes are in flight, else the immediate one.
    ByLoad,
    /// Always the same one (the batching one when there is one, since such writes come many
    /// at once): spool replay, whose records must keep their order in a partition.
    Ordered,
    /// Always the immediate one: a fulfilment request, whose HTTP request waits for a reply
    /// to it and must not wait for a batch to fill as well.
    AtOnce,
}

/// Where Kafka put a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition written to.
    pub partition: i32,
    /// Offset within that partition.
    pub offset: i64,
}

/// Why a record is not known to be in Kafka.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No delivery report before the deadline; the record may still arrive later.
    #[error("Kafka did not acknowledge before the deadline")]
    Timeout,
    /// The local queue stayed full until the deadline: backpressure.
    #[error("the producer queue is full")]
    QueueFull,
    /// The producer was fatally broken; a fresh one takes the next request.
    #[error("the producer hit a fatal error and is being replaced: {0}")]
    Fatal(KafkaError),
    /// The write failed in a way a retry may fix.
    #[error("Kafka failed the write: {0}")]
    Kafka(KafkaError),
    /// Kafka reported the record delivered without an offset (a duplicate sequence number):
    /// it may or may not be in Kafka, so it is not acknowledged.
    #[error("Kafka reported the write delivered without an offset; not counted as acknowledged")]
    Unconfirmed,
    /// Kafka will never accept this record as it is (too large, not authorised, no such
    /// topic): dead-letter it, never retry it.
    #[error("Kafka refused the record for good: {0}")]
    Refused(KafkaError),
    /// Kafka did not take the event in time and the spool could not either.
    #[error("Kafka did not take the event in time and the spool could not: {0}")]
    Spool(String),
}

impl PublishError {
    /// Stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::QueueFull => "queue_full",
            Self::Fatal(_) => "fatal",
            Self::Kafka(_) => "error",
            Self::Unconfirmed => "unconfirmed",
            Self::Refused(_) => "refused",
            Self::Spool(_) => "spool",
        }
    }

    /// True when no retry can succeed ([`super::classify::Class::Permanent`]).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused(_))
    }

    /// A permanent refusal that is also what a cluster restarting empty says for a few seconds:
    /// the topic (or partition) does not exist.
    pub fn may_be_transient(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as Code;
        matches!(
            self,
            Self::Refused(kafka) if matches!(
                kafka.rdkafka_error_code(),
                Some(Code::UnknownTopic | Code::UnknownPartition | Code::UnknownTopicOrPartition)
            )
        )
    }
}

/// A deadline passed before the delivery report came.
pub enum Handoff {
    /// The write failed: the record is not in Kafka.
    Failed(PublishError),
    /// The record is still in flight; [`PendingDelivery::outcome`] says how it ends.
    InFlight(PendingDelivery),
}

/// A record handed to the producer whose delivery report has not come yet; it counts as in
/// flight (for the choice of producer) until it is resolved or dropped.
pub struct PendingDelivery {
    publisher: Arc<Publisher>,
    /// Keeps the producer that holds the record alive until its report comes.
    generation: Arc<Generation>,
    delivery: DeliveryFuture,
    started: Instant,
}

impl PendingDelivery {
    /// Waits for the delivery report (bounded by librdkafka's `message.timeout.ms`).
    pub async fn outcome(mut self) -> Result<Delivered, PublishError> {
        let result = (&mut self.delivery).await;
        self.resolve(result)
    }

    fn resolve(
        self,
        result: <DeliveryFuture as std::future::Future>::Output,
    ) -> Result<Delivered, PublishError> {
        let result = match result {
            // librdkafka reports a batch the broker answered DUPLICATE_SEQUENCE_NUMBER as
            // delivered, without an offset ("previous send succeeded but was not
            // acknowledged"). A broker that forgot the producer's state and handed its id to
            // another producer answers that for records it never wrote (the chaos run's seed 12,
            // tansu restarted empty): a 2xx on it lost the event. No offset, no acknowledgement:
            // the event is spooled or refused as in an outage (at worst a duplicate, never a
            // loss), and the producer, whose sequence the broker disputes, is replaced.
            Ok(Ok(delivery)) if delivery.offset < 0 => {
                tracing::warn!(
                    partition = delivery.partition,
                    "Kafka reported a write delivered without an offset (duplicate sequence number); not counted as acknowledged, replacing the producer"
                );
                self.publisher.replace(&self.generation);
                Err(PublishError::Unconfirmed)
            }
            Ok(Ok(delivery)) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((error, _))) => Err(self.publisher.classify(error, &self.generation)),
            Err(_) => Err(PublishError::Kafka(KafkaError::Canceled)),
        };
        self.publisher.observe(
            result.as_ref().map(|_| ()),
            Some(self.started),
            &self.generation,
        );
        result
    }

    /// Gives up waiting: counts the write as timed out for metrics and the watchdog.
    fn abandon(self) -> PublishError {
        self.publisher.observe(
            Err(&PublishError::Timeout),
            Some(self.started),
            &self.generation,
        );
        PublishError::Timeout
    }
}

impl Drop for PendingDelivery {
    fn drop(&mut self) {
        self.publisher.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One producer instance and its place in the rebuild sequence.
struct Generation {
    /// Increases with every rebuild, so only the first request to see a broken producer replaces it.
    id: u64,
    /// The producer that sends at once; `None` only while being dropped.
    producer: Option<FutureProducer<RelayContext>>,
    /// The producer that lingers, and the writes in flight from which it is taken.
    batching: Option<(FutureProducer<RelayContext>, usize)>,
}

impl Generation {
    /// The producer that sends at once (metadata lookups and probes use it).
    fn producer(&self) -> &FutureProducer<RelayContext> {
        self.producer.as_ref().expect("present until drop")
    }

    /// The producer for a write taking `route` while `in_flight` others await
    /// acknowledgement, and whether it is the batching one.
    fn for_write(&self, in_flight: usize, route: Route) -> (&FutureProducer<RelayContext>, bool) {
        match (&self.batching, route) {
            (Some((batching, _)), Route::Ordered) => (batching, true),
            (Some((batching, above)), Route::ByLoad) if in_flight >= *above => (batching, true),
            _ => (self.producer(), false),
        }
    }

    /// Fails every write either producer holds, queued or in flight, without waiting: their
    /// delivery reports come back at once with a purge error.
    fn purge(&self) {
        use rdkafka::producer::{Producer, PurgeConfig};
        let flags = PurgeConfig::default().queue().inflight().non_blocking();
        for producer in
            std::iter::once(self.producer()).chain(self.batching.as_ref().map(|(b, _)| b))
        {
            producer.purge(flags);
        }
    }

    /// Why either producer is fatally broken, if one is.
    fn fatal_error(&self) -> Option<String> {
        std::iter::once(self.producer())
            .chain(self.batching.as_ref().map(|(batching, _)| batching))
            .find_map(|producer| producer.client().fatal_error())
            .map(|(_, reason)| reason)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // Destroying a librdkafka client joins its threads; never do that on an async worker.
        let producers = (self.producer.take(), self.batching.take());
        std::thread::spawn(move || drop(producers));
    }
}

/// The relay's single producer, shared by every request.
pub struct Publisher {
    /// The producer in use; swapped, never mutated. The lock is never held across `.await`,
    /// nor while a client is built.
    current: RwLock<Arc<Generation>>,
    /// Held while a replacement is built, so only one is.
    replacing: Mutex<()>,
    /// Settings every generation is built from; replaced when credentials change.
    client_config: RwLock<ProducerConfigs>,
    /// Writes handed to a producer whose delivery report has not come yet.
    in_flight: AtomicUsize,
    /// Source of generation ids.
    generations: AtomicU64,
    /// Writes in a row that ended without an acknowledgement (queue-full backpressure excluded).
    failures_in_a_row: AtomicU32,
    /// When the producer was last replaced for being stuck; replacements are at least
    /// `ack_timeout` apart.
    last_unstuck: Mutex<Instant>,
    /// `kafka.ack_timeout`.
    ack_timeout: Duration,
    /// Shared metrics; also given to each producer's context for statistics.
    metrics: Arc<Metrics>,
    /// Given to each producer's context: outage-aware, silenced after shutdown.
    watch: Arc<ClusterWatch>,
    /// Topics looked up before their first write (see the module docs).
    topics: Mutex<std::collections::HashMap<String, TopicState>>,
    /// `fp_relay_kafka_produce_total` by result (ok, timeout, refused, error), resolved once:
    /// a label lookup hashes its values on every write.
    produced: [prometheus::IntCounter; 4],
    /// `fp_relay_kafka_writes_total` by producer: immediate, batching.
    writes: [prometheus::IntCounter; 2],
}

impl Publisher {
    /// Builds the first producers from `client_config`, which must already hold the relay's
    /// typed settings (see [`super::producer_configs`]; a bare [`ClientConfig`] is one producer).
    pub fn new(
        client_config: impl Into<ProducerConfigs>,
        ack_timeout: Duration,
        metrics: Arc<Metrics>,
        watch: Arc<ClusterWatch>,
    ) -> Result<Self, KafkaError> {
        let client_config = client_config.into();
        let first = build(&client_config, &metrics, &watch, 0)?;
        let produced = ["ok", "timeout", "refused", "error"]
            .map(|result| metrics.kafka_produce.with_label_values(&[result]));
        let writes = ["immediate", "batching"]
            .map(|producer| metrics.kafka_writes.with_label_values(&[producer]));
        Ok(Self {
            produced,
            writes,
            current: RwLock::new(Arc::new(first)),
            replacing: Mutex::new(()),
            client_config: RwLock::new(client_config),
            in_flight: AtomicUsize::new(0),
            generations: AtomicU64::new(1),
            failures_in_a_row: AtomicU32::new(0),
            last_unstuck: Mutex::new(Instant::now()),
            ack_timeout,
            metrics,
            watch,
            topics: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Looks `topic` up before its first write: `Err(Refused)` when the cluster says it does
    /// not exist or may not be written. When the cluster does not answer in time, the write
    /// itself decides (nothing is remembered).
    async fn check_topic(
        &self,
        topic: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), PublishError> {
        let known = self
            .topics
            .lock()
            .expect("lock not poisoned")
            .get(topic)
            .copied();
        match known {
            Some(state @ TopicState::Exists) => return state.verdict(),
            Some(state @ (TopicState::Refused(_, since) | TopicState::Unanswered(since)))
                if since.elapsed() < RECHECK_MISSING =>
            {
                return state.verdict()
            }
            // Nothing would answer: the write itself is spooled or refused as in any outage.
            _ if self.watch.is_down() => return Ok(()),
            _ => {}
        }
        let timeout = TOPIC_CHECK_TIMEOUT
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let generation = self.current();
        let name = topic.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let metadata = generation
                .producer()
                .client()
                .fetch_metadata(Some(&name), timeout)
                .ok()?;
            let entry = metadata.topics().iter().find(|t| t.name() == name)?;
            Some(match entry.error() {
                None if !entry.partitions().is_empty() => Ok(()),
                None => Err(None),
                Some(error) => Err(Some(RDKafkaErrorCode::from(error))),
            })
        })
        .await
        .ok()
        .flatten();
        let state = match found {
            Some(Ok(())) => TopicState::Exists,
            Some(Err(Some(
                code @ (RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic),
            ))) => TopicState::Refused(code, Instant::now()),
            // No answer, or a passing state (leader not available while it is created).
            _ => TopicState::Unanswered(Instant::now()),
        };
        let mut topics = self.topics.lock().expect("lock not poisoned");
        if topics.len() >= MAX_KNOWN_TOPICS {
            topics.clear();
        }
        topics.insert(topic.to_owned(), state);
        state.verdict()
    }

    fn current(&self) -> Arc<Generation> {
        self.current.read().expect("lock not poisoned").clone()
    }

    /// Writes `record` and waits for Kafka's acknowledgement, until `deadline` at the latest.
    pub async fn publish(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
    ) -> Result<Delivered, PublishError> {
        self.publish_by(record, deadline, Route::ByLoad).await
    }

    /// [`Publisher::publish`] through the producer that sends at once, whatever the load: for
    /// a fulfilment request, whose HTTP request then waits for the fulfiller's reply.
    pub async fn publish_at_once(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
    ) -> Result<Delivered, PublishError> {
        self.publish_by(record, deadline, Route::AtOnce).await
    }

    async fn publish_by(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
        route: Route,
    ) -> Result<Delivered, PublishError> {
        match self.publish_or_handoff_by(record, deadline, route).await {
            Ok(delivered) => Ok(delivered),
            Err(Handoff::Failed(error)) => Err(error),
            // The record may still be delivered; the caller gave up on it.
            Err(Handoff::InFlight(pending)) => Err(pending.abandon()),
        }
    }

    /// Like [`Publisher::publish`], but when `deadline` passes while the record is still in
    /// flight, hands back the unfinished delivery so the caller can learn its fate later (the
    /// spool does: a record it took over must not be replayed if this attempt succeeds).
    pub async fn publish_or_handoff(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
    ) -> Result<Delivered, Handoff> {
        self.publish_or_handoff_by(record, deadline, Route::ByLoad)
            .await
    }

    async fn publish_or_handoff_by(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
        route: Route,
    ) -> Result<Delivered, Handoff> {
        let mut pending = match self.enqueue(record, deadline, route).await {
            Ok(pending) => pending,
            Err(error) => {
                // Enqueueing uses the current producer (classify already replaced a fatal one).
                self.observe(Err(&error), None, &self.current());
                return Err(Handoff::Failed(error));
            }
        };
        match tokio::time::timeout_at(deadline, &mut pending.delivery).await {
            Ok(result) => pending.resolve(result).map_err(Handoff::Failed),
            Err(_) => Err(Handoff::InFlight(pending)),
        }
    }

    /// Hands `record` to the producer (retrying while its queue is full until `deadline`) and
    /// returns its unfinished delivery, whose [`PendingDelivery::outcome`] is the final word
    /// (bounded by librdkafka's `message.timeout.ms`). Spool replay uses it to have many
    /// records in flight at once and never a second copy of any; every record sent this way
    /// takes the same producer, so a partition keeps the order they were sent in.
    pub async fn send(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
    ) -> Result<PendingDelivery, PublishError> {
        self.enqueue(record, deadline, Route::Ordered)
            .await
            .inspect_err(|error| {
                self.observe(Err(error), None, &self.current());
            })
    }

    /// Hands `record` to the producer, retrying while its queue is full until `deadline`.
    async fn enqueue(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
        route: Route,
    ) -> Result<PendingDelivery, PublishError> {
        self.check_topic(&record.topic, deadline).await?;
        let mut generation = self.current();
        if generation.fatal_error().is_some() {
            generation = self.replace(&generation);
        }
        loop {
            let mut future_record = FutureRecord::<str, [u8]>::to(&record.topic)
                .payload(&record.payload[..])
                .headers(record.owned_headers());
            if let Some(key) = &record.key {
                future_record = future_record.key(key.as_str());
            }
            // Counted before the send, so writes racing in see each other.
            let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed);
            let (producer, batching) = generation.for_write(in_flight, route);
            match producer.send_result(future_record) {
                Ok(delivery) => {
                    self.writes[usize::from(batching)].inc();
                    return Ok(PendingDelivery {
                        publisher: self.clone(),
                        generation,
                        delivery,
                        started: Instant::now(),
                    });
                }
                Err((error, _)) => {
                    self.in_flight.fetch_sub(1, Ordering::Relaxed);
                    if error.rdkafka_error_code() != Some(RDKafkaErrorCode::QueueFull) {
                        return Err(self.classify(error, &generation));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(PublishError::QueueFull);
                    }
                    tokio::time::sleep(QUEUE_FULL_RETRY).await;
                }
            }
        }
    }

    /// Records the outcome of one write by `generation` in metrics and the stuck-producer
    /// watchdog; a late failure of an already-replaced producer never retires its successor.
    fn observe(
        &self,
        result: Result<(), &PublishError>,
        started: Option<Instant>,
        generation: &Arc<Generation>,
    ) {
        if let Some(started) = started {
            self.metrics
                .kafka_produce_duration
                .observe(started.elapsed().as_secs_f64());
        }
        self.watch_for_stuck(result, generation);
        // Indexes of `produced`: ok, timeout, refused, error.
        let series = match result {
            Ok(_) => 0,
            Err(PublishError::Timeout) => 1,
            Err(PublishError::Refused(_)) => 2,
            Err(_) => 3,
        };
        self.produced[series].inc();
    }

    /// Turns a failure into a [`PublishError`] by its [`Class`] (see [`super::classify`]); a
    /// broken producer is replaced here, whatever the error that revealed it.
    fn classify(&self, error: KafkaError, generation: &Arc<Generation>) -> PublishError {
        let class = classify(&error);
        if class == Class::Backpressure {
            return PublishError::QueueFull;
        }
        if class == Class::Fatal || generation.fatal_error().is_some() {
            self.replace(generation);
            return PublishError::Fatal(error);
        }
        match class {
            Class::Permanent => PublishError::Refused(error),
            _ if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut) => {
                PublishError::Timeout
            }
            _ => PublishError::Kafka(error),
        }
    }

    /// Counts writes that went unacknowledged in a row and replaces a producer that looks stuck.
    fn watch_for_stuck(&self, result: Result<(), &PublishError>, generation: &Arc<Generation>) {
        match result {
            Ok(_) => self.failures_in_a_row.store(0, Ordering::Relaxed),
            // Backpressure and a refused record say nothing about the producer's health.
            Err(PublishError::QueueFull | PublishError::Refused(_)) => {}
            Err(_) => {
                let failures = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if failures < STUCK_AFTER_FAILURES {
                    return;
                }
                let mut last = self.last_unstuck.lock().expect("lock not poisoned");
                if last.elapsed() >= self.ack_timeout {
                    *last = Instant::now();
                    drop(last);
                    self.failures_in_a_row.store(0, Ordering::Relaxed);
                    tracing::warn!(failures, "no Kafka acknowledgement for several writes in a row; replacing the producer");
                    self.replace(generation);
                }
            }
        }
    }

    /// Replaces `broken` with a fresh producer unless another request already did, and purges
    /// what `broken` still holds: its writes fail at once (answered 503, or replayed from the
    /// spool by the new producer) instead of waiting in a producer that acknowledges nothing
    /// until `message.timeout.ms` (five minutes with the spool, during which every later
    /// spooled event waited behind them: found by the chaos run, broker restarted empty).
    /// A purged write the broker did take comes back as a duplicate, never as a loss.
    fn replace(&self, broken: &Arc<Generation>) -> Arc<Generation> {
        self.rebuild(broken, true)
    }

    /// Replaces `old` with a fresh producer unless another request already did, purging what
    /// `old` holds when `purge_old`. The new client is built outside the lock every publish
    /// reads (building one takes milliseconds); `replacing` makes concurrent callers wait for
    /// one build instead of each doing their own.
    fn rebuild(&self, old: &Arc<Generation>, purge_old: bool) -> Arc<Generation> {
        let _building = self.replacing.lock().expect("lock not poisoned");
        let current = self.current();
        if current.id != old.id {
            return current;
        }
        let id = self.generations.fetch_add(1, Ordering::Relaxed);
        let config = self
            .client_config
            .read()
            .expect("lock not poisoned")
            .clone();
        match build(&config, &self.metrics, &self.watch, id) {
            Ok(fresh) => {
                let reason = old
                    .fatal_error()
                    .unwrap_or_else(|| "no acknowledgements".to_owned());
                tracing::warn!(generation = id, %reason, "replaced the Kafka producer");
                self.metrics.kafka_producer_rebuilds.inc();
                let fresh = Arc::new(fresh);
                *self.current.write().expect("lock not poisoned") = fresh.clone();
                if purge_old {
                    old.purge();
                }
                fresh
            }
            Err(error) => {
                tracing::error!(%error, "cannot build a replacement Kafka producer");
                current
            }
        }
    }

    /// Builds every later producer from `client_config` (new credentials from their files) and
    /// replaces the current one now; records it holds are delivered or fail as usual.
    pub fn reconfigure(&self, client_config: impl Into<ProducerConfigs>) {
        *self.client_config.write().expect("lock not poisoned") = client_config.into();
        self.rebuild(&self.current(), false);
    }

    /// Waits until everything queued is delivered or `timeout` passes. Call it on shutdown:
    /// dropping a producer purges its queue.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let generation = self.current();
        let deadline = Instant::now() + timeout;
        let first = generation.producer().flush(timeout);
        let second = match &generation.batching {
            Some((batching, _)) => {
                batching.flush(deadline.saturating_duration_since(Instant::now()))
            }
            None => Ok(()),
        };
        first.and(second)
    }

    /// True when the producer can reach at least one broker within `timeout`, asking about
    /// `topic` alone (see [`super::probe`]). Blocking.
    pub fn probe(&self, topic: &str, timeout: Duration) -> bool {
        let generation = self.current();
        generation.fatal_error().is_none()
            && super::probe::brokers_reachable(generation.producer().client(), topic, timeout)
    }
}

fn build(
    configs: &ProducerConfigs,
    metrics: &Arc<Metrics>,
    watch: &Arc<ClusterWatch>,
    id: u64,
) -> Result<Generation, KafkaError> {
    let context = RelayContext::new(metrics.clone(), watch.clone(), "producer");
    let producer: FutureProducer<RelayContext> = configs.immediate.create_with_context(context)?;
    let batching = match &configs.batching {
        Some((config, above)) => {
            let context = RelayContext::new(metrics.clone(), watch.clone(), "batching-producer");
            Some((config.create_with_context(context)?, *above))
        }
        None => None,
    };
    Ok(Generation {
        id,
        producer: Some(producer),
        batching,
    })
}

/// The `fp-dead-letter-reason` of a record Kafka refused for good, e.g.
/// `kafka_refused: TopicAuthorizationFailed (Broker: Topic authorization failed)`.
pub fn refusal_reason(error: &PublishError) -> String {
    match error {
        PublishError::Refused(kafka) => match kafka.rdkafka_error_code() {
            Some(code) => format!("kafka_refused: {code}"),
            None => format!("kafka_refused: {kafka}"),
        },
        other => format!("kafka_refused: {other}"),
    }
}
