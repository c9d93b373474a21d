//! W3C trace context across the Kafka hop, against a real tansu broker: an incoming
//! `traceparent` is continued on every record the relay writes for the request (standard
//! events, fulfilment requests, dead letters), a request without one starts a new trace, and
//! the reply path's log line names the request's trace.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{consume, sample, send, Consumed, RelayProcess, Tansu, TestRelay};
use fp_relay::trace::parse_traceparent;
use http::StatusCode;

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const WAIT: Duration = Duration::from_secs(10);

/// The trace id of a record's `traceparent`, checked to be the same under `ce_traceparent`.
fn trace_of(record: &Consumed) -> String {
    let parent = record
        .header("traceparent")
        .expect("traceparent on the record");
    assert_eq!(record.header("ce_traceparent"), Some(parent));
    let parsed = parse_traceparent(parent).expect("a valid traceparent");
    assert_ne!(
        format!("{:016x}", parsed.span_id),
        "00f067aa0ba902b7",
        "the relay's own span, not the caller's"
    );
    format!("{:032x}", parsed.trace_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incoming_trace_is_continued_on_every_record_and_a_missing_one_started() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.fulfilment.enabled = false;
    let relay = TestRelay::start_ready(config).await;
    let headers = [
        ("traceparent", INCOMING),
        ("tracestate", "congo=t61rcWkgMzE"),
    ];
    let traced = relay
        .post_with(sample("v1/lead_signup.json"), &headers)
        .await;
    assert!(traced.status.is_success(), "{}", traced.text());
    let plain = relay.post(sample("v1/lead_signup.json")).await;
    assert!(plain.status.is_success());
    let garbled = relay
        .post_with(
            sample("v1/lead_signup.json"),
            &[(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
        )
        .await;
    assert!(garbled.status.is_success());
    // Not JSON: dead-lettered, with the trace too.
    let bad = relay
        .post_with(Bytes::from_static(b"{not json"), &headers)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let records = consume(
        &broker.bootstrap(),
        "firstpromoter.lead_signup",
        3,
        WAIT,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(records.len(), 3);
    assert_eq!(trace_of(&records[0]), TRACE_ID);
    assert_eq!(records[0].header("tracestate"), Some("congo=t61rcWkgMzE"));
    assert_eq!(
        records[0].header("ce_tracestate"),
        Some("congo=t61rcWkgMzE")
    );
    let fresh = [trace_of(&records[1]), trace_of(&records[2])];
    for id in &fresh {
        assert_ne!(id, TRACE_ID);
        assert_ne!(id, &"0".repeat(32));
    }
    assert_ne!(fresh[0], fresh[1], "each request its own trace");
    assert_eq!(records[1].header("tracestate"), None);

    let dead = consume(
        &broker.bootstrap(),
        "firstpromoter.dead_letter",
        1,
        WAIT,
        Duration::ZERO,
    )
    .await;
    assert_eq!(trace_of(&dead[0]), TRACE_ID);
    relay.shutdown().await;
}

/// The v1 round trip with the binary: the fulfilment request carries the trace, a fulfiller
/// (`fp-relay respond`) answers continuing it, and the relay's line for the answer names it.
#[tokio::test(flavor = "multi_thread")]
async fn the_reply_paths_log_line_names_the_requests_trace() {
    let broker = Tansu::start();
    let relay = RelayProcess::start(&broker).await;
    let mut responder = Guard(common::respond_process(&broker));
    let reply = send(
        relay.addr,
        "POST",
        "/webhooks/firstpromoter",
        &[("traceparent", INCOMING)],
        sample("v1/fulfilment_pending.json"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let requests = consume(
        &broker.bootstrap(),
        "firstpromoter.fulfilment_pending",
        1,
        WAIT,
        Duration::ZERO,
    )
    .await;
    assert_eq!(trace_of(&requests[0]), TRACE_ID);
    let replies = consume(
        &broker.bootstrap(),
        "firstpromoter.fulfilment_replies",
        1,
        WAIT,
        Duration::ZERO,
    )
    .await;
    assert_eq!(
        trace_of_reply(&replies[0]),
        TRACE_ID,
        "respond continues the trace"
    );
    let _ = responder.0.kill();
    let (_, lines) = relay.terminate().await;
    let answered: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "fulfilment request answered")
        .collect();
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(answered[0]["trace_id"], TRACE_ID);
    assert_eq!(answered[0]["outcome"], "fulfilled");
}

fn trace_of_reply(record: &Consumed) -> String {
    let parent = parse_traceparent(record.header("traceparent").expect("traceparent")).unwrap();
    format!("{:032x}", parent.trace_id)
}

/// Kills the child when the test ends, whatever happens.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An OTLP/HTTP collector: decodes each `POST /v1/traces` and keeps the spans.
async fn collector() -> (
    std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
    std::net::SocketAddr,
) {
    use http_body_util::{BodyExt, Full};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = spans.clone();
    let addr = common::serve_http(move |request: http::Request<hyper::body::Incoming>| {
        let kept = kept.clone();
        async move {
            assert_eq!(request.uri().path(), "/v1/traces");
            assert_eq!(request.headers()["content-type"], "application/x-protobuf");
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let export = ExportTraceServiceRequest::decode(body).unwrap();
            for resource in export.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .any(|kv| kv.key == "service.name");
                assert!(service, "the resource names the service");
                for scope in resource.scope_spans {
                    kept.lock().unwrap().extend(scope.spans);
                }
            }
            http::Response::new(Full::new(Bytes::new()))
        }
    })
    .await;
    (spans, addr)
}

/// With `[telemetry.otlp]` on, each request's span reaches the collector with the ids the
/// records carry, the caller's span as parent, and the event type and topic as attributes.
#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_an_otlp_collector_with_the_ids_on_the_records() {
    let broker = Tansu::start();
    let (spans, collector) = collector().await;
    let mut config = common::test_config(&broker.bootstrap());
    config.fulfilment.enabled = false;
    config.telemetry.otlp.endpoint = Some(format!("http://{collector}"));
    let relay = TestRelay::start_ready(config).await;
    let reply = relay
        .post_with(sample("v1/lead_signup.json"), &[("traceparent", INCOMING)])
        .await;
    assert!(reply.status.is_success());
    let refused = send(
        relay.addr,
        "GET",
        "/webhooks/firstpromoter",
        &[("traceparent", INCOMING)],
        Bytes::new(),
    )
    .await;
    assert_eq!(refused.status, StatusCode::METHOD_NOT_ALLOWED);
    let records = consume(
        &broker.bootstrap(),
        "firstpromoter.lead_signup",
        1,
        WAIT,
        Duration::ZERO,
    )
    .await;
    let written = parse_traceparent(records[0].header("traceparent").unwrap()).unwrap();
    assert!(
        common::eventually(WAIT, async || spans.lock().unwrap().len() >= 2).await,
        "spans never reached the collector"
    );
    let spans = spans.lock().unwrap().clone();
    let attribute = |span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
            .map(|v| match v {
                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => s,
                opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(i) => {
                    i.to_string()
                }
                other => format!("{other:?}"),
            })
    };
    let published = spans
        .iter()
        .find(|s| attribute(s, "fp.event_type").as_deref() == Some("lead_signup"))
        .expect("the published request's span");
    assert_eq!(hex::encode(&published.trace_id), TRACE_ID);
    assert_eq!(
        published.span_id,
        written.span_id.to_be_bytes(),
        "the span the records name as parent"
    );
    assert_eq!(hex::encode(&published.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        attribute(published, "messaging.destination.name").as_deref(),
        Some("firstpromoter.lead_signup")
    );
    assert_eq!(
        attribute(published, "http.response.status_code"),
        Some(reply.status.as_u16().to_string())
    );
    let refusal = spans
        .iter()
        .find(|s| attribute(s, "http.response.status_code").as_deref() == Some("405"))
        .expect("a refusal has its span too");
    assert_eq!(hex::encode(&refusal.trace_id), TRACE_ID);
    relay.shutdown().await;
}

/// A collector that is not there costs requests nothing: they are answered as usual and the
/// spans that could not be exported are counted.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_collector_drops_spans_and_delays_no_answer() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.fulfilment.enabled = false;
    config.telemetry.otlp.endpoint = Some(format!("http://127.0.0.1:{}", common::free_port()));
    config.telemetry.otlp.timeout = Duration::from_millis(500);
    let relay = TestRelay::start_ready(config).await;
    for _ in 0..3 {
        let reply = relay
            .post_with(sample("v1/lead_signup.json"), &[("traceparent", INCOMING)])
            .await;
        assert!(reply.status.is_success(), "{}", reply.text());
    }
    assert!(
        common::eventually(WAIT, async || relay
            .metric("fp_relay_spans_dropped_total")
            .await
            >= 3.0)
        .await,
        "dropped spans are counted"
    );
    relay.shutdown().await;
}
