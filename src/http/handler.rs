//! The public webhook endpoint: path and method checks, the bounded body read, then the request
//! logic; every answer is counted and every refusal logged (never with the body).
//!
//! Generic over the request body, so the path, method, credential and limit rules are driven
//! by unit tests below with in-memory bodies, without a socket or a broker.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Body;

use crate::error::RelayError;
use crate::http::answer;
use crate::http::body::{self, Unread};
use crate::relay::{Accepted, EventMeta, Relay};
use crate::webhook::auth::HeadVerdict;
use crate::webhook::event_type_label;

/// Answers one request to the public listener.
pub async fn handle<B>(
    relay: &Relay,
    request: Request<B>,
    peer: SocketAddr,
) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    // Cheap (shared buffers); for the log lines of a panic or a refusal before the body.
    let event_id = request.headers().get("x-event-id").cloned();
    let traceparent = request.headers().get(crate::trace::TRACEPARENT).cloned();
    let tracestate = request.headers().get(crate::trace::TRACESTATE).cloned();
    let (event, result) = match CatchUnwind(std::pin::pin!(route(relay, request, peer))).await {
        Ok(routed) => routed,
        Err(panic) => (
            EventMeta::default(),
            Err(panicked(relay, peer, event_id.as_ref(), &*panic)),
        ),
    };
    let label = event.event_type.as_deref().map_or("none", event_type_label);
    // Refused before the body was read: the trace the head named, if any.
    let trace = || {
        event.trace.clone().unwrap_or_else(|| {
            let text = |v: &Option<http::HeaderValue>| {
                v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_owned)
            };
            crate::trace::TraceContext::continue_parts(
                text(&traceparent).as_deref(),
                text(&tracestate).as_deref(),
            )
        })
    };
    let trace_id = || match (&event.trace, &traceparent) {
        (Some(trace), _) => trace.trace_id_hex(),
        (None, Some(value)) => value
            .to_str()
            .ok()
            .and_then(crate::trace::trace_id_of)
            .unwrap_or_else(|| "-".to_owned()),
        (None, None) => "-".to_owned(),
    };
    if let Err(error) = &result {
        record_refusal(
            relay,
            error,
            peer,
            label,
            event.event_id.as_deref(),
            &trace_id(),
        );
    }
    let response = answer::answer(result);
    tracing::debug!(
        %peer,
        trace_id = %trace_id(),
        event_type = label,
        event_id = event.event_id.as_deref().unwrap_or("-"),
        status = response.status().as_u16(),
        "webhook answered"
    );
    if let Some(spans) = relay.spans() {
        let elapsed = started.elapsed();
        let ended = std::time::SystemTime::now();
        spans.record(crate::spans::RequestSpan {
            trace: trace(),
            started: ended - elapsed,
            ended,
            event_type: label,
            event_id: event.event_id.clone(),
            topic: event.topic.clone(),
            status: response.status().as_u16(),
        });
    }
    relay
        .metrics()
        .request_answered(label, response.status(), started.elapsed().as_secs_f64());
    response
}

/// A panic while handling a request: one log line with a request id, the event id when the
/// head named one, and the panic; the client gets a 500 naming the same request id. A
/// connection closed without an answer would tell the sender nothing at all.
fn panicked(
    relay: &Relay,
    peer: SocketAddr,
    event_id: Option<&http::HeaderValue>,
    panic: &(dyn std::any::Any + Send),
) -> RelayError {
    let request_id = uuid::Uuid::new_v4().to_string();
    relay.metrics().panics.inc();
    tracing::error!(
        %peer,
        request_id,
        event_id = event_id.and_then(|v| v.to_str().ok()).unwrap_or("-"),
        panic = crate::telemetry::panic_message(panic),
        "handling a request panicked; answered 500"
    );
    RelayError::Internal { request_id }
}

/// A future that turns a panic while it is polled into an `Err` with the panic's payload.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        // Unwind safety: what a panicking request leaves behind is its own state, dropped with
        // it; shared state is behind locks that say so (poisoned) or atomics.
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
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
    trace_id: &str,
) {
    if !matches!(error, RelayError::Unavailable(_)) {
        relay
            .metrics()
            .rejected
            .with_label_values(&[error.code()])
            .inc();
    }
    if let Some(failure) = error.auth_failure() {
        relay
            .metrics()
            .auth_failures
            .with_label_values(&[failure.reason()])
            .inc();
    }
    let held_back = match error {
        RelayError::Unavailable(_) => relay.note_kafka_refusal().then_some(0),
        // Logged where it was caught, with the panic.
        RelayError::Internal { .. } => None,
        // One line per reason every few seconds: a flood of bad credentials or junk bodies
        // must not become a flood of log lines (the metrics above count every one).
        _ => relay.refusal_lines().admit(error.code()),
    };
    if let Some(held_back) = held_back {
        tracing::warn!(
            %peer,
            reason = error.code(),
            event_type,
            event_id = event_id.unwrap_or("-"),
            trace_id,
            status = error.status().as_u16(),
            detail = %error,
            like_this_not_logged = held_back,
            "request refused"
        );
    }
}

