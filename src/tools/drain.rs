//! `fp-relay spool drain`: replay a spool directory into Kafka and exit. For a spool whose
//! relay will not come back: a replica scaled down (a Kubernetes Job or preStop hook on its
//! volume), a machine being retired. It uses the relay's own configuration (file, environment,
//! `--brokers`), so it reaches Kafka exactly as `serve` would, and the spool's own replay, so
//! order, dead letters and quarantine work as they do there. Each record is deleted once Kafka
//! has it; quarantined records, if any, are left for `fp-relay spool requeue`. A file it cannot
//! read (set aside, or an old journal) is kept, never deleted, and the drain exits 1 naming it.
//!
//! It owns the directory for its whole run (the lock `serve` takes too): beside a relay that
//! uses the directory it refuses at once, naming that process. Its deadline holds whatever
//! Kafka does: a broker that does not answer (frozen, not refusing) cannot keep it past
//! `--timeout`, and what is not acknowledged by then stays in the spool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::kafka::outage::ClusterWatch;
use crate::kafka::publisher::Publisher;
use crate::metrics::Metrics;
use crate::spool::{replay, Limits, Spool};
use crate::tools::ToolError;

/// What to drain, and how long to try.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainOptions {
    #[command(flatten)]
    pub spool: super::SpoolArgs,
    /// Give up (exit 1, nothing lost: the spool stays) if not drained within this long.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Records that were waiting when it started.
    pub records: usize,
}

/// Replays the spool until it is empty, then deletes its segments.
pub async fn run(options: &DrainOptions) -> Result<Drained, ToolError> {
    let (config, dir) = options.spool.load()?;
    if !dir.is_dir() {
        return Err(ToolError::Usage(format!(
            "{}: no spool directory there",
            dir.display()
        )));
    }
    let metrics = Arc::new(Metrics::new());
    let spool =
        Spool::open(&dir, Limits::none(), metrics.clone()).map_err(|error| match error {
            crate::spool::SpoolError::Owned(owned) => ToolError::Usage(owned.to_string()),
            other => ToolError::Usage(format!("{}: {other}", dir.display())),
        })?;
    let records = spool.pending();
    eprintln!(
        "spool drain: {records} record(s) in {} to replay to {}",
        dir.display(),
        config.kafka.brokers
    );
    let publisher = Arc::new(Publisher::new(
        crate::kafka::producer_configs(&config.kafka, config.spool.delivery_timeout),
        config.kafka.ack_timeout,
        metrics,
        Arc::new(ClusterWatch::default()),
    )?);
    // --timeout covers everything: the dedup load, the replay and the marks.
    let deadline = Instant::now() + options.timeout;
    let shared_dedup = crate::dedup::shared::for_command_until(
        &config,
        publisher.clone(),
        "spool drain",
        deadline,
    )
    .await;
    let stop = CancellationToken::new();
    let replaying = tokio::spawn(spool.clone().replay(
        replay::Replay {
            publisher: publisher.clone(),
            dead_letter_topic: config.kafka.dead_letter_topic.clone(),
            enqueue_timeout: config.kafka.ack_timeout,
            unknown_topic_wait: config.spool.unknown_topic_wait,
            shared_dedup: shared_dedup.clone(),
        },
        stop.clone(),
    ));
    while spool.pending() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    // The batch handed to the producer settles within what is left of the deadline (a moment
    // at least, to write the done-markers of what Kafka acknowledged), never later.
    let settle = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(500));
    let settled = tokio::time::timeout(settle, replaying).await.is_ok();
    let left = spool.pending();
    if left > 0 || !settled {
        // A producer whose broker does not answer can take minutes to be destroyed; the
        // process is about to end, and nothing it holds is acknowledged, so it is left as it
        // is rather than waited for.
        std::mem::forget(publisher);
        return Err(ToolError::Usage(format!(
            "{left} of {records} record(s) still spooled after {}; nothing was lost, run it again",
            humantime::format_duration(options.timeout)
        )));
    }
    let unreadable = spool.unreadable_files();
    let quarantined = spool.quarantined();
    drop(spool);
    if quarantined > 0 {
        eprintln!(
            "spool drain: {quarantined} record(s) no topic would take are kept in {}; once the cause is fixed, `fp-relay spool requeue --dir {}` puts them back",
            dir.display(),
            dir.display()
        );
    }
    let skipped = match &shared_dedup {
        Some(shared) => {
            shared
                .marks_written(deadline.max(Instant::now() + Duration::from_millis(500)))
                .await;
            format!(
                " ({} of them published by a relay already, not written again)",
                shared.suppressed()
            )
        }
        None => String::new(),
    };
    if unreadable > 0 {
        return Err(ToolError::Usage(format!(
            "{records} record(s) in Kafka{skipped}, but {unreadable} file(s) in {} could not be read (see the log above); they are kept, nothing of them deleted: fix the disk or permissions and run it again",
            dir.display()
        )));
    }
    eprintln!("spool drain: {records} record(s) in Kafka{skipped}; the spool is empty");
    Ok(Drained { records })
}
