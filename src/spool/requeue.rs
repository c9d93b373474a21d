//! Quarantined records back into Kafka. Replay quarantines what neither a record's topic nor
//! the dead-letter topic would take (a topic's size limit, an ACL); once the cause is fixed,
//! `fp-relay spool requeue` publishes each record to its topic again, in id order.
//!
//! Each record is deleted (committed) right after Kafka acknowledges it, so a run that is
//! interrupted, or fails on one record, leaves exactly the records not yet published; a second
//! run publishes those. Only a record acknowledged in the instant before the process died can
//! be published twice (`fp-event-id` tells).

use std::sync::Arc;

use super::Spool;
use crate::kafka::publisher::{PublishError, Publisher};

/// Header on a requeued record: it came back from the spool's quarantine.
pub const REQUEUED_FROM: &str = "fp-requeued-from";

/// What a requeue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Requeued {
    /// Published now.
    pub published: usize,
}

/// Why a requeue stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequeueError {
    #[error("cannot read or write the spool: {0}")]
    Io(#[from] std::io::Error),
    #[error("Kafka did not take a quarantined record for {topic} ({published} published before it; run it again once fixed): {error}")]
    Kafka {
        topic: String,
        published: usize,
        error: PublishError,
    },
}

/// Publishes every quarantined record of `spool` (which the caller owns), deleting each once
/// Kafka has it. Each write is acknowledged within `ack_timeout`.
pub async fn requeue(
    spool: &Arc<Spool>,
    publisher: &Arc<Publisher>,
    ack_timeout: std::time::Duration,
) -> Result<Requeued, RequeueError> {
    let mut result = Requeued::default();
    let mut after = 0;
    loop {
        let batch = spool.quarantined_after(after, 64).await?;
        let Some(last) = batch.last() else {
            return Ok(result);
        };
        after = last.id;
        for stored in batch {
            let mut record = stored.record;
            record
                .headers
                .push((REQUEUED_FROM.into(), "quarantine".to_owned()));
            let deadline = tokio::time::Instant::now() + ack_timeout;
            if let Err(error) = publisher.publish(&record, deadline).await {
                return Err(RequeueError::Kafka {
                    topic: record.topic,
                    published: result.published,
                    error,
                });
            }
            spool.forget(stored.id).await?;
            result.published += 1;
        }
    }
}