async fn route<B>(
    relay: &Relay,
    request: Request<B>,
    peer: SocketAddr,
) -> (EventMeta, Result<Accepted, RelayError>)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The request's one deadline starts with its head: the body must arrive and Kafka must
    // acknowledge within kafka.ack_timeout of it (below FirstPromoter's 15 s by validation).
    let arrived = tokio::time::Instant::now();
    // Only the headers are kept: the rest (the URI in particular) points into hyper's read
    // buffer too, and is not needed past the path check.
    let (
        http::request::Parts {
            method,
            uri,
            headers,
            ..
        },
        body,
    ) = request.into_parts();
    // Refused before its body is read: the body is drained for a while as the answer goes.
    let refuse = |error, body| {
        body::linger(body);
        (EventMeta::default(), Err(error))
    };
    // One set of credentials for the whole request, even if they are reloaded meanwhile.
    let auth = relay.authenticator();
    let path_token = match match_path(uri.path(), &relay.config().http.path) {
        Some(None) => None,
        Some(Some(token)) if auth.accepts_path_tokens() => Some(token.to_owned()),
        _ => return refuse(RelayError::NotFound, body),
    };
    drop(uri);
    if method != Method::POST {
        return refuse(RelayError::MethodNotAllowed, body);
    }
    let client = auth.client_ip(peer.ip(), &headers);
    if auth.check_source(client).is_err() {
        return refuse(RelayError::Forbidden, body);
    }
    // Credentials that need no body are checked before a byte of it is read or buffered.
    let verdict = match auth.check_head(&headers, path_token.as_deref()) {
        Ok(verdict) => verdict,
        Err(failure) => return refuse(RelayError::Unauthorized(failure), body),
    };
    let http = &relay.config().http;
    let body_deadline = arrived + http.request_timeout.min(relay.config().kafka.ack_timeout);
    let (scope, unverified) = match verdict {
        HeadVerdict::Passed(scope) => (scope, false),
        HeadVerdict::NeedsBody(scope) => (scope, true),
    };
    let read = body::read(
        relay.body_budget(),
        body,
        body::declared_length(&headers),
        http.max_body_bytes,
        unverified,
        client,
    );
    let (body, mut budget) = match tokio::time::timeout_at(body_deadline, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(Unread {
            error,
            body: Some(body),
        })) => return refuse(error, body),
        Ok(Err(Unread { error, body: None })) => return (EventMeta::default(), Err(error)),
        Err(_) => return (EventMeta::default(), Err(RelayError::RequestTimeout)),
    };
    let scope = if unverified {
        match auth.check_body(&headers, &body, scope) {
            Ok(scope) => {
                budget.verified();
                scope
            }
            Err(failure) => return (EventMeta::default(), Err(RelayError::Unauthorized(failure))),
        }
    } else {
        scope
    };
    // Boxed: a held fulfilment request then keeps only the state of the path it is on, not
    // the largest of every path's (measured: the handler's future went from 3.5 KiB inline in
    // every connection to a few hundred bytes). The headers go with it, to be dropped as soon
    // as they are read: they point into hyper's read buffer, which can then be freed.
    Box::pin(relay.ingest(headers, body, arrived, budget, scope)).await
}

