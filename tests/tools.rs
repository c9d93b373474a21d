//! The newcomer's tools as a newcomer runs them: `fp-relay send` against a relay on a real
//! broker, `fp-relay tail` showing what arrived, and `--help` of every subcommand pinned by
//! snapshots (regenerate with UPDATE_SNAPSHOTS=1).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::{consume, consume_all, free_port, produce, Tansu, TestRelay};
use fp_relay::tools::redrive::{self, RedriveOptions};
use fp_relay::tools::samples::SAMPLES;

fn fp_relay(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fp-relay"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("FP_RELAY_")) {
        command.env_remove(name);
    }
    command.args(args).env("COLUMNS", "100").output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn send_all_publishes_one_message_per_event_type_and_exits_0() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.fulfilment.timeout = Duration::from_millis(500);
    let relay = TestRelay::start_ready(config).await;
    let url = format!("http://{}{}", relay.addr, relay.path);
    let output = tokio::task::spawn_blocking(move || fp_relay(&["send", "--url", &url, "--all"]))
        .await
        .unwrap();
    let text = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("stays pending"),
        "fulfilment_pending's answer is explained: {text}"
    );
    // The summary: every standard event 200, fulfilment_pending 202 (nobody answers it here).
    assert!(
        text.contains(&format!("\n   200  {}\n", SAMPLES.len() - 1)),
        "{text}"
    );
    assert!(text.contains("\n   202  1\n"), "{text}");
    // Samples of one event type share its topic (commission.updated has two).
    let mut per_topic: std::collections::BTreeMap<String, (usize, bool)> = Default::default();
    for sample in SAMPLES {
        let entry = per_topic
            .entry(format!("firstpromoter.{}", sample.event_type))
            .or_default();
        entry.0 += 1;
        entry.1 = sample.version == fp_relay::webhook::envelope::WebhookVersion::V2;
    }
    for (topic, (count, v2)) in per_topic {
        let messages = consume(
            &broker.bootstrap(),
            &topic,
            count,
            Duration::from_secs(10),
            Duration::from_millis(500),
        )
        .await;
        assert_eq!(messages.len(), count, "{topic}");
        for message in messages.iter().filter(|_| v2) {
            let id = message.header("fp-event-id").unwrap();
            assert!(
                uuid::Uuid::parse_str(id).is_ok(),
                "v2 sends carry a fresh X-Event-Id: {id}"
            );
        }
    }
    relay.shutdown().await;
}

