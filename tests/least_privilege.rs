//! Only FirstPromoter can make a reward happen, and no secret leaves: each credential delivers
//! only its webhook version, replayed and stale signed events publish nothing new, unparseable
//! bodies reach the dead-letter topic without the promoters' secrets, forwarded addresses are
//! read the way proxies write them, one address cannot take every connection, refusal floods
//! cost a line per interval, secrets come from files and are reloaded, and the spool is private.
//! Against a real tansu broker (and the binary where the process is what matters).

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use common::{consume, consume_all, eventually, sample, send, Tansu, TestRelay};
use fp_relay::config::{Config, Overrides};
use http::StatusCode;

const PATH_TOKEN: &str = "v1-path-token-0123456789";
const BEARER: &str = "v2-bearer-token-0123456789";
const SECRET: &str = "v2-signing-secret-current";
const WAIT: Duration = Duration::from_secs(15);

fn secured(broker: &Tansu) -> Config {
    let mut config = common::test_config(&broker.bootstrap());
    config.auth.insecure_no_auth = false;
    config.auth.path_tokens = vec![PATH_TOKEN.into()];
    config.auth.tokens = vec![BEARER.into()];
    config.auth.signature_secrets = vec![SECRET.into()];
    config.validate().unwrap();
    config
}

fn signature(body: &[u8]) -> String {
    common::signature(SECRET, body)
}

/// FirstPromoter's API as a fake that counts every call it gets.
async fn counting_api() -> (std::sync::Arc<std::sync::Mutex<usize>>, SocketAddr) {
    let calls = std::sync::Arc::new(std::sync::Mutex::new(0));
    let counted = calls.clone();
    let addr = common::serve_http(move |_request| {
        let counted = counted.clone();
        async move {
            *counted.lock().unwrap() += 1;
            http::Response::new(http_body_util::Full::new(Bytes::from_static(
                br#"{"status":"completed"}"#,
            )))
        }
    })
    .await;
    (calls, addr)
}

fn bearer() -> String {
    format!("Bearer {BEARER}")
}

