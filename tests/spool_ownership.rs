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
    drain_with(broker, dir, timeout, &[]).await
}

/// [`drain`] with environment settings.
async fn drain_with(
    broker: &Tansu,
    dir: &std::path::Path,
    timeout: &str,
    env: &[(&str, &str)],
) -> (Output, Duration) {
    let mut command = fp_relay();
    command.envs(env.iter().copied());
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

/// With `dedup.topic` set, `--timeout` covers loading the dedup window and the exit too
/// (against a frozen broker, `--timeout 2s` took 12.1 s: the load ran before the deadline
/// started and the exit waited for a metadata call).
#[tokio::test(flavor = "multi_thread")]
async fn spool_drain_with_a_dedup_topic_keeps_its_deadline_against_a_frozen_broker() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let relay = RelayProcess::start_with(&broker, &spooling_env(&dir.display().to_string())).await;
    broker.freeze();
    spool_all(&relay, 1..=5).await;
    relay.kill();
    let dedup = [
        ("FP_RELAY_DEDUP_ENABLED", "true"),
        ("FP_RELAY_DEDUP_TOPIC", "fp.dedup"),
    ];
    let (timed_out, took) = drain_with(&broker, &dir, "2s", &dedup).await;
    let stderr = String::from_utf8_lossy(&timed_out.stderr);
    eprintln!("spool drain --timeout 2s with dedup.topic, frozen broker: {took:?}");
    assert_eq!(timed_out.status.code(), Some(1), "{stderr}");
    assert!(
        took < Duration::from_secs(5),
        "exited after {took:?}: {stderr}"
    );
    broker.thaw();
    drain_all(&broker, &dir, 1..=5).await;
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

/// The spool's database, as `nobody` cannot read it (chmod 000; EACCES), with ten events in it.
/// `spool drain` delivers what it can read (nothing), exits 1 naming the unreadable file, and
/// deletes nothing (it used to report "the spool is empty" and delete it). A relay starting on
/// it sets it aside and starts a new database: ready, and new events go straight to Kafka
/// (200, not 202: nothing readable waits). Once the file reads again its events follow, each
/// once.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_database_is_set_aside_kept_and_delivered_once_it_reads() {
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
    broker.freeze();
    let relay = RelayProcess::start_wrapped(&broker, &env, wrapper).await;
    for (id, status) in post_at_once(relay.addr, 1..=10, 0).await {
        assert_eq!(status, StatusCode::ACCEPTED, "event {id}");
    }
    relay.kill();
    broker.thaw();
    let db = dir.join("spool.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o000)).unwrap();

    let mut drain = Command::new(
        wrapper
            .first()
            .copied()
            .unwrap_or(env!("CARGO_BIN_EXE_fp-relay")),
    );
    if root {
        drain
            .args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_fp-relay"));
    }
    let bootstrap = broker.bootstrap();
    let drained = drain
        .args([
            "spool",
            "drain",
            "--dir",
            &dir_text,
            "--brokers",
            &bootstrap,
            "--timeout",
            "20s",
        ])
        .env_remove("FP_RELAY_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&drained.stderr);
    assert!(
        !drained.status.success(),
        "a drain that could not read everything fails: {stderr}"
    );
    assert!(stderr.contains("could not be read"), "{stderr}");
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("spool.db.unreadable-")
                && !name.ends_with("-wal")
                && !name.ends_with("-shm")
        })
        .collect();
    let [aside, ..] = aside.as_slice() else {
        panic!(
            "the unreadable database is kept aside: {:?}",
            std::fs::read_dir(&dir).unwrap().collect::<Vec<_>>()
        );
    };
    let held = ids_in_kafka(&broker, Duration::from_secs(1)).await;
    assert!(
        (1..=10).all(|id| !held.contains(&id)),
        "nothing could be read: {held:?}"
    );

    let relay = RelayProcess::start_wrapped(&broker, &env, wrapper).await;
    assert_eq!(
        metric(relay.admin, "fp_relay_spool_files_set_aside").await,
        1.0
    );
    let status = Command::new(env!("CARGO_BIN_EXE_fp-relay"))
        .args(["spool", "status", "--dir", &dir_text])
        .env_remove("FP_RELAY_CONFIG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success()
            && said.contains("set aside")
            && said.contains("spool.db.unreadable-"),
        "spool status, beside the running relay, names the file set aside: {said}"
    );
    let ready = get(relay.admin, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    for id in 11..=15 {
        assert_eq!(
            relay.post(event(id, 0)).await,
            StatusCode::OK,
            "event {id} goes straight to Kafka: nothing readable waits"
        );
    }
    std::fs::set_permissions(aside, std::fs::Permissions::from_mode(0o600)).unwrap();
    let followed = eventually(Duration::from_secs(30), async || {
        let held = ids_in_kafka(&broker, Duration::from_millis(500)).await;
        (1..=15).all(|id| held.contains(&id))
    })
    .await;
    if !followed {
        let held = ids_in_kafka(&broker, Duration::from_millis(500)).await;
        let (_, logs) = relay.terminate().await;
        panic!("the set-aside database's events follow once it reads: in Kafka {held:?}; relay log: {logs:#?}");
    }
    assert_eq!(
        metric(relay.admin, "fp_relay_spool_files_set_aside").await,
        0.0
    );
    assert!(!aside.exists(), "taken in, then removed");
    let counts = copies(&broker).await;
    assert!(counts.values().all(|n| *n == 1), "each once: {counts:?}");
    let (status, _) = relay.terminate().await;
    assert!(status.success());
    let _ = std::fs::remove_dir_all(dir);
}

/// Readiness tells the truth about room: with Kafka frozen and a 1 MiB spool, 3 KB events are
/// answered 202 until the spool is full, and `/readyz` says "not ready" before the first one
/// is refused for room (it used to stay ready while every event was answered 503: it compared
/// held bytes with the limit, and a frozen broker left the producer "ok").
#[tokio::test(flavor = "multi_thread")]
async fn a_spool_without_room_for_the_largest_event_is_not_ready() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let dir_text = dir.display().to_string();
    let mut env = spooling_env(&dir_text);
    env.push(("FP_RELAY_SPOOL_MAX_BYTES", "1048576"));
    env.push(("FP_RELAY_HTTP_MAX_BODY_BYTES", "65536"));
    let relay = RelayProcess::start_with(&broker, &env).await;
    broker.freeze();
    let (mut spooled, mut refused) = (0, 0);
    for id in 1..=400u64 {
        let readyz = get(relay.admin, "/readyz").await;
        let ready = readyz.status == StatusCode::OK;
        // Ready because of the spool alone: the relay knows Kafka is down.
        let kafka_known_down = !readyz.text().contains("\"kafka_producer\":\"ok\"");
        let status = relay.post(event(id, 3000)).await;
        if id % 50 == 0 {
            eprintln!(
                "event {id}: {status}, readyz {} {}",
                readyz.status,
                readyz.text()
            );
        }
        if ready {
            if kafka_known_down {
                assert_eq!(
                    status,
                    StatusCode::ACCEPTED,
                    "ready, so event {id} must fit"
                );
            }
            spooled += 1;
        } else {
            refused += 1;
            if refused > 3 {
                break;
            }
        }
    }
    eprintln!("{spooled} spooled while ready");
    assert!(
        spooled > 250,
        "the spool filled to near its limit first: {spooled}"
    );
    assert!(
        refused > 0,
        "readiness went false once the largest event would not fit"
    );
    assert_eq!(metric(relay.admin, "fp_relay_ready").await, 0.0);
    broker.thaw();
    let (status, _) = relay.terminate().await;
    assert!(status.success());
    let _ = std::fs::remove_dir_all(dir);
}

