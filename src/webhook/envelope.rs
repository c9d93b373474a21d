//! Tolerant parsing of FirstPromoter's two envelopes.
//!
//! v1: `{"event": {"id", "type", "created_at"}, "data": {...}}`.
//! v2: `{"event_id", "event_type", "action", "entity_type", "entity_id", "changes", "data",
//! "timestamp"}`, with `X-Event-Id` and `X-Event-Type` headers.
//!
//! Only the event type is required. Ids may be integers or strings; everything else may be
//! missing or null, because FirstPromoter's own examples disagree with its field tables.

use http::HeaderMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Header FirstPromoter v2 sends with the event id.
pub const HEADER_EVENT_ID: &str = "x-event-id";
/// Header FirstPromoter v2 sends with the event type.
pub const HEADER_EVENT_TYPE: &str = "x-event-type";

/// Which FirstPromoter delivery system sent the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
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
    /// The few other values routing and v2 fulfilment read.
    pub facts: Facts,
    /// The body is exactly one envelope of `version`, its type written in the body: a v1 body
    /// with no v2 envelope keys beside it, a v2 body with `event_type` and no `event` object.
    /// Only such a body may enter a fulfilment exchange (a hybrid or a type taken from
    /// `X-Event-Type` is still routed, never taken for a reward to grant).
    pub strict: bool,
}

/// Values read from the body besides the envelope's own, so that no request needs the whole
/// body as a tree (a custom key pointer or redaction pointer parses it; nothing else does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `entity_id` (v2), as an id string.
    pub entity_id: Option<String>,
    /// `data.id`, as an id string.
    pub data_id: Option<String>,
    /// `data.promoter.id`, as an id string.
    pub data_promoter_id: Option<String>,
    /// `data.unit` (v2 commissions: `cash`, `points`, ...).
    pub data_unit: Option<String>,
    /// The last element of `changes.status` (v2: the status a commission moved to).
    pub status_changed_to: Option<String>,
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

/// The fields the relay reads, values left as raw JSON text; every other field is skipped
/// (validated in the same single pass, never built). Any surprise (a duplicate key, `data`
/// that is not an object) sends the body to [`parse_tree`], the reference, which gives the
/// same answer the slow way.
///
/// The nested parts are kept raw and read as structs only when they are objects: serde reads a
/// struct from an array too (`{"event":["fulfilment_pending",1,null]}` read as a v1 envelope,
/// which the tree does not), and the tree takes anything but an object as absent.
#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow, default)]
    event: Nested<Event<'a>>,
    #[serde(borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    entity_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Nested<Data<'a>>,
    #[serde(borrow, default)]
    changes: Nested<Changes<'a>>,
}

/// A nested part as the tree sees it, read in the same pass as its parent: `Nested(Some(_))`
/// for an object that reads as `T`, `Nested(None)` when absent or not an object (the tree's
/// `as_object` says none; the value is skipped), and an error (take the tree) for an object
/// that does not read as `T` (a duplicate key, a wrongly typed field). Reading the object
/// straight into `T`, instead of keeping it raw and parsing it again, saves a second pass over
/// `data`, most of a body (benches/cost.sh: 51,000 of 244,000 instructions a request for a
/// 3 KB event).
struct Nested<T>(Option<T>);

impl<T> Default for Nested<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Nested<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NestedVisitor(std::marker::PhantomData))
    }
}

struct NestedVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for NestedVisitor<T> {
    type Value = Nested<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|t| Nested(Some(t)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Nested(None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Nested(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Nested(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Nested(None))
    }
    fn visit_i128<E>(self, _: i128) -> Result<Self::Value, E> {
        Ok(Nested(None))
    }
    fn visit_u128<E>(self, _: u128) -> Result<Self::Value, E> {
        Ok(Nested(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Nested(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Nested(None))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Nested(None))
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Nested(None))
    }
}

/// `event` (v1).
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    created_at: Option<&'a RawValue>,
}

/// `data`.
#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    promoter: Nested<Promoter<'a>>,
    #[serde(borrow)]
    unit: Option<&'a RawValue>,
}

/// `data.promoter`.
#[derive(Deserialize)]
struct Promoter<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

