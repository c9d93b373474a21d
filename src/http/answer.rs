//! The one place where outcomes become HTTP responses: an accepted event's status and what
//! happened to it, a refusal's status, short JSON error and `Retry-After` where a retry helps.

use std::io::Write as _;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::error::{RelayError, RETRY_AFTER_SECS};
use crate::relay::Accepted;

/// The response to one webhook request.
pub fn answer(result: Result<Accepted, RelayError>) -> Response<Full<Bytes>> {
    match result {
        // Nearly every answer: written straight into one buffer of the right size rather than
        // built as a `json!` tree and serialised: one allocation instead of sixteen, 13,000
        // fewer instructions a request (benches/cost.sh). The test below holds it to the
        // tree's bytes.
        Ok(Accepted::Published { topic, delivered }) => {
            let mut body = Vec::with_capacity(PUBLISHED_LEN + topic.len());
            body.extend_from_slice(br#"{"status":"published","topic":"#);
            // Topic names are [a-zA-Z0-9._-] (validated), but escape anyway: never broken JSON.
            serde_json::to_writer(&mut body, &topic).expect("a string serialises into a Vec");
            // Writing integers into a Vec cannot fail.
            let _ = write!(
                body,
                r#","partition":{},"offset":{}}}"#,
                delivered.partition, delivered.offset
            );
            json_bytes(StatusCode::OK, body)
        }
        Ok(accepted) => {
            let (status, body) = status_and_body(&accepted);
            json_response(status, &body)
        }
        Err(error) => refused(error),
    }
}

/// The HTTP status and JSON body for an accepted request.
pub fn status_and_body(accepted: &Accepted) -> (StatusCode, serde_json::Value) {
    match accepted {
        Accepted::Published { topic, delivered } => (
            StatusCode::OK,
            json!({
                "status": "published",
                "topic": topic,
                "partition": delivered.partition,
                "offset": delivered.offset,
            }),
        ),
        Accepted::Spooled { seq } => (
            StatusCode::ACCEPTED,
            json!({ "status": "spooled", "spool_seq": seq }),
        ),
        // 2xx: the event is durably in Kafka, and no retry by the sender could ever put it
        // on its topic (v1 would not retry a non-2xx anyway; v2 would, pointlessly).
        Accepted::DeadLettered {
            topic,
            delivered,
            reason,
        } => (
            StatusCode::ACCEPTED,
            json!({
                "status": "dead_lettered",
                "reason": reason,
                "topic": topic,
                "partition": delivered.partition,
                "offset": delivered.offset,
            }),
        ),
        Accepted::Duplicate => (StatusCode::OK, json!({ "status": "duplicate" })),
        Accepted::FulfilmentRequested {
            topic,
            delivered,
            request_topic,
            correlation_id,
        } => (
            StatusCode::OK,
            json!({
                "status": "fulfilment_requested",
                "topic": topic,
                "partition": delivered.partition,
                "offset": delivered.offset,
                "request_topic": request_topic,
                "correlation_id": correlation_id,
            }),
        ),
        Accepted::Fulfilment(answer) => {
            let mut body =
                json!({ "status": answer.outcome, "correlation_id": answer.correlation_id });
            if let Some(reason) = &answer.reason {
                body["reason"] = json!(reason);
            }
            (answer.status, body)
        }
    }
}

/// The response a refused request gets.
pub fn refused(error: RelayError) -> Response<Full<Bytes>> {
    let status = error.status();
    let mut body = json!({ "error": error.code(), "message": error.client_message() });
    if let RelayError::Invalid { dead_lettered, .. } = &error {
        body["dead_lettered"] = json!(dead_lettered);
    }
    let mut response = json_response(status, &body);
    if error.refused_before_body() {
        // The rest of the body is drained for a while (see http::body::linger), then the
        // connection closes: say so, so that the client does not wait to reuse it.
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    match error {
        RelayError::MethodNotAllowed => {
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        }
        RelayError::Unavailable(_) | RelayError::Busy => {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        _ => {}
    }
    response
}

/// The bytes of a published answer besides the topic, with room for the widest partition
/// and offset.
const PUBLISHED_LEN: usize = 96;

/// A JSON response with `status` and `body`.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    json_bytes(status, body.to_string().into_bytes())
}

/// A response with `status` and `body`, JSON already.
fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::kafka::publisher::Delivered;

    async fn bytes(response: Response<Full<Bytes>>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn the_published_answer_is_byte_for_byte_the_json_tree_s() {
        for (topic, partition, offset) in [
            ("firstpromoter.reward_created", 0, 0),
            ("t", i32::MAX, i64::MAX),
            ("odd\"name\\", -1, -1),
        ] {
            let accepted = || Accepted::Published {
                topic: topic.to_owned(),
                delivered: Delivered { partition, offset },
            };
            let (status, tree) = status_and_body(&accepted());
            let fast = answer(Ok(accepted()));
            assert_eq!(fast.status(), status);
            assert_eq!(fast.headers()[header::CONTENT_TYPE], "application/json");
            assert_eq!(bytes(fast).await, bytes(json_response(status, &tree)).await);
        }
    }
}