/// `Some(None)` for the webhook path itself, `Some(Some(token))` for `{path}/{token}`, `None`
/// for anything else.
pub(crate) fn match_path<'p>(path: &'p str, webhook_path: &str) -> Option<Option<&'p str>> {
    let rest = path.strip_prefix(webhook_path)?;
    if rest.is_empty() {
        return Some(None);
    }
    let token = rest.strip_prefix('/')?;
    (!token.is_empty() && !token.contains('/')).then_some(Some(token))
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use http::StatusCode;
    use http_body_util::BodyExt;
    use hyper::body::Frame;

    use super::*;
    use crate::config::Config;
    use crate::kafka::outage::ClusterWatch;
    use crate::kafka::publisher::Publisher;
    use crate::metrics::Metrics;
    use crate::relay::{Health, Services};

    /// A request body that must never be read: the rule under test refuses from the head.
    struct Untouchable;

    impl Body for Untouchable {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            panic!("the body was read although the head alone should decide");
        }
    }

    /// A relay with no broker behind it (librdkafka connects lazily; nothing here publishes).
    fn relay(configure: impl FnOnce(&mut Config)) -> Relay {
        let mut config = Config::default();
        config.kafka.brokers = "127.0.0.1:1".into();
        config
            .kafka
            .properties
            .insert("log_level".into(), "0".into());
        config.fulfilment.enabled = false;
        config.auth.tokens = vec!["unit-test-token-0123456789".into()];
        configure(&mut config);
        config.validate().expect("valid test config");
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let publisher = Publisher::new(
            crate::kafka::producer_configs(&config.kafka, config.kafka.ack_timeout),
            config.kafka.ack_timeout,
            metrics.clone(),
            Arc::new(ClusterWatch::default()),
        )
        .expect("a producer needs no broker to be built");
        let services = Services {
            shared_dedup: None,
            publisher: Arc::new(publisher),
            correlator: None,
            verdicts: None,
            spool: None,
            dedup: None,
            metrics,
            health,
            spans: None,
        };
        Relay::new(config, services)
    }

    async fn call<B>(
        relay: &Relay,
        request: Request<B>,
    ) -> (StatusCode, serde_json::Value, http::HeaderMap)
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let response = handle(relay, request, "127.0.0.1:40000".parse().unwrap()).await;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            serde_json::from_slice(&bytes).unwrap(),
            parts.headers,
        )
    }

    fn post(path: &str) -> http::request::Builder {
        Request::post(path).header("content-type", "application/json")
    }

    /// A panic while handling a request (here: the body panics when read) is answered 500
    /// with a request id, counted, and the relay goes on serving.
    #[tokio::test]
    async fn a_panic_in_handling_is_answered_500_with_a_request_id_and_counted() {
        let relay = relay(|_| {});
        let request = post("/webhooks/firstpromoter")
            .header("authorization", "Bearer unit-test-token-0123456789")
            .header("x-event-id", "evt-7")
            .body(Untouchable)
            .unwrap();
        let (status, body, _) = call(&relay, request).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"], "internal");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("request id "), "{message}");
        assert_eq!(relay.metrics().panics.get(), 1);
        let (status, _, _) = call(&relay, post("/elsewhere").body(Untouchable).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "still serving");
    }

    #[tokio::test]
    async fn paths_methods_credentials_and_sizes_are_decided_from_the_head() {
        let relay = relay(|_| {});
        let path = "/webhooks/firstpromoter";
        let (status, body, _) = call(&relay, post("/elsewhere").body(Untouchable).unwrap()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        let (status, _, headers) =
            call(&relay, Request::get(path).body(Untouchable).unwrap()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers["allow"], "POST");
        let (status, body, _) = call(&relay, post(path).body(Untouchable).unwrap()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        );
        let wrong = post(path).header("authorization", "Bearer wrong-token-00000000000");
        assert_eq!(
            call(&relay, wrong.body(Untouchable).unwrap()).await.0,
            StatusCode::UNAUTHORIZED
        );
        let huge = post(path)
            .header("authorization", "Bearer unit-test-token-0123456789")
            .header("content-length", "999999999");
        let (status, body, _) = call(&relay, huge.body(Untouchable).unwrap()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
        );
        assert_eq!(
            relay
                .metrics()
                .auth_failures
                .with_label_values(&["missing_credentials"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn a_spent_body_budget_is_503_busy_with_retry_after_and_given_back_after() {
        let relay = relay(|config| {
            config.http.max_body_bytes = 2048;
            config.http.max_buffered_body_bytes = 4096;
        });
        let whole = Full::new(Bytes::from(vec![b' '; 4096]));
        let Ok((_, held)) =
            body::read(relay.body_budget(), whole, Some(4096), 4096, false, None).await
        else {
            panic!("the whole budget");
        };
        let request = post("/webhooks/firstpromoter")
            .header("authorization", "Bearer unit-test-token-0123456789")
            .header("content-length", "100");
        let hundred = Full::new(Bytes::from(vec![b' '; 100]));
        let (status, body, headers) = call(&relay, request.body(hundred).unwrap()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("busy"))
        );
        assert!(headers.contains_key("retry-after"));
        drop(held);
        assert_eq!(
            relay.body_budget().available(),
            (4096, 2048),
            "released with the request"
        );
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_400_with_its_reason() {
        let relay =
            relay(|config| config.kafka.ack_timeout = std::time::Duration::from_millis(200));
        let request = post("/webhooks/firstpromoter")
            .header("authorization", "Bearer unit-test-token-0123456789");
        let (status, body, _) = call(
            &relay,
            request
                .body(Full::new(Bytes::from_static(b"{nope")))
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_json"))
        );
        assert_eq!(
            body["dead_lettered"], false,
            "no broker: the dead-letter write failed"
        );
    }

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
