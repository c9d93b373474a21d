//! Chaos tests for "nothing acknowledged is ever lost", against a real tansu broker.
//!
//! Outages are made by freezing the broker (SIGSTOP) and thawing it (SIGCONT): tansu keeps its
//! data only in memory, so killing and restarting it would lose what was already acknowledged
//! and prove nothing about the relay.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{consume, eventually, free_port, Consumed, Tansu, TestRelay};
use fp_relay::config::Config;
use http::StatusCode;

const TOPIC: &str = "firstpromoter.lead_signup";

fn event(id: u64) -> String {
    format!(
        r#"{{"event":{{"id":{id},"type":"lead_signup","created_at":"2024-10-03T13:45:20.103Z"}},"data":{{"id":{id},"email":"lead{id}@example.com"}}}}"#
    )
}

fn spool_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fp-relay-spool-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(broker: &Tansu, spool: Option<&std::path::Path>) -> Config {
    let mut config = common::test_config(&broker.bootstrap());
    config.fulfilment.enabled = false;
    config.kafka.ack_timeout = Duration::from_secs(3);
    if let Some(dir) = spool {
        config.spool.enabled = true;
        config.spool.dir = dir.to_path_buf();
        config.spool.handoff_after = Duration::from_millis(500);
    }
    config.validate().unwrap();
    config
}

/// One answered request of the load.
#[derive(Debug)]
struct Answer {
    id: u64,
    status: StatusCode,
    took: Duration,
}

/// Posts events with ids from `first` on `concurrency` connections until `stop` passes.
async fn steady_load(
    relay: &TestRelay,
    first: u64,
    concurrency: u64,
    until: Instant,
) -> Vec<Answer> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(first));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (addr, path, next) = (relay.addr, relay.path.clone(), next.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while Instant::now() < until {
                    let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let started = Instant::now();
                    let reply = common::send(addr, "POST", &path, &[], event(id).into()).await;
                    answers.push(Answer {
                        id,
                        status: reply.status,
                        took: started.elapsed(),
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                answers
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    all
}

/// How many times each fp-event-id appears on the topic.
fn counts(messages: &[Consumed]) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for message in messages {
        let id = message.header("fp-event-id").unwrap().parse().unwrap();
        *counts.entry(id).or_default() += 1;
    }
    counts
}

/// Loads for 8 s with the broker frozen from second 1 to second 6: longer than the 3 s
/// ack_timeout, so without the spool some requests must be refused.
async fn load_through_an_outage(broker: &Tansu, relay: &TestRelay) -> Vec<Answer> {
    let until = Instant::now() + Duration::from_secs(8);
    let load = steady_load(relay, 1, 4, until);
    let chaos = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        broker.freeze();
        tokio::time::sleep(Duration::from_secs(5)).await;
        broker.thaw();
    };
    let (answers, ()) = tokio::join!(load, chaos);
    answers
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_spool_every_acknowledged_event_is_in_kafka_exactly_once_after_an_outage() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let relay = TestRelay::start_ready(config(&broker, Some(&dir))).await;
    let answers = load_through_an_outage(&broker, &relay).await;
    let acknowledged: Vec<u64> = answers
        .iter()
        .filter(|a| a.status.is_success())
        .map(|a| a.id)
        .collect();
    assert_eq!(
        acknowledged.len(),
        answers.len(),
        "with the spool every request is acknowledged"
    );
    assert!(
        relay.metric("fp_relay_spooled_total").await > 0.0,
        "the outage was long enough to spool"
    );
    assert!(
        relay
            .wait_for_metric("fp_relay_spool_records", 0.0, Duration::from_secs(30))
            .await,
        "the spool drains once Kafka is back"
    );
    let messages = consume(
        &broker.bootstrap(),
        TOPIC,
        acknowledged.len(),
        Duration::from_secs(20),
        Duration::from_secs(2),
    )
    .await;
    let counts = counts(&messages);
    for id in &acknowledged {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "event {id} must be in Kafka exactly once"
        );
    }
    assert_eq!(messages.len(), acknowledged.len(), "nothing extra");
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_spool_every_2xx_is_in_kafka_and_every_refusal_is_prompt() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(config(&broker, None)).await;
    let answers = load_through_an_outage(&broker, &relay).await;
    let refused: Vec<&Answer> = answers.iter().filter(|a| !a.status.is_success()).collect();
    assert!(
        !refused.is_empty(),
        "the outage was long enough to refuse some"
    );
    for answer in &refused {
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            answer.took <= Duration::from_secs(3) + Duration::from_millis(1500),
            "{answer:?}"
        );
    }
    let acknowledged: Vec<u64> = answers
        .iter()
        .filter(|a| a.status.is_success())
        .map(|a| a.id)
        .collect();
    let messages = consume(
        &broker.bootstrap(),
        TOPIC,
        acknowledged.len(),
        Duration::from_secs(20),
        Duration::from_secs(1),
    )
    .await;
    let counts = counts(&messages);
    for id in &acknowledged {
        assert!(
            counts.contains_key(id),
            "acknowledged event {id} is in Kafka"
        );
    }
    relay.shutdown().await;
}

