//! Span export over OTLP (`[telemetry.otlp]`, off by default): one span per webhook request,
//! with the ids the relay wrote on its records ([`crate::trace`]), so the relay's span is the
//! parent of every consumer's. Spans are built directly as the SDK's `SpanData` (the relay
//! owns its ids, which the SDK's tracer would generate itself) and exported in batches by the
//! OpenTelemetry project's OTLP/HTTP exporter, on a thread of their own: a slow or absent
//! collector costs requests nothing. Best effort: a full queue or a failed export drops spans
//! (counted in `fp_relay_spans_dropped_total`), never delays an answer.

use std::borrow::Cow;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;

use crate::config::OtlpConfig;
use crate::metrics::Metrics;
use crate::trace::TraceContext;

/// Spans waiting for the exporter at most; beyond it they are dropped.
const QUEUE: usize = 4096;
/// Spans in one export at most.
const BATCH: usize = 512;
/// A batch goes out at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Longest wait at shutdown for the last batch.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// What is known of one request when it is answered.
#[derive(Debug, Clone)]
pub struct RequestSpan {
    pub trace: TraceContext,
    pub started: SystemTime,
    pub ended: SystemTime,
    /// The event type's label (bounded, as in metrics).
    pub event_type: &'static str,
    pub event_id: Option<String>,
    pub topic: Option<String>,
    pub status: u16,
}

/// The sending end; cheap to share.
pub struct Spans {
    queue: SyncSender<Message>,
    metrics: Arc<Metrics>,
    scope: InstrumentationScope,
}

/// What the exporter thread is sent.
enum Message {
    Span(Box<SpanData>),
    /// Export what is queued, then say so.
    Flush(SyncSender<()>),
}

/// Why span export could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp: {0}")]
pub struct SpansError(String);

impl Spans {
    /// Starts the exporter thread for `config.endpoint`.
    pub fn start(config: &OtlpConfig, metrics: Arc<Metrics>) -> Result<Self, SpansError> {
        let endpoint = config
            .endpoint
            .as_deref()
            .ok_or_else(|| SpansError("no endpoint".into()))?;
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let client =
            opentelemetry_http::hyper::HyperClient::with_default_connector(config.timeout, None);
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(config.timeout)
            .build()
            .map_err(|e| SpansError(e.to_string()))?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let (queue, spans) = mpsc::sync_channel(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SpansError(e.to_string()))?;
        let dropped = metrics.clone();
        std::thread::Builder::new()
            .name("fp-relay-spans".into())
            .spawn(move || {
                let mut failing = false;
                let mut batch = Vec::with_capacity(BATCH);
                let mut last = Instant::now();
                loop {
                    let mut flushed = None;
                    let closed = match spans.recv_timeout(FLUSH_EVERY) {
                        Ok(Message::Span(span)) => {
                            batch.push(*span);
                            false
                        }
                        Ok(Message::Flush(done)) => {
                            flushed = Some(done);
                            false
                        }
                        Err(RecvTimeoutError::Timeout) => false,
                        Err(RecvTimeoutError::Disconnected) => true,
                    };
                    let due = batch.len() >= BATCH
                        || last.elapsed() >= FLUSH_EVERY
                        || closed
                        || flushed.is_some();
                    if due && !batch.is_empty() {
                        let count = batch.len() as u64;
                        let sent = runtime.block_on(exporter.export(std::mem::take(&mut batch)));
                        match sent {
                            Ok(()) if failing => {
                                tracing::info!("spans reach the OTLP collector again");
                                failing = false;
                            }
                            Ok(()) => {}
                            Err(error) => {
                                dropped.spans_dropped.inc_by(count);
                                if !failing {
                                    tracing::warn!(%error, "cannot export spans to the OTLP collector; dropping them until it answers");
                                    failing = true;
                                }
                            }
                        }
                        last = Instant::now();
                    }
                    if let Some(done) = flushed {
                        let _ = done.send(());
                    }
                    if closed {
                        let _ = exporter.shutdown();
                        return;
                    }
                }
            })
            .map_err(|e| SpansError(e.to_string()))?;
        tracing::info!(endpoint = %url, "exporting a span per webhook request over OTLP");
        Ok(Self {
            queue,
            metrics,
            scope: InstrumentationScope::builder("fp-relay")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// Queues the span of one request; dropped (and counted) when the queue is full.
    pub fn record(&self, span: RequestSpan) {
        let data = Box::new(self.span_data(span));
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(Message::Span(data))
        {
            self.metrics.spans_dropped.inc();
        }
    }

    /// Exports what is queued (waiting a few seconds at most); for shutdown.
    pub fn flush(&self) {
        let (done, finished) = mpsc::sync_channel(1);
        if self.queue.send(Message::Flush(done)).is_ok() {
            let _ = finished.recv_timeout(SHUTDOWN_WAIT);
        }
    }

    fn span_data(&self, span: RequestSpan) -> SpanData {
        let trace = &span.trace;
        let flags = TraceFlags::new(trace.flags);
        let state = trace
            .state
            .as_deref()
            .and_then(|s| TraceState::from_key_value(parse_state(s)).ok())
            .unwrap_or_default();
        let mut attributes = vec![
            KeyValue::new("fp.event_type", span.event_type),
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.response.status_code", i64::from(span.status)),
        ];
        if let Some(topic) = span.topic {
            attributes.push(KeyValue::new("messaging.system", "kafka"));
            attributes.push(KeyValue::new("messaging.destination.name", topic));
        }
        if let Some(id) = span.event_id {
            attributes.push(KeyValue::new("fp.event_id", id));
        }
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(trace.trace_id.to_be_bytes()),
                SpanId::from_bytes(trace.span_id.to_be_bytes()),
                flags,
                false,
                state,
            ),
            parent_span_id: trace
                .parent_span_id
                .map_or(SpanId::INVALID, |id| SpanId::from_bytes(id.to_be_bytes())),
            parent_span_is_remote: trace.parent_span_id.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(format!("webhook {}", span.event_type)),
            start_time: span.started,
            end_time: span.ended,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if span.status >= 500 {
                Status::error(format!("answered {}", span.status))
            } else {
                Status::Unset
            },
            instrumentation_scope: self.scope.clone(),
        }
    }
}

/// `key=value,key=value` pairs of a `tracestate`.
fn parse_state(state: &str) -> Vec<(String, String)> {
    state
        .split(',')
        .filter_map(|pair| pair.trim().split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
