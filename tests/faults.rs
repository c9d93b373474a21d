//! Faults: the broker goes away, comes back empty (which breaks the idempotent producer for
//! good), or refuses writes. The relay must never claim what Kafka did not acknowledge, must
//! answer within ack_timeout, and must recover without a restart.

mod common;

use std::time::{Duration, Instant};

use common::{consume, consume_all, eventually, sample, Tansu, TestRelay};
use http::StatusCode;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

#[tokio::test(flavor = "multi_thread")]
async fn broker_down_gives_503_within_ack_timeout_and_recovery_needs_no_restart() {
    let mut broker = Tansu::start();
    let port = broker.port;
    // Fulfilment stays on (the default): tansu forgets every topic when it restarts, which
    // used to crash librdkafka's reply consumer (vendor/README.md); tests/recovery.rs covers
    // that recovery in depth.
    let config = common::test_config(&broker.bootstrap());
    let ack_timeout = config.kafka.ack_timeout;
    let relay = TestRelay::start_ready(config).await;
    let body = sample("v1/lead_signup.json");
    assert_eq!(relay.post(body.clone()).await.status, StatusCode::OK);

    broker.stop();
    let started = Instant::now();
    let reply = relay.post(body.clone()).await;
    let took = started.elapsed();
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(reply.headers["retry-after"], "5");
    assert_eq!(reply.json()["error"], "kafka_unavailable");
    // Generous slack for a loaded CI machine; the point is that it is bounded, not how fast.
    assert!(
        took <= ack_timeout + Duration::from_secs(2),
        "answered after {took:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), async || common::get(
            relay.admin,
            "/readyz"
        )
        .await
        .status
            == StatusCode::SERVICE_UNAVAILABLE)
        .await,
        "readiness must fail while the broker is gone"
    );

    // Back on the same address with empty in-memory storage: the old idempotent producer id is
    // unknown to it, which librdkafka treats as fatal. The relay must replace its producer.
    let broker = Tansu::start_on(port);
    relay.wait_ready(Duration::from_secs(20)).await;
    let mut accepted = 0;
    let recovered = eventually(Duration::from_secs(30), async || {
        let reply = relay.post(body.clone()).await;
        if reply.status == StatusCode::OK {
            accepted += 1;
            true
        } else {
            assert_eq!(
                reply.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                reply.text()
            );
            false
        }
    })
    .await;
    assert!(
        recovered,
        "posts succeed again without restarting the relay"
    );
    assert!(relay.metric("fp_relay_kafka_producer_rebuilds_total").await >= 1.0);
    // Everything answered 200 after the restart is in the new broker; nothing else claimed.
    let messages = consume(
        &broker.bootstrap(),
        "firstpromoter.lead_signup",
        accepted,
        Duration::from_secs(10),
        Duration::from_millis(500),
    )
    .await;
    assert!(
        messages.len() >= accepted,
        "{} in Kafka, {accepted} answered 200",
        messages.len()
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_broker_times_out_to_503_and_thawing_restores_service() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.kafka.ack_timeout = Duration::from_secs(2);
    let relay = TestRelay::start_ready(config).await;
    let body = sample("v1/new_customer.json");
    assert_eq!(relay.post(body.clone()).await.status, StatusCode::OK);

    broker.freeze();
    let started = Instant::now();
    let reply = relay.post(body.clone()).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "bounded by ack_timeout, took {:?}",
        started.elapsed()
    );
    broker.thaw();

    assert!(
        eventually(Duration::from_secs(20), async || relay
            .post(body.clone())
            .await
            .status
            == StatusCode::OK)
        .await
    );
    let messages = consume_all(
        &broker.bootstrap(),
        "firstpromoter.new_customer",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        messages.len() >= 2,
        "the first and the post-thaw events are in Kafka"
    );
    assert!(
        relay
            .metric(r#"fp_relay_kafka_produce_total{result="timeout"}"#)
            .await
            >= 1.0
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_that_even_the_dead_letter_topic_gets_are_503_and_the_next_write_succeeds() {
    let cluster = MockCluster::new(1).unwrap();
    cluster
        .create_topic("firstpromoter.lead_signup", 1, 1)
        .unwrap();
    let mut config = common::test_config(&cluster.bootstrap_servers());
    config.fulfilment.enabled = false;
    config.kafka.ack_timeout = Duration::from_secs(2);
    let relay = TestRelay::start_ready(config).await;
    let body = sample("v1/lead_signup.json");

    // A permanent refusal on every produce attempt for a while: the event is refused, and so
    // is its copy for the dead-letter topic, so nothing is in Kafka and the answer is 503.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 50],
    );
    let reply = relay.post(body.clone()).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert!(
        relay
            .metric(r#"fp_relay_kafka_produce_total{result="refused"}"#)
            .await
            >= 1.0
    );

    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    assert!(
        eventually(Duration::from_secs(10), async || relay
            .post(body.clone())
            .await
            .status
            == StatusCode::OK)
        .await
    );
    relay.shutdown().await;
    drop(cluster);
}

/// One permanent refusal (here: topic authorisation) with and without the spool: the event is
/// kept on the dead-letter topic with where it was going and why, answered 202, and the next
/// event goes to its topic as usual (nothing waits behind it in the spool).
#[tokio::test(flavor = "multi_thread")]
async fn an_event_kafka_refuses_for_good_is_dead_lettered_and_answered_202() {
    for spool in [false, true] {
        let cluster = MockCluster::new(1).unwrap();
        for topic in ["firstpromoter.lead_signup", "firstpromoter.dead_letter"] {
            cluster.create_topic(topic, 1, 1).unwrap();
        }
        let mut config = common::test_config(&cluster.bootstrap_servers());
        config.fulfilment.enabled = false;
        let dir = std::env::temp_dir().join(format!("fp-relay-refused-{}", uuid::Uuid::new_v4()));
        config.spool.enabled = spool;
        config.spool.dir = dir.clone();
        let relay = TestRelay::start_ready(config).await;
        let body = sample("v1/lead_signup.json");
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
        );
        let reply = relay.post(body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "spool {spool}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["status"], "dead_lettered");
        assert_eq!(reply.json()["topic"], "firstpromoter.dead_letter");
        let dead = consume(
            &cluster.bootstrap_servers(),
            "firstpromoter.dead_letter",
            1,
            Duration::from_secs(10),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(dead.len(), 1, "spool {spool}");
        assert_eq!(
            dead[0].header("fp-original-topic"),
            Some("firstpromoter.lead_signup")
        );
        assert_eq!(
            dead[0].header("fp-dead-letter-reason"),
            Some("kafka_refused: TopicAuthorizationFailed (Broker: Topic authorization failed)")
        );
        assert_eq!(dead[0].header("fp-event-id"), Some("22736304"));
        assert_eq!(relay.metric("fp_relay_dead_lettered_total").await, 1.0);

        let next = relay.post(body.clone()).await;
        assert_eq!(
            next.status,
            StatusCode::OK,
            "spool {spool}: {}",
            next.text()
        );
        assert_eq!(next.json()["topic"], "firstpromoter.lead_signup");
        if spool {
            assert_eq!(relay.metric("fp_relay_spool_records").await, 0.0);
        }
        relay.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
        drop(cluster);
    }
}

/// A spooled event that neither its topic nor the dead-letter topic will take (here: both
/// refuse on authorisation for a while) does not block replay forever: it is kept in the
/// spool as quarantined with the reason, counted, and the events behind it go on to Kafka.
#[tokio::test(flavor = "multi_thread")]
async fn a_spooled_event_every_topic_refuses_is_quarantined_and_replay_goes_on() {
    let cluster = MockCluster::new(1).unwrap();
    for topic in ["firstpromoter.lead_signup", "firstpromoter.dead_letter"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let mut config = common::test_config(&cluster.bootstrap_servers());
    config.fulfilment.enabled = false;
    let dir = std::env::temp_dir().join(format!("fp-relay-quarantine-{}", uuid::Uuid::new_v4()));
    config.spool.enabled = true;
    config.spool.dir = dir.clone();
    let relay = TestRelay::start_ready(config).await;
    let body = sample("v1/lead_signup.json");
    // The direct write, its dead letter, replay's write and replay's dead letter: four refusals.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 4],
    );
    let reply = relay.post(body.clone()).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    assert_eq!(reply.json()["status"], "spooled");
    assert!(
        relay
            .wait_for_metric(
                "fp_relay_spool_quarantined_total",
                1.0,
                Duration::from_secs(15)
            )
            .await,
        "the doubly refused event was quarantined"
    );
    assert!(
        relay
            .wait_for_metric("fp_relay_spool_records", 0.0, Duration::from_secs(5))
            .await
    );
    let db = rusqlite::Connection::open(dir.join("spool.db")).unwrap();
    let kept: Vec<(String, Vec<u8>, String)> = db
        .prepare("SELECT topic, payload, quarantine FROM records WHERE quarantine IS NOT NULL")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let [(topic, payload, reason)] = kept.as_slice() else {
        panic!("one quarantined record: {kept:?}");
    };
    assert_eq!(topic, "firstpromoter.lead_signup");
    let payload = String::from_utf8_lossy(payload);
    assert!(
        payload.contains("22736304") && payload.contains(r#""auth_token": "[redacted]""#),
        "the record as it would have been published"
    );
    assert_eq!(
        reason,
        "kafka_refused: TopicAuthorizationFailed (Broker: Topic authorization failed); \
         dead letter: kafka_refused: TopicAuthorizationFailed (Broker: Topic authorization failed)"
    );
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    assert!(
        eventually(Duration::from_secs(10), async || relay
            .post(body.clone())
            .await
            .status
            == StatusCode::OK)
        .await,
        "the events behind it are published"
    );
    assert!(
        relay
            .wait_for_metric("fp_relay_spool_records", 0.0, Duration::from_secs(10))
            .await
    );
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
    drop(cluster);
}

/// The reply consumer checks its topic beside the receive loop, not in it: while one broker is
/// away, each check waits seconds for that broker's watermark, and replies on the partitions
/// of the broker still up must keep arriving (they used to wait for the check, and the held
/// request timed out into "pending" although its reply had come).
#[tokio::test(flavor = "multi_thread")]
async fn replies_on_healthy_partitions_arrive_while_the_reply_topic_is_checked() {
    const REQUESTS: &str = "firstpromoter.fulfilment_pending";
    const REPLIES: &str = "firstpromoter.fulfilment_replies";
    let cluster = MockCluster::new(2).unwrap();
    cluster.create_topic(REQUESTS, 1, 1).unwrap();
    cluster.partition_leader(REQUESTS, 0, Some(1)).unwrap();
    cluster.create_topic(REPLIES, 2, 1).unwrap();
    cluster.partition_leader(REPLIES, 0, Some(1)).unwrap();
    cluster.partition_leader(REPLIES, 1, Some(2)).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let mut config = common::test_config(&bootstrap);
    config.fulfilment.timeout = Duration::from_secs(4);
    config.fulfilment.create_reply_topic = false;
    config.kafka.probe_interval = Duration::from_millis(300);
    let relay = TestRelay::start_ready(config).await;
    // Round 0 runs before the faults, so that the publisher knows the request topic (a slow
    // broker would otherwise slow the publish itself, which is not what this is about).
    for round in 0..4usize {
        if round == 1 {
            // Partition 1's leader answers slowly and fetches fail for a moment: the consumer
            // reports an error, and every check now waits seconds for partition 1's watermark.
            cluster
                .broker_round_trip_time(2, Duration::from_secs(3))
                .unwrap();
            cluster.request_errors(
                RDKafkaApiKey::Fetch,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART; 4],
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let started = Instant::now();
        let held = relay.post_in_background(sample("v1/fulfilment_pending.json"));
        let requests = consume(
            &bootstrap,
            REQUESTS,
            round + 1,
            Duration::from_secs(10),
            Duration::ZERO,
        )
        .await;
        let correlation_id = requests
            .last()
            .and_then(|r| r.header("fp-correlation-id"))
            .expect("a held request")
            .to_owned();
        common::produce(
            &bootstrap,
            REPLIES,
            Some(0),
            None,
            &[("fp-correlation-id", &correlation_id)],
            r#"{"outcome":"fulfilled"}"#,
        )
        .await;
        let answer = held.await.unwrap();
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "round {round}: the reply on the healthy partition was delivered ({:?}): {}",
            started.elapsed(),
            answer.text()
        );
    }
    cluster.broker_round_trip_time(2, Duration::ZERO).unwrap();
    relay.shutdown().await;
    drop(cluster);
}

/// A topic that does not exist (broker auto-create off: the mock answers its metadata with
/// UNKNOWN_TOPIC_OR_PART) is known as soon as the metadata says so: the event is dead-lettered
/// with the reason within ack_timeout, every time, and the producer is never replaced for it
/// (librdkafka alone reports it only after topic.metadata.propagation.max.ms, 30 s).
#[tokio::test(flavor = "multi_thread")]
async fn an_event_for_a_topic_that_does_not_exist_is_dead_lettered_at_once() {
    let cluster = MockCluster::new(1).unwrap();
    cluster
        .create_topic("firstpromoter.dead_letter", 1, 1)
        .unwrap();
    cluster
        .topic_error(
            "firstpromoter.lead_signup",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        )
        .unwrap();
    let mut config = common::test_config(&cluster.bootstrap_servers());
    config.fulfilment.enabled = false;
    let ack_timeout = config.kafka.ack_timeout;
    let relay = TestRelay::start_ready(config).await;
    for n in 0..4 {
        let started = Instant::now();
        let reply = relay.post(sample("v1/lead_signup.json")).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{n}: {}", reply.text());
        assert_eq!(reply.json()["status"], "dead_lettered");
        assert!(
            started.elapsed() < ack_timeout,
            "{n}: {:?}",
            started.elapsed()
        );
    }
    let dead = consume(
        &cluster.bootstrap_servers(),
        "firstpromoter.dead_letter",
        4,
        Duration::from_secs(10),
        Duration::ZERO,
    )
    .await;
    assert_eq!(dead.len(), 4);
    assert_eq!(
        dead[0].header("fp-dead-letter-reason"),
        Some("kafka_refused: UnknownTopicOrPartition (Broker: Unknown topic or partition)")
    );
    assert_eq!(
        dead[0].header("fp-original-topic"),
        Some("firstpromoter.lead_signup")
    );
    assert_eq!(
        relay.metric("fp_relay_kafka_producer_rebuilds_total").await,
        0.0
    );
    relay.shutdown().await;
    drop(cluster);
}

/// Found by the chaos run (seed 12, broker restarted empty three times): the restarted broker
/// gave a relay's producer id to another producer and answered DUPLICATE_SEQUENCE_NUMBER for a
/// record it never wrote. librdkafka reports such a batch delivered with offset -1, and the
/// relay answered 200 for an event Kafka did not have. Now a delivery without an offset is not
/// an acknowledgement: 503 without the spool; with it, 202 spooled and then delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_without_an_offset_is_never_acknowledged_chaos_seed_12() {
    for spool in [false, true] {
        let cluster = MockCluster::new(1).unwrap();
        cluster
            .create_topic("firstpromoter.lead_signup", 1, 1)
            .unwrap();
        let mut config = common::test_config(&cluster.bootstrap_servers());
        config.fulfilment.enabled = false;
        let dir = std::env::temp_dir().join(format!("fp-relay-dupseq-{}", uuid::Uuid::new_v4()));
        config.spool.enabled = spool;
        config.spool.dir = dir.clone();
        let relay = TestRelay::start_ready(config).await;
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_DUPLICATE_SEQUENCE_NUMBER],
        );
        let reply = relay.post(sample("v1/lead_signup.json")).await;
        let expected = if spool {
            StatusCode::ACCEPTED
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        assert_eq!(reply.status, expected, "spool {spool}: {}", reply.text());
        assert_ne!(reply.json()["status"], "published", "spool {spool}");
        let written = consume(
            &cluster.bootstrap_servers(),
            "firstpromoter.lead_signup",
            1,
            Duration::from_secs(if spool { 15 } else { 2 }),
            Duration::from_millis(500),
        )
        .await;
        assert_eq!(
            written.len(),
            usize::from(spool),
            "spool {spool}: the spooled copy is delivered, nothing else"
        );
        relay.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
