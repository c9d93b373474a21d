//! What a reply read from the topic is: kept as read ([`ReadReply`]) until its commission is
//! settled, and classified once ([`Read`]): not ours (v1), a v2 reply, malformed, or a reply
//! to no request a relay issued.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;

use super::Marker;
use crate::fulfilment::correlator::{Outcome, Reply};
use crate::fulfilment::v2::{commission_of, is_v2};
use crate::kafka::record::headers;

/// One reply as read from Kafka, kept until its commission is settled.
pub(super) struct ReadReply {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) correlation_id: Option<String>,
    pub(super) key: Option<String>,
    pub(super) payload: Bytes,
    pub(super) headers: Vec<(String, String)>,
    /// Kafka's timestamp, for the oldest-waiting gauge.
    pub(super) written_at: Option<SystemTime>,
}

impl ReadReply {
    /// The trace id of the reply's `traceparent` (a fulfiller continues the request's trace),
    /// or `-`.
    pub(super) fn trace_id(&self) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k == crate::trace::TRACEPARENT || k == crate::trace::CE_TRACEPARENT)
            .and_then(|(_, v)| crate::trace::trace_id_of(v))
            .unwrap_or_else(|| "-".to_owned())
    }

    pub(super) fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let mut pairs = Vec::new();
        let mut correlation_id = None;
        if let Some(list) = message.headers() {
            for header in list.iter() {
                let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
                if header.key == headers::CORRELATION_ID {
                    correlation_id = Some(value.trim().to_owned());
                }
                pairs.push((header.key.to_owned(), value));
            }
        }
        Self {
            partition: message.partition(),
            offset: message.offset(),
            correlation_id,
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            headers: pairs,
            written_at: message
                .timestamp()
                .to_millis()
                .and_then(|ms| u64::try_from(ms).ok())
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }
}

/// What a reply read from the topic is.
pub(super) enum Read {
    /// A v1 reply: the v1 reply consumer's, not ours.
    NotOurs,
    /// A v2 reply.
    Reply(u64, Outcome),
    /// Nobody can act on it: why.
    Malformed(&'static str),
    /// Well formed, but to no request a relay issued (its correlation id's signature does not
    /// verify): forged, or from another account's relay. Never acted on.
    Unrequested(u64),
}

impl Marker {
    /// What a reply is: a v1 reply (not ours), a v2 one, or one nobody can act on (counted
    /// and logged here, dead-lettered by the caller).
    pub(super) fn read(&self, reply: &ReadReply) -> Read {
        let why = match reply.correlation_id.as_deref() {
            None => "no fp-correlation-id header",
            Some(id) if !is_v2(id) => return Read::NotOurs,
            Some(id) => {
                let outcome = serde_json::from_slice::<Reply>(&reply.payload)
                    .ok()
                    .map(|r| r.outcome);
                match (commission_of(id), outcome) {
                    (Some(commission), Some(_)) if !self.keys.verify(id) => {
                        self.metrics
                            .fulfilment_v2_replies
                            .with_label_values(&["unrequested"])
                            .inc();
                        tracing::warn!(
                            partition = reply.partition,
                            offset = reply.offset,
                            commission,
                            "a v2 reply to no request this relay issued (its correlation id is \
                             not signed with a reply key) goes to the dead-letter topic; \
                             FirstPromoter is not called"
                        );
                        return Read::Unrequested(commission);
                    }
                    (Some(commission), Some(outcome)) => return Read::Reply(commission, outcome),
                    (None, _) => "the correlation id names no commission (v2:<commission>:<id>)",
                    (_, None) => "the value is not JSON with a known outcome",
                }
            }
        };
        self.metrics
            .fulfilment_v2_replies
            .with_label_values(&["malformed"])
            .inc();
        tracing::warn!(
            partition = reply.partition,
            offset = reply.offset,
            why,
            "a malformed v2 fulfilment reply goes to the dead-letter topic"
        );
        Read::Malformed(why)
    }
}
