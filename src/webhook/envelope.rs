//! Tolerant parsing of FirstPromoter's two envelopes.
//!
//! v1: `{"event": {"id", "type", "created_at"}, "data": {...}}`.
//! v2: `{"event_id", "event_type", "action", "entity_type", "entity_id", "changes", "data",
//! "timestamp"}`, with `X-Event-Id` and `X-Event-Type` headers.
//!
//! Only the event type is required. Ids may be integers or strings; everything else may be
//! missing or null, because FirstPromoter's own examples disagree with its field tables.

use http::HeaderMap;
use serde_json::Value;

/// Header FirstPromoter v2 sends with the event id.
pub const HEADER_EVENT_ID: &str = "x-event-id";
/// Header FirstPromoter v2 sends with the event type.
pub const HEADER_EVENT_TYPE: &str = "x-event-type";

/// Which FirstPromoter delivery system sent the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookVersion {
    /// Legacy per-campaign webhooks: no retries for standard events.
    V1,
    /// Subscriptions: retried with backoff, custom headers.
    V2,
}

impl WebhookVersion {
    /// The value of the `fp-webhook-version` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

/// What the relay needs to know about one webhook; the body itself travels untouched.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Which envelope the body used.
    pub version: WebhookVersion,
    /// `event.type` (v1) or `event_type` (v2), falling back to `X-Event-Type`.
    pub event_type: String,
    /// `event.id` (v1) or `event_id` (v2), falling back to `X-Event-Id`; the dedup key.
    pub event_id: Option<String>,
    /// When FirstPromoter says the event happened (`event.created_at` / `timestamp`).
    pub occurred_at: Option<String>,
    /// The parsed body, kept for message-key extraction.
    pub document: Value,
}

/// Why a body is not a webhook the relay can route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON at all (or nested deeper than serde_json's recursion limit).
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("body is JSON but not an object")]
    NotAnObject,
    /// An object without an event type in the body or the `X-Event-Type` header.
    #[error("no event type: expected event.type (v1) or event_type (v2)")]
    MissingEventType,
}

impl EnvelopeError {
    /// Stable machine-readable reason, used in metrics, logs and the dead-letter header.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "bad_json",
            Self::NotAnObject => "not_an_object",
            Self::MissingEventType => "missing_event_type",
        }
    }
}

/// Parses `body` as a v1 or v2 envelope.
pub fn parse(body: &[u8], headers: &HeaderMap) -> Result<Envelope, EnvelopeError> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let object = document.as_object().ok_or(EnvelopeError::NotAnObject)?;
    let header_type = header_str(headers, HEADER_EVENT_TYPE);
    let header_id = header_str(headers, HEADER_EVENT_ID);

    let v1_event = object.get("event").and_then(Value::as_object);
    let v1_type = v1_event.and_then(|e| e.get("type")).and_then(non_empty_str);
    let v2_type = object.get("event_type").and_then(non_empty_str);

    let (version, event_type, event_id, occurred_at) = match (v1_type, v2_type) {
        (Some(event_type), _) => {
            let event = v1_event.expect("v1 type implies v1 event object");
            (
                WebhookVersion::V1,
                event_type.to_owned(),
                event.get("id").and_then(id_string),
                event
                    .get("created_at")
                    .and_then(non_empty_str)
                    .map(str::to_owned),
            )
        }
        (None, v2_type) => {
            let event_type = v2_type
                .or(header_type)
                .ok_or(EnvelopeError::MissingEventType)?;
            (
                WebhookVersion::V2,
                event_type.to_owned(),
                object.get("event_id").and_then(id_string),
                object
                    .get("timestamp")
                    .and_then(non_empty_str)
                    .map(str::to_owned),
            )
        }
    };
    let event_id = event_id.or_else(|| header_id.map(str::to_owned));
    Ok(Envelope {
        version,
        event_type,
        event_id,
        occurred_at,
        document,
    })
}

/// Renders an id the way it is used as a Kafka key or header: integers in decimal, strings as
/// they are; anything else (null, empty, objects) is no id.
pub fn id_string(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn non_empty_str(value: &Value) -> Option<&str> {
    value.as_str().map(str::trim).filter(|s| !s.is_empty())
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse_str(body: &str) -> Result<Envelope, EnvelopeError> {
        parse(body.as_bytes(), &HeaderMap::new())
    }

    #[test]
    fn v1_envelope_yields_type_id_and_time() {
        let env = parse_str(
            r#"{"event":{"id":22736304,"type":"lead_signup","created_at":"2024-10-03T13:45:20.103Z"},"data":{"id":1}}"#,
        )
        .unwrap();
        assert_eq!(env.version, WebhookVersion::V1);
        assert_eq!(env.event_type, "lead_signup");
        assert_eq!(env.event_id.as_deref(), Some("22736304"));
        assert_eq!(env.occurred_at.as_deref(), Some("2024-10-03T13:45:20.103Z"));
    }

    #[test]
    fn v2_envelope_yields_type_id_and_time() {
        let env = parse_str(
            r#"{"event_id":"7f1c","event_type":"referral.created","entity_id":5,"timestamp":"2025-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(env.version, WebhookVersion::V2);
        assert_eq!(env.event_type, "referral.created");
        assert_eq!(env.event_id.as_deref(), Some("7f1c"));
    }

    #[test]
    fn v2_headers_fill_in_what_the_body_lacks() {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER_EVENT_TYPE,
            HeaderValue::from_static("payout.completed"),
        );
        headers.insert(HEADER_EVENT_ID, HeaderValue::from_static("abc"));
        let env = parse(br#"{"data":{"test":true}}"#, &headers).unwrap();
        assert_eq!(env.event_type, "payout.completed");
        assert_eq!(env.event_id.as_deref(), Some("abc"));
        assert_eq!(env.version, WebhookVersion::V2);
    }

    #[test]
    fn string_ids_and_nulls_are_tolerated() {
        let env = parse_str(
            r#"{"event":{"id":"A-1","type":"new_customer","created_at":null},"data":null}"#,
        )
        .unwrap();
        assert_eq!(env.event_id.as_deref(), Some("A-1"));
        assert_eq!(env.occurred_at, None);
        let env = parse_str(r#"{"event":{"type":"lead_cancelled"}}"#).unwrap();
        assert_eq!(env.event_id, None);
    }

    #[test]
    fn broken_bodies_are_classified() {
        assert_eq!(parse_str("{nope").unwrap_err().reason(), "bad_json");
        assert_eq!(parse_str("[1,2]").unwrap_err(), EnvelopeError::NotAnObject);
        assert_eq!(
            parse_str(r#"{"event":{"id":1}}"#).unwrap_err(),
            EnvelopeError::MissingEventType
        );
        assert_eq!(
            parse_str(r#"{"event_type":""}"#).unwrap_err(),
            EnvelopeError::MissingEventType
        );
        assert_eq!(
            parse(&[0xff, 0xfe], &HeaderMap::new())
                .unwrap_err()
                .reason(),
            "bad_json"
        );
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
        let body = "[".repeat(100_000);
        assert_eq!(parse_str(&body).unwrap_err().reason(), "bad_json");
    }
}
