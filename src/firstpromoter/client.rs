//! The one client of FirstPromoter's v2 company API: `Authorization: Bearer <api_key>` and
//! `Account-ID: <account_id>` on every call, one rate budget per process shared by every
//! caller (v2 fulfilment, reconciliation, the `firstpromoter` commands), and one set of retry
//! rules.
//!
//! One connection per call (`crate::http::outbound`: calls are rare, rewards and a page of
//! deliveries every few minutes). The API key never leaves this struct except in the header.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;

use crate::http::outbound::{self, Failure as Unanswered};
pub use crate::http::outbound::{parse_retry_after, Answer};

use crate::config::FirstPromoterConfig;
use crate::metrics::Metrics;

/// Most bytes of an answer read: a page of 100 deliveries with their payloads fits.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Longest part of FirstPromoter's message kept in logs and dead-letter headers.
const MAX_MESSAGE_CHARS: usize = 200;

/// Calls that may go at once before the budget spaces them out.
const BURST: u32 = 5;

/// Why a call got no HTTP answer.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Passing: a refused or reset connection.
    Network(String),
    /// The settings (or the network's names and certificates): the label and the detail.
    Settings(&'static str, String),
    /// No answer within `call_timeout`.
    Timeout(Duration),
}

impl Failure {
    /// The `result` label and the detail, and whether another try can help (a network
    /// failure or a timeout) or only a fix of the settings can.
    pub fn explain(self) -> (&'static str, String, bool) {
        match self {
            Self::Network(detail) => ("network_error", detail, true),
            Self::Timeout(after) => ("timeout", format!("no answer within {after:?}"), true),
            Self::Settings(result, detail) => (result, detail, false),
        }
    }
}

/// Why a JSON call ([`ApiClient::json`]) gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The relay's settings are wrong (401, 403, a redirect, TLS, DNS): no retry helps.
    #[error("FirstPromoter refuses the settings ({result}): {detail}; check firstpromoter.api_key, account_id and api_url")]
    Settings {
        result: &'static str,
        detail: String,
    },
    /// Still failing (timeouts, 5xx, 429) after every attempt.
    #[error("FirstPromoter's API is unavailable ({result}) after {attempts} attempt(s): {detail}")]
    Unavailable {
        result: &'static str,
        attempts: u32,
        detail: String,
    },
    /// Any other 4xx.
    #[error("FirstPromoter answered {status}: {message}")]
    Rejected { status: u16, message: String },
    /// A 2xx that is not the JSON expected.
    #[error("FirstPromoter's answer is not what its API reference describes: {0}")]
    Malformed(String),
}

impl ApiError {
    /// The `result` label of metrics: the settings fault or the last retried failure, else
    /// `rejected` or `malformed`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Settings { result, .. } | Self::Unavailable { result, .. } => result,
            Self::Rejected { .. } => "rejected",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// Why the client could not be built (validated configuration makes this rare).
#[derive(Debug, thiserror::Error)]
#[error("firstpromoter: {0}")]
pub struct ApiConfigError(String);

/// A client for the company API at `firstpromoter.api_url`; cheap to share behind an `Arc`.
pub struct ApiClient {
    base: Uri,
    authorization: HeaderValue,
    account_id: HeaderValue,
    timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    budget: RateBudget,
    metrics: Option<Arc<Metrics>>,
}

impl ApiClient {
    /// A client with its own rate budget; `metrics` counts its calls when given.
    pub fn new(
        settings: &FirstPromoterConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, ApiConfigError> {
        let base: Uri = settings
            .api_url
            .trim_end_matches('/')
            .parse()
            .map_err(|_| ApiConfigError("api_url is not a URL".into()))?;
        if base.host().is_none() {
            return Err(ApiConfigError("api_url has no host".into()));
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", settings.api_key.trim()))
                .map_err(|_| ApiConfigError("api_key is not a valid header value".into()))?;
        authorization.set_sensitive(true);
        let account_id = HeaderValue::from_str(settings.account_id.trim())
            .map_err(|_| ApiConfigError("account_id is not a valid header value".into()))?;
        Ok(Self {
            base,
            authorization,
            account_id,
            timeout: settings.call_timeout,
            retry_initial: settings.retry_initial,
            retry_max: settings.retry_max,
            budget: RateBudget::per_minute(settings.process_requests_per_minute()),
            metrics,
        })
    }

    /// The URL of `path` (which starts with `/`), for logs: it holds no secret.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.to_string().trim_end_matches('/'))
    }

    /// The first pause and the cap of retries ([`backoff`]).
    pub fn retry_bounds(&self) -> (Duration, Duration) {
        (self.retry_initial, self.retry_max)
    }

    /// One call, after waiting for the rate budget, bounded by `call_timeout`. A 429 holds
    /// every caller of this client off for its `Retry-After` (at least `retry_initial`).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Failure> {
        self.budget.acquire().await;
        let answer = match tokio::time::timeout(self.timeout, self.send(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout(self.timeout)),
        };
        if let Ok(answer) = &answer {
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                let pause = answer
                    .retry_after
                    .unwrap_or_default()
                    .max(self.retry_initial)
                    .min(self.retry_max);
                self.budget.hold_off(pause);
            }
        }
        answer
    }

