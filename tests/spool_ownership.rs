//! The spool as an operator meets it, with the binary and a real tansu broker: one owner per
//! directory, deadlines that hold against a broker that does not answer, a small spool through
//! several outages, a segment that cannot be read, a probe that needs a real write, SIGTERM in
//! the middle of a replay, and quarantine.log put back. Each checks that nothing answered 2xx
//! is lost and, where the code promises it, that nothing arrives twice.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::spool::{event, ids_in_kafka, post_at_once, spool_dir, spooling_env, TOPIC};
use common::{consume, eventually, get, metric, RelayProcess, Tansu};
use http::StatusCode;

fn fp_relay() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fp-relay"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("FP_RELAY_")) {
        command.env_remove(name);
    }
    command
}

/// `fp-relay spool drain` of `dir` against `broker`, with `--timeout`; its output and how long
/// it took.
async fn drain(broker: &Tansu, dir: &std::path::Path, timeout: &str) -> (Output, Duration) {
    let mut command = fp_relay();
    command.args(["spool", "drain", "--dir"]).arg(dir).args([
        "--brokers",
        &broker.bootstrap(),
        "--timeout",
        timeout,
    ]);
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (output, started.elapsed())
}

/// How many times each event id is on the topic.
async fn copies(broker: &Tansu) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for message in consume(
        &broker.bootstrap(),
        TOPIC,
        usize::MAX,
        Duration::from_secs(3),
        Duration::ZERO,
    )
    .await
    {
        if let Some(id) = message.header("fp-event-id").and_then(|id| id.parse().ok()) {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// Posts events `ids` to a relay whose broker is frozen: each must be spooled (202).
async fn spool_all(relay: &RelayProcess, ids: std::ops::RangeInclusive<u64>) {
    for (id, status) in post_at_once(relay.addr, ids, 0).await {
        assert_eq!(status, StatusCode::ACCEPTED, "event {id}");
    }
}

/// `spool drain` of `dir` with a 60 s deadline must succeed and leave every event of `ids`
/// in Kafka.
async fn drain_all(broker: &Tansu, dir: &std::path::Path, ids: std::ops::RangeInclusive<u64>) {
    let (drained, _) = drain(broker, dir, "60s").await;
    assert!(
        drained.status.success(),
        "{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    let held = ids_in_kafka(broker, Duration::from_secs(3)).await;
    assert!(ids.into_iter().all(|id| held.contains(&id)), "{held:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_owner_per_spool_directory_and_kill_9_leaves_nothing_stale() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let dir_text = dir.display().to_string();
    let relay = RelayProcess::start_with(&broker, &spooling_env(&dir_text)).await;

    // A second relay on the directory exits at once, naming it and the owner.
    let started = Instant::now();
    let second = tokio::task::spawn_blocking({
        let (dir, bootstrap) = (dir_text.clone(), broker.bootstrap());
        move || {
            fp_relay()
                .args(["serve", "--insecure-no-auth", "--brokers", &bootstrap])
                .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .envs(spooling_env(&dir))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let owner = format!("pid {}", relay.pid());
    assert!(
        stderr.contains(&dir_text) && stderr.contains(&owner),
        "names the directory and {owner}: {stderr}"
    );

    // spool drain beside the living relay is refused the same way.
    let (refused, _) = drain(&broker, &dir, "10s").await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&owner), "{stderr}");

    // Spool something, kill -9 the relay: the lock goes with it, and drain delivers it all.
    broker.freeze();
    spool_all(&relay, 1..=10).await;
    relay.kill();
    broker.thaw();
    drain_all(&broker, &dir, 1..=10).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// `spool drain --timeout 4s` against a broker that does not answer (frozen, not refusing)
/// exits 1 on time and loses nothing: a second drain once it answers delivers everything.
#[tokio::test(flavor = "multi_thread")]
async fn spool_drain_keeps_its_deadline_against_a_frozen_broker() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let relay = RelayProcess::start_with(&broker, &spooling_env(&dir.display().to_string())).await;
    broker.freeze();
    spool_all(&relay, 1..=20).await;
    relay.kill();
    let (timed_out, took) = drain(&broker, &dir, "4s").await;
    let stderr = String::from_utf8_lossy(&timed_out.stderr);
    eprintln!(
        "spool drain --timeout 4s against a frozen broker: exit {:?} after {took:?}",
        timed_out.status.code()
    );
    assert_eq!(timed_out.status.code(), Some(1), "{stderr}");
    assert!(
        took < Duration::from_secs(10),
        "exited after {took:?}: {stderr}"
    );
    assert!(stderr.contains("still spooled"), "{stderr}");
    broker.thaw();
    drain_all(&broker, &dir, 1..=20).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A spool of the smallest allowed size (1 MiB) through three outages of about 700 KB each,
/// each drained before the next: every event of every outage is accepted (it used to be 500,
/// 179, then 0 of 500 with 2 MiB: done records counted against the limit and the segment
/// rotated only at 16 MiB).
#[tokio::test(flavor = "multi_thread")]
async fn a_small_spool_accepts_again_after_every_outage() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let dir_text = dir.display().to_string();
    let mut env = spooling_env(&dir_text);
    env.push(("FP_RELAY_SPOOL_MAX_BYTES", "1048576"));
    let relay = RelayProcess::start_with(&broker, &env).await;
    let per_outage = 200u64;
    for round in 0..3 {
        broker.freeze();
        let first = round * per_outage + 1;
        let answers = post_at_once(relay.addr, first..first + per_outage, 3000).await;
        let accepted = answers
            .iter()
            .filter(|(_, s)| *s == StatusCode::ACCEPTED || *s == StatusCode::OK)
            .count();
        eprintln!("outage {}: {accepted} of {per_outage} accepted", round + 1);
        assert_eq!(accepted as u64, per_outage, "outage {}", round + 1);
        broker.thaw();
        assert!(
            eventually(Duration::from_secs(60), async || metric(
                relay.admin,
                "fp_relay_spool_records"
            )
            .await
                == 0.0)
            .await,
            "outage {} drained",
            round + 1
        );
        let files = metric(relay.admin, "fp_relay_spool_bytes").await;
        eprintln!("after outage {}: segment files {files} bytes", round + 1);
    }
    let held = ids_in_kafka(&broker, Duration::from_secs(5)).await;
    let missing: Vec<u64> = (1..=3 * per_outage)
        .filter(|id| !held.contains(id))
        .collect();
    assert!(missing.is_empty(), "not in Kafka: {missing:?}");
    let (status, _) = relay.terminate().await;
    assert!(status.success());
    let _ = std::fs::remove_dir_all(dir);
}

/// A segment the relay cannot read (EACCES: the relay runs as an unprivileged user and the
/// segment is chmod 000) is set aside at start-up: the relay starts, events after it are
/// replayed and new ones flow; once it reads again, its events follow. Nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_segment_is_set_aside_and_the_rest_flows() {
    use std::os::unix::fs::PermissionsExt;
    let broker = Tansu::start();
    let dir = spool_dir();
    let dir_text = dir.display().to_string();
    // As root, the relay runs as nobody (root reads any file whatever its mode).
    let root = unsafe { libc::geteuid() } == 0;
    let wrapper: &[&str] = if root {
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]
    } else {
        &[]
    };
    if root {
        let status = Command::new("chown")
            .args(["65534:65534", &dir_text])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let env = spooling_env(&dir_text);
    // Events 1-10 in one segment, 11-20 in the next (a restart starts a new one), Kafka frozen
    // throughout so that nothing is replayed yet.
    broker.freeze();
    for range in [1..=10u64, 11..=20] {
        let relay = RelayProcess::start_wrapped(&broker, &env, wrapper).await;
        for (id, status) in post_at_once(relay.addr, range, 0).await {
            assert_eq!(status, StatusCode::ACCEPTED, "event {id}");
        }
        relay.kill();
    }
    broker.thaw();
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("segment-")
        })
        .collect();
    segments.sort();
    let first = segments[0].clone();
    std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o000)).unwrap();

    let relay = RelayProcess::start_wrapped(&broker, &env, wrapper).await;
    assert!(
        eventually(Duration::from_secs(15), async || {
            let held = ids_in_kafka(&broker, Duration::from_millis(500)).await;
            (11..=20).all(|id| held.contains(&id))
        })
        .await,
        "the events after the unreadable segment are replayed"
    );
    assert_eq!(
        metric(relay.admin, "fp_relay_spool_segments_set_aside").await,
        1.0
    );
    let held = ids_in_kafka(&broker, Duration::from_secs(1)).await;
    assert!(
        (1..=10).all(|id| !held.contains(&id)),
        "the unreadable segment's events wait: {held:?}"
    );
    let ready = get(relay.admin, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    let new = relay.post(event(21, 0)).await;
    assert!(new.is_success(), "new events flow: {new}");
    std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || {
            let held = ids_in_kafka(&broker, Duration::from_millis(500)).await;
            (1..=21).all(|id| held.contains(&id))
        })
        .await,
        "the set-aside segment's events follow once it reads"
    );
    assert_eq!(
        metric(relay.admin, "fp_relay_spool_segments_set_aside").await,
        0.0
    );
    let counts = copies(&broker).await;
    assert!(counts.values().all(|n| *n == 1), "each once: {counts:?}");
    let (status, _) = relay.terminate().await;
    assert!(status.success());
    let _ = std::fs::remove_dir_all(dir);
}

