//! Webhooks v2 fulfilment against a real tansu broker and a fake FirstPromoter API served by
//! the test: an approved non-monetary commission becomes a fulfilment request, and a
//! `fulfilled` reply becomes exactly one `mark_fulfilled` call.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{
    consume, consume_all, eventually, get, produce, sample, Consumed, Tansu, TestRelay, ACCOUNT,
    API_KEY,
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

const REQUESTS: &str = "firstpromoter.fulfilment_pending";
const REPLIES: &str = "firstpromoter.fulfilment_replies";
const ROUTED: &str = "firstpromoter.commission.updated";
const DEAD_LETTERS: &str = "firstpromoter.dead_letter";
/// The commission of samples/v2/commission.updated.reward.json.
const COMMISSION: u64 = 5512944;
const WAIT: Duration = Duration::from_secs(20);

/// One call the fake API received.
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    path: String,
    authorization: Option<String>,
    account_id: Option<String>,
    body: serde_json::Value,
    /// The status the fake answered.
    status: u16,
}

/// An answer the fake API gives: status, `Retry-After`, body.
type Scripted = (u16, Option<&'static str>, &'static str);

/// An answer chosen from the ids of a call (`None`: the script decides).
type Rule = Box<dyn Fn(&[u64]) -> Option<Scripted> + Send>;

/// FirstPromoter's company API as far as the relay uses it: records every call and answers
/// by its rule, else with the scripted answers in order, then 200 `completed`.
#[derive(Clone, Default)]
struct FakeFirstPromoter {
    calls: Arc<Mutex<Vec<Call>>>,
    script: Arc<Mutex<VecDeque<Scripted>>>,
    rule: Arc<Mutex<Option<Rule>>>,
}

impl FakeFirstPromoter {
    async fn start(script: &[Scripted]) -> (Self, SocketAddr) {
        let fake = Self::default();
        fake.script.lock().unwrap().extend(script.iter().copied());
        let server = fake.clone();
        let addr = common::serve_http(move |request| {
            let server = server.clone();
            async move { server.answer(request).await }
        })
        .await;
        (fake, addr)
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (path, authorization, account_id) = (
            request.uri().path().to_owned(),
            header("authorization"),
            header("account-id"),
        );
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let ids: Vec<u64> = body["ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_u64)
            .collect();
        let ruled = self
            .rule
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|rule| rule(&ids));
        let (status, retry_after, answer) = ruled
            .or_else(|| self.script.lock().unwrap().pop_front())
            .unwrap_or((200, None, r#"{"status":"completed","message":"marked"}"#));
        self.calls.lock().unwrap().push(Call {
            at: Instant::now(),
            path,
            authorization,
            account_id,
            body,
            status,
        });
        let mut response = Response::builder()
            .status(status)
            .header("content-type", "application/json");
        if let Some(seconds) = retry_after {
            response = response.header("retry-after", seconds);
        }
        response
            .body(Full::new(Bytes::from_static(answer.as_bytes())))
            .unwrap()
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn set_rule(&self, rule: impl Fn(&[u64]) -> Option<Scripted> + Send + 'static) {
        *self.rule.lock().unwrap() = Some(Box::new(rule));
    }

    /// The ids of calls answered 200, sorted: each id once means each was marked once.
    fn marked(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .calls()
            .iter()
            .filter(|c| c.status == 200)
            .flat_map(|c| c.body["ids"].as_array().cloned().unwrap_or_default())
            .map(|id| id.as_u64().unwrap())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Every id marked, in call order.
    fn ids(&self) -> Vec<u64> {
        self.calls()
            .iter()
            .flat_map(|c| c.body["ids"].as_array().cloned().unwrap_or_default())
            .map(|id| id.as_u64().unwrap())
            .collect()
    }
}

/// A v2 `commission.updated` body moving a commission to `status` in `unit`.
fn update(commission: u64, status: &str, unit: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"event_id":"{}","event_type":"commission.updated","action":"updated",
            "entity_type":"commission","entity_id":{commission},
            "changes":{{"status":["pending","{status}"]}},
            "data":{{"id":{commission},"status":"{status}","unit":"{unit}","amount":500}},
            "timestamp":"2026-11-01T10:00:00Z"}}"#,
        uuid::Uuid::new_v4()
    ))
}

