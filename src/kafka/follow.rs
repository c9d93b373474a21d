//! Following a topic every replica reads whole: the dedup marks and the fulfilment verdicts.
//!
//! Every partition is assigned (no group, nothing committed), read from `window` ago at start
//! (the beginning when the broker cannot say), then continuously; each record goes to a
//! [`Sink`]. The state says when the window was read ("loaded"), which partitions are
//! followed, and why the topic cannot be read while it cannot.
//!
//! What it survives:
//! - **A topic missing at start**: created when allowed ([`Follow::create`], at most once a
//!   minute); otherwise looked for again every [`RETRY_PAUSE`] with the same client, so a topic
//!   that appears (auto-created by the first record written to it) is followed within about a
//!   second.
//! - **A topic that grows**: the partition count is asked for every [`DISCOVER_EVERY`] beside
//!   the read loop (never in its way), and new partitions are read from their beginning.
//! - **A topic deleted or refused**: the consumer is dropped and built again, at once the first
//!   time and then less often (up to every 30 s) while it keeps failing; the window is read
//!   again (records already known change nothing).
//! - **Credentials rotated in their files**: the same.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntGauge;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::context::RelayContext;
use super::outage::ClusterWatch;
use super::topics::NewTopicSpec;
use crate::metrics::Metrics;

/// Timeout of each metadata and offsets call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before the topic is looked for again after it was missing or failed.
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause between two clients built after failures.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);
/// How often a followed topic is asked for its partition count.
pub const DISCOVER_EVERY: Duration = Duration::from_secs(2);
/// A fetch that brings nothing for this long, with every partition read to where it ended at
/// the start, means the window is loaded (the high watermark alone is not trusted: some
/// brokers report it short of the last batch).
const QUIET: Duration = Duration::from_millis(200);

/// What a follower does with each record it reads.
pub trait Sink: Send + Sync {
    /// One record; `at` is its Kafka timestamp. Returns how many items it carried (for the
    /// "loaded" log line).
    fn read(&self, key: Option<&[u8]>, value: Option<&[u8]>, at: SystemTime) -> u64;
}

/// Maps the partition count the broker reports to the one followed: the identity in the
/// relay; a test controls growth with it (tansu cannot add partitions).
pub type PartitionView = Arc<dyn Fn(i32) -> i32 + Send + Sync>;

/// Where a followed topic stands, for `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct FollowState {
    /// The window was read and records are being followed.
    loaded: AtomicBool,
    /// Readiness no longer waits for the load (done, timed out, or the topic is unavailable).
    settled: AtomicBool,
    /// Partitions followed now.
    partitions: AtomicI32,
    /// Why the topic cannot be read, while it cannot.
    problem: Mutex<Option<String>>,
}

impl FollowState {
    /// Whether readiness may say ready as far as this topic goes.
    pub fn settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// The window was read and new records are followed.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Partitions followed now (0 while the topic cannot be read).
    pub fn partitions(&self) -> i32 {
        self.partitions.load(Ordering::Acquire)
    }

    /// The `/readyz` detail: `ok (partitions 0-3 followed)`, `loading`, or `unavailable (why):
    /// <without>`.
    pub fn detail(&self, without: &str) -> String {
        if let Some(problem) = self.problem.lock().expect("lock not poisoned").as_ref() {
            return format!("unavailable ({problem}): {without}");
        }
        match (self.loaded(), self.partitions()) {
            (true, 1) => "ok (partition 0 followed)".to_owned(),
            (true, n) => format!("ok (partitions 0-{} followed)", n - 1),
            (false, _) => "loading".to_owned(),
        }
    }

    /// Readiness stops waiting for the load (its timeout passed).
    pub fn settle(&self) -> bool {
        !self.settled.swap(true, Ordering::AcqRel)
    }

    fn set_problem(&self, problem: Option<String>, gauge: Option<&IntGauge>) {
        if problem.is_some() {
            self.loaded.store(false, Ordering::Release);
            self.settled.store(true, Ordering::Release);
            self.partitions.store(0, Ordering::Release);
        }
        if let Some(gauge) = gauge {
            gauge.set(i64::from(problem.is_none() && self.loaded()));
        }
        *self.problem.lock().expect("lock not poisoned") = problem;
    }

    fn has_problem(&self) -> bool {
        self.problem.lock().expect("lock not poisoned").is_some()
    }
}

