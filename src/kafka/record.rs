//! The Kafka record for an event: topic, key, the body byte for byte, and the headers
//! (`fp-*` plus the CloudEvents Kafka binding's binary-mode `ce_*` headers).

use std::borrow::Cow;
use std::time::SystemTime;

use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};

use crate::trace::TraceContext;
use crate::webhook::envelope::Envelope;
use crate::webhook::routing::Router;

/// Header names the relay writes; downstream consumers code against these (see docs/).
pub mod headers {
    pub const EVENT_ID: &str = "fp-event-id";
    pub const EVENT_TYPE: &str = "fp-event-type";
    pub const WEBHOOK_VERSION: &str = "fp-webhook-version";
    pub const RECEIVED_AT: &str = "fp-received-at";
    pub const DEAD_LETTER_REASON: &str = "fp-dead-letter-reason";
    pub const ORIGINAL_TOPIC: &str = "fp-original-topic";
    pub const CORRELATION_ID: &str = "fp-correlation-id";
    pub const REPLY_TOPIC: &str = "fp-reply-topic";
    /// On a dead letter whose body could not be scanned for secrets: `sha256`, the value is a
    /// JSON note of the body's SHA-256 and size instead of the body.
    pub const DEAD_LETTER_BODY: &str = "fp-dead-letter-body";
    pub const DEADLINE: &str = "fp-deadline";
    pub const REDACTED: &str = "fp-redacted";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const CE_SPECVERSION: &str = "ce_specversion";
    pub const CE_ID: &str = "ce_id";
    pub const CE_SOURCE: &str = "ce_source";
    pub const CE_TYPE: &str = "ce_type";
    pub const CE_TIME: &str = "ce_time";
}

/// Prefix of the CloudEvents `ce_type`: `com.firstpromoter.lead_signup`.
pub const CE_TYPE_PREFIX: &str = "com.firstpromoter.";

/// When the relay received a request, in both forms it needs.
#[derive(Debug, Clone)]
pub struct Received {
    /// Wall-clock arrival, for `fp-received-at` and deadlines sent downstream.
    pub at: SystemTime,
    /// `at` as RFC 3339 with milliseconds.
    pub rfc3339: String,
    /// The trace the request belongs to and the relay's span in it; written on every record.
    pub trace: TraceContext,
}

impl Received {
    /// Now, in a new trace.
    pub fn now() -> Self {
        Self::with_trace(TraceContext::start())
    }

    /// Now, continuing the trace of the request's `traceparent` (or a new one).
    pub fn for_request(headers: &http::HeaderMap) -> Self {
        Self::with_trace(TraceContext::continue_from(headers))
    }

    fn with_trace(trace: TraceContext) -> Self {
        let at = SystemTime::now();
        Self {
            at,
            rfc3339: rfc3339(at),
            trace,
        }
    }
}

