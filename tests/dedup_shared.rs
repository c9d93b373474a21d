//! Duplicate suppression shared through Kafka (`dedup.topic`), against tansu with relay
//! processes: a retry on another replica, the same id after a restart, the dedup topic
//! unavailable, and a redrive of an id a relay published meanwhile.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{consume_all, create_topic, get, metric, send, RelayProcess, Tansu};
use http::StatusCode;

const DEDUP_TOPIC: &str = "fp.dedup";
const TOPIC: &str = "firstpromoter.referral.created";

/// A v2 `referral.created` with event id `id` (in the body, as FirstPromoter sends it).
fn event(id: &str) -> Bytes {
    format!(
        r#"{{"event_type":"referral.created","event_id":"{id}","timestamp":"2026-12-02T10:00:00Z","entity_id":7,"data":{{"id":7}}}}"#
    )
    .into()
}

fn env_pairs(topic: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FP_RELAY_DEDUP_ENABLED", "true".to_owned()),
        ("FP_RELAY_DEDUP_TOPIC", topic.to_owned()),
        ("FP_RELAY_FULFILMENT_ENABLED", "false".to_owned()),
    ]
}

async fn start(broker: &Tansu, topic: &str) -> RelayProcess {
    start_with(broker, topic, &[]).await
}

/// [`start`] with more settings.
async fn start_with(broker: &Tansu, topic: &str, extra: &[(&str, &str)]) -> RelayProcess {
    let env = env_pairs(topic);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(extra);
    RelayProcess::start_with(broker, &env).await
}

