//! Trust follows the path a request takes (issue #40): each hole a security review found, as a
//! test against a relay and a real tansu broker (the binary where the process is what
//! matters), and a generated matrix of credential x envelope shape x event type x headers that
//! checks every cell's answer and that nothing reaches a fulfilment exchange, the FirstPromoter
//! API, the reply or the dedup topic where the documented rules say it must not.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::{consume_all, eventually, send, Consumed, Tansu, TestRelay};
use fp_relay::config::Config;
use http::StatusCode;
use serde_json::{json, Value};

const PATH_TOKEN: &str = "v1-path-token-0123456789";
const BEARER: &str = "v2-bearer-token-0123456789";
const SECRET: &str = "v2-signing-secret-current";
const BASIC_USER: &str = "firstpromoter";
const BASIC_PASSWORD: &str = "basic-password-0123456789";
const DEDUP_TOPIC: &str = "firstpromoter.dedup";
const REQUESTS: &str = "firstpromoter.fulfilment_pending";
const REPLIES: &str = "firstpromoter.fulfilment_replies";
const DEAD_LETTERS: &str = "firstpromoter.dead_letter";
const QUIET: Duration = Duration::from_secs(2);

/// Every credential kind configured, dedup shared through `dedup.topic`, v2 fulfilment calling
/// the fake API at `api`.
fn secured(broker: &Tansu, api: SocketAddr) -> Config {
    let mut config = common::v2_config(broker, api);
    let auth = &mut config.auth;
    auth.insecure_no_auth = false;
    auth.path_tokens = vec![PATH_TOKEN.into()];
    auth.tokens = vec![BEARER.into()];
    auth.signature_secrets = vec![SECRET.into()];
    auth.basic.insert(BASIC_USER.into(), BASIC_PASSWORD.into());
    config.dedup.enabled = Some(true);
    config.dedup.topic = DEDUP_TOPIC.into();
    config.validate().unwrap();
    config
}

fn signature(body: &[u8]) -> String {
    common::signature(SECRET, body)
}

/// The `data.id` of a record's JSON value (every cell of the matrix has its own).
fn data_id(record: &Consumed) -> Option<u64> {
    serde_json::from_slice::<Value>(&record.value).ok()?["data"]["id"].as_u64()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    PathToken,
    Bearer,
    Basic,
    Signature,
    Nothing,
    Wrong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `{"event":{"id","type"},"data"}`.
    V1,
    /// `{"event_id","event_type","entity_id","changes","data"}`.
    V2,
    /// Both envelopes in one body.
    Both,
    /// The v1 type beside a v2 `event_id`.
    V2KeysV1Type,
    /// No type in the body: `X-Event-Type` names it.
    HeaderTyped,
}

/// What the relay must answer, by the documented rules (docs/security.md, "Authentication" and "Credential scopes"),
/// written here independently of the relay's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    Refused(u16, &'static str),
    Fulfilled,
    FulfilmentRequested,
    Published,
    ReservedDeadLetter,
}

fn expected(credential: Credential, shape: Shape, event_type: &str) -> Expected {
    let (v1_scope, v2_scope) = match credential {
        Credential::Nothing | Credential::Wrong => return Expected::Refused(401, "unauthorized"),
        Credential::PathToken => (true, false),
        Credential::Bearer | Credential::Basic | Credential::Signature => (false, true),
    };
    let v1_envelope = matches!(shape, Shape::V1 | Shape::Both | Shape::V2KeysV1Type);
    if event_type == "fulfilment_pending" {
        if !v1_scope {
            return Expected::Refused(403, "credential_scope");
        }
        if shape != Shape::V1 {
            return Expected::Refused(400, "envelope_mismatch");
        }
        return Expected::Fulfilled;
    }
    if (v1_envelope && !v1_scope) || (!v1_envelope && !v2_scope) {
        return Expected::Refused(403, "credential_scope");
    }
    if ["dedup", "fulfilment_replies", "dead_letter"].contains(&event_type) {
        return Expected::ReservedDeadLetter;
    }
    if shape == Shape::V2 && event_type == "commission.updated" {
        return Expected::FulfilmentRequested;
    }
    Expected::Published
}