    /// A JSON call with the retry rules of the API (see [`ApiClient::body`]), parsed as a
    /// JSON value (`Null` for an empty answer).
    pub async fn json(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        attempts: u32,
    ) -> Result<serde_json::Value, ApiError> {
        let answer = self.body(endpoint, method, path, body, attempts).await?;
        if answer.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&answer).map_err(|e| ApiError::Malformed(format!("{endpoint}: {e}")))
    }

    /// A call with the retry rules of the API: timeouts, connection failures, 429 and 5xx are
    /// retried (`attempts` in all) after the larger of `Retry-After` and the backoff; anything
    /// else is final. The body of the 2xx answer, unparsed. Counted as `endpoint` in
    /// `fp_relay_firstpromoter_api_calls_total`.
    pub async fn body(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        attempts: u32,
    ) -> Result<Bytes, ApiError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("a JSON value serialises"));
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let outcome = self.call(method.clone(), path, body.clone()).await;
            let verdict = judge(outcome);
            self.count(endpoint, verdict.label(), started);
            let (result, after, detail) = match verdict {
                Verdict::Ok(body) => return Ok(body),
                Verdict::Final(error) => return Err(error),
                Verdict::Again {
                    result,
                    after,
                    detail,
                } => (result, after, detail),
            };
            attempt += 1;
            if attempt >= attempts.max(1) {
                return Err(ApiError::Unavailable {
                    result,
                    attempts: attempt,
                    detail,
                });
            }
            let pause = after
                .unwrap_or_default()
                .max(backoff(self.retry_initial, self.retry_max, attempt - 1))
                .min(self.retry_max);
            tracing::debug!(endpoint, result, %detail, retry_in = ?pause, "FirstPromoter API call failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Counts one call in the API metrics, if this client has them.
    pub fn count(&self, endpoint: &str, result: &str, started: Instant) {
        if let Some(metrics) = &self.metrics {
            metrics
                .firstpromoter_api_calls
                .with_label_values(&[endpoint, result])
                .inc();
            metrics
                .firstpromoter_api_call_duration
                .with_label_values(&[endpoint])
                .observe(started.elapsed().as_secs_f64());
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Failure> {
        let target = format!("{}{path}", self.base.path().trim_end_matches('/'));
        let mut request = Request::builder()
            .method(method)
            .uri(target)
            .header(header::HOST, outbound::authority(&self.base))
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("fp-relay/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header("account-id", self.account_id.clone());
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Failure::Settings("bad_request", format!("{path}: {e}")))?;
        outbound::send(&self.base, request, MAX_ANSWER_BYTES)
            .await
            .map_err(|failure| match failure {
                // A name that does not resolve is the settings' fault (or DNS's), not a
                // passing failure of FirstPromoter's.
                Unanswered::Resolve(detail) => Failure::Settings("dns", detail),
                Unanswered::Tls(detail) => Failure::Settings("tls", detail),
                Unanswered::Request(detail) => Failure::Settings("bad_request", detail),
                Unanswered::Network(detail) => Failure::Network(detail),
            })
    }
}

/// What a generic call's outcome means.
enum Verdict {
    Ok(Bytes),
    Again {
        result: &'static str,
        after: Option<Duration>,
        detail: String,
    },
    Final(ApiError),
}

impl Verdict {
    fn label(&self) -> &'static str {
        match self {
            Self::Ok(_) => "ok",
            Self::Again { result, .. } => result,
            Self::Final(error) => error.label(),
        }
    }
}

/// The retry rules for calls other than `mark_fulfilled` (whose answers also speak about
/// commissions: `fulfilment::v2::api::classify`).
fn judge(outcome: Result<Answer, Failure>) -> Verdict {
    let answer = match outcome {
        Ok(answer) => answer,
        Err(failure) => {
            return match failure.explain() {
                (result, detail, true) => Verdict::Again {
                    result,
                    after: None,
                    detail,
                },
                (result, detail, false) => Verdict::Final(ApiError::Settings { result, detail }),
            }
        }
    };
    let status = answer.status;
    if status.is_success() {
        return Verdict::Ok(answer.body);
    }
    let message = message_of(&answer.body);
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Verdict::Again {
            result: "rate_limited",
            after: answer.retry_after,
            detail: "429 Too Many Requests".to_owned(),
        };
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return Verdict::Again {
            result: "server_error",
            after: answer.retry_after,
            detail: format!("{status}: {message}"),
        };
    }
    let settings = match status {
        StatusCode::UNAUTHORIZED => Some("unauthorized"),
        StatusCode::FORBIDDEN => Some("forbidden"),
        _ if status.is_redirection() => Some("redirect"),
        _ => None,
    };
    match settings {
        Some(result) => Verdict::Final(ApiError::Settings {
            result,
            detail: format!("{status}: {message}"),
        }),
        None => Verdict::Final(ApiError::Rejected {
            status: status.as_u16(),
            message,
        }),
    }
}

