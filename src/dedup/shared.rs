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
//! `/readyz` says ready (bounded by `dedup.load_timeout`), then continuously, partitions added
//! later included ([`crate::kafka::follow`]). So a retry that lands on another replica, or on a
//! restarted one, is answered `duplicate` once the mark has been read. The relay creates the
//! topic when it is missing (`dedup.create_topic`, retention `dedup.window` and a day) and
//! says so; without that, a topic auto-created by the first mark is followed within a second.
//! `serve` waits for pending marks before its last flush (bounded by the shutdown deadline).
//!
//! Why a mark after the acknowledgement and not beside the event: a mark for an event Kafka
//! then refused would suppress FirstPromoter's retry of it, a loss. The cost is the
//! consistency window: a retry that reaches replica B before B has read A's mark (up to
//! [`crate::kafka::follow::FETCH_WAIT`] plus a write) is published again. FirstPromoter retries seconds later. A
//! mark that fails is counted (`fp_relay_dedup_marks_total{result}`) and the event stays
//! suppressed by this replica's own table.
//!
//! When the topic is missing or unreadable the relay keeps accepting; dedup is per process
//! until the topic is back (`fp_relay_dedup_shared_ready` 0 and a `/readyz` detail).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Dedup, Key};
use crate::kafka::follow::{Follow, FollowState, Sink};
use crate::kafka::outage::ClusterWatch;
use crate::kafka::publisher::Publisher;
use crate::kafka::record::OutboundRecord;
use crate::kafka::topics::NewTopicSpec;
use crate::metrics::Metrics;

/// Where the shared table stands, for `/readyz` and the metrics.
pub type SharedState = FollowState;

/// What `/readyz` says the relay does while the dedup topic cannot be read.
pub const WITHOUT_TOPIC: &str =
    "duplicates are suppressed per process only (not required for readiness)";

/// Partitions of the dedup topic when the relay creates it.
pub const PARTITIONS: i32 = 4;

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
    /// Reads every replica's marks.
    follow: Arc<Follow>,
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
        let topic = config.topic.trim().to_owned();
        let mut follow = Follow::new(&topic, config.window, "dedup-consumer", "dedup marks");
        follow.state = state;
        follow.ready_gauge = Some(metrics.dedup_shared_ready.clone());
        follow.create = config
            .create_topic
            .then(|| NewTopicSpec::retained_for(PARTITIONS, config.window));
        Arc::new(Self {
            topic,
            dedup: Dedup::new(config.window, config.max_entries),
            publisher,
            metrics,
            ack_timeout,
            follow: Arc::new(follow),
            pending: Mutex::default(),
        })
    }

    /// Readiness and detail.
    pub fn state(&self) -> Arc<SharedState> {
        self.follow.state.clone()
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

    /// Waits (up to `ack_timeout`, and never past `deadline`) for the marks handed to the
    /// background to be written: `serve` calls it before its last flush, a command before it
    /// exits. Whether every mark was handed to Kafka.
    pub async fn marks_written(&self, deadline: Instant) -> bool {
        let deadline = deadline.min(Instant::now() + self.ack_timeout);
        loop {
            if !self.pending.lock().expect("lock not poisoned").writing {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
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

    /// Reads the window and then every new mark into the table until `stop` (see
    /// [`crate::kafka::follow`]: a topic missing at start, created or appearing later, and
    /// partitions added later are all followed). Readiness waits for the first load up to
    /// `load_timeout`.
    pub async fn follow(
        self: Arc<Self>,
        settings: crate::kafka::Settings,
        watch: Arc<ClusterWatch>,
        load_timeout: Duration,
        stop: CancellationToken,
    ) {
        let sink = Arc::new(MarkSink {
            dedup: self.dedup.clone(),
            metrics: self.metrics.clone(),
        });
        self.follow
            .clone()
            .run(
                sink,
                settings,
                watch,
                self.metrics.clone(),
                load_timeout,
                stop,
            )
            .await;
    }
}

/// Reads mark records into the table.
struct MarkSink {
    dedup: Arc<Dedup>,
    metrics: Arc<Metrics>,
}

impl Sink for MarkSink {
    fn read(&self, _key: Option<&[u8]>, value: Option<&[u8]>, at: SystemTime) -> u64 {
        let Some(keys) = parse_marks(value.unwrap_or_default()) else {
            self.metrics.dedup_foreign_records.inc();
            return 0;
        };
        for key in &keys {
            self.dedup.remember(*key, at);
        }
        self.metrics.dedup_marks_read.inc_by(keys.len() as u64);
        keys.len() as u64
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
    for_command_until(
        config,
        publisher,
        command,
        Instant::now() + config.dedup.load_timeout,
    )
    .await
}

/// [`for_command`], waiting for the load until `deadline` at the latest (`spool drain
/// --timeout` covers the load too).
pub async fn for_command_until(
    config: &crate::config::Config,
    publisher: Arc<Publisher>,
    command: &str,
    deadline: Instant,
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
        config.dedup.load_timeout,
        CancellationToken::new(),
    ));
    while !state.settled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{command}: dedup topic {}: {} ({} published ids of the last {} known, in {} ms)",
        shared.topic,
        state.detail(WITHOUT_TOPIC),
        shared.dedup.len(),
        humantime::format_duration(config.dedup.window),
        started.elapsed().as_millis()
    );
    Some(shared)
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
