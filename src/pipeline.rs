//! Bytes and headers in, a Kafka record out: parse the envelope, redact secrets, route, build
//! headers. Pure and synchronous, so the relay, the fuzz target and the benchmarks share it.

use bytes::Bytes;
use http::HeaderMap;

use crate::config::Config;
use crate::kafka::record::{OutboundRecord, Received};
use crate::webhook::envelope::{self, Envelope, EnvelopeError};
use crate::webhook::redact::Redactor;
use crate::webhook::routing::Router;

/// An event ready to publish.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// What the body said.
    pub envelope: Envelope,
    /// The record to write.
    pub record: OutboundRecord,
    /// How many values were redacted; 0 means the record carries the original bytes.
    pub redacted: usize,
}

/// The rules that turn a request into a record, built once from configuration.
#[derive(Debug, Clone)]
pub struct Pipeline {
    router: Router,
    redactor: Redactor,
    cloudevents_source: String,
    /// `fulfilment.v2.units` when v2 fulfilment is on.
    approval_units: Option<Vec<String>>,
}

impl Pipeline {
    /// Builds the rules from `[kafka]` and `[redact]`.
    pub fn new(config: &Config) -> Self {
        Self {
            router: Router::new(
                &config.kafka.topic_template,
                &config.kafka.topics,
                &config.kafka.keys,
            ),
            redactor: Redactor::new(&config.redact),
            cloudevents_source: config.kafka.cloudevents_source.clone(),
            approval_units: config
                .fulfilment
                .v2
                .enabled
                .then(|| config.fulfilment.v2.units.clone()),
        }
    }

    /// The commission when `envelope` is a v2 approval that v2 fulfilment asks a fulfiller
    /// about (`fulfilment::v2::approval`); `None` when v2 fulfilment is off.
    pub fn approval(&self, envelope: &Envelope) -> Option<u64> {
        crate::fulfilment::v2::approval(envelope, self.approval_units.as_deref()?)
    }

    /// What a body that did not parse may be kept as on the dead-letter topic: its bytes with
    /// the `[redact]` fields' values replaced, or (when that cannot be done safely) a JSON
    /// note of its SHA-256 and size; with how many values were replaced and whether only the
    /// digest is kept.
    pub fn dead_letter_body(&self, body: Bytes) -> (Bytes, usize, bool) {
        use crate::webhook::scrub::Scrubbed;
        match self.redactor.scrub(&body) {
            Scrubbed::Unchanged => (body, 0, false),
            Scrubbed::Redacted { bytes, count } => (Bytes::from(bytes), count, false),
            Scrubbed::Unscannable => {
                use sha2::Digest;
                let note = serde_json::json!({
                    "sha256": hex::encode(sha2::Sha256::digest(&body)),
                    "bytes": body.len(),
                    "kept": "digest only: the body could not be scanned for secrets \
                             (kafka.dead_letter_raw_bodies keeps it whole)",
                });
                (Bytes::from(note.to_string()), 0, true)
            }
        }
    }

    /// The topic events of `event_type` go to.
    pub fn topic_for(&self, event_type: &str) -> String {
        self.router.topic(event_type)
    }

    /// Parses, redacts and routes one request.
    ///
    /// The body is never built as a tree unless the configuration asks for one (a key
    /// override, redaction pointers or removal): the envelope reads only the fields it needs,
    /// and named secrets are masked by splicing the replacement into the original bytes, so
    /// every other byte of the payload is FirstPromoter's own.
    pub fn prepare(
        &self,
        request_headers: &HeaderMap,
        body: Bytes,
        received: &Received,
    ) -> Result<Prepared, EnvelopeError> {
        let envelope = envelope::parse(&body, request_headers)?;
        let key_pointer = self.router.key_pointer(&envelope.event_type);
        let needs_tree = key_pointer.is_some() || self.redactor.needs_tree();
        let spliced = if needs_tree {
            Err(body)
        } else {
            self.splice(body)
        };
        let (payload, redacted, key) = match spliced {
            Ok((payload, redacted)) => (payload, redacted, None),
            Err(body) => {
                let (payload, redacted, key) = self.prepare_tree(&envelope, body)?;
                (payload, redacted, Some(key))
            }
        };
        let mut record = OutboundRecord::for_event(
            &envelope,
            &self.router,
            &self.cloudevents_source,
            received,
            payload,
        );
        if let Some(key) = key {
            record.key = key;
        }
        if redacted > 0 {
            record.mark_redacted(redacted);
        }
        Ok(Prepared {
            envelope,
            record,
            redacted,
        })
    }

