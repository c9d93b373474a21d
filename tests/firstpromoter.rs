//! `fp-relay firstpromoter subscribe|status|recover` and reconciliation in `serve`, against a
//! fake of FirstPromoter's v2 webhooks API served by the test (subscriptions, event types,
//! paginated deliveries with payloads, a retry that really delivers again with the
//! subscription's headers, 401 and 429 answers) and a real tansu broker.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{consume_all, eventually, produce, send, Tansu, TestRelay, ACCOUNT, API_KEY};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::time::Instant;

const TOKEN: &str = "relay-token-0123456789abcdef";
const RELAY_URL: &str = "https://relay.example.com/webhooks/firstpromoter";
const WAIT: Duration = Duration::from_secs(20);
/// How late the fake answers a slow `retry_delivery` (the tests' call timeout is 1 s).
const SLOW_ANSWER: Duration = Duration::from_millis(2500);

/// A request the fake received.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
    body: Value,
    status: u16,
}

#[derive(Default)]
struct State {
    event_types: Vec<String>,
    subscriptions: Vec<Value>,
    /// Deliveries by subscription id, newest first (as the API lists them).
    deliveries: BTreeMap<u64, Vec<Value>>,
    /// Deliveries whose subscription's `max_retries` is spent: `retry_delivery` answers 422.
    spent: Vec<u64>,
    /// Deliveries whose first `retry_delivery` is queued (status `pending`) but answered only
    /// after [`SLOW_ANSWER`], later than the client waits; a second call is answered 422, as
    /// the delivery is no longer failed.
    slow_retry: Vec<u64>,
    /// Deliveries whose `retry_delivery` is answered 422 for another reason.
    refused: Vec<u64>,
    /// The next this many requests are answered 429 with `Retry-After: 1`.
    rate_limit_next: usize,
    seen: Vec<Seen>,
    next_id: u64,
}

