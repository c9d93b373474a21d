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
    /// The reply consumer is assigned and positioned (always true with fulfilment off). Shown,
    /// never required: without it `fulfilment_pending` is answered pending without publishing.
    pub reply_consumer: Arc<AtomicBool>,
    /// Outage reporting shared with the probe, the handler and the Kafka clients.
    pub cluster: Arc<ClusterWatch>,
    /// With v2 fulfilment on: whether FirstPromoter's API answered the last call. Shown for
    /// information only: webhooks are accepted safely without it (fulfilled replies wait in Kafka).
    pub firstpromoter_api: Option<Arc<AtomicBool>>,
    /// With `dedup.topic`: the shared table's state. Ready waits for its first load (bounded
    /// by `dedup.load_timeout`), never for the topic itself.
    pub dedup_shared: Option<Arc<crate::dedup::shared::SharedState>>,
    /// With `fulfilment.remember`: the shared verdicts' state. Ready waits for their first
    /// load (bounded by `dedup.load_timeout`), never for the topic itself.
    pub verdicts: Option<Arc<crate::kafka::follow::FollowState>>,
}

impl Health {
    /// `(ready, checks)` for `/readyz`: ready means standard events are accepted safely.
    /// Without the spool that needs Kafka; with it, Kafka or a spool with room (during an
    /// outage the relay answers 202 `spooled`, which is better than a load balancer's 502 or
    /// 503). The fulfilment reply path is reported, never required: a replica that starts
    /// during an outage, or whose reply topic cannot be created, must still take the standard
    /// events FirstPromoter v1 never re-sends.
    pub fn report(&self, spool: Option<&Spool>) -> (bool, serde_json::Value) {
        let producer = self.producer.load(Ordering::Acquire);
        let replies = self.reply_consumer.load(Ordering::Acquire);
        let state = |ok: bool| if ok { "ok" } else { "failing" };
        // Why Kafka is failing, when a client said: authentication, TLS, mechanism, unreachable.
        let producer_state = match (producer, self.cluster.failure()) {
            (false, Some((failure, detail))) => {
                json!(format!("failing: {} ({detail})", failure.label()))
            }
            _ => json!(state(producer)),
        };
        let mut checks = json!({
            "kafka_producer": producer_state,
            "reply_consumer": if replies {
                "ok"
            } else {
                "not_ready (not required; fulfilment_pending is answered pending without publishing)"
            },
        });
        if let Some(api) = &self.firstpromoter_api {
            checks["firstpromoter_api"] = json!(if api.load(Ordering::Acquire) {
                "ok"
            } else {
                "failing (not required for readiness)"
            });
        }
        let mut loaded = true;
        if let Some(shared) = &self.dedup_shared {
            checks["dedup_shared"] = json!(shared.detail(crate::dedup::shared::WITHOUT_TOPIC));
            loaded &= shared.settled();
        }
        if let Some(verdicts) = &self.verdicts {
            checks["fulfilment_verdicts"] =
                json!(verdicts.detail(crate::fulfilment::verdicts::WITHOUT_TOPIC));
            loaded &= verdicts.settled();
        }
        let accepting = loaded
            && match spool {
                Some(spool) => {
                    let room = spool.accepting();
                    checks["spool"] = json!(if room { "ok" } else { "full_or_failing" });
                    let unreadable = spool.unreadable_files();
                    if unreadable > 0 {
                        checks["spool_set_aside"] = json!(format!(
                            "{unreadable} file(s) cannot be read; kept and retried (not required for readiness)"
                        ));
                    }
                    // With a backlog every new event goes to the spool (receive order), so
                    // then the spool's room is the whole answer, whatever the producer says
                    // (a frozen broker leaves it "ok" while nothing is acknowledged).
                    if spool.has_backlog() {
                        room
                    } else {
                        producer || room
                    }
                }
                None => producer,
            };
        (accepting, checks)
    }
}
