//! The librdkafka client context: statistics into metrics, client errors into logs.

use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::Statistics;

use crate::metrics::Metrics;

/// Context shared by the relay's Kafka clients.
#[derive(Clone)]
pub struct RelayContext {
    /// Where statistics go.
    metrics: Arc<Metrics>,
    /// Which client this is, for log lines (`producer`, `reply-consumer`).
    role: &'static str,
}

impl RelayContext {
    /// A context for the client playing `role`.
    pub fn new(metrics: Arc<Metrics>, role: &'static str) -> Self {
        Self { metrics, role }
    }
}

impl ClientContext for RelayContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let role = self.role;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", role, fac, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", role, fac, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", role, fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", role, fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Connection losses are reported here every few seconds while a broker is away; they are
        // worth a warning, not an error: the relay answers 503 and recovers on its own.
        tracing::warn!(target: "librdkafka", role = self.role, %error, "{reason}");
    }

    fn stats(&self, stats: Statistics) {
        if self.role != "producer" {
            return;
        }
        self.metrics.kafka_queue_messages.set(stats.msg_cnt as i64);
        for broker in stats.brokers.values().filter(|b| b.nodeid >= 0) {
            let label = [broker.nodeid.to_string()];
            self.metrics
                .kafka_broker_in_flight
                .with_label_values(&label)
                .set(broker.waitresp_cnt);
            if let Some(rtt) = &broker.rtt {
                self.metrics
                    .kafka_broker_rtt_us
                    .with_label_values(&label)
                    .set(rtt.avg);
            }
        }
    }
}

impl ConsumerContext for RelayContext {}