/// Posts `body` to `relay`; the answer's `status` field.
async fn post(relay: &RelayProcess, body: Bytes) -> String {
    let reply = send(relay.addr, "POST", "/webhooks/firstpromoter", &[], body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Records of event `id` on the event topic.
async fn copies(broker: &Tansu, id: &str) -> usize {
    consume_all(&broker.bootstrap(), TOPIC, Duration::from_secs(2))
        .await
        .iter()
        .filter(|m| m.header("fp-event-id") == Some(id))
        .count()
}

/// Replica A publishes; replica B, once it has read A's mark, answers the retry `duplicate`;
/// B killed and started again loads the mark before it is ready and answers `duplicate` too.
/// One record on the topic. Prints the consistency window measured (A's answer to B's read).
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_on_another_replica_or_after_a_restart_is_one_record() {
    let broker = Tansu::start();
    create_topic(&broker.bootstrap(), DEDUP_TOPIC, 3).await;
    let a = start(&broker, DEDUP_TOPIC).await;
    let b = start(&broker, DEDUP_TOPIC).await;
    let readyz = get(b.admin, "/readyz").await.json();
    assert_eq!(
        readyz["checks"]["dedup_shared"], "ok (partitions 0-2 followed)",
        "{readyz}"
    );
    assert_eq!(metric(b.admin, "fp_relay_dedup_shared_ready").await, 1.0);

    let mut windows = Vec::new();
    for n in 0..5 {
        let id = format!("evt-{n}");
        let read_before = metric(b.admin, "fp_relay_dedup_marks_read_total").await;
        assert_eq!(post(&a, event(&id)).await, "published");
        let answered = Instant::now();
        while metric(b.admin, "fp_relay_dedup_marks_read_total").await <= read_before {
            assert!(
                answered.elapsed() < Duration::from_secs(10),
                "B never read A's mark"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        windows.push(answered.elapsed());
        assert_eq!(post(&b, event(&id)).await, "duplicate", "{id} on B");
        assert_eq!(post(&a, event(&id)).await, "duplicate", "{id} on A again");
    }
    windows.sort();
    eprintln!(
        "consistency window (A's answer to B's read of the mark, 5 events): median {:?}, max {:?}",
        windows[2], windows[4]
    );
    assert_eq!(metric(b.admin, "fp_relay_duplicates_total").await, 5.0);
    assert_eq!(
        metric(a.admin, "fp_relay_dedup_marks_total{result=\"ok\"}").await,
        5.0
    );

    b.kill();
    let started = Instant::now();
    let b = start(&broker, DEDUP_TOPIC).await;
    let ready_after = started.elapsed();
    assert_eq!(
        post(&b, event("evt-3")).await,
        "duplicate",
        "after a restart"
    );
    assert_eq!(post(&b, event("evt-new")).await, "published");
    eprintln!("a restarted replica was ready with the window loaded after {ready_after:?}");
    let (_, lines) = b.terminate().await;
    let loaded = lines
        .iter()
        .find(|line| {
            line["message"] == "loaded the dedup marks of the window; following every replica's"
        })
        .expect("the load is logged");
    assert!(loaded["items"].as_u64().unwrap() >= 5, "{loaded}");

    for n in 0..5 {
        assert_eq!(copies(&broker, &format!("evt-{n}")).await, 1, "evt-{n}");
    }
    a.terminate().await;
}

/// A dedup topic Kafka refuses (its name is not a valid topic): events are still accepted,
/// dedup is per process, and the relay says so in a metric, in `/readyz` (still ready) and
/// in failed marks.
#[tokio::test(flavor = "multi_thread")]
async fn an_unavailable_dedup_topic_degrades_to_per_process_and_says_so() {
    let broker = Tansu::start();
    let unusable = "not a topic!";
    // tansu creates a topic under any name; Kafka refuses this one, created or written to.
    let no_create = [("FP_RELAY_DEDUP_CREATE_TOPIC", "false")];
    let a = start_with(&broker, unusable, &no_create).await;
    let b = start_with(&broker, unusable, &no_create).await;
    let readyz = get(a.admin, "/readyz").await;
    assert_eq!(readyz.status, StatusCode::OK, "{}", readyz.text());
    let detail = readyz.json()["checks"]["dedup_shared"].to_string();
    assert!(detail.contains("unavailable"), "{detail}");
    assert_eq!(metric(a.admin, "fp_relay_dedup_shared_ready").await, 0.0);

    assert_eq!(post(&a, event("x-1")).await, "published");
    assert_eq!(
        post(&a, event("x-1")).await,
        "duplicate",
        "per process still"
    );
    assert_eq!(post(&b, event("x-1")).await, "published", "B cannot know");
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            metric(a.admin, "fp_relay_dedup_marks_total{result=\"failed\"}").await >= 1.0
        })
        .await,
        "the failed mark is counted"
    );
    assert_eq!(copies(&broker, "x-1").await, 2);
    a.terminate().await;
    b.terminate().await;
}

/// A dead letter whose event a relay published meanwhile (FirstPromoter's retry went
/// through): `redrive` with the relay's configuration leaves it where it is and says so; a
/// dead letter of another id is put back and marked, so a second relay answers it duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn redrive_of_an_id_already_published_writes_nothing() {
    use fp_relay::tools::redrive::{self, RedriveOptions};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let broker = Tansu::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, DEDUP_TOPIC, 1).await;
    let relay = start(&broker, DEDUP_TOPIC).await;
    assert_eq!(post(&relay, event("seen")).await, "published");

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    for id in ["seen", "unseen"] {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "fp-dead-letter-reason",
                value: Some("kafka_refused: TopicAuthorizationFailed"),
            })
            .insert(Header {
                key: "fp-original-topic",
                value: Some(TOPIC),
            })
            .insert(Header {
                key: "fp-event-id",
                value: Some(id),
            })
            .insert(Header {
                key: "fp-webhook-version",
                value: Some("v2"),
            })
            .insert(Header {
                key: "fp-event-type",
                value: Some("referral.created"),
            });
        let body = event(id);
        let record = FutureRecord::to("firstpromoter.dead_letter")
            .key(id)
            .payload(&body[..])
            .headers(headers);
        producer.send(record, Duration::from_secs(5)).await.unwrap();
    }

    let file = std::env::temp_dir().join(format!("fp-relay-dedup-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &file,
        format!("[kafka]\nbrokers = \"{bootstrap}\"\n[auth]\ninsecure_no_auth = true\n[dedup]\nenabled = true\ntopic = \"{DEDUP_TOPIC}\"\n"),
    )
    .unwrap();
    let options = RedriveOptions {
        kafka: fp_relay::tools::KafkaArgs {
            config: Some(file.clone()),
            brokers: None,
            properties: Vec::new(),
        },
        dead_letter_topic: "firstpromoter.dead_letter".to_owned(),
        reasons: vec!["kafka_refused".to_owned()],
        topics: Vec::new(),
        since: None,
        until: None,
        dry_run: false,
        group: None,
        idle_exit: Duration::from_secs(2),
    };
    let mut out = Vec::new();
    let summary = redrive::run_until(&options, &mut out, std::future::pending())
        .await
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!((summary.moved, summary.already_published), (1, 1), "{out}");
    assert!(out.contains("1 published already (dedup topic)"), "{out}");
    assert_eq!(copies(&broker, "seen").await, 1);
    assert_eq!(copies(&broker, "unseen").await, 1);

    // The put-back was marked: a relay that starts now knows it.
    let other = start(&broker, DEDUP_TOPIC).await;
    assert_eq!(post(&other, event("unseen")).await, "duplicate");
    std::fs::remove_file(&file).unwrap();
    other.terminate().await;
    relay.terminate().await;
}

