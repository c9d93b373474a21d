//! The reply consumer: every replica reads every partition of the reply topic, from the end,
//! without a consumer group or commits, and hands each reply to the correlator by id.
//!
//! Why no group: replies for a replica's held requests may land on any partition, and a group
//! would give each partition to one replica only. Reading everything costs a little bandwidth
//! (replies are small) and makes any number of replicas work with no coordination.
//!
//! Why it rebuilds itself: a cluster can come back without the reply topic (a broker restarted
//! with in-memory storage) or with a new one under the same name (deleted and recreated). A
//! client that keeps its old assignment then reports "unknown topic" forever, or reads from
//! offsets that no longer mean anything. So every `kafka.probe_interval` the consumer checks its
//! topic; when the topic is gone, has fewer partitions, or (after any consumption error) its
//! offsets went back, the consumer is marked not ready, dropped, built afresh and positioned
//! at the beginning of the topic it finds (recreating it when `create_reply_topic` is on): every
//! reply on a recreated topic is newer than the loss, and older ones are only unmatched.
//! Requests held meanwhile end by their timeout with the pending status, never 200; new ones
//! are answered pending unpublished until the consumer is positioned again.
//!
//! Why the checks run beside the receive loop: a check asks the cluster for metadata and
//! watermarks (up to 5 s each while a broker is away); run inside the loop, it stopped every
//! reply, on healthy partitions too, and held requests timed out on replies that had arrived.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::correlator::{Correlator, Reply};

/// How often the reply consumer asks whether it may rest.
const REST_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Shortest quiet spell before the reply consumer rests.
const MIN_QUIET: std::time::Duration = std::time::Duration::from_secs(60);
use crate::config::{FulfilmentConfig, KafkaConfig};
use crate::kafka::consumer_config;
use crate::kafka::context::RelayContext;
use crate::kafka::outage::ClusterWatch;
use crate::kafka::record::headers;
use crate::metrics::Metrics;

/// Timeout of each metadata, watermark and admin call made while positioning.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between positioning attempts while the cluster is unreachable.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Everything the consumer task needs.
pub struct ReplyConsumer {
    /// The client in use; replaced (never mutated) when the reply topic is lost.
    consumer: Arc<StreamConsumer<RelayContext>>,
    /// Settings every consumer instance is built from.
    consumer_config: ClientConfig,
    /// Settings for creating the reply topic; the same client properties as the consumer.
    admin_config: ClientConfig,
    /// Given to each client's context: outage-aware logs, silenced after shutdown.
    watch: Arc<ClusterWatch>,
    topic: String,
    create_topic: bool,
    partitions: i32,
    /// How often the reply topic is checked (`kafka.probe_interval`).
    check_interval: Duration,
    correlator: Arc<Correlator>,
    metrics: Arc<Metrics>,
    /// Set once every partition is assigned at a concrete offset; drives `/readyz`.
    ready: Arc<AtomicBool>,
    /// The Kafka settings, replaced when credentials change in their files: the consumer is
    /// then rebuilt with them, where it was reading.
    settings: crate::kafka::Settings,
    /// The group id every instance uses (never joined: partitions are assigned).
    group: String,
}

/// Why [`ReplyConsumer::serve`] returned.
enum Served {
    /// `stop` was cancelled.
    Stopped,
    /// The reply topic is not the one the consumer was positioned on; the reason says how.
    TopicLost(&'static str),
    /// The Kafka credentials changed: rebuild with them and go on from these positions.
    Reconfigured(TopicPartitionList),
}

/// What the receive loop and the topic checks share.
struct CheckState {
    /// Partitions assigned.
    assigned: AtomicI32,
    /// Set by any consumption error: the next check also looks for offsets gone back.
    disturbed: AtomicBool,
}

/// What a periodic check of the reply topic found.
enum Check {
    /// The cluster did not answer; nothing is known.
    Unknown,
    /// The topic is as assigned (or grew; the new partitions are now read too).
    Healthy { partitions: i32 },
    /// The consumer must be rebuilt and positioned again.
    Lost(&'static str),
}

impl ReplyConsumer {
    /// Builds the consumer; nothing talks to the cluster until [`ReplyConsumer::spawn`].
    pub fn new(
        settings: crate::kafka::Settings,
        fulfilment: &FulfilmentConfig,
        correlator: Arc<Correlator>,
        metrics: Arc<Metrics>,
        watch: Arc<ClusterWatch>,
        ready: Arc<AtomicBool>,
    ) -> Result<Self, KafkaError> {
        // A group id is required by librdkafka but never joined: partitions are assigned.
        let group = format!("fp-relay-replies-{}", Uuid::new_v4());
        let kafka = settings.borrow().clone();
        let consumer_config = reply_consumer_config(&kafka, &group);
        let consumer = build(&consumer_config, &metrics, &watch)?;
        let admin_config = crate::kafka::admin_config(&kafka);
        Ok(Self {
            consumer,
            consumer_config,
            admin_config,
            watch,
            topic: fulfilment.reply_topic.clone(),
            create_topic: fulfilment.create_reply_topic,
            partitions: fulfilment.reply_topic_partitions,
            check_interval: kafka.probe_interval,
            correlator,
            metrics,
            ready,
            settings,
            group,
        })
    }