#[test]
fn send_against_a_stopped_relay_exits_non_zero_with_a_readable_message() {
    let url = format!("http://127.0.0.1:{}/webhooks/firstpromoter", free_port());
    let output = fp_relay(&[
        "send",
        "--url",
        &url,
        "--event",
        "lead_signup",
        "--timeout",
        "5s",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(text.contains("not delivered: cannot reach"), "{text}");
    assert!(text.contains("not acknowledged"), "{text}");
    let unknown = fp_relay(&["send", "--url", &url, "--event", "no_such_event"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("known: lead_signup"));
}

#[tokio::test(flavor = "multi_thread")]
async fn send_signs_v2_events_and_carries_tokens_as_configured() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.auth.insecure_no_auth = false;
    config.auth.signature_secrets = vec!["send-signing-secret-0123".into()];
    config.auth.require_signature = true;
    let relay = TestRelay::start_ready(config).await;
    let url = format!("http://{}{}", relay.addr, relay.path);
    let signed = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            fp_relay(&[
                "send",
                "--url",
                &url,
                "--event",
                "referral.created",
                "--secret",
                "send-signing-secret-0123",
            ])
        })
        .await
        .unwrap()
    };
    assert_eq!(signed.status.code(), Some(0), "{}", stdout(&signed));
    let unsigned = tokio::task::spawn_blocking(move || {
        fp_relay(&["send", "--url", &url, "--event", "referral.created"])
    })
    .await
    .unwrap();
    assert_eq!(unsigned.status.code(), Some(1));
    assert!(stdout(&unsigned).contains("401"), "{}", stdout(&unsigned));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_prints_what_send_sent_with_secrets_masked() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.redact.fields.clear(); // so only tail's own masking stands between the token and the screen
    let relay = TestRelay::start_ready(config).await;
    let url = format!("http://{}{}", relay.addr, relay.path);
    let sent = tokio::task::spawn_blocking(move || {
        fp_relay(&[
            "send",
            "--url",
            &url,
            "--event",
            "lead_signup",
            "--event",
            "promoter_accepted",
        ])
    })
    .await
    .unwrap();
    assert_eq!(sent.status.code(), Some(0));
    let bootstrap = broker.bootstrap();
    let tailed = tokio::task::spawn_blocking(move || {
        fp_relay(&[
            "tail",
            "--brokers",
            &bootstrap,
            "--from-beginning",
            "--count",
            "2",
            "--idle-exit",
            "20s",
        ])
    })
    .await
    .unwrap();
    let text = stdout(&tailed);
    assert_eq!(tailed.status.code(), Some(0), "{text}");
    for expected in [
        "── firstpromoter.lead_signup",
        "── firstpromoter.promoter_accepted",
        "fp-event-id: ",
        "ce_type: com.firstpromoter.lead_signup",
        "\"auth_token\": \"[redacted]\"",
    ] {
        assert!(
            text.contains(expected),
            "tail output lacks {expected:?}:\n{text}"
        );
    }
    assert!(
        !text.contains("hjsmLQwMounBWxeqQS2cMXYp8epADJmB"),
        "the promoter's token is masked"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_started_before_send_all_prints_every_record_exactly_once() {
    use std::io::{BufRead, BufReader, Read};
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(common::test_config(&broker.bootstrap())).await;
    let url = format!("http://{}{}", relay.addr, relay.path);
    // One topic exists before tail starts (its old record must not be shown), the rest are
    // created by `send --all` while tail runs (each read whole, none rewinding the others).
    let first = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            fp_relay(&["send", "--url", &url, "--event", "lead_signup"])
        })
        .await
        .unwrap()
    };
    assert_eq!(first.status.code(), Some(0));
    let mut tail = Command::new(env!("CARGO_BIN_EXE_fp-relay"))
        .args([
            "tail",
            "--brokers",
            &broker.bootstrap(),
            "--idle-exit",
            "6s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(tail.stderr.take().unwrap());
    let mut watching = String::new();
    stderr.read_line(&mut watching).unwrap();
    assert!(watching.starts_with("tail: watching"), "{watching}");
    let sent = tokio::task::spawn_blocking(move || fp_relay(&["send", "--url", &url, "--all"]))
        .await
        .unwrap();
    assert_eq!(sent.status.code(), Some(0), "{}", stdout(&sent));
    let mut text = String::new();
    tail.stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(tail.wait().unwrap().code(), Some(0));
    // The relay's note that it is asking about the fulfilment_pending sample's reward is on the
    // verdict topic: its own bookkeeping, not an event sent.
    let records: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("── ") && !l.starts_with("── firstpromoter.fulfilment_verdicts "))
        .collect();
    let distinct: std::collections::HashSet<&str> = records
        .iter()
        .map(|r| r.split("  key=").next().unwrap())
        .collect();
    assert_eq!(
        records.len(),
        SAMPLES.len(),
        "one record per event sent while tail ran:\n{}",
        records.join("\n")
    );
    assert_eq!(distinct.len(), records.len(), "no record printed twice");
    relay.shutdown().await;
}

#[test]
fn help_of_every_subcommand_matches_its_snapshot() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    for subcommand in [
        "",
        "serve",
        "check-config",
        "respond",
        "send",
        "tail",
        "redrive",
        "spool drain",
        "spool requeue",
        "spool status",
        "firstpromoter subscribe",
        "firstpromoter status",
        "firstpromoter recover",
    ] {
        let args: Vec<&str> = subcommand.split_whitespace().chain(["--help"]).collect();
        let output = fp_relay(&args);
        assert!(output.status.success());
        let name = if subcommand.is_empty() {
            "fp-relay".to_owned()
        } else {
            subcommand.replace(' ', "-")
        };
        let path = dir.join(format!("help-{name}.txt"));
        if update {
            std::fs::write(&path, &output.stdout).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{}: run with UPDATE_SNAPSHOTS=1", path.display()));
        assert_eq!(
            stdout(&output),
            expected,
            "`fp-relay {name} --help` changed; if intended, run with UPDATE_SNAPSHOTS=1"
        );
    }
}

