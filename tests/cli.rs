//! The `fp-relay` binary as an operator runs it: config checking, errors that name the field,
//! and a real process serving against tansu that exits cleanly on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{consume, free_port, sample, Tansu};
use http::StatusCode;

fn fp_relay() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fp-relay"));
    // The test's own environment must not leak configuration into the process under test.
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("FP_RELAY_")) {
        command.env_remove(name);
    }
    command
}

#[test]
fn check_config_accepts_the_shipped_example_and_masks_secrets() {
    let output = fp_relay()
        .args([
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/relay.toml"),
        ])
        .env("FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD", "hunter2")
        .env(
            "FP_RELAY_AUTH_PATH_TOKENS",
            r#"["v1-path-token-0123456789"]"#,
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("valid"));
    assert!(
        stdout.contains("sasl.password"),
        "the override is shown: {stdout}"
    );
    assert!(!stdout.contains("hunter2"), "but masked: {stdout}");
    assert!(
        !stdout.contains("v1-path-token-0123456789"),
        "auth secrets masked too: {stdout}"
    );
}

#[test]
/// check-config answers as `serve` would: the shipped file without credentials is refused
/// (exit 2) with how to fix it and that the rest is valid; with --insecure-no-auth it is valid,
/// and the effective configuration shows what the file says.
fn check_config_refuses_what_serve_refuses_and_says_how_to_fix_it() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/config/relay.toml");
    let plain = fp_relay()
        .args(["check-config", "--config", file])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: auth: no credentials configured")
            && stderr.contains("everything else in it is valid")
            && stderr.contains("--insecure-no-auth")
            && stderr.contains("FP_RELAY_AUTH_PATH_TOKENS"),
        "says how to fix it: {stderr}"
    );
    assert!(
        plain.stdout.is_empty(),
        "no 'valid' when serve would refuse it"
    );
    let with_token = fp_relay()
        .args(["check-config", "--config", file])
        .env(
            "FP_RELAY_AUTH_PATH_TOKENS",
            r#"["v1-path-token-0123456789"]"#,
        )
        .output()
        .unwrap();
    assert_eq!(with_token.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&with_token.stdout);
    assert!(
        stdout.contains("insecure_no_auth = false"),
        "the effective configuration says what the file says: {stdout}"
    );
    let insecure = fp_relay()
        .args(["check-config", "--config", file, "--insecure-no-auth"])
        .output()
        .unwrap();
    assert_eq!(insecure.status.code(), Some(0));
    assert!(insecure.stderr.is_empty(), "no warning when told");
}

/// A second `serve --dev` fails on the busy port before it starts (and advertises) a broker.
#[test]
fn a_second_dev_relay_names_the_busy_port_before_starting_a_broker() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let output = fp_relay()
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("cannot bind 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("embedded Kafka-protocol broker at"),
        "{stderr}"
    );
}

#[test]
fn a_port_in_use_is_reported_once_without_repeating_the_cause() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let output = fp_relay()
        .args(["serve", "--insecure-no-auth", "--brokers", "127.0.0.1:1"])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot bind"), "{stderr}");
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "the cause once: {stderr}"
    );
}

