//! The librdkafka client context: statistics into metrics, client events into logs, each once.
//!
//! librdkafka reports most events twice: as a log line and through the error callback. The log
//! line is the one kept (it says which broker thread saw what); the error callback only adds
//! what is not connection trouble. Connection trouble (`FAIL` lines, "all brokers down") is
//! debug-level: [`ClusterWatch`] reports outages once, with their length.

use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::Statistics;

use super::failure::Failure;
use super::outage::ClusterWatch;
use crate::metrics::Metrics;

/// Context shared by the relay's Kafka clients.
#[derive(Clone)]
pub struct RelayContext {
    /// Where statistics go.
    metrics: Arc<Metrics>,
    /// Outage reporting, and whether the relay has stopped (then nothing is logged).
    watch: Arc<ClusterWatch>,
    /// Which client this is, for log lines (`producer`, `reply-consumer`).
    role: &'static str,
    /// Set once "this address is not Kafka" was said; librdkafka repeats it every retry.
    said_not_kafka: Arc<std::sync::atomic::AtomicBool>,
    /// This client's share of the producer gauges (a relay may run two producers).
    shares: Arc<Shares>,
}

/// What one producer last added to the queue and in-flight gauges: its statistics replace its
/// own share, never another producer's, and a dropped producer takes its share away.
#[derive(Default)]
struct Shares {
    metrics: Option<Arc<Metrics>>,
    /// Messages queued, and produce requests awaiting a response by broker id.
    last: std::sync::Mutex<(i64, std::collections::HashMap<i32, i64>)>,
}

impl Shares {
    fn update(&self, queued: i64, in_flight: impl Iterator<Item = (i32, i64)>) {
        let Some(metrics) = &self.metrics else { return };
        let mut last = self.last.lock().expect("lock not poisoned");
        metrics.kafka_queue_messages.add(queued - last.0);
        last.0 = queued;
        for (node, now) in in_flight {
            let before = last.1.insert(node, now).unwrap_or(0);
            metrics
                .kafka_broker_in_flight
                .with_label_values(&[node.to_string()])
                .add(now - before);
        }
    }
}

impl Drop for Shares {
    fn drop(&mut self) {
        let nodes: Vec<i32> = self
            .last
            .get_mut()
            .map_or_else(|_| Vec::new(), |last| last.1.keys().copied().collect());
        self.update(0, nodes.into_iter().map(|node| (node, 0)));
    }
}

impl RelayContext {
    /// A context for the client playing `role`.
    pub fn new(metrics: Arc<Metrics>, watch: Arc<ClusterWatch>, role: &'static str) -> Self {
        let shares = Shares {
            metrics: role.ends_with("producer").then(|| metrics.clone()),
            last: Default::default(),
        };
        Self {
            metrics,
            watch,
            role,
            said_not_kafka: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            shares: Arc::new(shares),
        }
    }

    /// Counts a connection fault and says it once (the outage lines say `Unreachable`).
    fn report(&self, failure: Failure, detail: &str) {
        self.metrics
            .kafka_client_errors
            .with_label_values(&[failure.label()])
            .inc();
        let first = self.watch.note_failure(failure, detail);
        if first && failure != Failure::Unreachable {
            tracing::error!(target: "librdkafka", role = self.role, kind = failure.label(), detail, "{}", failure.advice());
        } else {
            tracing::debug!(target: "librdkafka", role = self.role, kind = failure.label(), "{detail}");
        }
    }

    /// librdkafka's advice for a reply it cannot parse (raise receive.message.max.bytes) is
    /// wrong when the address is not a Kafka port at all, which is the usual cause: say that,
    /// once. True when `text` was such a line.
    fn not_kafka(&self, text: &str) -> bool {
        if !text.contains("receive.message.max.bytes") {
            return false;
        }
        if !self
            .said_not_kafka
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::error!(target: "librdkafka", role = self.role, "a broker address answered with something that is not Kafka (an HTTP server?): check kafka.brokers / --brokers ({text})");
        } else {
            tracing::debug!(target: "librdkafka", role = self.role, "{text}");
        }
        true
    }
}

/// librdkafka log facilities that report a connection going down or failing to come up.
const CONNECTION_FACILITIES: &[&str] = &["FAIL", "BROKERFAIL", "CONNECT", "ALLBROKERSDOWN"];

/// True for errors that only say a broker cannot be reached right now.
fn is_connection_trouble(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::BrokerTransportFailure
                | Code::AllBrokersDown
                | Code::Resolve
                | Code::NetworkException
        )
    )
}

impl ClientContext for RelayContext {
    /// librdkafka asks for OAUTHBEARER tokens only when `sasl.mechanism` is OAUTHBEARER and
    /// no built-in source (`sasl.oauthbearer.method = "oidc"`) is set: the MSK IAM signer.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        oauthbearer_config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        super::aws::token(oauthbearer_config)
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if self.watch.is_silenced() {
            return;
        }
        let role = self.role;
        if self.not_kafka(message) {
            return;
        }
        if let Some(failure) = Failure::from_log(fac, message) {
            self.report(failure, message);
            return;
        }
        if CONNECTION_FACILITIES.contains(&fac) {
            tracing::debug!(target: "librdkafka", role, fac, "{message}");
            return;
        }
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
        if self.watch.is_silenced() {
            return;
        }
        // Connection losses come here every few seconds while a broker is away, and were
        // already logged by `log`; the outage itself is reported by the ClusterWatch.
        if self.not_kafka(reason) {
            return;
        }
        // Wrong credentials, mechanism or TLS: said once, with what to check, then counted.
        if let Some(failure) = Failure::classify(&error, reason) {
            self.report(failure, reason);
            return;
        }
        if is_connection_trouble(&error) {
            tracing::debug!(target: "librdkafka", role = self.role, %error, "{reason}");
        } else {
            tracing::warn!(target: "librdkafka", role = self.role, %error, "{reason}");
        }
    }

    fn stats(&self, stats: Statistics) {
        if self.shares.metrics.is_none() {
            return;
        }
        let brokers = || stats.brokers.values().filter(|b| b.nodeid >= 0);
        self.shares.update(
            stats.msg_cnt as i64,
            brokers().map(|broker| (broker.nodeid, broker.waitresp_cnt)),
        );
        for broker in brokers() {
            if let Some(rtt) = &broker.rtt {
                self.metrics
                    .kafka_broker_rtt_us
                    .with_label_values(&[broker.nodeid.to_string()])
                    .set(rtt.avg);
            }
        }
    }
}

impl ConsumerContext for RelayContext {}

/// The context of the commands' clients (`tail`, `respond`, `redrive`, `recover`): librdkafka's
/// lines at debug level (the commands report failures themselves), and MSK IAM tokens.
#[derive(Clone, Copy, Default)]
pub struct ToolContext;

impl ClientContext for ToolContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        oauthbearer_config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        super::aws::token(oauthbearer_config)
    }

    fn log(&self, _: RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!(target: "librdkafka", facility, "{message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, "{reason}");
    }
}

impl ConsumerContext for ToolContext {}
