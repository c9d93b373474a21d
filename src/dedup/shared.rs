//! Duplicate suppression shared by every replica and kept across restarts, in Kafka
//! (`dedup.topic`).
//!
//! After Kafka acknowledges an event, the relay writes a mark to the dedup topic: the key is
//! the event's dedup key (128 bits of SHA-256 of `v1:<id>` / `v2:<id>`, in hex), the value the
//! topic the event went to, the timestamp when it was written. Every replica reads every
//! partition of the dedup topic (assigned, no group, nothing committed) into its dedup table:
//! at start from `dedup.window` ago, before `/readyz` says ready (bounded by
//! `dedup.load_timeout`), then continuously. So a retry that lands on another replica, or on a
//! restarted one, is answered `duplicate` once the mark has been read.
//!
//! Why a mark after the acknowledgement and not beside the event: a mark for an event Kafka
//! then refused would suppress FirstPromoter's retry of it, a loss. The cost is the
//! consistency window: a retry that reaches replica B before B has read A's mark (the time
//! from A's acknowledgement to B's fetch, a few milliseconds on a healthy cluster) is
//! published again. Marks are written by the same producer (idempotent, batched with the
//! events under load); a mark that fails is counted (`fp_relay_dedup_marks_total{result}`)
//! and the event stays suppressed by this replica's own table.
//!
//! When the topic is missing or unreadable the relay keeps accepting; dedup is per process
//! until the topic is back (`fp_relay_dedup_shared_ready` 0 and a `/readyz` detail).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{Dedup, Key};
use crate::kafka::context::RelayContext;
use crate::kafka::outage::ClusterWatch;
use crate::kafka::publisher::Publisher;
use crate::kafka::record::OutboundRecord;
use crate::metrics::Metrics;

/// Timeout of each metadata and offsets call made while positioning.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before the topic is looked for again after it was missing or failed.
const RETRY_PAUSE: Duration = Duration::from_secs(2);
/// A fetch that brings nothing for this long, with every partition read to where it ended at
/// the start, means the window is loaded (the high watermark alone is not trusted: some
/// brokers report it short of the last batch).
const QUIET: Duration = Duration::from_millis(200);

/// Where the shared table stands, for `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct SharedState {
    /// The window was read and marks are being followed.
    loaded: AtomicBool,
    /// Readiness no longer waits for the load (done, timed out, or the topic is unavailable).
    settled: AtomicBool,
    /// Why the topic cannot be read, while it cannot.
    problem: Mutex<Option<String>>,
}

impl SharedState {
    /// Whether readiness may say ready as far as the shared table goes.
    pub fn settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// The `/readyz` detail.
    pub fn detail(&self) -> String {
        if let Some(problem) = self.problem.lock().expect("lock not poisoned").as_ref() {
            return format!("unavailable ({problem}): duplicates are suppressed per process only (not required for readiness)");
        }
        if self.loaded.load(Ordering::Acquire) {
            "ok".to_owned()
        } else {
            "loading".to_owned()
        }
    }

    fn set_problem(&self, problem: Option<String>, metrics: &Metrics) {
        if problem.is_some() {
            self.loaded.store(false, Ordering::Release);
            self.settled.store(true, Ordering::Release);
        }
        metrics.dedup_shared_ready.set(i64::from(
            problem.is_none() && self.loaded.load(Ordering::Acquire),
        ));
        *self.problem.lock().expect("lock not poisoned") = problem;
    }
}

/// The shared table: marks written after each acknowledged event, and every replica's marks
/// read into a table of their own (see [`Dedup::with_shared`]).
pub struct Shared {
    topic: String,
    /// Ids published to their topics by any replica or command within the window.
    dedup: Arc<Dedup>,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    /// How long a mark may wait for its acknowledgement.
    ack_timeout: Duration,
    state: Arc<SharedState>,
}

impl Shared {
    /// The shared table on `dedup.topic`, remembering `dedup.window` (at most
    /// `dedup.max_entries` ids), reporting to `state`; nothing is read until [`Shared::follow`].
    pub fn new(
        config: &crate::config::DedupConfig,
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
        ack_timeout: Duration,
        state: Arc<SharedState>,
    ) -> Arc<Self> {
        Arc::new(Self {
            topic: config.topic.trim().to_owned(),
            dedup: Dedup::new(config.window, config.max_entries),
            publisher,
            metrics,
            ack_timeout,
            state,
        })
    }

    /// Readiness and detail.
    pub fn state(&self) -> Arc<SharedState> {
        self.state.clone()
    }

    /// What every replica published, for a process's own table to consult.
    pub fn table(&self) -> &Arc<Dedup> {
        &self.dedup
    }

    /// Whether some replica (or command) already published the event `record` carries.
    pub fn published(&self, record: &OutboundRecord) -> bool {
        super::key_of_record(record).is_some_and(|key| self.dedup.knows(&key))
    }

    /// Whether some replica (or command) already published the event with dedup key `key`.
    pub fn knows(&self, key: &Key) -> bool {
        self.dedup.knows(key)
    }

