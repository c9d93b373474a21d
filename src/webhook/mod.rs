//! FirstPromoter's side of the relay: the two envelopes, the event types it is known to send,
//! and the rules that turn an event into a topic and a key.

pub mod auth;
pub mod envelope;
pub mod redact;
pub mod routing;

/// v1 event types from FirstPromoter's documentation and its own integration code.
pub const V1_EVENT_TYPES: &[&str] = &[
    "lead_signup",
    "lead_becomes_referral",
    "new_customer",
    "lead_cancelled",
    "lead_subscribed",
    "promoter_signed_up",
    "promoter_signs_up",
    "promoter_accepted",
    "reward_created",
    "fulfilment_pending",
];

/// v2 event types documented at the time of writing; FirstPromoter adds more, and those are
/// routed just the same (they only share the `other` metric label).
pub const V2_EVENT_TYPES: &[&str] = &[
    "promoter.created",
    "promoter.updated",
    "promoter.deleted",
    "promoter.balance.updated",
    "promoter_campaign.created",
    "promoter_campaign.accepted",
    "promoter_campaign.rejected",
    "promoter_campaign.blocked",
    "referral.created",
    "referral.updated",
    "referral.converted",
    "referral.cancelled",
    "referral.deleted",
    "commission.created",
    "commission.updated",
    "commission.approved",
    "commission.denied",
    "commission.deleted",
    "payout.created",
    "payout.updated",
    "payout.completed",
    "payout.failed",
    "payout.commissions.added",
    "payments_batch.created",
    "payments_batch.completed",
    "payments_batch.failed",
    "contract_document.signed",
];

/// The event type as a bounded metric label: itself when known, `other` otherwise.
pub fn event_type_label(event_type: &str) -> &'static str {
    V1_EVENT_TYPES
        .iter()
        .chain(V2_EVENT_TYPES)
        .find(|known| **known == event_type)
        .copied()
        .unwrap_or("other")
}
