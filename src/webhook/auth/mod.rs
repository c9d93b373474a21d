//! Who may post: FirstPromoter v2's body signature, a shared token in a header, HTTP Basic, a
//! token in the path (v1 cannot send headers), and an optional source-address allowlist.
//!
//! Every secret comparison is constant-time. A request passes when at least one configured
//! credential matches and no credential it presents is wrong: a wrong signature is never
//! excused by a right token. Failures carry a reason for metrics and logs only; the client is
//! told nothing about which check failed.
//!
//! Each credential is scoped to what it may deliver ([`Scope`]): a path token v1 envelopes
//! only (it sits in campaign settings and access logs), a signature v2 only, shared tokens and
//! Basic what `auth.token_versions` / `auth.basic_versions` say (v2 by default). Which exchange
//! a request then enters is decided once, from the scope and the envelope ([`scope`]).
//!
//! This file holds the credential kinds; [`scope`] the scope decision, [`source`] the source
//! address checks.

use std::collections::BTreeMap;

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use ipnet::IpNet;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, ForwardedHeader};

pub mod scope;
pub mod source;

pub use scope::{Exchange, Scope, ScopeRefusal};

/// Header carrying FirstPromoter v2's signature: lowercase hex HMAC-SHA256 of the raw body.
pub const SIGNATURE_HEADER: &str = "x-webhook-signature";

/// Why a request was refused; the `reason` label of `fp_relay_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// The client address is outside `auth.allow_sources`.
    SourceNotAllowed,
    /// No credential at all.
    MissingCredentials,
    /// `auth.require_signature` is set and the request carries no signature.
    MissingSignature,
    /// A signature that matches none of the secrets.
    BadSignature,
    /// A header token that matches none of the tokens.
    BadToken,
    /// Basic credentials that match no user.
    BadBasic,
    /// A path token that matches none of the path tokens.
    BadPathToken,
    /// An `Authorization` header with neither the `Bearer` nor the `Basic` scheme (a token
    /// pasted in as it is: FirstPromoter's custom header needs `Bearer <token>`).
    AuthorizationWithoutScheme,
}

impl AuthFailure {
    /// Stable label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::SourceNotAllowed => "source_not_allowed",
            Self::MissingCredentials => "missing_credentials",
            Self::MissingSignature => "missing_signature",
            Self::BadSignature => "bad_signature",
            Self::BadToken => "bad_token",
            Self::BadBasic => "bad_basic",
            Self::BadPathToken => "bad_path_token",
            Self::AuthorizationWithoutScheme => "authorization_without_scheme",
        }
    }
}

/// What the request head alone says about a request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadVerdict {
    /// A credential matched and nothing presented is wrong: read the body, which may be an
    /// envelope of this scope.
    Passed(Scope),
    /// A signature is presented: it is verified over the body once read; the scope is what the
    /// head's other credentials granted (v2 is added when the signature verifies).
    NeedsBody(Scope),
}

/// The parsed `[auth]` settings.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    /// HMAC keys; several at once so a secret can be rotated without downtime.
    signature_secrets: Vec<Vec<u8>>,
    /// Refuse requests without a signature.
    require_signature: bool,
    /// Lowercase name of the header carrying a shared token.
    token_header: String,
    /// Accepted shared tokens.
    tokens: Vec<Vec<u8>>,
    /// What a shared token may deliver.
    token_scope: Scope,
    /// Accepted Basic credentials, as `user:password` bytes.
    basic: Vec<Vec<u8>>,
    /// What Basic may deliver.
    basic_scope: Scope,
    /// Accepted path tokens.
    path_tokens: Vec<Vec<u8>>,
    /// Allowed client networks; empty allows any.
    allow_sources: Vec<IpNet>,
    /// Peers whose forwarding header is believed.
    trusted_proxies: Vec<IpNet>,
    /// The one forwarding header they set.
    forwarded_header: ForwardedHeader,
}

impl Authenticator {
    /// Builds the checks from validated configuration.
    pub fn new(config: &AuthConfig) -> Self {
        let bytes = |list: &[String]| list.iter().map(|s| s.as_bytes().to_vec()).collect();
        Self {
            signature_secrets: bytes(&config.signature_secrets),
            require_signature: config.require_signature,
            token_header: config.token_header.to_ascii_lowercase(),
            tokens: bytes(&config.tokens),
            token_scope: Scope::of(&config.token_versions),
            basic: basic_pairs(&config.basic),
            basic_scope: Scope::of(&config.basic_versions),
            path_tokens: bytes(&config.path_tokens),
            allow_sources: config.allow_sources.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            forwarded_header: config.forwarded_header,
        }
    }

