//! What an SRE relies on: metric values after known traffic, readiness that follows the
//! broker, deploy artefacts that validate, and a real Prometheus server scraping the relay.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, free_port, sample, Tansu, TestRelay};
use http::StatusCode;

const WAIT: Duration = Duration::from_secs(20);

/// Sends the traffic the assertions below expect: 3 published, 1 bad JSON, 1 fulfilment timeout,
/// 1 unknown event type.
async fn known_traffic(relay: &TestRelay) {
    for _ in 0..3 {
        assert_eq!(
            relay.post(sample("v1/lead_signup.json")).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(relay.post("{broken").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        relay
            .post(sample("v1/fulfilment_pending.json"))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let unknown = r#"{"event":{"id":1,"type":"made_up_event"},"data":{"id":2}}"#;
    assert_eq!(relay.post(unknown).await.status, StatusCode::OK);
}

fn config(broker: &Tansu) -> fp_relay::config::Config {
    let mut config = common::test_config(&broker.bootstrap());
    config.fulfilment.timeout = Duration::from_secs(1);
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_the_traffic_sent() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(config(&broker)).await;
    known_traffic(&relay).await;
    let expect = [
        (
            r#"fp_relay_http_requests_total{event_type="lead_signup",status="200"}"#,
            3.0,
        ),
        (
            r#"fp_relay_http_requests_total{event_type="none",status="400"}"#,
            1.0,
        ),
        (
            r#"fp_relay_http_requests_total{event_type="fulfilment_pending",status="202"}"#,
            1.0,
        ),
        (
            r#"fp_relay_http_requests_total{event_type="other",status="200"}"#,
            1.0,
        ),
        (
            r#"fp_relay_http_request_duration_seconds_count{event_type="lead_signup"}"#,
            3.0,
        ),
        (r#"fp_relay_rejected_total{reason="bad_json"}"#, 1.0),
        ("fp_relay_dead_lettered_total", 1.0),
        // 3 events + 1 dead letter + 1 fulfilment request + 1 unknown-type event + the
        // verdict topic's record that the request is asking about its reward.
        (r#"fp_relay_kafka_produce_total{result="ok"}"#, 7.0),
        ("fp_relay_kafka_produce_duration_seconds_count", 7.0),
        (
            r#"fp_relay_fulfilment_outcomes_total{outcome="timeout"}"#,
            1.0,
        ),
        ("fp_relay_fulfilment_in_flight", 0.0),
        ("fp_relay_fulfilment_max_in_flight", 2048.0),
        ("fp_relay_fulfilment_reply_duration_seconds_count", 0.0),
        ("fp_relay_ready", 1.0),
        (
            &format!(
                r#"fp_relay_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(relay.metric(series).await, value, "{series}");
    }
    let text = common::get(relay.admin, "/metrics").await.text();
    assert!(
        !text.contains("made_up_event"),
        "unknown event types never become label values"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_while_the_broker_is_frozen_and_returns_after() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(config(&broker)).await;
    broker.freeze();
    let unready = eventually(WAIT, async || {
        let reply = common::get(relay.admin, "/readyz").await;
        reply.status == StatusCode::SERVICE_UNAVAILABLE
            && reply.json()["checks"]["kafka_producer"]
                .as_str()
                .is_some_and(|s| s.starts_with("failing"))
    })
    .await;
    broker.thaw();
    assert!(
        unready,
        "/readyz names the failing check while the broker is frozen"
    );
    relay.wait_ready(WAIT).await;
    assert_eq!(
        common::get(relay.admin, "/healthz").await.status,
        StatusCode::OK
    );
    relay.shutdown().await;
}

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("{name} not found: scripts/test.sh installs Debian's prometheus package")
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

#[test]
fn alert_rules_and_prometheus_config_pass_promtool() {
    for args in [
        ["check", "rules", "prometheus/alerts.yml"],
        ["check", "config", "prometheus/prometheus.yml"],
    ] {
        let output = Command::new(tool("promtool"))
            .args(args)
            .current_dir(deploy(""))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn manifests_parse_and_dashboards_only_use_metrics_the_relay_exports() {
    let exported: std::collections::HashSet<String> = fp_relay::metrics::Metrics::new()
        .names()
        .into_iter()
        .collect();
    let mut referenced = Vec::new();
    for file in ["prometheus/alerts.yml", "grafana/dashboards/fp-relay.json"] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("fp_relay_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            referenced.push((file, name.clone()));
            rest = &rest[at + name.len()..];
        }
    }
    assert!(referenced.len() > 10);
    for (file, name) in referenced {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            exported.contains(base),
            "{file} uses {name}, which the relay does not export"
        );
    }
    serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(deploy("grafana/dashboards/fp-relay.json")).unwrap(),
    )
    .unwrap();
    for file in [
        "docker-compose.yml",
        "kubernetes/gateway.yaml",
        "kubernetes/sidecar.yaml",
    ] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
            .collect();
        assert!(!documents.is_empty(), "{file}");
    }
    let gateway = std::fs::read_to_string(deploy("kubernetes/gateway.yaml")).unwrap();
    for kind in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "readinessProbe",
        "livenessProbe",
    ] {
        assert!(gateway.contains(kind), "gateway.yaml has a {kind}");
    }
}

/// A Prometheus server with its own data directory, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: PathBuf,
}

impl Prometheus {
    fn scraping(target: std::net::SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("fp-relay-prom-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fp-relay\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of an instant query's first sample, if any.
    async fn query(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        common::try_get(addr, "/-/ready").await?;
        let reply = common::get(addr, &format!("/api/v1/query?query={encoded}")).await;
        let body: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_the_series_with_the_right_values() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(config(&broker)).await;
    known_traffic(&relay).await;
    let prometheus = Prometheus::scraping(relay.admin);
    let expect = [
        (
            r#"fp_relay_http_requests_total{event_type="lead_signup",status="200"}"#,
            3.0,
        ),
        (r#"fp_relay_rejected_total{reason="bad_json"}"#, 1.0),
        (
            r#"fp_relay_fulfilment_outcomes_total{outcome="timeout"}"#,
            1.0,
        ),
        (r#"fp_relay_kafka_produce_total{result="ok"}"#, 7.0),
        ("fp_relay_ready", 1.0),
        (r#"up{job="fp-relay"}"#, 1.0),
    ];
    for (query, value) in expect {
        let mut last = None;
        let scraped = eventually(Duration::from_secs(30), async || {
            last = prometheus.query(query).await;
            last == Some(value)
        })
        .await;
        assert!(
            scraped,
            "{query}: Prometheus has {last:?}, expected {value}"
        );
    }
    relay.shutdown().await;
}
