//! Every metric the relay exports, in one struct that owns its registry.
//!
//! Names carry the `fp_relay_` prefix; labels are bounded (event types outside the known lists
//! are `other`, never a raw path, id or unknown name). Each metric is declared once, in the
//! [`metrics!`] list below: its field, name and labels, and its doc comment, which is also its
//! HELP text.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 0.5 ms to 15 s (FirstPromoter's own timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
];

/// A metric type the [`metrics!`] list can declare.
trait Family: Collector + Clone + 'static {
    /// Builds the metric; `labels` is empty for a single series.
    fn create(name: &str, help: &str, labels: &[&str]) -> Self;
}

macro_rules! family {
    ($kind:ty, |$name:ident, $help:ident, $labels:ident| $make:expr) => {
        impl Family for $kind {
            fn create($name: &str, $help: &str, $labels: &[&str]) -> Self {
                $make.expect("valid metric")
            }
        }
    };
}

family!(IntCounter, |name, help, _labels| IntCounter::new(
    name, help
));
family!(IntGauge, |name, help, _labels| IntGauge::new(name, help));
family!(Gauge, |name, help, _labels| Gauge::new(name, help));
family!(IntCounterVec, |name, help, labels| IntCounterVec::new(
    Opts::new(name, help),
    labels
));
family!(IntGaugeVec, |name, help, labels| IntGaugeVec::new(
    Opts::new(name, help),
    labels
));
family!(Histogram, |name, help, _labels| Histogram::with_opts(
    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
));
family!(HistogramVec, |name, help, labels| HistogramVec::new(
    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
    labels
));

