//! Duplicate suppression shared by every replica and kept across restarts, in Kafka
//! (`dedup.topic`).
//!
//! After Kafka acknowledges an event, the relay writes the event's dedup key (128 bits of
//! SHA-256 of `v1:<id>` / `v2:<id>` and 64 bits of its content's digest, see [`super::Key`]) to
//! the dedup topic. Mark records are written one at a time and carry every key acknowledged
//! while the previous one was being written (the record's timestamp is when): one key at low
//! load, many under load. A mark record is [`MARK_MAGIC`], the keys (24 bytes each) and a
//! CRC-32 of both; anything else on the topic is ignored and counted
//! (`fp_relay_dedup_foreign_records_total`), never read as marks.
//! Every replica reads every partition of the dedup topic (assigned, no group, nothing
//! committed) into a table of what was published: at start from `dedup.window` ago, before
//! `/readyz` says ready (bounded by `dedup.load_timeout`), then continuously. So a retry that
//! lands on another replica, or on a restarted one, is answered `duplicate` once the mark has
//! been read.
//!
//! Why a mark after the acknowledgement and not beside the event: a mark for an event Kafka
//! then refused would suppress FirstPromoter's retry of it, a loss. The cost is the
//! consistency window: a retry that reaches replica B before B has read A's mark (up to
//! [`FETCH_WAIT`] plus a write) is published again. FirstPromoter retries seconds later. A
//! mark that fails is counted (`fp_relay_dedup_marks_total{result}`) and the event stays
//! suppressed by this replica's own table.
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
    /// Keys waiting for the next mark record, and whether one is being written.
    pending: Mutex<Pending>,
}

/// See [`Shared::mark`].
#[derive(Default)]
struct Pending {
    keys: Vec<Key>,
    writing: bool,
}

/// Most keys in one mark record (96 KiB, well under any broker's message size limit).
const MAX_KEYS_PER_MARK: usize = 4096;

