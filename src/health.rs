//! Readiness: whether the relay can accept webhooks safely right now, for `/readyz` and the
//! `fp_relay_ready` gauge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::json;

use crate::kafka::outage::ClusterWatch;
use crate::spool::Spool;

/// What `/readyz` checks.
#[derive(Debug, Default)]
pub struct Health {
    /// The producer reached the cluster at the last probe.
    pub producer: AtomicBool,
    /// The reply consumer is assigned and positioned (always true with fulfilment off).
    pub reply_consumer: Arc<AtomicBool>,
    /// Outage reporting shared with the probe, the handler and the Kafka clients.
    pub cluster: Arc<ClusterWatch>,
    /// With v2 fulfilment on: whether FirstPromoter's API answered the last call. Shown for
    /// information only: webhooks are accepted safely without it (fulfilled replies wait in Kafka).
    pub firstpromoter_api: Option<Arc<AtomicBool>>,
}

impl Health {
    /// `(ready, checks)` for `/readyz`: ready means webhooks can be accepted safely. Without
    /// the spool that needs Kafka; with it, Kafka or a spool with room (during an outage the
    /// relay answers 202 `spooled`, which is better than a load balancer's 502 or 503).
    pub fn report(&self, spool: Option<&Spool>) -> (bool, serde_json::Value) {
        let producer = self.producer.load(Ordering::Acquire);
        let replies = self.reply_consumer.load(Ordering::Acquire);
        let state = |ok: bool| if ok { "ok" } else { "failing" };
        let mut checks =
            json!({ "kafka_producer": state(producer), "reply_consumer": state(replies) });
        if let Some(api) = &self.firstpromoter_api {
            checks["firstpromoter_api"] = json!(if api.load(Ordering::Acquire) {
                "ok"
            } else {
                "failing (not required for readiness)"
            });
        }
        let accepting = match spool {
            Some(spool) => {
                let room = spool.accepting();
                checks["spool"] = json!(if room { "ok" } else { "full_or_failing" });
                producer || room
            }
            None => producer,
        };
        (accepting && replies, checks)
    }
}
