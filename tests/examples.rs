//! The downstream examples, run against the real relay and a real tansu broker: the Python
//! (confluent-kafka) and Node.js (kafkajs) fulfillers each answer a v1 `fulfilment_pending`
//! (the relay's HTTP answer proves it) and a v2 approved commission (the fake FirstPromoter
//! API's `mark_fulfilled` call proves it), answer a duplicate request once, continue the trace,
//! and stop cleanly; the Python consumer prints events with their CloudEvents headers.
//! Dependencies come from scripts/ensure-examples.sh (pinned, cached).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{consume_all, eventually, produce, sample, send, Tansu, TestRelay};
use fp_relay::config::Config;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

const REQUESTS: &str = "firstpromoter.fulfilment_pending";
const REPLIES: &str = "firstpromoter.fulfilment_replies";
/// The commission of samples/v2/commission.updated.reward.json.
const COMMISSION: u64 = 5512944;
const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const WAIT: Duration = Duration::from_secs(30);

/// The interpreter and node_modules the examples run with: scripts/test.sh installs them before
/// any test starts and names them in two variables; a test run by hand installs them itself
/// (the script is safe to run from several test binaries at once).
fn toolchain() -> (PathBuf, PathBuf) {
    if let (Ok(python), Ok(node_path)) = (
        std::env::var("FP_RELAY_EXAMPLES_PYTHON"),
        std::env::var("FP_RELAY_EXAMPLES_NODE_PATH"),
    ) {
        return (PathBuf::from(python), PathBuf::from(node_path));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join("scripts/ensure-examples.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/ensure-examples.sh runs");
    assert!(output.status.success(), "scripts/ensure-examples.sh failed");
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines();
    (
        PathBuf::from(lines.next().unwrap()),
        PathBuf::from(lines.next().unwrap()),
    )
}

/// A running example, its stderr lines collected.
struct Example {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Example {
    fn start(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the example starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Self { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_for(&self, text: &str) -> bool {
        eventually(WAIT, async || self.lines().iter().any(|l| l.contains(text))).await
    }

    /// SIGTERM, then the exit code (`None` if it had to be killed after 15 s).
    async fn terminate(mut self) -> Option<i32> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        for _ in 0..150 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mark_fulfilled` as FirstPromoter answers it, recording the ids.
async fn fake_firstpromoter() -> (Arc<Mutex<Vec<u64>>>, SocketAddr) {
    let marked = Arc::new(Mutex::new(Vec::new()));
    let record = marked.clone();
    let addr = common::serve_http(move |request: Request<Incoming>| {
        let record = record.clone();
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            record.lock().unwrap().extend(
                body["ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(serde_json::Value::as_u64),
            );
            Response::new(Full::new(Bytes::from_static(br#"{"status":"completed"}"#)))
        }
    })
    .await;
    (marked, addr)
}

/// The relay v2 fulfilment tests use, holding v1 requests 10 s for the fulfillers.
fn config(broker: &Tansu, api: SocketAddr) -> Config {
    let mut config = common::v2_config(broker, api);
    config.fulfilment.timeout = Duration::from_secs(10);
    config.validate().expect("valid config");
    config
}

/// One fulfiller through the whole contract.
async fn round_trip(fulfiller: impl FnOnce(&str, &str) -> Command) {
    let broker = Tansu::start();
    let (marked, api) = fake_firstpromoter().await;
    common::create_topic(&broker.bootstrap(), REQUESTS, 4).await;
    let relay = TestRelay::start_ready(config(&broker, api)).await;
    let group = format!("fulfiller-{}", uuid::Uuid::new_v4().simple());
    let example = Example::start(fulfiller(&broker.bootstrap(), &group));
    assert!(
        example.wait_for("fulfiller ready").await,
        "the fulfiller never joined its group: {:#?}",
        example.lines()
    );

    // v1: the fulfiller's answer is the relay's HTTP answer.
    let v1 = send(
        relay.addr,
        "POST",
        &relay.path,
        &[("traceparent", INCOMING)],
        sample("v1/fulfilment_pending.json"),
    )
    .await;
    assert_eq!(
        v1.status,
        StatusCode::OK,
        "{} {:#?}",
        v1.text(),
        example.lines()
    );
    assert!(v1.json()["reason"].as_str().unwrap().starts_with("granted"));

    // v2: the fulfiller's answer becomes FirstPromoter's mark_fulfilled call.
    let v2 = relay
        .post(sample("v2/commission.updated.reward.json"))
        .await;
    assert!(v2.status.is_success(), "{}", v2.text());
    assert!(
        eventually(WAIT, async || marked.lock().unwrap().contains(&COMMISSION)).await,
        "mark_fulfilled never called: {:#?}",
        example.lines()
    );
    assert_eq!(*marked.lock().unwrap(), vec![COMMISSION], "marked once");

    // The same request twice (Kafka redelivers after a rebalance): answered once.
    let duplicate = format!("dup-{}", uuid::Uuid::new_v4());
    for _ in 0..2 {
        produce(
            &broker.bootstrap(),
            REQUESTS,
            Some(0),
            Some("771204"),
            &[
                ("fp-correlation-id", duplicate.as_str()),
                ("fp-reply-topic", REPLIES),
                ("traceparent", INCOMING),
            ],
            std::str::from_utf8(&sample("v1/fulfilment_pending.json")).unwrap(),
        )
        .await;
    }
    assert!(
        example.wait_for("duplicate request").await,
        "{:#?}",
        example.lines()
    );
    let replies = consume_all(&broker.bootstrap(), REPLIES, Duration::from_secs(1)).await;
    let answers: Vec<_> = replies
        .iter()
        .filter(|r| r.header("fp-correlation-id") == Some(duplicate.as_str()))
        .collect();
    assert_eq!(answers.len(), 1, "a duplicate is answered once");
    let value: serde_json::Value = serde_json::from_slice(&answers[0].value).unwrap();
    assert_eq!(value["outcome"], "fulfilled");

    // The trace goes on across the hop: the v1 reply continues the request's.
    let traced: Vec<_> = replies
        .iter()
        .filter_map(|r| r.header("traceparent"))
        .filter_map(fp_relay::trace::parse_traceparent)
        .map(|p| format!("{:032x}", p.trace_id))
        .collect();
    assert!(
        traced.iter().filter(|t| *t == TRACE_ID).count() >= 2,
        "the v1 reply and the duplicate's continue the trace: {traced:?}"
    );
    assert!(example
        .lines()
        .iter()
        .any(|l| l.contains("\"answered\"") && l.contains(TRACE_ID)));

    assert_eq!(example.terminate().await, Some(0), "a clean stop");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_fulfiller_meets_the_contract() {
    let (python, _) = toolchain();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/fulfiller-python");
    round_trip(|brokers, group| {
        let mut command = Command::new(&python);
        command
            .arg(dir.join("fulfiller.py"))
            .current_dir(&dir)
            .env("BROKERS", brokers)
            .env("GROUP", group)
            .env("SESSION_TIMEOUT_MS", "2000")
            .env("HEARTBEAT_INTERVAL_MS", "500");
        command
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_fulfiller_meets_the_contract() {
    let (_, node_modules) = toolchain();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/fulfiller-node");
    round_trip(|brokers, group| {
        let mut command = Command::new("node");
        command
            .arg(dir.join("fulfiller.js"))
            .current_dir(&dir)
            .env("NODE_PATH", &node_modules)
            .env("BROKERS", brokers)
            .env("GROUP", group)
            .env("SESSION_TIMEOUT_MS", "6000")
            .env("HEARTBEAT_INTERVAL_MS", "500");
        command
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_consumer_prints_events_with_their_cloudevents_headers() {
    let (python, _) = toolchain();
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.fulfilment.enabled = false;
    let relay = TestRelay::start_ready(config).await;
    for name in ["v1/lead_signup.json", "v2/referral.created.json"] {
        let reply = relay
            .post_with(sample(name), &[("traceparent", INCOMING)])
            .await;
        assert!(reply.status.is_success(), "{name}: {}", reply.text());
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/consumer-python");
    let mut command = Command::new(&python);
    command
        .arg(dir.join("consumer.py"))
        .args(["--brokers", &broker.bootstrap(), "--from-beginning"])
        .args(["--max-events", "2"])
        .args(["--topic", "firstpromoter.lead_signup"])
        .args(["--topic", "firstpromoter.referral.created"])
        .env("SESSION_TIMEOUT_MS", "2000")
        .env("HEARTBEAT_INTERVAL_MS", "500");
    let example = Example::start(command);
    assert!(
        eventually(WAIT, async || example
            .lines()
            .iter()
            .filter(|l| l.contains("ce_type"))
            .count()
            == 2)
        .await,
        "{:#?}",
        example.lines()
    );
    let printed: Vec<serde_json::Value> = example
        .lines()
        .iter()
        .filter(|l| l.contains("ce_type"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut types: Vec<&str> = printed
        .iter()
        .map(|p| p["ce_type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "com.firstpromoter.lead_signup",
            "com.firstpromoter.referral.created"
        ]
    );
    for event in &printed {
        assert_eq!(event["trace_id"], TRACE_ID);
        assert!(event["ce_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    relay.shutdown().await;
}

/// `serve --dev`'s embedded broker (librdkafka's mock cluster) answers kafkajs's LeaveGroup v3
/// as Kafka does (the members' own answers included), so the Node.js example stops without an
/// error line: it used to log `LeaveGroup ... offset out of range` and wait out its session.
#[tokio::test(flavor = "multi_thread")]
async fn the_node_fulfiller_leaves_the_dev_broker_cleanly() {
    let (_, node_modules) = toolchain();
    let dev = fp_relay::tools::dev::DevBroker::start(&Config::default()).unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/fulfiller-node");
    let mut command = Command::new("node");
    command
        .arg(dir.join("fulfiller.js"))
        .current_dir(&dir)
        .env("NODE_PATH", &node_modules)
        .env("BROKERS", dev.bootstrap_servers());
    let example = Example::start(command);
    assert!(
        example.wait_for("fulfiller ready").await,
        "{:#?}",
        example.lines()
    );
    let lines = example.lines.clone();
    assert_eq!(example.terminate().await, Some(0), "a clean stop");
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("fulfiller stopped")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("ERROR")),
        "no error while leaving the group: {lines:#?}"
    );
}
