//! The private listener: `/healthz`, `/readyz`, `/metrics`.

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::http::answer::json_response;
use crate::relay::Relay;

/// Answers one admin request.
pub fn handle<B>(relay: &Relay, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "error": "method_not_allowed" }),
        );
    }
    match request.uri().path() {
        "/healthz" => json_response(StatusCode::OK, &json!({ "status": "ok" })),
        "/readyz" => {
            let (ready, checks) = relay.readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(
                status,
                &json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": checks }),
            )
        }
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(relay.render_metrics())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({ "error": "not_found" })),
    }
}