/// A correlation id for `commission` as a relay with the tests' API key signs it (the key
/// replies are bound with is derived from it).
fn signed(commission: u64) -> String {
    let mut config = fp_relay::config::Config::default();
    config.firstpromoter.api_key = API_KEY.to_owned();
    fp_relay::fulfilment::v2::ReplyKeys::new(&config).correlation_id(commission)
}

async fn reply(broker: &Tansu, partition: Option<i32>, correlation_id: &str, outcome: &str) {
    produce(
        &broker.bootstrap(),
        REPLIES,
        partition,
        None,
        &[("fp-correlation-id", correlation_id)],
        &format!(r#"{{"outcome":"{outcome}","reason":"test"}}"#),
    )
    .await;
}

/// The `n` fulfilment requests on the request topic.
async fn requests(broker: &Tansu, n: usize) -> Vec<Consumed> {
    let found = consume(&broker.bootstrap(), REQUESTS, n, WAIT, Duration::ZERO).await;
    assert!(
        found.len() >= n,
        "{n} requests expected, found {}",
        found.len()
    );
    found
}

/// Waits until the replicas together read all `partitions` reply partitions: the group is
/// settled. (tansu keeps a member that leaves in the middle of its first join as the group's
/// leader forever, so a replica is stopped only after it joined.)
async fn group_settled(relays: &[&TestRelay], partitions: f64) {
    let gauge = "fp_relay_fulfilment_v2_assigned_partitions";
    let settled = eventually(WAIT, async || {
        let mut sum = 0.0;
        for relay in relays {
            sum += relay.metric(gauge).await;
        }
        sum == partitions
    })
    .await;
    assert!(
        settled,
        "the v2 group did not settle on {partitions} partitions"
    );
}

async fn calls_settle_at(fake: &FakeFirstPromoter, n: usize) {
    assert!(
        eventually(WAIT, async || fake.calls().len() >= n).await,
        "{n} calls expected, got {:?}",
        fake.calls()
    );
    // Then nothing more: no call is repeated.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.calls().len(), n, "{:?}", fake.calls());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approved_reward_is_requested_and_one_fulfilled_reply_marks_it_once() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[]).await;
    let mut config = common::v2_config(&broker, api);
    config.redact.fields.clear(); // so the request's value can be compared byte for byte
    let relay = TestRelay::start_ready(config).await;

    let body = sample("v2/commission.updated.reward.json");
    let answer = relay.post(body.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let answered = answer.json();
    assert_eq!(answered["status"], "fulfilment_requested");
    assert_eq!(answered["request_topic"], REQUESTS);

    let request = requests(&broker, 1).await.remove(0);
    assert_eq!(request.value, body.to_vec(), "the value is the posted body");
    assert_eq!(
        request.key.as_deref(),
        Some("5512944"),
        "keyed by commission id"
    );
    let correlation_id = request.header("fp-correlation-id").unwrap().to_owned();
    assert_eq!(
        Some(correlation_id.as_str()),
        answered["correlation_id"].as_str()
    );
    assert!(
        correlation_id.starts_with("v2:5512944:"),
        "{correlation_id}"
    );
    assert_eq!(request.header("fp-reply-topic"), Some(REPLIES));
    assert_eq!(request.header("fp-webhook-version"), Some("v2"));
    assert_eq!(request.header("fp-event-type"), Some("commission.updated"));
    let deadline = humantime::parse_rfc3339(request.header("fp-deadline").unwrap()).unwrap();
    assert!(deadline > std::time::SystemTime::now() + Duration::from_secs(24 * 3600));
    let routed = consume(&broker.bootstrap(), ROUTED, 1, WAIT, Duration::ZERO).await;
    assert_eq!(routed.len(), 1, "routed as usual too");
    assert!(
        fake.calls().is_empty(),
        "nothing is called before the fulfiller answers"
    );

    // `pending` and `failed` call nothing; a later `fulfilled` for the same id is acted on.
    reply(&broker, None, &correlation_id, "pending").await;
    reply(&broker, None, &correlation_id, "failed").await;
    assert!(
        relay
            .wait_for_metric(
                "fp_relay_fulfilment_v2_replies_total{outcome=\"failed\"}",
                1.0,
                WAIT
            )
            .await
    );
    assert_eq!(
        relay
            .metric("fp_relay_fulfilment_v2_replies_total{outcome=\"pending\"}")
            .await,
        1.0
    );
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());

    reply(&broker, None, &correlation_id, "fulfilled").await;
    calls_settle_at(&fake, 1).await;
    let call = &fake.calls()[0];
    assert_eq!(call.path, "/api/v2/company/commissions/mark_fulfilled");
    assert_eq!(
        call.authorization.as_deref(),
        Some(&*format!("Bearer {API_KEY}"))
    );
    assert_eq!(call.account_id.as_deref(), Some(ACCOUNT));
    assert_eq!(call.body, serde_json::json!({ "ids": [COMMISSION] }));
    let metric =
        "fp_relay_firstpromoter_api_calls_total{endpoint=\"mark_fulfilled\",result=\"ok\"}";
    assert!(relay.wait_for_metric(metric, 1.0, WAIT).await);
    assert_eq!(
        relay.metric("fp_relay_fulfilment_v2_marked_total").await,
        1.0
    );
    assert_eq!(
        relay
            .metric("fp_relay_fulfilment_v2_waiting_commissions")
            .await,
        0.0
    );
    assert_eq!(
        relay
            .metric("fp_relay_fulfilment_replies_ignored_total{reason=\"malformed\"}")
            .await,
        0.0,
        "the v1 reply consumer leaves v2 replies alone"
    );
    relay.shutdown().await;
}

/// A commission FirstPromoter marked fulfilled is remembered by every replica: its approval
/// seen again (another event id, so not a duplicate) is routed, and no fulfiller is asked again.
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_of_a_commission_already_marked_asks_no_fulfiller() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[]).await;
    let a = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    let b = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    let commission = 7_700_001;
    let first = a.post(update(commission, "approved", "points")).await;
    assert_eq!(
        first.json()["status"],
        "fulfilment_requested",
        "{}",
        first.text()
    );
    let correlation_id = requests(&broker, 1).await[0]
        .header("fp-correlation-id")
        .unwrap()
        .to_owned();
    reply(&broker, None, &correlation_id, "fulfilled").await;
    calls_settle_at(&fake, 1).await;
    // Both replicas know it once the marker's verdict record is read.
    for relay in [&a, &b] {
        assert!(
            eventually(WAIT, async || relay
                .metric(r#"fp_relay_fulfilment_verdicts_read_total{result="ok"}"#)
                .await
                >= 1.0)
            .await
        );
    }
    for relay in [&a, &b] {
        let again = relay.post(update(commission, "approved", "points")).await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.text());
        assert_eq!(again.json()["status"], "published", "{}", again.text());
    }
    let requested = consume_all(&broker.bootstrap(), REQUESTS, Duration::from_secs(2)).await;
    assert_eq!(requested.len(), 1, "one request, for the first approval");
    let routed = consume_all(&broker.bootstrap(), ROUTED, Duration::from_secs(2)).await;
    assert_eq!(routed.len(), 3, "every approval is routed");
    assert_eq!(fake.ids(), vec![commission]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_cash_and_other_updates_are_only_routed() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[]).await;
    let relay = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    let other_change = Bytes::from_static(
        br#"{"event_id":"b1","event_type":"commission.updated","changes":{"amount":[100,200]},"data":{"id":7,"status":"approved","unit":"points"}}"#,
    );
    let bodies = [
        update(11, "denied", "points"),
        sample("v2/commission.updated.json"), // approved, but cash
        update(12, "approved", "cash"),
        other_change,
        sample("v2/commission.created.json"),
    ];
    for body in bodies {
        let answer = relay.post(body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.json()["status"], "published");
    }
    let routed = consume(&broker.bootstrap(), ROUTED, 4, WAIT, Duration::ZERO).await;
    assert_eq!(routed.len(), 4);
    let requested = consume_all(&broker.bootstrap(), REQUESTS, Duration::from_secs(2)).await;
    assert!(requested.is_empty(), "no fulfilment request: {requested:?}");
    assert_eq!(
        relay.metric("fp_relay_fulfilment_v2_requests_total").await,
        0.0
    );
    assert!(fake.calls().is_empty());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_rate_limits_are_retried_to_success_without_costing_readiness() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[
        (500, None, r#"{"message":"internal error"}"#),
        (429, Some("1"), ""),
    ])
    .await;
    let relay = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    let answer = relay.post(update(901, "approved", "credits")).await;
    let correlation_id = answer.json()["correlation_id"].as_str().unwrap().to_owned();
    reply(&broker, None, &correlation_id, "fulfilled").await;

    let metric = |result: &str| {
        format!("fp_relay_firstpromoter_api_calls_total{{endpoint=\"mark_fulfilled\",result=\"{result}\"}}")
    };
    assert!(
        relay
            .wait_for_metric(&metric("server_error"), 1.0, WAIT)
            .await
    );
    let ready = get(relay.admin, "/readyz").await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "readiness never waits on FirstPromoter"
    );
    assert!(
        ready.text().contains("firstpromoter_api"),
        "{}",
        ready.text()
    );

    calls_settle_at(&fake, 3).await;
    assert_eq!(fake.ids(), vec![901, 901, 901]);
    let calls = fake.calls();
    assert!(
        calls[2].at - calls[1].at >= Duration::from_millis(950),
        "Retry-After: 1 was honoured: {:?}",
        calls[2].at - calls[1].at
    );
    for result in ["server_error", "rate_limited", "ok"] {
        assert_eq!(relay.metric(&metric(result)).await, 1.0, "{result}");
    }
    assert_eq!(
        relay.metric("fp_relay_fulfilment_v2_marked_total").await,
        1.0
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_commission_is_dead_lettered_and_already_fulfilled_counts_as_done() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[
        (
            422,
            None,
            r#"{"message":"Commission has no payout record","code":"invalid"}"#,
        ),
        (
            422,
            None,
            r#"{"message":"Commission is already fulfilled","code":"invalid"}"#,
        ),
    ])
    .await;
    let relay = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    let refused = signed(31);
    reply(&broker, None, &refused, "fulfilled").await;
    calls_settle_at(&fake, 1).await;
    let dead = consume(&broker.bootstrap(), DEAD_LETTERS, 1, WAIT, Duration::ZERO).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].header("fp-correlation-id"), Some(refused.as_str()));
    assert_eq!(dead[0].header("fp-commission-id"), Some("31"));
    assert_eq!(dead[0].header("fp-original-topic"), Some(REPLIES));
    let reason = dead[0].header("fp-dead-letter-reason").unwrap();
    assert!(
        reason.starts_with("firstpromoter_422: Commission has no payout record"),
        "{reason}"
    );
    assert_eq!(
        relay
            .metric("fp_relay_fulfilment_v2_dead_lettered_total")
            .await,
        1.0
    );

    reply(&broker, None, &signed(32), "fulfilled").await;
    calls_settle_at(&fake, 2).await;
    assert_eq!(fake.ids(), vec![31, 32]);
    let already =
        "fp_relay_firstpromoter_api_calls_total{endpoint=\"mark_fulfilled\",result=\"already_fulfilled\"}";
    assert_eq!(relay.metric(already).await, 1.0);
    assert_eq!(
        relay.metric("fp_relay_fulfilment_v2_marked_total").await,
        1.0
    );
    let dead = consume_all(&broker.bootstrap(), DEAD_LETTERS, Duration::from_secs(1)).await;
    assert_eq!(dead.len(), 1, "already fulfilled is not dead-lettered");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_written_while_the_relay_was_stopped_is_acted_on_after_it_starts() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[]).await;
    let relay = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    let answer = relay.post(update(555, "approved", "free_months")).await;
    let correlation_id = answer.json()["correlation_id"].as_str().unwrap().to_owned();
    group_settled(&[&relay], 4.0).await;
    relay.shutdown().await;

    reply(&broker, None, &correlation_id, "fulfilled").await;
    // Six more fulfilled while no relay runs: ready together, they share calls of at most 5.
    for commission in 556..562 {
        let id = signed(commission);
        reply(&broker, None, &id, "fulfilled").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fake.calls().is_empty());
    let started = Instant::now();
    let relay = TestRelay::start(common::v2_config(&broker, api)).await;
    assert!(
        eventually(Duration::from_secs(30), async || !fake.calls().is_empty()).await,
        "acted on within 30 s of the start"
    );
    println!("acted on {:?} after the start", started.elapsed());
    assert!(
        eventually(WAIT, async || fake.ids().len() >= 7).await,
        "{:?}",
        fake.calls()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ids = fake.ids();
    ids.sort_unstable();
    assert_eq!(ids, (555..562).collect::<Vec<u64>>(), "each marked once");
    let calls = fake.calls();
    assert!(calls
        .iter()
        .all(|c| c.body["ids"].as_array().unwrap().len() <= 5));
    assert!(
        calls.len() < 7,
        "replies ready together share calls: {calls:?}"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_mark_each_commission_once() {
    let broker = Tansu::start();
    common::create_topic(&broker.bootstrap(), REPLIES, 4).await;
    let (fake, api) = FakeFirstPromoter::start(&[]).await;
    let first = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    let second = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    group_settled(&[&first, &second], 4.0).await;
    assert!(
        first
            .metric("fp_relay_fulfilment_v2_assigned_partitions")
            .await
            > 0.0
    );
    assert!(
        second
            .metric("fp_relay_fulfilment_v2_assigned_partitions")
            .await
            > 0.0
    );
    for (n, partition) in (0..4).enumerate() {
        let commission = 700 + n as u64;
        reply(&broker, Some(partition), &signed(commission), "fulfilled").await;
    }
    assert!(
        eventually(WAIT, async || fake.ids().len() >= 4).await,
        "{:?}",
        fake.calls()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut ids = fake.ids();
    ids.sort_unstable();
    assert_eq!(ids, vec![700, 701, 702, 703], "each commission marked once");
    let replies = "fp_relay_fulfilment_v2_replies_total{outcome=\"fulfilled\"}";
    let (a, b) = (first.metric(replies).await, second.metric(replies).await);
    assert_eq!(a + b, 4.0, "each reply read by one replica ({a} + {b})");
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn send_and_respond_drive_a_v2_reward_end_to_end() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[]).await;
    let relay = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    let binary = env!("CARGO_BIN_EXE_fp-relay");
    let mut responder = common::respond_process(&broker);
    let url = format!("http://{}{}", relay.addr, relay.path);
    let sent = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary)
            .args([
                "send",
                "--url",
                &url,
                "--event",
                "commission.updated.reward",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&sent.stdout).into_owned();
    assert!(sent.status.success(), "{text}");
    assert!(text.contains("fulfilment requested"), "{text}");
    let marked = eventually(WAIT, async || fake.ids() == vec![COMMISSION]).await;
    responder.kill().ok();
    responder.wait().ok();
    assert!(
        marked,
        "the unchanged responder's reply marked the commission: {:?}",
        fake.calls()
    );
    relay.shutdown().await;
}

/// Fulfilled replies for `commissions`, written to one partition before the relay starts, so
/// that the marker reads them as one batch and asks for them in one call.
async fn fulfilled_before_start(broker: &Tansu, commissions: &[u64]) {
    for commission in commissions {
        let id = signed(*commission);
        reply(broker, Some(0), &id, "fulfilled").await;
    }
}

fn calls_metric(result: &str) -> String {
    format!(
        "fp_relay_firstpromoter_api_calls_total{{endpoint=\"mark_fulfilled\",result=\"{result}\"}}"
    )
}

/// A 401 spell (a key being rotated) says nothing about any commission: marking pauses,
/// nothing is dead-lettered, and every fulfilled reply is marked once when the key works.
#[tokio::test(flavor = "multi_thread")]
async fn a_401_spell_pauses_marking_and_dead_letters_nothing() {
    let broker = Tansu::start();
    let unauthorized = (401, None, r#"{"message":"Unauthorized"}"#);
    let (fake, api) = FakeFirstPromoter::start(&[unauthorized; 4]).await;
    fulfilled_before_start(&broker, &[71, 72, 73]).await;
    let relay = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    assert!(
        eventually(WAIT, async || fake.marked() == vec![71, 72, 73]).await,
        "{:?}",
        fake.calls()
    );
    assert_eq!(relay.metric(&calls_metric("unauthorized")).await, 4.0);
    assert_eq!(
        relay.metric("fp_relay_fulfilment_v2_marked_total").await,
        3.0
    );
    let dead = consume_all(&broker.bootstrap(), DEAD_LETTERS, Duration::from_secs(1)).await;
    assert!(dead.is_empty(), "nothing dead-lettered: {}", dead.len());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fake.marked(), vec![71, 72, 73], "each marked once");
    relay.shutdown().await;
}

/// `Retry-After: 0` is not an invitation to a hot loop: each pause is the larger of it and
/// the backoff (at least half of retry_initial, 200 ms here).
#[tokio::test(flavor = "multi_thread")]
async fn retry_after_zero_still_pauses_between_calls() {
    let broker = Tansu::start();
    let unavailable = (503, Some("0"), r#"{"message":"busy"}"#);
    let (fake, api) = FakeFirstPromoter::start(&[unavailable; 5]).await;
    fulfilled_before_start(&broker, &[81]).await;
    let relay = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    calls_settle_at(&fake, 6).await;
    let calls = fake.calls();
    for pair in calls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(100), "{gap:?} between calls");
    }
    assert_eq!(fake.marked(), vec![81]);
    relay.shutdown().await;
}

/// FirstPromoter away for longer than max.poll.interval.ms (3 s here): the marker keeps
/// polling (its partitions paused), keeps its group membership, and every reply is marked
/// exactly once (leaving the group failed the commit, and the batch was read and marked again).
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_longer_than_the_poll_interval_marks_every_reply_once() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[]).await;
    let back = Instant::now() + Duration::from_secs(8);
    fake.set_rule(move |_| (Instant::now() < back).then_some((503, None, r#"{"message":"down"}"#)));
    fulfilled_before_start(&broker, &[91, 92, 93]).await;
    let mut config = common::v2_config(&broker, api);
    config
        .kafka
        .consumer_properties
        .insert("max.poll.interval.ms".into(), "3000".into());
    let relay = TestRelay::start_ready(config).await;
    assert!(
        eventually(Duration::from_secs(30), async || fake.marked().len() >= 3).await,
        "{:?}",
        fake.calls()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fake.marked(), vec![91, 92, 93], "each marked exactly once");
    relay.shutdown().await;
}

/// One commission FirstPromoter fails forever (5xx) does not hold the others back: they are
/// marked at once, and it is dead-lettered after give_up_after with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn one_commission_failing_forever_is_given_up_on_while_the_others_are_marked() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[]).await;
    fake.set_rule(|ids| {
        ids.contains(&101)
            .then_some((503, None, r#"{"message":"oops"}"#))
    });
    fulfilled_before_start(&broker, &[101, 102, 103]).await;
    let mut config = common::v2_config(&broker, api);
    config.fulfilment.v2.give_up_after = Duration::from_secs(2);
    let relay = TestRelay::start_ready(config).await;
    let dead = consume(&broker.bootstrap(), DEAD_LETTERS, 1, WAIT, Duration::ZERO).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].header("fp-commission-id"), Some("101"));
    let reason = dead[0].header("fp-dead-letter-reason").unwrap();
    assert!(
        reason.starts_with("firstpromoter_gave_up: server_error for 2s"),
        "{reason}"
    );
    assert_eq!(fake.marked(), vec![102, 103]);
    relay.shutdown().await;
}

/// A several-id call that is not a plain success is asked again id by id, and each answer
/// settles its own commission: a 2xx batch reporting a failure is not "all marked", "already
/// denied" is a refusal (only "already fulfilled" counts as done).
#[tokio::test(flavor = "multi_thread")]
async fn mixed_batches_are_settled_per_commission() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[]).await;
    fake.set_rule(|ids| match ids {
        [_, _, ..] => Some((
            200,
            None,
            r#"{"status":"completed","processed_count":2,"failed_count":1}"#,
        )),
        [112] => Some((422, None, r#"{"message":"Commission already denied"}"#)),
        [113] => Some((
            422,
            None,
            r#"{"message":"Commission is already fulfilled"}"#,
        )),
        _ => None,
    });
    fulfilled_before_start(&broker, &[111, 112, 113]).await;
    let relay = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    let dead = consume(&broker.bootstrap(), DEAD_LETTERS, 1, WAIT, Duration::ZERO).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].header("fp-commission-id"), Some("112"));
    assert_eq!(
        dead[0].header("fp-dead-letter-reason"),
        Some("firstpromoter_422: Commission already denied")
    );
    calls_settle_at(&fake, 4).await;
    let singles: Vec<Vec<serde_json::Value>> = fake.calls()[1..]
        .iter()
        .map(|c| c.body["ids"].as_array().cloned().unwrap())
        .collect();
    assert_eq!(singles.len(), 3, "asked again one by one: {singles:?}");
    assert_eq!(
        relay.metric("fp_relay_fulfilment_v2_marked_total").await,
        2.0,
        "111 marked, 113 already fulfilled"
    );
    relay.shutdown().await;
}

