//! The reply consumer: every replica reads every partition of the reply topic, from the end,
//! without a consumer group or commits, and hands each reply to the correlator by id.
//!
//! Why no group: replies for a replica's held requests may land on any partition, and a group
//! would give each partition to one replica only. Reading everything costs a little bandwidth
//! (replies are small) and makes any number of replicas work with no coordination.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::correlator::{Correlator, Reply};
use crate::config::{FulfilmentConfig, KafkaConfig};
use crate::kafka::consumer_config;
use crate::kafka::context::RelayContext;
use crate::kafka::record::headers;
use crate::metrics::Metrics;

/// Timeout of each metadata, watermark and admin call made while positioning.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between positioning attempts while the cluster is unreachable.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often the consumer looks for partitions added to the reply topic.
const PARTITION_REFRESH: Duration = Duration::from_secs(30);

/// Everything the consumer task needs.
pub struct ReplyConsumer {
    consumer: Arc<StreamConsumer<RelayContext>>,
    /// Settings for creating the reply topic; the same client properties as the consumer.
    admin_config: rdkafka::ClientConfig,
    topic: String,
    create_topic: bool,
    partitions: i32,
    correlator: Arc<Correlator>,
    metrics: Arc<Metrics>,
    /// Set once every partition is assigned at a concrete offset; drives `/readyz`.
    ready: Arc<AtomicBool>,
}

impl ReplyConsumer {
    /// Builds the consumer; nothing talks to the cluster until [`ReplyConsumer::spawn`].
    pub fn new(
        kafka: &KafkaConfig,
        fulfilment: &FulfilmentConfig,
        correlator: Arc<Correlator>,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
    ) -> Result<Self, KafkaError> {
        // A group id is required by librdkafka but never joined: partitions are assigned.
        let group = format!("fp-relay-replies-{}", Uuid::new_v4());
        let mut config = consumer_config(kafka, &group);
        // An offset out of range means the reply log moved; rereading old replies is harmless
        // (they are unmatched), skipping new ones is not.
        config.set("auto.offset.reset", "earliest");
        let consumer =
            config.create_with_context(RelayContext::new(metrics.clone(), "reply-consumer"))?;
        let mut admin_config = rdkafka::ClientConfig::new();
        for (key, value) in &kafka.properties {
            admin_config.set(key, value);
        }
        admin_config.set("bootstrap.servers", &kafka.brokers);
        Ok(Self {
            consumer: Arc::new(consumer),
            admin_config,
            topic: fulfilment.reply_topic.clone(),
            create_topic: fulfilment.create_reply_topic,
            partitions: fulfilment.reply_topic_partitions,
            correlator,
            metrics,
            ready,
        })
    }

    /// Positions the consumer (retrying until the cluster answers), then delivers replies
    /// until `stop` is cancelled.
    pub fn spawn(self, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut assigned = loop {
                match self.position().await {
                    Ok(assigned) => break assigned,
                    Err(error) => {
                        tracing::warn!(topic = %self.topic, %error, "reply consumer not positioned yet; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(RETRY_PAUSE) => {}
                        }
                    }
                }
            };
            self.ready.store(true, Ordering::Release);
            tracing::info!(topic = %self.topic, partitions = assigned, "reply consumer positioned at the end of every partition");
            let mut refresh = tokio::time::interval(PARTITION_REFRESH);
            refresh.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    message = self.consumer.recv() => match message {
                        Ok(message) => self.handle(&message),
                        Err(error) => tracing::warn!(%error, "reply consumer error"),
                    },
                    _ = refresh.tick() => match self.add_new_partitions(assigned).await {
                        Ok(count) => assigned = count,
                        Err(error) => tracing::warn!(%error, "cannot refresh reply topic partitions"),
                    },
                }
            }
        })
    }

    /// Assigns every partition of the reply topic at its current end. Returns the partition count.
    async fn position(&self) -> Result<i32, KafkaError> {
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
                let (_, high) = consumer.fetch_watermarks(&topic, partition, CALL_TIMEOUT)?;
                list.add_partition_offset(&topic, partition, Offset::Offset(high))?;
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
        let admin: AdminClient<DefaultClientContext> = self.admin_config.create()?;
        let new_topic = NewTopic::new(&self.topic, self.partitions, TopicReplication::Fixed(-1));
        let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
        for result in admin.create_topics([&new_topic], &options).await? {
            match result {
                Ok(_) => {
                    tracing::info!(topic = %self.topic, partitions = self.partitions, "created the reply topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(KafkaError::AdminOp(code)),
            }
        }
        Ok(())
    }

    /// Partitions added to the reply topic after start-up are read from their beginning: every
    /// reply on them is newer than this consumer.
    async fn add_new_partitions(&self, assigned: i32) -> Result<i32, KafkaError> {
        let count = self.partition_count().await?;
        if count <= assigned {
            return Ok(assigned);
        }
        let mut list = TopicPartitionList::new();
        for partition in assigned..count {
            list.add_partition_offset(&self.topic, partition, Offset::Beginning)?;
        }
        self.consumer.incremental_assign(&list)?;
        tracing::info!(topic = %self.topic, from = assigned, to = count, "reply topic grew; reading the new partitions");
        Ok(count)
    }

    fn handle(&self, message: &BorrowedMessage<'_>) {
        let id = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == headers::CORRELATION_ID))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| Uuid::parse_str(v.trim()).ok());
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}
