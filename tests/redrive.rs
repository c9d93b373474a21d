//! `fp-relay redrive` run the way an operator runs it under stress: twice from shell history,
//! with a poison record in the way, interrupted half way, and twice at once. Each test counts
//! what reached the original topics: every dead letter put back exactly once.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{consume_all, create_topic, Tansu};
use fp_relay::tools::redrive::{self, RedriveOptions};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const DEAD: &str = "firstpromoter.dead_letter";
const TARGET: &str = "firstpromoter.lead_signup";

/// Writes `count` dead letters of standard events Kafka refused, event ids `from..from+count`,
/// bound for `topic`, spread over the dead-letter topic's partitions by key.
async fn dead_letters(bootstrap: &str, topic: &str, from: usize, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for id in from..from + count {
        let id = id.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "fp-dead-letter-reason",
                value: Some("kafka_refused: TopicAuthorizationFailed"),
            })
            .insert(Header {
                key: "fp-original-topic",
                value: Some(topic),
            })
            .insert(Header {
                key: "fp-event-id",
                value: Some(id.as_str()),
            });
        let payload = format!(r#"{{"event":{{"type":"lead_signup"}},"id":{id}}}"#);
        let record = FutureRecord::to(DEAD)
            .key(&id)
            .payload(&payload)
            .headers(headers);
        pending.push(producer.send_result(record).unwrap());
    }
    for delivery in pending {
        delivery.await.unwrap().unwrap();
    }
}

/// Event ids on `topic`, with how many times each is there.
async fn ids_on(bootstrap: &str, topic: &str) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for record in consume_all(bootstrap, topic, Duration::from_secs(3)).await {
        *ids.entry(record.header("fp-event-id").unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    ids
}

fn options(bootstrap: &str, since: Option<&str>) -> RedriveOptions {
    RedriveOptions {
        kafka: fp_relay::tools::KafkaArgs::at(bootstrap, &[]),
        dead_letter_topic: DEAD.to_owned(),
        reasons: vec!["kafka_refused".to_owned()],
        topics: Vec::new(),
        since: since.map(|s| redrive::parse_time(s).unwrap()),
        until: None,
        dry_run: false,
        group: None,
        idle_exit: Duration::from_secs(2),
    }
}

async fn run(options: &RedriveOptions) -> (redrive::Summary, String) {
    let mut out = Vec::new();
    let summary = redrive::run_until(options, &mut out, std::future::pending())
        .await
        .unwrap();
    (summary, String::from_utf8(out).unwrap())
}

/// `--since 1h` and an absolute `--since`, each run twice a few seconds apart: the second run
/// of each moves nothing, because a command line names its progress as written.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_command_twice_moves_each_record_once_whatever_the_clock() {
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap();
    dead_letters(&bootstrap, TARGET, 0, 20).await;
    let (first, out) = run(&options(&bootstrap, Some("1h"))).await;
    assert_eq!(first.moved, 20, "{out}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (second, out) = run(&options(&bootstrap, Some("1h"))).await;
    assert_eq!((second.read, second.moved), (0, 0), "{out}");

    let absolute =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(3600))
            .to_string();
    let (first, _) = run(&options(&bootstrap, Some(&absolute))).await;
    assert_eq!(first.moved, 20, "another command, its own progress");
    let (second, out) = run(&options(&bootstrap, Some(&absolute))).await;
    assert_eq!(second.moved, 0, "{out}");

    let ids = ids_on(&bootstrap, TARGET).await;
    assert_eq!(ids.len(), 20);
    assert!(
        ids.values().all(|n| *n == 2),
        "once per distinct command: {ids:?}"
    );
}

/// `fp-relay redrive --brokers <bootstrap> --reason kafka_refused`, no configuration file.
fn redrive_refused(bootstrap: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fp-relay"));
    command
        .args([
            "redrive",
            "--brokers",
            bootstrap,
            "--reason",
            "kafka_refused",
        ])
        .env_remove("FP_RELAY_CONFIG");
    command
}

