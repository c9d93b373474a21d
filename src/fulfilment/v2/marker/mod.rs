//! Acts on v2 replies: a `fulfilled` reply becomes a `mark_fulfilled` call for its commission.
//!
//! At least once, exactly once where it can be known: replies are read in a consumer group
//! (`fulfilment.v2.consumer_group`), so each reply goes to one replica, and offsets are
//! committed only after FirstPromoter answered for every reply up to them. A reply written
//! while every relay was down is read when one starts (a new group starts at the earliest
//! offset). A replica that dies between FirstPromoter's answer and its commit leaves the reply
//! to be read again; FirstPromoter then says "already fulfilled", which counts as done.
//!
//! Answers (classified once, in `api.rs`):
//! - a several-id call that is anything but a plain success is split, and each id asked alone,
//!   so one commission's answer never settles another's;
//! - faults of the relay's own settings (401, a 403 or 404 not about a commission, a redirect,
//!   TLS, DNS) pause marking for every commission, retried with capped backoff with the API
//!   check on `/readyz` failing, until the API accepts the call again: nothing is dead-lettered;
//! - timeouts, connection failures, 429 and 5xx are retried, each pause the larger of the
//!   backoff and `Retry-After`, capped at `retry_max` and never zero, each commission until
//!   `give_up_after` past its reply's Kafka timestamp (so the deadline survives restarts, and
//!   every waiting commission is tried in every round, none behind another), then the reply
//!   is dead-lettered with the last reason;
//! - any other 4xx dead-letters that commission's reply with FirstPromoter's message.
//!
//! `fp-relay redrive` puts dead-lettered replies back on the reply topic. While retrying, the
//! reply partitions are paused and the consumer keeps polling, so the replica keeps its group
//! membership however long FirstPromoter is away (`max.poll.interval.ms`). `pending` and
//! `failed` replies call nothing; a malformed reply is dead-lettered with what is wrong.
//!
//! Layout: `consumer.rs` holds the consumer's life (build, rebuild, start) and the one loop
//! whose order is the guarantee: read a batch, settle it (dead letters included), then commit.
//! `read.rs` says what a reply is; `settle.rs` settles a batch (the split of a refused batch,
//! rounds of retries); `call.rs` makes one `mark_fulfilled` call and pauses between rounds;
//! `dead_letter.rs` dead-letters replies and commits offsets. The API client and the approval
//! rules live beside them (`../api.rs`, `../mod.rs`).

mod call;
mod consumer;
mod dead_letter;
mod read;
mod settle;

pub use self::dead_letter::{COMMISSION_ID_HEADER, UNREQUESTED_REPLY};

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;

use self::consumer::build;
use self::read::ReadReply;
use super::api::FirstPromoterApi;
use crate::config::Config;
use crate::firstpromoter::client::ApiClient;
use crate::kafka::context::RelayContext;
use crate::kafka::outage::ClusterWatch;
use crate::kafka::publisher::Publisher;
use crate::metrics::Metrics;

/// The v2 reply reader and API caller; see the module documentation.
pub struct Marker {
    /// Replaced (rebuilt, rejoining the group) when Kafka credentials change in their files.
    consumer: std::sync::RwLock<Arc<StreamConsumer<RelayContext>>>,
    /// The Kafka settings as they are now.
    settings: crate::kafka::Settings,
    /// `fulfilment.v2.consumer_group`.
    group: String,
    /// Given to every consumer's context.
    watch: Arc<ClusterWatch>,
    topic: String,
    api: FirstPromoterApi,
    publisher: Arc<Publisher>,
    dead_letter_topic: String,
    ack_timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    /// `fulfilment.v2.give_up_after`.
    give_up_after: Duration,
    metrics: Arc<Metrics>,
    /// False while calls to FirstPromoter fail in ways that are retried; shown on `/readyz`
    /// for information (readiness never depends on FirstPromoter).
    api_reachable: Arc<AtomicBool>,
    /// Replies read while waiting to retry (the consumer keeps polling then); handled next.
    backlog: Mutex<VecDeque<ReadReply>>,
    /// Verifies that a reply answers a request some relay issued.
    keys: super::ReplyKeys,
    /// Told of every commission marked fulfilled (`fulfilment.remember`).
    pub(super) verdicts: Option<Arc<crate::fulfilment::verdicts::Verdicts>>,
}

impl Marker {
    /// Builds the consumer and the API client; nothing talks to either until [`Marker::spawn`].
    pub fn new(
        config: &Config,
        kafka: crate::kafka::Settings,
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
        watch: Arc<ClusterWatch>,
        api_reachable: Arc<AtomicBool>,
        client: Arc<ApiClient>,
    ) -> Result<Self, crate::StartError> {
        let settings = &config.fulfilment.v2;
        let consumer = build(&kafka.borrow(), &settings.consumer_group, &metrics, &watch)?;
        Ok(Self {
            consumer: std::sync::RwLock::new(consumer),
            settings: kafka,
            group: settings.consumer_group.clone(),
            watch,
            topic: config.fulfilment.reply_topic.clone(),
            api: FirstPromoterApi::new(client),
            publisher,
            dead_letter_topic: config.kafka.dead_letter_topic.clone(),
            ack_timeout: config.kafka.ack_timeout,
            retry_initial: config.firstpromoter.retry_initial,
            retry_max: config.firstpromoter.retry_max,
            give_up_after: settings.give_up_after,
            metrics,
            api_reachable,
            backlog: Mutex::new(VecDeque::new()),
            keys: super::ReplyKeys::new(config),
            verdicts: None,
        })
    }

    /// Tells `verdicts` of every commission marked fulfilled (`fulfilment.remember`).
    pub fn remembering(
        mut self,
        verdicts: Option<Arc<crate::fulfilment::verdicts::Verdicts>>,
    ) -> Self {
        self.verdicts = verdicts;
        self
    }
}
