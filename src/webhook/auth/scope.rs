//! What a request's credentials may deliver ([`Scope`]), and the one decision every later step
//! follows: which exchange a request enters ([`Exchange`]), made from the credential and the
//! envelope together.
//!
//! Why here and once: a scope checked against the envelope's shape alone let a v2 credential
//! reach the v1 fulfilment exchange with a v2-shaped body typed `fulfilment_pending`. The
//! decision now asks what the request wants (its event type), who may want it (the scope),
//! and whether the body really is that envelope ([`Envelope::strict`]).

use crate::webhook::envelope::{Envelope, WebhookVersion};

use super::{AuthFailure, Authenticator};

/// The webhook versions a request's credentials may deliver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scope {
    v1: bool,
    v2: bool,
}

impl Scope {
    /// Nothing: no credential matched.
    pub const NONE: Self = Self {
        v1: false,
        v2: false,
    };
    /// Everything: no credential is checked (`insecure_no_auth`).
    pub const ALL: Self = Self { v1: true, v2: true };
    /// v1 envelopes only (path tokens).
    pub const V1: Self = Self {
        v1: true,
        v2: false,
    };
    /// v2 envelopes only (signatures).
    pub const V2: Self = Self {
        v1: false,
        v2: true,
    };

    /// The scope of a credential configured to deliver `versions`.
    pub fn of(versions: &[WebhookVersion]) -> Self {
        Self {
            v1: versions.contains(&WebhookVersion::V1),
            v2: versions.contains(&WebhookVersion::V2),
        }
    }

    /// True when an envelope of `version` may be delivered.
    pub fn allows(self, version: WebhookVersion) -> bool {
        match version {
            WebhookVersion::V1 => self.v1,
            WebhookVersion::V2 => self.v2,
        }
    }

    /// Whatever either may deliver.
    pub fn union(self, other: Self) -> Self {
        Self {
            v1: self.v1 || other.v1,
            v2: self.v2 || other.v2,
        }
    }

    pub(super) fn without_v2(self) -> Self {
        Self { v2: false, ..self }
    }

    pub(super) fn is_empty(self) -> bool {
        !self.v1 && !self.v2
    }
}

/// The exchange a request enters, decided once by [`Authenticator::exchange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// v1 `fulfilment_pending`: published, held, answered with the fulfiller's verdict.
    V1Fulfilment,
    /// A v2 approval of a non-monetary commission: published and asked of a fulfiller.
    V2Approval(u64),
    /// Any other event: published to its topic.
    Standard,
}

/// Why a request may not enter the exchange it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeRefusal {
    /// The credential does not cover this version: 403.
    Version(WebhookVersion),
    /// An unsigned v2 envelope while signatures are required: 401.
    Unsigned(AuthFailure),
    /// The body asks for the v1 fulfilment exchange but is not exactly a v1 envelope: 400.
    Mismatch,
}

impl Authenticator {
    /// Whether a request its credentials scoped to `scope` may deliver a `version` envelope:
    /// `Err(MissingSignature)` for an unsigned v2 envelope when signatures are required,
    /// `Err(None)` when the credential is for the other version.
    pub fn check_scope(
        &self,
        scope: Scope,
        version: WebhookVersion,
    ) -> Result<(), Option<AuthFailure>> {
        if scope.allows(version) {
            return Ok(());
        }
        if version == WebhookVersion::V2 && self.require_signature {
            return Err(Some(AuthFailure::MissingSignature));
        }
        Err(None)
    }

