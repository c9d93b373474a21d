//! Fulfilment verdicts remembered by every replica (`fulfilment.remember`), against tansu: a
//! fulfiller's late `fulfilled` is not asked about again, here, on another replica or after a
//! restart; checks of one reward that overlap share one request.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{consume, consume_all, eventually, produce, sample, Consumed, Tansu, TestRelay};
use fp_relay::config::Config;
use http::StatusCode;

const REQUESTS: &str = "firstpromoter.fulfilment_pending";
const REPLIES: &str = "firstpromoter.fulfilment_replies";
const WAIT: Duration = Duration::from_secs(15);

fn config(broker: &Tansu, timeout: Duration) -> Config {
    let mut config = common::test_config(&broker.bootstrap());
    config.fulfilment.timeout = timeout;
    config
}

/// The sample `fulfilment_pending` about reward (`data.id`) `reward`.
fn pending(reward: u64) -> Bytes {
    let body = String::from_utf8(sample("v1/fulfilment_pending.json").to_vec()).unwrap();
    body.replacen(r#""id": 771204"#, &format!(r#""id": {reward}"#), 1)
        .into()
}

/// Every fulfilment request on the request topic about `reward` (its key).
async fn requests_about(broker: &Tansu, reward: u64) -> Vec<Consumed> {
    consume_all(&broker.bootstrap(), REQUESTS, Duration::from_secs(2))
        .await
        .into_iter()
        .filter(|m| m.key.as_deref() == Some(reward.to_string().as_str()))
        .collect()
}

/// Waits for the first request about `reward` and returns its correlation id.
async fn correlation_id_of_first_request(broker: &Tansu, reward: u64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = consume(&broker.bootstrap(), REQUESTS, 1, WAIT, Duration::ZERO).await;
        if let Some(request) = found
            .iter()
            .find(|m| m.key.as_deref() == Some(reward.to_string().as_str()))
        {
            return request.header("fp-correlation-id").unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no request about {reward}");
    }
}

async fn answer(broker: &Tansu, correlation_id: &str, outcome: &str) {
    produce(
        &broker.bootstrap(),
        REPLIES,
        None,
        None,
        &[("fp-correlation-id", correlation_id)],
        &format!(r#"{{"outcome":"{outcome}","reason":"sent by the test"}}"#),
    )
    .await;
}

/// Waits until `relay` has read `n` verdict records from the topic (its own included).
async fn read_verdicts(relay: &TestRelay, n: f64) -> bool {
    eventually(WAIT, async || {
        relay
            .metric(r#"fp_relay_fulfilment_verdicts_read_total{result="ok"}"#)
            .await
            >= n
    })
    .await
}

/// A fulfiller that answers `fulfilled` 3 s after a 2 s hold: the hold ends 202 (the reward
/// stays pending), and the next check is answered 200 at once, without a new request, on the
/// same replica, on the other one, and on a replica started afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_fulfilled_is_remembered_by_every_replica_and_across_a_restart() {
    let broker = Tansu::start();
    let a = TestRelay::start_ready(config(&broker, Duration::from_secs(2))).await;
    let b = TestRelay::start_ready(config(&broker, Duration::from_secs(2))).await;
    let reward = 5001;
    let held = a.post_in_background(pending(reward));
    let correlation_id = correlation_id_of_first_request(&broker, reward).await;
    let first = held.await.unwrap();
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text());
    assert_eq!(first.json()["status"], "timeout");
    tokio::time::sleep(Duration::from_secs(1)).await;
    answer(&broker, &correlation_id, "fulfilled").await;
    assert!(
        a.wait_for_metric(
            r#"fp_relay_fulfilment_replies_ignored_total{reason="late"}"#,
            1.0,
            WAIT
        )
        .await
    );

    let started = Instant::now();
    let again = a.post(pending(reward)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(again.json()["status"], "remembered");
    assert!(started.elapsed() < Duration::from_secs(1), "at once");

    // The other replica: once it has read A's asking and verdict records.
    assert!(read_verdicts(&b, 2.0).await, "B reads A's verdict");
    let other = b.post(pending(reward)).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text());
    assert_eq!(other.json()["status"], "remembered");

    // A replica started afterwards: its window is read before it is ready.
    a.shutdown().await;
    let restarted = TestRelay::start_ready(config(&broker, Duration::from_secs(2))).await;
    let after = restarted.post(pending(reward)).await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.text());
    assert_eq!(after.json()["status"], "remembered");
    assert_eq!(
        restarted
            .metric(r#"fp_relay_fulfilment_outcomes_total{outcome="remembered"}"#)
            .await,
        1.0
    );

    // FirstPromoter asked four times; the fulfiller was asked once.
    assert_eq!(requests_about(&broker, reward).await.len(), 1);
    b.shutdown().await;
    restarted.shutdown().await;
}

/// Asks about `reward` on a relay with `settings`, the fulfiller answers `outcome` (the check
/// gets `status`), and the next check of the reward publishes a request again.
async fn asks_again(broker: &Tansu, settings: Config, reward: u64, outcome: &str, status: u16) {
    let a = TestRelay::start_ready(settings).await;
    let held = a.post_in_background(pending(reward));
    let correlation_id = correlation_id_of_first_request(broker, reward).await;
    answer(broker, &correlation_id, outcome).await;
    assert_eq!(held.await.unwrap().status.as_u16(), status);
    let again = a.post_in_background(pending(reward));
    assert!(
        eventually(WAIT, async || requests_about(broker, reward).await.len()
            == 2)
        .await,
        "asked again"
    );
    a.shutdown().await;
    assert_eq!(again.await.unwrap().json()["status"], "released");
}

/// A `pending` or `failed` verdict is remembered but asks again: only `fulfilled` ends the
/// asking.
#[tokio::test(flavor = "multi_thread")]
async fn a_pending_verdict_asks_again() {
    let broker = Tansu::start();
    let settings = config(&broker, Duration::from_secs(10));
    asks_again(&broker, settings, 5002, "pending", 202).await;
}

/// Two checks of one reward that overlap on one replica, and a third on another replica while
/// the first is held: one request, and all three get its verdict.
#[tokio::test(flavor = "multi_thread")]
async fn overlapping_checks_of_one_reward_share_one_request() {
    let broker = Tansu::start();
    let a = TestRelay::start_ready(config(&broker, Duration::from_secs(10))).await;
    let b = TestRelay::start_ready(config(&broker, Duration::from_secs(10))).await;
    let reward = 5003;
    let first = a.post_in_background(pending(reward));
    let correlation_id = correlation_id_of_first_request(&broker, reward).await;
    let second = a.post_in_background(pending(reward));
    // B learns that A is asking (A's record follows its request into Kafka).
    assert!(read_verdicts(&b, 1.0).await, "B reads A's asking record");
    let third = b.post_in_background(pending(reward));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished() && !third.is_finished(), "they wait");
    answer(&broker, &correlation_id, "fulfilled").await;
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(first.json()["status"], "fulfilled");
    for (name, joined) in [("same replica", second), ("other replica", third)] {
        let joined = joined.await.unwrap();
        assert_eq!(joined.status, StatusCode::OK, "{name}: {}", joined.text());
        assert_eq!(joined.json()["status"], "joined", "{name}");
    }
    assert_eq!(requests_about(&broker, reward).await.len(), 1);
    a.shutdown().await;
    b.shutdown().await;
}

/// `fulfilment.remember = "0s"`: every check asks, as before verdicts were remembered.
#[tokio::test(flavor = "multi_thread")]
async fn with_remember_off_every_check_asks() {
    let broker = Tansu::start();
    let mut settings = config(&broker, Duration::from_secs(10));
    settings.fulfilment.remember = Duration::ZERO;
    asks_again(&broker, settings, 5004, "fulfilled", 200).await;
}
