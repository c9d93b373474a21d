//! Ingress limits without holes: credentials checked before bodies are read, a memory budget
//! for bodies, no h2c unless asked for, one deadline from the request head, and the hold cap
//! kept below the connection cap.

mod common;

use std::time::{Duration, Instant};

use common::{RelayProcess, Tansu, TestRelay};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "ingress-test-token-0123456789";

/// Sends a request head declaring `length` body bytes (and `extra` header lines), then `sent`
/// of them; returns the stream, still open.
async fn start_upload(
    addr: std::net::SocketAddr,
    length: usize,
    extra: &str,
    sent: usize,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /webhooks/firstpromoter HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n{extra}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b' '; sent]).await.unwrap();
    stream
}

/// The status of the first response on `stream`, read within `limit`.
async fn status_of(stream: &mut TcpStream, limit: Duration) -> Option<u16> {
    let mut buffer = vec![0u8; 1024];
    let read = tokio::time::timeout(limit, stream.read(&mut buffer))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(&buffer[..read])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 300 slow unauthenticated uploads declaring 900 kB each are refused from their head alone:
/// the relay's memory stays flat and a real request is still served.
#[tokio::test(flavor = "multi_thread")]
async fn slow_unauthenticated_uploads_are_refused_before_their_body_and_cost_no_memory() {
    let broker = Tansu::start();
    let tokens = format!("[\"{TOKEN}\"]");
    let relay = RelayProcess::start_with(&broker, &[("FP_RELAY_AUTH_TOKENS", &tokens)]).await;
    let before = rss_kib(relay.pid());
    let mut uploads = Vec::new();
    for n in 0..300 {
        let extra = if n % 2 == 0 {
            "authorization: Bearer wrong-token-000000000000\r\n"
        } else {
            ""
        };
        uploads.push(start_upload(relay.addr, 900_000, extra, 1024).await);
    }
    let mut refused = 0;
    for stream in &mut uploads {
        if status_of(stream, Duration::from_secs(5)).await == Some(401) {
            refused += 1;
        }
    }
    assert_eq!(refused, 300, "every upload answered 401 from its head");
    let during = rss_kib(relay.pid());
    // A token delivers v2 webhooks (auth.token_versions).
    let body = common::sample("v2/referral.created.json");
    let auth = format!("Bearer {TOKEN}");
    let reply = common::send(
        relay.addr,
        "POST",
        "/webhooks/firstpromoter",
        &[("authorization", &auth)],
        body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    drop(uploads);
    eprintln!("relay RSS: {before} KiB before, {during} KiB with 300 uploads open");
    assert!(
        during < before + 64 * 1024,
        "300 refused uploads must not be buffered: {before} -> {during} KiB"
    );
    let (status, _) = relay.terminate().await;
    assert_eq!(status.code(), Some(0));
}

/// Bodies being read share a memory budget, counted by the bytes that have arrived: past it,
/// a request is answered 503 with Retry-After; the others complete.
#[tokio::test(flavor = "multi_thread")]
async fn past_the_body_memory_budget_requests_get_503_and_the_rest_complete() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.http.max_body_bytes = 32 * 1024;
    config.http.max_buffered_body_bytes = 64 * 1024;
    config.http.request_timeout = Duration::from_secs(10);
    config.kafka.ack_timeout = Duration::from_secs(10);
    config.validate().unwrap();
    let relay = TestRelay::start_ready(config).await;
    let event = br#"{"event":{"id":7,"type":"lead_signup"},"data":{"id":7}}"#;
    let length = 30 * 1024;
    // Two 30 KiB bodies, all but their last bytes sent, hold 60 of the 64 KiB.
    let mut first = start_upload(relay.addr, length, "", length - event.len()).await;
    let mut second = start_upload(relay.addr, length, "", length - event.len()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = start_upload(relay.addr, length, "", 8 * 1024).await;
    assert_eq!(
        status_of(&mut third, Duration::from_secs(5)).await,
        Some(503),
        "the third does not fit"
    );
    for stream in [&mut first, &mut second] {
        stream.write_all(event).await.unwrap();
        assert_eq!(status_of(stream, Duration::from_secs(10)).await, Some(200));
    }
    assert_eq!(
        relay
            .metric(r#"fp_relay_rejected_total{reason="busy"}"#)
            .await,
        1.0
    );
    relay.shutdown().await;
}

/// Plain-text HTTP/2 (prior knowledge) is not spoken unless `http.h2c` is set, so streams
/// cannot bypass the connection cap and the head timeout.
#[tokio::test(flavor = "multi_thread")]
async fn plain_text_http2_is_refused_unless_h2c_is_configured() {
    let broker = Tansu::start();
    for h2c in [false, true] {
        let mut config = common::test_config(&broker.bootstrap());
        config.http.h2c = h2c;
        let relay = TestRelay::start_ready(config).await;
        let mut stream = TcpStream::connect(relay.addr).await.unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        let mut buffer = vec![0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap_or(0);
        // An HTTP/2 server answers the preface with a SETTINGS frame (type 4 at byte 3).
        let speaks_h2 = read >= 9 && buffer[3] == 4;
        assert_eq!(speaks_h2, h2c, "h2c = {h2c}: {:?}", &buffer[..read]);
        relay.shutdown().await;
    }
}

/// Everything after the head shares one deadline (`kafka.ack_timeout`): a body still arriving
/// when it passes is answered 408 then, not after `http.request_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_body_is_cut_off_at_the_request_deadline() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.http.request_timeout = Duration::from_secs(10);
    config.kafka.ack_timeout = Duration::from_secs(2);
    config.validate().unwrap();
    let relay = TestRelay::start_ready(config).await;
    let started = Instant::now();
    let mut stream = start_upload(relay.addr, 1000, "", 10).await;
    let status = status_of(&mut stream, Duration::from_secs(8)).await;
    let took = started.elapsed();
    assert_eq!(status, Some(408));
    assert!(
        took < Duration::from_secs(5),
        "cut off at the 2 s deadline, took {took:?}"
    );
    relay.shutdown().await;
}

#[test]
fn the_fulfilment_hold_cap_must_leave_connections_for_standard_events() {
    let mut config = fp_relay::config::Config::default();
    config.auth.insecure_no_auth = true;
    config.http.max_connections = 1000;
    config.fulfilment.max_in_flight = 600;
    let error = config.validate().unwrap_err().to_string();
    assert!(error.starts_with("fulfilment.max_in_flight"), "{error}");
    config.fulfilment.max_in_flight = 500;
    config.validate().unwrap();
}

/// Bodies whose signature can only be checked once read may fill half of the budget, never
/// the rest: while 176 connections present a signature, announce 900 kB and trickle, a v1
/// event whose path token was accepted from its head is published at once. (Reserving each
/// body's declared length used to let them take the whole budget; v1 never re-sends a 503.)
#[tokio::test(flavor = "multi_thread")]
async fn unverified_slow_bodies_cannot_starve_an_event_authenticated_from_its_head() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.auth.insecure_no_auth = false;
    config.auth.tokens.clear();
    config.auth.path_tokens = vec!["v1-path-token-0123456789".into()];
    config.auth.signature_secrets = vec!["v2-signing-secret-0123456789".into()];
    config.http.request_timeout = Duration::from_secs(10);
    config.kafka.ack_timeout = Duration::from_secs(10);
    config.validate().unwrap();
    let relay = TestRelay::start_ready(config).await;
    let signed = "x-webhook-signature: sha256=00\r\n";
    let mut flood = Vec::new();
    for _ in 0..176 {
        // 256 KiB each at once: together more than the unverified half of the 64 MiB.
        flood.push(start_upload(relay.addr, 900_000, signed, 256 * 1024).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let reply = common::send(
        relay.addr,
        "POST",
        "/webhooks/firstpromoter/v1-path-token-0123456789",
        &[],
        common::sample("v1/lead_signup.json"),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    eprintln!("path-token event during the flood: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "published in {took:?} during the flood"
    );
    assert!(
        relay
            .metric(r#"fp_relay_rejected_total{reason="busy"}"#)
            .await
            >= 1.0,
        "the flood itself was refused past its share"
    );
    drop(flood);
    relay.shutdown().await;
}

/// A client that writes its whole body before reading (Python's http.client, many SDKs)
/// reads the 413 instead of a connection reset: the relay drains the body as it answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_413_is_read_by_a_client_that_sends_its_whole_body_first() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(common::test_config(&broker.bootstrap())).await;
    let addr = relay.addr;
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let length = 3 * 1024 * 1024; // over the limit, under what is drained
        let head = format!(
            "POST /webhooks/firstpromoter HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes())?;
        // As a client on a real network does: the answer can come while it is still sending.
        for _ in 0..length / (64 * 1024) {
            stream.write_all(&[b' '; 64 * 1024])?;
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok::<_, std::io::Error>(answer)
    })
    .await
    .unwrap();
    let answer = answer.expect("the whole body was sent and the answer read, no reset");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""error":"too_large""#), "{answer}");
    relay.shutdown().await;
}