/// Declares the [`Metrics`] struct, its constructor and its registration list from one entry
/// per metric: `/// HELP text` then `field: Type = "name" [labels],`.
macro_rules! metrics {
    ($( $(#[doc = $help:literal])+ $field:ident: $kind:ty = $name:literal [$($label:literal),*], )*) => {
        /// The relay's metrics.
        pub struct Metrics {
            registry: Registry,
            /// Unique per instance (a dropped instance's address can be reused).
            id: u64,
            $( $(#[doc = $help])+ pub $field: $kind, )*
        }

        impl Metrics {
            /// Creates and registers every metric.
            pub fn new() -> Self {
                static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let metrics = Self {
                    registry: Registry::new(),
                    id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    $( $field: <$kind as Family>::create(
                        $name,
                        concat!($($help),+).trim(),
                        &[$($label),*],
                    ), )*
                };
                metrics.register_all();
                metrics
            }

            /// Every metric this struct owns, in declaration order.
            fn collectors(&self) -> Vec<Box<dyn Collector>> {
                vec![$(Box::new(self.$field.clone()) as Box<dyn Collector>),*]
            }
        }
    };
}

metrics! {
    /// Requests whose handling panicked (a bug): each was answered 500 with a request id that
    /// its log line carries. The test suite fails on any.
    panics: IntCounter = "fp_relay_panics_total" [],
    /// Webhook requests answered, by event type and HTTP status.
    http_requests: IntCounterVec = "fp_relay_http_requests_total" ["event_type", "status"],
    /// Time from request arrival to response, by event type.
    http_request_duration: HistogramVec = "fp_relay_http_request_duration_seconds" ["event_type"],
    /// Kafka writes by result: ok, error, timeout, refused (permanently, e.g. not authorised).
    kafka_produce: IntCounterVec = "fp_relay_kafka_produce_total" ["result"],
    /// Records handed to a producer, by which: `immediate` (sends at once) or `batching`
    /// (lingers `kafka.batch_linger`; taken from `kafka.batch_above_in_flight` writes in flight).
    kafka_writes: IntCounterVec = "fp_relay_kafka_writes_total" ["producer"],
    /// Time from handing a record to the producer to its delivery report.
    kafka_produce_duration: Histogram = "fp_relay_kafka_produce_duration_seconds" [],
    /// Producers replaced after a fatal error or several unacknowledged writes in a row (e.g.
    /// the cluster forgot the idempotent producer id).
    kafka_producer_rebuilds: IntCounter = "fp_relay_kafka_producer_rebuilds_total" [],
    /// Reports from librdkafka of a fault of the connection to Kafka, by kind:
    /// authentication, sasl_mechanism, sasl_required, tls, unreachable (each said once in the log).
    kafka_client_errors: IntCounterVec = "fp_relay_kafka_client_errors_total" ["kind"],
    /// Messages waiting in the producer's queue (librdkafka statistics).
    kafka_queue_messages: IntGauge = "fp_relay_kafka_queue_messages" [],
    /// Requests sent to a broker and not yet answered (librdkafka statistics).
    kafka_broker_in_flight: IntGaugeVec = "fp_relay_kafka_broker_in_flight_requests" ["broker"],
    /// Average broker round-trip time in microseconds (librdkafka statistics).
    kafka_broker_rtt_us: IntGaugeVec = "fp_relay_kafka_broker_rtt_microseconds" ["broker"],
    /// Requests refused before anything was published, by reason.
    rejected: IntCounterVec = "fp_relay_rejected_total" ["reason"],
    /// Records kept on the dead-letter topic: unparseable bodies and events Kafka refused for good.
    dead_lettered: IntCounter = "fp_relay_dead_lettered_total" [],
    /// Requests refused by authentication, by the check that failed.
    auth_failures: IntCounterVec = "fp_relay_auth_failures_total" ["reason"],
    /// Events written to the spool because Kafka could not take them in time.
    spooled: IntCounter = "fp_relay_spooled_total" [],
    /// Spooled events replayed to Kafka.
    spool_replayed: IntCounter = "fp_relay_spool_replayed_total" [],
    /// Spooled records that neither their topic nor the dead-letter topic would take, kept in
    /// quarantined in the spool instead (see docs/durability.md).
    spool_quarantined: IntCounter = "fp_relay_spool_quarantined_total" [],
    /// Spool records found torn or corrupt; never replayed.
    spool_corrupt_records: IntCounter = "fp_relay_spool_corrupt_records_total" [],
    /// Bytes of the spool's database files (spool.db and its WAL).
    spool_bytes: IntGauge = "fp_relay_spool_bytes" [],
    /// Spooled events not yet in Kafka.
    spool_records: IntGauge = "fp_relay_spool_records" [],
    /// Age of the oldest spooled event not yet in Kafka.
    spool_oldest_age_seconds: Gauge = "fp_relay_spool_oldest_age_seconds" [],
    /// Bytes of spooled events not yet in Kafka plus quarantined ones: what spool.max_bytes limits.
    spool_pending_bytes: IntGauge = "fp_relay_spool_pending_bytes" [],
    /// Bytes of quarantined spool records: records no topic would take (fp-relay spool requeue).
    spool_quarantine_bytes: IntGauge = "fp_relay_spool_quarantine_bytes" [],
    /// Spool files that cannot be read (a disk or permission error, damage): databases set
    /// aside, an old journal not yet imported, or the live database while replay cannot read
    /// it. Kept, never deleted, retried.
    spool_files_set_aside: IntGauge = "fp_relay_spool_files_set_aside" [],
    /// Requests answered as duplicates of an event id already published.
    duplicates: IntCounter = "fp_relay_duplicates_total" [],
    /// 1 while the shared dedup table (`dedup.topic`) is loaded and followed; 0 while loading
    /// or while the topic is unavailable (duplicates then suppressed per process only).
    dedup_shared_ready: IntGauge = "fp_relay_dedup_shared_ready" [],
    /// Marks written to `dedup.topic` after an event was acknowledged, by result: ok, failed.
    dedup_marks: IntCounterVec = "fp_relay_dedup_marks_total" ["result"],
    /// Marks read from `dedup.topic` (every replica's, this one's included).
    dedup_marks_read: IntCounter = "fp_relay_dedup_marks_read_total" [],
    /// Records on `dedup.topic` that are not mark records (no format marker, or a checksum
    /// that does not match): ignored, never read as marks.
    dedup_foreign_records: IntCounter = "fp_relay_dedup_foreign_records_total" [],
    /// Events whose id was already published with other content: published all the same (a
    /// duplicate is the same event, not the same number).
    dedup_conflicts: IntCounter = "fp_relay_dedup_conflicts_total" [],
    /// 1 when `/readyz` would answer 200, else 0; refreshed at every scrape.
    ready: IntGauge = "fp_relay_ready" [],
    /// 1 when fulfilment replies can reach held requests (the reply consumer is positioned);
    /// while 0, fulfilment_pending is answered pending without being published. Not part of
    /// readiness. Refreshed at every scrape.
    fulfilment_reply_path_ready: IntGauge = "fp_relay_fulfilment_reply_path_ready" [],
    /// fulfilment_pending requests currently held for an answer.
    fulfilment_in_flight: IntGauge = "fp_relay_fulfilment_in_flight" [],
    /// `fulfilment.max_in_flight`, so dashboards and alerts can compare against the cap.
    fulfilment_max_in_flight: IntGauge = "fp_relay_fulfilment_max_in_flight" [],
    /// fulfilment_pending outcomes: fulfilled, pending, failed, timeout, publish_error, overflow,
    /// released, disabled, unavailable (no reply could reach a hold: not published),
    /// remembered (a `fulfilled` verdict remembered: 200 without asking again), joined
    /// (answered by the verdict of a request another check of the reward published).
    fulfilment_outcomes: IntCounterVec = "fp_relay_fulfilment_outcomes_total" ["outcome"],
    /// Verdict records written to `fulfilment.verdict_topic`, by kind (asking, verdict) and
    /// result (ok, failed).
    fulfilment_verdicts_written: IntCounterVec = "fp_relay_fulfilment_verdicts_written_total" ["kind", "result"],
    /// Verdict records read from `fulfilment.verdict_topic` (every replica's), and records
    /// there that are not verdicts (ignored).
    fulfilment_verdicts_read: IntCounterVec = "fp_relay_fulfilment_verdicts_read_total" ["result"],
    /// Rewards whose verdict (or open request) is remembered now.
    fulfilment_verdicts_remembered: IntGauge = "fp_relay_fulfilment_verdicts_remembered" [],
    /// 1 while the verdict topic is loaded and followed.
    fulfilment_verdicts_ready: IntGauge = "fp_relay_fulfilment_verdicts_ready" [],
    /// Reply consumers rebuilt because the reply topic vanished, shrank or was recreated.
    fulfilment_reply_consumer_rebuilds: IntCounter = "fp_relay_fulfilment_reply_consumer_rebuilds_total" [],
    /// Time from publishing a fulfilment request to receiving its answer.
    fulfilment_reply_duration: Histogram = "fp_relay_fulfilment_reply_duration_seconds" [],
    /// Replies that matched no held request, by reason: late, unmatched, malformed.
    fulfilment_replies_ignored: IntCounterVec = "fp_relay_fulfilment_replies_ignored_total" ["reason"],
    /// Approved non-monetary v2 commissions published as fulfilment requests.
    fulfilment_v2_requests: IntCounter = "fp_relay_fulfilment_v2_requests_total" [],
    /// v2 replies read by this replica, by outcome: fulfilled, pending, failed, malformed.
    fulfilment_v2_replies: IntCounterVec = "fp_relay_fulfilment_v2_replies_total" ["outcome"],
    /// v2 commissions FirstPromoter marked fulfilled (or said were already).
    fulfilment_v2_marked: IntCounter = "fp_relay_fulfilment_v2_marked_total" [],
    /// v2 replies kept on the dead-letter topic because FirstPromoter refused their commission.
    fulfilment_v2_dead_lettered: IntCounter = "fp_relay_fulfilment_v2_dead_lettered_total" [],
    /// Reply partitions this replica reads for v2 fulfilment (the group shares them out).
    fulfilment_v2_assigned_partitions: IntGauge = "fp_relay_fulfilment_v2_assigned_partitions" [],
    /// v2 commissions with a fulfilled reply that FirstPromoter has not yet been told about.
    fulfilment_v2_waiting: IntGauge = "fp_relay_fulfilment_v2_waiting_commissions" [],
    /// Age of the oldest fulfilled reply still waiting for FirstPromoter (0 when none waits).
    fulfilment_v2_oldest_waiting_age: Gauge = "fp_relay_fulfilment_v2_oldest_waiting_seconds" [],
    /// Calls to FirstPromoter's API, by endpoint and result: ok, already_fulfilled, rejected,
    /// rate_limited, server_error, timeout, network_error.
    firstpromoter_api_calls: IntCounterVec = "fp_relay_firstpromoter_api_calls_total" ["endpoint", "result"],
    /// Duration of calls to FirstPromoter's API, by endpoint.
    firstpromoter_api_call_duration: HistogramVec = "fp_relay_firstpromoter_api_call_duration_seconds" ["endpoint"],
    /// FirstPromoter's delivery records to this relay within `firstpromoter.reconcile.window`,
    /// by status (pending, delivered, retrying, failed), as of the last reconciliation.
    firstpromoter_deliveries: IntGaugeVec = "fp_relay_firstpromoter_deliveries" ["status"],
    /// Age of the oldest delivery FirstPromoter has not delivered (pending, retrying or failed)
    /// within the window; 0 when every one was delivered.
    firstpromoter_oldest_undelivered_age: Gauge = "fp_relay_firstpromoter_oldest_undelivered_seconds" [],
    /// Deliveries FirstPromoter gave up on (status failed), counted when first seen:
    /// `fp-relay firstpromoter recover` puts their events in Kafka.
    firstpromoter_failed_deliveries: IntCounter = "fp_relay_firstpromoter_failed_deliveries_total" [],
    /// 1 while the reply consumer rests: no request held or released for longer than a late
    /// reply is remembered, so it fetches nothing until the next hold begins.
    fulfilment_reply_consumer_resting: IntGauge = "fp_relay_fulfilment_reply_consumer_resting" [],
    /// Spans not exported over OTLP: the queue was full or the collector did not take them.
    spans_dropped: IntCounter = "fp_relay_spans_dropped_total" [],
    /// Reconciliation rounds by result: ok, or the API error's label.
    firstpromoter_reconcile_runs: IntCounterVec = "fp_relay_firstpromoter_reconcile_runs_total" ["result"],
    /// Unix time of the last reconciliation that read every delivery record.
    firstpromoter_reconcile_last_success: Gauge = "fp_relay_firstpromoter_reconcile_last_success_timestamp_seconds" [],
}

impl Metrics {
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

/// Most (event type, status) series a worker thread keeps resolved for [`Metrics::request_answered`].
const REQUEST_SERIES_PER_THREAD: usize = 64;

type RequestSeries = (u64, &'static str, http::StatusCode, IntCounter, Histogram);

thread_local! {
    /// Resolved request series of this thread: looking a labelled series up hashes its label
    /// values and takes the family's lock on every request, about 1.5 µs of each at c=256
    /// (benches/RESULTS.md); the event type labels are `'static`, so a pointer compare finds
    /// one here.
    static REQUEST_SERIES: std::cell::RefCell<Vec<RequestSeries>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Metrics {
    /// Counts one answered webhook request (`fp_relay_http_requests_total`) and its duration
    /// (`fp_relay_http_request_duration_seconds`).
    pub fn request_answered(
        &self,
        event_type: &'static str,
        status: http::StatusCode,
        seconds: f64,
    ) {
        let owner = self.id;
        REQUEST_SERIES.with(|cache| {
            let mut cache = cache.borrow_mut();
            let found = cache.iter().find(|(o, label, code, ..)| {
                *o == owner && std::ptr::eq(*label, event_type) && *code == status
            });
            if let Some((.., requests, duration)) = found {
                requests.inc();
                duration.observe(seconds);
                return;
            }
            let requests = self
                .http_requests
                .with_label_values(&[event_type, status.as_str()]);
            let duration = self.http_request_duration.with_label_values(&[event_type]);
            requests.inc();
            duration.observe(seconds);
            if cache.len() >= REQUEST_SERIES_PER_THREAD {
                cache.clear();
            }
            cache.push((owner, event_type, status, requests, duration));
        });
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-thread series cache counts into the instance asked, for every label, also
    /// past its size bound.
    #[test]
    fn answered_requests_are_counted_by_their_own_metrics() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let labels: Vec<&'static str> = crate::webhook::known_event_types().take(70).collect();
        for _ in 0..3 {
            for label in &labels {
                a.request_answered(label, http::StatusCode::OK, 0.001);
            }
        }
        b.request_answered(labels[0], http::StatusCode::ACCEPTED, 0.001);
        for label in &labels {
            assert_eq!(
                a.http_requests.with_label_values(&[label, "200"]).get(),
                3,
                "{label}"
            );
            assert_eq!(
                a.http_request_duration
                    .with_label_values(&[label])
                    .get_sample_count(),
                3
            );
        }
        assert_eq!(
            b.http_requests.with_label_values(&[labels[0], "202"]).get(),
            1
        );
        assert_eq!(
            b.http_requests.with_label_values(&[labels[0], "200"]).get(),
            0
        );
        assert_eq!(
            a.http_requests.with_label_values(&[labels[0], "202"]).get(),
            0
        );
    }

    #[test]
    fn each_metric_is_declared_once_with_its_doc_comment_as_help() {
        let metrics = Metrics::new();
        metrics.kafka_producer_rebuilds.inc();
        let text = metrics.render();
        assert!(text.contains(
            "# HELP fp_relay_kafka_producer_rebuilds_total Producers replaced after a fatal error \
             or several unacknowledged writes in a row (e.g. the cluster forgot the idempotent \
             producer id).\n"
        ), "two doc lines make one HELP line:\n{text}");
        assert!(text.contains("fp_relay_kafka_producer_rebuilds_total 1\n"));
        let names = metrics.names();
        assert_eq!(names.len(), 59, "58 declared plus build_info: {names:?}");
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }
}
