//! The call v2 fulfilment makes: `POST {api_url}/commissions/mark_fulfilled` with
//! `{"ids": [...]}`, through the shared [`ApiClient`] (its rate budget and transport), and the
//! classification of its answers into what the marker does next.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::firstpromoter::client::{message_of, ApiClient};

/// The endpoint label of metrics and logs.
pub const MARK_FULFILLED: &str = "mark_fulfilled";

/// The path of `mark_fulfilled` under `api_url`.
const PATH: &str = "/commissions/mark_fulfilled";

/// Most ids in one call: FirstPromoter marks up to 5 at once and runs larger sets as a batch
/// job whose outcome the answer does not tell.
pub const MAX_IDS_PER_CALL: usize = 5;

/// What one call came to, and so what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// 2xx: marked (200 `completed`), or queued by FirstPromoter (202 `pending`).
    Marked,
    /// A 4xx saying the commission is fulfilled already: done, as far as the relay goes.
    AlreadyFulfilled,
    /// A 2xx whose batch summary reports failures: some ids were not marked. Asked again one
    /// id at a time.
    Partial {
        /// For the log line and, for a single id, the dead letter.
        detail: String,
    },
    /// The relay's own settings are wrong (401, a 403 or 404 that is not about a commission, a
    /// redirect, a TLS or name-resolution failure): nothing about any commission is known, so
    /// marking pauses for every commission and resumes by itself once the API accepts the call.
    Misconfigured {
        /// The `result` label: `unauthorized`, `forbidden`, `not_found`, `redirect`, `tls`, `dns`.
        result: &'static str,
        /// For the log line; never contains the key.
        detail: String,
    },
    /// Worth another try: a timeout, a connection failure, 429 (with its `Retry-After`) or 5xx.
    Retry {
        /// The `result` label: `timeout`, `network_error`, `rate_limited`, `server_error`.
        result: &'static str,
        /// What the server asked for (`Retry-After`), if anything.
        after: Option<Duration>,
        /// For the log line; never contains the key.
        detail: String,
    },
    /// Any other 4xx: no retry can change it.
    Rejected {
        /// FirstPromoter's status.
        status: u16,
        /// Its message (or code), shortened.
        message: String,
    },
}

impl CallResult {
    /// The `result` label of `fp_relay_firstpromoter_api_calls_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Marked => "ok",
            Self::AlreadyFulfilled => "already_fulfilled",
            Self::Partial { .. } => "partial",
            Self::Retry { result, .. } | Self::Misconfigured { result, .. } => result,
            Self::Rejected { .. } => "rejected",
        }
    }
}

/// `mark_fulfilled` through the shared client.
pub struct FirstPromoterApi {
    client: Arc<ApiClient>,
}

impl FirstPromoterApi {
    /// Marks through `client`, whose budget it shares with every other caller.
    pub fn new(client: Arc<ApiClient>) -> Self {
        Self { client }
    }

    /// The URL called, for logs (it holds no secret).
    pub fn endpoint(&self) -> String {
        self.client.url(PATH)
    }

    /// Asks FirstPromoter to mark `ids` fulfilled; the whole call is bounded by `call_timeout`.
    pub async fn mark_fulfilled(&self, ids: &[u64]) -> CallResult {
        let body = serde_json::to_vec(&serde_json::json!({ "ids": ids }))
            .expect("a list of integers serialises");
        match self.client.call(Method::POST, PATH, Some(body)).await {
            Ok(answer) => classify(answer.status, answer.retry_after, &answer.body),
            Err(failure) => match failure.explain() {
                (result, detail, true) => CallResult::Retry {
                    result,
                    after: None,
                    detail,
                },
                (result, detail, false) => CallResult::Misconfigured { result, detail },
            },
        }
    }
}

