//! The spool under real faults, against a real broker: a full disk, clients that hang up while
//! their event is being spooled, readiness during an outage, and how fast a backlog drains.
//! Every test checks the promise itself: each event answered 2xx is in Kafka afterwards.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::spool::{event, ids_in_kafka, post_at_once, spool_dir, spooling_env, TOPIC};
use common::{eventually, get, metric, RelayProcess, Tansu, TestRelay};
use fp_relay::config::Config;
use http::StatusCode;
use tokio::io::AsyncWriteExt;

fn config(broker: &Tansu, dir: &std::path::Path) -> Config {
    let mut config = common::test_config(&broker.bootstrap());
    config.fulfilment.enabled = false;
    config.kafka.ack_timeout = Duration::from_secs(3);
    config.spool.enabled = true;
    config.spool.dir = dir.to_path_buf();
    config.spool.handoff_after = Duration::from_millis(300);
    config.validate().unwrap();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_spool_readiness_stays_200_during_an_outage_and_events_are_spooled() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let relay = TestRelay::start_ready(config(&broker, &dir)).await;
    broker.freeze();
    assert!(
        eventually(Duration::from_secs(15), async || {
            get(relay.admin, "/readyz").await.json()["checks"]["kafka_producer"]
                .as_str()
                .is_some_and(|s| s.starts_with("failing"))
        })
        .await,
        "the probe notices the outage"
    );
    let ready = get(relay.admin, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    assert_eq!(ready.json()["checks"]["spool"], "ok");
    let reply = relay.post(event(1, 0)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    assert_eq!(reply.json()["status"], "spooled");
    broker.thaw();
    assert!(ids_in_kafka(&broker, Duration::from_secs(5))
        .await
        .contains(&1));
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_hang_up_while_their_event_is_spooled_do_not_stall_replay() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let relay = TestRelay::start_ready(config(&broker, &dir)).await;
    broker.freeze();
    // Hang up around the handoff (300 ms): before, during and after the spool write.
    let hang_ups: Vec<_> = (0..24u64)
        .map(|n| {
            let addr = relay.addr;
            tokio::spawn(async move {
                let body = event(1000 + n, 0);
                let head = format!(
                    "POST /webhooks/firstpromoter HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.write_all(head.as_bytes()).await.unwrap();
                stream.write_all(&body).await.unwrap();
                tokio::time::sleep(Duration::from_millis(250 + n * 5)).await;
                drop(stream);
            })
        })
        .collect();
    for hang_up in hang_ups {
        hang_up.await.unwrap();
    }
    // Events from clients that stay: spooled behind whatever the hang-ups left.
    let mut acknowledged = Vec::new();
    for id in 1..=5 {
        let reply = relay.post(event(id, 0)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        acknowledged.push(id);
    }
    broker.thaw();
    assert!(
        relay
            .wait_for_metric("fp_relay_spool_records", 0.0, Duration::from_secs(30))
            .await,
        "replay drained everything, hung-up clients' records included"
    );
    let held = ids_in_kafka(&broker, Duration::from_secs(4)).await;
    for id in acknowledged {
        assert!(held.contains(&id), "event {id} was answered 202");
    }
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The disk fills up (a 1 MiB file-size limit on the relay's process): writes that fail are
/// answered 503, the database stays consistent, and everything answered 202 reaches Kafka.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_disk_answers_503_and_loses_nothing_answered_202() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let dir_text = dir.display().to_string();
    let relay = RelayProcess::start_wrapped(
        &broker,
        &spooling_env(&dir_text),
        &["prlimit", "--fsize=1048576"],
    )
    .await;
    broker.freeze();
    let mut spooled = Vec::new();
    let mut refused = 0;
    for round in 0..40u64 {
        for status in post_at_once(relay.addr, (1..=8).map(|n| round * 8 + n), 4000).await {
            match status {
                (id, StatusCode::ACCEPTED) => spooled.push(id),
                (_, StatusCode::SERVICE_UNAVAILABLE) => refused += 1,
                (id, other) => panic!("event {id}: unexpected {other}"),
            }
        }
    }
    assert!(
        !spooled.is_empty() && refused > 0,
        "{} spooled, {refused} refused",
        spooled.len()
    );
    broker.thaw();
    let held = ids_in_kafka(&broker, Duration::from_secs(8)).await;
    let lost: Vec<_> = spooled.iter().filter(|id| !held.contains(id)).collect();
    assert!(lost.is_empty(), "answered 202 but not in Kafka: {lost:?}");
    assert_eq!(
        metric(relay.admin, "fp_relay_spool_corrupt_records_total").await,
        0.0
    );
    let (status, _) = relay.terminate().await;
    assert_eq!(status.code(), Some(0));
    eprintln!(
        "full disk: {} spooled, {refused} refused with 503, 0 lost",
        spooled.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A 5 s broker pause under steady load builds a backlog; once the broker is back it drains
/// completely, every 2xx is in Kafka, and the drain rate is reported (the target is at least
/// 5,000 records/s on the project's 2-core machine; benches/RESULTS.md has the numbers).
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_drains_in_full_and_reports_its_rate() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let mut config = config(&broker, &dir);
    config.spool.handoff_after = Duration::from_millis(100);
    let relay = TestRelay::start_ready(config).await;
    broker.freeze();
    let until = Instant::now() + Duration::from_secs(5);
    let workers: Vec<_> = (0..16u64)
        .map(|worker| {
            let addr = relay.addr;
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut id = worker * 1_000_000;
                while Instant::now() < until {
                    id += 1;
                    let reply =
                        common::send(addr, "POST", "/webhooks/firstpromoter", &[], event(id, 0))
                            .await;
                    assert!(reply.status.is_success(), "{}", reply.status);
                    acknowledged.push(id);
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for worker in workers {
        acknowledged.extend(worker.await.unwrap());
    }
    let backlog = relay.metric("fp_relay_spool_records").await;
    let thawed = Instant::now();
    broker.thaw();
    assert!(
        relay
            .wait_for_metric("fp_relay_spool_records", 0.0, Duration::from_secs(60))
            .await,
        "the backlog drains"
    );
    let took = thawed.elapsed();
    eprintln!(
        "drained {backlog} spooled records in {took:?}: {:.0} records/s (including the broker's own recovery)",
        backlog / took.as_secs_f64()
    );
    let held = ids_in_kafka(&broker, Duration::from_secs(6)).await;
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !held.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} lost",
        lost.len(),
        acknowledged.len()
    );
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Under a 256-descriptor limit that cannot be raised (soft = hard), idle clients try to take
/// every descriptor while the broker comes back: the relay accepts only what fits beside its
/// reserve, replay can still read the spool, and every event answered 202 reaches Kafka. Accept
/// errors, if any, are logged once per interval, not every 50 ms.
#[tokio::test(flavor = "multi_thread")]
async fn idle_clients_under_a_descriptor_limit_cannot_cost_spooled_events() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let dir_text = dir.display().to_string();
    let mut env = spooling_env(&dir_text);
    env.extend([
        ("FP_RELAY_HTTP_IDLE_TIMEOUT", "30s"),
        ("FP_RELAY_HTTP_HEADER_READ_TIMEOUT", "20s"),
    ]);
    let relay = RelayProcess::start_wrapped(&broker, &env, &["prlimit", "--nofile=256:256"]).await;
    broker.freeze();
    let mut acknowledged = Vec::new();
    for round in 0..3u64 {
        for (id, status) in post_at_once(relay.addr, (1..=20).map(|n| round * 20 + n), 0).await {
            assert_eq!(status, StatusCode::ACCEPTED, "event {id} is spooled");
            acknowledged.push(id);
        }
    }
    // Idle clients: more connections than the relay has descriptors.
    // Past the relay's cap and the kernel's accept queue a connect waits for SYN retries, so
    // they run at once, each given a second.
    let addr = relay.addr;
    let connects: Vec<_> = (0..300)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                    .await
            })
        })
        .collect();
    let mut idle = Vec::new();
    for connect in connects {
        if let Ok(Ok(stream)) = connect.await.unwrap() {
            idle.push(stream);
        }
    }
    broker.thaw();
    let mut held = HashSet::new();
    let all_there = eventually(Duration::from_secs(30), async || {
        held = ids_in_kafka(&broker, Duration::from_secs(2)).await;
        acknowledged.iter().all(|id| held.contains(id))
    })
    .await;
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !held.contains(id))
        .collect();
    assert!(all_there, "answered 202 but not in Kafka: {lost:?}");
    assert_eq!(
        metric(relay.admin, "fp_relay_spool_corrupt_records_total").await,
        0.0,
        "no record was taken for damaged"
    );
    drop(idle);
    let (status, lines) = relay.terminate().await;
    assert!(status.success());
    let said = |text: &str| {
        lines
            .iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(text)))
            .count()
    };
    assert_eq!(said("http.max_connections does not fit"), 1);
    assert!(
        said("cannot accept connections") <= 3,
        "accept errors are not a flood"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A relay restarted on a 200 MB spool (100,000 events of 2 kB, written into spool.db by this
/// test through the spool's own store) counts every record without holding their payloads: its
/// peak RSS while starting stays far below the spool's size.
#[tokio::test(flavor = "multi_thread")]
async fn starting_on_a_200_mb_spool_needs_memory_for_its_totals_not_its_payloads() {
    use fp_relay::kafka::record::OutboundRecord;
    use fp_relay::spool::fault::Faults;
    use fp_relay::spool::store::Store;
    const RECORDS: u64 = 100_000;
    let broker = Tansu::start();
    let dir = spool_dir();
    let mut store = Store::open(&dir.join("spool.db"), &Faults::none()).unwrap();
    let payload = event(0, 2000);
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(1000) {
        let records: Vec<OutboundRecord> = chunk
            .iter()
            .map(|seq| OutboundRecord {
                topic: TOPIC.into(),
                key: Some(seq.to_string()),
                headers: vec![("fp-event-id".into(), seq.to_string())],
                payload: payload.clone(),
            })
            .collect();
        let rows: Vec<(&OutboundRecord, u64)> =
            records.iter().map(|r| (r, 1_700_000_000_000)).collect();
        store.insert(&rows, |_| {}).unwrap();
    }
    drop(store);
    let spool_bytes: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    assert!(spool_bytes >= 200_000_000, "{spool_bytes} bytes");
    // Frozen: replay waits, so the figure is start-up's alone.
    broker.freeze();
    let dir_text = dir.display().to_string();
    let relay = RelayProcess::start_with(
        &broker,
        &[
            ("FP_RELAY_SPOOL_ENABLED", "true"),
            ("FP_RELAY_SPOOL_DIR", &dir_text),
            ("FP_RELAY_FULFILMENT_ENABLED", "false"),
        ],
    )
    .await;
    assert_eq!(
        metric(relay.admin, "fp_relay_spool_records").await,
        RECORDS as f64,
        "every record recovered"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").parse().ok())
        .unwrap();
    eprintln!(
        "peak RSS starting on a {} MB spool of {RECORDS} records: {} MiB",
        spool_bytes / 1_000_000,
        peak_kib / 1024
    );
    assert!(
        peak_kib < 96 * 1024,
        "peak RSS {peak_kib} KiB on a {spool_bytes}-byte spool"
    );
    broker.thaw();
    let (status, _) = relay.terminate().await;
    assert!(status.success());
    let _ = std::fs::remove_dir_all(dir);
}

/// `fp-relay spool drain` on the directory a killed relay left (a replica scaled down for
/// good): every spooled event reaches Kafka, and the directory is emptied.
#[tokio::test(flavor = "multi_thread")]
async fn spool_drain_replays_a_killed_relays_spool_and_empties_it() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let dir_text = dir.display().to_string();
    let relay = RelayProcess::start_with(&broker, &spooling_env(&dir_text)).await;
    broker.freeze();
    for (id, status) in post_at_once(relay.addr, 1..=20, 0).await {
        assert_eq!(status, StatusCode::ACCEPTED, "event {id} spooled");
    }
    relay.kill();
    broker.thaw();
    let bootstrap = broker.bootstrap();
    let drained = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fp-relay"))
            .args([
                "spool",
                "drain",
                "--dir",
                &dir_text,
                "--brokers",
                &bootstrap,
            ])
            .env_remove("FP_RELAY_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&drained.stderr);
    assert!(drained.status.success(), "{stderr}");
    assert!(stderr.contains("20 record(s)"), "{stderr}");
    let held = ids_in_kafka(&broker, Duration::from_secs(3)).await;
    let missing: Vec<u64> = (1..=20).filter(|id| !held.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "not in Kafka after the drain: {missing:?}"
    );
    // Emptied: the owner's lock file (deleting it could let two processes each lock a file of
    // that name at once) and an empty database stay, no record, no WAL content.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            !["owner.lock", "spool.db", "spool.db-wal", "spool.db-shm"].contains(&name.as_str())
        })
        .collect();
    assert!(left.is_empty(), "the spool directory is emptied: {left:?}");
    let wal = std::fs::metadata(dir.join("spool.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL keeps no payload");
    let db = rusqlite::Connection::open(dir.join("spool.db")).unwrap();
    let records: i64 = db
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(records, 0, "no record left");
    let _ = std::fs::remove_dir_all(dir);
}
