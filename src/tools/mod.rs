//! The newcomer's tools: `fp-relay send` simulates FirstPromoter, `fp-relay tail` shows what
//! reached Kafka.

pub mod send;
pub mod tail;