/// Under a file size limit (`prlimit --fsize`), a write fails with EFBIG: the relay answers 503
/// and says "not ready" for as long as a write of the largest record it may be sent does not
/// work (with Kafka frozen, nothing drains, so that is until Kafka is back and replay frees
/// room), and then accepts. A probe smaller than a record once said "ready" while every
/// real write still failed.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_failed_write_readiness_returns_only_with_a_real_write() {
    let broker = Tansu::start();
    let dir = spool_dir();
    let dir_text = dir.display().to_string();
    let mut env = spooling_env(&dir_text);
    env.push(("FP_RELAY_HTTP_MAX_BODY_BYTES", "8192"));
    let relay = RelayProcess::start_wrapped(&broker, &env, &["prlimit", "--fsize=1048576"]).await;
    broker.freeze();
    let mut refused = None;
    for id in 1..=600u64 {
        let status = relay.post(event(id, 4000)).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(
                id > 1,
                "a backlog first: with none, readiness goes by the producer"
            );
            refused = Some(id);
            break;
        }
        assert_eq!(status, StatusCode::ACCEPTED, "event {id}");
    }
    let refused = refused.expect("a write reached the file size limit");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ready = get(relay.admin, "/readyz").await;
        assert_eq!(
            ready.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "no write of a record works yet: {}",
            ready.text()
        );
    }
    broker.thaw();
    assert!(
        eventually(Duration::from_secs(30), async || get(
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
        let status = relay.post(event(id, 4000)).await;
        assert!(
            status.is_success(),
            "ready means writes work: event {id}: {status}"
        );
    }
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
/// the dead-letter topic take are quarantined, count against the spool, and `fp-relay spool
/// requeue` puts them back once: a run that fails half way (one topic still refusing) leaves
/// exactly the rest for the next run, and a run after the last publishes nothing.
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

    // Neither their topic nor the dead-letter topic takes them (not authorised): quarantined.
    const DENIED: &str = "firstpromoter.lead_cancelled";
    const DENIED_TOO: &str = "firstpromoter.refund";
    for topic in [DENIED, DENIED_TOO] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    for topic in [DENIED, DENIED_TOO, "firstpromoter.dead_letter"] {
        cluster
            .topic_error(
                topic,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
            )
            .unwrap();
    }
    for (id, kind) in [(6, "lead_cancelled"), (7, "refund"), (8, "lead_cancelled")] {
        let body = format!(r#"{{"event":{{"id":{id},"type":"{kind}"}},"data":{{"id":{id}}}}}"#);
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
    let status = fp_relay()
        .args(["spool", "status", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{said}");
    assert!(said.contains("pending: 0 record(s)"), "{said}");
    assert!(
        said.contains("firstpromoter.lead_cancelled: 2 record(s)")
            && said.contains("firstpromoter.refund: 1 record(s)")
            && said.contains("TopicAuthorizationFailed"),
        "spool status lists the quarantine by topic and reason: {said}"
    );

    // Fixed for one topic only: the first run publishes 6, fails on 7, and stops; the
    // second (both fixed) publishes 7 and 8; the third, nothing.
    for topic in [DENIED, "firstpromoter.dead_letter"] {
        cluster
            .topic_error(topic, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
            .unwrap();
    }
    for run in 0..3 {
        if run == 1 {
            cluster
                .topic_error(DENIED_TOO, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
                .unwrap();
        }
        let mut command = fp_relay();
        command
            .args(["spool", "requeue", "--dir"])
            .arg(&dir)
            .args(["--brokers", &bootstrap]);
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        match run {
            0 => {
                assert!(
                    !output.status.success(),
                    "a run that stops half way fails: {stdout}"
                );
                assert!(stderr.contains("1 published before it"), "{stderr}");
            }
            1 => {
                assert!(output.status.success(), "{stdout}{stderr}");
                assert!(stdout.contains("2 record(s)"), "run {run}: {stdout}");
            }
            _ => {
                assert!(output.status.success(), "{stdout}{stderr}");
                assert!(stdout.contains("0 record(s)"), "run {run}: {stdout}");
            }
        }
    }
    let mut requeued = consume(
        &bootstrap,
        DENIED,
        2,
        Duration::from_secs(10),
        Duration::from_secs(1),
    )
    .await;
    requeued.extend(
        consume(
            &bootstrap,
            DENIED_TOO,
            1,
            Duration::from_secs(10),
            Duration::from_secs(1),
        )
        .await,
    );
    let mut ids: Vec<u64> = requeued
        .iter()
        .filter_map(|m| m.header("fp-event-id")?.parse().ok())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [6, 7, 8], "each once");
    assert!(requeued
        .iter()
        .all(|m| m.header("fp-requeued-from") == Some("quarantine")
            && m.header("fp-quarantine-reason").is_none()));
    let db = rusqlite::Connection::open(dir.join("spool.db")).unwrap();
    let left: i64 = db
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "nothing left in the spool");
    let _ = std::fs::remove_dir_all(dir);
}