    /// True when no credential mode is configured (only allowed with `insecure_no_auth`).
    pub fn is_open(&self) -> bool {
        self.signature_secrets.is_empty()
            && self.tokens.is_empty()
            && self.basic.is_empty()
            && self.path_tokens.is_empty()
    }

    /// True when tokens may arrive in the path (`POST {path}/{token}`).
    pub fn accepts_path_tokens(&self) -> bool {
        !self.path_tokens.is_empty()
    }

    /// Checks the credentials of a request whose body is `body`: [`Self::check_head`], then
    /// [`Self::check_body`]; the scope they grant.
    pub fn check(
        &self,
        headers: &HeaderMap,
        path_token: Option<&str>,
        body: &[u8],
    ) -> Result<Scope, AuthFailure> {
        match self.check_head(headers, path_token)? {
            HeadVerdict::Passed(scope) => Ok(scope),
            HeadVerdict::NeedsBody(scope) => self.check_body(headers, body, scope),
        }
    }

    /// Everything that can be checked before the body is read: path token, Bearer or custom
    /// token, Basic, and whether a required signature is present. A request that fails here is
    /// refused without reading (or buffering) its body. "A request passes when one configured
    /// credential matches and none it presents is wrong."
    pub fn check_head(
        &self,
        headers: &HeaderMap,
        path_token: Option<&str>,
    ) -> Result<HeadVerdict, AuthFailure> {
        if self.is_open() {
            return Ok(HeadVerdict::Passed(Scope::ALL));
        }
        let signed = !self.signature_secrets.is_empty() && headers.contains_key(SIGNATURE_HEADER);
        let mut passed = false;
        let mut scope = Scope::NONE;
        if let Some(token) = path_token {
            if !any_equal(&self.path_tokens, token.as_bytes()) {
                return Err(AuthFailure::BadPathToken);
            }
            passed = true;
            scope = scope.union(Scope::V1);
        }
        if let Some(value) = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
        {
            if let Some(encoded) = strip_scheme(value, b"basic ") {
                if self.basic.is_empty() {
                    return Err(AuthFailure::BadBasic);
                }
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim_ascii())
                    .unwrap_or_default();
                if !any_equal(&self.basic, &decoded) {
                    return Err(AuthFailure::BadBasic);
                }
                passed = true;
                scope = scope.union(self.basic_scope);
            }
        }
        if !self.tokens.is_empty() {
            if let Some(token) = self.presented_token(headers) {
                if !any_equal(&self.tokens, token) {
                    return Err(AuthFailure::BadToken);
                }
                passed = true;
                scope = scope.union(self.token_scope);
            }
        }
        // With signatures required, only a signature delivers v2.
        if self.require_signature {
            scope = scope.without_v2();
        }
        let schemeless = || {
            headers.get(http::header::AUTHORIZATION).is_some_and(|v| {
                let v = v.as_bytes();
                strip_scheme(v, b"bearer ").is_none() && strip_scheme(v, b"basic ").is_none()
            })
        };
        match (signed, passed) {
            // A signature that is presented must verify, even next to a good token.
            (true, _) => Ok(HeadVerdict::NeedsBody(scope)),
            // Credentials that may deliver nothing once v2 needs a signature.
            (false, true) if scope.is_empty() => Err(AuthFailure::MissingSignature),
            (false, true) => Ok(HeadVerdict::Passed(scope)),
            (false, false) if self.require_signature => Err(AuthFailure::MissingSignature),
            (false, false) if schemeless() => Err(AuthFailure::AuthorizationWithoutScheme),
            (false, false) => Err(AuthFailure::MissingCredentials),
        }
    }

    /// Verifies `X-Webhook-Signature` over `body`; call it when [`Self::check_head`] said
    /// [`HeadVerdict::NeedsBody`] with `scope`. The scope then includes v2.
    pub fn check_body(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        scope: Scope,
    ) -> Result<Scope, AuthFailure> {
        match headers.get(SIGNATURE_HEADER) {
            Some(signature)
                if verify_signature(&self.signature_secrets, signature.as_bytes(), body) =>
            {
                Ok(scope.union(Scope::V2))
            }
            Some(_) => Err(AuthFailure::BadSignature),
            None => Err(AuthFailure::MissingSignature),
        }
    }

    /// The shared token from `auth.token_header`; in `Authorization` it is a Bearer token.
    fn presented_token<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        let value = headers.get(self.token_header.as_str())?.as_bytes();
        if self.token_header == "authorization" {
            strip_scheme(value, b"bearer ").map(<[u8]>::trim_ascii)
        } else {
            Some(value.trim_ascii())
        }
    }
}

/// Lowercase hex HMAC-SHA256 of `body` with one of `secrets`, compared in constant time.
fn verify_signature(secrets: &[Vec<u8>], signature: &[u8], body: &[u8]) -> bool {
    let Ok(expected) = hex::decode(signature.trim_ascii()) else {
        return false;
    };
    // Check every secret so the time taken does not say which one matched.
    secrets.iter().fold(false, |matched, secret| {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(body);
        mac.verify_slice(&expected).is_ok() | matched
    })
}

