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
    let parent = record.header("traceparent").expect("traceparent on the record");
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
    let headers = [("traceparent", INCOMING), ("tracestate", "congo=t61rcWkgMzE")];
    let traced = relay
        .post_with(sample("v1/lead_signup.json"), &headers)
        .await;
    assert!(traced.status.is_success(), "{}", traced.text());
    let plain = relay.post(sample("v1/lead_signup.json")).await;
    assert!(plain.status.is_success());
    let garbled = relay
        .post_with(
            sample("v1/lead_signup.json"),
            &[("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")],
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
    assert_eq!(records[0].header("ce_tracestate"), Some("congo=t61rcWkgMzE"));
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
    let responder = std::process::Command::new(env!("CARGO_BIN_EXE_fp-relay"))
        .args(["respond", "--brokers", &broker.bootstrap(), "--outcome", "fulfilled"])
        .args(["-X", "log_level=3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut responder = scopeguard(responder);
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
    assert_eq!(trace_of_reply(&replies[0]), TRACE_ID, "respond continues the trace");
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

fn scopeguard(child: std::process::Child) -> Guard {
    Guard(child)
}
