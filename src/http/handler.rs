//! The public webhook endpoint: path and method checks, the bounded body read, then the request
//! logic; every answer is counted and every refusal logged (never with the body).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::error::{json_response, RelayError};
use crate::relay::{Accepted, EventMeta, Relay};
use crate::webhook::event_type_label;

/// Answers one request to the public listener.
pub async fn handle(
    relay: &Relay,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (event, result) = route(relay, request).await;
    let label = event.event_type.as_deref().map_or("none", event_type_label);
    let response = match result {
        Ok(accepted) => {
            let (status, body) = accepted.status_and_body();
            json_response(status, &body)
        }
        Err(error) => {
            if !matches!(error, RelayError::Unavailable(_)) {
                relay
                    .metrics
                    .rejected
                    .with_label_values(&[error.code()])
                    .inc();
            }
            tracing::warn!(
                %peer,
                reason = error.code(),
                event_type = label,
                event_id = event.event_id.as_deref().unwrap_or("-"),
                status = error.status().as_u16(),
                detail = %error,
                "request refused"
            );
            error.into_response()
        }
    };
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

async fn route(
    relay: &Relay,
    request: Request<Incoming>,
) -> (EventMeta, Result<Accepted, RelayError>) {
    if request.uri().path() != relay.config.http.path {
        return (EventMeta::default(), Err(RelayError::NotFound));
    }
    if request.method() != Method::POST {
        return (EventMeta::default(), Err(RelayError::MethodNotAllowed));
    }
    let (parts, body) = request.into_parts();
    match read_body(body, &parts.headers, relay.config.http.max_body_bytes).await {
        Ok(body) => relay.ingest(&parts.headers, body).await,
        Err(error) => (EventMeta::default(), Err(error)),
    }
}

/// Reads the whole body, but never more than `limit` bytes: a declared length over the limit
/// is refused before a byte is read, an undeclared one as soon as it crosses the limit.
async fn read_body(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: usize,
) -> Result<Bytes, RelayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(RelayError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(RelayError::PayloadTooLarge { limit }),
        Err(error) => Err(RelayError::BodyRead(error.to_string())),
    }
}