/// Most keys waiting for a mark record (16 MiB): beyond, marks are counted as failed.
const MAX_PENDING_KEYS: usize = 1 << 20;

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
            pending: Mutex::default(),
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

    /// Marks `key` (its event was just acknowledged) in the background. Marks are written one
    /// record at a time: the keys that arrive while one is being written go together in the
    /// next, so at low load each key leaves at once and under load a record carries many.
    pub fn mark(self: &Arc<Self>, key: Key) {
        self.dedup.remember(key, SystemTime::now());
        let start = {
            let mut pending = self.pending.lock().expect("lock not poisoned");
            if pending.keys.len() >= MAX_PENDING_KEYS {
                // Marks are not being written (the topic is refusing them slowly): this one
                // is counted as failed rather than held without bound.
                drop(pending);
                self.metrics
                    .dedup_marks
                    .with_label_values(&["failed"])
                    .inc();
                return;
            }
            pending.keys.push(key);
            !std::mem::replace(&mut pending.writing, true)
        };
        if start {
            let shared = self.clone();
            tokio::spawn(async move { shared.write_pending().await });
        }
    }

    /// Writes what is pending until nothing is.
    async fn write_pending(&self) {
        loop {
            let keys = {
                let mut pending = self.pending.lock().expect("lock not poisoned");
                if pending.keys.is_empty() {
                    pending.writing = false;
                    return;
                }
                std::mem::take(&mut pending.keys)
            };
            for chunk in keys.chunks(MAX_KEYS_PER_MARK) {
                self.write(chunk).await;
            }
        }
    }

    /// Waits (up to `ack_timeout`) for the marks handed to the background to be written: a
    /// command calls it before it exits.
    pub async fn marks_written(&self) {
        let deadline = Instant::now() + self.ack_timeout;
        while self.pending.lock().expect("lock not poisoned").writing && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Events not written again because a replica had published them (since start).
    pub fn suppressed(&self) -> u64 {
        self.metrics.duplicates.get()
    }

    /// Marks the event `record` carries (if it has an id) in the background, as [`Shared::mark`].
    pub fn mark_record(self: &Arc<Self>, record: &OutboundRecord) {
        if let Some(key) = super::key_of_record(record) {
            self.mark(key);
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
            Some(key) => self.mark_key_and_wait(key).await,
            None => true,
        }
    }

    /// Writes the mark for `key` (its event was just acknowledged) and waits for it.
    pub async fn mark_key_and_wait(&self, key: Key) -> bool {
        self.dedup.remember(key, SystemTime::now());
        self.write(&[key]).await
    }

    /// Writes one mark record carrying `keys`; whether Kafka took it.
    async fn write(&self, keys: &[Key]) -> bool {
        let record = OutboundRecord {
            topic: self.topic.clone(),
            key: None,
            payload: encode_marks(keys).into(),
            headers: Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        let result = self.publisher.publish(&record, deadline).await;
        let label = if result.is_ok() { "ok" } else { "failed" };
        self.metrics
            .dedup_marks
            .with_label_values(&[label])
            .inc_by(keys.len() as u64);
        if let Err(error) = &result {
            tracing::debug!(%error, topic = %self.topic, keys = keys.len(), "dedup mark not written");
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
        let mut settings = settings;
        while !stop.is_cancelled() {
            let config = follower_config(&settings.borrow_and_update());
            let outcome = tokio::select! {
                outcome = self.follow_once(&config, &watch, window, started) => outcome,
                // New credentials (rotated in their files): the consumer is built again with
                // them and reads the window again (marks already known change nothing).
                () = changed(&mut settings) => {
                    tracing::info!(topic = %self.topic, "Kafka credentials changed; rebuilding the dedup consumer");
                    continue;
                }
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
        // Dropped on a thread of its own however this ends, cancelled at shutdown included:
        // destroying a librdkafka client joins its threads.
        let consumer = OffWorker(Some(Arc::new(consumer)));
        let ends = position(consumer.client().clone(), self.topic.clone(), window)
            .await
            .map_err(|e| e.to_string())?;
        self.consume(consumer.client(), ends, started).await
    }

    /// Reads marks until an error; marks the table loaded once every partition was read to
    /// where it ended at the start and then a fetch came back empty or [`QUIET`] passed (the
    /// wait covers a high watermark reported short; under steady traffic fetches never come
    /// back empty).
    async fn consume(
        &self,
        consumer: &StreamConsumer<RelayContext>,
        mut ends: Vec<i64>,
        started: Instant,
    ) -> Result<(), String> {
        let mut loaded = self.state.loaded.load(Ordering::Acquire);
        let mut loaded_now = 0u64;
        // When every partition was read to where it ended at the start.
        let mut reached: Option<Instant> = None;
        loop {
            if !loaded && reached.is_none() && ends.iter().all(|end| *end == 0) {
                reached = Some(Instant::now());
            }
            if !loaded && reached.is_some_and(|at| at.elapsed() >= QUIET) {
                loaded = true;
                self.loaded(loaded_now, started);
            }
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
                    let keys = match parse_marks(message.payload().unwrap_or_default()) {
                        Some(keys) => keys,
                        None => {
                            self.metrics.dedup_foreign_records.inc();
                            Vec::new()
                        }
                    };
                    if !keys.is_empty() {
                        let at = message
                            .timestamp()
                            .to_millis()
                            .and_then(|ms| u64::try_from(ms).ok())
                            .map_or_else(SystemTime::now, |ms| {
                                SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
                            });
                        for key in &keys {
                            self.dedup.remember(*key, at);
                        }
                        self.metrics.dedup_marks_read.inc_by(keys.len() as u64);
                        loaded_now += keys.len() as u64;
                    }
                }
                Ok(None) => {
                    if reached.is_some() {
                        loaded = true;
                        self.loaded(loaded_now, started);
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

    /// The window is read: ready as far as the shared table goes, and said once.
    fn loaded(&self, marks: u64, started: Instant) {
        self.state.loaded.store(true, Ordering::Release);
        self.state.settled.store(true, Ordering::Release);
        self.state.set_problem(None, &self.metrics);
        tracing::info!(
            topic = %self.topic,
            marks,
            remembered = self.dedup.len(),
            since_start_ms = started.elapsed().as_millis() as u64,
            "dedup window loaded; following every replica's marks"
        );
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

/// Resolves when the Kafka settings change; never when nobody can change them (a command's).
async fn changed(settings: &mut crate::kafka::Settings) {
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

/// What a mark record starts with: "fp-relay dedup marks", format 1.
pub const MARK_MAGIC: &[u8; 5] = b"FPDM\x01";

/// A mark record's value: [`MARK_MAGIC`], each key's 24 bytes, then the CRC-32 (little-endian)
/// of everything before it.
pub fn encode_marks(keys: &[Key]) -> Vec<u8> {
    let mut value = Vec::with_capacity(MARK_MAGIC.len() + keys.len() * Key::BYTES + 4);
    value.extend_from_slice(MARK_MAGIC);
    for key in keys {
        value.extend_from_slice(&key.to_bytes());
    }
    let checksum = crc32fast::hash(&value);
    value.extend_from_slice(&checksum.to_le_bytes());
    value
}

/// The keys a mark record carries; `None` for anything else on the topic (no marker, a length
/// that is not whole keys, a checksum that does not match).
pub fn parse_marks(value: &[u8]) -> Option<Vec<Key>> {
    let body = value.strip_prefix(MARK_MAGIC.as_slice())?;
    let (keys, checksum) = body.split_at_checked(body.len().checked_sub(4)?)?;
    if !keys.len().is_multiple_of(Key::BYTES)
        || crc32fast::hash(&value[..value.len() - 4]).to_le_bytes() != checksum
    {
        return None;
    }
    Some(
        keys.chunks_exact(Key::BYTES)
            .map(|chunk| Key::from_bytes(chunk.try_into().expect("24 bytes")))
            .collect(),
    )
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

/// The dedup consumer's settings: assigned partitions, never committed, fetched in batches.
///
/// Why not eagerly, as the reply consumer does: a retry that matters comes seconds to minutes
/// after the first attempt (FirstPromoter retries after its timeout or a 5xx), so a window of
/// [`FETCH_WAIT`] costs nothing, while a fetch per mark under load doubled the broker's work:
/// with the reply consumer's 5 ms / 1 byte, shared dedup took a c=64 load from 21,600 to
/// 8,800 req/s against tansu (benches/RESULTS.md).
fn follower_config(kafka: &crate::config::KafkaConfig) -> ClientConfig {
    let mut config = crate::kafka::consumer_config(kafka, "fp-relay-dedup");
    config
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string())
        .set("fetch.min.bytes", "65536");
    config
}

/// Longest a fetch of marks waits for 64 KiB of them: the consistency window at low load.
const FETCH_WAIT: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marks_keys_read_back_and_nothing_else_does() {
        let keys = [
            super::super::key_of_event("v2", "abc", "referral.created", b"{}"),
            super::super::key_of_event("v1", "7", "lead_signup", b"{ }"),
        ];
        let value = encode_marks(&keys);
        assert_eq!(parse_marks(&value), Some(keys.to_vec()));
        assert_eq!(parse_marks(&encode_marks(&[])), Some(Vec::new()));
        // The old format (raw 16-byte keys) and anything a sender could have written.
        assert_eq!(parse_marks(&[7u8; 64]), None);
        assert_eq!(parse_marks(&vec![0u8; 960 * 1024]), None);
        assert_eq!(parse_marks(b""), None);
        assert_eq!(parse_marks(MARK_MAGIC), None);
        let mut flipped = value.clone();
        flipped[10] ^= 1;
        assert_eq!(
            parse_marks(&flipped),
            None,
            "a changed byte fails the checksum"
        );
        let mut longer = value[..value.len() - 4].to_vec();
        longer.push(0);
        let checksum = crc32fast::hash(&longer);
        longer.extend_from_slice(&checksum.to_le_bytes());
        assert_eq!(parse_marks(&longer), None, "not whole keys");
    }
}
