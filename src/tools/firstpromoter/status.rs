//! `fp-relay firstpromoter status`: the subscriptions and their deliveries by status.

use std::io::Write;
use std::time::{Duration, SystemTime};

use super::{api_error, load, StatusOptions};
use crate::config::masked_url;
use crate::firstpromoter::points_here;
use crate::firstpromoter::webhooks::{DeliveryStatus, Webhooks};
use crate::tools::ToolError;

/// Prints the subscriptions and their deliveries by status over `--since`.
pub async fn status(options: &StatusOptions, out: &mut impl Write) -> Result<(), ToolError> {
    let (config, client) = load("status", &options.api, None)?;
    let webhooks = Webhooks::new(&client);
    let subscriptions = webhooks.subscriptions().await.map_err(api_error)?;
    if subscriptions.is_empty() {
        writeln!(
            out,
            "no webhook subscriptions; `fp-relay firstpromoter subscribe --url <relay URL>` creates one"
        )?;
        return Ok(());
    }
    let since = SystemTime::now() - options.since;
    for subscription in &subscriptions {
        let here = points_here(&subscription.url, &config);
        writeln!(
            out,
            "subscription {} {}{}: {} event types, timeout {}, max_retries {}{}",
            subscription.id,
            masked_url(&subscription.url, &config.http.path),
            if here { " (this relay)" } else { "" },
            subscription.event_types.len(),
            subscription
                .timeout
                .map_or("unset".to_owned(), |t| format!("{t} s")),
            subscription
                .max_retries
                .map_or("unset".to_owned(), |r| r.to_string()),
            if subscription.active == Some(false) {
                ", PAUSED"
            } else {
                ""
            }
        )?;
        if !here {
            continue;
        }
        let listed = webhooks
            .deliveries::<crate::firstpromoter::webhooks::NoPayload>(&subscription.id, since)
            .await
            .map_err(api_error)?;
        if let Some(why) = &listed.cut_short {
            writeln!(out, "  warning: {why}")?;
        }
        let tagged: Vec<(String, DeliveryStatus)> = listed
            .items
            .into_iter()
            .map(|d| (subscription.id.clone(), d))
            .collect();
        let tally = crate::firstpromoter::reconcile::tally(&tagged, 1, SystemTime::now());
        let counts: Vec<String> = tally
            .by_status
            .iter()
            .map(|(status, count)| format!("{status} {count}"))
            .collect();
        writeln!(
            out,
            "  deliveries in the last {}: {}",
            humantime::format_duration(options.since),
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(", ")
            }
        )?;
        if let Some(age) = tally.oldest_undelivered {
            writeln!(
                out,
                "  oldest undelivered: {} ago",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            )?;
        }
        let failed = tally.by_status.get("failed").copied().unwrap_or(0);
        if failed > 0 {
            writeln!(
                out,
                "  {failed} failed: `fp-relay firstpromoter recover --since {}` puts them in Kafka",
                humantime::format_duration(options.since)
            )?;
        }
    }
    Ok(())
}
