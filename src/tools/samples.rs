//! Realistic FirstPromoter payloads, built into the binary for `fp-relay send` and shared with
//! the tests and benchmarks. Written by this project after the field tables of FirstPromoter's
//! documentation; ids, names and the promoter's secrets are made up.

use crate::webhook::envelope::WebhookVersion;

/// One sample webhook.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// What `fp-relay send --event` calls it: its event type, or a longer name for a variant.
    pub name: &'static str,
    /// The event type it carries.
    pub event_type: &'static str,
    /// Which envelope it uses.
    pub version: WebhookVersion,
    /// The body FirstPromoter would send.
    pub body: &'static [u8],
}

macro_rules! sample {
    ($version:ident, $dir:literal, $name:literal) => {
        sample!($version, $dir, $name, $name)
    };
    ($version:ident, $dir:literal, $name:literal, $event_type:literal) => {
        Sample {
            name: $name,
            event_type: $event_type,
            version: WebhookVersion::$version,
            body: include_bytes!(concat!("../../samples/", $dir, "/", $name, ".json")),
        }
    };
}

/// Every sample: each v1 event type and a representative set of v2 types.
pub const SAMPLES: &[Sample] = &[
    sample!(V1, "v1", "lead_signup"),
    sample!(V1, "v1", "lead_becomes_referral"),
    sample!(V1, "v1", "new_customer"),
    sample!(V1, "v1", "lead_cancelled"),
    sample!(V1, "v1", "promoter_signed_up"),
    sample!(V1, "v1", "promoter_accepted"),
    sample!(V1, "v1", "reward_created"),
    sample!(V1, "v1", "fulfilment_pending"),
    sample!(V2, "v2", "promoter.created"),
    sample!(V2, "v2", "referral.created"),
    sample!(V2, "v2", "referral.converted"),
    sample!(V2, "v2", "commission.created"),
    sample!(V2, "v2", "commission.updated"),
    // An approved non-monetary reward: a fulfilment request when [fulfilment.v2] is on.
    sample!(V2, "v2", "commission.updated.reward", "commission.updated"),
    sample!(V2, "v2", "payout.completed"),
];

/// The sample called `name`, if there is one.
pub fn find(name: &str) -> Option<&'static Sample> {
    SAMPLES.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::envelope::parse;

    #[test]
    fn every_sample_parses_as_its_own_type_and_version() {
        for sample in SAMPLES {
            let envelope = parse(sample.body, &http::HeaderMap::new()).unwrap();
            assert_eq!(envelope.event_type, sample.event_type);
            assert_eq!(envelope.version, sample.version);
            assert!(envelope.event_id.is_some(), "{}", sample.event_type);
        }
        for v1 in crate::webhook::V1_EVENT_TYPES {
            assert!(
                find(v1).is_some(),
                "every documented v1 type has a sample: {v1}"
            );
        }
    }
}