    /// Named fields masked in the bytes; the body back (`Err`) when the scanner gives up, for
    /// the tree to redact it, or refuse it as it always did.
    fn splice(&self, body: Bytes) -> Result<(Bytes, usize), Bytes> {
        if self.redactor.is_empty() {
            return Ok((body, 0));
        }
        match self.redactor.splice(&body) {
            Ok(None) => Ok((body, 0)),
            Ok(Some((spliced, count))) => Ok((Bytes::from(spliced), count)),
            Err(_) => Err(body),
        }
    }

    /// The configured rules that need the body as a tree: redaction pointers or removal, and
    /// key overrides (looked up after redaction, so a key can never carry a secret); also
    /// named fields in a body the splice scanner gave up on.
    fn prepare_tree(
        &self,
        envelope: &Envelope,
        body: Bytes,
    ) -> Result<(Bytes, usize, Option<String>), EnvelopeError> {
        let mut document: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        let redacted = if self.redactor.is_empty() {
            0
        } else {
            self.redactor.apply(&mut document)
        };
        let key = self.router.key(envelope, Some(&document));
        let payload = if redacted == 0 {
            body
        } else {
            Bytes::from(serde_json::to_vec(&document).expect("a parsed document serialises"))
        };
        Ok((payload, redacted, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::record::headers;

    fn pipeline(configure: impl FnOnce(&mut Config)) -> Pipeline {
        let mut config = Config::default();
        configure(&mut config);
        Pipeline::new(&config)
    }

    #[test]
    fn unmatched_bodies_pass_byte_for_byte_and_matched_ones_are_spliced() {
        let clean = Bytes::from_static(br#"{"event":{"type":"lead_signup"},  "data":{"id":1}}"#);
        let prepared = pipeline(|_| {})
            .prepare(&HeaderMap::new(), clean.clone(), &Received::now())
            .unwrap();
        assert_eq!(prepared.record.payload, clean);
        assert_eq!(prepared.record.header(headers::REDACTED), None);

        let secret = Bytes::from_static(br#"{"event":{"type":"promoter_accepted"},"data":{"promoter":{"id":5,"auth_token":"T0K"}}}"#);
        let prepared = pipeline(|_| {})
            .prepare(&HeaderMap::new(), secret, &Received::now())
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&prepared.record.payload).unwrap();
        assert_eq!(value["data"]["promoter"]["auth_token"], "[redacted]");
        assert_eq!(prepared.record.header(headers::REDACTED), Some("1"));
        assert_eq!(prepared.record.key.as_deref(), Some("5"));
        assert_eq!(
            prepared.record.payload,
            Bytes::from_static(br#"{"event":{"type":"promoter_accepted"},"data":{"promoter":{"id":5,"auth_token":"[redacted]"}}}"#),
            "every byte but the masked value is FirstPromoter's"
        );
    }

    #[test]
    fn redaction_can_be_switched_off() {
        let secret = Bytes::from_static(br#"{"event":{"type":"x"},"data":{"auth_token":"T0K"}}"#);
        let prepared = pipeline(|c| c.redact.fields.clear())
            .prepare(&HeaderMap::new(), secret.clone(), &Received::now())
            .unwrap();
        assert_eq!(prepared.record.payload, secret);
    }
}
