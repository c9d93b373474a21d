//! Reconciliation (`[firstpromoter.reconcile]`, off by default): every `interval`, read what
//! FirstPromoter recorded of its deliveries to this relay within `window`, and export it.
//!
//! The relay can only count what reached it; FirstPromoter counts what it tried to send. A
//! delivery that failed for good (a DNS outage in front of the relay, a bad deploy, an expired
//! certificate) shows up here as `fp_relay_firstpromoter_failed_deliveries_total`, one log line
//! (event type, event id, response code, last error: never the payload) and the
//! `FpRelayFirstPromoterDeliveriesFailed` alert; `fp-relay firstpromoter recover` puts the
//! events in Kafka.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::client::{ApiClient, ApiError};
use super::points_here;
use super::webhooks::{Delivery, DeliveryStatus, Webhooks};
use crate::config::Config;
use crate::metrics::Metrics;

/// Most newly failed deliveries logged one by one in a round; the rest are summed up.
const MAX_LINES_PER_ROUND: usize = 20;

/// Longest `last_error` kept in a log line.
const MAX_ERROR_CHARS: usize = 200;

/// The statuses a delivery can have, each always exported (0 when none).
const STATUSES: &[&str] = &["pending", "delivered", "retrying", "failed"];

/// What one round found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    /// Subscriptions that deliver to this relay.
    pub subscriptions: usize,
    /// Deliveries in the window by status.
    pub by_status: BTreeMap<String, i64>,
    /// Age of the oldest undelivered one.
    pub oldest_undelivered: Option<Duration>,
}

/// `serve`'s reconciliation task.
pub struct Reconciler {
    api: Arc<ApiClient>,
    config: Config,
    metrics: Arc<Metrics>,
    /// Failed deliveries already counted and logged, with when they were created (forgotten
    /// once out of the window).
    seen_failed: HashMap<String, SystemTime>,
    /// Whether the last round failed, so that an outage logs once and its end once.
    failing: bool,
    /// Whether "no subscription points here" was said.
    said_none: bool,
    /// Whether "the list was cut short" was said (said again once it was read whole).
    said_cut_short: bool,
}

impl Reconciler {
    pub fn new(config: &Config, api: Arc<ApiClient>, metrics: Arc<Metrics>) -> Self {
        Self {
            api,
            config: config.clone(),
            metrics,
            seen_failed: HashMap::new(),
            failing: false,
            said_none: false,
            said_cut_short: false,
        }
    }

    /// Reconciles every `interval` until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let interval = self.config.firstpromoter.reconcile.interval;
        tracing::info!(interval = ?interval, window = ?self.config.firstpromoter.reconcile.window, "reconciling with FirstPromoter's delivery records");
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                outcome = self.round() => self.report(outcome),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    fn report(&mut self, outcome: Result<Tally, ApiError>) {
        match outcome {
            Ok(tally) => {
                self.metrics
                    .firstpromoter_reconcile_runs
                    .with_label_values(&["ok"])
                    .inc();
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                self.metrics
                    .firstpromoter_reconcile_last_success
                    .set(now.as_secs_f64());
                if self.failing {
                    tracing::info!("reconciliation reads FirstPromoter's delivery records again");
                    self.failing = false;
                }
                if tally.subscriptions == 0 && !self.said_none {
                    tracing::warn!(
                        path = %self.config.http.path,
                        webhook_url = self.config.firstpromoter.webhook_url.as_deref().map(|url| crate::config::masked_url(url, &self.config.http.path)).unwrap_or_default(),
                        "no FirstPromoter subscription delivers to this relay; `fp-relay firstpromoter subscribe` creates one"
                    );
                    self.said_none = true;
                }
            }
            Err(error) => {
                let label = error.label();
                self.metrics
                    .firstpromoter_reconcile_runs
                    .with_label_values(&[label])
                    .inc();
                if !self.failing {
                    tracing::warn!(%error, "reconciliation cannot read FirstPromoter's delivery records; the metrics keep their last values");
                    self.failing = true;
                }
            }
        }
    }