/// One followed topic and how.
pub struct Follow {
    /// The topic.
    pub topic: String,
    /// How far back the first read starts.
    pub window: Duration,
    /// The name of the consumer in logs and metrics (`dedup-consumer`).
    pub role: &'static str,
    /// What the topic holds, for log lines ("dedup marks").
    pub what: &'static str,
    /// Created as this when missing; `None`: waited for.
    pub create: Option<NewTopicSpec>,
    /// Where it stands.
    pub state: Arc<FollowState>,
    /// Set to 1 while loaded and readable, 0 otherwise.
    pub ready_gauge: Option<IntGauge>,
    /// See [`PartitionView`].
    pub view: PartitionView,
    /// When creating the topic was last tried: at most once per [`CREATE_EVERY`], so a cluster
    /// that forbids it is not asked every second.
    last_create: Mutex<Option<Instant>>,
}

/// Shortest pause between two attempts to create a missing topic.
const CREATE_EVERY: Duration = Duration::from_secs(60);

impl Follow {
    /// Follows `topic` from `window` ago; nothing is read until [`Follow::run`].
    pub fn new(topic: &str, window: Duration, role: &'static str, what: &'static str) -> Self {
        Self {
            topic: topic.to_owned(),
            window,
            role,
            what,
            create: None,
            state: Arc::new(FollowState::default()),
            ready_gauge: None,
            view: Arc::new(|count| count),
            last_create: Mutex::new(None),
        }
    }

    /// Reads the window and then every new record into `sink` until `stop`; rebuilt after the
    /// topic is missing or fails, or the Kafka settings change. Readiness waits for the first
    /// load up to `load_timeout`.
    pub async fn run(
        self: Arc<Self>,
        sink: Arc<dyn Sink>,
        settings: super::Settings,
        watch: Arc<ClusterWatch>,
        metrics: Arc<Metrics>,
        load_timeout: Duration,
        stop: CancellationToken,
    ) {
        let started = Instant::now();
        let settle = tokio::spawn({
            let follow = self.clone();
            async move {
                tokio::time::sleep(load_timeout).await;
                if follow.state.settle() {
                    tracing::warn!(topic = %follow.topic, timeout = ?load_timeout, "the {} were not loaded in time; ready without them", follow.what);
                }
            }
        });
        let mut settings = settings;
        let mut pause = RETRY_PAUSE;
        while !stop.is_cancelled() {
            let kafka = settings.borrow_and_update().clone();
            let began = Instant::now();
            let outcome = tokio::select! {
                outcome = self.follow_once(&kafka, sink.as_ref(), &watch, &metrics, started) => outcome,
                () = changed(&mut settings) => {
                    tracing::info!(topic = %self.topic, "Kafka credentials changed; rebuilding the {} consumer", self.role);
                    continue;
                }
                () = stop.cancelled() => break,
            };
            if let Err(problem) = outcome {
                if !self.state.has_problem() {
                    tracing::warn!(topic = %self.topic, %problem, "cannot read the {}; trying again, less often while it fails", self.what);
                }
                self.state
                    .set_problem(Some(problem), self.ready_gauge.as_ref());
            }
            // A client that failed at once (refused, unauthorised) is built again less and less
            // often, up to every [`MAX_RETRY_PAUSE`]; one that worked a while, at once.
            pause = if began.elapsed() > MAX_RETRY_PAUSE {
                RETRY_PAUSE
            } else {
                (pause * 2).min(MAX_RETRY_PAUSE)
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => break,
            }
        }
        settle.abort();
    }