#[tokio::test(flavor = "multi_thread")]
async fn each_credential_delivers_only_its_webhook_version() {
    let broker = Tansu::start();
    let (calls, api) = counting_api().await;
    let mut config = common::v2_config(&broker, api);
    config.auth = secured(&broker).auth;
    config.validate().unwrap();
    let relay = TestRelay::start_ready(config).await;
    let token_path = format!("{}/{PATH_TOKEN}", relay.path);
    let approval = sample("v2/commission.updated.reward.json");
    let pending = sample("v1/fulfilment_pending.json");

    // The v1 URL (in campaign settings, in every proxy's log) cannot carry a v2 approval.
    let via_path = send(relay.addr, "POST", &token_path, &[], approval.clone()).await;
    assert_eq!(
        via_path.status,
        StatusCode::FORBIDDEN,
        "{}",
        via_path.text()
    );
    assert_eq!(via_path.json()["error"], "credential_scope");
    // A v2 token cannot send v1's fulfilment_pending (its 200 makes FirstPromoter fulfil).
    let via_token = relay
        .post_with(pending.clone(), &[("authorization", &bearer())])
        .await;
    assert_eq!(
        via_token.status,
        StatusCode::FORBIDDEN,
        "{}",
        via_token.text()
    );
    assert_eq!(
        relay
            .metric("fp_relay_rejected_total{reason=\"credential_scope\"}")
            .await,
        2.0
    );
    for topic in [
        "firstpromoter.commission.updated",
        "firstpromoter.fulfilment_pending",
    ] {
        assert!(
            consume_all(&broker.bootstrap(), topic, Duration::from_secs(1))
                .await
                .is_empty(),
            "{topic}: nothing published"
        );
    }

    // Each credential still delivers its own version.
    let v1 = send(
        relay.addr,
        "POST",
        &token_path,
        &[],
        sample("v1/lead_signup.json"),
    )
    .await;
    assert_eq!(v1.status, StatusCode::OK, "{}", v1.text());
    let v2 = relay
        .post_with(
            sample("v2/referral.created.json"),
            &[("authorization", &bearer())],
        )
        .await;
    assert_eq!(v2.status, StatusCode::OK, "{}", v2.text());
    let signed = relay
        .post_with(
            approval.clone(),
            &[("x-webhook-signature", &signature(&approval))],
        )
        .await;
    assert_eq!(signed.status, StatusCode::OK, "{}", signed.text());
    assert_eq!(signed.json()["status"], "fulfilment_requested");
    assert_eq!(*calls.lock().unwrap(), 0, "nobody replied: no API call");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_signatures_required_v1_path_tokens_still_deliver_and_unsigned_v2_does_not() {
    let broker = Tansu::start();
    let mut config = secured(&broker);
    config.auth.require_signature = true;
    config.validate().unwrap();
    let relay = TestRelay::start_ready(config).await;
    let token_path = format!("{}/{PATH_TOKEN}", relay.path);
    let v1 = send(
        relay.addr,
        "POST",
        &token_path,
        &[],
        sample("v1/lead_signup.json"),
    )
    .await;
    assert_eq!(v1.status, StatusCode::OK, "{}", v1.text());
    let body = sample("v2/referral.created.json");
    for (path, headers) in [
        (token_path.as_str(), vec![]),
        (relay.path.as_str(), vec![("authorization", bearer())]),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let unsigned = send(relay.addr, "POST", path, &headers, body.clone()).await;
        assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let signed = relay
        .post_with(body.clone(), &[("x-webhook-signature", &signature(&body))])
        .await;
    assert_eq!(signed.status, StatusCode::OK, "{}", signed.text());
    relay.shutdown().await;
}

/// A signed body replayed (it carries no timestamp the signature covers apart from its own
/// `timestamp` field): with credentials configured, duplicate suppression is on by default and
/// the replay publishes nothing; `auth.max_event_age` refuses a captured old one outright.
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_signed_event_is_published_once_and_a_stale_one_not_at_all() {
    let broker = Tansu::start();
    let mut config = secured(&broker);
    config.auth.max_event_age = Some(Duration::from_secs(24 * 3600));
    config.validate().unwrap();
    assert!(config.dedup_enabled(), "on by default with credentials");
    let relay = TestRelay::start_ready(config).await;
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let fresh = Bytes::from(format!(
        r#"{{"event_id":"{}","event_type":"promoter.created","entity_id":7,"data":{{"id":7}},"timestamp":"{now}"}}"#,
        uuid::Uuid::new_v4()
    ));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let answer = relay
            .post_with(
                fresh.clone(),
                &[("x-webhook-signature", &signature(&fresh))],
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        statuses.push(answer.json()["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses, ["published", "duplicate", "duplicate"]);
    let published = consume(
        &broker.bootstrap(),
        "firstpromoter.promoter.created",
        1,
        WAIT,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(published.len(), 1, "one record for three deliveries");

    let stale = Bytes::from(format!(
        r#"{{"event_id":"{}","event_type":"promoter.updated","entity_id":7,"data":{{"id":7}},"timestamp":"2026-01-01T00:00:00Z"}}"#,
        uuid::Uuid::new_v4()
    ));
    let answer = relay
        .post_with(
            stale.clone(),
            &[("x-webhook-signature", &signature(&stale))],
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text());
    assert_eq!(answer.json()["error"], "stale_event");
    assert!(consume_all(
        &broker.bootstrap(),
        "firstpromoter.promoter.updated",
        Duration::from_secs(1)
    )
    .await
    .is_empty());
    relay.shutdown().await;
}

/// Every shape of body that fails to parse, each with the promoter's secrets in it: what
/// reaches the dead-letter topic holds no secret byte; what cannot be scanned is kept as its
/// digest and size.
#[tokio::test(flavor = "multi_thread")]
async fn unparseable_bodies_reach_the_dead_letter_topic_without_secrets() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(secured(&broker)).await;
    let bodies: [&[u8]; 6] = [
        br#"{"data":{"promoter":{"auth_token":"s3cr3t-token","temp_password":"s3cr3t-pw"}}}"#,
        br#"{"event":{"type":"lead_signup"},"data":{"amount":1e999,"promoter":{"auth_token":"s3cr3t-token"}}}"#,
        br#"{"event":{"type":"lead_signup"},"data":{"name":"\ud800","promoter":{"temp_password":"s3cr3t-pw"}}}"#,
        br#"{"event":{"type":"lead_signup"},"data":{"auth\u005ftoken":"s3cr3t-token"},"#,
        b"auth_token=s3cr3t-token&temp_password=s3cr3t-pw",
        br#"{"event":{"type":"lead_signup"},"data":{"auth_token":"s3cr3t-tok"#,
    ];
    for body in bodies {
        let answer = relay
            .post_with(Bytes::from_static(body), &[("authorization", &bearer())])
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
        assert_eq!(answer.json()["dead_lettered"], true);
    }
    let dead = consume(
        &broker.bootstrap(),
        "firstpromoter.dead_letter",
        bodies.len(),
        WAIT,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(dead.len(), bodies.len());
    for record in &dead {
        let value = String::from_utf8_lossy(&record.value);
        assert!(!value.contains("s3cr3t"), "a secret reached Kafka: {value}");
    }
    let digests: Vec<_> = dead
        .iter()
        .filter(|r| r.header("fp-dead-letter-body") == Some("sha256"))
        .collect();
    assert_eq!(digests.len(), 2, "the form body and the cut-off one");
    use sha2::Digest;
    let expected = hex::encode(sha2::Sha256::digest(bodies[4]));
    assert!(digests.iter().any(|r| {
        let note: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        note["sha256"] == expected.as_str() && note["bytes"] == bodies[4].len()
    }));
    assert!(dead
        .iter()
        .filter(|r| r.header("fp-redacted").is_some())
        .all(|r| String::from_utf8_lossy(&r.value).contains("[redacted]")));
    relay.shutdown().await;
}

/// Behind a trusted proxy, the client is the first untrusted hop from the right, written with
/// or without a port: an entry the client wrote on the left never counts.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_forwarded_for_entry_does_not_pass_the_source_allowlist() {
    let broker = Tansu::start();
    let mut config = secured(&broker);
    config.auth.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    config.auth.allow_sources = vec!["203.0.113.0/24".parse().unwrap()];
    config.validate().unwrap();
    let relay = TestRelay::start_ready(config).await;
    for (forwarded, status) in [
        // The proxy appended the real client (with its port) after a forged allowed address.
        ("203.0.113.9, 198.51.100.7:5555", StatusCode::FORBIDDEN),
        ("203.0.113.9, [2001:db8::7]:443", StatusCode::FORBIDDEN),
        ("203.0.113.9, unknown", StatusCode::FORBIDDEN),
        ("198.51.100.7, 203.0.113.9:443", StatusCode::OK),
    ] {
        let answer = relay
            .post_with(
                sample("v2/referral.created.json"),
                &[("authorization", &bearer()), ("x-forwarded-for", forwarded)],
            )
            .await;
        assert_eq!(answer.status, status, "{forwarded}: {}", answer.text());
    }
    relay.shutdown().await;
}

/// Raises this process's descriptor limit for the sockets a test opens.
fn room_for_sockets() {
    fp_relay::http::descriptors::raise_soft_limit().expect("the soft limit can be raised");
}

/// One address holding 4,096 silent connections (what a stalled TLS or h2c client does) takes
/// only its share of the slots; a client at another address is served at once, and the
/// silent ones are closed once the head timeout passes without a request.
#[tokio::test(flavor = "multi_thread")]
async fn idle_sockets_from_one_address_leave_room_for_another() {
    room_for_sockets();
    let broker = Tansu::start();
    let mut config = secured(&broker);
    config.http.h2c = true;
    config.http.header_read_timeout = Duration::from_secs(2);
    config.http.max_connections_per_source = 256;
    config.validate().unwrap();
    let relay = TestRelay::start_ready(config).await;
    let addr = relay.addr;
    let silent = tokio::task::spawn_blocking(move || {
        (0..4096)
            .filter_map(|_| TcpStream::connect(addr).ok())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(silent.len() > 1024, "opened {}", silent.len());
    // Another address (a source address of its own on the loopback network) is served.
    let served = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
            .await
            .expect("connected in time")
            .expect("127.0.0.2 connects");
        let body = br#"{"event_id":"e-1","event_type":"promoter.created","data":{"id":1}}"#;
        let request = format!(
            "POST /webhooks/firstpromoter HTTP/1.1\r\nhost: relay\r\nauthorization: Bearer {BEARER}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut answer = String::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await;
        answer
    };
    assert!(answer_is(&served, 200), "{served}");
    // The silent ones: beyond the share closed at once, the rest after the head timeout.
    let closed = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        silent
            .into_iter()
            .filter(|mut socket| {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                socket
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .unwrap();
                matches!(socket.read(&mut [0u8; 1]), Ok(0) | Err(_))
            })
            .count()
    })
    .await
    .unwrap();
    assert!(
        closed >= 4000,
        "{closed} of the silent connections were closed"
    );
    relay.shutdown().await;
}

fn answer_is(raw: &str, status: u16) -> bool {
    raw.starts_with(&format!("HTTP/1.1 {status}"))
}

/// Secrets from files (`FP_RELAY_..._FILE`, a Kubernetes Secret mounted as files), read again
/// when the file changes: the new token works, the old one no longer does, and a file that
/// does not validate leaves the working set in place.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_from_files_are_reloaded_when_they_change() {
    let broker = Tansu::start();
    let dir = std::env::temp_dir().join(format!("fp-relay-secrets-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "first-token-0123456789\n").unwrap();
    let env = [
        ("FP_RELAY_KAFKA_BROKERS".to_owned(), broker.bootstrap()),
        (
            "FP_RELAY_AUTH_TOKENS_FILE".to_owned(),
            tokens.display().to_string(),
        ),
        (
            "FP_RELAY_AUTH_RELOAD_INTERVAL".to_owned(),
            "200ms".to_owned(),
        ),
        ("FP_RELAY_HTTP_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("FP_RELAY_ADMIN_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
    ];
    let config = Config::load(None, env, &Overrides::default()).unwrap();
    assert_eq!(config.auth.tokens, ["first-token-0123456789"]);
    let relay = TestRelay::start_ready(config).await;
    let post = |token: &'static str| {
        let relay = &relay;
        async move {
            relay
                .post_with(
                    sample("v2/referral.created.json"),
                    &[("authorization", &format!("Bearer {token}"))],
                )
                .await
                .status
        }
    };
    assert_eq!(post("first-token-0123456789").await, StatusCode::OK);
    // Rotated as Kubernetes does: a new file moved into place, one entry per line.
    std::fs::write(
        dir.join("tokens.new"),
        "second-token-0123456789\nthird-token-0123456789\n",
    )
    .unwrap();
    std::fs::rename(dir.join("tokens.new"), &tokens).unwrap();
    assert!(
        eventually(WAIT, async || post("second-token-0123456789").await
            == StatusCode::OK)
        .await
    );
    assert_eq!(post("third-token-0123456789").await, StatusCode::OK);
    assert_eq!(
        post("first-token-0123456789").await,
        StatusCode::UNAUTHORIZED
    );
    // Too short to be a token: refused, the working set stays.
    std::fs::write(&tokens, "short\n").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(post("second-token-0123456789").await, StatusCode::OK);
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A flood of bad credentials is counted in full but logged one line per reason and interval.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_refusals_costs_one_log_line_per_interval() {
    let broker = Tansu::start();
    let relay = common::RelayProcess::start_with(
        &broker,
        &[("FP_RELAY_AUTH_TOKENS", r#"["a-token-of-sixteen-chars"]"#)],
    )
    .await;
    for _ in 0..50 {
        let answer = send(
            relay.addr,
            "POST",
            "/webhooks/firstpromoter",
            &[("authorization", "Bearer a-wrong-token-entirely")],
            sample("v2/referral.created.json"),
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    }
    let metrics = common::get(relay.admin, "/metrics").await.text();
    assert!(
        metrics.contains("fp_relay_auth_failures_total{reason=\"bad_token\"} 50"),
        "every refusal counted"
    );
    let (_, lines) = relay.terminate().await;
    let refused = lines
        .iter()
        .filter(|l| l["message"] == "request refused")
        .count();
    assert_eq!(refused, 1, "one line for 50 refusals within the interval");
}

/// The spool directory a relay creates is its user's alone, and so is every file in it.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_spool_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let broker = Tansu::start();
    let root = std::env::temp_dir().join(format!("fp-relay-private-{}", uuid::Uuid::new_v4()));
    let dir = root.join("spool");
    let mut config = common::test_config(&broker.bootstrap());
    config.spool.enabled = true;
    config.spool.dir = dir.clone();
    config.validate().unwrap();
    let relay = TestRelay::start_ready(config).await;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the spool directory");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty());
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&root);
}
