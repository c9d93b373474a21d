//! fulfilment_pending against a real tansu broker: the request is published with correlation
//! headers, held, and answered with the status the downstream reply (or its absence) decides.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{consume, eventually, produce, sample, Consumed, Tansu, TestRelay};
use fp_relay::config::Config;
use http::StatusCode;

const REQUESTS: &str = "firstpromoter.fulfilment_pending";
const REPLIES: &str = "firstpromoter.fulfilment_replies";
const WAIT: Duration = Duration::from_secs(10);

fn config(broker: &Tansu, timeout: Duration) -> Config {
    let mut config = common::test_config(&broker.bootstrap());
    config.fulfilment.timeout = timeout;
    config
}

/// Waits for the `n`-th fulfilment request to appear on the request topic and returns them all.
async fn requests(broker: &Tansu, n: usize) -> Vec<Consumed> {
    let found = consume(&broker.bootstrap(), REQUESTS, n, WAIT, Duration::ZERO).await;
    assert!(
        found.len() >= n,
        "expected {n} fulfilment requests, found {}",
        found.len()
    );
    found
}

/// The sample `fulfilment_pending` about reward (`data.id`) `reward` instead of 771204: checks
/// of one reward share one request, so tests that need several requests ask about several.
fn pending(reward: u64) -> bytes::Bytes {
    let body = String::from_utf8(sample("v1/fulfilment_pending.json").to_vec()).unwrap();
    let body = body.replacen(r#""id": 771204"#, &format!(r#""id": {reward}"#), 1);
    assert!(body.contains(&format!(r#""id": {reward}"#)));
    body.into()
}

async fn reply(broker: &Tansu, correlation_id: &str, value: &str) {
    produce(
        &broker.bootstrap(),
        REPLIES,
        None,
        Some("771204"),
        &[("fp-correlation-id", correlation_id)],
        value,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_outcome_becomes_the_status_firstpromoter_acts_on() {
    let broker = Tansu::start();
    let mut config = config(&broker, Duration::from_secs(10));
    config.redact.fields.clear(); // so the request's value can be compared byte for byte
    let relay = TestRelay::start_ready(config).await;
    let cases = [
        (r#"{"outcome":"fulfilled"}"#, StatusCode::OK, "fulfilled"),
        (
            r#"{"outcome":"pending","reason":"stock arrives Monday"}"#,
            StatusCode::ACCEPTED,
            "pending",
        ),
        (
            r#"{"outcome":"failed","reason":"account closed"}"#,
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed",
        ),
    ];
    for (n, (value, status, outcome)) in cases.into_iter().enumerate() {
        let started = tokio::time::Instant::now();
        let reward = 771_204 + n as u64;
        let post = relay.post_in_background(pending(reward));
        // Keyed by reward, the requests spread over partitions: this one is found by its key.
        let request = requests(&broker, n + 1)
            .await
            .into_iter()
            .find(|m| m.key == Some(reward.to_string()))
            .expect("the request about this reward");
        assert!(
            request.value == pending(reward),
            "the value is the posted body"
        );
        assert_eq!(request.key, Some(reward.to_string()));
        assert_eq!(request.header("fp-event-type"), Some("fulfilment_pending"));
        assert_eq!(request.header("fp-reply-topic"), Some(REPLIES));
        let deadline =
            humantime::parse_rfc3339(request.header("fp-deadline").expect("fp-deadline")).unwrap();
        let left = deadline
            .duration_since(std::time::SystemTime::now())
            .expect("deadline in the future");
        assert!(
            left <= Duration::from_secs(10),
            "deadline is at most the timeout away: {left:?}"
        );
        let correlation_id = request
            .header("fp-correlation-id")
            .expect("fp-correlation-id")
            .to_owned();
        uuid::Uuid::parse_str(&correlation_id).expect("correlation id is a UUID");

        reply(&broker, &correlation_id, value).await;
        let response = post.await.unwrap();
        assert_eq!(response.status, status, "{value}: {}", response.text());
        let body = response.json();
        assert_eq!(body["status"], outcome);
        assert_eq!(body["correlation_id"], correlation_id.as_str());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answered by the reply, not the timeout"
        );
        assert_eq!(
            relay
                .metric(&format!(
                    r#"fp_relay_fulfilment_outcomes_total{{outcome="{outcome}"}}"#
                ))
                .await,
            1.0
        );
    }
    assert_eq!(relay.metric("fp_relay_fulfilment_in_flight").await, 0.0);
    assert_eq!(
        relay
            .metric("fp_relay_fulfilment_reply_duration_seconds_count")
            .await,
        3.0
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_reply_in_time_answers_202_and_a_later_reply_is_counted_late() {
    let broker = Tansu::start();
    let timeout = Duration::from_secs(2);
    let relay = TestRelay::start_ready(config(&broker, timeout)).await;
    let started = Instant::now();
    let response = relay.post(sample("v1/fulfilment_pending.json")).await;
    let took = started.elapsed();
    assert_eq!(
        response.status,
        StatusCode::ACCEPTED,
        "a non-200 2xx keeps the reward pending"
    );
    assert_eq!(response.json()["status"], "timeout");
    assert!(
        took >= timeout - Duration::from_millis(100) && took < timeout + Duration::from_secs(2),
        "took {took:?}"
    );
    assert_eq!(
        relay
            .metric(r#"fp_relay_fulfilment_outcomes_total{outcome="timeout"}"#)
            .await,
        1.0
    );

    let correlation_id = requests(&broker, 1).await[0]
        .header("fp-correlation-id")
        .unwrap()
        .to_owned();
    reply(&broker, &correlation_id, r#"{"outcome":"fulfilled"}"#).await;
    assert!(
        eventually(WAIT, async || relay
            .metric(r#"fp_relay_fulfilment_replies_ignored_total{reason="late"}"#)
            .await
            == 1.0)
        .await,
        "the late reply is counted"
    );
    // And it disturbed nothing: the next request is served normally.
    assert_eq!(
        relay.post(sample("v1/lead_signup.json")).await.status,
        StatusCode::OK
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_unmatched_replies_are_counted_and_harmless() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(config(&broker, Duration::from_secs(10))).await;
    let post = relay.post_in_background(sample("v1/fulfilment_pending.json"));
    let correlation_id = requests(&broker, 1).await[0]
        .header("fp-correlation-id")
        .unwrap()
        .to_owned();
    // Not JSON; JSON with an unknown outcome; no correlation header; an id nobody holds.
    reply(&broker, &correlation_id, "not json at all").await;
    reply(&broker, &correlation_id, r#"{"outcome":"maybe"}"#).await;
    produce(
        &broker.bootstrap(),
        REPLIES,
        None,
        None,
        &[],
        r#"{"outcome":"fulfilled"}"#,
    )
    .await;
    reply(
        &broker,
        &uuid::Uuid::new_v4().to_string(),
        r#"{"outcome":"fulfilled"}"#,
    )
    .await;
    assert!(
        eventually(WAIT, async || {
            relay
                .metric(r#"fp_relay_fulfilment_replies_ignored_total{reason="malformed"}"#)
                .await
                == 3.0
                && relay
                    .metric(r#"fp_relay_fulfilment_replies_ignored_total{reason="unmatched"}"#)
                    .await
                    == 1.0
        })
        .await
    );
    assert_eq!(
        relay.metric("fp_relay_fulfilment_in_flight").await,
        1.0,
        "still held"
    );
    reply(&broker, &correlation_id, r#"{"outcome":"fulfilled"}"#).await;
    assert_eq!(post.await.unwrap().status, StatusCode::OK);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_sharing_the_reply_topic_each_get_their_own_answers_from_any_partition() {
    let broker = Tansu::start();
    // The request topic exists before traffic, as in any deployment. Without this both
    // replicas' first writes race to auto-create it, and a write the broker refuses meanwhile
    // is (rightly) answered 503, leaving one request where the test expects two: the flake
    // seen once in 8 full runs ("expected 2 fulfilment requests, found 1").
    common::create_topic(&broker.bootstrap(), REQUESTS, 4).await;
    let a = TestRelay::start_ready(config(&broker, Duration::from_secs(10))).await;
    let b = TestRelay::start_ready(config(&broker, Duration::from_secs(10))).await;
    let post = |relay: &TestRelay| relay.post_in_background(sample("v1/fulfilment_pending.json"));
    let (post_a, post_b) = (post(&a), post(&b));
    let held = consume(&broker.bootstrap(), REQUESTS, 2, WAIT, Duration::ZERO).await;
    if held.len() < 2 {
        let (ra, rb) = (post_a.await.unwrap(), post_b.await.unwrap());
        panic!(
            "expected 2 fulfilment requests, found {}; the posts were answered {} {} and {} {}",
            held.len(),
            ra.status,
            ra.text(),
            rb.status,
            rb.text()
        );
    }
    let ids: Vec<String> = held
        .iter()
        .map(|m| m.header("fp-correlation-id").unwrap().to_owned())
        .collect();
    assert_ne!(ids[0], ids[1]);
    // Answer each on a different partition; which relay holds which id is not known here,
    // so answer one "fulfilled" and the other "failed" and check each relay got one of them.
    produce(
        &broker.bootstrap(),
        REPLIES,
        Some(3),
        None,
        &[("fp-correlation-id", &ids[0])],
        r#"{"outcome":"fulfilled"}"#,
    )
    .await;
    produce(
        &broker.bootstrap(),
        REPLIES,
        Some(0),
        None,
        &[("fp-correlation-id", &ids[1])],
        r#"{"outcome":"failed"}"#,
    )
    .await;
    let (ra, rb) = (post_a.await.unwrap(), post_b.await.unwrap());
    let mut statuses = [ra.status.as_u16(), rb.status.as_u16()];
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 500],
        "each replica answered with its own reply"
    );
    let answered: Vec<String> = [ra.json(), rb.json()]
        .iter()
        .map(|b| b["correlation_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(answered.contains(&ids[0]) && answered.contains(&ids[1]));
    // Each replica also saw the other's reply and ignored it as unmatched.
    for relay in [&a, &b] {
        assert!(
            eventually(WAIT, async || relay
                .metric(r#"fp_relay_fulfilment_replies_ignored_total{reason="unmatched"}"#)
                .await
                == 1.0)
            .await
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_frees_its_entry_at_once() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(config(&broker, Duration::from_secs(10))).await;
    let body = sample("v1/fulfilment_pending.json");
    let mut stream = std::net::TcpStream::connect(relay.addr).unwrap();
    write!(
        stream,
        "POST {} HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        relay.path,
        body.len()
    )
    .unwrap();
    stream.write_all(&body).unwrap();
    assert!(
        eventually(WAIT, async || relay
            .metric("fp_relay_fulfilment_in_flight")
            .await
            == 1.0)
        .await
    );
    let hung_up = Instant::now();
    drop(stream);
    assert!(
        eventually(WAIT, async || relay
            .metric("fp_relay_fulfilment_in_flight")
            .await
            == 0.0)
        .await
    );
    assert!(
        hung_up.elapsed() < Duration::from_secs(5),
        "freed long before the 10s timeout"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_max_in_flight_requests_are_published_and_answered_pending_at_once() {
    let broker = Tansu::start();
    let mut config = config(&broker, Duration::from_secs(10));
    config.fulfilment.max_in_flight = 1;
    let relay = TestRelay::start_ready(config).await;
    let held = relay.post_in_background(pending(1));
    assert!(
        eventually(WAIT, async || relay
            .metric("fp_relay_fulfilment_in_flight")
            .await
            == 1.0)
        .await
    );
    let started = Instant::now();
    let overflow = relay.post(pending(2)).await;
    assert_eq!(overflow.status, StatusCode::ACCEPTED);
    assert_eq!(overflow.json()["status"], "overflow");
    assert!(started.elapsed() < Duration::from_secs(5), "not held");
    let published = requests(&broker, 2).await;
    assert_eq!(
        published
            .iter()
            .filter(|m| m.header("fp-correlation-id").is_none())
            .count(),
        1,
        "the overflow one carries no correlation id"
    );
    assert_eq!(
        relay
            .metric(r#"fp_relay_fulfilment_outcomes_total{outcome="overflow"}"#)
            .await,
        1.0
    );
    relay.shutdown().await;
    assert_eq!(held.await.unwrap().json()["status"], "released");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_answers_every_held_request_with_the_pending_status() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(config(&broker, Duration::from_secs(10))).await;
    let posts: Vec<_> = (0..3)
        .map(|n| relay.post_in_background(pending(n)))
        .collect();
    assert!(
        eventually(WAIT, async || relay
            .metric("fp_relay_fulfilment_in_flight")
            .await
            == 3.0)
        .await
    );
    let started = Instant::now();
    relay.shutdown().await;
    for post in posts {
        let response = post.await.unwrap();
        assert_eq!(response.status, StatusCode::ACCEPTED);
        assert_eq!(response.json()["status"], "released");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "released, not timed out"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_cannot_be_published_gets_503_so_firstpromoter_retries() {
    let broker = Tansu::start();
    let mut config = config(&broker, Duration::from_secs(5));
    config.kafka.ack_timeout = Duration::from_secs(2);
    let relay = TestRelay::start_ready(config).await;
    broker.freeze();
    let response = relay.post(sample("v1/fulfilment_pending.json")).await;
    broker.thaw();
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        relay
            .metric(r#"fp_relay_fulfilment_outcomes_total{outcome="publish_error"}"#)
            .await,
        1.0
    );
    assert_eq!(relay.metric("fp_relay_fulfilment_in_flight").await, 0.0);
    relay.shutdown().await;
}

/// The reference responder (`fp-relay respond`, in process) answering every request
/// `fulfilled` with `reason`, until the token is cancelled.
fn responder(
    broker: &Tansu,
    reason: Option<&str>,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<(), fp_relay::tools::ToolError>>,
) {
    use fp_relay::fulfilment::correlator::Outcome;
    use fp_relay::tools::respond::{run, ResponderOptions};
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(run(
        ResponderOptions {
            kafka: fp_relay::tools::KafkaArgs::at(&broker.bootstrap(), &[("log_level", "3")]),
            topic: REQUESTS.into(),
            default_reply_topic: REPLIES.into(),
            outcome: Outcome::Fulfilled,
            reason: reason.map(str::to_owned),
            delay: Duration::ZERO,
            group: format!("responder-{}", uuid::Uuid::new_v4()),
        },
        stop.clone().cancelled_owned(),
    ));
    (stop, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reference_responder_completes_the_round_trip() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(config(&broker, Duration::from_secs(10))).await;
    let (stop, responder) = responder(&broker, Some("granted"));
    let response = relay.post(sample("v1/fulfilment_pending.json")).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(response.json()["reason"], "granted");
    stop.cancel();
    responder.await.unwrap().unwrap();
    relay.shutdown().await;
}

/// `fp-deadline` names the instant the hold ends, measured from the request's head like the
/// hold itself: a client whose body arrives a second late does not push it a second later
/// (a fulfiller working to the header used to reply after the hold had already ended).
#[tokio::test(flavor = "multi_thread")]
async fn fp_deadline_is_when_the_hold_ends_even_for_a_slow_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(config(&broker, Duration::from_secs(3))).await;
    let body = sample("v1/fulfilment_pending.json");
    let mut stream = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: relay\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        relay.path,
        body.len()
    );
    let head_sent = std::time::SystemTime::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stream.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    let answered = std::time::SystemTime::now();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 202"),
        "no reply: pending; {answer}"
    );
    let request = requests(&broker, 1).await.pop().unwrap();
    let deadline = humantime::parse_rfc3339(request.header("fp-deadline").unwrap()).unwrap();
    let expected = head_sent + Duration::from_secs(3);
    let off = |a: std::time::SystemTime, b: std::time::SystemTime| {
        a.duration_since(b).unwrap_or_else(|e| e.duration())
    };
    assert!(
        off(deadline, expected) < Duration::from_millis(300),
        "fp-deadline {deadline:?} is three seconds after the head ({expected:?})"
    );
    assert!(
        deadline <= answered,
        "the hold ended ({answered:?}) no earlier than fp-deadline ({deadline:?})"
    );
    relay.shutdown().await;
}

/// A replica that starts while Kafka is unreachable is ready with the spool on (standard
/// events are spooled, and v1 never re-sends them), although its reply consumer cannot be
/// positioned; meanwhile `fulfilment_pending` is answered pending without being published (no
/// reply could reach its hold, and a fulfiller must not act on a reward FirstPromoter is told
/// is still pending), so FirstPromoter asks again at its next fulfilment check.
#[tokio::test(flavor = "multi_thread")]
async fn starting_during_an_outage_is_ready_and_publishes_no_fulfilment_request() {
    let broker = Tansu::start();
    broker.freeze();
    let dir = std::env::temp_dir().join(format!("fp-relay-outage-{}", uuid::Uuid::new_v4()));
    let mut config = config(&broker, Duration::from_secs(3));
    config.spool.enabled = true;
    config.spool.dir = dir.clone();
    config.spool.handoff_after = Duration::from_millis(300);
    let relay = TestRelay::start(config).await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            common::get(relay.admin, "/readyz").await.status == StatusCode::OK
        })
        .await,
        "ready: the spool takes standard events"
    );
    let ready = common::get(relay.admin, "/readyz").await.json();
    assert_ne!(ready["checks"]["reply_consumer"], "ok", "{ready}");
    let standard = relay.post(sample("v1/lead_signup.json")).await;
    assert_eq!(standard.status, StatusCode::ACCEPTED, "{}", standard.text());
    assert_eq!(standard.json()["status"], "spooled");
    let fulfilment = relay.post(sample("v1/fulfilment_pending.json")).await;
    assert_eq!(
        fulfilment.status,
        StatusCode::ACCEPTED,
        "{}",
        fulfilment.text()
    );
    assert_eq!(fulfilment.json()["status"], "unavailable");
    assert_eq!(
        relay.metric("fp_relay_fulfilment_reply_path_ready").await,
        0.0
    );
    assert_eq!(
        relay
            .metric(r#"fp_relay_fulfilment_outcomes_total{outcome="unavailable"}"#)
            .await,
        1.0
    );
    broker.thaw();
    let standard = consume(
        &broker.bootstrap(),
        "firstpromoter.lead_signup",
        1,
        WAIT,
        Duration::ZERO,
    )
    .await;
    assert_eq!(standard.len(), 1, "the spooled event reached Kafka");
    assert!(
        relay
            .wait_for_metric("fp_relay_fulfilment_reply_path_ready", 1.0, WAIT)
            .await,
        "the reply path comes back with Kafka"
    );
    let published = consume(
        &broker.bootstrap(),
        REQUESTS,
        1,
        Duration::from_secs(2),
        Duration::ZERO,
    )
    .await;
    assert!(
        published.is_empty(),
        "the unanswerable request was not published"
    );
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// After a quiet minute (no request held or released for longer than a late reply is
/// remembered) the reply consumer rests, fetching nothing; the next fulfilment_pending wakes
/// it and is answered by its fulfiller as usual.
#[tokio::test(flavor = "multi_thread")]
async fn the_reply_consumer_rests_when_quiet_and_wakes_for_the_next_request() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(config(&broker, Duration::from_secs(10))).await;
    let resting = "fp_relay_fulfilment_reply_consumer_resting";
    assert_eq!(relay.metric(resting).await, 0.0);
    assert!(
        relay
            .wait_for_metric(resting, 1.0, Duration::from_secs(75))
            .await,
        "the reply consumer never rested"
    );
    let (stop, responder) = responder(&broker, None);
    let response = relay.post(sample("v1/fulfilment_pending.json")).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(
        relay.metric(resting).await,
        0.0,
        "awake while a request is held"
    );
    stop.cancel();
    responder.await.unwrap().unwrap();
    relay.shutdown().await;
}
