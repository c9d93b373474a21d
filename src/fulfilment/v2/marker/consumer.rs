//! The reply consumer's life: built in a consumer group, subscribed and run until stopped,
//! rebuilt (rejoining the group) when Kafka credentials change. Its loop reads a batch,
//! settles it and commits it, in that order.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::read::ReadReply;
use super::Marker;
use crate::config::KafkaConfig;
use crate::kafka::context::RelayContext;
use crate::kafka::outage::ClusterWatch;
use crate::metrics::Metrics;

/// Most replies handled (and committed) together.
const MAX_BATCH: usize = 100;
/// How long to wait for more replies once one arrived, so several can share a call.
const GATHER: Duration = Duration::from_millis(20);
/// Pause after a consumer error (the reply topic may not exist yet).
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// How often the assigned-partitions gauge is refreshed.
const ASSIGNMENT_CHECK: Duration = Duration::from_secs(1);
/// Consumer errors are logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A consumer of the v2 replies in `group`, built from `kafka`.
pub(super) fn build(
    kafka: &KafkaConfig,
    group: &str,
    metrics: &Arc<Metrics>,
    watch: &Arc<ClusterWatch>,
) -> Result<Arc<StreamConsumer<RelayContext>>, KafkaError> {
    let config = crate::kafka::group_consumer_config(kafka, group);
    let context = RelayContext::new(metrics.clone(), watch.clone(), "fulfilment-v2");
    let consumer: StreamConsumer<RelayContext> = config.create_with_context(context)?;
    crate::kafka::aws::hand_first_token(&config, consumer.client());
    Ok(Arc::new(consumer))
}

impl Marker {
    /// Reads replies until `stop` is cancelled; work not finished then is not committed and is
    /// picked up again by whichever replica reads the partition next.
    pub fn spawn(self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if let Err(error) = self.consumer().subscribe(&[&self.topic]) {
                tracing::error!(%error, topic = %self.topic, "cannot subscribe to the reply topic; v2 fulfilment is off");
                return;
            }
            tracing::info!(topic = %self.topic, endpoint = %self.api.endpoint(), "v2 fulfilment: acting on fulfilled replies");
            self.run(&stop).await;
            // Leaving the group blocks while librdkafka says goodbye.
            let consumer = self.consumer();
            drop(self);
            let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        })
    }

    async fn run(&self, stop: &CancellationToken) {
        let mut last_error_log: Option<Instant> = None;
        let mut tick = tokio::time::interval(ASSIGNMENT_CHECK);
        let mut settings = self.settings.clone();
        // Closed when no credentials come from files: nothing will ever change.
        let mut listening = true;
        loop {
            let consumer = self.consumer();
            let waiting = self.backlog.lock().expect("lock not poisoned").pop_front();
            let first = match waiting {
                Some(reply) => Ok(reply),
                None => tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        self.show_assignment();
                        continue;
                    }
                    changed = settings.changed(), if listening => {
                        match changed {
                            Ok(()) => {
                                let kafka = settings.borrow_and_update().clone();
                                self.rebuild(&kafka).await;
                            }
                            Err(_) => listening = false,
                        }
                        continue;
                    }
                    message = consumer.recv() => message.map(|m| ReadReply::from_message(&m)),
                },
            };
            let first = match first {
                Ok(reply) => reply,
                Err(error) => {
                    if last_error_log.is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL) {
                        tracing::warn!(%error, topic = %self.topic, "v2 fulfilment cannot read replies; retrying");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(ERROR_PAUSE) => continue,
                    }
                }
            };
            let mut batch = vec![first];
            {
                let mut backlog = self.backlog.lock().expect("lock not poisoned");
                while batch.len() < MAX_BATCH {
                    let Some(reply) = backlog.pop_front() else {
                        break;
                    };
                    batch.push(reply);
                }
            }
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout(GATHER, consumer.recv()).await {
                    Ok(Ok(message)) => batch.push(ReadReply::from_message(&message)),
                    _ => break,
                }
            }
            if !self.settle_batch(&batch, stop).await {
                return;
            }
            if let Err(error) = self.commit(&batch).await {
                // Another replica took the partition over and reads these replies again;
                // FirstPromoter will answer "already fulfilled" for what was marked here.
                tracing::warn!(%error, "v2 fulfilment could not commit its progress");
            }
        }
    }

    /// The consumer in use.
    pub(super) fn consumer(&self) -> Arc<StreamConsumer<RelayContext>> {
        self.consumer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the consumer with one built from `kafka` (new credentials): it joins the group
    /// again, and replies not committed yet are read again by whoever gets their partition.
    async fn rebuild(&self, kafka: &KafkaConfig) {
        let fresh = match build(kafka, &self.group, &self.metrics, &self.watch) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(%error, "cannot build the v2 reply consumer with the new Kafka credentials; keeping the old one");
                return;
            }
        };
        if let Err(error) = fresh.subscribe(&[&self.topic]) {
            tracing::error!(%error, "cannot subscribe the rebuilt v2 reply consumer; keeping the old one");
            return;
        }
        tracing::info!("Kafka credentials changed; the v2 reply consumer was rebuilt with them");
        let old = std::mem::replace(
            &mut *self.consumer.write().unwrap_or_else(|p| p.into_inner()),
            fresh,
        );
        // Leaving the group blocks while librdkafka says goodbye.
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
    }

    /// How many reply partitions this replica reads now (0 while the group rebalances).
    fn show_assignment(&self) {
        let assigned = self.consumer().assignment().map_or(0, |list| list.count());
        self.metrics
            .fulfilment_v2_assigned_partitions
            .set(i64::try_from(assigned).unwrap_or(i64::MAX));
    }
}
