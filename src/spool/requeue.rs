//! `quarantine.log` back into Kafka, once. Replay keeps there what neither a record's topic
//! nor the dead-letter topic would take (a topic's size limit, an ACL); once the cause is
//! fixed, `fp-relay spool requeue` publishes each record to its topic again.
//!
//! Once, even when interrupted: the file is first renamed to `quarantine.requeuing` (a relay
//! that quarantines meanwhile starts a new quarantine.log), and after Kafka acknowledges each
//! record a done-marker for it is appended to that file, durably. A second run resumes with the
//! records that have no marker; the file is deleted when none is left.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use super::fault::Faults;
use super::journal::{self, Entry, Found};
use super::{from_spooled, QUARANTINE_FILE, QUARANTINE_REASON_HEADER};
use crate::kafka::publisher::{PublishError, Publisher};

/// The quarantine file while it is being requeued.
pub const REQUEUING_FILE: &str = "quarantine.requeuing";
/// Header on a requeued record: it came back from the spool's quarantine.
pub const REQUEUED_FROM: &str = "fp-requeued-from";

/// What a requeue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Requeued {
    /// Published now.
    pub published: usize,
    /// Published by an earlier, interrupted run.
    pub already: usize,
}

/// Why a requeue stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequeueError {
    #[error("cannot read or write the quarantine file: {0}")]
    Io(#[from] io::Error),
    #[error("Kafka did not take a quarantined record for {topic} ({published} published before it; run it again once fixed): {error}")]
    Kafka {
        topic: String,
        published: usize,
        error: PublishError,
    },
}

/// Publishes every record of the quarantine in `dir` that is not in Kafka yet (the caller owns
/// the directory), then deletes the quarantine. Each write is acknowledged within
/// `ack_timeout`.
pub async fn requeue(
    dir: &Path,
    publisher: &std::sync::Arc<Publisher>,
    ack_timeout: std::time::Duration,
) -> Result<Requeued, RequeueError> {
    let requeuing = dir.join(REQUEUING_FILE);
    let quarantine = dir.join(QUARANTINE_FILE);
    let faults = Faults::none();
    if !requeuing.exists() {
        if !quarantine.exists() {
            return Ok(Requeued::default());
        }
        std::fs::rename(&quarantine, &requeuing)?;
        journal::sync_dir(dir, &faults)?;
    }
    let mut events = Vec::new();
    let mut done = BTreeSet::new();
    journal::scan_file(&requeuing, 0, &faults, |found| match found {
        Found::Event { seq, location, .. } => events.push((seq, location)),
        Found::Done(seq) => {
            done.insert(seq);
        }
    })?;
    let mut result = Requeued::default();
    for (seq, location) in events {
        if done.contains(&seq) {
            result.already += 1;
            continue;
        }
        let mut record = from_spooled(journal::read_event_at(&requeuing, location)?);
        record
            .headers
            .retain(|(k, _)| k != QUARANTINE_REASON_HEADER);
        record
            .headers
            .push((REQUEUED_FROM.into(), QUARANTINE_FILE.to_owned()));
        let deadline = tokio::time::Instant::now() + ack_timeout;
        if let Err(error) = publisher.publish(&record, deadline).await {
            return Err(RequeueError::Kafka {
                topic: record.topic,
                published: result.published,
                error,
            });
        }
        journal::append_durably(&requeuing, &journal::encode(&Entry::Done(seq)), &faults)?;
        result.published += 1;
    }
    std::fs::remove_file(&requeuing)?;
    journal::sync_dir(dir, &faults)?;
    Ok(result)
}
