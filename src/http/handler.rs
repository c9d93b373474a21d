//! The public webhook endpoint: path and method checks, the bounded body read, then the request
//! logic; every answer is counted and every refusal logged (never with the body).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::error::RelayError;
use crate::http::answer;
use crate::relay::{Accepted, EventMeta, Relay};
use crate::webhook::auth::HeadVerdict;
use crate::webhook::event_type_label;

/// Answers one request to the public listener.
pub async fn handle(
    relay: &Relay,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (event, result) = route(relay, request, peer).await;
    let label = event.event_type.as_deref().map_or("none", event_type_label);
    if let Err(error) = &result {
        record_refusal(relay, error, peer, label, event.event_id.as_deref());
    }
    let response = answer::answer(result);
    relay
        .metrics
        .http_requests
        .with_label_values(&[label, response.status().as_str()])
        .inc();
    relay
        .metrics
        .http_request_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Counts a refusal and logs it (without the body); during a Kafka outage every request is
/// refused the same way, so those are logged one every few seconds and the outage summary
/// counts the rest.
fn record_refusal(
    relay: &Relay,
    error: &RelayError,
    peer: SocketAddr,
    event_type: &str,
    event_id: Option<&str>,
) {
    if !matches!(error, RelayError::Unavailable(_)) {
        relay
            .metrics
            .rejected
            .with_label_values(&[error.code()])
            .inc();
    }
    if let Some(failure) = error.auth_failure() {
        relay
            .metrics
            .auth_failures
            .with_label_values(&[failure.reason()])
            .inc();
    }
    let logged =
        !matches!(error, RelayError::Unavailable(_)) || relay.health.cluster.note_refusal();
    if logged {
        tracing::warn!(
            %peer,
            reason = error.code(),
            event_type,
            event_id = event_id.unwrap_or("-"),
            status = error.status().as_u16(),
            detail = %error,
            "request refused"
        );
    }
}

async fn route(
    relay: &Relay,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> (EventMeta, Result<Accepted, RelayError>) {
    // The request's one deadline starts with its head: the body must arrive and Kafka must
    // acknowledge within kafka.ack_timeout of it (below FirstPromoter's 15 s by validation).
    let arrived = tokio::time::Instant::now();
    let refuse = |error| (EventMeta::default(), Err(error));
    let path_token = match match_path(request.uri().path(), &relay.config.http.path) {
        Some(None) => None,
        Some(Some(token)) if relay.authenticator.accepts_path_tokens() => Some(token.to_owned()),
        _ => return refuse(RelayError::NotFound),
    };
    if request.method() != Method::POST {
        return refuse(RelayError::MethodNotAllowed);
    }
    let (parts, body) = request.into_parts();
    let client = relay.authenticator.client_ip(peer.ip(), &parts.headers);
    if relay.authenticator.check_source(client).is_err() {
        return refuse(RelayError::Forbidden);
    }
    // Credentials that need no body are checked before a byte of it is read or buffered.
    let verdict = match relay
        .authenticator
        .check_head(&parts.headers, path_token.as_deref())
    {
        Ok(verdict) => verdict,
        Err(failure) => return refuse(RelayError::Unauthorized(failure)),
    };
    let http = &relay.config.http;
    let Some(_budget) = relay.reserve_body(declared_length(&parts.headers)) else {
        return refuse(RelayError::Busy);
    };
    let body_deadline = arrived + http.request_timeout.min(relay.config.kafka.ack_timeout);
    let body = match tokio::time::timeout_at(
        body_deadline,
        read_body(body, &parts.headers, http.max_body_bytes),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => return refuse(error),
        Err(_) => return refuse(RelayError::RequestTimeout),
    };
    if verdict == HeadVerdict::NeedsBody {
        if let Err(failure) = relay.authenticator.check_body(&parts.headers, &body) {
            return refuse(RelayError::Unauthorized(failure));
        }
    }
    relay.ingest(&parts.headers, body, arrived).await
}

/// The `Content-Length` the client declared, if any.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// `Some(None)` for the webhook path itself, `Some(Some(token))` for `{path}/{token}`, `None`
/// for anything else.
fn match_path<'p>(path: &'p str, webhook_path: &str) -> Option<Option<&'p str>> {
    let rest = path.strip_prefix(webhook_path)?;
    if rest.is_empty() {
        return Some(None);
    }
    let token = rest.strip_prefix('/')?;
    (!token.is_empty() && !token.contains('/')).then_some(Some(token))
}

/// Reads the whole body, but never more than `limit` bytes: a declared length over the limit
/// is refused before a byte is read, an undeclared one as soon as it crosses the limit.
async fn read_body(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: usize,
) -> Result<Bytes, RelayError> {
    if declared_length(headers).is_some_and(|length| length > limit as u64) {
        return Err(RelayError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(RelayError::PayloadTooLarge { limit }),
        Err(error) => Err(RelayError::BodyRead(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::match_path;

    #[test]
    fn path_tokens_are_one_segment_after_the_webhook_path() {
        let path = "/webhooks/firstpromoter";
        assert_eq!(match_path("/webhooks/firstpromoter", path), Some(None));
        assert_eq!(
            match_path("/webhooks/firstpromoter/t0k", path),
            Some(Some("t0k"))
        );
        assert_eq!(match_path("/webhooks/firstpromoter/", path), None);
        assert_eq!(match_path("/webhooks/firstpromoter/a/b", path), None);
        assert_eq!(match_path("/webhooks/firstpromoterx", path), None);
        assert_eq!(match_path("/other", path), None);
    }
}
