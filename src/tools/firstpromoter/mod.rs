//! `fp-relay firstpromoter subscribe|status|recover`: set up, watch and repair the v2 webhook
//! subscription through FirstPromoter's API, with the relay's own configuration (file,
//! `FP_RELAY_*` environment), so that what FirstPromoter sends is what the relay checks.

use std::collections::{BTreeMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{check_webhook_url, Config, MASK};
use crate::firstpromoter::client::{ApiClient, ApiError};
use crate::firstpromoter::webhooks::{Delivery, Subscription, Webhooks};
use crate::firstpromoter::{points_here, same_url};
use crate::kafka::outage::ClusterWatch;
use crate::kafka::publisher::Publisher;
use crate::kafka::record::{headers, OutboundRecord, Received};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::tools::ToolError;

/// Header on a recovered record: which delivery record of FirstPromoter's it came from.
pub const RECOVERED_FROM: &str = "fp-recovered-from";

/// Most retries FirstPromoter makes of a delivery (its API's maximum).
const MAX_RETRIES: u64 = 10;

/// Seconds added to the relay's own deadline for FirstPromoter's `timeout`.
const TIMEOUT_MARGIN_SECS: u64 = 5;

/// What `subscribe`, `status` and `recover` share.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiOptions {
    /// The relay's TOML configuration: [firstpromoter] API settings, [auth] credentials,
    /// [kafka] topics. FP_RELAY_* variables apply as for `serve`
    /// (FP_RELAY_FIRSTPROMOTER_API_KEY, FP_RELAY_FIRSTPROMOTER_ACCOUNT_ID).
    #[arg(long, short, env = "FP_RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `fp-relay firstpromoter subscribe`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubscribeOptions {
    #[command(flatten)]
    pub api: ApiOptions,
    /// The public https URL of the relay's webhook path, as FirstPromoter will call it
    /// [default: firstpromoter.webhook_url].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Print the change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `fp-relay firstpromoter status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusOptions {
    #[command(flatten)]
    pub api: ApiOptions,
    /// How far back deliveries are counted.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub since: Duration,
}

/// `fp-relay firstpromoter recover`.
#[derive(Debug, Clone, clap::Args)]
pub struct RecoverOptions {
    #[command(flatten)]
    pub api: ApiOptions,
    /// Kafka bootstrap servers (overrides the configuration).
    #[arg(long, value_name = "LIST")]
    pub brokers: Option<String>,
    /// Failed deliveries created within this long ago.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// Ask FirstPromoter to send each failed delivery again (it goes through the relay like
    /// any webhook, and FirstPromoter's record turns `delivered`); where it refuses
    /// (max_retries spent: 422), publish the recorded payload instead.
    #[arg(long)]
    pub retry_delivery: bool,
    /// List the failed deliveries and what would be done; publish nothing, ask nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What a recovery did, by what happened to each failed delivery.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Published from the recorded payload.
    pub published: usize,
    /// Sent again by FirstPromoter at our request.
    pub retried: usize,
    /// Its event id is on its topic already (a relay answered after FirstPromoter gave up, or
    /// an earlier run).
    pub already_in_kafka: usize,
    /// Left alone, with why.
    pub skipped: BTreeMap<String, usize>,
}

/// The configuration and API client every subcommand (`command`) starts from.
fn load(
    command: &str,
    options: &ApiOptions,
    brokers: Option<String>,
) -> Result<(Config, ApiClient), ToolError> {
    let config = super::relay_config(options.config.as_deref(), brokers)?;
    config.validate_firstpromoter_api(&format!("for `fp-relay firstpromoter {command}`"))?;
    let client =
        ApiClient::new(&config.firstpromoter, None).map_err(|e| ToolError::Usage(e.to_string()))?;
    Ok((config, client))
}

fn api_error(error: ApiError) -> ToolError {
    ToolError::Usage(error.to_string())
}

/// How FirstPromoter should present the relay's credential.
#[derive(Debug, Clone, PartialEq)]
enum Credential {
    /// A custom header and its value.
    Header(String, String),
    /// HTTP Basic.
    Basic(String, String),
}