/// 100,000 marks written before a replica starts (a busy day's window): it reads every one
/// before `/readyz` says ready, and the first of them is a duplicate at once. Prints how long
/// the load took.
#[tokio::test(flavor = "multi_thread")]
async fn a_starting_replica_loads_the_whole_window_before_it_is_ready() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    const MARKS: usize = 100_000;
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, DEDUP_TOPIC, 3).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    // As a relay under load writes them: many keys to a mark record (100 here).
    let mut pending = Vec::new();
    // The keys of the events `event` makes (their payload is published as it is).
    let keys: Vec<fp_relay::dedup::Key> = (0..MARKS)
        .map(|n| {
            let id = format!("bulk-{n}");
            fp_relay::dedup::key_of_event("v2", &id, "referral.created", &event(&id))
        })
        .collect();
    for chunk in keys.chunks(100) {
        let value = fp_relay::dedup::shared::encode_marks(chunk);
        let record = FutureRecord::<(), _>::to(DEDUP_TOPIC).payload(&value);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for delivery in pending {
        delivery.await.unwrap().unwrap();
    }
    let started = Instant::now();
    let relay = start(&broker, DEDUP_TOPIC).await;
    let ready_after = started.elapsed();
    let read = metric(relay.admin, "fp_relay_dedup_marks_read_total").await;
    eprintln!("{MARKS} marks: ready after {ready_after:?}, {read} read by then");
    assert!(
        read >= MARKS as f64,
        "ready before the window was read: {read}"
    );
    assert_eq!(post(&relay, event("bulk-0")).await, "duplicate");
    assert_eq!(
        post(&relay, event(&format!("bulk-{}", MARKS - 1))).await,
        "duplicate"
    );
    assert_eq!(post(&relay, event("bulk-new")).await, "published");
    relay.terminate().await;
}

/// Four events spooled by a relay whose broker froze, the relay killed; meanwhile another relay
/// published two of them (FirstPromoter's retries). `spool drain` with the dedup topic writes
/// only the other two and says so: each event once on its topic.
#[tokio::test(flavor = "multi_thread")]
async fn spool_drain_skips_what_a_replica_published_meanwhile() {
    use common::spool::{
        event as spooled_event, post_at_once, spool_dir, spooling_env, TOPIC as LEADS,
    };
    let broker = Tansu::start();
    create_topic(&broker.bootstrap(), DEDUP_TOPIC, 1).await;
    create_topic(&broker.bootstrap(), LEADS, 1).await;
    let dir = spool_dir();
    let dir_text = dir.display().to_string();
    let mut env: Vec<(&str, &str)> = spooling_env(&dir_text);
    let dedup = env_pairs(DEDUP_TOPIC);
    env.extend(dedup.iter().map(|(k, v)| (*k, v.as_str())));
    let spooling = RelayProcess::start_with(&broker, &env).await;
    broker.freeze();
    for (id, status) in post_at_once(spooling.addr, 1..=4, 0).await {
        assert_eq!(status, StatusCode::ACCEPTED, "event {id} spooled");
    }
    spooling.kill();
    broker.thaw();

    let other = start(&broker, DEDUP_TOPIC).await;
    for id in [1, 2] {
        let reply = send(
            other.addr,
            "POST",
            "/webhooks/firstpromoter",
            &[],
            spooled_event(id, 0),
        )
        .await;
        assert_eq!(reply.json()["status"], "published", "{}", reply.text());
    }
    other.terminate().await;

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fp-relay"));
    command
        .args([
            "spool",
            "drain",
            "--dir",
            &dir_text,
            "--brokers",
            &broker.bootstrap(),
        ])
        .args(["--timeout", "60s"])
        .env_remove("FP_RELAY_CONFIG")
        .envs(dedup.iter().map(|(k, v)| (*k, v.as_str())));
    let drained = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&drained.stderr).into_owned();
    assert!(drained.status.success(), "{said}");
    assert!(
        said.contains(
            "4 record(s) in Kafka (2 of them published by a relay already, not written again)"
        ),
        "{said}"
    );
    let mut counts = std::collections::HashMap::new();
    for message in consume_all(&broker.bootstrap(), LEADS, Duration::from_secs(3)).await {
        *counts
            .entry(message.header("fp-event-id").unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "each once: {counts:?}");
}