/// Spaces calls so that a process never makes more than its share of FirstPromoter's
/// 400 requests a minute: a generic cell rate (up to [`BURST`] at once, then one per
/// `60 s / per_minute`), and a 429 holds everybody off.
struct RateBudget {
    interval: Duration,
    /// When the next call is due on the schedule (the "theoretical arrival time"); tokio's
    /// clock, so that tests can run it paused.
    next: Mutex<tokio::time::Instant>,
}

impl RateBudget {
    fn per_minute(per_minute: u32) -> Self {
        Self {
            interval: Duration::from_secs(60) / per_minute.max(1),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for this caller's turn.
    async fn acquire(&self) {
        let wait = {
            let mut next = self.next.lock().expect("lock not poisoned");
            let now = tokio::time::Instant::now();
            let due = (*next).max(now);
            *next = due + self.interval;
            let tolerance = self.interval * (BURST - 1);
            due.saturating_duration_since(now + tolerance)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// No call before `pause` from now, for anybody.
    fn hold_off(&self, pause: Duration) {
        let mut next = self.next.lock().expect("lock not poisoned");
        // Past the burst tolerance, so the next caller waits the whole pause.
        let until = tokio::time::Instant::now() + pause + self.interval * (BURST - 1);
        *next = (*next).max(until);
    }
}

/// FirstPromoter's `{"message", "code"}`, shortened; the raw text when it is not that shape.
pub fn message_of(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let text = match &parsed {
        Some(value) => {
            let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or("");
            match (field("message"), field("code")) {
                ("", "") => value.to_string(),
                (message, "") => message.to_owned(),
                ("", code) => code.to_owned(),
                (message, code) => format!("{message} ({code})"),
            }
        }
        None => String::from_utf8_lossy(body).into_owned(),
    };
    let text = text.trim();
    if text.is_empty() {
        "no message".to_owned()
    } else {
        text.chars().take(MAX_MESSAGE_CHARS).collect()
    }
}

/// Exponential backoff with jitter: `initial * 2^attempt`, at most `max`, then a random point
/// in its upper half, so replicas retrying together spread out.
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let full = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 0..30 {
            let full = (initial * 2u32.pow(attempt.min(20))).min(max);
            let pause = backoff(initial, max, attempt);
            assert!(pause >= full / 2 && pause <= full, "{attempt}: {pause:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_a_burst_then_spaces_calls_and_a_429_holds_everyone_off() {
        let budget = RateBudget::per_minute(240);
        let start = tokio::time::Instant::now();
        for _ in 0..BURST {
            budget.acquire().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(1),
            "a burst goes at once"
        );
        for _ in 0..8 {
            budget.acquire().await;
        }
        let spaced = start.elapsed();
        assert!(
            spaced >= Duration::from_millis(1_900) && spaced <= Duration::from_millis(2_100),
            "8 more calls at 4 a second: {spaced:?}"
        );
        budget.hold_off(Duration::from_secs(30));
        let before = tokio::time::Instant::now();
        budget.acquire().await;
        assert!(before.elapsed() >= Duration::from_secs(30));
    }

    #[test]
    fn generic_answers_are_judged_by_what_a_retry_can_change() {
        let answer = |status: u16, body: &'static [u8]| {
            judge(Ok(Answer {
                status: StatusCode::from_u16(status).unwrap(),
                retry_after: None,
                body: Bytes::from_static(body),
            }))
            .label()
        };
        assert_eq!(answer(200, b"[]"), "ok");
        assert_eq!(answer(429, b""), "rate_limited");
        assert_eq!(answer(503, b""), "server_error");
        assert_eq!(answer(401, b""), "unauthorized");
        assert_eq!(answer(403, br#"{"message":"nope"}"#), "forbidden");
        assert_eq!(answer(302, b""), "redirect");
        assert_eq!(answer(422, br#"{"message":"max retries"}"#), "rejected");
        assert_eq!(
            judge(Err(Failure::Timeout(Duration::from_secs(1)))).label(),
            "timeout"
        );
    }

    #[test]
    fn the_key_is_a_sensitive_header_and_not_in_any_url() {
        let settings = FirstPromoterConfig {
            api_key: "fp_live_0123456789abcdef".to_owned(),
            account_id: "acc_1".to_owned(),
            ..FirstPromoterConfig::default()
        };
        let api = ApiClient::new(&settings, None).unwrap();
        assert!(api.authorization.is_sensitive());
        assert_eq!(
            api.url("/webhooks"),
            "https://api.firstpromoter.com/api/v2/company/webhooks"
        );
        assert_eq!(api.base.scheme_str(), Some("https"));
        assert!(!format!("{settings:?}").contains("0123456789abcdef"));
    }
}