impl Credential {
    /// The first credential the relay accepts that a v2 subscription can send: a shared token
    /// (`auth.tokens`, in `auth.token_header`), else an `auth.basic` user.
    fn of(config: &Config) -> Result<Self, ToolError> {
        let auth = &config.auth;
        if let Some(token) = auth.tokens.first() {
            let header = auth.token_header.to_ascii_lowercase();
            return Ok(if header == "authorization" {
                Self::Header("Authorization".to_owned(), format!("Bearer {token}"))
            } else {
                Self::Header(auth.token_header.clone(), token.clone())
            });
        }
        if let Some((user, password)) = auth.basic.iter().next() {
            return Ok(Self::Basic(user.clone(), password.clone()));
        }
        Err(ToolError::Usage(
            "auth: the relay checks no credential a v2 subscription can send; set auth.tokens \
             (sent as a custom header) or auth.basic (FP_RELAY_AUTH_TOKENS='[\"<token>\"]')"
                .to_owned(),
        ))
    }

    fn describe(&self) -> String {
        match self {
            Self::Header(name, _) => format!("custom header {name}"),
            Self::Basic(user, _) => format!("HTTP Basic as {user}"),
        }
    }
}

/// FirstPromoter's `timeout` for the relay: its longest answer (`kafka.ack_timeout` bounds
/// everything after the request head) plus a margin, within FirstPromoter's 1-120 s.
pub fn subscription_timeout(config: &Config) -> u64 {
    let deadline = config.kafka.ack_timeout.as_secs_f64().ceil() as u64;
    (deadline + TIMEOUT_MARGIN_SECS).clamp(1, 120)
}

/// Creates or updates the subscription for `--url`; what it did goes to `out`.
pub async fn subscribe(options: &SubscribeOptions, out: &mut impl Write) -> Result<(), ToolError> {
    let (config, client) = load("subscribe", &options.api, None)?;
    let url = options
        .url
        .clone()
        .or_else(|| config.firstpromoter.webhook_url.clone())
        .ok_or_else(|| {
            ToolError::Usage(
                "--url: give the relay's public webhook URL (or set firstpromoter.webhook_url)"
                    .to_owned(),
            )
        })?;
    check_webhook_url("--url", &url).map_err(|e| ToolError::Usage(e.to_string()))?;
    let credential = Credential::of(&config)?;
    let webhooks = Webhooks::new(&client);
    let event_types = webhooks.event_types().await.map_err(api_error)?;
    if event_types.is_empty() {
        return Err(ToolError::Usage(
            "FirstPromoter lists no event types; nothing to subscribe to".to_owned(),
        ));
    }
    let existing = webhooks
        .subscriptions()
        .await
        .map_err(api_error)?
        .into_iter()
        .find(|s| same_url(&s.url, &url));
    let timeout = subscription_timeout(&config);
    let wanted = Wanted {
        url: &url,
        event_types: &event_types,
        timeout,
        credential: &credential,
    };
    let changes = wanted.changes(existing.as_ref());
    let body = wanted.body(existing.as_ref());
    let verb = if options.dry_run { "would" } else { "will" };
    if !points_here(&url, &config) && config.firstpromoter.webhook_url.is_none() {
        writeln!(
            out,
            "note: {url} does not end in http.path ({}); fine behind a proxy that rewrites it",
            config.http.path
        )?;
    }
    match &existing {
        None => writeln!(
            out,
            "{} create a subscription for {url}",
            if options.dry_run { "would" } else { "creating" }
        )?,
        Some(found) if changes.is_empty() => {
            writeln!(out, "subscription {} for {url} is up to date", found.id)?;
        }
        Some(found) => writeln!(out, "subscription {} for {url} {verb} change:", found.id)?,
    }
    for change in &changes {
        writeln!(out, "  {change}")?;
    }
    let subscription = if options.dry_run {
        None
    } else {
        match &existing {
            None => Some(webhooks.create(&body).await.map_err(api_error)?),
            Some(found) if !changes.is_empty() => {
                Some(webhooks.update(&found.id, &body).await.map_err(api_error)?)
            }
            Some(_) => None,
        }
    };
    if let Some(subscription) = subscription {
        writeln!(
            out,
            "{} subscription {}: {} event types, credential as {}, timeout {timeout} s, \
             max_retries {MAX_RETRIES}",
            if existing.is_some() {
                "updated"
            } else {
                "created"
            },
            subscription.id,
            event_types.len(),
            credential.describe()
        )?;
    }
    Ok(())
}