    /// One consumer's life: find (or create) the topic, position at the window's start, load,
    /// follow. Returns why it stopped.
    async fn follow_once(
        &self,
        kafka: &crate::config::KafkaConfig,
        sink: &dyn Sink,
        watch: &Arc<ClusterWatch>,
        metrics: &Arc<Metrics>,
        started: Instant,
    ) -> Result<(), String> {
        let config = follower_config(kafka);
        let context = RelayContext::new(metrics.clone(), watch.clone(), self.role);
        let consumer: StreamConsumer<RelayContext> = config
            .create_with_context(context)
            .map_err(|e| e.to_string())?;
        crate::kafka::aws::hand_first_token(&config, consumer.client());
        // Dropped on a thread of its own however this ends, cancelled at shutdown included:
        // destroying a librdkafka client joins its threads.
        let consumer = OffWorker(Some(Arc::new(consumer)));
        let client = consumer.client();
        // A missing topic is looked for every second with this one client (no new connection
        // each time), created when allowed (at most once a minute).
        let count = loop {
            let mut count = self
                .partition_count(client)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(spec) = self
                .create
                .as_ref()
                .filter(|_| count == 0 && self.may_create())
            {
                let admin = crate::kafka::admin_config(kafka);
                if let Err(error) =
                    super::topics::create(&admin, &self.topic, spec, metrics, watch).await
                {
                    self.missing(&format!(
                        "the topic is missing and cannot be created: {error}"
                    ));
                }
                count = self
                    .partition_count(client)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if count > 0 {
                break count;
            }
            self.missing(&format!("{}", RDKafkaErrorCode::UnknownTopicOrPartition));
            tokio::time::sleep(RETRY_PAUSE).await;
        };
        let ends = position(client.clone(), self.topic.clone(), self.window, count)
            .await
            .map_err(|e| e.to_string())?;
        self.state.partitions.store(count, Ordering::Release);
        self.consume(client, sink, ends, started).await
    }

    /// The topic is not there (yet): said once, shown on `/readyz`.
    fn missing(&self, problem: &str) {
        if !self.state.has_problem() {
            tracing::warn!(topic = %self.topic, problem, "cannot read the {}; looking for the topic every second", self.what);
        }
        self.state
            .set_problem(Some(problem.to_owned()), self.ready_gauge.as_ref());
    }

    /// Whether creating the missing topic may be tried now (see [`CREATE_EVERY`]).
    fn may_create(&self) -> bool {
        let mut last = self.last_create.lock().expect("lock not poisoned");
        if last.is_some_and(|at| at.elapsed() < CREATE_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Partitions of the topic as [`Follow::view`] shows them; 0 when it does not exist.
    async fn partition_count(
        &self,
        consumer: &Arc<StreamConsumer<RelayContext>>,
    ) -> Result<i32, KafkaError> {
        let consumer = consumer.clone();
        let topic = self.topic.clone();
        let count = tokio::task::spawn_blocking(move || {
            let metadata = consumer.fetch_metadata(Some(&topic), CALL_TIMEOUT)?;
            Ok::<_, KafkaError>(
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map_or(0, |t| {
                        i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)
                    }),
            )
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))?;
        Ok((self.view)(count))
    }

    /// Resolves with the new partition count once the topic has more partitions than
    /// `followed`; asks every [`DISCOVER_EVERY`]. An unanswered ask is asked again.
    async fn grown(&self, consumer: &Arc<StreamConsumer<RelayContext>>, followed: i32) -> i32 {
        loop {
            tokio::time::sleep(DISCOVER_EVERY).await;
            if let Ok(count) = self.partition_count(consumer).await {
                if count > followed {
                    return count;
                }
            }
        }
    }

    /// Reads until an error; marks the window loaded once every partition was read to where it
    /// ended at the start and then a fetch came back empty or [`QUIET`] passed (the wait covers
    /// a high watermark reported short; under steady traffic fetches never come back empty).
    async fn consume(
        &self,
        consumer: &Arc<StreamConsumer<RelayContext>>,
        sink: &dyn Sink,
        mut ends: Vec<i64>,
        started: Instant,
    ) -> Result<(), String> {
        let mut loaded = self.state.loaded();
        let mut loaded_now = 0u64;
        // When every partition was read to where it ended at the start.
        let mut reached: Option<Instant> = None;
        let mut followed = self.state.partitions();
        let grown = self.grown(consumer, followed);
        tokio::pin!(grown);
        loop {
            if !loaded && reached.is_none() && ends.iter().all(|end| *end == 0) {
                reached = Some(Instant::now());
            }
            if !loaded && reached.is_some_and(|at| at.elapsed() >= QUIET) {
                loaded = true;
                self.loaded(loaded_now, started);
            }
            let wait = if loaded { Duration::MAX } else { QUIET };
            let message = tokio::select! {
                count = &mut grown => {
                    self.follow_new_partitions(consumer, followed, count)?;
                    followed = count;
                    grown.set(self.grown(consumer, followed));
                    continue;
                }
                message = tokio::time::timeout(wait, consumer.recv()) => message,
            };
            match message {
                Ok(Ok(message)) => {
                    if let Some(end) = usize::try_from(message.partition())
                        .ok()
                        .and_then(|p| ends.get_mut(p))
                    {
                        if message.offset() + 1 >= *end {
                            *end = 0;
                        }
                    }
                    loaded_now += sink.read(message.key(), message.payload(), timestamp(&message));
                }
                Err(_) => {
                    if reached.is_some() {
                        loaded = true;
                        self.loaded(loaded_now, started);
                    }
                }
                Ok(Err(KafkaError::MessageConsumption(
                    code @ (RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    // A partition followed is gone: the topic shrank or was recreated smaller.
                    | RDKafkaErrorCode::UnknownPartition
                    | RDKafkaErrorCode::TopicAuthorizationFailed),
                ))) => return Err(format!("{code}")),
                Ok(Err(error)) => {
                    // Connection trouble passes (librdkafka reconnects); say it at debug.
                    tracing::debug!(%error, role = self.role, "follower");
                }
            }
        }
    }

    /// Partitions `from..to` appeared: read from their beginning (everything on them is newer
    /// than the last look, [`DISCOVER_EVERY`] ago).
    fn follow_new_partitions(
        &self,
        consumer: &StreamConsumer<RelayContext>,
        from: i32,
        to: i32,
    ) -> Result<(), String> {
        let mut list = TopicPartitionList::new();
        for partition in from..to {
            list.add_partition_offset(&self.topic, partition, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        consumer
            .incremental_assign(&list)
            .map_err(|e| e.to_string())?;
        self.state.partitions.store(to, Ordering::Release);
        tracing::info!(topic = %self.topic, from, to, "the {} topic grew; following its new partitions", self.what);
        Ok(())
    }

    /// The window is read: ready as far as this topic goes, and said once.
    fn loaded(&self, records: u64, started: Instant) {
        self.state.loaded.store(true, Ordering::Release);
        self.state.settled.store(true, Ordering::Release);
        self.state.set_problem(None, self.ready_gauge.as_ref());
        tracing::info!(
            topic = %self.topic,
            items = records,
            partitions = self.state.partitions(),
            since_start_ms = started.elapsed().as_millis() as u64,
            "loaded the {} of the window; following every replica's", self.what
        );
    }
}

/// A record's Kafka timestamp; now when it has none.
fn timestamp(message: &BorrowedMessage<'_>) -> SystemTime {
    message
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .map_or_else(SystemTime::now, |ms| {
            SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
        })
}

/// Resolves when the Kafka settings change; never when nobody can change them (a command's).
async fn changed(settings: &mut super::Settings) {
    if settings.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A client dropped on a thread of its own.
struct OffWorker(Option<Arc<StreamConsumer<RelayContext>>>);

impl OffWorker {
    fn client(&self) -> &Arc<StreamConsumer<RelayContext>> {
        self.0.as_ref().expect("present until drop")
    }
}

impl Drop for OffWorker {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            std::thread::spawn(move || drop(consumer));
        }
    }
}

/// Assigns partitions `0..partitions` of `topic` from `window` ago (the beginning when the
/// broker cannot say), and returns where each ended (0: nothing to wait for).
async fn position(
    consumer: Arc<StreamConsumer<RelayContext>>,
    topic: String,
    window: Duration,
    partitions: i32,
) -> Result<Vec<i64>, KafkaError> {
    tokio::task::spawn_blocking(move || {
        let since = SystemTime::now()
            .checked_sub(window)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
        let mut times = TopicPartitionList::new();
        for partition in 0..partitions {
            times.add_partition_offset(&topic, partition, Offset::Offset(since))?;
        }
        let starts = consumer.offsets_for_times(times, CALL_TIMEOUT).ok();
        let mut list = TopicPartitionList::new();
        let mut ends = Vec::with_capacity(usize::try_from(partitions).unwrap_or(0));
        for partition in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, partition, CALL_TIMEOUT)?;
            let found = starts
                .as_ref()
                .and_then(|s| s.find_partition(&topic, partition))
                .map(|e| e.offset());
            let start = match found {
                Some(Offset::Offset(offset)) => offset.max(low).min(high),
                // Nothing written since the window's start.
                Some(Offset::End) => high,
                // The broker could not say: everything it has.
                _ => low,
            };
            list.add_partition_offset(&topic, partition, Offset::Offset(start))?;
            ends.push(if start >= high { 0 } else { high });
        }
        consumer.assign(&list)?;
        Ok(ends)
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled))
}

/// A follower's settings: assigned partitions, never committed, fetched in batches.
///
/// Why not eagerly, as the reply consumer does: a retry that matters comes seconds to minutes
/// after the first attempt (FirstPromoter retries after its timeout or a 5xx; a fulfilment
/// check comes hours later), so a window of [`FETCH_WAIT`] costs nothing, while a fetch per
/// mark under load doubled the broker's work: with the reply consumer's 5 ms / 1 byte, shared
/// dedup took a c=64 load from 21,600 to 8,800 req/s against tansu (benches/RESULTS.md).
fn follower_config(kafka: &crate::config::KafkaConfig) -> ClientConfig {
    let mut config = crate::kafka::consumer_config(kafka, "fp-relay-follower");
    config
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string())
        .set("fetch.min.bytes", "65536");
    config
}

/// Longest a fetch waits for 64 KiB: the consistency window at low load.
pub const FETCH_WAIT: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detail_names_the_partitions_followed_or_why_none_are() {
        let state = FollowState::default();
        assert_eq!(state.detail("per process"), "loading");
        state.partitions.store(4, Ordering::Release);
        state.loaded.store(true, Ordering::Release);
        assert_eq!(state.detail("per process"), "ok (partitions 0-3 followed)");
        state.set_problem(Some("Broker: Unknown topic".to_owned()), None);
        assert_eq!(
            state.detail("per process"),
            "unavailable (Broker: Unknown topic): per process"
        );
        assert!(
            state.settled(),
            "a topic that cannot be read holds no one back"
        );
        assert_eq!(state.partitions(), 0);
    }
}
