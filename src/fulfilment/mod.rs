//! `fulfilment_pending` as a request/reply exchange over Kafka: the request is published with a
//! correlation id and held open; a downstream fulfiller answers on the reply topic; the answer
//! becomes the HTTP status FirstPromoter acts on. Webhooks v2 uses the same exchange without a
//! held request ([`v2`]). The contract is `docs/fulfilment-protocol.md`.

pub mod consumer;
pub mod correlator;
pub mod exchange;
pub mod v2;
pub mod verdicts;