/// What the subscription should say.
struct Wanted<'a> {
    url: &'a str,
    event_types: &'a [String],
    timeout: u64,
    credential: &'a Credential,
}

impl Wanted<'_> {
    /// The body of the create or update call; an update keeps the subscription's campaign
    /// filter, description and other custom headers.
    fn body(&self, existing: Option<&Subscription>) -> serde_json::Value {
        let mut headers = existing.and_then(|s| s.headers.clone()).unwrap_or_default();
        let mut body = serde_json::json!({
            "url": self.url,
            "event_types": self.event_types,
            "active": true,
            "timeout": self.timeout,
            "max_retries": MAX_RETRIES,
        });
        match self.credential {
            Credential::Header(name, value) => {
                headers.retain(|k, _| !k.eq_ignore_ascii_case(name));
                headers.insert(name.clone(), value.clone().into());
            }
            Credential::Basic(user, password) => {
                body["basic_auth_user"] = user.clone().into();
                body["basic_auth_password"] = password.clone().into();
            }
        }
        body["headers"] = headers.into();
        if existing.is_none() {
            body["description"] = "fp-relay: FirstPromoter webhooks into Kafka".into();
            body["campaign_ids"] = serde_json::json!([1]);
        }
        body
    }

    /// What differs, one line each, secrets masked; empty when nothing does.
    fn changes(&self, existing: Option<&Subscription>) -> Vec<String> {
        let mut changes = Vec::new();
        let Some(found) = existing else {
            changes.push(format!("event_types: all {}", self.event_types.len()));
            changes.push(format!("credential: {}", self.credential.describe()));
            changes.push(format!("timeout: {} s", self.timeout));
            changes.push(format!("max_retries: {MAX_RETRIES}"));
            return changes;
        };
        let have: HashSet<&String> = found.event_types.iter().collect();
        let missing: Vec<&str> = self
            .event_types
            .iter()
            .filter(|t| !have.contains(t))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            changes.push(format!(
                "event_types: + {} ({})",
                missing.len(),
                missing.join(", ")
            ));
        }
        match self.credential {
            Credential::Header(name, value) => {
                let sent = found.headers.as_ref().and_then(|h| {
                    h.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .and_then(|(_, v)| v.as_str())
                });
                if sent != Some(value.as_str()) {
                    changes.push(format!("credential: custom header {name} = {MASK}"));
                }
            }
            // The password is write-only: always sent again.
            Credential::Basic(user, _) => {
                changes.push(format!("credential: HTTP Basic as {user}, password {MASK}"))
            }
        }
        if found.timeout != Some(self.timeout) {
            changes.push(format!(
                "timeout: {} -> {} s",
                found
                    .timeout
                    .map_or("unset".to_owned(), |t| format!("{t} s")),
                self.timeout
            ));
        }
        if found.max_retries != Some(MAX_RETRIES) {
            changes.push(format!(
                "max_retries: {} -> {MAX_RETRIES}",
                found
                    .max_retries
                    .map_or("unset".to_owned(), |r| r.to_string())
            ));
        }
        if found.active == Some(false) {
            changes.push("active: false -> true".to_owned());
        }
        changes
    }
}

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
            subscription.url,
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
        let deliveries = webhooks
            .deliveries(&subscription.id, since)
            .await
            .map_err(api_error)?;
        let tagged: Vec<_> = deliveries
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

/// One failed delivery and what recovery makes of it.
struct Failed {
    subscription: String,
    delivery: Delivery,
}

