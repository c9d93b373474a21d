//! Standard events against a real tansu broker: what lands in Kafka (topic, key, every header,
//! the exact bytes) and how the relay answers broken requests.

mod common;

use std::time::Duration;

use common::{consume, consume_all, sample, send, Tansu, TestRelay};
use http::StatusCode;

const WAIT: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_millis(500);

/// (sample, topic, key, event id, webhook version)
const CASES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "v1/lead_signup.json",
        "firstpromoter.lead_signup",
        "21381518",
        "22736304",
        "v1",
    ),
    (
        "v1/lead_becomes_referral.json",
        "firstpromoter.lead_becomes_referral",
        "21381518",
        "22736305",
        "v1",
    ),
    (
        "v1/new_customer.json",
        "firstpromoter.new_customer",
        "21381518",
        "22736306",
        "v1",
    ),
    (
        "v1/lead_cancelled.json",
        "firstpromoter.lead_cancelled",
        "21381518",
        "22736307",
        "v1",
    ),
    (
        "v1/promoter_signed_up.json",
        "firstpromoter.promoter_signed_up",
        "3920164",
        "22736308",
        "v1",
    ),
    (
        "v1/promoter_accepted.json",
        "firstpromoter.promoter_accepted",
        "3920164",
        "22736309",
        "v1",
    ),
    (
        "v1/reward_created.json",
        "firstpromoter.reward_created",
        "5512901",
        "22736310",
        "v1",
    ),
    (
        "v2/promoter.created.json",
        "firstpromoter.promoter.created",
        "3920164",
        "1b6e8f0a-4f0e-4a53-9d5a-2f9f5d0c1a01",
        "v2",
    ),
    (
        "v2/referral.converted.json",
        "firstpromoter.referral.converted",
        "21381518",
        "1b6e8f0a-4f0e-4a53-9d5a-2f9f5d0c1a03",
        "v2",
    ),
    (
        "v2/commission.updated.json",
        "firstpromoter.commission.updated",
        "5512901",
        "1b6e8f0a-4f0e-4a53-9d5a-2f9f5d0c1a05",
        "v2",
    ),
    (
        "v2/payout.completed.json",
        "firstpromoter.payout.completed",
        "88121",
        "1b6e8f0a-4f0e-4a53-9d5a-2f9f5d0c1a06",
        "v2",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn every_event_type_lands_on_its_topic_with_key_headers_and_exact_bytes() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    // Byte-for-byte needs nothing to redact; redaction has its own test below.
    config.redact.fields.clear();
    let relay = TestRelay::start_ready(config).await;
    for (file, topic, key, event_id, version) in CASES {
        let body = sample(file);
        let event_type = topic.strip_prefix("firstpromoter.").unwrap();
        let headers: Vec<(&str, &str)> = if *version == "v2" {
            vec![("x-event-id", event_id), ("x-event-type", event_type)]
        } else {
            vec![]
        };
        let reply = relay.post_with(body.clone(), &headers).await;
        assert_eq!(reply.status, StatusCode::OK, "{file}: {}", reply.text());
        let answer = reply.json();
        assert_eq!(answer["status"], "published");
        assert_eq!(answer["topic"], *topic);

        let messages = consume(&broker.bootstrap(), topic, 1, WAIT, SETTLE).await;
        assert_eq!(messages.len(), 1, "{file}: exactly one message on {topic}");
        let m = &messages[0];
        assert_eq!(
            m.value,
            body.to_vec(),
            "{file}: value is the posted body byte for byte"
        );
        assert_eq!(m.key.as_deref(), Some(*key), "{file}: key");
        assert_eq!(answer["partition"], m.partition);
        assert_eq!(answer["offset"], m.offset);
        assert_eq!(m.header("fp-event-id"), Some(*event_id));
        assert_eq!(m.header("fp-event-type"), Some(event_type));
        assert_eq!(m.header("fp-webhook-version"), Some(*version));
        assert_eq!(m.header("content-type"), Some("application/json"));
        assert_eq!(m.header("ce_specversion"), Some("1.0"));
        assert_eq!(m.header("ce_id"), Some(*event_id));
        assert_eq!(m.header("ce_source"), Some("https://firstpromoter.com"));
        assert_eq!(
            m.header("ce_type"),
            Some(format!("com.firstpromoter.{event_type}").as_str())
        );
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let occurred = json["event"]["created_at"]
            .as_str()
            .or(json["timestamp"].as_str())
            .unwrap();
        assert_eq!(m.header("ce_time"), Some(occurred));
        let received = m.header("fp-received-at").expect("fp-received-at");
        humantime::parse_rfc3339(received).expect("fp-received-at is RFC 3339");
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_types_string_ids_and_missing_fields_are_routed_not_rejected() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(common::test_config(&broker.bootstrap())).await;
    let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
        // An undocumented v1 type, string ids.
        (
            r#"{"event":{"id":"evt-9","type":"lead_subscribed"},"data":{"id":"L-1"}}"#,
            "firstpromoter.lead_subscribed",
            Some("L-1"),
            Some("evt-9"),
        ),
        // Only the type: no id, no data, no timestamp.
        (
            r#"{"event":{"type":"brand_new_event"}}"#,
            "firstpromoter.brand_new_event",
            None,
            None,
        ),
        // v2 with nulls everywhere and a type that needs sanitising.
        (
            r#"{"event_id":null,"event_type":"thing created!","entity_id":null,"data":null}"#,
            "firstpromoter.thing_created_",
            None,
            None,
        ),
        // v2 test send.
        (
            r#"{"event_id":"t-1","event_type":"promoter.updated","entity_id":12,"data":{"test":true}}"#,
            "firstpromoter.promoter.updated",
            Some("12"),
            Some("t-1"),
        ),
    ];
    for (body, topic, key, event_id) in cases {
        let reply = relay.post(body.to_string()).await;
        assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.text());
        let messages = consume(&broker.bootstrap(), topic, 1, WAIT, SETTLE).await;
        assert_eq!(messages.len(), 1, "{body}");
        assert_eq!(messages[0].value, body.as_bytes());
        assert_eq!(messages[0].key.as_deref(), *key, "{body}");
        assert_eq!(messages[0].header("fp-event-id"), *event_id, "{body}");
        assert!(
            messages[0].header("ce_id").is_some_and(|id| !id.is_empty()),
            "ce_id always present"
        );
        assert_eq!(
            messages[0].header("ce_time"),
            None,
            "no timestamp, no ce_time"
        );
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_bodies_get_400_and_are_dead_lettered_with_a_reason() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(common::test_config(&broker.bootstrap())).await;
    let cases: &[(&[u8], &str)] = &[
        (b"{not json", "bad_json"),
        (b"[1,2,3]", "not_an_object"),
        (br#"{"event":{"id":1},"data":{}}"#, "missing_event_type"),
        (&[0xff, 0xfe, 0x00], "bad_json"),
    ];
    for (body, reason) in cases {
        let reply = relay.post(body.to_vec()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let answer = reply.json();
        assert_eq!(answer["error"], *reason);
        assert_eq!(answer["dead_lettered"], true);
    }
    let dead = consume(
        &broker.bootstrap(),
        "firstpromoter.dead_letter",
        cases.len(),
        WAIT,
        SETTLE,
    )
    .await;
    assert_eq!(dead.len(), cases.len());
    // JSON-like bodies with nothing to redact are kept byte for byte; one the secret scan
    // cannot read (not starting with { or [) only as its digest and size.
    for (body, reason) in &cases[..3] {
        let found = dead
            .iter()
            .find(|m| m.value == *body)
            .expect("raw body dead-lettered");
        assert_eq!(found.header("fp-dead-letter-reason"), Some(*reason));
        assert!(found.header("fp-received-at").is_some());
    }
    let digest = dead
        .iter()
        .find(|m| m.header("fp-dead-letter-body") == Some("sha256"))
        .expect("the binary body kept as a digest");
    let note: serde_json::Value = serde_json::from_slice(&digest.value).unwrap();
    assert_eq!(note["bytes"], 3);
    assert_eq!(digest.header("fp-dead-letter-reason"), Some("bad_json"));
    assert_eq!(
        relay.metric("fp_relay_dead_lettered_total").await,
        cases.len() as f64
    );
    assert_eq!(
        relay
            .metric(r#"fp_relay_rejected_total{reason="bad_json"}"#)
            .await,
        2.0
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_wrong_method_and_wrong_path_are_refused_and_publish_nothing() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.http.max_body_bytes = 1024;
    let relay = TestRelay::start_ready(config).await;

    let big = format!(
        r#"{{"event":{{"type":"lead_signup"}},"pad":"{}"}}"#,
        "x".repeat(2048)
    );
    let reply = relay.post(big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["error"], "too_large");

    let body = sample("v1/lead_signup.json");
    let reply = send(relay.addr, "GET", &relay.path, &[], body.clone()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "POST");
    let reply = send(relay.addr, "PUT", &relay.path, &[], body.clone()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let reply = send(relay.addr, "POST", "/elsewhere", &[], body.clone()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"], "not_found");

    for topic in ["firstpromoter.lead_signup", "firstpromoter.dead_letter"] {
        let messages = consume_all(&broker.bootstrap(), topic, Duration::from_secs(1)).await;
        assert!(
            messages.is_empty(),
            "{topic} must stay empty, got {}",
            messages.len()
        );
    }
    assert_eq!(
        relay
            .metric(r#"fp_relay_rejected_total{reason="too_large"}"#)
            .await,
        1.0
    );
    assert_eq!(
        relay
            .metric(r#"fp_relay_rejected_total{reason="method_not_allowed"}"#)
            .await,
        2.0
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_and_key_overrides_from_config_are_honoured() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config
        .kafka
        .topics
        .insert("reward_created".into(), "affiliate.rewards".into());
    config
        .kafka
        .keys
        .insert("reward_created".into(), "/data/promoter/id".into());
    let relay = TestRelay::start_ready(config).await;
    let reply = relay.post(sample("v1/reward_created.json")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let messages = consume(&broker.bootstrap(), "affiliate.rewards", 1, WAIT, SETTLE).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].key.as_deref(), Some("3920164"));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_answer_on_the_admin_listener_only() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(common::test_config(&broker.bootstrap())).await;
    let health = common::get(relay.admin, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = common::get(relay.admin, "/readyz").await;
    assert_eq!(ready.json()["checks"]["kafka_producer"], "ok");
    assert_eq!(ready.json()["checks"]["reply_consumer"], "ok");
    assert_eq!(
        common::get(relay.addr, "/metrics").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        common::get(relay.addr, "/readyz").await.status,
        StatusCode::NOT_FOUND
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn promoter_secrets_are_redacted_by_default_and_marked_in_a_header() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(common::test_config(&broker.bootstrap())).await;
    let body = sample("v1/promoter_signed_up.json");
    assert_eq!(relay.post(body.clone()).await.status, StatusCode::OK);
    let messages = consume(
        &broker.bootstrap(),
        "firstpromoter.promoter_signed_up",
        1,
        WAIT,
        SETTLE,
    )
    .await;
    assert_eq!(messages.len(), 1);
    let published = String::from_utf8(messages[0].value.clone()).unwrap();
    for secret in ["hjsmLQwMounBWxeqQS2cMXYp8epADJmB", "Xk29-tmp-pass"] {
        assert!(!published.contains(secret), "{secret} reached Kafka");
    }
    let value: serde_json::Value = serde_json::from_str(&published).unwrap();
    let original: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["data"]["promoter"]["auth_token"], "[redacted]");
    assert_eq!(value["data"]["promoter"]["temp_password"], "[redacted]");
    assert_eq!(
        value["data"]["promoter"]["email"], original["data"]["promoter"]["email"],
        "the rest is intact"
    );
    assert_eq!(messages[0].header("fp-redacted"), Some("2"));
    // A body with nothing to redact goes through byte for byte, without the header.
    let clean = r#"{"event":{"id":5,"type":"lead_cancelled"},  "data":{"id":9}}"#;
    assert_eq!(relay.post(clean).await.status, StatusCode::OK);
    let messages = consume(
        &broker.bootstrap(),
        "firstpromoter.lead_cancelled",
        1,
        WAIT,
        SETTLE,
    )
    .await;
    assert_eq!(messages[0].value, clean.as_bytes());
    assert_eq!(messages[0].header("fp-redacted"), None);
    relay.shutdown().await;
}

/// The field list an operator writes to keep promoter data out of Kafka names an object and
/// fields inside it. The relay binary publishes every v1 sample with the promoter object masked
/// as a whole and nothing inside it left, and a secret nested in a secret with the default list
/// too. (The byte splice used to panic on both: the connection closed with no answer.)
#[tokio::test(flavor = "multi_thread")]
async fn an_operators_nested_field_list_masks_the_outer_object_and_never_drops_an_event() {
    let broker = Tansu::start();
    for (fields, bodies) in [
        (
            r#"["promoter","auth_token","temp_password"]"#,
            ["lead_signup", "new_customer", "reward_created", "promoter_accepted"]
                .map(|name| sample(&format!("v1/{name}.json"))),
        ),
        (
            r#"["auth_token","temp_password"]"#,
            [1, 2, 3, 4].map(|n| {
                bytes::Bytes::from(format!(
                    r#"{{"event":{{"id":{n},"type":"nested_{n}"}},"data":{{"auth_token":{{"auth_token":"a{n}","temp_password":{{"auth_token":"b"}}}}}}}}"#
                ))
            }),
        ),
    ] {
        let relay = common::RelayProcess::start_with(
            &broker,
            &[
                ("FP_RELAY_REDACT_FIELDS", fields),
                ("FP_RELAY_FULFILMENT_ENABLED", "false"),
            ],
        )
        .await;
        for body in bodies {
            let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let topic = format!("firstpromoter.{}", event["event"]["type"].as_str().unwrap());
            assert_eq!(relay.post(body.clone()).await, StatusCode::OK, "{topic}");
            let published = consume(&broker.bootstrap(), &topic, 1, Duration::from_secs(10), Duration::ZERO).await;
            let payload: serde_json::Value = serde_json::from_slice(&published.last().expect(&topic).value).unwrap();
            let text = payload.to_string();
            if fields.contains("promoter") {
                assert_eq!(payload["data"]["promoter"], "[redacted]", "{topic}: {text}");
                assert!(!text.contains("promoter@example.com"), "{topic}: {text}");
            } else {
                assert_eq!(
                    payload["data"],
                    serde_json::json!({"auth_token": "[redacted]"}),
                    "{topic}: the outer secret is masked whole"
                );
            }
            assert!(!text.contains("hjsmLQwMounBWxeqQS2cMXYp8epADJmB"), "{topic}: a token survived: {text}");
        }
        let (status, _) = relay.terminate().await;
        assert!(status.success());
    }
}

/// The readiness probe asks about the dead-letter topic alone: a topic the relay wrote to and
/// an operator then deleted is not asked about every probe interval, so a broker with
/// auto-create on does not bring it back (librdkafka's "no topic" metadata request names every
/// topic the client has used).
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_topic_is_not_brought_back_by_the_readiness_probe() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::ClientConfig;
    const TOPIC: &str = "firstpromoter.lead_signup";
    let broker = Tansu::start();
    let config = common::test_config(&broker.bootstrap());
    let probe_interval = config.kafka.probe_interval;
    let relay = TestRelay::start_ready(config).await;
    assert_eq!(
        relay.post(sample("v1/lead_signup.json")).await.status,
        StatusCode::OK
    );
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", broker.bootstrap())
        .set("log_level", "3");
    let admin: AdminClient<DefaultClientContext> = client.create().unwrap();
    for result in admin
        .delete_topics(&[TOPIC], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
    tokio::time::sleep(probe_interval * 10).await;
    let exists = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client.set("group.id", "probe-check").create().unwrap();
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .unwrap();
        metadata.topics().iter().any(|t| t.name() == TOPIC)
    })
    .await
    .unwrap();
    assert!(
        !exists,
        "ten probe intervals after its deletion the topic is still gone"
    );
    relay.shutdown().await;
}

/// Load-aware batching: one request at a time never takes the lingering producer; 300 at once
/// mostly do. Either way each event lands exactly once and its answer names its own record.
#[tokio::test(flavor = "multi_thread")]
async fn writes_batch_only_under_load_and_each_answer_names_its_own_record() {
    use common::spool::{event, TOPIC};
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.kafka.batch_above_in_flight = 4;
    let relay = TestRelay::start_ready(config).await;
    let writes = |producer: &'static str| {
        let admin = relay.admin;
        async move {
            let series = format!("fp_relay_kafka_writes_total{{producer=\"{producer}\"}}");
            common::metric(admin, &series).await
        }
    };

    for id in 1..=20 {
        assert_eq!(relay.post(event(id, 0)).await.status, StatusCode::OK);
    }
    assert_eq!(writes("immediate").await, 20.0);
    assert_eq!(
        writes("batching").await,
        0.0,
        "no batching at one request at a time"
    );

    let posts: Vec<_> = (21..=320)
        .map(|id| (id, relay.post_in_background(event(id, 0))))
        .collect();
    let mut answered = std::collections::HashMap::new();
    for (id, post) in posts {
        let reply = post.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{id}: {}", reply.text());
        let answer = reply.json();
        let place = (
            answer["partition"].as_i64().unwrap(),
            answer["offset"].as_i64().unwrap(),
        );
        assert!(
            answered.insert(place, id).is_none(),
            "two answers name {place:?}"
        );
    }
    let batched = writes("batching").await;
    assert!(batched > 0.0, "300 at once took the batching producer");
    assert_eq!(writes("immediate").await + batched, 320.0);
    // Load gone, no wait again: every write in flight was counted back out.
    for id in 321..=330 {
        assert_eq!(relay.post(event(id, 0)).await.status, StatusCode::OK);
    }
    assert_eq!(writes("batching").await, batched, "one at a time again");

    let messages = consume(&broker.bootstrap(), TOPIC, 330, WAIT, SETTLE).await;
    assert_eq!(messages.len(), 330, "every event once");
    for m in &messages {
        let id: u64 = m.header("fp-event-id").unwrap().parse().unwrap();
        assert_eq!(m.value, event(id, 0).to_vec());
        if (21..=320).contains(&id) {
            assert_eq!(answered.get(&(i64::from(m.partition), m.offset)), Some(&id));
        }
    }
    relay.shutdown().await;
}
