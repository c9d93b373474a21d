//! Non-monetary rewards for webhooks v2, which has no `fulfilment_pending` and gives the HTTP
//! status no meaning (docs/fulfilment-protocol.md, "Webhooks v2").
//!
//! 1. An approved non-monetary `commission.updated` is published to its topic as usual and,
//!    as a fulfilment request, to the topic v1's `fulfilment_pending` uses ([`approval`]).
//! 2. The fulfiller replies exactly as for v1. The correlation id names the commission and is
//!    signed ([`ReplyKeys`]), so any replica can act on a reply, days later, after restarts,
//!    and only on replies to requests a relay issued: a record that anyone wrote to the reply
//!    topic cannot make the relay mark a commission it never asked about.
//! 3. The [`marker`] reads replies in a consumer group and calls FirstPromoter's
//!    `mark_fulfilled` ([`api`]) for `fulfilled` ones, committing only after FirstPromoter answered.

pub mod api;
pub mod marker;

use std::time::Duration;

use crate::kafka::record::{rfc3339, OutboundRecord, Received};
use crate::webhook::envelope::{Envelope, WebhookVersion};

/// The v2 event that carries an approval.
pub const APPROVAL_EVENT_TYPE: &str = "commission.updated";

/// Prefix of a v2 correlation id: `v2:<commission id>:<uuid>:<mac>`. v1 ids are bare UUIDs.
pub const CORRELATION_PREFIX: &str = "v2:";

/// Bytes of HMAC-SHA256 kept in a correlation id (128 bits, 32 hex digits).
const MAC_BYTES: usize = 16;

/// The keys that sign v2 correlation ids (the first) and verify replies (any of them); see
/// `fulfilment.v2.reply_keys`.
#[derive(Clone)]
pub struct ReplyKeys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ReplyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyKeys({} keys)", self.keys.len())
    }
}

impl ReplyKeys {
    /// `fulfilment.v2.reply_keys`, or one key derived from `firstpromoter.api_key` (domain
    /// separated, so the API key itself is never the HMAC key).
    pub fn new(config: &crate::config::Config) -> Self {
        let configured = &config.fulfilment.v2.reply_keys;
        let keys = if configured.is_empty() {
            vec![mac(
                config.firstpromoter.api_key.as_bytes(),
                b"fp-relay v2 reply key",
            )]
        } else {
            configured.iter().map(|k| k.as_bytes().to_vec()).collect()
        };
        Self { keys }
    }

    /// A fresh, signed correlation id for a request about `commission`.
    pub fn correlation_id(&self, commission: u64) -> String {
        let unsigned = format!("{CORRELATION_PREFIX}{commission}:{}", uuid::Uuid::new_v4());
        let tag = hex::encode(&mac(&self.keys[0], unsigned.as_bytes())[..MAC_BYTES]);
        format!("{unsigned}:{tag}")
    }

    /// True when `correlation_id` was signed with one of the keys (compared in constant time,
    /// every key tried).
    pub fn verify(&self, correlation_id: &str) -> bool {
        use subtle::ConstantTimeEq;
        let Some((unsigned, tag)) = correlation_id.trim().rsplit_once(':') else {
            return false;
        };
        let Ok(tag) = hex::decode(tag) else {
            return false;
        };
        if tag.len() != MAC_BYTES || commission_of(unsigned).is_none() {
            return false;
        }
        self.keys.iter().fold(false, |ok, key| {
            let expected = mac(key, unsigned.as_bytes());
            bool::from(expected[..MAC_BYTES].ct_eq(&tag)) | ok
        })
    }
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

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
/// signed by `keys` (returned too), the reply topic and [`V2_DEADLINE`].
pub fn request_for(
    record: &OutboundRecord,
    commission: u64,
    keys: &ReplyKeys,
    request_topic: &str,
    reply_topic: &str,
    received: &Received,
) -> (OutboundRecord, String) {
    let correlation_id = keys.correlation_id(commission);
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

    fn keys(configure: impl FnOnce(&mut crate::config::Config)) -> ReplyKeys {
        let mut config = crate::config::Config::default();
        config.firstpromoter.api_key = "an-api-key-of-some-length".into();
        configure(&mut config);
        ReplyKeys::new(&config)
    }

    #[test]
    fn correlation_ids_name_their_commission() {
        let keys = keys(|_| {});
        let id = keys.correlation_id(88901);
        assert!(is_v2(&id));
        assert_eq!(commission_of(&id), Some(88901));
        assert_ne!(id, keys.correlation_id(88901), "unique per request");
        let v1 = uuid::Uuid::new_v4().to_string();
        assert!(!is_v2(&v1));
        assert_eq!(commission_of(&v1), None);
        assert_eq!(commission_of("v2:abc:x"), None);
        assert_eq!(commission_of("v2:12:"), None);
        assert_eq!(commission_of("v2:0:x"), None);
    }

    #[test]
    fn only_correlation_ids_signed_with_a_known_key_verify() {
        let derived = keys(|_| {});
        let id = derived.correlation_id(88901);
        assert!(derived.verify(&id));
        assert!(
            derived.verify(&format!(" {id} ")),
            "whitespace as the header may carry"
        );
        // Another API key (another account's relay) signs differently.
        let other = keys(|c| c.firstpromoter.api_key = "another-api-key-entirely".into());
        assert!(!other.verify(&id));
        // Forged: the unsigned shape, another commission with this tag, a changed tag.
        let (unsigned, tag) = id.rsplit_once(':').unwrap();
        assert!(!derived.verify(unsigned));
        assert!(!derived.verify(&unsigned.replacen("88901", "88902", 1)));
        assert!(!derived.verify(&format!("{}:{tag}", unsigned.replacen("88901", "88902", 1))));
        let mut flipped = tag.as_bytes().to_vec();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert!(!derived.verify(&format!(
            "{unsigned}:{}",
            String::from_utf8(flipped).unwrap()
        )));
        assert!(!derived.verify("v2:88901:x:zz"));
        assert!(!derived.verify(""));
        // Rotation: a new key first, the old one still verifies what it signed.
        let rotated = keys(|c| {
            c.fulfilment.v2.reply_keys = vec![
                "the-new-reply-key-0123".into(),
                "the-old-reply-key-0123".into(),
            ]
        });
        let old = keys(|c| c.fulfilment.v2.reply_keys = vec!["the-old-reply-key-0123".into()]);
        assert!(rotated.verify(&old.correlation_id(5)));
        assert!(rotated.verify(&rotated.correlation_id(5)));
        assert!(!old.verify(&rotated.correlation_id(5)));
    }
}
