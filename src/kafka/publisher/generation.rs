//! The producers behind a [`Publisher`], one generation at a time: built together, replaced
//! together when librdkafka declares one fatally broken or when writes go unacknowledged
//! several times in a row (the stuck-producer watchdog), and rebuilt with new credentials.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};

use super::error::PublishError;
use super::Publisher;
use crate::kafka::context::RelayContext;
use crate::kafka::outage::ClusterWatch;
use crate::metrics::Metrics;

/// Consecutive unacknowledged writes after which the producer is presumed stuck.
const STUCK_AFTER_FAILURES: u32 = 3;

/// The settings a [`Publisher`] builds its producers from
/// ([`super::producer_configs`](crate::kafka::producer_configs)).
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
pub(super) enum Route {
    /// The batching one once enough writes are in flight, else the immediate one.
    ByLoad,
    /// Always the same one (the batching one when there is one, since such writes come many
    /// at once): spool replay, whose records must keep their order in a partition.
    Ordered,
    /// Always the immediate one: a fulfilment request, whose HTTP request waits for a reply
    /// to it and must not wait for a batch to fill as well.
    AtOnce,
}

/// One producer instance and its place in the rebuild sequence.
pub(super) struct Generation {
    /// Increases with every rebuild, so only the first request to see a broken producer replaces it.
    id: u64,
    /// The producer that sends at once; `None` only while being dropped.
    producer: Option<FutureProducer<RelayContext>>,
    /// The producer that lingers, and the writes in flight from which it is taken.
    pub(super) batching: Option<(FutureProducer<RelayContext>, usize)>,
}

impl Generation {
    /// The producer that sends at once (metadata lookups and probes use it).
    pub(super) fn producer(&self) -> &FutureProducer<RelayContext> {
        self.producer.as_ref().expect("present until drop")
    }

    /// The producer for a write taking `route` while `in_flight` others await
    /// acknowledgement, and whether it is the batching one.
    pub(super) fn for_write(
        &self,
        in_flight: usize,
        route: Route,
    ) -> (&FutureProducer<RelayContext>, bool) {
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
    pub(super) fn fatal_error(&self) -> Option<String> {
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

impl Publisher {
    /// Counts writes that went unacknowledged in a row and replaces a producer that looks stuck.
    pub(super) fn watch_for_stuck(
        &self,
        result: Result<(), &PublishError>,
        generation: &Arc<Generation>,
    ) {
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
    pub(super) fn replace(&self, broken: &Arc<Generation>) -> Arc<Generation> {
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
}

pub(super) fn build(
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