    /// One read of every subscription's recent deliveries.
    pub async fn round(&mut self) -> Result<Tally, ApiError> {
        let webhooks = Webhooks::new(&self.api);
        let window = self.config.firstpromoter.reconcile.window;
        let now = SystemTime::now();
        let since = now.checked_sub(window).unwrap_or(UNIX_EPOCH);
        let subscriptions: Vec<_> = webhooks
            .subscriptions()
            .await?
            .into_iter()
            .filter(|s| points_here(&s.url, &self.config))
            .collect();
        // Statuses and times only: the payloads are read past, never kept.
        let mut deliveries: Vec<(String, DeliveryStatus)> = Vec::new();
        let mut cut_short = Vec::new();
        for subscription in &subscriptions {
            let listed = webhooks.deliveries(&subscription.id, since).await?;
            cut_short.extend(listed.cut_short);
            for delivery in listed.items {
                deliveries.push((subscription.id.clone(), delivery));
            }
        }
        if !cut_short.is_empty() && !self.said_cut_short {
            tracing::warn!(
                cut_short = %cut_short.join("; "),
                "FirstPromoter's delivery list is longer than reconciliation reads; the metrics count part of the window (shorten firstpromoter.reconcile.window)"
            );
        }
        self.said_cut_short = !cut_short.is_empty();
        let tally = tally(&deliveries, subscriptions.len(), now);
        for status in STATUSES {
            let count = tally.by_status.get(*status).copied().unwrap_or(0);
            self.metrics
                .firstpromoter_deliveries
                .with_label_values(&[status])
                .set(count);
        }
        self.metrics
            .firstpromoter_oldest_undelivered_age
            .set(tally.oldest_undelivered.unwrap_or_default().as_secs_f64());
        self.note_failures(&deliveries, since);
        Ok(tally)
    }

    /// Counts and logs failed deliveries not seen before; forgets those out of the window.
    fn note_failures(&mut self, deliveries: &[(String, DeliveryStatus)], since: SystemTime) {
        self.seen_failed.retain(|_, created| *created >= since);
        let mut logged = 0;
        let mut more = 0;
        for (subscription, delivery) in deliveries {
            if delivery.status != "failed" {
                continue;
            }
            let key = format!("{subscription}/{}", delivery.id);
            if self.seen_failed.contains_key(&key) {
                continue;
            }
            self.seen_failed
                .insert(key, delivery.created().unwrap_or_else(SystemTime::now));
            self.metrics.firstpromoter_failed_deliveries.inc();
            if logged == MAX_LINES_PER_ROUND {
                more += 1;
                continue;
            }
            logged += 1;
            let last_error: String = delivery
                .last_error
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(MAX_ERROR_CHARS)
                .collect();
            tracing::warn!(
                subscription = %subscription,
                delivery = %delivery.id,
                event_type = delivery.event_type.as_deref().unwrap_or("unknown"),
                event_id = delivery.event_id.as_deref().unwrap_or("unknown"),
                response_code = delivery.response_code.map(i64::from).unwrap_or(-1),
                attempts = delivery.attempts.unwrap_or(0),
                %last_error,
                "FirstPromoter gave up delivering an event to the relay; `fp-relay firstpromoter recover` puts it in Kafka"
            );
        }
        if more > 0 {
            tracing::warn!(
                more,
                "more deliveries FirstPromoter gave up on; `fp-relay firstpromoter recover --dry-run` lists them"
            );
        }
    }
}

/// Counts by status and the oldest undelivered age of `deliveries`, as of `now`.
pub fn tally<P>(
    deliveries: &[(String, Delivery<P>)],
    subscriptions: usize,
    now: SystemTime,
) -> Tally {
    let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
    let mut oldest: Option<SystemTime> = None;
    for (_, delivery) in deliveries {
        let status = if STATUSES.contains(&delivery.status.as_str()) {
            delivery.status.as_str()
        } else {
            "other"
        };
        *by_status.entry(status.to_owned()).or_default() += 1;
        if delivery.is_undelivered() {
            if let Some(created) = delivery.created() {
                oldest = Some(oldest.map_or(created, |o| o.min(created)));
            }
        }
    }
    Tally {
        subscriptions,
        by_status,
        oldest_undelivered: oldest.map(|at| now.duration_since(at).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: u32, status: &str, created_at: &str) -> (String, DeliveryStatus) {
        (
            "1".to_owned(),
            serde_json::from_value(serde_json::json!({
                "id": id, "status": status, "created_at": created_at
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_tally_counts_statuses_and_ages_the_oldest_undelivered() {
        let now = humantime::parse_rfc3339("2026-11-30T12:00:00Z").unwrap();
        let deliveries = [
            delivery(1, "delivered", "2026-11-30T01:00:00Z"),
            delivery(2, "failed", "2026-11-30T09:00:00Z"),
            delivery(3, "retrying", "2026-11-30T11:00:00Z"),
            delivery(4, "pending", "2026-11-30T11:59:00Z"),
            delivery(5, "weird", "2026-11-30T00:00:00Z"),
        ];
        let tally = tally(&deliveries, 1, now);
        assert_eq!(tally.by_status["failed"], 1);
        assert_eq!(tally.by_status["other"], 1);
        assert_eq!(
            tally.oldest_undelivered,
            Some(Duration::from_secs(3 * 3600))
        );
        assert_eq!(
            super::tally(&deliveries[..1], 1, now).oldest_undelivered,
            None
        );
    }
}