#[test]
fn tail_and_respond_pass_kafka_properties_to_their_client() {
    for tool in ["tail", "respond"] {
        let output = fp_relay()
            .args([tool, "--brokers", "127.0.0.1:1", "-X", "no.such.property=1"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{tool}: {stderr}");
        assert!(
            stderr.contains("no.such.property"),
            "{tool} hands -X to librdkafka, which names what it refuses: {stderr}"
        );
        let malformed = fp_relay()
            .args([tool, "-X", "no-equals-sign"])
            .output()
            .unwrap();
        assert_eq!(malformed.status.code(), Some(2), "{tool}: clap refuses it");
    }
}

#[test]
fn config_errors_name_the_field_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("fp-relay-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[kafka]\nack_timeout = \"20s\"\n", "kafka.ack_timeout"),
        ("[kafka]\nbrokerz = \"x:1\"\n", "brokerz"),
        (
            "[fulfilment]\ntimeout_status = 200\n",
            "fulfilment.timeout_status",
        ),
        ("[http\n", "relay.toml"),
    ];
    for (text, field) in cases {
        let path = dir.join("relay.toml");
        std::fs::write(&path, text).unwrap();
        for subcommand in [
            &["check-config", "--config"][..],
            &["serve", "--config"][..],
        ] {
            let output = fp_relay()
                .args(subcommand)
                .arg(&path)
                .env("FP_RELAY_AUTH_INSECURE_NO_AUTH", "true")
                .output()
                .unwrap();
            assert_eq!(output.status.code(), Some(2), "{text}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains(field), "{text}: {stderr}");
        }
    }
    let output = fp_relay()
        .args(["serve", "--insecure-no-auth"])
        .env("FP_RELAY_KAFKA_ACK_TIMEOUT", "1 fortnight")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("kafka.ack_timeout"));
}

