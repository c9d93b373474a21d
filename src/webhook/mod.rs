//! FirstPromoter's side of the relay: the two envelopes, the event types it is known to send,
//! and the rules that turn an event into a topic and a key.

pub mod auth;
pub mod envelope;
pub mod redact;
pub mod routing;
pub mod scrub;

/// v1 event types in FirstPromoter's documentation (each has a sample in `samples/v1`).
pub const V1_EVENT_TYPES: &[&str] = &[
    "lead_signup",
    "lead_becomes_referral",
    "new_customer",
    "lead_cancelled",
    "promoter_signed_up",
    "promoter_accepted",
    "reward_created",
    "fulfilment_pending",
];

/// v1 names seen outside the documentation: FirstPromoter's own integration code says
/// `promoter_signs_up`, and `lead_subscribed` exists in the wild.
pub const V1_EVENT_ALIASES: &[&str] = &["lead_subscribed", "promoter_signs_up"];

/// v2 event types in FirstPromoter's current documentation (checked 2026-11, 45 dotted
/// `entity.action` names), then names older API examples still show. FirstPromoter adds more;
/// those are routed just the same (they only share the `other` metric label).
pub const V2_EVENT_TYPES: &[&str] = &[
    "promoter.created",
    "promoter.updated",
    "promoter.deleted",
    "promoter.balance.updated",
    "promoter_campaign.created",
    "promoter_campaign.updated",
    "promoter_campaign.deleted",
    "promoter_campaign.accepted",
    "promoter_campaign.pending",
    "promoter_campaign.rejected",
    "promoter_campaign.blocked",
    "promoter_campaign.inactive",
    "referral.created",
    "referral.updated",
    "referral.deleted",
    "referral.converted",
    "referral.cancelled",
    "referral.moved",
    "commission.created",
    "commission.updated",
    "commission.deleted",
    "commission.approved",
    "commission.pending",
    "commission.denied",
    "payout.created",
    "payout.updated",
    "payout.deleted",
    "payout.pending",
    "payout.processing",
    "payout.completed",
    "payout.failed",
    "payout.cancelled",
    "payout.commissions.added",
    "payout.commissions.removed",
    "payout_method.created",
    "payout_method.updated",
    "payout_method.deleted",
    "payments_batch.created",
    "payments_batch.updated",
    "payments_batch.deleted",
    "payments_batch.initiated",
    "payments_batch.processing",
    "payments_batch.completed",
    "payments_batch.failed",
    "contract_document.signed",
    "promoter.profile.updated",
    "payout.commissions.created",
    "payout.commissions.updated",
    "payout.commissions.deleted",
];

/// Every known event type, v1 (with aliases) then v2.
pub fn known_event_types() -> impl Iterator<Item = &'static str> {
    V1_EVENT_TYPES
        .iter()
        .chain(V1_EVENT_ALIASES)
        .chain(V2_EVENT_TYPES)
        .copied()
}

/// The event type as a bounded metric label: itself when known, `other` otherwise.
pub fn event_type_label(event_type: &str) -> &'static str {
    known_event_types()
        .find(|known| *known == event_type)
        .unwrap_or("other")
}