/// One cell's request: path, headers and body; `id` is its `data.id` (and commission id).
fn request(
    credential: Credential,
    shape: Shape,
    event_type: &str,
    event_id_header: bool,
    id: u64,
) -> (String, Vec<(String, String)>, Bytes) {
    let data = json!({"id": id, "unit": "points", "status": "approved"});
    let changes = json!({"status": ["pending", "approved"]});
    let body = match shape {
        Shape::V1 => json!({"event": {"id": id, "type": event_type}, "data": data}),
        Shape::V2 => json!({"event_id": format!("e-{id}"), "event_type": event_type,
                            "entity_id": id, "changes": changes, "data": data}),
        Shape::Both => {
            json!({"event": {"id": id, "type": event_type}, "event_id": format!("e-{id}"),
                              "event_type": event_type, "changes": changes, "data": data})
        }
        Shape::V2KeysV1Type => json!({"event": {"type": event_type}, "event_id": format!("e-{id}"),
                                      "changes": changes, "data": data}),
        Shape::HeaderTyped => json!({"changes": changes, "data": data}),
    };
    let body = Bytes::from(serde_json::to_vec(&body).unwrap());
    let mut headers = Vec::new();
    if shape == Shape::HeaderTyped {
        headers.push(("x-event-type".to_owned(), event_type.to_owned()));
    }
    if event_id_header {
        headers.push(("x-event-id".to_owned(), format!("h-{id}")));
    }
    let mut path = "/webhooks/firstpromoter".to_owned();
    match credential {
        Credential::PathToken => path = format!("{path}/{PATH_TOKEN}"),
        Credential::Bearer => headers.push(("authorization".into(), format!("Bearer {BEARER}"))),
        Credential::Basic => {
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(format!("{BASIC_USER}:{BASIC_PASSWORD}"));
            headers.push(("authorization".into(), format!("Basic {encoded}")));
        }
        Credential::Signature => headers.push(("x-webhook-signature".into(), signature(&body))),
        Credential::Nothing => {}
        Credential::Wrong => headers.push((
            "authorization".into(),
            "Bearer wrong-token-0123456789".into(),
        )),
    }
    (path, headers, body)
}