/// Every command that reads the configuration answers an unusable one as `serve` does: exit
/// 2, the key and the variable that sets it, and for a duration or a size an accepted form.
#[test]
fn every_command_names_the_key_its_variable_and_an_accepted_form_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("fp-relay-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let commands: [&[&str]; 5] = [
        &["check-config"],
        &["serve"],
        &["spool", "drain", "--dir", dir.to_str().unwrap()],
        &["firstpromoter", "status"],
        &["firstpromoter", "recover", "--since", "1h"],
    ];
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "FP_RELAY_KAFKA_ACK_TIMEOUT",
            "5x",
            &["kafka.ack_timeout", "FP_RELAY_KAFKA_ACK_TIMEOUT", "\"10s\""],
        ),
        (
            "FP_RELAY_KAFKA_ACK_TIMEOUT",
            "5",
            &[
                "kafka.ack_timeout",
                "FP_RELAY_KAFKA_ACK_TIMEOUT",
                "\"1m30s\"",
            ],
        ),
        (
            "FP_RELAY_SPOOL_MAX_BYTES",
            "2MiB",
            &["spool.max_bytes", "FP_RELAY_SPOOL_MAX_BYTES", "1048576"],
        ),
        (
            "FP_RELAY_HTTP_SHUTDOWN_TIMEOUT",
            "soon",
            &[
                "http.shutdown_timeout",
                "FP_RELAY_HTTP_SHUTDOWN_TIMEOUT",
                "500ms",
            ],
        ),
    ];
    for (variable, value, wanted) in cases {
        for command in commands {
            let output = fp_relay()
                .args(command)
                .env("FP_RELAY_AUTH_INSECURE_NO_AUTH", "true")
                .env(variable, value)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{command:?} {variable}={value}: {stderr}"
            );
            for text in wanted {
                assert!(
                    stderr.contains(text),
                    "{command:?} {variable}={value}: no {text} in {stderr}"
                );
            }
        }
    }
    // The same rule from a file names the variable too (the other place to set it).
    let path = dir.join("relay.toml");
    std::fs::write(&path, "[kafka]\nack_timeout = 5\n").unwrap();
    let output = fp_relay()
        .args(["check-config", "--insecure-no-auth", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("kafka.ack_timeout (FP_RELAY_KAFKA_ACK_TIMEOUT)")
            && stderr.contains("\"10s\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A token where a list belongs (the natural mistake with a Secret) is refused without the
/// token in the message, with the form that works.
#[test]
fn a_bare_secret_where_a_list_belongs_is_refused_without_showing_it() {
    let token = "a-bare-token-that-must-stay-secret";
    for variable in [
        "FP_RELAY_AUTH_TOKENS",
        "FP_RELAY_AUTH_PATH_TOKENS",
        "FP_RELAY_AUTH_SIGNATURE_SECRETS",
    ] {
        for command in [&["check-config"][..], &["serve"][..]] {
            let output = fp_relay()
                .args(command)
                .env(variable, token)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{variable}: {stderr}");
            assert!(
                !stderr.contains(token),
                "{variable}: the secret leaked: {stderr}"
            );
            assert!(
                stderr.contains(&format!("{variable}='[\"")),
                "{variable}: says how to write it: {stderr}"
            );
        }
    }
}

/// check-config without a file checks an environment-only setup (as the sidecar manifest's).
#[test]
fn check_config_without_a_file_checks_defaults_and_environment() {
    let output = fp_relay()
        .arg("check-config")
        .env("FP_RELAY_KAFKA_BROKERS", "kafka-1:9092,kafka-2:9092")
        .env("FP_RELAY_AUTH_TOKENS", r#"["a-token-of-sixteen-chars"]"#)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("environment (no --config): valid"),
        "{stdout}"
    );
    assert!(stdout.contains("kafka-1:9092,kafka-2:9092"), "{stdout}");
    assert!(!stdout.contains("a-token-of-sixteen-chars"), "{stdout}");
    let refused = fp_relay().arg("check-config").output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "no credentials: refused");
}

/// The FirstPromoter commands without API settings name both settings and their variables at
/// once, and exit 2 like every configuration error.
#[test]
fn firstpromoter_commands_without_api_settings_name_both_variables() {
    for command in ["status", "subscribe"] {
        let output = fp_relay()
            .args(["firstpromoter", command])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        for text in [
            "firstpromoter.api_key (FP_RELAY_FIRSTPROMOTER_API_KEY)",
            "FP_RELAY_FIRSTPROMOTER_ACCOUNT_ID",
            &format!("for `fp-relay firstpromoter {command}`"),
        ] {
            assert!(stderr.contains(text), "{command}: no {text:?} in {stderr}");
        }
    }
}

/// Nothing dead-lettered yet means nothing to move: a success, said so.
#[test]
fn redrive_with_no_dead_letter_topic_yet_moves_nothing_and_succeeds() {
    let broker = Tansu::start();
    for dry_run in [true, false] {
        let mut command = fp_relay();
        command.args(["redrive", "--brokers", &broker.bootstrap()]);
        if dry_run {
            command.arg("--dry-run");
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("nothing to move"), "{stdout}");
    }
}

#[test]
fn help_explains_every_subcommand() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["check-config", "--help"],
        &["respond", "--help"],
    ] {
        let output = fp_relay().args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("Usage: fp-relay"), "{args:?}: {text}");
    }
    let serve = fp_relay().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&serve.stdout);
    for expected in [
        "--config",
        "--listen",
        "--admin-listen",
        "--brokers",
        "--dev",
        "FP_RELAY_KAFKA_BROKERS",
    ] {
        assert!(text.contains(expected), "serve --help mentions {expected}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_against_a_real_broker_and_exits_0_on_sigterm() {
    let broker = Tansu::start();
    let (port, admin) = (free_port(), free_port());
    let child = fp_relay()
        .args([
            "serve",
            "--brokers",
            &broker.bootstrap(),
            "--insecure-no-auth",
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .env("FP_RELAY_KAFKA_ACK_TIMEOUT", "2s")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    let started = Instant::now();
    while common::try_get(admin_addr, "/readyz").await != Some(StatusCode::OK) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "relay never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let body = sample("v1/promoter_signed_up.json");
    let reply = common::send(addr, "POST", "/webhooks/firstpromoter", &[], body.clone()).await;
    assert_eq!(reply.status, StatusCode::OK);
    // A refusal with an event id (Kafka frozen) and one without (not JSON).
    broker.freeze();
    let refused = common::send(addr, "POST", "/webhooks/firstpromoter", &[], body.clone()).await;
    broker.thaw();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let broken = common::send(
        addr,
        "POST",
        "/webhooks/firstpromoter",
        &[],
        "{\"secret\":\"s3cr3t\"".into(),
    )
    .await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.status.code(), Some(0), "clean exit on SIGTERM");
    let logs = String::from_utf8_lossy(&status.stderr);
    let lines: Vec<serde_json::Value> = BufReader::new(logs.as_bytes())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).expect("every log line is JSON"))
        .collect();
    assert!(lines.iter().any(|l| l["message"] == "fp-relay stopped"));
    let refusal = |reason: &str| {
        lines
            .iter()
            .find(|l| l["message"] == "request refused" && l["reason"] == reason)
            .cloned()
    };
    let unavailable = refusal("kafka_unavailable").expect("one line for the 503");
    assert_eq!(unavailable["event_id"], "22736308");
    assert_eq!(unavailable["event_type"], "promoter_signed_up");
    assert_eq!(unavailable["status"], 503);
    let bad = refusal("bad_json").expect("one line for the 400");
    assert_eq!(bad["event_id"], "-");
    for secret in [
        "Xk29-tmp-pass",
        "hjsmLQwMounBWxeqQS2cMXYp8epADJmB",
        "s3cr3t",
        "temp_password",
    ] {
        assert!(!logs.contains(secret), "logs must not contain {secret}");
    }
    let messages = consume(
        &broker.bootstrap(),
        "firstpromoter.promoter_signed_up",
        1,
        Duration::from_secs(10),
        Duration::ZERO,
    )
    .await;
    assert_eq!(messages.len(), 1);
}

