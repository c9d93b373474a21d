//! Every metric the relay exports, in one struct that owns its registry.
//!
//! Names carry the `fp_relay_` prefix; labels are bounded (event types outside the known lists
//! are `other`, never a raw path, id or unknown name). The doc comment of each field is its HELP.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 0.5 ms to 15 s (FirstPromoter's own timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
];

/// The relay's metrics.
pub struct Metrics {
    registry: Registry,
    /// Webhook requests answered, by event type and HTTP status.
    pub http_requests: IntCounterVec,
    /// Time from request arrival to response, by event type.
    pub http_request_duration: HistogramVec,
    /// Kafka writes by result: ok, error, timeout.
    pub kafka_produce: IntCounterVec,
    /// Time from handing a record to the producer to its delivery report.
    pub kafka_produce_duration: Histogram,
    /// Producers rebuilt after a fatal error (e.g. the cluster forgot the idempotent producer id).
    pub kafka_producer_rebuilds: IntCounter,
    /// Messages waiting in the producer's queue (librdkafka statistics).
    pub kafka_queue_messages: IntGauge,
    /// Requests sent to a broker and not yet answered (librdkafka statistics).
    pub kafka_broker_in_flight: IntGaugeVec,
    /// Average broker round-trip time in microseconds (librdkafka statistics).
    pub kafka_broker_rtt_us: IntGaugeVec,
    /// Requests refused before anything was published, by reason.
    pub rejected: IntCounterVec,
    /// Unparseable bodies written to the dead-letter topic.
    pub dead_lettered: IntCounter,
    /// Requests refused by authentication, by the check that failed.
    pub auth_failures: IntCounterVec,
    /// Events written to the spool because Kafka could not take them in time.
    pub spooled: IntCounter,
    /// Spooled events replayed to Kafka.
    pub spool_replayed: IntCounter,
    /// Spool records found torn or corrupt; never replayed.
    pub spool_corrupt_records: IntCounter,
    /// Bytes of the spool's segment files.
    pub spool_bytes: IntGauge,
    /// Spooled events not yet in Kafka.
    pub spool_records: IntGauge,
    /// Age of the oldest spooled event not yet in Kafka.
    pub spool_oldest_age_seconds: Gauge,
    /// Requests answered as duplicates of an event id already published.
    pub duplicates: IntCounter,
    /// 1 when `/readyz` would answer 200, else 0; refreshed at every scrape.
    pub ready: IntGauge,
    /// fulfilment_pending requests currently held for an answer.
    pub fulfilment_in_flight: IntGauge,
    /// `fulfilment.max_in_flight`, so dashboards and alerts can compare against the cap.
    pub fulfilment_max_in_flight: IntGauge,
    /// fulfilment_pending outcomes: fulfilled, pending, failed, timeout, publish_error, overflow, shutdown.
    pub fulfilment_outcomes: IntCounterVec,
    /// Time from publishing a fulfilment request to receiving its answer.
    pub fulfilment_reply_duration: Histogram,
    /// Replies that matched no held request, by reason: late, unmatched, malformed.
    pub fulfilment_replies_ignored: IntCounterVec,
    /// Reply consumers rebuilt because the reply topic vanished, shrank or was recreated.
    pub fulfilment_reply_consumer_rebuilds: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Self {
            http_requests: IntCounterVec::new(
                Opts::new(
                    "fp_relay_http_requests_total",
                    "Webhook requests answered, by event type and HTTP status.",
                ),
                &["event_type", "status"],
            )
            .expect("valid metric"),
            http_request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "fp_relay_http_request_duration_seconds",
                    "Time from request arrival to response, by event type.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["event_type"],
            )
            .expect("valid metric"),
            kafka_produce: IntCounterVec::new(
                Opts::new(
                    "fp_relay_kafka_produce_total",
                    "Kafka writes by result: ok, error, timeout.",
                ),
                &["result"],
            )
            .expect("valid metric"),
            kafka_produce_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "fp_relay_kafka_produce_duration_seconds",
                    "Time from handing a record to the producer to its delivery report.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            kafka_producer_rebuilds: IntCounter::new(
                "fp_relay_kafka_producer_rebuilds_total",
                "Producers rebuilt after a fatal error.",
            )
            .expect("valid metric"),
            kafka_queue_messages: IntGauge::new(
                "fp_relay_kafka_queue_messages",
                "Messages waiting in the producer's queue (librdkafka statistics).",
            )
            .expect("valid metric"),
            kafka_broker_in_flight: IntGaugeVec::new(
                Opts::new(
                    "fp_relay_kafka_broker_in_flight_requests",
                    "Requests sent to a broker and not yet answered (librdkafka statistics).",
                ),
                &["broker"],
            )
            .expect("valid metric"),
            kafka_broker_rtt_us: IntGaugeVec::new(
                Opts::new(
                    "fp_relay_kafka_broker_rtt_microseconds",
                    "Average broker round-trip time in microseconds (librdkafka statistics).",
                ),
                &["broker"],
            )
            .expect("valid metric"),
            rejected: IntCounterVec::new(
                Opts::new(
                    "fp_relay_rejected_total",
                    "Requests refused before anything was published, by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            dead_lettered: IntCounter::new(
                "fp_relay_dead_lettered_total",
                "Unparseable bodies written to the dead-letter topic.",
            )
            .expect("valid metric"),
            ready: IntGauge::new(
                "fp_relay_ready",
                "1 when /readyz would answer 200, else 0; refreshed at every scrape.",
            )
            .expect("valid metric"),
            fulfilment_max_in_flight: IntGauge::new(
                "fp_relay_fulfilment_max_in_flight",
                "The configured cap on held fulfilment requests.",
            )
            .expect("valid metric"),
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "fp_relay_auth_failures_total",
                    "Requests refused by authentication, by the check that failed.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            spooled: IntCounter::new(
                "fp_relay_spooled_total",
                "Events written to the spool because Kafka could not take them in time.",
            )
            .expect("valid metric"),
            spool_replayed: IntCounter::new(
                "fp_relay_spool_replayed_total",
                "Spooled events replayed to Kafka.",
            )
            .expect("valid metric"),
            spool_corrupt_records: IntCounter::new(
                "fp_relay_spool_corrupt_records_total",
                "Spool records found torn or corrupt; never replayed.",
            )
            .expect("valid metric"),
            spool_bytes: IntGauge::new(
                "fp_relay_spool_bytes",
                "Bytes of the spool's segment files.",
            )
            .expect("valid metric"),
            spool_records: IntGauge::new(
                "fp_relay_spool_records",
                "Spooled events not yet in Kafka.",
            )
            .expect("valid metric"),
            spool_oldest_age_seconds: Gauge::new(
                "fp_relay_spool_oldest_age_seconds",
                "Age of the oldest spooled event not yet in Kafka.",
            )
            .expect("valid metric"),
            duplicates: IntCounter::new(
                "fp_relay_duplicates_total",
                "Requests answered as duplicates of an event id already published.",
            )
            .expect("valid metric"),
            fulfilment_in_flight: IntGauge::new(
                "fp_relay_fulfilment_in_flight",
                "fulfilment_pending requests currently held for an answer.",
            )
            .expect("valid metric"),
            fulfilment_outcomes: IntCounterVec::new(
                Opts::new(
                    "fp_relay_fulfilment_outcomes_total",
                    "fulfilment_pending outcomes.",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            fulfilment_reply_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "fp_relay_fulfilment_reply_duration_seconds",
                    "Time from publishing a fulfilment request to receiving its answer.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            fulfilment_replies_ignored: IntCounterVec::new(
                Opts::new(
                    "fp_relay_fulfilment_replies_ignored_total",
                    "Replies that matched no held request, by reason: late, unmatched, malformed.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            fulfilment_reply_consumer_rebuilds: IntCounter::new(
                "fp_relay_fulfilment_reply_consumer_rebuilds_total",
                "Reply consumers rebuilt because the reply topic vanished, shrank or was recreated.",
            )
            .expect("valid metric"),
            registry,
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let build_info = IntGaugeVec::new(
            Opts::new(
                "fp_relay_build_info",
                "Always 1; the version label says which build runs.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        self.registry
            .register(Box::new(build_info))
            .expect("metric names are unique");
        for collector in self.collectors() {
            self.registry
                .register(collector)
                .expect("metric names are unique");
        }
    }

    /// Every metric this struct owns, in registration order.
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.http_requests.clone()),
            Box::new(self.http_request_duration.clone()),
            Box::new(self.kafka_produce.clone()),
            Box::new(self.kafka_produce_duration.clone()),
            Box::new(self.kafka_producer_rebuilds.clone()),
            Box::new(self.kafka_queue_messages.clone()),
            Box::new(self.kafka_broker_in_flight.clone()),
            Box::new(self.kafka_broker_rtt_us.clone()),
            Box::new(self.rejected.clone()),
            Box::new(self.dead_lettered.clone()),
            Box::new(self.auth_failures.clone()),
            Box::new(self.spooled.clone()),
            Box::new(self.spool_replayed.clone()),
            Box::new(self.spool_corrupt_records.clone()),
            Box::new(self.spool_bytes.clone()),
            Box::new(self.spool_records.clone()),
            Box::new(self.spool_oldest_age_seconds.clone()),
            Box::new(self.duplicates.clone()),
            Box::new(self.ready.clone()),
            Box::new(self.fulfilment_in_flight.clone()),
            Box::new(self.fulfilment_max_in_flight.clone()),
            Box::new(self.fulfilment_outcomes.clone()),
            Box::new(self.fulfilment_reply_consumer_rebuilds.clone()),
            Box::new(self.fulfilment_reply_duration.clone()),
            Box::new(self.fulfilment_replies_ignored.clone()),
        ]
    }

    /// The name of every metric family the relay exports, with or without samples yet.
    pub fn names(&self) -> Vec<String> {
        let mut names = vec!["fp_relay_build_info".to_owned()];
        for collector in self.collectors() {
            names.extend(collector.desc().iter().map(|d| d.fq_name.clone()));
        }
        names
    }

    /// The text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