/// Under a file size limit (`prlimit --fsize`), a write fails with EFBIG: the relay answers 503
/// only until a real write works again (the spool moves on to a new segment), and then
/// accepts. The old probe appended nothing, said "ready" and every write still failed.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_failed_write_readiness_returns_only_with_a_real_write() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let relay = RelayProcess::start_wrapped(
        &broker,
        &spooling_env(&dir.display().to_string()),
        &["prlimit", "--fsize=262144"],
    )
    .await;
    broker.freeze();
    let mut refused = None;
    for id in 1..=200u64 {
        let status = relay.post(event(id, 4000)).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(id);
            break;
        }
        assert_eq!(status, StatusCode::ACCEPTED, "event {id}");
    }
    let refused = refused.expect("a write reached the file size limit");
    assert!(
        eventually(Duration::from_secs(10), async || get(
            relay.admin,
            "/readyz"
        )
        .await
        .status
            == StatusCode::OK)
        .await,
        "ready again once a real write works"
    );
    for id in refused + 1..refused + 20 {
        assert_eq!(
            relay.post(event(id, 4000)).await,
            StatusCode::ACCEPTED,
            "ready means writes work: event {id}"
        );
    }
    broker.thaw();
    let accepted: Vec<u64> = (1..refused).chain(refused + 1..refused + 20).collect();
    assert!(
        eventually(Duration::from_secs(30), async || {
            let held = ids_in_kafka(&broker, Duration::from_millis(500)).await;
            accepted.iter().all(|id| held.contains(id))
        })
        .await
    );
    let (status, _) = relay.terminate().await;
    assert!(status.success());
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGTERM while a large backlog is being replayed: the batch handed to the producer settles
/// (done-markers written) before the relay exits, so a restart replays only what was not in
/// Kafka. Counts duplicates.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_in_the_middle_of_a_replay_leaves_no_duplicates() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let dir_text = dir.display().to_string();
    let env = spooling_env(&dir_text);
    let relay = RelayProcess::start_with(&broker, &env).await;
    broker.freeze();
    let total = 3000u64;
    for chunk in (1..=total).collect::<Vec<_>>().chunks(500) {
        for (id, status) in post_at_once(relay.addr, chunk.iter().copied(), 200).await {
            assert_eq!(status, StatusCode::ACCEPTED, "event {id}");
        }
    }
    broker.thaw();
    // Replay is under way: some, not all, of the backlog is in Kafka.
    assert!(
        eventually(Duration::from_secs(30), async || metric(
            relay.admin,
            "fp_relay_spool_replayed_total"
        )
        .await
            > 0.0)
        .await
    );
    let (status, _) = relay.terminate().await;
    assert!(status.success());
    let relay = RelayProcess::start_with(&broker, &env).await;
    assert!(
        eventually(Duration::from_secs(60), async || metric(
            relay.admin,
            "fp_relay_spool_records"
        )
        .await
            == 0.0)
        .await
    );
    let counts = copies(&broker).await;
    let missing = (1..=total).filter(|id| !counts.contains_key(id)).count();
    let duplicates = counts.values().filter(|n| **n > 1).count();
    eprintln!("SIGTERM during replay of {total}: {missing} missing, {duplicates} duplicated");
    assert_eq!(missing, 0);
    assert_eq!(duplicates, 0, "the settled batch is not replayed again");
    let (status, _) = relay.terminate().await;
    assert!(status.success());
    let _ = std::fs::remove_dir_all(dir);
}

