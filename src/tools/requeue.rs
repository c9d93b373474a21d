//! `fp-relay spool requeue`: put a spool's quarantined records back into Kafka, once (see
//! [`crate::spool::requeue`]). It owns the directory while it runs, like `serve` and
//! `spool drain`: stop the relay that uses it first (or run it in the drain Job).

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::spool::{requeue, Limits, Spool};
use crate::tools::ToolError;

/// Which spool, and how to reach Kafka.
#[derive(Debug, Clone, clap::Args)]
pub struct RequeueOptions {
    #[command(flatten)]
    pub spool: super::SpoolArgs,
}

/// Requeues the quarantine; what it did, said on `out`.
pub async fn run(
    options: &RequeueOptions,
    out: &mut impl std::io::Write,
) -> Result<requeue::Requeued, ToolError> {
    let (config, dir) = options.spool.load()?;
    if !dir.is_dir() {
        return Err(ToolError::Usage(format!(
            "{}: no spool directory there",
            dir.display()
        )));
    }
    let spool = Spool::open(&dir, Limits::none(), Arc::new(Metrics::new()))
        .map_err(|error| ToolError::Usage(format!("{}: {error}", dir.display())))?;
    let publisher = crate::tools::publisher(&config)?;
    let done = requeue::requeue(&spool, &publisher, config.kafka.ack_timeout)
        .await
        .map_err(|error| ToolError::Usage(error.to_string()))?;
    let _ = tokio::task::spawn_blocking(move || publisher.flush(config.kafka.ack_timeout)).await;
    let unreadable = spool.unreadable_files();
    if unreadable > 0 {
        return Err(ToolError::Usage(format!(
            "{} record(s) back in Kafka, but {unreadable} file(s) in {} could not be read (see the log above); they are kept, nothing of them deleted: fix the disk or permissions and run it again",
            done.published,
            dir.display()
        )));
    }
    writeln!(
        out,
        "spool requeue: {} record(s) back in Kafka; {} holds no quarantined record now",
        done.published,
        dir.display()
    )?;
    Ok(done)
}
