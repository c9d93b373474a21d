//! Where an event goes (its topic) and how it is partitioned (its key).

use std::collections::{BTreeMap, HashMap};

use super::envelope::{id_string, Envelope, WebhookVersion};
use serde_json::Value;

/// The placeholder `kafka.topic_template` substitutes.
pub const TOPIC_PLACEHOLDER: &str = "{event_type}";

/// Kafka's longest legal topic name.
const MAX_TOPIC_LEN: usize = 249;

/// True when `name` is a legal Kafka topic name.
pub fn is_valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_LEN
        && name != "."
        && name != ".."
        && name.bytes().all(is_topic_byte)
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Makes an event type usable inside a topic name, deterministically: every byte outside
/// `[a-zA-Z0-9._-]` becomes `_`. FirstPromoter's own types never need it, and are borrowed as
/// they are (the topic is worked out on every request).
pub fn sanitise_event_type(event_type: &str) -> std::borrow::Cow<'_, str> {
    if !event_type.is_empty() && event_type.bytes().all(is_topic_byte) {
        return event_type.into();
    }
    let cleaned: String = event_type
        .chars()
        .map(|c| {
            if c.is_ascii() && is_topic_byte(c as u8) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "unknown".into()
    } else {
        cleaned.into()
    }
}

/// Topic and key rules, built once from configuration.
#[derive(Debug, Clone)]
pub struct Router {
    /// `kafka.topic_template`.
    template: String,
    /// `kafka.topics`: explicit topic per event type.
    topics: HashMap<String, String>,
    /// `kafka.keys`: JSON pointer per event type.
    keys: HashMap<String, String>,
}

impl Router {
    /// Builds the rules from the `kafka.topic_template`, `kafka.topics` and `kafka.keys` settings.
    pub fn new(
        template: &str,
        topics: &BTreeMap<String, String>,
        keys: &BTreeMap<String, String>,
    ) -> Self {
        Self {
            template: template.to_owned(),
            topics: topics.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            keys: keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// The topic for `event_type`: its override, or the template with the sanitised type,
    /// cut to Kafka's length limit.
    pub fn topic(&self, event_type: &str) -> String {
        if let Some(topic) = self.topics.get(event_type) {
            return topic.clone();
        }
        let mut topic = self
            .template
            .replace(TOPIC_PLACEHOLDER, &sanitise_event_type(event_type));
        topic.truncate(MAX_TOPIC_LEN);
        topic
    }

    /// The key override (a JSON pointer) for `event_type`, if one is configured: finding it
    /// needs the body as a tree.
    pub fn key_pointer(&self, event_type: &str) -> Option<&str> {
        self.keys.get(event_type).map(String::as_str)
    }

    /// The message key: the id of the entity the event is about. `document` is the body as a
    /// tree, needed (and given) only when [`Router::key_pointer`] names an override.
    pub fn key(&self, envelope: &Envelope, document: Option<&Value>) -> Option<String> {
        if let Some(pointer) = self.keys.get(&envelope.event_type) {
            return document?.pointer(pointer).and_then(id_string);
        }
        let facts = &envelope.facts;
        match envelope.version {
            WebhookVersion::V2 => facts.entity_id.clone().or_else(|| facts.data_id.clone()),
            WebhookVersion::V1 => match envelope.event_type.as_str() {
                // Promoter events carry the promoter as an object; `promoter_signs_up` is the
                // spelling FirstPromoter's own integration code uses.
                "promoter_signed_up" | "promoter_signs_up" | "promoter_accepted" => facts
                    .data_promoter_id
                    .clone()
                    .or_else(|| facts.data_id.clone()),
                // Lead events, reward_created, fulfilment_pending and anything new: the record.
                _ => facts.data_id.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::envelope::parse;
    use http::HeaderMap;

    fn router() -> Router {
        Router::new(
            "firstpromoter.{event_type}",
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
    }

    fn key_of(router: &Router, body: &str) -> Option<String> {
        let document: Value = serde_json::from_str(body).unwrap();
        router.key(
            &parse(body.as_bytes(), &HeaderMap::new()).unwrap(),
            Some(&document),
        )
    }

    #[test]
    fn topic_follows_template_and_overrides() {
        let topics = BTreeMap::from([("reward_created".to_owned(), "rewards".to_owned())]);
        let router = Router::new("fp.{event_type}.v1", &topics, &BTreeMap::new());
        assert_eq!(router.topic("lead_signup"), "fp.lead_signup.v1");
        assert_eq!(router.topic("reward_created"), "rewards");
        assert_eq!(router.topic("referral.created"), "fp.referral.created.v1");
    }

    #[test]
    fn hostile_event_types_become_legal_topics() {
        let router = router();
        assert_eq!(router.topic("lead signup/é"), "firstpromoter.lead_signup__");
        assert_eq!(router.topic(""), "firstpromoter.unknown");
        let long = router.topic(&"x".repeat(1000));
        assert!(is_valid_topic(&long) && long.len() == MAX_TOPIC_LEN);
    }

    #[test]
    fn default_keys_follow_the_entity_of_each_event() {
        let r = router();
        assert_eq!(
            key_of(
                &r,
                r#"{"event":{"type":"lead_signup"},"data":{"id":21381518}}"#
            )
            .as_deref(),
            Some("21381518")
        );
        assert_eq!(
            key_of(&r, r#"{"event":{"type":"promoter_accepted"},"data":{"id":9,"promoter":{"id":3920164}}}"#).as_deref(),
            Some("3920164")
        );
        assert_eq!(
            key_of(
                &r,
                r#"{"event":{"type":"reward_created"},"data":{"id":"77"}}"#
            )
            .as_deref(),
            Some("77")
        );
        assert_eq!(
            key_of(
                &r,
                r#"{"event_type":"promoter.created","entity_id":42,"data":{"id":1}}"#
            )
            .as_deref(),
            Some("42")
        );
        assert_eq!(
            key_of(&r, r#"{"event":{"type":"lead_signup"},"data":null}"#),
            None
        );
    }

    #[test]
    fn key_override_uses_its_json_pointer() {
        let keys = BTreeMap::from([("reward_created".to_owned(), "/data/promoter/id".to_owned())]);
        let r = Router::new("t.{event_type}", &BTreeMap::new(), &keys);
        let body = r#"{"event":{"type":"reward_created"},"data":{"id":1,"promoter":{"id":"p-7"}}}"#;
        assert_eq!(key_of(&r, body).as_deref(), Some("p-7"));
    }
}