/// The transient and the permanent refusals of a spooled backlog, against librdkafka's mock
/// cluster (tansu creates any topic it is asked about, so it never says "no such topic"):
/// a topic that is unknown for a few seconds (a cluster restarted empty, its topics recreated)
/// costs its events a wait, not the dead-letter topic; records that neither their topic nor
/// the dead-letter topic take go to quarantine.log, count against the spool, and
/// `fp-relay spool requeue` puts them back once, even when run twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_topic_missing_for_seconds_is_waited_for_and_quarantine_is_requeued_once() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::RDKafkaRespErr;
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    for topic in [TOPIC, "firstpromoter.dead_letter"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let dir = spool_dir();
    let mut config = common::test_config(&bootstrap);
    config.fulfilment.enabled = false;
    config.spool.enabled = true;
    config.spool.dir = dir.clone();
    config.spool.handoff_after = Duration::from_millis(300);
    config.spool.unknown_topic_wait = Duration::from_secs(30);
    config.validate().unwrap();

    // The topic "does not exist" for 4 s: its events are spooled and wait, then go to it.
    cluster
        .topic_error(
            TOPIC,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        )
        .unwrap();
    let relay = common::TestRelay::start_ready(config.clone()).await;
    for id in 1..=5 {
        let reply = relay.post(event(id, 0)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        assert_eq!(reply.json()["status"], "spooled");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster
        .topic_error(TOPIC, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    let on_topic = consume(
        &bootstrap,
        TOPIC,
        5,
        Duration::from_secs(20),
        Duration::ZERO,
    )
    .await;
    assert_eq!(
        on_topic.len(),
        5,
        "every event reached its topic once it was back"
    );
    let dead = consume(
        &bootstrap,
        "firstpromoter.dead_letter",
        usize::MAX,
        Duration::from_secs(1),
        Duration::ZERO,
    )
    .await;
    assert!(
        dead.is_empty(),
        "nothing dead-lettered for a restart: {}",
        dead.len()
    );

    // Neither their topic nor the dead-letter topic takes them (not authorised): quarantine.log.
    const DENIED: &str = "firstpromoter.lead_cancelled";
    cluster.create_topic(DENIED, 1, 1).unwrap();
    for topic in [DENIED, "firstpromoter.dead_letter"] {
        cluster
            .topic_error(
                topic,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
            )
            .unwrap();
    }
    for id in 6..=8 {
        let body =
            format!(r#"{{"event":{{"id":{id},"type":"lead_cancelled"}},"data":{{"id":{id}}}}}"#);
        let reply = relay.post(bytes::Bytes::from(body)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    }
    assert!(
        eventually(Duration::from_secs(20), async || relay
            .metric("fp_relay_spool_quarantined_total")
            .await
            == 3.0)
        .await
    );
    let quarantined = relay.metric("fp_relay_spool_quarantine_bytes").await;
    assert!(quarantined > 0.0);
    assert!(
        relay.metric("fp_relay_spool_pending_bytes").await >= quarantined,
        "quarantine counts against spool.max_bytes"
    );
    relay.shutdown().await;

    // Fixed: requeued once, even when run twice.
    for topic in [DENIED, "firstpromoter.dead_letter"] {
        cluster
            .topic_error(topic, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
            .unwrap();
    }
    for run in 0..2 {
        let mut command = fp_relay();
        command
            .args(["spool", "requeue", "--dir"])
            .arg(&dir)
            .args(["--brokers", &bootstrap]);
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let expected = if run == 0 {
            "3 record(s)"
        } else {
            "0 record(s)"
        };
        assert!(stdout.contains(expected), "run {run}: {stdout}");
    }
    let requeued = consume(
        &bootstrap,
        DENIED,
        3,
        Duration::from_secs(10),
        Duration::from_secs(1),
    )
    .await;
    let mut ids: Vec<u64> = requeued
        .iter()
        .filter_map(|m| m.header("fp-event-id")?.parse().ok())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [6, 7, 8], "each once");
    assert!(requeued
        .iter()
        .all(|m| m.header("fp-requeued-from") == Some("quarantine.log")
            && m.header("fp-quarantine-reason").is_none()));
    assert!(!dir.join("quarantine.log").exists());
    let _ = std::fs::remove_dir_all(dir);
}