/// Replies nobody can act on are kept on the dead-letter topic with what is wrong, and
/// counted (they used to be committed and forgotten).
#[tokio::test(flavor = "multi_thread")]
async fn malformed_replies_are_dead_lettered_with_the_reason() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[]).await;
    let bootstrap = broker.bootstrap();
    produce(
        &bootstrap,
        REPLIES,
        Some(0),
        None,
        &[],
        r#"{"outcome":"fulfilled"}"#,
    )
    .await;
    let no_commission = format!("v2:abc:{}", uuid::Uuid::new_v4());
    produce(
        &bootstrap,
        REPLIES,
        Some(0),
        None,
        &[("fp-correlation-id", &no_commission)],
        r#"{"outcome":"fulfilled"}"#,
    )
    .await;
    let not_json = format!("v2:121:{}", uuid::Uuid::new_v4());
    produce(
        &bootstrap,
        REPLIES,
        Some(0),
        None,
        &[("fp-correlation-id", &not_json)],
        "fulfilled!",
    )
    .await;
    let relay = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    let dead = consume(&bootstrap, DEAD_LETTERS, 3, WAIT, Duration::ZERO).await;
    let mut reasons: Vec<&str> = dead
        .iter()
        .filter_map(|d| d.header("fp-dead-letter-reason"))
        .collect();
    // The dead-letter topic has several partitions: compare as a set.
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        vec![
            "malformed_reply: no fp-correlation-id header",
            "malformed_reply: the correlation id names no commission (v2:<commission>:<id>)",
            "malformed_reply: the value is not JSON with a known outcome",
        ],
        "sorted"
    );
    assert_eq!(
        relay
            .metric("fp_relay_fulfilment_v2_replies_total{outcome=\"malformed\"}")
            .await,
        3.0
    );
    assert!(fake.calls().is_empty());
    relay.shutdown().await;
}

