//! The fulfilment exchange as FirstPromoter sees it: how a fulfiller's verdict (or its absence)
//! becomes the HTTP status that decides the reward's fate (docs/fulfilment-protocol.md).
//!
//! | verdict | status | FirstPromoter |
//! |---|---|---|
//! | `fulfilled` | 200 | marks the reward fulfilled |
//! | `pending` | `fulfilment.pending_status` (202) | keeps it pending, asks again later |
//! | `failed` | `fulfilment.failed_status` (500) | retries up to 7 times |
//! | no answer in time | `fulfilment.timeout_status` (202) | keeps it pending |
//! | released at shutdown | `fulfilment.pending_status` | keeps it pending |

use http::StatusCode;

use super::correlator::{Outcome, Verdict};
use crate::config::FulfilmentConfig;

/// Longest `reason` passed back to FirstPromoter in a response body.
const MAX_REASON_CHARS: usize = 200;

/// The answer to a `fulfilment_pending` request.
#[derive(Debug, Clone, PartialEq)]
pub struct FulfilmentAnswer {
    /// The status FirstPromoter acts on.
    pub status: StatusCode,
    /// fulfilled, pending, failed, timeout, overflow, released or disabled.
    pub outcome: &'static str,
    /// The `fp-correlation-id`, when the request was held.
    pub correlation_id: Option<String>,
    /// The fulfiller's text, shortened.
    pub reason: Option<String>,
}

/// A status from validated configuration.
pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).expect("validated at start-up")
}

/// The status, outcome label and reason a held request is answered with.
pub fn decide(
    verdict: Verdict,
    settings: &FulfilmentConfig,
) -> (StatusCode, &'static str, Option<String>) {
    match verdict {
        Verdict::Answered(reply) => {
            let code = match reply.outcome {
                Outcome::Fulfilled => StatusCode::OK,
                Outcome::Pending => status(settings.pending_status),
                Outcome::Failed => status(settings.failed_status),
            };
            let reason = reply
                .reason
                .map(|r| r.chars().take(MAX_REASON_CHARS).collect());
            (code, reply.outcome.as_str(), reason)
        }
        Verdict::TimedOut => (status(settings.timeout_status), "timeout", None),
        Verdict::Released => (status(settings.pending_status), "released", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fulfilment::correlator::Reply;

    #[test]
    fn each_verdict_becomes_the_status_firstpromoter_acts_on() {
        let settings = FulfilmentConfig::default();
        let answered = |outcome, reason: Option<&str>| {
            Verdict::Answered(Reply {
                outcome,
                reason: reason.map(str::to_owned),
            })
        };
        assert_eq!(
            decide(answered(Outcome::Fulfilled, None), &settings),
            (StatusCode::OK, "fulfilled", None)
        );
        assert_eq!(
            decide(answered(Outcome::Pending, Some("Monday")), &settings),
            (StatusCode::ACCEPTED, "pending", Some("Monday".to_owned()))
        );
        assert_eq!(
            decide(answered(Outcome::Failed, None), &settings).0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            decide(Verdict::TimedOut, &settings),
            (StatusCode::ACCEPTED, "timeout", None),
            "no answer in time keeps the reward pending: a non-200 2xx"
        );
        assert_eq!(decide(Verdict::Released, &settings).1, "released");
        let long = "x".repeat(500);
        let reason = decide(answered(Outcome::Failed, Some(&long)), &settings).2;
        assert_eq!(reason.map(|r| r.len()), Some(MAX_REASON_CHARS));
    }
}