    /// Positions the consumer (retrying until the cluster answers), then delivers replies
    /// until `stop` is cancelled, rebuilding itself whenever the reply topic is lost.
    pub fn spawn(mut self, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            // The first time at the end (older replies are for nobody here); after a loss at
            // the beginning of the topic found then (see the module docs).
            let mut start = Offset::End;
            loop {
                let Some(assigned) = self.position_until_done(start, &stop).await else {
                    return;
                };
                start = Offset::Beginning;
                self.ready.store(true, Ordering::Release);
                tracing::info!(topic = %self.topic, partitions = assigned, "reply consumer positioned on every partition");
                match self.serve(assigned, &stop).await {
                    Served::Stopped => return,
                    Served::Reconfigured(positions) => {
                        tracing::info!(topic = %self.topic, "Kafka credentials changed; rebuilding the reply consumer with them");
                        let kafka = self.settings.borrow_and_update().clone();
                        self.consumer_config = reply_consumer_config(&kafka, &self.group);
                        self.admin_config = crate::kafka::admin_config(&kafka);
                        while let Err(error) = self.rebuild() {
                            tracing::error!(%error, "cannot build a new reply consumer; retrying");
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                            }
                        }
                        // Where the old one was: no reply is skipped or read twice.
                        if let Err(error) = self.consumer.assign(&positions) {
                            tracing::warn!(%error, "cannot resume the reply consumer where it was; positioning it again");
                            start = Offset::End;
                            continue;
                        }
                        self.ready.store(true, Ordering::Release);
                        continue;
                    }
                    Served::TopicLost(reason) => {
                        self.ready.store(false, Ordering::Release);
                        self.metrics.fulfilment_reply_consumer_rebuilds.inc();
                        tracing::warn!(topic = %self.topic, reason, "reply topic lost; rebuilding the reply consumer (/readyz answers 503 until it is positioned again)");
                        while let Err(error) = self.rebuild() {
                            tracing::error!(%error, "cannot build a new reply consumer; retrying");
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                            }
                        }
                    }
                }
            }
        })
    }

    /// Retries [`ReplyConsumer::position`] until it succeeds (`Some(partitions)`) or `stop`
    /// is cancelled (`None`). Logs the first failure of a series only.
    async fn position_until_done(&self, start: Offset, stop: &CancellationToken) -> Option<i32> {
        let mut logged = false;
        loop {
            match self.position(start).await {
                Ok(assigned) => return Some(assigned),
                Err(error) => {
                    if !logged {
                        tracing::warn!(topic = %self.topic, %error, "reply consumer not positioned yet; retrying every second");
                        logged = true;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                }
            }
        }
    }

    /// Hands replies to the correlator while [`ReplyConsumer::watch_topic`] checks the reply
    /// topic every `check_interval` beside it, never in its way.
    async fn serve(&self, assigned: i32, stop: &CancellationToken) -> Served {
        let mut settings = self.settings.clone();
        // Closed when no credentials come from files: nothing will ever change.
        let mut listening = true;
        let state = CheckState {
            assigned: AtomicI32::new(assigned),
            disturbed: AtomicBool::new(false),
        };
        let watching = self.watch_topic(&state);
        tokio::pin!(watching);
        // Rests (partitions paused: no fetch every few milliseconds) while no request has been
        // held for longer than a late reply is remembered; the first new hold wakes it, and
        // it reads on from where it stopped, before that request is even published.
        let mut paused = false;
        self.metrics.fulfilment_reply_consumer_resting.set(0);
        let mut rest_check = tokio::time::interval(REST_CHECK);
        rest_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Served::Stopped,
                reason = &mut watching => return Served::TopicLost(reason),
                changed = settings.changed(), if listening => match changed {
                    Ok(()) => {
                        if let Ok(positions) = self.consumer.position() {
                            return Served::Reconfigured(positions);
                        }
                    }
                    Err(_) => listening = false,
                },
                _ = rest_check.tick(), if !paused => {
                    if self.correlator.quiet_for() >= self.correlator.late_retention().max(MIN_QUIET) {
                        paused = self.set_paused(true);
                    }
                }
                _ = self.correlator.hold_began(), if paused => {
                    paused = !self.set_paused(false);
                }
                message = self.consumer.recv() => match message {
                    Ok(message) => self.handle(&message),
                    Err(error) => {
                        if !state.disturbed.swap(true, Ordering::AcqRel) && !self.watch.is_down() {
                            tracing::warn!(%error, "reply consumer error; checking the reply topic");
                        } else {
                            tracing::debug!(%error, "reply consumer error");
                        }
                    }
                },
            }
        }
    }

    /// Pauses (`true`) or resumes every assigned partition; whether it worked.
    fn set_paused(&self, pause: bool) -> bool {
        let done = self.consumer.assignment().and_then(|assignment| {
            if pause {
                self.consumer.pause(&assignment)
            } else {
                self.consumer.resume(&assignment)
            }
        });
        match done {
            Ok(()) => {
                tracing::debug!(topic = %self.topic, pause, "reply consumer rests or wakes");
                self.metrics
                    .fulfilment_reply_consumer_resting
                    .set(i64::from(pause));
                true
            }
            Err(error) => {
                tracing::debug!(topic = %self.topic, pause, %error, "cannot pause or resume the reply consumer");
                false
            }
        }
    }

    /// Checks the reply topic every `check_interval` until it is lost; returns why. Polled
    /// beside the receive loop, so a slow check (a broker away) delays no reply.
    async fn watch_topic(&self, state: &CheckState) -> &'static str {
        let mut check = tokio::time::interval(self.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        loop {
            check.tick().await;
            let assigned = state.assigned.load(Ordering::Acquire);
            let disturbed = state.disturbed.load(Ordering::Acquire);
            match self.check(assigned, disturbed).await {
                Check::Unknown => {}
                Check::Healthy { partitions } => {
                    state.assigned.store(partitions, Ordering::Release);
                    state.disturbed.store(false, Ordering::Release);
                }
                Check::Lost(reason) => return reason,
            }
        }
    }

    /// Compares the reply topic with what is assigned.
    async fn check(&self, assigned: i32, disturbed: bool) -> Check {
        let Ok(count) = self.partition_count().await else {
            return Check::Unknown;
        };
        if count == 0 {
            return Check::Lost("the reply topic no longer exists");
        }
        if count < assigned {
            return Check::Lost("the reply topic has fewer partitions than before");
        }
        if disturbed {
            match self.offsets_went_back(assigned).await {
                Ok(true) => return Check::Lost("the reply topic's offsets went back (recreated)"),
                Ok(false) => {}
                Err(_) => return Check::Unknown,
            }
        }
        match self.add_new_partitions(assigned, count) {
            Ok(()) => Check::Healthy { partitions: count },
            Err(error) => {
                tracing::warn!(%error, "cannot read the reply topic's new partitions");
                Check::Unknown
            }
        }
    }

    /// True when some partition's end is now before the position this consumer reached: the
    /// log this consumer was reading was replaced.
    async fn offsets_went_back(&self, assigned: i32) -> Result<bool, KafkaError> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        blocking(move || {
            let positions = consumer.position()?;
            for partition in 0..assigned {
                let Some(Offset::Offset(position)) = positions
                    .find_partition(&topic, partition)
                    .map(|entry| entry.offset())
                else {
                    continue;
                };
                let (_, high) = consumer.fetch_watermarks(&topic, partition, CALL_TIMEOUT)?;
                if high < position {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }

    /// Replaces the client with a fresh one that holds no state about the old topic.
    fn rebuild(&mut self) -> Result<(), KafkaError> {
        let fresh = build(&self.consumer_config, &self.metrics, &self.watch)?;
        let old = std::mem::replace(&mut self.consumer, fresh);
        // Destroying a librdkafka client joins its threads; never on an async worker.
        std::thread::spawn(move || drop(old));
        Ok(())
    }

    /// Assigns every partition of the reply topic at `start` (its current end, or its
    /// beginning). Returns the partition count.
    async fn position(&self, start: Offset) -> Result<i32, KafkaError> {
        let mut count = self.partition_count().await?;
        if count == 0 {
            if !self.create_topic {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
            self.create().await?;
            count = self.partition_count().await?;
            if count == 0 {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
        }
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        blocking(move || {
            let mut list = TopicPartitionList::new();
            for partition in 0..count {
                // Concrete offsets, so that readiness means "a reply written now is read".
                let (low, high) = consumer.fetch_watermarks(&topic, partition, CALL_TIMEOUT)?;
                let offset = if start == Offset::Beginning {
                    low
                } else {
                    high
                };
                list.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
            }
            consumer.assign(&list)?;
            Ok(count)
        })
        .await
    }

    /// Partitions of the reply topic; 0 when it does not exist.
    async fn partition_count(&self) -> Result<i32, KafkaError> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        blocking(move || {
            let metadata = consumer.fetch_metadata(Some(&topic), CALL_TIMEOUT)?;
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map_or(0, |t| t.partitions().len() as i32))
        })
        .await
    }

    async fn create(&self) -> Result<(), KafkaError> {
        let spec = crate::kafka::topics::NewTopicSpec {
            partitions: self.partitions,
            settings: Vec::new(),
        };
        crate::kafka::topics::create(
            &self.admin_config,
            &self.topic,
            &spec,
            &self.metrics,
            &self.watch,
        )
        .await
        .map(|_| ())
    }

    /// Partitions added to the reply topic after positioning are read from their beginning:
    /// every reply on them is newer than this consumer.
    fn add_new_partitions(&self, assigned: i32, count: i32) -> Result<(), KafkaError> {
        if count <= assigned {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for partition in assigned..count {
            list.add_partition_offset(&self.topic, partition, Offset::Beginning)?;
        }
        self.consumer.incremental_assign(&list)?;
        tracing::info!(topic = %self.topic, from = assigned, to = count, "reply topic grew; reading the new partitions");
        Ok(())
    }

    fn handle(&self, message: &BorrowedMessage<'_>) {
        let correlation_id = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == headers::CORRELATION_ID))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok());
        if correlation_id.is_some_and(crate::fulfilment::v2::is_v2) {
            // A v2 reply: no request of any replica's is held for it; the v2 marker acts on it.
            return;
        }
        let id = correlation_id.and_then(|v| Uuid::parse_str(v.trim()).ok());
        let reply = message
            .payload()
            .and_then(|p| serde_json::from_slice::<Reply>(p).ok());
        let (Some(id), Some(reply)) = (id, reply) else {
            self.metrics
                .fulfilment_replies_ignored
                .with_label_values(&["malformed"])
                .inc();
            // Never the value: it is somebody else's free text.
            tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                has_correlation_id = id.is_some(),
                "ignored a malformed fulfilment reply (needs header fp-correlation-id and a JSON value with outcome)"
            );
            return;
        };
        if let Some(reason) = self.correlator.deliver(id, reply).ignored_reason() {
            self.metrics
                .fulfilment_replies_ignored
                .with_label_values(&[reason])
                .inc();
            tracing::debug!(correlation_id = %id, reason, "ignored a fulfilment reply");
        }
    }
}

/// The reply consumer's settings: assigned partitions, never committed.
fn reply_consumer_config(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut config = consumer_config(kafka, group);
    // An offset out of range means the reply log moved; rereading old replies is harmless
    // (they are unmatched), skipping new ones is not.
    config.set("auto.offset.reset", "earliest");
    config
}

fn build(
    config: &ClientConfig,
    metrics: &Arc<Metrics>,
    watch: &Arc<ClusterWatch>,
) -> Result<Arc<StreamConsumer<RelayContext>>, KafkaError> {
    let context = RelayContext::new(metrics.clone(), watch.clone(), "reply-consumer");
    let consumer: StreamConsumer<RelayContext> = config.create_with_context(context)?;
    crate::kafka::aws::hand_first_token(config, consumer.client());
    Ok(Arc::new(consumer))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}