    /// Writes the mark for `key`, whose event just went to `event_topic`, in the background.
    pub fn mark(self: &Arc<Self>, key: Key, event_topic: &str) {
        self.dedup.remember(key, SystemTime::now());
        let shared = self.clone();
        let record = self.mark_of(key, event_topic);
        tokio::spawn(async move { shared.write(record).await });
    }

    /// Marks the event `record` carries (if it has an id) in the background, as [`Shared::mark`].
    pub fn mark_record(self: &Arc<Self>, record: &OutboundRecord) {
        if let Some(key) = super::key_of_record(record) {
            self.mark(key, &record.topic);
        }
    }

    /// Counts an event a writer did not write again because some replica published it.
    pub fn note_suppressed(&self, record: &OutboundRecord) {
        self.metrics.duplicates.inc();
        tracing::debug!(topic = %record.topic, "already published by a replica; not written again");
    }

    /// Writes the mark for the event `record` carries (if it has an id) and waits for it;
    /// whether it was written. For commands, whose summary says what they did.
    pub async fn mark_and_wait(&self, record: &OutboundRecord) -> bool {
        match super::key_of_record(record) {
            Some(key) => self.mark_key_and_wait(key, &record.topic).await,
            None => true,
        }
    }

    /// Writes the mark for `key`, whose event just went to `event_topic`, and waits for it.
    pub async fn mark_key_and_wait(&self, key: Key, event_topic: &str) -> bool {
        self.dedup.remember(key, SystemTime::now());
        self.write(self.mark_of(key, event_topic)).await
    }

    fn mark_of(&self, key: Key, event_topic: &str) -> OutboundRecord {
        OutboundRecord {
            topic: self.topic.clone(),
            key: Some(hex::encode(key)),
            payload: bytes::Bytes::copy_from_slice(event_topic.as_bytes()),
            headers: Vec::new(),
        }
    }

    async fn write(&self, record: OutboundRecord) -> bool {
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        let result = self.publisher.publish(&record, deadline).await;
        let label = if result.is_ok() { "ok" } else { "failed" };
        self.metrics.dedup_marks.with_label_values(&[label]).inc();
        if let Err(error) = &result {
            tracing::debug!(%error, topic = %self.topic, "dedup mark not written");
        }
        result.is_ok()
    }

    /// Reads the window and then every new mark into the table until `stop`; rebuilt after
    /// the topic is missing or fails. Readiness waits for the first load up to `load_timeout`.
    pub async fn follow(
        self: Arc<Self>,
        settings: crate::kafka::Settings,
        watch: Arc<ClusterWatch>,
        window: Duration,
        load_timeout: Duration,
        stop: CancellationToken,
    ) {
        let started = Instant::now();
        let state = self.state.clone();
        let settle = tokio::spawn(async move {
            tokio::time::sleep(load_timeout).await;
            if !state.settled.swap(true, Ordering::AcqRel) {
                tracing::warn!(timeout = ?load_timeout, "the dedup topic was not loaded in time; ready without it (duplicates are suppressed per process until it is)");
            }
        });
        while !stop.is_cancelled() {
            let config = follower_config(&settings.borrow());
            let outcome = tokio::select! {
                outcome = self.follow_once(&config, &watch, window, started) => outcome,
                () = stop.cancelled() => break,
            };
            if let Err(problem) = outcome {
                let first = self
                    .state
                    .problem
                    .lock()
                    .expect("lock not poisoned")
                    .is_none();
                if first {
                    tracing::warn!(topic = %self.topic, %problem, "cannot read the dedup topic; duplicates are suppressed per process until it is back");
                }
                self.state.set_problem(Some(problem), &self.metrics);
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY_PAUSE) => {}
                () = stop.cancelled() => break,
            }
        }
        settle.abort();
    }

    /// One consumer's life: position at the window's start, load, follow. Returns why it
    /// stopped.
    async fn follow_once(
        &self,
        config: &ClientConfig,
        watch: &Arc<ClusterWatch>,
        window: Duration,
        started: Instant,
    ) -> Result<(), String> {
        let context = RelayContext::new(self.metrics.clone(), watch.clone(), "dedup-consumer");
        let consumer: StreamConsumer<RelayContext> = config
            .create_with_context(context)
            .map_err(|e| e.to_string())?;
        crate::kafka::aws::hand_first_token(config, consumer.client());
        let consumer = Arc::new(consumer);
        let ends = position(consumer.clone(), self.topic.clone(), window)
            .await
            .map_err(|e| e.to_string());
        let ends = match ends {
            Ok(ends) => ends,
            Err(problem) => {
                std::thread::spawn(move || drop(consumer));
                return Err(problem);
            }
        };
        let result = self.consume(&consumer, ends, started).await;
        std::thread::spawn(move || drop(consumer));
        result
    }

    /// Reads marks until an error; marks the table loaded once every partition was read to
    /// where it ended at the start and a fetch came back empty.
    async fn consume(
        &self,
        consumer: &StreamConsumer<RelayContext>,
        mut ends: Vec<i64>,
        started: Instant,
    ) -> Result<(), String> {
        let mut loaded = self.state.loaded.load(Ordering::Acquire);
        let mut loaded_now = 0u64;
        loop {
            let message = if loaded {
                consumer.recv().await.map(Some)
            } else {
                match tokio::time::timeout(QUIET, consumer.recv()).await {
                    Ok(message) => message.map(Some),
                    Err(_) => Ok(None),
                }
            };
            match message {
                Ok(Some(message)) => {
                    if let Some(end) = usize::try_from(message.partition())
                        .ok()
                        .and_then(|p| ends.get_mut(p))
                    {
                        if message.offset() + 1 >= *end {
                            *end = 0;
                        }
                    }
                    if let Some(key) = message.key().and_then(parse_key) {
                        let at = message
                            .timestamp()
                            .to_millis()
                            .and_then(|ms| u64::try_from(ms).ok())
                            .map_or_else(SystemTime::now, |ms| {
                                SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
                            });
                        self.dedup.remember(key, at);
                        self.metrics.dedup_marks_read.inc();
                        loaded_now += 1;
                    }
                }
                Ok(None) => {
                    if ends.iter().all(|end| *end == 0) {
                        loaded = true;
                        self.state.loaded.store(true, Ordering::Release);
                        self.state.settled.store(true, Ordering::Release);
                        self.state.set_problem(None, &self.metrics);
                        tracing::info!(
                            topic = %self.topic,
                            marks = loaded_now,
                            remembered = self.dedup.len(),
                            since_start_ms = started.elapsed().as_millis() as u64,
                            "dedup window loaded; following every replica's marks"
                        );
                    }
                }
                Err(KafkaError::MessageConsumption(
                    code @ (RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::TopicAuthorizationFailed),
                )) => return Err(format!("{code}")),
                Err(error) => {
                    // Connection trouble passes (librdkafka reconnects); say it at debug.
                    tracing::debug!(%error, "dedup consumer");
                }
            }
        }
    }
}

