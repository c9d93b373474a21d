//! Where a reply's handling ends: on the dead-letter topic when it cannot be acted on, and in
//! the group's committed offsets once every reply up to it is settled.

use std::borrow::Cow;
use std::collections::BTreeMap;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::read::ReadReply;
use super::Marker;
use crate::firstpromoter::client::backoff;
use crate::kafka::record::OutboundRecord;

/// Header on a dead-lettered v2 reply: the commission FirstPromoter refused to mark.
pub const COMMISSION_ID_HEADER: &str = "fp-commission-id";
/// Dead-letter reason of a v2 reply whose correlation id no reply key signed.
pub const UNREQUESTED_REPLY: &str = "unrequested_reply";

impl Marker {
    /// Keeps a reply that cannot be acted on (its commission refused, given up on, or the reply
    /// malformed) on the dead-letter topic, retrying while Kafka cannot take it; false when
    /// stopped first.
    pub(super) async fn dead_letter(
        &self,
        commission: Option<u64>,
        reply: &ReadReply,
        reason: &str,
        stop: &CancellationToken,
    ) -> bool {
        let mut headers: Vec<(Cow<'static, str>, String)> = reply
            .headers
            .iter()
            .map(|(k, v)| (Cow::Owned(k.clone()), v.clone()))
            .collect();
        if let Some(commission) = commission {
            headers.push((COMMISSION_ID_HEADER.into(), commission.to_string()));
        }
        let record = OutboundRecord {
            topic: self.topic.clone(),
            key: reply.key.clone(),
            payload: reply.payload.clone(),
            headers,
        }
        .into_dead_letter(&self.dead_letter_topic, reason);
        let mut attempt = 0;
        loop {
            let deadline = Instant::now() + self.ack_timeout;
            match self.publisher.publish(&record, deadline).await {
                Ok(_) => {
                    self.metrics.dead_lettered.inc();
                    self.metrics.fulfilment_v2_dead_lettered.inc();
                    return true;
                }
                Err(error) => {
                    tracing::warn!(?commission, %error, "cannot dead-letter a v2 reply yet; retrying");
                }
            }
            let pause = backoff(self.retry_initial, self.retry_max, attempt);
            attempt += 1;
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Commits, per partition, the offset after the last reply of `batch`.
    pub(super) async fn commit(&self, batch: &[ReadReply]) -> Result<(), KafkaError> {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for reply in batch {
            let entry = next.entry(reply.partition).or_insert(reply.offset + 1);
            *entry = (*entry).max(reply.offset + 1);
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in next {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        }
        let consumer = self.consumer();
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }
}