/// Recovers every failed delivery of the subscriptions pointing at this relay; a line per
/// delivery on `out`, progress on stderr when it is a terminal, the summary last.
pub async fn recover(
    options: &RecoverOptions,
    out: &mut impl Write,
) -> Result<Recovered, ToolError> {
    let (config, client) = load("recover", &options.api, options.brokers.clone())?;
    let webhooks = Webhooks::new(&client);
    let since = SystemTime::now() - options.since;
    let subscriptions: Vec<Subscription> = webhooks
        .subscriptions()
        .await
        .map_err(api_error)?
        .into_iter()
        .filter(|s| points_here(&s.url, &config))
        .collect();
    if subscriptions.is_empty() {
        return Err(ToolError::Usage(format!(
            "no subscription delivers to this relay (firstpromoter.webhook_url {:?}, http.path {}); \
             `fp-relay firstpromoter status` lists them",
            config.firstpromoter.webhook_url, config.http.path
        )));
    }
    let mut failed = Vec::new();
    for subscription in &subscriptions {
        for delivery in webhooks
            .deliveries(&subscription.id, since)
            .await
            .map_err(api_error)?
        {
            if delivery.status == "failed" {
                failed.push(Failed {
                    subscription: subscription.id.clone(),
                    delivery,
                });
            }
        }
    }
    // Oldest first, as FirstPromoter sent them.
    failed.sort_by_key(|f| f.delivery.created());
    writeln!(
        out,
        "{} failed deliveries since {}",
        failed.len(),
        humantime::format_rfc3339_seconds(since)
    )?;
    let mut summary = Recovered::default();
    if failed.is_empty() {
        return Ok(summary);
    }
    let pipeline = Pipeline::new(&config);
    let publisher = Arc::new(Publisher::new(
        crate::kafka::producer_config(&config.kafka, config.kafka.ack_timeout),
        config.kafka.ack_timeout,
        Arc::new(Metrics::new()),
        Arc::new(ClusterWatch::default()),
    )?);
    // Event ids already on each topic, read once per topic from a little before `since`.
    let mut in_kafka: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    let progress = std::io::stderr().is_terminal();
    let total = failed.len();
    for (done, item) in failed.iter().enumerate() {
        if progress {
            eprint!("\rrecovering {}/{total}", done + 1);
        }
        let label = format!(
            "delivery {}/{} {} {}",
            item.subscription,
            item.delivery.id,
            item.delivery.event_type.as_deref().unwrap_or("unknown"),
            item.delivery.event_id.as_deref().unwrap_or("(no event id)")
        );
        let prepared = match prepare(&pipeline, &item.delivery) {
            Ok(prepared) => prepared,
            Err(why) => {
                writeln!(out, "skip    {label}: {why}")?;
                *summary.skipped.entry(why).or_default() += 1;
                continue;
            }
        };
        let topic = prepared.record.topic.clone();
        if !in_kafka.contains_key(&topic) {
            let ids = event_ids_on(&config, &topic, since - Duration::from_secs(3600)).await?;
            in_kafka.insert(topic.clone(), ids);
        }
        let seen = in_kafka.get_mut(&topic).expect("inserted above");
        let event_id = prepared.record.header(headers::EVENT_ID).map(str::to_owned);
        if let Some(id) = &event_id {
            if seen.contains(id) {
                writeln!(out, "in Kafka {label}: already on {topic}")?;
                summary.already_in_kafka += 1;
                continue;
            }
        }
        if options.dry_run {
            let how = if options.retry_delivery {
                "ask FirstPromoter to retry"
            } else {
                "publish"
            };
            writeln!(out, "would   {label}: {how} to {topic}")?;
            continue;
        }
        if options.retry_delivery {
            match webhooks
                .retry_delivery(&item.subscription, &item.delivery.id)
                .await
            {
                Ok(()) => {
                    writeln!(out, "retried {label}: FirstPromoter sends it again")?;
                    summary.retried += 1;
                    if let Some(id) = event_id {
                        seen.insert(id);
                    }
                    continue;
                }
                // max_retries spent: FirstPromoter will not send it; the payload is here.
                Err(ApiError::Rejected { status: 422, .. }) => {}
                Err(error) => {
                    let why = format!("retry_delivery failed: {error}");
                    writeln!(out, "skip    {label}: {why}")?;
                    *summary
                        .skipped
                        .entry("retry_delivery failed".to_owned())
                        .or_default() += 1;
                    continue;
                }
            }
        }
        let mut records = vec![prepared.record];
        records[0].headers.push((
            RECOVERED_FROM.into(),
            format!(
                "firstpromoter delivery {}/{}",
                item.subscription, item.delivery.id
            ),
        ));
        if let Some(commission) = prepared.approval {
            let (request, _) = crate::fulfilment::v2::request_for(
                &records[0],
                commission,
                &crate::fulfilment::v2::ReplyKeys::new(&config),
                &pipeline.topic_for(&config.fulfilment.event_type),
                &config.fulfilment.reply_topic,
                &Received::now(),
            );
            records.push(request);
        }
        let mut failure = None;
        for record in &records {
            let deadline = tokio::time::Instant::now() + config.kafka.ack_timeout;
            if let Err(error) = publisher.publish(record, deadline).await {
                failure = Some(format!("{} refused by Kafka: {error}", record.topic));
                break;
            }
        }
        match failure {
            None => {
                writeln!(out, "publish {label}: on {topic}")?;
                summary.published += 1;
                if let Some(id) = event_id {
                    seen.insert(id);
                }
            }
            Some(why) => {
                writeln!(out, "skip    {label}: {why}")?;
                *summary
                    .skipped
                    .entry("refused by Kafka".to_owned())
                    .or_default() += 1;
            }
        }
    }
    if progress {
        eprintln!();
    }
    let skipped: usize = summary.skipped.values().sum();
    let reasons: Vec<String> = summary
        .skipped
        .iter()
        .map(|(why, n)| format!("{n} {why}"))
        .collect();
    writeln!(
        out,
        "{}published {}, retried by FirstPromoter {}, already in Kafka {}, skipped {}{}",
        if options.dry_run { "dry run: " } else { "" },
        summary.published,
        summary.retried,
        summary.already_in_kafka,
        skipped,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join("; "))
        }
    )?;
    Ok(summary)
}