/// What an answer means for the commissions in the call: the one place FirstPromoter's answers
/// are classified.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> CallResult {
    if status.is_success() {
        return match failed_count(body) {
            Some(failed) if failed > 0 => CallResult::Partial {
                detail: format!("{status} with failed_count {failed}: {}", message_of(body)),
            },
            _ => CallResult::Marked,
        };
    }
    let message = message_of(body);
    if status.is_redirection() {
        return CallResult::Misconfigured {
            result: "redirect",
            detail: format!("{status}: api_url is redirected (http to https, or a moved host)"),
        };
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return CallResult::Retry {
            result: "rate_limited",
            after: retry_after,
            detail: "429 Too Many Requests".to_owned(),
        };
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return CallResult::Retry {
            result: "server_error",
            after: retry_after,
            detail: format!("{status}: {message}"),
        };
    }
    // About the key, the account or the URL unless the message names a commission.
    let about_commission = message.to_ascii_lowercase().contains("commission");
    let settings = match status {
        StatusCode::UNAUTHORIZED => Some("unauthorized"),
        StatusCode::FORBIDDEN if !about_commission => Some("forbidden"),
        StatusCode::NOT_FOUND if !about_commission => Some("not_found"),
        _ => None,
    };
    if let Some(result) = settings {
        return CallResult::Misconfigured {
            result,
            detail: format!("{status}: {message}"),
        };
    }
    if status.is_client_error() && says_already_fulfilled(&message) {
        return CallResult::AlreadyFulfilled;
    }
    CallResult::Rejected {
        status: status.as_u16(),
        message,
    }
}

/// "Already fulfilled" (or "already been fulfilled", "already marked as fulfilled"), and not
/// "already denied" or "already paid".
fn says_already_fulfilled(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.split("already").skip(1).any(|after| {
        let next: Vec<&str> = after.split_whitespace().take(4).collect();
        next.iter().any(|word| word.starts_with("fulfil"))
    })
}

/// A batch answer's `failed_count`, if it has one.
fn failed_count(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .get("failed_count")
        .or_else(|| value.get("data").and_then(|d| d.get("failed_count")))
        .and_then(serde_json::Value::as_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_what_happens_next() {
        assert_eq!(
            classify(StatusCode::OK, None, br#"{"status":"completed"}"#),
            CallResult::Marked
        );
        assert_eq!(
            classify(StatusCode::ACCEPTED, None, br#"{"status":"pending"}"#),
            CallResult::Marked
        );
        let limited = classify(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            b"",
        );
        assert_eq!(limited.label(), "rate_limited");
        assert!(
            matches!(limited, CallResult::Retry { after: Some(d), .. } if d == Duration::from_secs(3))
        );
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY, None, b"<html>").label(),
            "server_error"
        );
        assert_eq!(
            classify(
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                br#"{"message":"Commission is already fulfilled","code":"invalid"}"#
            ),
            CallResult::AlreadyFulfilled
        );
        assert_eq!(
            classify(
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                br#"{"message":"Commission is not approved","code":"invalid_state"}"#
            ),
            CallResult::Rejected {
                status: 422,
                message: "Commission is not approved (invalid_state)".to_owned()
            }
        );
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, None, b"").label(),
            "unauthorized"
        );
    }

    /// Faults of the relay's settings are never a commission's: they must not dead-letter it.
    #[test]
    fn settings_faults_partial_batches_and_narrow_already() {
        let label = |status: u16, body: &[u8]| {
            classify(StatusCode::from_u16(status).unwrap(), None, body)
                .label()
                .to_owned()
        };
        assert_eq!(
            label(401, br#"{"message":"Invalid API key"}"#),
            "unauthorized"
        );
        assert_eq!(
            label(403, br#"{"message":"Account suspended"}"#),
            "forbidden"
        );
        assert_eq!(label(404, b"<html>Not Found</html>"), "not_found");
        assert_eq!(label(301, b""), "redirect");
        assert_eq!(label(308, b""), "redirect");
        assert_eq!(
            label(
                403,
                br#"{"message":"Commission belongs to another account"}"#
            ),
            "rejected"
        );
        assert_eq!(
            label(404, br#"{"message":"Commission not found"}"#),
            "rejected"
        );
        assert_eq!(
            label(
                422,
                br#"{"message":"Commission has already been fulfilled"}"#
            ),
            "already_fulfilled"
        );
        assert_eq!(
            label(
                422,
                br#"{"message":"Commission is already marked as fulfilled"}"#
            ),
            "already_fulfilled"
        );
        assert_eq!(
            label(422, br#"{"message":"Commission already denied"}"#),
            "rejected"
        );
        assert_eq!(
            label(422, br#"{"message":"Commission was already paid"}"#),
            "rejected"
        );
        assert_eq!(
            label(
                200,
                br#"{"status":"completed","failed_count":1,"processed_count":4}"#
            ),
            "partial"
        );
        assert_eq!(
            label(200, br#"{"status":"completed","failed_count":0}"#),
            "ok"
        );
    }
}
