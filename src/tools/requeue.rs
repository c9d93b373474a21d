//! `fp-relay spool requeue`: put the records of a spool's `quarantine.log` back into Kafka,
//! once (see [`crate::spool::requeue`]). It owns the directory while it runs, like `serve` and
//! `spool drain`: stop the relay that uses it first (or run it in the drain Job).

use crate::spool::{journal, requeue};
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
    let _owner =
        journal::take_ownership(&dir).map_err(|error| ToolError::Usage(error.to_string()))?;
    let publisher = crate::tools::publisher(&config)?;
    let done = requeue::requeue(&dir, &publisher, config.kafka.ack_timeout)
        .await
        .map_err(|error| ToolError::Usage(error.to_string()))?;
    let _ = tokio::task::spawn_blocking(move || publisher.flush(config.kafka.ack_timeout)).await;
    writeln!(
        out,
        "spool requeue: {} record(s) back in Kafka{}; {} holds no quarantine now",
        done.published,
        if done.already > 0 {
            format!(" ({} more by an earlier, interrupted run)", done.already)
        } else {
            String::new()
        },
        dir.display()
    )?;
    Ok(done)
}
