//! The one FirstPromoter API call the relay makes: `POST {api_url}/commissions/mark_fulfilled`
//! with `{"ids": [...]}`, `Authorization: Bearer <api_key>` and `Account-ID: <account_id>`.
//!
//! One connection per call (calls are as rare as rewards), HTTP/1.1, TLS with the Mozilla root
//! store built in (no dependency on the host's CA bundle). Each answer is classified once here
//! into what the marker does next; the API key never leaves this struct except in the header.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::crypto::ring;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::FulfilmentV2Config;

/// The endpoint label of metrics and logs.
pub const MARK_FULFILLED: &str = "mark_fulfilled";

/// Most ids in one call: FirstPromoter marks up to 5 at once and runs larger sets as a batch
/// job whose outcome the answer does not tell.
pub const MAX_IDS_PER_CALL: usize = 5;

/// Most bytes of an answer read (its message is all that is used).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Longest part of FirstPromoter's message kept in logs and dead-letter headers.
const MAX_MESSAGE_CHARS: usize = 200;

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

/// A client for `mark_fulfilled`.
pub struct FirstPromoterApi {
    endpoint: Uri,
    authorization: HeaderValue,
    account_id: HeaderValue,
    timeout: Duration,
    /// Set for https:// URLs.
    tls: Option<TlsConnector>,
}

/// Why the client could not be built (validated configuration makes this rare).
#[derive(Debug, thiserror::Error)]
#[error("fulfilment.v2: {0}")]
pub struct ApiConfigError(String);

impl FirstPromoterApi {
    /// A client for the API at `settings.api_url`.
    pub fn new(settings: &FulfilmentV2Config) -> Result<Self, ApiConfigError> {
        let base = settings.api_url.trim_end_matches('/');
        let endpoint: Uri = format!("{base}/commissions/mark_fulfilled")
            .parse()
            .map_err(|_| ApiConfigError("api_url is not a URL".into()))?;
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", settings.api_key.trim()))
                .map_err(|_| ApiConfigError("api_key is not a valid header value".into()))?;
        authorization.set_sensitive(true);
        let account_id = HeaderValue::from_str(settings.account_id.trim())
            .map_err(|_| ApiConfigError("account_id is not a valid header value".into()))?;
        let tls = (endpoint.scheme_str() == Some("https")).then(tls_connector);
        Ok(Self {
            endpoint,
            authorization,
            account_id,
            timeout: settings.call_timeout,
            tls,
        })
    }

    /// The URL called, for logs (it holds no secret).
    pub fn endpoint(&self) -> &Uri {
        &self.endpoint
    }

    /// Asks FirstPromoter to mark `ids` fulfilled; the whole call is bounded by `call_timeout`.
    pub async fn mark_fulfilled(&self, ids: &[u64]) -> CallResult {
        let body = serde_json::to_vec(&serde_json::json!({ "ids": ids }))
            .expect("a list of integers serialises");
        match tokio::time::timeout(self.timeout, self.post(Bytes::from(body))).await {
            Ok(Ok((status, retry_after, answer))) => classify(status, retry_after, &answer),
            Ok(Err(Failure::Network(detail))) => CallResult::Retry {
                result: "network_error",
                after: None,
                detail,
            },
            Ok(Err(Failure::Settings(result, detail))) => {
                CallResult::Misconfigured { result, detail }
            }
            Err(_) => CallResult::Retry {
                result: "timeout",
                after: None,
                detail: format!("no answer within {:?}", self.timeout),
            },
        }
    }

    async fn post(&self, body: Bytes) -> Result<(StatusCode, Option<Duration>, Bytes), Failure> {
        let host = self
            .endpoint
            .host()
            .ok_or_else(|| Failure::Settings("dns", "the URL has no host".into()))?;
        let port = self
            .endpoint
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        // Resolved apart from connecting: a name that does not resolve is the settings' fault
        // (or DNS's), not a passing failure of FirstPromoter's.
        let addresses: Vec<_> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Failure::Settings("dns", format!("cannot resolve {host}: {e}")))?
            .collect();
        let tcp = TcpStream::connect(&addresses[..])
            .await
            .map_err(|e| Failure::Network(format!("cannot connect to {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let authority = self
            .endpoint
            .authority()
            .map(|a| a.as_str())
            .unwrap_or(host);
        let path = self
            .endpoint
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("fp-relay/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header("account-id", self.account_id.clone())
            .body(Full::new(body))
            .map_err(|e| Failure::Settings("dns", e.to_string()))?;
        match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(host.to_owned()).map_err(|_| {
                    Failure::Settings("tls", format!("{host} is not a valid TLS server name"))
                })?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| Failure::Settings("tls", format!("TLS with {host}: {e}")))?;
                exchange(TokioIo::new(stream), request).await
            }
            None => exchange(TokioIo::new(tcp), request).await,
        }
        .map_err(Failure::Network)
    }
}

/// Why a call got no HTTP answer.
enum Failure {
    /// Passing: a refused or reset connection.
    Network(String),
    /// The settings (or the network's names and certificates): the label and the detail.
    Settings(&'static str, String),
}

/// One request over a fresh HTTP/1.1 connection.
async fn exchange<S>(
    io: TokioIo<S>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Option<Duration>, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        // A status without a readable body is still an answer.
        .unwrap_or_default();
    Ok((status, retry_after, body))
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

/// FirstPromoter's `{"message", "code"}`, shortened; the raw text when it is not that shape.
fn message_of(body: &[u8]) -> String {
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

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn tls_connector() -> TlsConnector {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
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
    fn the_key_is_a_sensitive_header_and_not_in_the_endpoint() {
        let settings = FulfilmentV2Config {
            api_key: "fp_live_0123456789abcdef".to_owned(),
            account_id: "acc_1".to_owned(),
            ..FulfilmentV2Config::default()
        };
        let api = FirstPromoterApi::new(&settings).unwrap();
        assert!(api.authorization.is_sensitive());
        assert_eq!(
            api.endpoint().to_string(),
            "https://api.firstpromoter.com/api/v2/company/commissions/mark_fulfilled"
        );
        assert!(api.tls.is_some());
        assert!(!format!("{settings:?}").contains("0123456789abcdef"));
    }
}