/// Every credential kind x envelope shape x event type (known, reserved, unknown) x with and
/// without `X-Event-Id`: each answer is the documented one, and exactly the cells the rules
/// send into an exchange reach the request topic, FirstPromoter's API and the reply topic;
/// reserved types land on the dead-letter topic only; the dedup topic holds marks only.
#[tokio::test(flavor = "multi_thread")]
async fn the_scope_matrix_gives_every_cell_its_documented_answer_and_no_other_effect() {
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap();
    for (topic, partitions) in [(DEDUP_TOPIC, 1), (REQUESTS, 1), (REPLIES, 4)] {
        common::create_topic(&bootstrap, topic, partitions).await;
    }
    let (marked, api) = common::recording_api().await;
    let relay = TestRelay::start_ready(secured(&broker, api)).await;
    let mut fulfiller = common::respond_process(&broker);
    // Until the fulfiller answers: a genuine v1 fulfilment_pending is fulfilled.
    let warm = request(
        Credential::PathToken,
        Shape::V1,
        "fulfilment_pending",
        false,
        1,
    );
    assert!(
        eventually(Duration::from_secs(30), async || {
            let headers: Vec<(&str, &str)> = warm
                .1
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let reply = send(relay.addr, "POST", &warm.0, &headers, warm.2.clone()).await;
            reply.status == StatusCode::OK
        })
        .await,
        "the fulfiller never answered"
    );

    let credentials = [
        Credential::PathToken,
        Credential::Bearer,
        Credential::Basic,
        Credential::Signature,
        Credential::Nothing,
        Credential::Wrong,
    ];
    let shapes = [
        Shape::V1,
        Shape::V2,
        Shape::Both,
        Shape::V2KeysV1Type,
        Shape::HeaderTyped,
    ];
    let types = [
        "fulfilment_pending",
        "lead_signup",
        "reward_created",
        "commission.updated",
        "referral.created",
        "dedup",
        "fulfilment_replies",
        "dead_letter",
        "brand_new.event",
    ];
    let mut cells = Vec::new();
    let mut id = 1_000;
    for credential in credentials {
        for shape in shapes {
            for event_type in types {
                for header in [false, true] {
                    id += 1;
                    cells.push((credential, shape, event_type, header, id));
                }
            }
        }
    }
    eprintln!(
        "scope matrix: {} cells ({} credentials x {} shapes x {} types x 2 header sets)",
        cells.len(),
        credentials.len(),
        shapes.len(),
        types.len()
    );
    let mut failures = Vec::new();
    let mut by_outcome: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for chunk in cells.chunks(16) {
        let sent: Vec<_> = chunk
            .iter()
            .map(|&(credential, shape, event_type, header, id)| {
                let (path, headers, body) = request(credential, shape, event_type, header, id);
                let addr = relay.addr;
                tokio::spawn(async move {
                    let headers: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    send(addr, "POST", &path, &headers, body).await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for reply in sent {
            answers.push(reply.await.unwrap());
        }
        for (&(credential, shape, event_type, header, id), reply) in chunk.iter().zip(answers) {
            let want = expected(credential, shape, event_type);
            let body = reply.json();
            let got_ok = match want {
                Expected::Refused(status, code) => {
                    reply.status.as_u16() == status && body["error"] == code
                }
                Expected::Fulfilled => {
                    reply.status == StatusCode::OK && body["status"] == "fulfilled"
                }
                Expected::FulfilmentRequested => {
                    reply.status == StatusCode::OK && body["status"] == "fulfilment_requested"
                }
                Expected::Published => {
                    reply.status == StatusCode::OK && body["status"] == "published"
                }
                Expected::ReservedDeadLetter => {
                    reply.status == StatusCode::ACCEPTED
                        && body["status"] == "dead_lettered"
                        && body["reason"] == "reserved_topic"
                }
            };
            if !got_ok {
                failures.push(format!(
                    "{credential:?} {shape:?} {event_type} x-event-id={header}: expected {want:?}, got {} {}",
                    reply.status,
                    reply.text()
                ));
            }
            let outcome = match want {
                Expected::Refused(..) => "refused",
                Expected::Fulfilled => "fulfilled",
                Expected::FulfilmentRequested => "requested",
                Expected::Published => "published",
                Expected::ReservedDeadLetter => "reserved",
            };
            by_outcome.entry(outcome).or_default().insert(id);
            // An event id: the body's (event.id for v1, event_id for v2), else X-Event-Id.
            let has_id = header || matches!(shape, Shape::V1 | Shape::Both | Shape::V2);
            if has_id && matches!(want, Expected::Published | Expected::FulfilmentRequested) {
                by_outcome.entry("marked").or_default().insert(id);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The request topic holds exactly the exchanges the rules allow (the warm-up's id is 1).
    let mut asked: BTreeSet<u64> = by_outcome["fulfilled"].clone();
    asked.extend(&by_outcome["requested"]);
    asked.insert(1);
    let requests = consume_all(&bootstrap, REQUESTS, QUIET).await;
    let requested: BTreeSet<u64> = requests.iter().filter_map(data_id).collect();
    // The warm-up (id 1) may have asked more than once while the fulfiller was starting.
    let of_cells = requests.iter().filter(|r| data_id(r) != Some(1)).count();
    assert_eq!(of_cells, asked.len() - 1, "one request per exchange");
    assert_eq!(requested, asked, "fulfilment requests");
    // FirstPromoter's API is called for the approvals only, each once.
    let approvals = by_outcome["requested"].clone();
    assert!(
        eventually(Duration::from_secs(30), async || {
            marked
                .lock()
                .unwrap()
                .iter()
                .copied()
                .collect::<BTreeSet<_>>()
                == approvals
        })
        .await,
        "mark_fulfilled calls: {:?}, approvals {approvals:?}",
        marked.lock().unwrap()
    );
    assert_eq!(marked.lock().unwrap().len(), approvals.len(), "each once");
    // Replies: the fulfiller's only, one per request.
    let replies = consume_all(&bootstrap, REPLIES, QUIET).await;
    let correlation = |r: &Consumed| r.header("fp-correlation-id").map(str::to_owned);
    let asked_ids: BTreeMap<String, u64> = requests
        .iter()
        .filter_map(|r| Some((correlation(r)?, data_id(r)?)))
        .collect();
    let answered: Vec<u64> = replies
        .iter()
        .map(|r| {
            let id = correlation(r).and_then(|c| asked_ids.get(&c).copied());
            id.expect("every reply answers a request: the fulfiller's only")
        })
        .filter(|id| *id != 1)
        .collect();
    assert_eq!(answered.len(), of_cells, "one reply per request");
    // Reserved types: on the dead-letter topic with their reason, and nowhere else.
    let dead = consume_all(&bootstrap, DEAD_LETTERS, QUIET).await;
    let reserved: BTreeSet<u64> = dead
        .iter()
        .filter(|r| {
            r.header("fp-dead-letter-reason")
                .is_some_and(|reason| reason.starts_with("reserved_topic: firstpromoter."))
                && r.header("fp-original-topic").is_none()
        })
        .filter_map(data_id)
        .collect();
    assert_eq!(&reserved, &by_outcome["reserved"]);
    assert_eq!(dead.len(), reserved.len(), "nothing else dead-lettered");
    // The dedup topic holds mark records only: one key per published event (or approval)
    // that has an id.
    let marks = consume_all(&bootstrap, DEDUP_TOPIC, QUIET).await;
    let mut keys = 0;
    for mark in &marks {
        let parsed = fp_relay::dedup::shared::parse_marks(&mark.value);
        assert!(
            parsed.is_some(),
            "a record on the dedup topic that is not a mark record"
        );
        keys += parsed.unwrap().len();
    }
    assert_eq!(
        keys,
        by_outcome["marked"].len(),
        "a mark per published event with an id"
    );
    let _ = fulfiller.kill();
    let _ = fulfiller.wait();
    relay.shutdown().await;
}

/// The two shapes a review used to reach the v1 exchange with a v2 Bearer token: 403, and the
/// request topic stays empty.
#[tokio::test(flavor = "multi_thread")]
async fn a_v2_token_posting_fulfilment_pending_in_any_shape_is_refused_and_publishes_nothing() {
    let broker = Tansu::start();
    let (marked, api) = common::recording_api().await;
    let relay = TestRelay::start_ready(secured(&broker, api)).await;
    let bearer = format!("Bearer {BEARER}");
    let v2_shaped = relay
        .post_with(
            r#"{"event_type":"fulfilment_pending","data":{"id":4242}}"#,
            &[("authorization", &bearer)],
        )
        .await;
    let header_typed = relay
        .post_with(
            r#"{"data":{"id":4343}}"#,
            &[
                ("authorization", &bearer),
                ("x-event-type", "fulfilment_pending"),
            ],
        )
        .await;
    for reply in [&v2_shaped, &header_typed] {
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
        assert_eq!(reply.json()["error"], "credential_scope");
    }
    assert!(consume_all(&broker.bootstrap(), REQUESTS, QUIET)
        .await
        .is_empty());
    assert!(marked.lock().unwrap().is_empty());
    relay.shutdown().await;
}

/// With the v1 path token, a `ping` carrying the id FirstPromoter will give its next event no
/// longer silences that event: both are published, one conflict counted; the genuine event's
/// retry is a duplicate, and so is the ping's.
#[tokio::test(flavor = "multi_thread")]
async fn a_ping_with_a_future_id_never_silences_the_genuine_event() {
    let broker = Tansu::start();
    let (_, api) = common::recording_api().await;
    let relay = TestRelay::start_ready(secured(&broker, api)).await;
    let path = format!("{}/{PATH_TOKEN}", relay.path);
    let post = |body: &'static str| {
        send(
            relay.addr,
            "POST",
            &path,
            &[],
            Bytes::from_static(body.as_bytes()),
        )
    };
    let ping = r#"{"event":{"id":22736305,"type":"ping"}}"#;
    let genuine = r#"{"event":{"id":22736305,"type":"lead_signup","created_at":"2026-12-06T10:00:00Z"},"data":{"id":21381518,"email":"lead@example.com"}}"#;
    let numeric_reward = r#"{"event":{"id":99,"type":"reward_created"},"data":{"id":1}}"#;
    let string_reward = r#"{"event":{"id":"99","type":"reward_created"},"data":{"id":2}}"#;
    let statuses = [
        post(ping).await.json()["status"].clone(),
        post(genuine).await.json()["status"].clone(),
        post(genuine).await.json()["status"].clone(),
        post(ping).await.json()["status"].clone(),
        post(numeric_reward).await.json()["status"].clone(),
        post(string_reward).await.json()["status"].clone(),
    ];
    assert_eq!(
        statuses,
        [
            "published",
            "published",
            "duplicate",
            "published",
            "published",
            "published"
        ]
        .map(Value::from),
        "the ping came back after the genuine event replaced it: a conflict again, published"
    );
    let signups = consume_all(&broker.bootstrap(), "firstpromoter.lead_signup", QUIET).await;
    assert_eq!(signups.len(), 1, "the genuine event, once");
    assert_eq!(signups[0].value, genuine.as_bytes());
    assert_eq!(relay.metric("fp_relay_dedup_conflicts_total").await, 3.0);
    relay.shutdown().await;
}

/// Event types that name the relay's own topics are kept on the dead-letter topic with a
/// reason, never written to the dedup, reply or request topic; and whatever else is written to
/// the dedup topic (a plain producer's 960 KiB of zeros, 61,440 "keys" in the old format) is
/// ignored and counted, never read as marks, so it evicts nothing.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_a_sender_writes_reaches_the_relays_own_topics() {
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap();
    common::create_topic(&bootstrap, DEDUP_TOPIC, 1).await;
    let (_, api) = common::recording_api().await;
    let mut config = secured(&broker, api);
    config.dedup.max_entries = 100;
    let relay = TestRelay::start_ready(config).await;
    let bearer = format!("Bearer {BEARER}");
    for (n, event_type) in ["dedup", "fulfilment_replies", "dead_letter"]
        .iter()
        .enumerate()
    {
        let body = format!(
            r#"{{"event_type":"{event_type}","event_id":"r-{n}","data":{{"id":{n},"keys":"{}"}}}}"#,
            "A".repeat(64)
        );
        let reply = relay.post_with(body, &[("authorization", &bearer)]).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        assert_eq!(reply.json()["reason"], "reserved_topic");
    }
    // A retry that must stay a duplicate through what follows.
    let kept = r#"{"event_type":"referral.created","event_id":"keep-1","data":{"id":7}}"#;
    assert_eq!(
        relay
            .post_with(kept, &[("authorization", &bearer)])
            .await
            .json()["status"],
        "published"
    );
    common::produce(
        &bootstrap,
        DEDUP_TOPIC,
        None,
        None,
        &[],
        &"\0".repeat(960 * 1024),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            relay.metric("fp_relay_dedup_foreign_records_total").await >= 1.0
        })
        .await,
        "the foreign record is counted"
    );
    assert_eq!(
        relay.metric("fp_relay_dedup_marks_read_total").await,
        1.0,
        "only the real mark"
    );
    assert_eq!(
        relay
            .post_with(kept, &[("authorization", &bearer)])
            .await
            .json()["status"],
        "duplicate"
    );
    for topic in [REPLIES, REQUESTS] {
        assert!(
            consume_all(&bootstrap, topic, QUIET).await.is_empty(),
            "{topic}"
        );
    }
    let dead = consume_all(&bootstrap, DEAD_LETTERS, QUIET).await;
    assert_eq!(dead.len(), 3);
    assert!(dead.iter().all(|r| r
        .header("fp-dead-letter-reason")
        .is_some_and(|reason| reason.starts_with("reserved_topic: firstpromoter."))
        && r.header("fp-original-topic").is_none()));
    relay.shutdown().await;
}

/// 200 idle sockets on the admin listener, opened without any credential, and `/healthz` still
/// answers within a second, every time.
#[tokio::test(flavor = "multi_thread")]
async fn probes_are_answered_behind_two_hundred_idle_admin_sockets() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(common::test_config(&broker.bootstrap())).await;
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect_timeout(&relay.admin, Duration::from_secs(1)).ok())
        .collect();
    assert!(idle.len() >= 100, "opened {}", idle.len());
    for _ in 0..5 {
        let started = Instant::now();
        let answered = tokio::time::timeout(
            Duration::from_secs(1),
            common::try_get(relay.admin, "/healthz"),
        )
        .await;
        assert_eq!(
            answered.ok().flatten(),
            Some(StatusCode::OK),
            "after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(idle);
    relay.shutdown().await;
}

/// Configuration errors never print a secret: a TOML syntax error in a file of secrets, an
/// unterminated secret, and an escaped quote inside a secret from the environment.
#[test]
fn configuration_errors_never_print_a_secret() {
    let dir = std::env::temp_dir().join(format!("fp-relay-trust-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(&str, Option<&str>); 3] = [
        (
            "[auth]\ntokens = [\"v2-bearer-SECRET-0123456789\" \"second-SECRET-0123456789\"]\n",
            None,
        ),
        (
            "[firstpromoter]\napi_key = \"fp_live_SECRET-0123456789\n",
            None,
        ),
        ("", Some(r#"tok"en-SECRET-TAIL-0123456789"#)),
    ];
    for (n, (text, variable)) in cases.iter().enumerate() {
        let file = dir.join(format!("{n}.toml"));
        std::fs::write(&file, text).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fp-relay"));
        command
            .args(["check-config", "--config"])
            .arg(&file)
            .env_remove("FP_RELAY_CONFIG");
        if let Some(value) = variable {
            command.env("FP_RELAY_AUTH_TOKENS", value);
        }
        let output = command.output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{said}");
        assert!(!said.contains("SECRET"), "case {n}: {said}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `fp-relay send` to an unreachable relay does not print the path token of its URL, and takes
/// its credentials from the environment (never visible in `ps`).
#[test]
fn send_masks_the_path_token_and_reads_credentials_from_the_environment() {
    let token = "pathTOKENsecret0123456789";
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fp-relay"))
        .args(["send", "--event", "lead_signup", "--timeout", "2s", "--url"])
        .arg(format!("http://127.0.0.1:1/webhooks/firstpromoter/{token}"))
        .env("FP_RELAY_SEND_TOKEN", "bearerTOKENsecret0123456789")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("127.0.0.1:1"), "{said}");
    assert!(!said.contains("TOKEN"), "{said}");
}