/// A dead letter whose original topic Kafka refuses, ahead of five good ones: the five are
/// moved, the poison one is reported, passed and appended again for the next run, and the
/// binary exits 1 saying how many; fixed by hand, the next run of the same command moves it.
#[tokio::test(flavor = "multi_thread")]
async fn a_poison_record_is_reported_and_passed_and_does_not_hold_back_the_rest() {
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, DEAD, 1).await;
    dead_letters(&bootstrap, "not a valid topic name!", 100, 1).await;
    dead_letters(&bootstrap, TARGET, 0, 5).await;
    let redrive = |args: &[&str]| {
        redrive_refused(&bootstrap)
            .args(["--idle-exit", "2s"])
            .args(args)
            .output()
            .unwrap()
    };
    let first = redrive(&[]);
    let out = String::from_utf8_lossy(&first.stdout);
    let err = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(1), "{out}\n{err}");
    assert!(
        out.contains("could not be put back") && out.contains("not a valid topic name!"),
        "{out}"
    );
    assert!(
        out.contains("5 moved") && out.contains("1 could not be put back"),
        "{out}"
    );
    assert!(err.contains("1 record(s) could not be put back"), "{err}");
    let ids = ids_on(&bootstrap, TARGET).await;
    assert_eq!(ids.len(), 5, "the good ones moved: {ids:?}");

    // Still on the dead-letter topic, appended again with what Kafka said.
    let dead = consume_all(&bootstrap, DEAD, Duration::from_secs(2)).await;
    assert_eq!(dead.len(), 7);
    let again = dead.last().unwrap();
    assert_eq!(again.header("fp-event-id"), Some("100"));
    assert!(again.header("fp-redrive-error").is_some());
    assert_eq!(
        again.header("fp-original-topic"),
        Some("not a valid topic name!")
    );

    // The same command again: only the poison record is read, and it fails again (exit 1);
    // nothing else moves twice.
    let second = redrive(&[]);
    let out = String::from_utf8_lossy(&second.stdout);
    assert_eq!(second.status.code(), Some(1), "{out}");
    assert!(out.contains("1 read, 0 moved"), "{out}");
    assert_eq!(ids_on(&bootstrap, TARGET).await.len(), 5);
    assert!(ids_on(&bootstrap, TARGET).await.values().all(|n| *n == 1));
}

/// Ctrl-C half way through a long run, then the same command again: exit 130, and every
/// record is on its topic exactly once across the two runs.
#[tokio::test(flavor = "multi_thread")]
async fn interrupted_half_way_and_run_again_moves_everything_exactly_once() {
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, DEAD, 2).await;
    const COUNT: usize = 1500;
    dead_letters(&bootstrap, TARGET, 0, COUNT).await;
    let command = || {
        let mut command = redrive_refused(&bootstrap);
        command
            .args(["--since", "1h", "--idle-exit", "3s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let child = command().spawn().unwrap();
    let pid = child.id() as i32;
    // Until some, not all, have moved.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let moved = consume_all(&bootstrap, TARGET, Duration::from_millis(300))
            .await
            .len();
        if moved >= 100 {
            assert!(
                moved < COUNT,
                "the run finished before it could be interrupted"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "nothing moved");
    }
    // SAFETY: signalling a child process this test started.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let interrupted = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&interrupted.stdout);
    assert_eq!(interrupted.status.code(), Some(130), "{out}");
    assert!(out.contains("interrupted"), "{out}");

    let resumed = command().output().unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stdout)
    );
    let ids = ids_on(&bootstrap, TARGET).await;
    assert_eq!(ids.len(), COUNT, "every record moved");
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "moved twice: {twice:?}");
}

/// Two runs of the same command at once: the group gives each partition to one of them, so
/// between them every record moves exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_runs_at_once_never_both_move_a_record() {
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, DEAD, 2).await;
    const COUNT: usize = 800;
    dead_letters(&bootstrap, TARGET, 0, COUNT).await;
    let spawn = || {
        redrive_refused(&bootstrap)
            .args(["--idle-exit", "4s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (one, two) = (spawn(), spawn());
    let (one, two) = (
        one.wait_with_output().unwrap(),
        two.wait_with_output().unwrap(),
    );
    for run in [&one, &two] {
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stdout)
        );
    }
    let ids = ids_on(&bootstrap, TARGET).await;
    assert_eq!(ids.len(), COUNT, "every record moved");
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "moved twice: {} records; run one: {}; run two: {}",
        twice.len(),
        String::from_utf8_lossy(&one.stdout)
            .lines()
            .last()
            .unwrap_or(""),
        String::from_utf8_lossy(&two.stdout)
            .lines()
            .last()
            .unwrap_or("")
    );
}