/// FirstPromoter's webhooks API, in memory.
#[derive(Clone, Default)]
struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    async fn start() -> (Self, SocketAddr) {
        let fake = Self::default();
        {
            let mut state = fake.state.lock().unwrap();
            state.next_id = 100;
            state.event_types = fp_relay::webhook::V2_EVENT_TYPES
                .iter()
                .map(|t| t.to_string())
                .collect();
        }
        let server = fake.clone();
        let addr = common::serve_http(move |request| {
            let server = server.clone();
            async move { server.answer(request).await }
        })
        .await;
        (fake, addr)
    }

    fn env(addr: SocketAddr) -> Vec<(String, String)> {
        [
            (
                "FP_RELAY_FIRSTPROMOTER_API_URL",
                format!("http://{addr}/api/v2/company"),
            ),
            ("FP_RELAY_FIRSTPROMOTER_ALLOW_INSECURE_HTTP", "true".into()),
            ("FP_RELAY_FIRSTPROMOTER_API_KEY", API_KEY.into()),
            ("FP_RELAY_FIRSTPROMOTER_ACCOUNT_ID", ACCOUNT.into()),
            ("FP_RELAY_FIRSTPROMOTER_RETRY_INITIAL", "100ms".into()),
            ("FP_RELAY_FIRSTPROMOTER_RETRY_MAX", "2s".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let account = request
            .headers()
            .get("account-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
        let (status, answer, redeliver) = self.route(
            &method,
            &path,
            &query,
            authorization.as_deref(),
            account.as_deref(),
            &body,
        );
        self.state.lock().unwrap().seen.push(Seen {
            at: Instant::now(),
            method,
            path,
            query,
            authorization,
            body,
            status,
        });
        if let Some((subscription, delivery)) = redeliver {
            if subscription == 0 {
                // A slow answer to a retry that was queued.
                tokio::time::sleep(SLOW_ANSWER).await;
            } else {
                self.redeliver(subscription, delivery).await;
            }
        }
        let mut response = Response::builder()
            .status(status)
            .header("content-type", "application/json");
        if status == 429 {
            response = response.header("retry-after", "1");
        }
        response
            .body(Full::new(Bytes::from(answer.to_string())))
            .unwrap()
    }

    /// Status, body, and a delivery to send again.
    fn route(
        &self,
        method: &str,
        path: &str,
        query: &str,
        authorization: Option<&str>,
        account: Option<&str>,
        body: &Value,
    ) -> (u16, Value, Option<(u64, u64)>) {
        let mut state = self.state.lock().unwrap();
        if authorization != Some(&format!("Bearer {API_KEY}")) || account != Some(ACCOUNT) {
            return (401, Value::Null, None);
        }
        if state.rate_limit_next > 0 {
            state.rate_limit_next -= 1;
            return (429, json!({"message": "Too many requests"}), None);
        }
        let path = path.strip_prefix("/api/v2/company").unwrap_or(path);
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let page = param(query, "page").unwrap_or(1);
        let per_page = param(query, "per_page").unwrap_or(20).min(100);
        let paged = |list: &[Value]| -> Value {
            list.iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .cloned()
                .collect::<Vec<_>>()
                .into()
        };
        match (method, parts.as_slice()) {
            ("GET", ["webhooks", "event_types"]) => (200, json!({"data": state.event_types}), None),
            ("GET", ["webhooks"]) => (200, paged(&state.subscriptions), None),
            ("POST", ["webhooks"]) => {
                state.next_id += 1;
                let mut created = body.clone();
                created["id"] = state.next_id.into();
                created
                    .as_object_mut()
                    .unwrap()
                    .remove("basic_auth_password");
                state.subscriptions.push(created.clone());
                (201, created, None)
            }
            ("PUT", ["webhooks", id]) => {
                let id: u64 = id.parse().unwrap();
                let Some(found) = state.subscriptions.iter_mut().find(|s| s["id"] == id) else {
                    return (404, json!({"message": "not found"}), None);
                };
                for (key, value) in body.as_object().unwrap() {
                    if key != "basic_auth_password" {
                        found[key] = value.clone();
                    }
                }
                (200, found.clone(), None)
            }
            ("GET", ["webhooks", id, "webhook_deliveries"]) => {
                let id: u64 = id.parse().unwrap();
                let list = state.deliveries.get(&id).cloned().unwrap_or_default();
                (200, paged(&list), None)
            }
            ("GET", ["webhooks", id, "webhook_deliveries", delivery]) => {
                let (id, delivery): (u64, u64) = (id.parse().unwrap(), delivery.parse().unwrap());
                match state
                    .deliveries
                    .get(&id)
                    .and_then(|list| list.iter().find(|d| d["id"] == delivery).cloned())
                {
                    Some(found) => (200, found, None),
                    None => (404, json!({"message": "not found"}), None),
                }
            }
            ("POST", ["webhooks", id, "webhook_deliveries", delivery, "retry_delivery"]) => {
                let (id, delivery): (u64, u64) = (id.parse().unwrap(), delivery.parse().unwrap());
                let record = state
                    .deliveries
                    .get_mut(&id)
                    .and_then(|list| list.iter_mut().find(|d| d["id"] == delivery))
                    .expect("a delivery the fake holds");
                if record["status"] != "failed" {
                    return (
                        422,
                        json!({"message": "Delivery is not in a failed state", "code": "invalid_state"}),
                        None,
                    );
                }
                if state.refused.contains(&delivery) {
                    return (
                        422,
                        json!({"message": "Validation failed", "code": "unprocessable"}),
                        None,
                    );
                }
                if state.slow_retry.contains(&delivery) {
                    let record = state
                        .deliveries
                        .get_mut(&id)
                        .and_then(|list| list.iter_mut().find(|d| d["id"] == delivery))
                        .unwrap();
                    record["status"] = "pending".into();
                    return (200, json!({"status": "pending"}), Some((0, delivery)));
                }
                if state.spent.contains(&delivery) {
                    return (
                        422,
                        json!({"message": "Maximum retries reached", "code": "max_retries"}),
                        None,
                    );
                }
                (200, json!({"status": "pending"}), Some((id, delivery)))
            }
            _ => (404, json!({"message": "no such endpoint"}), None),
        }
    }

    /// Sends a delivery's payload to its subscription's URL with its custom headers, as
    /// FirstPromoter does, and records the outcome.
    async fn redeliver(&self, subscription: u64, delivery: u64) {
        let (url, headers, payload, event_id, event_type) = {
            let state = self.state.lock().unwrap();
            let sub = state
                .subscriptions
                .iter()
                .find(|s| s["id"] == subscription)
                .unwrap()
                .clone();
            let record = state.deliveries[&subscription]
                .iter()
                .find(|d| d["id"] == delivery)
                .unwrap()
                .clone();
            (
                sub["url"].as_str().unwrap().to_owned(),
                sub["headers"].as_object().cloned().unwrap_or_default(),
                record["payload"].clone(),
                record["event_id"].as_str().unwrap().to_owned(),
                record["event_type"].as_str().unwrap().to_owned(),
            )
        };
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut sent: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        sent.push(("x-event-id".into(), event_id));
        sent.push(("x-event-type".into(), event_type));
        let pairs: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let reply = send(
            host.parse().unwrap(),
            "POST",
            path,
            &pairs,
            Bytes::from(payload.to_string()),
        )
        .await;
        let mut state = self.state.lock().unwrap();
        let record = state
            .deliveries
            .get_mut(&subscription)
            .unwrap()
            .iter_mut()
            .find(|d| d["id"] == delivery)
            .unwrap();
        record["status"] = if reply.status.is_success() {
            "delivered"
        } else {
            "failed"
        }
        .into();
        record["response_code"] = reply.status.as_u16().into();
    }

    fn add_subscription(&self, url: &str, headers: Value) -> u64 {
        let mut state = self.state.lock().unwrap();
        state.next_id += 1;
        let id = state.next_id;
        let types = state.event_types.clone();
        state.subscriptions.push(json!({
            "id": id, "url": url, "event_types": types, "headers": headers,
            "timeout": 30, "max_retries": 3, "active": true, "campaign_ids": [1]
        }));
        id
    }

    /// Adds a delivery of a fresh `referral.created` event to `subscription`, created `ago`;
    /// returns its event id.
    fn add_delivery(&self, subscription: u64, status: &str, ago: Duration) -> String {
        self.add_deliveries(subscription, status, &[ago]).remove(0)
    }

    /// Adds one delivery of a fresh `referral.created` event per entry of `ages`; returns
    /// their event ids.
    fn add_deliveries(&self, subscription: u64, status: &str, ages: &[Duration]) -> Vec<String> {
        let mut ids = Vec::new();
        for ago in ages {
            ids.push(
                self.add_event(subscription, status, *ago, "referral.created", |id| {
                    json!({"id": id, "email": format!("lead{id}@example.com"),
                       "promoter": {"id": 7, "auth_token": "secret-promoter-token"}})
                }),
            );
        }
        // Newest first.
        let mut state = self.state.lock().unwrap();
        let list = state.deliveries.entry(subscription).or_default();
        list.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
        ids
    }

    /// Adds a delivery of a fresh `event_type` event whose `data` is `data(entity id)`, at the
    /// end of the list (callers sort); returns its event id.
    fn add_event(
        &self,
        subscription: u64,
        status: &str,
        ago: Duration,
        event_type: &str,
        data: impl Fn(u64) -> Value,
    ) -> String {
        let mut state = self.state.lock().unwrap();
        state.next_id += 1;
        let id = state.next_id;
        let event_id = format!("evt_{}", uuid::Uuid::new_v4().simple());
        let created = humantime::format_rfc3339_millis(SystemTime::now() - ago).to_string();
        let (entity_type, action) = event_type.split_once('.').unwrap();
        let mut payload = json!({
            "event_id": event_id, "event_type": event_type, "action": action,
            "entity_type": entity_type, "entity_id": id, "created_at": created,
            "data": data(id)
        });
        if event_type == "commission.updated" {
            payload["changes"] = json!({"status": ["pending", "approved"]});
            payload["entity_id"] = payload["data"]["id"].clone();
        }
        let list = state.deliveries.entry(subscription).or_default();
        list.push(json!({
            "id": id, "event_id": event_id, "event_type": event_type,
            "action": action, "entity_type": entity_type, "entity_id": id,
            "status": status, "attempts": 11, "last_error": "Connection refused",
            "response_code": if status == "failed" { json!(503) } else { json!(200) },
            "response_body": "", "object_changes": {}, "payload": payload,
            "created_at": created, "delivered_at": null
        }));
        event_id
    }

    /// The dedup key of the event `event_id` as the relay publishes its recorded payload
    /// (through the default pipeline: redacted), the key a relay's mark for it carries.
    fn recorded_key(&self, subscription: u64, event_id: &str) -> fp_relay::dedup::Key {
        let payload = {
            let state = self.state.lock().unwrap();
            state.deliveries[&subscription]
                .iter()
                .find(|d| d["event_id"] == event_id)
                .unwrap()["payload"]
                .clone()
        };
        let body = bytes::Bytes::from(serde_json::to_vec(&payload).unwrap());
        let prepared = fp_relay::pipeline::Pipeline::new(&fp_relay::config::Config::default())
            .prepare(
                &http::HeaderMap::new(),
                body,
                &fp_relay::kafka::record::Received::now(),
            )
            .unwrap();
        fp_relay::dedup::key_of_record(&prepared.record).unwrap()
    }

    /// The fake's id of the delivery of `event_id`.
    fn delivery_id(&self, subscription: u64, event_id: &str) -> u64 {
        let state = self.state.lock().unwrap();
        state.deliveries[&subscription]
            .iter()
            .find(|d| d["event_id"] == event_id)
            .unwrap()["id"]
            .as_u64()
            .unwrap()
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn subscriptions(&self) -> Vec<Value> {
        self.state.lock().unwrap().subscriptions.clone()
    }

    fn delivery_status(&self, subscription: u64, event_id: &str) -> String {
        let state = self.state.lock().unwrap();
        state.deliveries[&subscription]
            .iter()
            .find(|d| d["event_id"] == event_id)
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn param(query: &str, name: &str) -> Option<usize> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// `fp-relay <args>` with the fake's settings and `env` in the environment.
async fn fp_relay(api: SocketAddr, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fp-relay"));
    command
        .args(args)
        .envs(FakeApi::env(api))
        .envs(env.iter().copied())
        .env_remove("FP_RELAY_CONFIG");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn subscribe_creates_then_updates_one_subscription_with_every_event_type_and_the_token() {
    let (fake, api) = FakeApi::start().await;
    let token_env = format!("[\"{TOKEN}\"]");
    let env = [
        ("FP_RELAY_AUTH_TOKENS", token_env.as_str()),
        ("FP_RELAY_KAFKA_ACK_TIMEOUT", "7s"),
    ];
    let subscribe = ["firstpromoter", "subscribe", "--url", RELAY_URL];

    let dry = fp_relay(api, &env, &[&subscribe[..], &["--dry-run"]].concat()).await;
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("would create"), "{}", text(&dry));
    assert!(fake.subscriptions().is_empty(), "a dry run changes nothing");

    let created = fp_relay(api, &env, &subscribe).await;
    assert!(created.status.success(), "{}", text(&created));
    let subscriptions = fake.subscriptions();
    assert_eq!(subscriptions.len(), 1);
    let sub = &subscriptions[0];
    assert_eq!(sub["url"], RELAY_URL);
    let types = fake.state.lock().unwrap().event_types.clone();
    assert_eq!(
        sub["event_types"],
        json!(types),
        "every event type the API lists"
    );
    assert_eq!(sub["headers"]["Authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(sub["timeout"], 12, "ack_timeout 7 s plus 5 s of margin");
    assert_eq!(sub["max_retries"], 10);
    assert!(!text(&created).contains(TOKEN) && !text(&created).contains(API_KEY));

    // Somebody trims it by hand; the next run restores it, in place.
    {
        let mut state = fake.state.lock().unwrap();
        let sub = &mut state.subscriptions[0];
        sub["event_types"] = json!(["referral.created"]);
        sub["timeout"] = 30.into();
        sub["headers"] = json!({"authorization": "Bearer old-token", "X-Team": "growth"});
    }
    let updated = fp_relay(api, &env, &subscribe).await;
    assert!(updated.status.success(), "{}", text(&updated));
    let subscriptions = fake.subscriptions();
    assert_eq!(subscriptions.len(), 1, "found by URL, never a duplicate");
    let sub = &subscriptions[0];
    assert_eq!(sub["event_types"], json!(types));
    assert_eq!(sub["timeout"], 12);
    assert_eq!(
        sub["headers"],
        json!({"X-Team": "growth", "Authorization": format!("Bearer {TOKEN}")}),
        "other custom headers are kept"
    );
    let puts = fake.seen().iter().filter(|s| s.method == "PUT").count();
    assert_eq!(puts, 1);

    let again = fp_relay(api, &env, &subscribe).await;
    assert!(text(&again).contains("up to date"), "{}", text(&again));
    let puts = fake.seen().iter().filter(|s| s.method == "PUT").count();
    assert_eq!(puts, 1, "nothing to change, nothing sent");

    let plain = fp_relay(
        api,
        &env,
        &[
            "firstpromoter",
            "subscribe",
            "--url",
            "http://relay.example.com/webhooks/firstpromoter",
        ],
    )
    .await;
    assert!(!plain.status.success());
    assert!(text(&plain).contains("https"), "{}", text(&plain));

    // A Basic user instead of a token.
    let basic = [(
        "FP_RELAY_AUTH_BASIC__FIRSTPROMOTER",
        "basic-password-0123456789",
    )];
    let other = "https://relay.example.com/webhooks/firstpromoter/basic";
    let created = fp_relay(api, &basic, &["firstpromoter", "subscribe", "--url", other]).await;
    assert!(created.status.success(), "{}", text(&created));
    let posts: Vec<Seen> = fake
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    let body = &posts.last().unwrap().body;
    assert_eq!(body["basic_auth_user"], "firstpromoter");
    assert_eq!(body["basic_auth_password"], "basic-password-0123456789");
    assert!(!text(&created).contains("basic-password-0123456789"));
    assert!(fake
        .seen()
        .iter()
        .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {API_KEY}"))));
}

#[tokio::test]
async fn a_wrong_key_is_said_once_and_never_printed() {
    let (_fake, api) = FakeApi::start().await;
    let wrong = "fp_wrong_key_0123456789abcdef";
    let out = fp_relay(
        api,
        &[("FP_RELAY_FIRSTPROMOTER_API_KEY", wrong)],
        &["firstpromoter", "status"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out);
    assert!(said.contains("401") && said.contains("api_key"), "{said}");
    assert!(!said.contains(wrong) && !said.contains(API_KEY), "{said}");
}

/// 130 deliveries (two pages), seven failed ones among them, one of those already in Kafka:
/// recover publishes exactly the other six once, redacted and marked, and a second run
/// publishes nothing. A 429 on the way is honoured.
#[tokio::test]
async fn recover_publishes_exactly_the_failed_deliveries_once_across_pages_and_runs() {
    let broker = Tansu::start();
    let (fake, api) = FakeApi::start().await;
    let sub = fake.add_subscription(RELAY_URL, json!({}));
    let elsewhere = fake.add_subscription("https://other.example.com/hooks", json!({}));
    let mut failed = Vec::new();
    for n in 0..130u64 {
        let status = if n % 19 == 3 { "failed" } else { "delivered" };
        let id = fake.add_delivery(sub, status, Duration::from_secs(60 * (n + 1)));
        if status == "failed" {
            failed.push(id);
        }
    }
    assert_eq!(failed.len(), 7);
    fake.add_delivery(sub, "failed", Duration::from_secs(3 * 24 * 3600)); // out of the window
    fake.add_delivery(elsewhere, "failed", Duration::from_secs(60)); // not this relay's
    let topic = "firstpromoter.referral.created";
    common::create_topic(&broker.bootstrap(), topic, 2).await;
    // One of them did reach Kafka (the relay answered after FirstPromoter gave up).
    produce(
        &broker.bootstrap(),
        topic,
        None,
        Some("x"),
        &[("fp-event-id", failed[2].as_str())],
        "{}",
    )
    .await;
    fake.state.lock().unwrap().rate_limit_next = 1;
    let brokers = broker.bootstrap();
    let env = [("FP_RELAY_KAFKA_BROKERS", brokers.as_str())];

    let dry = fp_relay(
        api,
        &env,
        &["firstpromoter", "recover", "--since", "24h", "--dry-run"],
    )
    .await;
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("7 failed deliveries"), "{}", text(&dry));
    assert_eq!(text(&dry).matches("would ").count(), 6, "{}", text(&dry));

    let run = fp_relay(api, &env, &["firstpromoter", "recover", "--since", "24h"]).await;
    assert!(run.status.success(), "{}", text(&run));
    let said = text(&run);
    assert!(
        said.contains(
            "published 6, fulfilment requests completed 0, retried by FirstPromoter 0, already in Kafka 1, undone 0"
        ),
        "{said}"
    );
    assert!(!said.contains(API_KEY) && !said.contains("secret-promoter-token"));
    let records = consume_all(&brokers, topic, Duration::from_secs(2)).await;
    let mut published: Vec<String> = records
        .iter()
        .filter(|r| r.header("fp-recovered-from").is_some())
        .map(|r| r.header("fp-event-id").unwrap().to_owned())
        .collect();
    published.sort();
    let mut expected: Vec<String> = failed
        .iter()
        .filter(|id| **id != failed[2])
        .cloned()
        .collect();
    expected.sort();
    assert_eq!(published, expected, "exactly the failed deliveries' events");
    let one = records
        .iter()
        .find(|r| r.header("fp-recovered-from").is_some())
        .unwrap();
    let value: Value = serde_json::from_slice(&one.value).unwrap();
    assert_eq!(value["data"]["promoter"]["auth_token"], "[redacted]");
    assert_eq!(one.header("fp-webhook-version"), Some("v2"));
    assert_eq!(
        one.header("ce_type"),
        Some("com.firstpromoter.referral.created")
    );
    assert!(one
        .header("fp-recovered-from")
        .unwrap()
        .starts_with(&format!("firstpromoter delivery {sub}/")));

    // The 429 was honoured: the next call came at least its Retry-After later.
    let seen = fake.seen();
    let limited = seen.iter().position(|s| s.status == 429).expect("a 429");
    let gap = seen[limited + 1].at - seen[limited].at;
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
    assert!(seen
        .iter()
        .any(|s| s.path.ends_with("webhook_deliveries") && s.query.contains("page=2")));

    let again = fp_relay(api, &env, &["firstpromoter", "recover", "--since", "24h"]).await;
    assert!(
        text(&again).contains(
            "published 0, fulfilment requests completed 0, retried by FirstPromoter 0, already in Kafka 7, undone 0"
        ),
        "{}",
        text(&again)
    );
    let records = consume_all(&brokers, topic, Duration::from_secs(2)).await;
    assert_eq!(records.len(), 7, "nothing published twice");
}

/// `--retry-delivery`: FirstPromoter sends a delivery it still may again, through the relay
/// with the subscription's headers; one whose retries are spent (422) is published from its
/// recorded payload.
#[tokio::test]
async fn recover_asks_firstpromoter_to_retry_and_publishes_what_it_refuses() {
    let broker = Tansu::start();
    let mut config = common::test_config(&broker.bootstrap());
    config.auth.insecure_no_auth = false;
    config.auth.tokens = vec![TOKEN.to_owned()];
    let relay = TestRelay::start_ready(config).await;
    let (fake, api) = FakeApi::start().await;
    let url = format!("http://{}/webhooks/firstpromoter", relay.addr);
    let sub = fake.add_subscription(&url, json!({"Authorization": format!("Bearer {TOKEN}")}));
    let retried = fake.add_delivery(sub, "failed", Duration::from_secs(600));
    let spent = fake.add_delivery(sub, "failed", Duration::from_secs(300));
    let id = fake.delivery_id(sub, &spent);
    fake.state.lock().unwrap().spent.push(id);
    let brokers = broker.bootstrap();
    let env = [("FP_RELAY_KAFKA_BROKERS", brokers.as_str())];
    let run = fp_relay(api, &env, &["firstpromoter", "recover", "--retry-delivery"]).await;
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        text(&run).contains(
            "published 1, fulfilment requests completed 0, retried by FirstPromoter 1, already in Kafka 0, undone 0"
        ),
        "{}",
        text(&run)
    );
    assert_eq!(fake.delivery_status(sub, &retried), "delivered");
    let topic = "firstpromoter.referral.created";
    assert!(
        eventually(WAIT, async || consume_all(
            &brokers,
            topic,
            Duration::from_secs(1)
        )
        .await
        .len()
            >= 2)
        .await
    );
    let records = consume_all(&brokers, topic, Duration::from_secs(1)).await;
    let by_id: BTreeMap<&str, bool> = records
        .iter()
        .map(|r| {
            (
                r.header("fp-event-id").unwrap(),
                r.header("fp-recovered-from").is_some(),
            )
        })
        .collect();
    assert_eq!(
        by_id,
        BTreeMap::from([(retried.as_str(), false), (spent.as_str(), true)]),
        "the retried one came through the relay, the spent one from its payload"
    );
    relay.shutdown().await;
}

/// Reconciliation in `serve`: the metrics match the fake's counts for the subscription that
/// points at the relay, each failed delivery is logged once (no payload, no key), and the
/// count does not grow on the next rounds.
#[tokio::test]
async fn reconcile_metrics_match_firstpromoters_records() {
    let broker = Tansu::start();
    let (fake, api) = FakeApi::start().await;
    let sub = fake.add_subscription(RELAY_URL, json!({}));
    let elsewhere = fake.add_subscription("https://other.example.com/hooks", json!({}));
    for _ in 0..3 {
        fake.add_delivery(sub, "delivered", Duration::from_secs(60));
    }
    let failed = [
        fake.add_delivery(sub, "failed", Duration::from_secs(3600)),
        fake.add_delivery(sub, "failed", Duration::from_secs(1800)),
    ];
    fake.add_delivery(sub, "retrying", Duration::from_secs(2 * 3600));
    fake.add_delivery(sub, "pending", Duration::from_secs(30));
    fake.add_delivery(sub, "failed", Duration::from_secs(3 * 24 * 3600)); // out of the window
    fake.add_delivery(elsewhere, "failed", Duration::from_secs(60)); // not this relay's
    let mut env: Vec<(String, String)> = FakeApi::env(api);
    env.push((
        "FP_RELAY_FIRSTPROMOTER_RECONCILE__ENABLED".into(),
        "true".into(),
    ));
    env.push((
        "FP_RELAY_FIRSTPROMOTER_RECONCILE__INTERVAL".into(),
        "300ms".into(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let relay = common::RelayProcess::start_with(&broker, &env).await;
    let metric = async |series: &str| -> Option<f64> {
        let reply = common::get(relay.admin, "/metrics").await;
        reply
            .text()
            .lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert!(
        eventually(WAIT, async || metric(
            "fp_relay_firstpromoter_reconcile_runs_total{result=\"ok\"}"
        )
        .await
        .unwrap_or(0.0)
            >= 3.0)
        .await,
        "three rounds"
    );
    for (status, count) in [
        ("delivered", 3.0),
        ("failed", 2.0),
        ("retrying", 1.0),
        ("pending", 1.0),
    ] {
        let series = format!("fp_relay_firstpromoter_deliveries{{status=\"{status}\"}}");
        assert_eq!(metric(&series).await, Some(count), "{series}");
    }
    assert_eq!(
        metric("fp_relay_firstpromoter_failed_deliveries_total").await,
        Some(2.0),
        "each failure counted once over three rounds"
    );
    let oldest = metric("fp_relay_firstpromoter_oldest_undelivered_seconds")
        .await
        .unwrap();
    assert!((7190.0..7300.0).contains(&oldest), "{oldest}");
    let (_, lines) = relay.terminate().await;
    let failures: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("FirstPromoter gave up delivering"))
        })
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    let mut logged: Vec<&str> = failures
        .iter()
        .map(|l| l["event_id"].as_str().unwrap())
        .collect();
    logged.sort();
    let mut expected: Vec<&str> = failed.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(logged, expected);
    assert_eq!(failures[0]["response_code"], 503);
    let all = serde_json::to_string(&lines).unwrap();
    assert!(!all.contains(API_KEY), "the key never appears in logs");
    assert!(!all.contains("secret-promoter-token"), "nor a payload");
}

/// Env for v2 fulfilment: approvals of `points` commissions become fulfilment requests.
const V2_FULFILMENT: (&str, &str) = ("FP_RELAY_FULFILMENT_V2__ENABLED", "true");
const APPROVALS: &str = "firstpromoter.commission.updated";
const REQUESTS: &str = "firstpromoter.fulfilment_pending";

/// A failed delivery of the approval of `commission` (a `points` reward).
fn add_approval(fake: &FakeApi, subscription: u64, commission: u64, ago: Duration) -> String {
    let id = fake.add_event(subscription, "failed", ago, "commission.updated", |_| {
        json!({"id": commission, "status": "approved", "unit": "points", "amount": 500,
               "note": "x".repeat(17_000)})
    });
    let mut state = fake.state.lock().unwrap();
    let list = state.deliveries.get_mut(&subscription).unwrap();
    list.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
    id
}

/// Bytes librdkafka counts of a record against `message.max.bytes`, but its fixed framing.
fn size_of(record: &common::Consumed) -> usize {
    record.key.as_deref().map_or(0, str::len)
        + record.value.len()
        + record
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>()
}

/// A v2 approval whose event reached Kafka but whose fulfilment request did not (the live relay
/// published the event and answered 503; or Kafka refused the request on an earlier run): the
/// next run publishes the request only, never the event twice, and exits 1 while anything is
/// left undone.
#[tokio::test]
async fn recover_finishes_half_published_approvals_and_publishes_nothing_twice() {
    let broker = Tansu::start();
    let brokers = broker.bootstrap();
    let (fake, api) = FakeApi::start().await;
    let sub = fake.add_subscription(RELAY_URL, json!({}));
    let first = add_approval(&fake, sub, 4101, Duration::from_secs(900));
    common::create_topic(&brokers, APPROVALS, 1).await;
    common::create_topic(&brokers, REQUESTS, 1).await;
    // The live relay published the event, then its request failed.
    produce(
        &brokers,
        APPROVALS,
        None,
        Some("4101"),
        &[("fp-event-id", &first)],
        "{}",
    )
    .await;

    let env = [("FP_RELAY_KAFKA_BROKERS", brokers.as_str()), V2_FULFILMENT];
    let run = fp_relay(api, &env, &["firstpromoter", "recover"]).await;
    let said = text(&run);
    assert!(run.status.success(), "{said}");
    assert!(said.contains("fulfilment requests completed 1"), "{said}");
    let requests = consume_all(&brokers, REQUESTS, Duration::from_secs(2)).await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request.key.as_deref(), Some("4101"));
    assert_eq!(request.header("fp-event-id"), Some(first.as_str()));
    assert!(request.header("fp-correlation-id").is_some());
    assert!(request.header("fp-recovered-from").is_some());
    assert_eq!(
        consume_all(&brokers, APPROVALS, Duration::from_secs(1))
            .await
            .len(),
        1,
        "the event is not published again"
    );

    // A second approval; Kafka refuses its request (too large for message.max.bytes, set
    // between the event's size and the request's), not its event. (The payloads are 17 KB, so
    // that such a limit passes the relay's own check of message.max.bytes.)
    let second = add_approval(&fake, sub, 4102, Duration::from_secs(600));
    let fulfilment_headers: usize = request
        .headers
        .iter()
        .filter(|(k, _)| {
            ["fp-correlation-id", "fp-reply-topic", "fp-deadline"].contains(&k.as_str())
        })
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum();
    let limit = (size_of(request) - fulfilment_headers / 2 + 40).to_string();
    let limited = [
        ("FP_RELAY_KAFKA_BROKERS", brokers.as_str()),
        V2_FULFILMENT,
        ("FP_RELAY_KAFKA_PROPERTY_MESSAGE_MAX_BYTES", limit.as_str()),
        // The relay keeps 16 KiB under message.max.bytes for headers and key.
        ("FP_RELAY_HTTP_MAX_BODY_BYTES", "1024"),
    ];
    let run = fp_relay(api, &limited, &["firstpromoter", "recover"]).await;
    let said = text(&run);
    assert_eq!(run.status.code(), Some(1), "{said}");
    assert!(said.contains("undone 1 (1 refused by Kafka)"), "{said}");
    assert!(said.contains("already in Kafka 1"), "{said}");
    assert!(said.contains("1 failed delivery left undone"), "{said}");
    let events = consume_all(&brokers, APPROVALS, Duration::from_secs(1)).await;
    assert_eq!(events.len(), 2, "the second event went in: {events:?}");
    assert_eq!(events[1].header("fp-event-id"), Some(second.as_str()));
    assert_eq!(
        consume_all(&brokers, REQUESTS, Duration::from_secs(1))
            .await
            .len(),
        1
    );

    // The same command again, with Kafka accepting: only the missing request goes in.
    let run = fp_relay(api, &env, &["firstpromoter", "recover"]).await;
    let said = text(&run);
    assert!(run.status.success(), "{said}");
    assert!(
        said.contains("published 0, fulfilment requests completed 1, retried by FirstPromoter 0, already in Kafka 1, undone 0"),
        "{said}"
    );
    let requests = consume_all(&brokers, REQUESTS, Duration::from_secs(1)).await;
    let keys: Vec<Option<&str>> = requests.iter().map(|r| r.key.as_deref()).collect();
    assert_eq!(keys, [Some("4101"), Some("4102")]);
    assert_eq!(
        consume_all(&brokers, APPROVALS, Duration::from_secs(1))
            .await
            .len(),
        2,
        "no event twice"
    );
}

/// `--retry-delivery` reads a 422 by what it means: spent retries (publish the payload), a
/// retry queued by an earlier attempt of the same call whose answer came too late (the
/// delivery is pending now: nothing to publish), anything else (left undone, exit 1).
#[tokio::test]
async fn recover_reads_a_422_by_its_message_and_the_deliverys_status() {
    let broker = Tansu::start();
    let brokers = broker.bootstrap();
    let (fake, api) = FakeApi::start().await;
    let sub = fake.add_subscription(RELAY_URL, json!({}));
    let ids = fake.add_deliveries(
        sub,
        "failed",
        &[
            Duration::from_secs(900),
            Duration::from_secs(600),
            Duration::from_secs(300),
        ],
    );
    let (spent, queued_late, refused) = (&ids[0], &ids[1], &ids[2]);
    {
        let spent = fake.delivery_id(sub, spent);
        let late = fake.delivery_id(sub, queued_late);
        let refused = fake.delivery_id(sub, refused);
        let mut state = fake.state.lock().unwrap();
        state.spent.push(spent);
        state.slow_retry.push(late);
        state.refused.push(refused);
    }
    let topic = "firstpromoter.referral.created";
    common::create_topic(&brokers, topic, 1).await;
    let env = [
        ("FP_RELAY_KAFKA_BROKERS", brokers.as_str()),
        ("FP_RELAY_FIRSTPROMOTER_CALL_TIMEOUT", "1s"),
    ];
    let run = fp_relay(api, &env, &["firstpromoter", "recover", "--retry-delivery"]).await;
    let said = text(&run);
    assert_eq!(run.status.code(), Some(1), "{said}");
    assert!(
        said.contains("published 1, fulfilment requests completed 0, retried by FirstPromoter 1, already in Kafka 0, undone 1 (1 retry_delivery failed)"),
        "{said}"
    );
    assert!(said.contains("queued already"), "{said}");
    let published: Vec<String> = consume_all(&brokers, topic, Duration::from_secs(2))
        .await
        .iter()
        .map(|r| r.header("fp-event-id").unwrap().to_owned())
        .collect();
    assert_eq!(
        published,
        std::slice::from_ref(spent),
        "only the spent one from its payload"
    );
    let retries = fake
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("retry_delivery"))
        .count();
    assert_eq!(
        retries, 4,
        "one each, and the late one asked again after its timeout"
    );
    assert_eq!(fake.delivery_status(sub, queued_late), "pending");
}

/// More deliveries in the window than recover reads (100 pages of 100): it says so, reads
/// what it can, and exits 1; `status` says so too; a window that fits reads to its end.
#[tokio::test]
async fn a_deliveries_list_longer_than_the_page_limit_is_said_and_fails_the_run() {
    let broker = Tansu::start();
    let brokers = broker.bootstrap();
    let (fake, api) = FakeApi::start().await;
    let sub = fake.add_subscription(RELAY_URL, json!({}));
    let ages: Vec<Duration> = (0..10_050u64)
        .map(|n| Duration::from_secs(3600 + n))
        .collect();
    fake.add_deliveries(sub, "delivered", &ages);
    let recent = fake.add_delivery(sub, "failed", Duration::from_secs(60));
    let env = [("FP_RELAY_KAFKA_BROKERS", brokers.as_str())];

    let run = fp_relay(api, &env, &["firstpromoter", "recover", "--since", "24h"]).await;
    let said = text(&run);
    assert_eq!(run.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "subscription {sub}: stopped after 100 pages of 100 deliveries"
        )) && said.contains("were not read"),
        "{said}"
    );
    assert!(
        said.contains("published 1"),
        "what was read is recovered: {said}"
    );
    assert!(said.contains("shorter --since"), "{said}");
    let status = fp_relay(api, &env, &["firstpromoter", "status", "--since", "24h"]).await;
    assert!(
        text(&status).contains("stopped after 100 pages"),
        "{}",
        text(&status)
    );

    let run = fp_relay(api, &env, &["firstpromoter", "recover", "--since", "30m"]).await;
    let said = text(&run);
    assert!(run.status.success(), "{said}");
    assert!(!said.contains("stopped after"), "{said}");
    assert!(said.contains("already in Kafka 1"), "{said}");
    let records = consume_all(
        &brokers,
        "firstpromoter.referral.created",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].header("fp-event-id"), Some(recent.as_str()));
}

/// A metadata error other than "unknown topic" (here: not authorised) stops the run before
/// anything is published, instead of being read as "nothing there yet" and publishing
/// everything again. librdkafka's mock cluster injects the error.
#[tokio::test]
async fn a_metadata_error_is_an_error_and_nothing_is_published() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::RDKafkaRespErr;
    let (fake, api) = FakeApi::start().await;
    let sub = fake.add_subscription(RELAY_URL, json!({}));
    fake.add_delivery(sub, "failed", Duration::from_secs(60));
    let cluster = MockCluster::new(1).unwrap();
    let topic = "firstpromoter.referral.created";
    cluster.create_topic(topic, 1, 1).unwrap();
    cluster
        .topic_error(
            topic,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let brokers = cluster.bootstrap_servers();
    let env = [("FP_RELAY_KAFKA_BROKERS", brokers.as_str())];
    let run = fp_relay(api, &env, &["firstpromoter", "recover"]).await;
    let said = text(&run);
    assert_eq!(run.status.code(), Some(1), "{said}");
    assert!(
        said.contains("TopicAuthorizationFailed") && said.contains("nothing was published"),
        "{said}"
    );
    assert!(!said.contains("publish "), "{said}");
}

/// `requests_per_minute` is the account's: with `replicas = 3`, each of three processes calls
/// at most a third of it. Three `status` runs reading 40 pages each, at 60 a minute: in 12 s
/// FirstPromoter sees at most 3 x (a burst of 5 + 12 s at 20 a minute) = 27 calls; the same
/// three runs told `replicas = 1` (each taking the whole budget) make far more.
#[tokio::test(flavor = "multi_thread")]
async fn processes_share_the_accounts_budget() {
    let mut runs = Vec::new();
    for replicas in ["3", "1"] {
        let (fake, api) = FakeApi::start().await;
        let sub = fake.add_subscription(RELAY_URL, json!({}));
        let ages: Vec<Duration> = (0..4_000u64).map(|n| Duration::from_secs(60 + n)).collect();
        fake.add_deliveries(sub, "delivered", &ages);
        let children: Vec<std::process::Child> = (0..3)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_fp-relay"))
                    .args(["firstpromoter", "status", "--since", "24h"])
                    .envs(FakeApi::env(api))
                    .env("FP_RELAY_FIRSTPROMOTER_REQUESTS_PER_MINUTE", "60")
                    .env("FP_RELAY_FIRSTPROMOTER_REPLICAS", replicas)
                    .env_remove("FP_RELAY_CONFIG")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        runs.push((replicas, fake, children));
    }
    tokio::time::sleep(Duration::from_secs(14)).await;
    let mut counted = BTreeMap::new();
    for (replicas, fake, children) in runs {
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let seen = fake.seen();
        let first = seen.first().expect("calls").at;
        let within = seen
            .iter()
            .filter(|s| s.at - first < Duration::from_secs(12))
            .count();
        counted.insert(replicas, within);
    }
    eprintln!("calls in 12 s by replicas setting: {counted:?}");
    assert!(counted["3"] <= 30, "shared: {counted:?}");
    assert!(counted["3"] >= 15, "but not stopped: {counted:?}");
    assert!(
        counted["1"] >= 36,
        "each process its own budget: {counted:?}"
    );
}

/// Two failed deliveries, one of whose events a relay published meanwhile (its mark is on
/// `dedup.topic`, not in the topic window recover reads): recover writes only the other, says
/// so in its summary, and marks what it wrote, so a second run writes nothing either.
#[tokio::test]
async fn recover_consults_the_dedup_topic_and_marks_what_it_writes() {
    let broker = Tansu::start();
    let (fake, api) = FakeApi::start().await;
    let sub = fake.add_subscription(RELAY_URL, json!({}));
    let known = fake.add_delivery(sub, "failed", Duration::from_secs(60));
    let missing = fake.add_delivery(sub, "failed", Duration::from_secs(120));
    let brokers = broker.bootstrap();
    common::create_topic(&brokers, "fp.dedup", 1).await;
    let mark = fp_relay::dedup::shared::encode_marks(&[fake.recorded_key(sub, &known)]);
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::<(), _>::to("fp.dedup").payload(&mark[..]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let env = [
        ("FP_RELAY_KAFKA_BROKERS", brokers.as_str()),
        ("FP_RELAY_DEDUP_ENABLED", "true"),
        ("FP_RELAY_DEDUP_TOPIC", "fp.dedup"),
    ];
    let run = fp_relay(api, &env, &["firstpromoter", "recover", "--since", "24h"]).await;
    let said = text(&run);
    assert!(run.status.success(), "{said}");
    assert!(
        said.contains("published 1, fulfilment requests completed 0, retried by FirstPromoter 0, already in Kafka 0, known to the dedup topic 1, undone 0"),
        "{said}"
    );
    let topic = "firstpromoter.referral.created";
    let ids: Vec<String> = consume_all(&brokers, topic, Duration::from_secs(2))
        .await
        .iter()
        .map(|r| r.header("fp-event-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![missing.clone()]);
    let again = fp_relay(api, &env, &["firstpromoter", "recover", "--since", "24h"]).await;
    assert!(
        text(&again).contains("published 0, fulfilment requests completed 0, retried by FirstPromoter 0, already in Kafka 1, known to the dedup topic 1, undone 0"),
        "{}",
        text(&again)
    );
    let marks = consume_all(&brokers, "fp.dedup", Duration::from_secs(2)).await;
    let written = fake.recorded_key(sub, &missing);
    assert!(
        marks.iter().any(|m| {
            fp_relay::dedup::shared::parse_marks(&m.value)
                .is_some_and(|keys| keys.contains(&written))
        }),
        "recover marked what it wrote"
    );
}