/// The shared table for a command that writes events (`spool drain`, `recover`, `redrive`):
/// `None` unless `dedup.topic` is set; otherwise loaded (up to `dedup.load_timeout`) before it
/// is returned, and followed while the command runs. Says on stderr what it loaded.
pub async fn for_command(
    config: &crate::config::Config,
    publisher: Arc<Publisher>,
    command: &str,
) -> Option<Arc<Shared>> {
    config.shared_dedup_topic()?;
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(SharedState::default());
    let shared = Shared::new(
        &config.dedup,
        publisher,
        metrics,
        config.kafka.ack_timeout,
        state.clone(),
    );
    let (_, settings) = tokio::sync::watch::channel(Arc::new(config.kafka.clone()));
    let started = Instant::now();
    // Followed until the process ends; commands are short-lived.
    tokio::spawn(shared.clone().follow(
        settings,
        Arc::new(ClusterWatch::default()),
        config.dedup.window,
        config.dedup.load_timeout,
        CancellationToken::new(),
    ));
    while !state.settled() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{command}: dedup topic {}: {} ({} published ids of the last {} known, in {} ms)",
        shared.topic,
        state.detail(),
        shared.dedup.len(),
        humantime::format_duration(config.dedup.window),
        started.elapsed().as_millis()
    );
    Some(shared)
}

/// A mark's key back to the dedup key; `None` for anything else on the topic.
fn parse_key(key: &[u8]) -> Option<Key> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(key, &mut out).ok()?;
    Some(out)
}

/// Assigns every partition of `topic` from `window` ago (its beginning when the broker cannot
/// say), and returns where each partition ended (0: nothing to wait for).
async fn position(
    consumer: Arc<StreamConsumer<RelayContext>>,
    topic: String,
    window: Duration,
) -> Result<Vec<i64>, KafkaError> {
    tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&topic), CALL_TIMEOUT)?;
        let partitions = match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => t.partitions().len(),
            Some(t) => {
                return Err(KafkaError::MetadataFetch(
                    t.error()
                        .map_or(RDKafkaErrorCode::UnknownTopicOrPartition, Into::into),
                ))
            }
            None => {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ))
            }
        };
        let partitions = i32::try_from(partitions).unwrap_or(i32::MAX);
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
        let mut ends = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, partition, CALL_TIMEOUT)?;
            let found = starts
                .as_ref()
                .and_then(|s| s.find_partition(&topic, partition))
                .map(|e| e.offset());
            let start = match found {
                Some(Offset::Offset(offset)) => offset.clamp(low, high),
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

/// The dedup consumer's settings: assigned partitions, never committed, fetched eagerly (the
/// consistency window is how soon a mark is read).
fn follower_config(kafka: &crate::config::KafkaConfig) -> ClientConfig {
    let mut config = crate::kafka::consumer_config(kafka, "fp-relay-dedup");
    config.set("auto.offset.reset", "earliest");
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marks_key_reads_back_as_the_dedup_key_and_nothing_else_does() {
        let key = super::super::key("v2:abc");
        assert_eq!(parse_key(hex::encode(key).as_bytes()), Some(key));
        assert_eq!(parse_key(b"not hex at all, 32 characters.."), None);
        assert_eq!(parse_key(b"abcd"), None);
    }
}