/// The relay binary with a spool in `dir`.
fn spawn_relay(broker: &Tansu, dir: &std::path::Path, port: u16, admin: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fp-relay"))
        .args([
            "serve",
            "--insecure-no-auth",
            "--brokers",
            &broker.bootstrap(),
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .env("FP_RELAY_SPOOL_ENABLED", "true")
        .env("FP_RELAY_SPOOL_DIR", dir)
        .env("FP_RELAY_SPOOL_HANDOFF_AFTER", "300ms")
        .env("FP_RELAY_KAFKA_ACK_TIMEOUT", "3s")
        .env("FP_RELAY_FULFILMENT_ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_listening(port: u16) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        eventually(Duration::from_secs(20), async || common::try_get(
            addr, "/healthz"
        )
        .await
        .is_some())
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_spooling_then_a_restart_replays_every_acknowledged_event() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let (port, admin) = (free_port(), free_port());
    let mut relay = spawn_relay(&broker, &dir, port, admin);
    wait_listening(admin).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        common::send(
            addr,
            "POST",
            "/webhooks/firstpromoter",
            &[],
            event(1).into()
        )
        .await
        .status,
        StatusCode::OK
    );

    broker.freeze();
    let mut acknowledged = vec![1];
    for id in 2..=21 {
        let reply = common::send(
            addr,
            "POST",
            "/webhooks/firstpromoter",
            &[],
            event(id).into(),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "spooled while Kafka is frozen"
        );
        assert_eq!(reply.json()["status"], "spooled");
        acknowledged.push(id);
    }
    relay.kill().unwrap(); // SIGKILL: no shutdown, no flush
    relay.wait().unwrap();
    broker.thaw();

    let mut relay = spawn_relay(&broker, &dir, port, admin);
    let messages = consume(
        &broker.bootstrap(),
        TOPIC,
        acknowledged.len(),
        Duration::from_secs(30),
        Duration::from_secs(2),
    )
    .await;
    let counts = counts(&messages);
    for id in &acknowledged {
        assert!(
            counts.contains_key(id),
            "acknowledged event {id} survived kill -9"
        );
    }
    relay.kill().unwrap();
    relay.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Copies the fixture spool written by the journal format (tests/fixtures/journal-spool: see
/// its README) into `dir`.
fn copy_journal_fixture(dir: &std::path::Path) {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-spool");
    for entry in std::fs::read_dir(&fixture).unwrap().flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".log") {
            std::fs::copy(entry.path(), dir.join(&name)).unwrap();
        }
    }
}

fn journal_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log") || n.starts_with("quarantine."))
        .collect();
    names.sort();
    names
}