/// A Kubernetes Service named fp-relay-admin or fp-relay-kafka in the namespace injects
/// variables that look like settings; the relay starts anyway (it used to refuse them as
/// unknown keys, so every replica crash-looped at its next restart).
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_service_link_variables_do_not_stop_the_relay() {
    let broker = common::Tansu::start();
    let relay = common::RelayProcess::start_with(
        &broker,
        &[
            ("FP_RELAY_ADMIN_SERVICE_HOST", "10.96.0.7"),
            ("FP_RELAY_ADMIN_SERVICE_PORT", "9090"),
            ("FP_RELAY_ADMIN_PORT", "tcp://10.96.0.7:9090"),
            ("FP_RELAY_ADMIN_PORT_9090_TCP_ADDR", "10.96.0.7"),
            ("FP_RELAY_KAFKA_SERVICE_HOST", "10.96.0.8"),
            ("FP_RELAY_KAFKA_PORT_9092_TCP", "tcp://10.96.0.8:9092"),
        ],
    )
    .await;
    let (status, _) = relay.terminate().await;
    assert!(status.success());
}

/// `tail` and `respond` pointed at an address where no broker answers stop with an error that
/// names the address (respond used to wait forever, logging about 9 lines a second).
#[test]
fn tools_pointed_at_no_broker_say_so_and_exit() {
    for tool in ["tail", "respond"] {
        let started = Instant::now();
        let output = fp_relay()
            .args([tool, "--brokers", "127.0.0.1:1"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{tool}: {stderr}");
        assert!(
            stderr.contains("cannot reach Kafka at 127.0.0.1:1"),
            "{tool}: {stderr}"
        );
        assert!(
            stderr.lines().count() <= 3,
            "{tool}: a few lines, not a flood: {stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "{tool}");
    }
}

/// What `serve` says in its first seconds against `brokers` (killed after `seconds`).
fn first_words(brokers: Option<&str>, seconds: u64) -> String {
    let mut command = fp_relay();
    command.args([
        "serve",
        "--insecure-no-auth",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    if let Some(brokers) = brokers {
        command.args(["--brokers", brokers]);
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(seconds));
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A broker name that does not resolve, no broker chosen at all, and an address that is an
/// HTTP port each get words that say so (they all read like a broker that is down before).
#[test]
fn serve_says_what_is_wrong_with_the_broker_address() {
    let unresolved = first_words(Some("no-such-host.invalid:9092"), 4);
    assert!(
        unresolved.contains("cannot resolve no-such-host.invalid:9092"),
        "{unresolved}"
    );
    let default = first_words(None, 4);
    assert!(
        default.contains("nothing answers at localhost:9092, the default")
            && default.contains("serve --dev"),
        "{default}"
    );
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = http.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in http.incoming().flatten() {
            let mut stream = stream;
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            );
        }
    });
    let not_kafka = first_words(Some(&format!("127.0.0.1:{port}")), 4);
    assert!(
        not_kafka.contains("answered with something that is not Kafka"),
        "{not_kafka}"
    );
    let advice = not_kafka
        .lines()
        .filter(|l| l.contains("increase receive.message.max.bytes") && !l.contains("not Kafka"))
        .count();
    assert_eq!(
        advice, 0,
        "librdkafka's misleading advice is not repeated: {not_kafka}"
    );
}

/// `respond | head -1`: once `head` has its line and closes the pipe, respond ends quietly
/// with status 0 (it used to abort, status 134, on the failed write).
#[tokio::test(flavor = "multi_thread")]
async fn respond_piped_into_head_ends_quietly_when_the_pipe_closes() {
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap();
    for n in 0..3 {
        let id = format!("00000000-0000-0000-0000-00000000000{n}");
        common::produce(
            &bootstrap,
            "firstpromoter.fulfilment_pending",
            Some(0),
            None,
            &[
                ("fp-correlation-id", &id),
                ("fp-reply-topic", "firstpromoter.fulfilment_replies"),
            ],
            r#"{"event":{"type":"fulfilment_pending"}}"#,
        )
        .await;
    }
    let mut responder = fp_relay()
        .args(["respond", "--brokers", &bootstrap, "--delay", "500ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = responder.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        // The other two answers (500 ms each, at once) land in the pipe before it closes, so
        // no later write would notice: respond must see the closed pipe by itself.
        std::thread::sleep(Duration::from_millis(1500));
        line // the reader, and so the pipe, is closed here
    })
    .await
    .unwrap();
    assert!(first.starts_with("fulfilled -> "), "{first}");
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = responder.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = responder.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "ended by itself, quietly, once its output was closed"
    );
}

/// Like the examples, `respond` leaves alone a request whose fp-deadline has passed (the relay
/// answered FirstPromoter already) and answers the others.
#[tokio::test(flavor = "multi_thread")]
async fn respond_skips_requests_past_their_deadline() {
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap();
    let now = std::time::SystemTime::now();
    let past = fp_relay::kafka::record::rfc3339(now - Duration::from_secs(1));
    let future = fp_relay::kafka::record::rfc3339(now + Duration::from_secs(600));
    for (id, deadline) in [
        ("late", Some(&past)),
        ("timely", Some(&future)),
        ("open", None),
    ] {
        let mut headers = vec![
            ("fp-correlation-id", id),
            ("fp-reply-topic", "firstpromoter.fulfilment_replies"),
        ];
        if let Some(deadline) = deadline {
            headers.push(("fp-deadline", deadline.as_str()));
        }
        common::produce(
            &bootstrap,
            "firstpromoter.fulfilment_pending",
            Some(0),
            None,
            &headers,
            r#"{"event":{"type":"fulfilment_pending"}}"#,
        )
        .await;
    }
    let mut responder = fp_relay()
        .args(["respond", "--brokers", &bootstrap])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = responder.stdout.take().unwrap();
    let answered = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        (0..2)
            .map(|_| {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                line
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let replies = common::consume_all(
        &bootstrap,
        "firstpromoter.fulfilment_replies",
        Duration::from_secs(2),
    )
    .await;
    let _ = responder.kill();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut responder.stderr.take().unwrap(), &mut stderr).unwrap();
    let _ = responder.wait();
    let mut ids: Vec<_> = replies
        .iter()
        .filter_map(|r| r.header("fp-correlation-id"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["open", "timely"], "{answered:?}");
    assert!(
        stderr.contains("old request late: left alone, its fp-deadline passed"),
        "{stderr}"
    );
}