    /// Which exchange a request whose credentials grant `scope` enters with `envelope`.
    /// `fulfilment_type` is `fulfilment.event_type`; `approval` is the commission when the
    /// envelope reads as a v2 approval v2 fulfilment asks about.
    ///
    /// The v1 fulfilment exchange is entered by its type, so its type asks for v1: a credential
    /// without v1 is refused whatever the body's shape, and a body that is not exactly a v1
    /// envelope is refused too (it never becomes a standard event in the request topic).
    pub fn exchange(
        &self,
        scope: Scope,
        envelope: &Envelope,
        fulfilment_type: &str,
        approval: Option<u64>,
    ) -> Result<Exchange, ScopeRefusal> {
        let refusal = |version| match self.check_scope(scope, version) {
            Ok(()) => None,
            Err(Some(failure)) => Some(ScopeRefusal::Unsigned(failure)),
            Err(None) => Some(ScopeRefusal::Version(version)),
        };
        if envelope.event_type == fulfilment_type {
            if let Some(refused) = refusal(WebhookVersion::V1) {
                return Err(refused);
            }
            if envelope.version != WebhookVersion::V1 || !envelope.strict {
                return Err(ScopeRefusal::Mismatch);
            }
            return Ok(Exchange::V1Fulfilment);
        }
        if let Some(refused) = refusal(envelope.version) {
            return Err(refused);
        }
        match approval {
            Some(commission) if envelope.version == WebhookVersion::V2 && envelope.strict => {
                Ok(Exchange::V2Approval(commission))
            }
            _ => Ok(Exchange::Standard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthConfig;
    use crate::webhook::envelope::parse;
    use http::{HeaderMap, HeaderValue};

    fn decide(
        scope: Scope,
        body: &str,
        header_type: Option<&'static str>,
    ) -> Result<Exchange, ScopeRefusal> {
        let mut headers = HeaderMap::new();
        if let Some(t) = header_type {
            headers.insert("x-event-type", HeaderValue::from_static(t));
        }
        let envelope = parse(body.as_bytes(), &headers).unwrap();
        let approval = crate::fulfilment::v2::approval(&envelope, &["points".to_owned()]);
        Authenticator::new(&AuthConfig::default()).exchange(
            scope,
            &envelope,
            "fulfilment_pending",
            approval,
        )
    }

    /// The holes a review found, each now closed: a v2 credential never enters the v1
    /// exchange whatever the body's shape, and a body that is not exactly a v1 envelope never
    /// does either.
    #[test]
    fn the_v1_exchange_takes_v1_credentials_and_a_v1_envelope_only() {
        let v1 = r#"{"event":{"id":1,"type":"fulfilment_pending"},"data":{"id":9}}"#;
        let v2_shaped = r#"{"event_type":"fulfilment_pending","data":{"id":4242}}"#;
        let hybrid =
            r#"{"event":{"id":1,"type":"fulfilment_pending"},"event_type":"x","data":{"id":9}}"#;
        assert_eq!(decide(Scope::V1, v1, None), Ok(Exchange::V1Fulfilment));
        assert_eq!(decide(Scope::ALL, v1, None), Ok(Exchange::V1Fulfilment));
        for body in [v1, v2_shaped, hybrid] {
            assert_eq!(
                decide(Scope::V2, body, None),
                Err(ScopeRefusal::Version(WebhookVersion::V1)),
                "{body}"
            );
        }
        assert_eq!(
            decide(
                Scope::V2,
                r#"{"data":{"id":4343}}"#,
                Some("fulfilment_pending")
            ),
            Err(ScopeRefusal::Version(WebhookVersion::V1))
        );
        assert_eq!(
            decide(Scope::ALL, v2_shaped, None),
            Err(ScopeRefusal::Mismatch)
        );
        assert_eq!(decide(Scope::V1, hybrid, None), Err(ScopeRefusal::Mismatch));
        assert_eq!(
            decide(
                Scope::ALL,
                r#"{"data":{"id":4343}}"#,
                Some("fulfilment_pending")
            ),
            Err(ScopeRefusal::Mismatch)
        );
    }

    #[test]
    fn an_approval_asks_a_fulfiller_only_from_a_strict_v2_envelope() {
        let approval = r#"{"event_type":"commission.updated","event_id":"e","changes":{"status":["pending","approved"]},"data":{"id":88901,"unit":"points"}}"#;
        assert_eq!(
            decide(Scope::V2, approval, None),
            Ok(Exchange::V2Approval(88901))
        );
        assert_eq!(
            decide(Scope::V1, approval, None),
            Err(ScopeRefusal::Version(WebhookVersion::V2))
        );
        let typed_by_header =
            r#"{"changes":{"status":["pending","approved"]},"data":{"id":88901,"unit":"points"}}"#;
        assert_eq!(
            decide(Scope::V2, typed_by_header, Some("commission.updated")),
            Ok(Exchange::Standard)
        );
        let with_v1_event = r#"{"event":{"id":2},"event_type":"commission.updated","changes":{"status":["pending","approved"]},"data":{"id":88901,"unit":"points"}}"#;
        assert_eq!(
            decide(Scope::V2, with_v1_event, None),
            Ok(Exchange::Standard)
        );
        assert_eq!(
            decide(Scope::V1, r#"{"event":{"type":"lead_signup"}}"#, None),
            Ok(Exchange::Standard)
        );
    }
}