/// True when `presented` equals one of `accepted`, comparing each in constant time.
fn any_equal(accepted: &[Vec<u8>], presented: &[u8]) -> bool {
    accepted.iter().fold(false, |matched, candidate| {
        bool::from(candidate.as_slice().ct_eq(presented)) | matched
    })
}

fn strip_scheme<'v>(value: &'v [u8], scheme: &[u8]) -> Option<&'v [u8]> {
    (value.len() > scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme))
        .then(|| &value[scheme.len()..])
}

fn basic_pairs(users: &BTreeMap<String, String>) -> Vec<Vec<u8>> {
    users
        .iter()
        .map(|(user, password)| format!("{user}:{password}").into_bytes())
        .collect()
}

/// What the three files' unit tests build their cases from.
#[cfg(test)]
pub(super) mod test_support {
    use http::{HeaderMap, HeaderValue};

    use super::Authenticator;
    use crate::config::AuthConfig;

    /// The checks of the defaults changed by `configure`.
    pub fn auth(configure: impl FnOnce(&mut AuthConfig)) -> Authenticator {
        let mut config = AuthConfig::default();
        configure(&mut config);
        Authenticator::new(&config)
    }

    /// A header map of `pairs`, in order.
    pub fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{auth, headers};
    use super::*;
    use crate::webhook::envelope::WebhookVersion;

    const SIGNED_BODY: &[u8] = br#"{"a":1}"#;
    /// Well-formed hex, but no secret's signature of anything here.
    const FORGED_SIGNATURE: &str =
        "2b1f6bb5b4d5e2a4a5a3c7e7b1b5d1c02b1f6bb5b4d5e2a4a5a3c7e7b1b5d1c0";