/// A recorded payload as the relay would have published it.
struct Prepared {
    record: OutboundRecord,
    /// The commission, when the event is a v2 approval fulfilment is on for.
    approval: Option<u64>,
}

/// The recorded payload through the relay's pipeline, with the headers FirstPromoter sends
/// (`X-Event-Id`, `X-Event-Type`); why not, when it cannot be.
fn prepare(pipeline: &Pipeline, delivery: &Delivery) -> Result<Prepared, String> {
    let payload = delivery
        .payload
        .as_ref()
        .filter(|p| !p.is_null())
        .ok_or_else(|| "no payload recorded".to_owned())?;
    let mut request_headers = HeaderMap::new();
    for (name, value) in [
        ("x-event-id", &delivery.event_id),
        ("x-event-type", &delivery.event_type),
    ] {
        if let Some(value) = value.as_deref().and_then(|v| v.parse().ok()) {
            request_headers.insert(name, value);
        }
    }
    let body = Bytes::from(serde_json::to_vec(payload).map_err(|e| e.to_string())?);
    let prepared = pipeline
        .prepare(&request_headers, body, &Received::now())
        .map_err(|e| format!("payload refused: {e}"))?;
    Ok(Prepared {
        approval: pipeline.approval(&prepared.envelope),
        record: prepared.record,
    })
}

