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
//!
//! Layout: `publish.rs` holds the write paths (publish, hand off, send) and how each write is
//! counted; `delivery.rs` what a write came to (delivered, or still in flight); `error.rs` why
//! a record is not known to be in Kafka; `generation.rs` the producers, their rebuild and the
//! stuck-producer watchdog; `topics.rs` the lookup before a topic's first write.

mod delivery;
mod error;
mod generation;
mod publish;
mod topics;

pub use self::delivery::{Delivered, Handoff, PendingDelivery};
pub use self::error::{refusal_reason, PublishError};
pub use self::generation::ProducerConfigs;
pub use self::topics::RECHECK_MISSING;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;

use self::generation::{build, Generation};
use self::topics::TopicState;
use super::outage::ClusterWatch;
use crate::metrics::Metrics;

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
    /// typed settings (see [`super::producer_configs`]; a bare
    /// [`ClientConfig`](rdkafka::config::ClientConfig) is one producer).
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

    fn current(&self) -> Arc<Generation> {
        self.current.read().expect("lock not poisoned").clone()
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