/// The trace headers of a record: `traceparent` under its W3C and CloudEvents names, and
/// `tracestate` when one came in.
fn push_trace(h: &mut Vec<(Cow<'static, str>, String)>, trace: &TraceContext) {
    let parent = trace.traceparent();
    h.push((crate::trace::TRACEPARENT.into(), parent.clone()));
    h.push((crate::trace::CE_TRACEPARENT.into(), parent));
    if let Some(state) = &trace.state {
        h.push((crate::trace::TRACESTATE.into(), state.clone()));
        h.push((crate::trace::CE_TRACESTATE.into(), state.clone()));
    }
}

/// `time` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// One record ready to hand to the producer.
#[derive(Debug, Clone)]
pub struct OutboundRecord {
    /// Destination topic.
    pub topic: String,
    /// Partitioning key: the id of the entity the event is about, when there is one.
    pub key: Option<String>,
    /// The message value: the request body as received.
    pub payload: Bytes,
    /// Headers in the order they are written (names are static except for replayed records).
    pub headers: Vec<(Cow<'static, str>, String)>,
}

impl OutboundRecord {
    /// The record for a parsed event.
    pub fn for_event(
        envelope: &Envelope,
        router: &Router,
        cloudevents_source: &str,
        received: &Received,
        body: Bytes,
    ) -> Self {
        let mut h = Vec::with_capacity(14);
        let ce_id = match &envelope.event_id {
            Some(id) => {
                h.push((headers::EVENT_ID.into(), id.clone()));
                id.clone()
            }
            // CloudEvents requires an id; an event without one gets a fresh one so that
            // source + id stays unique as the spec asks.
            None => uuid::Uuid::new_v4().to_string(),
        };
        h.push((headers::EVENT_TYPE.into(), envelope.event_type.clone()));
        h.push((
            headers::WEBHOOK_VERSION.into(),
            envelope.version.as_str().to_owned(),
        ));
        h.push((headers::RECEIVED_AT.into(), received.rfc3339.clone()));
        h.push((headers::CONTENT_TYPE.into(), "application/json".to_owned()));
        h.push((headers::CE_SPECVERSION.into(), "1.0".to_owned()));
        h.push((headers::CE_ID.into(), ce_id));
        h.push((headers::CE_SOURCE.into(), cloudevents_source.to_owned()));
        h.push((
            headers::CE_TYPE.into(),
            format!("{CE_TYPE_PREFIX}{}", envelope.event_type),
        ));
        if let Some(time) = envelope
            .occurred_at
            .as_deref()
            .filter(|t| looks_like_rfc3339(t))
        {
            h.push((headers::CE_TIME.into(), time.to_owned()));
        }
        push_trace(&mut h, &received.trace);
        Self {
            topic: router.topic(&envelope.event_type),
            // The default key; a key override needs the tree and is set by the pipeline.
            key: router.key(envelope, None),
            payload: body,
            headers: h,
        }
    }

    /// The record that keeps an unparseable body for an operator to recover.
    pub fn dead_letter(topic: &str, reason: &str, received: &Received, body: Bytes) -> Self {
        let mut h = vec![
            (headers::DEAD_LETTER_REASON.into(), reason.to_owned()),
            (headers::RECEIVED_AT.into(), received.rfc3339.clone()),
        ];
        push_trace(&mut h, &received.trace);
        Self {
            topic: topic.to_owned(),
            key: None,
            payload: body,
            headers: h,
        }
    }

    /// Marks a record whose payload had `count` values redacted (`fp-redacted`).
    pub fn mark_redacted(&mut self, count: usize) {
        self.headers
            .push((headers::REDACTED.into(), count.to_string()));
    }

    /// Adds the fulfilment request headers: the id the fulfiller echoes, where it replies, and
    /// until when an answer is useful (docs/fulfilment-protocol.md).
    pub fn add_fulfilment_request(
        &mut self,
        correlation_id: &str,
        reply_topic: &str,
        deadline: String,
    ) {
        self.headers
            .push((headers::CORRELATION_ID.into(), correlation_id.to_owned()));
        self.headers
            .push((headers::REPLY_TOPIC.into(), reply_topic.to_owned()));
        self.headers.push((headers::DEADLINE.into(), deadline));
    }

    /// The same record moved to the dead-letter `topic`, because Kafka refused it for good:
    /// key, value and headers kept, plus where it was going and why it did not get there.
    pub fn into_dead_letter(mut self, topic: &str, reason: &str) -> Self {
        let original = std::mem::replace(&mut self.topic, topic.to_owned());
        self.headers
            .push((headers::DEAD_LETTER_REASON.into(), reason.to_owned()));
        self.headers
            .push((headers::ORIGINAL_TOPIC.into(), original));
        self
    }

    /// The headers in librdkafka's form.
    pub fn owned_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(
            OwnedHeaders::new_with_capacity(self.headers.len()),
            |acc, (k, v)| {
                acc.insert(Header {
                    key: k.as_ref(),
                    value: Some(v.as_bytes()),
                })
            },
        )
    }

    /// The value of header `name`, if the record has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `ce_time` must be RFC 3339; FirstPromoter's timestamps are, but a malformed one is left out
/// rather than passed on as a lie (the header is optional in CloudEvents).
fn looks_like_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't')
        && b[13] == b':'
        && (s.ends_with('Z') || s.ends_with('z') || matches!(b[b.len() - 6], b'+' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::envelope::parse;
    use std::collections::BTreeMap;

    #[test]
    fn event_record_carries_fp_and_cloudevents_headers() {
        let body = Bytes::from_static(
            br#"{"event":{"id":7,"type":"lead_signup","created_at":"2024-10-03T13:45:20.103Z"},"data":{"id":9}}"#,
        );
        let envelope = parse(&body, &http::HeaderMap::new()).unwrap();
        let router = Router::new(
            "firstpromoter.{event_type}",
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        let received = Received::now();
        let record = OutboundRecord::for_event(
            &envelope,
            &router,
            "https://firstpromoter.com",
            &received,
            body.clone(),
        );
        assert_eq!(record.topic, "firstpromoter.lead_signup");
        assert_eq!(record.key.as_deref(), Some("9"));
        assert_eq!(record.payload, body);
        assert_eq!(record.header(headers::EVENT_ID), Some("7"));
        assert_eq!(record.header(headers::CE_ID), Some("7"));
        assert_eq!(
            record.header(headers::CE_TYPE),
            Some("com.firstpromoter.lead_signup")
        );
        assert_eq!(
            record.header(headers::CE_TIME),
            Some("2024-10-03T13:45:20.103Z")
        );
        assert_eq!(record.header(headers::WEBHOOK_VERSION), Some("v1"));
        assert_eq!(
            record.header(headers::RECEIVED_AT),
            Some(received.rfc3339.as_str())
        );
    }

    #[test]
    fn rfc3339_shape_check_accepts_offsets_and_refuses_junk() {
        assert!(looks_like_rfc3339("2024-10-03T13:45:20.103Z"));
        assert!(looks_like_rfc3339("2024-10-03T13:45:20+02:00"));
        assert!(!looks_like_rfc3339("yesterday"));
        assert!(!looks_like_rfc3339("2024-10-03 13:45"));
    }
}