/// The `fp-event-id` of every record on `topic` written at or after `from`; empty when the
/// topic does not exist.
async fn event_ids_on(
    config: &Config,
    topic: &str,
    from: SystemTime,
) -> Result<HashSet<String>, ToolError> {
    let kafka = config.kafka.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut config = crate::kafka::consumer_config(&kafka, "fp-relay-recover");
        config.set("fetch.wait.max.ms", "100");
        let consumer: BaseConsumer<crate::kafka::context::ToolContext> =
            config.create_with_context(crate::kafka::context::ToolContext)?;
        crate::kafka::aws::hand_first_token(&config, consumer.client());
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|source| ToolError::Unreachable {
                brokers: kafka.brokers.clone(),
                source,
            })?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32);
        let mut ids = HashSet::new();
        if partitions == 0 {
            return Ok(ids);
        }
        let millis = from
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let mut wanted = TopicPartitionList::new();
        for partition in 0..partitions {
            wanted.add_partition_offset(&topic, partition, Offset::Offset(millis))?;
        }
        let starts = consumer.offsets_for_times(wanted, Duration::from_secs(10))?;
        let mut ends = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            let (low, high) =
                consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
            let start = match starts.find_partition(&topic, partition).map(|p| p.offset()) {
                Some(Offset::Offset(offset)) => offset.max(low),
                // No record at or after the time: nothing to read there.
                _ => high,
            };
            if start < high {
                assignment.add_partition_offset(&topic, partition, Offset::Offset(start))?;
                ends.insert(partition, high);
            }
        }
        if ends.is_empty() {
            return Ok(ids);
        }
        consumer.assign(&assignment)?;
        let started = std::time::Instant::now();
        while !ends.is_empty() && started.elapsed() < Duration::from_secs(120) {
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = message?;
            if let Some(list) = message.headers() {
                if let Some(id) = list
                    .iter()
                    .find(|h| h.key == headers::EVENT_ID)
                    .and_then(|h| h.value)
                {
                    ids.insert(String::from_utf8_lossy(id).into_owned());
                }
            }
            let partition = message.partition();
            if ends
                .get(&partition)
                .is_some_and(|end| message.offset() + 1 >= *end)
            {
                ends.remove(&partition);
            }
        }
        if !ends.is_empty() {
            return Err(ToolError::Usage(format!(
                "could not read {topic} to its end within 2 minutes to check what is there already; nothing was published"
            )));
        }
        Ok(ids)
    })
    .await
    .map_err(|e| ToolError::Usage(format!("the Kafka reader stopped: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_covers_the_relays_deadline_within_firstpromoters_range() {
        let mut config = Config::default();
        config.kafka.ack_timeout = Duration::from_millis(4_500);
        assert_eq!(subscription_timeout(&config), 10);
        config.kafka.ack_timeout = Duration::from_secs(600);
        assert_eq!(subscription_timeout(&config), 120);
    }

    #[test]
    fn the_credential_is_the_one_the_relay_checks() {
        let mut config = Config::default();
        assert!(Credential::of(&config).is_err());
        config
            .auth
            .basic
            .insert("fp".into(), "a-long-password-123".into());
        assert_eq!(
            Credential::of(&config).unwrap(),
            Credential::Basic("fp".into(), "a-long-password-123".into())
        );
        config.auth.tokens = vec!["tok-0123456789abcdef".into()];
        assert_eq!(
            Credential::of(&config).unwrap(),
            Credential::Header("Authorization".into(), "Bearer tok-0123456789abcdef".into())
        );
        config.auth.token_header = "X-Relay-Token".into();
        assert_eq!(
            Credential::of(&config).unwrap(),
            Credential::Header("X-Relay-Token".into(), "tok-0123456789abcdef".into())
        );
    }

    #[test]
    fn an_update_keeps_other_headers_and_replaces_ours() {
        let credential = Credential::Header("Authorization".into(), "Bearer new".into());
        let types = vec!["referral.created".to_owned()];
        let wanted = Wanted {
            url: "https://relay.example.com/webhooks/firstpromoter",
            event_types: &types,
            timeout: 15,
            credential: &credential,
        };
        let existing: Subscription = serde_json::from_value(serde_json::json!({
            "id": 3, "url": wanted.url, "event_types": ["referral.created"], "timeout": 15,
            "max_retries": 10, "active": true,
            "headers": {"authorization": "Bearer old", "X-Team": "growth"}
        }))
        .unwrap();
        let body = wanted.body(Some(&existing));
        assert_eq!(body["headers"]["Authorization"], "Bearer new");
        assert_eq!(body["headers"]["X-Team"], "growth");
        assert!(body["headers"].get("authorization").is_none());
        assert!(
            body.get("campaign_ids").is_none(),
            "an update keeps the campaign filter"
        );
        let changes = wanted.changes(Some(&existing));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            !changes[0].contains("new"),
            "secrets are masked: {changes:?}"
        );
    }
}
