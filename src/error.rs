//! Errors at the HTTP boundary: what went wrong, its status and stable code, and what the
//! client may be told. [`crate::http::answer`] turns them into responses.
//!
//! The client gets a status and a short JSON body (`{"error": code, "message": ...}`); the log
//! line carries the detail. Nothing here ever echoes a body, a header value or a credential.

use http::StatusCode;

use crate::kafka::publisher::PublishError;
use crate::webhook::auth::AuthFailure;
use crate::webhook::envelope::{EnvelopeError, WebhookVersion};

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: &str = "5";

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Any path other than the webhook path.
    #[error("no such path")]
    NotFound,
    /// Anything but POST on the webhook path.
    #[error("method not allowed; FirstPromoter webhooks are POSTs")]
    MethodNotAllowed,
    /// The body is larger than `http.max_body_bytes`.
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Credentials missing or wrong. The reason is for logs and metrics, never for the client.
    #[error("authentication failed ({})", .0.reason())]
    Unauthorized(AuthFailure),
    /// The client address is outside `auth.allow_sources`.
    #[error("source address not allowed")]
    Forbidden,
    /// The request's credential may not deliver this envelope (a v1 path token carrying a v2
    /// webhook, a v2 token carrying v1's `fulfilment_pending`): refused unpublished.
    #[error("the credential used may not deliver {} webhooks", .0.as_str())]
    CredentialScope(WebhookVersion),
    /// The body asks for the v1 fulfilment exchange (its type is `fulfilment.event_type`) but
    /// is not exactly a v1 envelope: never taken for a reward to grant, nothing published.
    #[error("the event type is v1's fulfilment_pending but the body is not a v1 envelope")]
    EnvelopeMismatch,
    /// A v2 event older than `auth.max_event_age`: a replayed body, refused unpublished.
    #[error("the event is older than auth.max_event_age ({}s old)", .age.as_secs())]
    StaleEvent { age: std::time::Duration },
    /// Buffering this body would exceed `http.max_buffered_body_bytes` (the memory budget).
    #[error("too many request bodies in memory right now")]
    Busy,
    /// The body did not arrive within `http.request_timeout`.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// The body could not be read to its end (client hung up, truncated chunked encoding).
    #[error("request body could not be read: {0}")]
    BodyRead(String),
    /// Not a webhook the relay can route; the raw body went to the dead-letter topic if it could.
    #[error("{error}")]
    Invalid {
        error: EnvelopeError,
        dead_lettered: bool,
    },
    /// Kafka did not acknowledge the event in time: it is not accepted.
    #[error("Kafka did not acknowledge the event: {0}")]
    Unavailable(#[from] PublishError),
    /// Handling the request panicked (a bug): answered rather than dropped, counted in
    /// `fp_relay_panics_total` and logged with this id, which the client is told.
    #[error("internal error (request id {request_id})")]
    Internal { request_id: String },
}

impl RelayError {
    /// The HTTP status. Never 500 for a client's mistake.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::CredentialScope(_) | Self::StaleEvent { .. } => {
                StatusCode::FORBIDDEN
            }
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyRead(_) | Self::Invalid { .. } | Self::EnvelopeMismatch => {
                StatusCode::BAD_REQUEST
            }
            Self::Unavailable(_) | Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The auth check that failed, for `fp_relay_auth_failures_total`.
    /// Refusals decided before the whole body was read (what is left of it is drained, and
    /// the connection then closed).
    pub fn refused_before_body(&self) -> bool {
        matches!(
            self,
            Self::NotFound
                | Self::MethodNotAllowed
                | Self::Forbidden
                | Self::Unauthorized(_)
                | Self::PayloadTooLarge { .. }
                | Self::Busy
        )
    }

    pub fn auth_failure(&self) -> Option<AuthFailure> {
        match self {
            Self::Unauthorized(failure) => Some(*failure),
            Self::Forbidden => Some(AuthFailure::SourceNotAllowed),
            _ => None,
        }
    }

    /// Stable machine-readable code; also the `reason` label of `fp_relay_rejected_total`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge { .. } => "too_large",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::CredentialScope(_) => "credential_scope",
            Self::EnvelopeMismatch => "envelope_mismatch",
            Self::StaleEvent { .. } => "stale_event",
            Self::RequestTimeout => "request_timeout",
            Self::BodyRead(_) => "body_read",
            Self::Invalid { error, .. } => error.reason(),
            Self::Unavailable(_) => "kafka_unavailable",
            Self::Busy => "busy",
            Self::Internal { .. } => "internal",
        }
    }

    /// What the client is told: short, and for Kafka failures without internal detail.
    pub fn client_message(&self) -> String {
        match self {
            Self::Unavailable(_) => {
                "the event was not accepted; Kafka did not acknowledge it in time".to_owned()
            }
            Self::BodyRead(_) => "the request body could not be read".to_owned(),
            Self::Unauthorized(_) => "authentication failed".to_owned(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::answer::refused;

    #[test]
    fn client_mistakes_map_to_4xx_and_kafka_to_503_with_retry_after() {
        assert_eq!(RelayError::NotFound.status(), 404);
        assert_eq!(
            refused(RelayError::MethodNotAllowed).headers()["allow"],
            "POST"
        );
        assert_eq!(RelayError::PayloadTooLarge { limit: 1 }.status(), 413);
        let unauthorized = refused(RelayError::Unauthorized(AuthFailure::BadSignature));
        assert_eq!(unauthorized.status(), 401);
        let invalid = RelayError::Invalid {
            error: EnvelopeError::NotAnObject,
            dead_lettered: true,
        };
        assert_eq!(invalid.status(), 400);
        let unavailable = refused(RelayError::Unavailable(PublishError::Timeout));
        assert_eq!(unavailable.status(), 503);
        assert_eq!(unavailable.headers()["retry-after"], RETRY_AFTER_SECS);
    }
}