/// Upgrade without loss: a spool directory written by the journal format (a torn last record,
/// done-markers in a later segment than their events, a quarantine.log) is imported into
/// spool.db at the first start: the pending events reach Kafka once, in order, the torn one is
/// counted and skipped, the quarantined one is kept as quarantined, and the old files are gone
/// only after the import was committed. A start that finds the import committed but the old
/// files still there (a crash between the two) removes them and imports nothing twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_spool_written_by_the_journal_is_imported_once_in_order() {
    let broker = Tansu::start();
    let dir = spool_dir();
    copy_journal_fixture(&dir);

    let relay = TestRelay::start_ready(config(&broker, Some(&dir))).await;
    assert_eq!(
        relay.metric("fp_relay_spool_corrupt_records_total").await,
        1.0,
        "the torn record is counted"
    );
    let messages = consume(
        &broker.bootstrap(),
        TOPIC,
        4,
        Duration::from_secs(20),
        Duration::from_secs(2),
    )
    .await;
    let mut ids: Vec<u64> = counts(&messages).into_keys().collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        vec![9002, 9004, 9005, 9006],
        "the pending events, not the torn one"
    );
    let mut by_partition: HashMap<i32, Vec<(i64, u64)>> = HashMap::new();
    for m in &messages {
        let id = m.header("fp-event-id").unwrap().parse().unwrap();
        by_partition
            .entry(m.partition)
            .or_default()
            .push((m.offset, id));
    }
    for (_, mut written) in by_partition {
        written.sort_unstable();
        assert!(
            written.windows(2).all(|w| w[0].1 < w[1].1),
            "receive order: {written:?}"
        );
    }
    assert!(messages
        .iter()
        .any(|m| m.key.as_deref() == Some("lead-9002")));
    assert!(
        eventually(Duration::from_secs(10), async || relay
            .metric("fp_relay_spool_replayed_total")
            .await
            == 4.0)
        .await
    );
    assert!(
        relay.metric("fp_relay_spool_quarantine_bytes").await > 0.0,
        "the quarantined record is kept"
    );
    assert_eq!(
        journal_files(&dir),
        Vec::<String>::new(),
        "the old files are gone"
    );
    relay.shutdown().await;

    // A crash after the import's commit, before the old files were removed.
    copy_journal_fixture(&dir);
    let db = rusqlite::Connection::open(dir.join("spool.db")).unwrap();
    db.execute("INSERT INTO imported (name) VALUES ('journal')", [])
        .unwrap();
    drop(db);
    let relay = TestRelay::start_ready(config(&broker, Some(&dir))).await;
    assert_eq!(
        journal_files(&dir),
        Vec::<String>::new(),
        "the old files are removed"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        relay.metric("fp_relay_spool_replayed_total").await,
        0.0,
        "nothing imported twice"
    );
    relay.shutdown().await;
    let messages = consume(
        &broker.bootstrap(),
        TOPIC,
        5,
        Duration::from_secs(5),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(messages.len(), 4, "each event once in Kafka");
    let db = rusqlite::Connection::open(dir.join("spool.db")).unwrap();
    let quarantined: i64 = db
        .query_row(
            "SELECT count(*) FROM records WHERE quarantine IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(quarantined, 1, "the quarantined record, once");
    let imported: i64 = db
        .query_row("SELECT count(*) FROM imported", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        imported, 0,
        "the import is forgotten once its files are gone"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_event_ids_concurrent_and_sequential_are_published_once() {
    let broker = Tansu::start();
    let mut config = config(&broker, None);
    config.dedup.enabled = Some(true);
    let relay = TestRelay::start_ready(config).await;
    let concurrent: Vec<_> = (0..10)
        .map(|_| relay.post_in_background(event(7).into()))
        .collect();
    let mut statuses = Vec::new();
    for post in concurrent {
        let reply = post.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        statuses.push(reply.json()["status"].as_str().unwrap().to_owned());
    }
    for _ in 0..3 {
        let reply = relay.post(event(7)).await;
        assert_eq!(reply.json()["status"], "duplicate");
        statuses.push("duplicate".into());
    }
    assert_eq!(statuses.iter().filter(|s| *s == "published").count(), 1);
    // A v2 retry carries the id in X-Event-Id; the same id in v1 and v2 are different events.
    let v2 = r#"{"event_type":"lead_signup","entity_id":7}"#;
    for expected in ["published", "duplicate"] {
        let reply = relay.post_with(v2, &[("x-event-id", "7")]).await;
        assert_eq!(reply.json()["status"], expected);
    }
    let messages = consume(
        &broker.bootstrap(),
        TOPIC,
        2,
        Duration::from_secs(10),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(messages.len(), 2, "one v1 and one v2 message");
    assert_eq!(relay.metric("fp_relay_duplicates_total").await, 13.0);
    relay.shutdown().await;
}