/// `changes`.
#[derive(Deserialize)]
struct Changes<'a> {
    #[serde(borrow)]
    status: Option<&'a RawValue>,
}

/// Parses `body` as a v1 or v2 envelope.
pub fn parse(body: &[u8], headers: &HeaderMap) -> Result<Envelope, EnvelopeError> {
    // Skipped strings are not checked as thoroughly as built ones (UTF-8, `\u` escapes such as
    // lone surrogates): a body that is not UTF-8 or has such escapes takes the tree, so that
    // exactly the bodies the tree refuses are refused.
    let checked = std::str::from_utf8(body).is_ok() && memchr::memmem::find(body, b"\\u").is_none();
    match checked.then(|| parse_fields(body)).flatten() {
        Some(fields) => envelope_from(fields, headers),
        None => parse_tree(body, headers),
    }
}

/// The reference parse: the whole body as a tree. Used when [`parse`]'s fast path meets
/// anything unusual; the tests check that both agree.
pub fn parse_tree(body: &[u8], headers: &HeaderMap) -> Result<Envelope, EnvelopeError> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let object = document.as_object().ok_or(EnvelopeError::NotAnObject)?;
    let event = object.get("event").and_then(Value::as_object);
    let data = object.get("data").and_then(Value::as_object);
    let present = |key: &str| object.get(key).is_some_and(|v| !v.is_null());
    let fields = Fields {
        v1_object: event.is_some(),
        v2_keys: present("event_type") || present("event_id"),
        v1_type: event.and_then(|e| e.get("type")).cloned(),
        v1_id: event.and_then(|e| e.get("id")).cloned(),
        v1_created_at: event.and_then(|e| e.get("created_at")).cloned(),
        v2_type: object.get("event_type").cloned(),
        v2_id: object.get("event_id").cloned(),
        v2_timestamp: object.get("timestamp").cloned(),
        facts: Facts {
            entity_id: object.get("entity_id").and_then(id_string),
            data_id: data.and_then(|d| d.get("id")).and_then(id_string),
            data_promoter_id: data
                .and_then(|d| d.get("promoter"))
                .and_then(|p| p.get("id"))
                .and_then(id_string),
            data_unit: data
                .and_then(|d| d.get("unit"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            status_changed_to: document
                .pointer("/changes/status")
                .and_then(Value::as_array)
                .and_then(|s| s.last())
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
    };
    envelope_from(fields, headers)
}

/// What both parses extract, before the envelope rules are applied.
struct Fields {
    /// `event` is an object (the v1 envelope's).
    v1_object: bool,
    /// `event_type` or `event_id` is present and not null (the v2 envelope's keys).
    v2_keys: bool,
    v1_type: Option<Value>,
    v1_id: Option<Value>,
    v1_created_at: Option<Value>,
    v2_type: Option<Value>,
    v2_id: Option<Value>,
    v2_timestamp: Option<Value>,
    facts: Facts,
}

/// The fast parse: only the fields above are looked at; `None` sends the body to the tree.
fn parse_fields(body: &[u8]) -> Option<Fields> {
    // An array (or any other non-object) body is the tree's to refuse.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let top: Top<'_> = serde_json::from_slice(body).ok()?;
    let (event, data, changes) = (top.event.0, top.data.0, top.changes.0);
    let promoter = data.as_ref().and_then(|d| d.promoter.0.as_ref());
    let status: Option<Vec<&RawValue>> = match changes.and_then(|c| c.status) {
        Some(raw) if raw.get().starts_with('[') => Some(serde_json::from_str(raw.get()).ok()?),
        _ => None,
    };
    // Scalars are small; anything else is only ever tested for being a string or an id.
    let scalar = |raw: Option<&RawValue>| -> Option<Value> {
        raw.and_then(|r| serde_json::from_str(r.get()).ok())
    };
    let string = |raw: Option<&RawValue>| scalar(raw).and_then(|v| v.as_str().map(str::to_owned));
    let id = |raw: Option<&RawValue>| scalar(raw).as_ref().and_then(id_string);
    let present = |raw: Option<&RawValue>| raw.is_some_and(|r| r.get() != "null");
    Some(Fields {
        v1_object: event.is_some(),
        v2_keys: present(top.event_type) || present(top.event_id),
        v1_type: scalar(event.as_ref().and_then(|e| e.kind)),
        v1_id: scalar(event.as_ref().and_then(|e| e.id)),
        v1_created_at: scalar(event.as_ref().and_then(|e| e.created_at)),
        v2_type: scalar(top.event_type),
        v2_id: scalar(top.event_id),
        v2_timestamp: scalar(top.timestamp),
        facts: Facts {
            entity_id: id(top.entity_id),
            data_id: id(data.as_ref().and_then(|d| d.id)),
            data_promoter_id: id(promoter.and_then(|p| p.id)),
            data_unit: string(data.as_ref().and_then(|d| d.unit)),
            status_changed_to: status.and_then(|s| string(s.last().copied())),
        },
    })
}

fn envelope_from(fields: Fields, headers: &HeaderMap) -> Result<Envelope, EnvelopeError> {
    let header_type = header_str(headers, HEADER_EVENT_TYPE);
    let header_id = header_str(headers, HEADER_EVENT_ID);
    let text = |value: &Option<Value>| value.as_ref().and_then(non_empty_str).map(str::to_owned);
    let (version, event_type, event_id, occurred_at, strict) = match text(&fields.v1_type) {
        Some(event_type) => (
            WebhookVersion::V1,
            event_type,
            fields.v1_id.as_ref().and_then(id_string),
            text(&fields.v1_created_at),
            !fields.v2_keys,
        ),
        None => {
            let in_body = text(&fields.v2_type);
            let strict = in_body.is_some() && !fields.v1_object;
            let event_type = in_body
                .or_else(|| header_type.map(str::to_owned))
                .ok_or(EnvelopeError::MissingEventType)?;
            (
                WebhookVersion::V2,
                event_type,
                fields.v2_id.as_ref().and_then(id_string),
                text(&fields.v2_timestamp),
                strict,
            )
        }
    };
    let event_id = event_id.or_else(|| header_id.map(str::to_owned));
    Ok(Envelope {
        version,
        event_type,
        event_id,
        occurred_at,
        facts: fields.facts,
        strict,
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

    /// Only a body that is exactly one envelope, its type in the body, is strict: hybrids and
    /// a type taken from `X-Event-Type` are not (they never enter a fulfilment exchange).
    #[test]
    fn strict_means_one_envelope_with_its_type_in_the_body() {
        let mut typed = HeaderMap::new();
        typed.insert(
            HEADER_EVENT_TYPE,
            HeaderValue::from_static("fulfilment_pending"),
        );
        for (body, headers, version, strict) in [
            (
                r#"{"event":{"id":1,"type":"fulfilment_pending"},"data":{"id":2}}"#,
                &HeaderMap::new(),
                WebhookVersion::V1,
                true,
            ),
            (
                r#"{"event":{"id":1,"type":"fulfilment_pending"},"event_type":"x"}"#,
                &HeaderMap::new(),
                WebhookVersion::V1,
                false,
            ),
            (
                r#"{"event":{"id":1,"type":"fulfilment_pending"},"event_id":"u"}"#,
                &HeaderMap::new(),
                WebhookVersion::V1,
                false,
            ),
            (
                r#"{"event":{"id":1,"type":"lead_signup"}}"#,
                &typed,
                WebhookVersion::V1,
                true,
            ),
            (
                r#"{"event_type":"fulfilment_pending","data":{"id":4242}}"#,
                &HeaderMap::new(),
                WebhookVersion::V2,
                true,
            ),
            (
                r#"{"event":{"id":3},"event_type":"a.b"}"#,
                &HeaderMap::new(),
                WebhookVersion::V2,
                false,
            ),
            (r#"{"data":{"id":4343}}"#, &typed, WebhookVersion::V2, false),
        ] {
            let env = parse(body.as_bytes(), headers).unwrap();
            assert_eq!((env.version, env.strict), (version, strict), "{body}");
        }
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
        let nested = format!(r#"{{"event_type":"x","data":{}}}"#, "[".repeat(100_000));
        assert_eq!(parse_str(&nested).unwrap_err().reason(), "bad_json");
    }

    /// The fast parse reads only a few fields; the tree is the reference. They must agree on
    /// every sample and on the shapes FirstPromoter's quirks (and attackers) produce.
    #[test]
    fn the_fast_parse_agrees_with_the_tree() {
        let mut bodies: Vec<Vec<u8>> = crate::tools::samples::SAMPLES
            .iter()
            .map(|sample| sample.body.to_vec())
            .collect();
        for text in [
            r#"{"event":{"type":"lead_signup","id":1},"event":{"type":"new_customer","id":2}}"#,
            r#"{"event":{"type":"x","type":"y"},"data":{"id":1,"id":2}}"#,
            r#"{"event":"lead_signup","event_type":"referral.created","data":[1,2]}"#,
            r#"{"event":{"type":"  "},"event_type":" payout.completed ","entity_id":"  "}"#,
            r#"{"event":{"type":"promoter_accepted"},"data":{"promoter":"x","id":"7"}}"#,
            r#"{"event":{"type":"promoter_accepted"},"data":{"promoter":{"id":null},"id":-3}}"#,
            r#"{"event_type":"commission.updated","changes":{"status":"approved"},"data":{"unit":5}}"#,
            r#"{"event_type":"commission.updated","changes":{"status":[]},"data":null}"#,
            r#"{"event_type":"commission.updated","changes":{"status":["pending",{"x":1}]}}"#,
            r#"{"event_type":"commission.updated","changes":[1],"entity_id":1.5e3}"#,
            r#"{"event":{"type":"lead_signup","id":{"a":1},"created_at":7}}"#,
            r#"{}"#,
            r#"[]"#,
            r#"{"event_type":"x"} trailing"#,
            r#"{"event_type":"\u0061.b","event_id":"\ud83d\ude00"}"#,
            r#"{"event_type":"x","data":{"name":"\ud800"}}"#,
            r#"{"event":{"type":"fulfilment_pending","id":1},"event_type":"x"}"#,
            r#"{"event":{"type":"fulfilment_pending","id":1},"event_id":null,"event_type":null}"#,
            r#"{"event_type":"fulfilment_pending","data":{"id":4242}}"#,
            r#"{"event":null,"event_type":"a.b"}"#,
            r#"{"event":{"id":3},"event_type":"a.b"}"#,
            r#"{"data":{"id":4343}}"#,
            // serde reads a struct from an array: the fast parse must not.
            r#"{"event":["fulfilment_pending",1,null]}"#,
            r#"{"event":[null,null,null],"event_type":"x"}"#,
            r#"["a",1,null,null,null,{"id":1},{"status":["pending","approved"]}]"#,
            r#"{"event_type":"commission.updated","changes":[["pending","approved"]],"data":[5,null,"points"]}"#,
            r#"{"event_type":"x","data":{"id":1,"promoter":[7]}}"#,
            r#"  {"event":{"type":"lead_signup"}}"#,
        ] {
            bodies.push(text.as_bytes().to_vec());
        }
        // Not UTF-8 inside a string the fast parse would only skip.
        bodies.push(b"{\"event_type\":\"x\",\"data\":{\"name\":\"a\x94b\"}}".to_vec());
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_EVENT_TYPE, HeaderValue::from_static("from.header"));
        for body in &bodies {
            for headers in [&HeaderMap::new(), &headers] {
                let fast = parse(body, headers);
                let tree = parse_tree(body, headers);
                let show = String::from_utf8_lossy(body);
                match (fast, tree) {
                    (Ok(fast), Ok(tree)) => {
                        assert_eq!(fast.version, tree.version, "{show}");
                        assert_eq!(fast.event_type, tree.event_type, "{show}");
                        assert_eq!(fast.event_id, tree.event_id, "{show}");
                        assert_eq!(fast.occurred_at, tree.occurred_at, "{show}");
                        assert_eq!(fast.facts, tree.facts, "{show}");
                        assert_eq!(fast.strict, tree.strict, "{show}");
                    }
                    (Err(fast), Err(tree)) => assert_eq!(fast.reason(), tree.reason(), "{show}"),
                    (fast, tree) => panic!("{show}: fast {fast:?}, tree {tree:?}"),
                }
            }
        }
    }
}
