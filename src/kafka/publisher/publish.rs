//! The write paths: [`Publisher::publish`] (and its variants) waits for Kafka's
//! acknowledgement, [`Publisher::publish_or_handoff`] hands back a delivery still in flight,
//! [`Publisher::send`] returns at once; each write is enqueued, classified and counted here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;

use super::delivery::{Delivered, Handoff, PendingDelivery};
use super::error::PublishError;
use super::generation::{Generation, Route};
use super::Publisher;
use crate::kafka::classify::{classify, Class};
use crate::kafka::record::OutboundRecord;

/// Pause between attempts to enqueue while the producer's queue is full.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(10);

impl Publisher {
    /// Writes `record` and waits for Kafka's acknowledgement, until `deadline` at the latest.
    pub async fn publish(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
    ) -> Result<Delivered, PublishError> {
        self.publish_by(record, deadline, Route::ByLoad).await
    }

    /// [`Publisher::publish`] through the producer that sends at once, whatever the load: for
    /// a fulfilment request, whose HTTP request then waits for the fulfiller's reply.
    pub async fn publish_at_once(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
    ) -> Result<Delivered, PublishError> {
        self.publish_by(record, deadline, Route::AtOnce).await
    }

    async fn publish_by(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
        route: Route,
    ) -> Result<Delivered, PublishError> {
        match self.publish_or_handoff_by(record, deadline, route).await {
            Ok(delivered) => Ok(delivered),
            Err(Handoff::Failed(error)) => Err(error),
            // The record may still be delivered; the caller gave up on it.
            Err(Handoff::InFlight(pending)) => Err(pending.abandon()),
        }
    }

    /// Like [`Publisher::publish`], but when `deadline` passes while the record is still in
    /// flight, hands back the unfinished delivery so the caller can learn its fate later (the
    /// spool does: a record it took over must not be replayed if this attempt succeeds).
    pub async fn publish_or_handoff(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
    ) -> Result<Delivered, Handoff> {
        self.publish_or_handoff_by(record, deadline, Route::ByLoad)
            .await
    }

    async fn publish_or_handoff_by(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
        route: Route,
    ) -> Result<Delivered, Handoff> {
        let mut pending = match self.enqueue(record, deadline, route).await {
            Ok(pending) => pending,
            Err(error) => {
                // Enqueueing uses the current producer (classify already replaced a fatal one).
                self.observe(Err(&error), None, &self.current());
                return Err(Handoff::Failed(error));
            }
        };
        match tokio::time::timeout_at(deadline, &mut pending.delivery).await {
            Ok(result) => pending.resolve(result).map_err(Handoff::Failed),
            Err(_) => Err(Handoff::InFlight(pending)),
        }
    }

    /// Hands `record` to the producer (retrying while its queue is full until `deadline`) and
    /// returns its unfinished delivery, whose [`PendingDelivery::outcome`] is the final word
    /// (bounded by librdkafka's `message.timeout.ms`). Spool replay uses it to have many
    /// records in flight at once and never a second copy of any; every record sent this way
    /// takes the same producer, so a partition keeps the order they were sent in.
    pub async fn send(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
    ) -> Result<PendingDelivery, PublishError> {
        self.enqueue(record, deadline, Route::Ordered)
            .await
            .inspect_err(|error| {
                self.observe(Err(error), None, &self.current());
            })
    }

    /// Hands `record` to the producer, retrying while its queue is full until `deadline`.
    async fn enqueue(
        self: &Arc<Self>,
        record: &OutboundRecord,
        deadline: tokio::time::Instant,
        route: Route,
    ) -> Result<PendingDelivery, PublishError> {
        self.check_topic(&record.topic, deadline).await?;
        let mut generation = self.current();
        if generation.fatal_error().is_some() {
            generation = self.replace(&generation);
        }
        loop {
            let mut future_record = FutureRecord::<str, [u8]>::to(&record.topic)
                .payload(&record.payload[..])
                .headers(record.owned_headers());
            if let Some(key) = &record.key {
                future_record = future_record.key(key.as_str());
            }
            // Counted before the send, so writes racing in see each other.
            let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed);
            let (producer, batching) = generation.for_write(in_flight, route);
            match producer.send_result(future_record) {
                Ok(delivery) => {
                    self.writes[usize::from(batching)].inc();
                    return Ok(PendingDelivery {
                        publisher: self.clone(),
                        generation,
                        delivery,
                        started: Instant::now(),
                    });
                }
                Err((error, _)) => {
                    self.in_flight.fetch_sub(1, Ordering::Relaxed);
                    if error.rdkafka_error_code() != Some(RDKafkaErrorCode::QueueFull) {
                        return Err(self.classify(error, &generation));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(PublishError::QueueFull);
                    }
                    tokio::time::sleep(QUEUE_FULL_RETRY).await;
                }
            }
        }
    }

    /// Records the outcome of one write by `generation` in metrics and the stuck-producer
    /// watchdog; a late failure of an already-replaced producer never retires its successor.
    pub(super) fn observe(
        &self,
        result: Result<(), &PublishError>,
        started: Option<Instant>,
        generation: &Arc<Generation>,
    ) {
        if let Some(started) = started {
            self.metrics
                .kafka_produce_duration
                .observe(started.elapsed().as_secs_f64());
        }
        self.watch_for_stuck(result, generation);
        // Indexes of `produced`: ok, timeout, refused, error.
        let series = match result {
            Ok(_) => 0,
            Err(PublishError::Timeout) => 1,
            Err(PublishError::Refused(_)) => 2,
            Err(_) => 3,
        };
        self.produced[series].inc();
    }

    /// Turns a failure into a [`PublishError`] by its [`Class`] (see
    /// [`super::classify`](crate::kafka::classify)); a broken producer is replaced here,
    /// whatever the error that revealed it.
    pub(super) fn classify(&self, error: KafkaError, generation: &Arc<Generation>) -> PublishError {
        let class = classify(&error);
        if class == Class::Backpressure {
            return PublishError::QueueFull;
        }
        if class == Class::Fatal || generation.fatal_error().is_some() {
            self.replace(generation);
            return PublishError::Fatal(error);
        }
        match class {
            Class::Permanent => PublishError::Refused(error),
            _ if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut) => {
                PublishError::Timeout
            }
            _ => PublishError::Kafka(error),
        }
    }
}