/// `fp-relay redrive` puts dead letters back where they came from: `--dry-run` lists and moves
/// nothing, the real run moves what matches (headers restored, `fp-redriven-from` added), a
/// second run of the same command moves nothing, and what has nowhere to go is left.
#[tokio::test(flavor = "multi_thread")]
async fn redrive_moves_matching_dead_letters_back_once() {
    const DEAD: &str = "firstpromoter.dead_letter";
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap();
    let refused = [
        (
            "fp-dead-letter-reason",
            "kafka_refused: TopicAuthorizationFailed (Broker: Topic authorization failed)",
        ),
        ("fp-original-topic", "firstpromoter.lead_signup"),
        ("fp-event-id", "4711"),
    ];
    let key_refused = [
        ("fp-dead-letter-reason", "firstpromoter_401: Unauthorized"),
        ("fp-original-topic", "firstpromoter.fulfilment_replies"),
        (
            "fp-correlation-id",
            "v2:31:00000000-0000-0000-0000-000000000000",
        ),
    ];
    let unparseable = [("fp-dead-letter-reason", "bad_json: expected value")];
    for (headers, value) in [
        (&refused[..], r#"{"event":{"type":"lead_signup"}}"#),
        (&key_refused[..], r#"{"outcome":"fulfilled"}"#),
        (&unparseable[..], "{nope"),
    ] {
        produce(&bootstrap, DEAD, Some(0), Some("k"), headers, value).await;
    }
    let options = |dry_run: bool, reasons: &[&str]| RedriveOptions {
        kafka: fp_relay::tools::KafkaArgs::at(&bootstrap, &[]),
        dead_letter_topic: DEAD.to_owned(),
        reasons: reasons.iter().map(|r| r.to_string()).collect(),
        topics: Vec::new(),
        since: None,
        until: None,
        dry_run,
        group: None,
        idle_exit: Duration::from_secs(2),
    };
    let run = |options: RedriveOptions| async move {
        let mut out = Vec::new();
        let summary = redrive::run(&options, &mut out).await.unwrap();
        (summary, String::from_utf8(out).unwrap())
    };
    let (dry, listing) = run(options(true, &["kafka_refused"])).await;
    assert_eq!((dry.read, dry.moved), (3, 1), "{listing}");
    assert!(
        listing.contains("partition 0 offset 0: would move to firstpromoter.lead_signup"),
        "{listing}"
    );
    let lead_signups = consume_all(
        &bootstrap,
        "firstpromoter.lead_signup",
        Duration::from_secs(1),
    )
    .await;
    assert!(lead_signups.is_empty(), "a dry run moves nothing");

    let (real, listing) = run(options(false, &["kafka_refused"])).await;
    assert_eq!(
        (real.read, real.moved),
        (3, 1),
        "the dry run remembered nothing: {listing}"
    );
    let moved = consume(
        &bootstrap,
        "firstpromoter.lead_signup",
        1,
        Duration::from_secs(10),
        Duration::ZERO,
    )
    .await;
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].value, br#"{"event":{"type":"lead_signup"}}"#);
    assert_eq!(moved[0].key.as_deref(), Some("k"));
    assert_eq!(moved[0].header("fp-event-id"), Some("4711"));
    assert_eq!(
        moved[0].header("fp-redriven-from"),
        Some("firstpromoter.dead_letter/0/0")
    );
    assert!(moved[0].header("fp-dead-letter-reason").is_none());
    assert!(moved[0].header("fp-original-topic").is_none());

    let (again, listing) = run(options(false, &["kafka_refused"])).await;
    assert_eq!(
        (again.read, again.moved),
        (0, 0),
        "nothing twice: {listing}"
    );

    let (everything, listing) = run(options(false, &[])).await;
    assert_eq!(everything.moved, 2, "{listing}");
    assert!(
        listing.contains("skipped (no fp-original-topic)"),
        "{listing}"
    );
    let replies = consume(
        &bootstrap,
        "firstpromoter.fulfilment_replies",
        1,
        Duration::from_secs(10),
        Duration::ZERO,
    )
    .await;
    assert_eq!(
        replies[0].header("fp-correlation-id"),
        Some("v2:31:00000000-0000-0000-0000-000000000000")
    );
}