/// Replies bound to requests: a record anyone wrote to the reply topic with a `v2:` correlation
/// id (unsigned, signed by another relay's key, or a genuine id moved to another commission) is
/// dead-lettered as `unrequested_reply` and FirstPromoter is never called for it; the genuine
/// reply beside them marks its commission exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn forged_replies_are_dead_lettered_and_only_the_genuine_one_is_marked() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[]).await;
    let relay = TestRelay::start_ready(common::v2_config(&broker, api)).await;
    let answer = relay
        .post(sample("v2/commission.updated.reward.json"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let genuine = answer.json()["correlation_id"].as_str().unwrap().to_owned();

    let mut other_account = fp_relay::config::Config::default();
    other_account.firstpromoter.api_key = "another-account-api-key".to_owned();
    let foreign = fp_relay::fulfilment::v2::ReplyKeys::new(&other_account).correlation_id(777);
    let (unsigned, tag) = genuine.rsplit_once(':').unwrap();
    let moved = format!(
        "{}:{tag}",
        unsigned.replacen(&COMMISSION.to_string(), "778", 1)
    );
    let forged = [format!("v2:776:{}", uuid::Uuid::new_v4()), foreign, moved];
    for id in &forged {
        reply(&broker, None, id, "fulfilled").await;
    }
    reply(&broker, None, &genuine, "fulfilled").await;

    calls_settle_at(&fake, 1).await;
    assert_eq!(
        fake.calls()[0].body,
        serde_json::json!({ "ids": [COMMISSION] })
    );
    let dead = consume(&broker.bootstrap(), DEAD_LETTERS, 3, WAIT, Duration::ZERO).await;
    let mut commissions: Vec<&str> = dead
        .iter()
        .filter(|d| d.header("fp-dead-letter-reason") == Some("unrequested_reply"))
        .filter_map(|d| d.header("fp-commission-id"))
        .collect();
    commissions.sort_unstable();
    assert_eq!(commissions, ["776", "777", "778"]);
    assert_eq!(
        relay
            .metric("fp_relay_fulfilment_v2_replies_total{outcome=\"unrequested\"}")
            .await,
        3.0
    );
    assert_eq!(
        relay.metric("fp_relay_fulfilment_v2_marked_total").await,
        1.0
    );
    relay.shutdown().await;
}

/// give_up_after is measured per commission from its reply's Kafka timestamp: five replies
/// under an API that answers 503 for ever, with the relay restarted every two seconds (each
/// restart used to start the clock again, so it never gave up), are all dead-lettered close to
/// give_up_after after they were written, not one after another.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_under_a_failing_api_is_given_up_on_from_kafkas_clock_across_restarts() {
    let broker = Tansu::start();
    let (fake, api) = FakeFirstPromoter::start(&[]).await;
    fake.set_rule(|_| Some((503, None, r#"{"message":"down"}"#)));
    let commissions = [201u64, 202, 203, 204, 205];
    let written = std::time::Instant::now();
    fulfilled_before_start(&broker, &commissions).await;
    let give_up_after = Duration::from_secs(8);
    let mut config = common::v2_config(&broker, api);
    config.fulfilment.v2.give_up_after = give_up_after;
    let mut dead = Vec::new();
    let mut restarts = 0;
    while dead.len() < commissions.len() && written.elapsed() < Duration::from_secs(60) {
        let relay = TestRelay::start_ready(config.clone()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        relay.shutdown().await;
        restarts += 1;
        dead = consume_all(
            &broker.bootstrap(),
            DEAD_LETTERS,
            Duration::from_millis(300),
        )
        .await;
    }
    let settled_in = written.elapsed();
    let mut given_up: Vec<u64> = dead
        .iter()
        .map(|d| d.header("fp-commission-id").unwrap().parse().unwrap())
        .collect();
    given_up.sort();
    assert_eq!(given_up, commissions, "after {restarts} restarts");
    assert!(
        dead.iter().all(|d| d
            .header("fp-dead-letter-reason")
            .unwrap()
            .starts_with("firstpromoter_gave_up: server_error for 8s")),
        "{dead:?}"
    );
    // Close to give_up_after, with one restart's worth of slack (start, join, one round).
    assert!(
        settled_in >= give_up_after && settled_in < give_up_after + Duration::from_secs(12),
        "all five given up {settled_in:?} after they were written"
    );
    assert!(restarts >= 3, "{restarts}");
    assert!(fake.marked().is_empty());
}
