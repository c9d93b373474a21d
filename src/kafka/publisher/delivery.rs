//! What a write came to: where Kafka put the record ([`Delivered`]), or, when the caller's
//! deadline passed first, the delivery still in flight ([`Handoff`], [`PendingDelivery`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::error::KafkaError;
use rdkafka::producer::DeliveryFuture;

use super::error::PublishError;
use super::generation::Generation;
use super::Publisher;

/// Where Kafka put a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition written to.
    pub partition: i32,
    /// Offset within that partition.
    pub offset: i64,
}

/// A deadline passed before the delivery report came.
pub enum Handoff {
    /// The write failed: the record is not in Kafka.
    Failed(PublishError),
    /// The record is still in flight; [`PendingDelivery::outcome`] says how it ends.
    InFlight(PendingDelivery),
}

/// A record handed to the producer whose delivery report has not come yet; it counts as in
/// flight (for the choice of producer) until it is resolved or dropped.
pub struct PendingDelivery {
    pub(super) publisher: Arc<Publisher>,
    /// Keeps the producer that holds the record alive until its report comes.
    pub(super) generation: Arc<Generation>,
    pub(super) delivery: DeliveryFuture,
    pub(super) started: Instant,
}

impl PendingDelivery {
    /// Waits for the delivery report (bounded by librdkafka's `message.timeout.ms`).
    pub async fn outcome(mut self) -> Result<Delivered, PublishError> {
        let result = (&mut self.delivery).await;
        self.resolve(result)
    }

    pub(super) fn resolve(
        self,
        result: <DeliveryFuture as std::future::Future>::Output,
    ) -> Result<Delivered, PublishError> {
        let result = match result {
            // librdkafka reports a batch the broker answered DUPLICATE_SEQUENCE_NUMBER as
            // delivered, without an offset ("previous send succeeded but was not
            // acknowledged"). A broker that forgot the producer's state and handed its id to
            // another producer answers that for records it never wrote (the chaos run's seed 12,
            // tansu restarted empty): a 2xx on it lost the event. No offset, no acknowledgement:
            // the event is spooled or refused as in an outage (at worst a duplicate, never a
            // loss), and the producer, whose sequence the broker disputes, is replaced.
            Ok(Ok(delivery)) if delivery.offset < 0 => {
                tracing::warn!(
                    partition = delivery.partition,
                    "Kafka reported a write delivered without an offset (duplicate sequence number); not counted as acknowledged, replacing the producer"
                );
                self.publisher.replace(&self.generation);
                Err(PublishError::Unconfirmed)
            }
            Ok(Ok(delivery)) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((error, _))) => Err(self.publisher.classify(error, &self.generation)),
            Err(_) => Err(PublishError::Kafka(KafkaError::Canceled)),
        };
        self.publisher.observe(
            result.as_ref().map(|_| ()),
            Some(self.started),
            &self.generation,
        );
        result
    }

    /// Gives up waiting: counts the write as timed out for metrics and the watchdog.
    pub(super) fn abandon(self) -> PublishError {
        self.publisher.observe(
            Err(&PublishError::Timeout),
            Some(self.started),
            &self.generation,
        );
        PublishError::Timeout
    }
}

impl Drop for PendingDelivery {
    fn drop(&mut self) {
        self.publisher.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
