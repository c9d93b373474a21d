//! Non-monetary rewards for webhooks v2, which has no `fulfilment_pending` and gives the HTTP
//! status no meaning (docs/fulfilment-protocol.md, "Webhooks v2").
//!
//! 1. An approved non-monetary `commission.updated` is published to its topic as usual and,
//!    as a fulfilment request, to the topic v1's `fulfilment_pending` uses ([`approval`]).
//! 2. The fulfiller replies exactly as for v1. The correlation id names the commission
//!    ([`correlation_id`]), so any replica can act on a reply, days later, after restarts.
//! 3. The [`marker`] reads replies in a consumer group and calls FirstPromoter's
//!    `mark_fulfilled` ([`api`]) for `fulfilled` ones, committing only after FirstPromoter answered.

pub mod api;
pub mod marker;

use std::time::Duration;

use crate::kafka::record::{rfc3339, OutboundRecord, Received};
use crate::webhook::envelope::{Envelope, WebhookVersion};

/// The v2 event that carries an approval.
pub const APPROVAL_EVENT_TYPE: &str = "commission.updated";

/// Prefix of a v2 correlation id: `v2:<commission id>:<uuid>`. v1 ids are bare UUIDs.
pub const CORRELATION_PREFIX: &str = "v2:";

/// What `fp-deadline` says on a v2 request: there is no HTTP request waiting, and the relay acts
/// on a reply whenever it comes; the header is there for fulfillers written against v1 that
/// expect one (a reward approved and not delivered within 30 days needs a person anyway).
pub const V2_DEADLINE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The commission id when `envelope` is a v2 `commission.updated` that moved the commission to
/// `approved` (`changes.status` ends in `"approved"`) in one of the non-monetary `units`.
/// Denials, monetary (`cash`) commissions and other updates are `None`: only routed.
pub fn approval(envelope: &Envelope, units: &[String]) -> Option<u64> {
    if envelope.version != WebhookVersion::V2 || envelope.event_type != APPROVAL_EVENT_TYPE {
        return None;
    }
    let facts = &envelope.facts;
    if facts.status_changed_to.as_deref() != Some("approved") {
        return None;
    }
    let unit = facts.data_unit.as_deref()?;
    if !units.iter().any(|u| u == unit) {
        return None;
    }
    facts
        .data_id
        .as_deref()
        .or(facts.entity_id.as_deref())
        .and_then(commission_id)
}

/// A commission id: a positive integer (or a string of digits).
fn commission_id(id: &str) -> Option<u64> {
    id.trim().parse().ok().filter(|id| *id > 0)
}

/// The fulfilment request for an approved `commission` whose event is `record`: the same
/// value and headers on `request_topic`, keyed by the commission, with a fresh correlation id
/// (returned too), the reply topic and [`V2_DEADLINE`].
pub fn request_for(
    record: &OutboundRecord,
    commission: u64,
    request_topic: &str,
    reply_topic: &str,
    received: &Received,
) -> (OutboundRecord, String) {
    let correlation_id = correlation_id(commission);
    let mut request = record.clone();
    request.topic = request_topic.to_owned();
    request.key = Some(commission.to_string());
    request.add_fulfilment_request(
        &correlation_id,
        reply_topic,
        rfc3339(received.at + V2_DEADLINE),
    );
    (request, correlation_id)
}

/// A fresh correlation id for a request about `commission`.
pub fn correlation_id(commission: u64) -> String {
    format!("{CORRELATION_PREFIX}{commission}:{}", uuid::Uuid::new_v4())
}

/// True for correlation ids of v2 requests (the v1 reply consumer leaves those alone).
pub fn is_v2(correlation_id: &str) -> bool {
    correlation_id.trim().starts_with(CORRELATION_PREFIX)
}

/// The commission a v2 correlation id names; `None` for v1 ids and anything malformed.
pub fn commission_of(correlation_id: &str) -> Option<u64> {
    let rest = correlation_id.trim().strip_prefix(CORRELATION_PREFIX)?;
    let (commission, unique) = rest.split_once(':')?;
    if unique.is_empty() {
        return None;
    }
    commission.parse().ok().filter(|id| *id > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::envelope::parse;

    fn units() -> Vec<String> {
        crate::config::FulfilmentV2Config::default().units
    }

    fn update(status: &str, unit: &str) -> Envelope {
        let body = format!(
            r#"{{"event_id":"e1","event_type":"commission.updated","entity_id":77,
                "changes":{{"status":["pending","{status}"]}},
                "data":{{"id":88901,"status":"{status}","unit":"{unit}"}}}}"#
        );
        parse(body.as_bytes(), &http::HeaderMap::new()).unwrap()
    }

    #[test]
    fn only_non_monetary_approvals_are_fulfilment_requests() {
        assert_eq!(
            approval(&update("approved", "points"), &units()),
            Some(88901)
        );
        assert_eq!(
            approval(&update("approved", "free_months"), &units()),
            Some(88901)
        );
        assert_eq!(approval(&update("denied", "points"), &units()), None);
        assert_eq!(approval(&update("approved", "cash"), &units()), None);
        assert_eq!(
            approval(&update("approved", "points"), &["credits".to_owned()]),
            None,
            "units are configurable"
        );
    }

    #[test]
    fn other_updates_and_events_are_only_routed() {
        let no_status_change = parse(
            br#"{"event_type":"commission.updated","changes":{"amount":[1,2]},"data":{"id":1,"unit":"points"}}"#,
            &http::HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(approval(&no_status_change, &units()), None);
        let approved_event = parse(
            br#"{"event_type":"commission.approved","changes":{"status":["pending","approved"]},"data":{"id":1,"unit":"points"}}"#,
            &http::HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(approval(&approved_event, &units()), None);
        let v1 = parse(
            br#"{"event":{"type":"commission.updated"},"changes":{"status":["pending","approved"]},"data":{"id":1,"unit":"points"}}"#,
            &http::HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(approval(&v1, &units()), None);
    }

    #[test]
    fn the_commission_id_comes_from_data_or_the_entity() {
        let from_entity = parse(
            br#"{"event_type":"commission.updated","entity_id":"42","changes":{"status":["pending","approved"]},"data":{"unit":"credits"}}"#,
            &http::HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(approval(&from_entity, &units()), Some(42));
        let no_id = parse(
            br#"{"event_type":"commission.updated","changes":{"status":["pending","approved"]},"data":{"id":null,"unit":"credits"}}"#,
            &http::HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(approval(&no_id, &units()), None);
    }

    #[test]
    fn correlation_ids_name_their_commission() {
        let id = correlation_id(88901);
        assert!(is_v2(&id));
        assert_eq!(commission_of(&id), Some(88901));
        assert_ne!(id, correlation_id(88901), "unique per request");
        let v1 = uuid::Uuid::new_v4().to_string();
        assert!(!is_v2(&v1));
        assert_eq!(commission_of(&v1), None);
        assert_eq!(commission_of("v2:abc:x"), None);
        assert_eq!(commission_of("v2:12:"), None);
        assert_eq!(commission_of("v2:0:x"), None);
    }
}