/// Under steady traffic (a mark every few milliseconds) a starting replica still finishes its
/// load and says ready long before `dedup.load_timeout`: fetches never come back empty then.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_starting_under_steady_traffic_loads_without_waiting_for_silence() {
    let broker = Tansu::start();
    create_topic(&broker.bootstrap(), DEDUP_TOPIC, 2).await;
    let a = std::sync::Arc::new(start(&broker, DEDUP_TOPIC).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (a, stop) = (a.clone(), stop.clone());
        async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                post(&a, event(&format!("steady-{n}"))).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut env = env_pairs(DEDUP_TOPIC);
    env.push(("FP_RELAY_DEDUP_LOAD_TIMEOUT", "60s".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = Instant::now();
    let b = RelayProcess::launch(&broker.bootstrap(), &env, &[]);
    let ready = b.wait_ready(Duration::from_secs(20)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let posted = traffic.await.unwrap();
    let ready = ready.expect("ready long before the 60 s load timeout");
    eprintln!(
        "ready under steady traffic ({posted} events posted meanwhile) after {:?}",
        started.elapsed()
    );
    assert!(ready < Duration::from_secs(20));
    let readyz = get(b.admin, "/readyz").await.json();
    assert!(
        readyz["checks"]["dedup_shared"]
            .as_str()
            .is_some_and(|detail| detail.starts_with("ok (partition")),
        "loaded, not timed out: {readyz}"
    );
    assert_eq!(post(&b, event("steady-1")).await, "duplicate");
    b.terminate().await;
    std::sync::Arc::try_unwrap(a)
        .ok()
        .unwrap()
        .terminate()
        .await;
}

/// Marks on the dedup topic: every key of every mark record.
async fn marks_on(broker: &Tansu, topic: &str) -> Vec<fp_relay::dedup::Key> {
    consume_all(&broker.bootstrap(), topic, Duration::from_secs(2))
        .await
        .iter()
        .flat_map(|m| fp_relay::dedup::shared::parse_marks(&m.value).unwrap_or_default())
        .collect()
}

/// The relay creates a missing dedup topic (with a retention of at least the window), says so,
/// and follows every partition of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_dedup_topic_is_created_and_every_partition_followed() {
    let broker = Tansu::start();
    let a = start(&broker, DEDUP_TOPIC).await;
    let readyz = get(a.admin, "/readyz").await.json();
    assert_eq!(
        readyz["checks"]["dedup_shared"], "ok (partitions 0-3 followed)",
        "{readyz}"
    );
    assert_eq!(post(&a, event("made-1")).await, "published");
    assert_eq!(post(&a, event("made-1")).await, "duplicate");
    let (_, lines) = a.terminate().await;
    let created = lines
        .iter()
        .find(|line| line["message"] == "created a topic of the relay's own (it was missing)")
        .expect("the creation is logged");
    assert_eq!(created["topic"], DEDUP_TOPIC, "{created}");
    assert!(
        created["settings"]
            .as_str()
            .unwrap_or_default()
            .contains("retention.ms"),
        "{created}"
    );
}

/// Replicas started before the dedup topic exists, not allowed to create it: the first mark
/// auto-creates it, and the other replica follows it within a second or so, so FirstPromoter's
/// retry 2 s later on that replica is a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn a_dedup_topic_that_appears_after_start_is_followed_within_seconds() {
    let broker = Tansu::start();
    let no_create = [("FP_RELAY_DEDUP_CREATE_TOPIC", "false")];
    let a = start_with(&broker, DEDUP_TOPIC, &no_create).await;
    let b = start_with(&broker, DEDUP_TOPIC, &no_create).await;
    let detail = get(b.admin, "/readyz").await.json()["checks"]["dedup_shared"].to_string();
    assert!(detail.contains("unavailable"), "no topic yet: {detail}");
    for n in 0..5 {
        assert_eq!(post(&a, event(&format!("late-{n}"))).await, "published");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..5 {
        assert_eq!(
            post(&b, event(&format!("late-{n}"))).await,
            "duplicate",
            "late-{n} retried on the other replica 2 s later"
        );
    }
    let detail = get(b.admin, "/readyz").await.json()["checks"]["dedup_shared"].to_string();
    assert!(detail.contains("ok (partition"), "{detail}");
    for n in 0..5 {
        assert_eq!(copies(&broker, &format!("late-{n}")).await, 1, "late-{n}");
    }
    a.terminate().await;
    b.terminate().await;
}

/// Every mark of an event acknowledged before SIGTERM is on the dedup topic after the exit.
#[tokio::test(flavor = "multi_thread")]
async fn marks_pending_at_sigterm_are_on_the_topic_after_exit() {
    let broker = Tansu::start();
    create_topic(&broker.bootstrap(), DEDUP_TOPIC, 2).await;
    let a = start(&broker, DEDUP_TOPIC).await;
    let addr = a.addr;
    let posts: Vec<_> = (0..200)
        .map(|n| {
            tokio::spawn(async move {
                let reply = send(
                    addr,
                    "POST",
                    "/webhooks/firstpromoter",
                    &[],
                    event(&format!("stop-{n}")),
                )
                .await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            })
        })
        .collect();
    for post in posts {
        post.await.unwrap();
    }
    let (status, _) = a.terminate().await;
    assert!(status.success(), "{status}");
    let marks = marks_on(&broker, DEDUP_TOPIC).await;
    let ids: std::collections::HashSet<_> = marks.iter().map(|key| key.id).collect();
    for n in 0..200 {
        let id = fp_relay::dedup::id_key(&fp_relay::dedup::id_of("v2", &format!("stop-{n}")));
        assert!(
            ids.contains(&id),
            "the mark of stop-{n} is missing ({} marks)",
            ids.len()
        );
    }
}

/// Partitions added to a followed topic later are followed within seconds, from their
/// beginning. tansu cannot add partitions, so the follower sees the topic through a view that
/// shows one partition first and all four later: the metadata source the test controls.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_added_later_are_followed_from_their_beginning() {
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    struct Collect(Mutex<Vec<String>>);
    impl fp_relay::kafka::follow::Sink for Collect {
        fn read(&self, _key: Option<&[u8]>, value: Option<&[u8]>, _at: SystemTime) -> u64 {
            let value = String::from_utf8_lossy(value.unwrap_or_default()).into_owned();
            self.0.lock().unwrap().push(value);
            1
        }
    }

    let broker = Tansu::start();
    let topic = "fp.grows";
    create_topic(&broker.bootstrap(), topic, 4).await;
    for partition in 0..4 {
        let value = format!("p{partition}");
        common::produce(
            &broker.bootstrap(),
            topic,
            Some(partition),
            None,
            &[],
            &value,
        )
        .await;
    }
    let shown = Arc::new(AtomicI32::new(1));
    let mut follow = fp_relay::kafka::follow::Follow::new(
        topic,
        Duration::from_secs(3600),
        "test-follower",
        "test records",
    );
    follow.view = {
        let shown = shown.clone();
        Arc::new(move |count| count.min(shown.load(Ordering::Acquire)))
    };
    let follow = Arc::new(follow);
    let state = follow.state.clone();
    let sink = Arc::new(Collect(Mutex::default()));
    let mut config = common::test_config(&broker.bootstrap());
    config.kafka.brokers = broker.bootstrap();
    let (_keep, settings) = tokio::sync::watch::channel(Arc::new(config.kafka.clone()));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(follow.clone().run(
        sink.clone(),
        settings,
        Arc::default(),
        Arc::new(fp_relay::metrics::Metrics::new()),
        Duration::from_secs(10),
        stop.clone(),
    ));
    assert!(
        common::eventually(Duration::from_secs(10), async || state.loaded()).await,
        "loaded"
    );
    assert_eq!(state.partitions(), 1);
    assert_eq!(*sink.0.lock().unwrap(), vec!["p0".to_owned()]);
    assert_eq!(state.detail("-"), "ok (partition 0 followed)");

    shown.store(4, Ordering::Release);
    let grown = common::eventually(Duration::from_secs(8), async || {
        sink.0.lock().unwrap().len() == 4
    })
    .await;
    let mut seen = sink.0.lock().unwrap().clone();
    seen.sort();
    assert!(grown, "within seconds: {seen:?}");
    assert_eq!(seen, ["p0", "p1", "p2", "p3"]);
    assert_eq!(state.detail("-"), "ok (partitions 0-3 followed)");
    stop.cancel();
}