    fn hmac_hex(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn signature_with_current_or_previous_secret_passes_and_others_fail() {
        let a = auth(|c| c.signature_secrets = vec!["new".into(), "old".into()]);
        for secret in ["new", "old"] {
            let h = headers(&[(SIGNATURE_HEADER, &hmac_hex(secret, SIGNED_BODY))]);
            assert_eq!(a.check(&h, None, SIGNED_BODY), Ok(Scope::V2));
        }
        let h = headers(&[(SIGNATURE_HEADER, &hmac_hex("retired", SIGNED_BODY))]);
        assert_eq!(
            a.check(&h, None, SIGNED_BODY),
            Err(AuthFailure::BadSignature)
        );
        let h = headers(&[(SIGNATURE_HEADER, &hmac_hex("new", b"other body"))]);
        assert_eq!(
            a.check(&h, None, SIGNED_BODY),
            Err(AuthFailure::BadSignature)
        );
        let h = headers(&[(SIGNATURE_HEADER, FORGED_SIGNATURE)]);
        assert_eq!(
            a.check(&h, None, SIGNED_BODY),
            Err(AuthFailure::BadSignature)
        );
        let h = headers(&[(SIGNATURE_HEADER, "not hex")]);
        assert_eq!(
            a.check(&h, None, SIGNED_BODY),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            a.check(&HeaderMap::new(), None, SIGNED_BODY),
            Err(AuthFailure::MissingCredentials)
        );
    }

    #[test]
    fn hmac_matches_an_independent_reference_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hmac_hex("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn required_signature_is_not_replaced_by_a_token() {
        let a = auth(|c| {
            c.signature_secrets = vec!["s".into()];
            c.require_signature = true;
            c.tokens = vec!["t".into()];
        });
        let h = headers(&[("authorization", "Bearer t")]);
        assert_eq!(a.check(&h, None, b"{}"), Err(AuthFailure::MissingSignature));
    }

    #[test]
    fn bearer_token_custom_header_basic_and_path_token() {
        let bearer = auth(|c| c.tokens = vec!["tok".into()]);
        assert_eq!(
            bearer.check(&headers(&[("authorization", "Bearer tok")]), None, b""),
            Ok(Scope::V2)
        );
        assert_eq!(
            bearer.check(&headers(&[("authorization", "bearer tok")]), None, b""),
            Ok(Scope::V2)
        );
        assert_eq!(
            bearer.check(&headers(&[("authorization", "Bearer nope")]), None, b""),
            Err(AuthFailure::BadToken)
        );
        assert_eq!(
            bearer.check(&headers(&[("authorization", "tok")]), None, b""),
            Err(AuthFailure::AuthorizationWithoutScheme),
            "a token pasted without its scheme is named as such, not as missing"
        );

        let custom = auth(|c| {
            c.tokens = vec!["tok".into()];
            c.token_header = "X-Relay-Token".into();
        });
        assert_eq!(
            custom.check(&headers(&[("x-relay-token", "tok")]), None, b""),
            Ok(Scope::V2)
        );
        assert_eq!(
            custom.check(&headers(&[("authorization", "Bearer tok")]), None, b""),
            Err(AuthFailure::MissingCredentials)
        );

        let basic = auth(|c| c.basic = BTreeMap::from([("fp".into(), "pw".into())]));
        let good = base64::engine::general_purpose::STANDARD.encode("fp:pw");
        let bad = base64::engine::general_purpose::STANDARD.encode("fp:nope");
        assert_eq!(
            basic.check(
                &headers(&[("authorization", &format!("Basic {good}"))]),
                None,
                b""
            ),
            Ok(Scope::V2)
        );
        assert_eq!(
            basic.check(
                &headers(&[("authorization", &format!("Basic {bad}"))]),
                None,
                b""
            ),
            Err(AuthFailure::BadBasic)
        );
        assert_eq!(
            basic.check(&headers(&[("authorization", "Basic !!!")]), None, b""),
            Err(AuthFailure::BadBasic)
        );

        let path = auth(|c| c.path_tokens = vec!["p4th".into()]);
        assert_eq!(
            path.check(&HeaderMap::new(), Some("p4th"), b""),
            Ok(Scope::V1)
        );
        assert_eq!(
            path.check(&HeaderMap::new(), Some("wrong"), b""),
            Err(AuthFailure::BadPathToken)
        );
        assert_eq!(
            path.check(&HeaderMap::new(), None, b""),
            Err(AuthFailure::MissingCredentials)
        );
    }

    #[test]
    fn each_credential_delivers_only_its_versions_and_signatures_rule_v2_when_required() {
        let secret = "signing-secret";
        let a = auth(|c| {
            c.signature_secrets = vec![secret.into()];
            c.tokens = vec!["tok".into()];
            c.path_tokens = vec!["p4th".into()];
            c.basic = BTreeMap::from([("fp".into(), "pw".into())]);
        });
        let signed = headers(&[(SIGNATURE_HEADER, &hmac_hex(secret, SIGNED_BODY))]);
        let basic = base64::engine::general_purpose::STANDARD.encode("fp:pw");
        let basic = headers(&[("authorization", &format!("Basic {basic}"))]);
        let bearer = headers(&[("authorization", "Bearer tok")]);
        assert_eq!(a.check(&signed, None, SIGNED_BODY), Ok(Scope::V2));
        assert_eq!(a.check(&bearer, None, b""), Ok(Scope::V2));
        assert_eq!(a.check(&basic, None, b""), Ok(Scope::V2));
        assert_eq!(a.check(&HeaderMap::new(), Some("p4th"), b""), Ok(Scope::V1));
        // Both at once: what either may deliver.
        assert_eq!(a.check(&bearer, Some("p4th"), b""), Ok(Scope::ALL));
        for (scope, version, allowed) in [
            (Scope::V1, WebhookVersion::V1, true),
            (Scope::V1, WebhookVersion::V2, false),
            (Scope::V2, WebhookVersion::V1, false),
            (Scope::ALL, WebhookVersion::V2, true),
        ] {
            assert_eq!(a.check_scope(scope, version).is_ok(), allowed);
        }
        assert_eq!(a.check_scope(Scope::V1, WebhookVersion::V2), Err(None));

        // Tokens configured for both versions.
        let both = auth(|c| {
            c.tokens = vec!["tok".into()];
            c.token_versions = vec![WebhookVersion::V1, WebhookVersion::V2];
        });
        assert_eq!(both.check(&bearer, None, b""), Ok(Scope::ALL));

        // Signatures required: they rule v2 only; a path token still delivers v1, a token
        // that may deliver only v2 delivers nothing, and an unsigned v2 envelope that got in
        // with a path token is refused as unsigned.
        let strict = auth(|c| {
            c.signature_secrets = vec![secret.into()];
            c.require_signature = true;
            c.tokens = vec!["tok".into()];
            c.path_tokens = vec!["p4th".into()];
        });
        assert_eq!(
            strict.check(&HeaderMap::new(), Some("p4th"), b""),
            Ok(Scope::V1)
        );
        assert_eq!(
            strict.check(&bearer, None, b""),
            Err(AuthFailure::MissingSignature)
        );
        assert_eq!(
            strict.check(&HeaderMap::new(), None, b""),
            Err(AuthFailure::MissingSignature)
        );
        assert_eq!(
            strict.check_scope(Scope::V1, WebhookVersion::V2),
            Err(Some(AuthFailure::MissingSignature))
        );
        assert_eq!(strict.check(&signed, None, SIGNED_BODY), Ok(Scope::V2));
    }
}
