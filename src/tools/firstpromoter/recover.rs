//! `fp-relay firstpromoter recover`: every delivery FirstPromoter gave up on, put in Kafka once.
//!
//! What is in Kafka already is read before anything is published, for every topic a recovered
//! delivery would go to: the event's topic and, for a v2 approval fulfilment is on for, the
//! fulfilment request topic. A delivery is done when both are there (by `fp-event-id`); a
//! re-run publishes only the part that is missing, so an approval whose event was published and
//! whose request was not (refused by Kafka, or the live relay answered 503 between the two) is
//! finished by the next run instead of being skipped as "already in Kafka" for ever.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{api_error, load, RecoverOptions, RECOVERED_FROM};
use crate::config::{masked_url, Config};
use crate::firstpromoter::client::ApiError;
use crate::firstpromoter::points_here;
use crate::firstpromoter::webhooks::{Delivery, Subscription, Webhooks};
use crate::kafka::record::{headers, OutboundRecord, Received};
use crate::pipeline::Pipeline;
use crate::tools::ToolError;

/// Longest read of one topic to its end (to learn what is there already).
const READ_LIMIT: Duration = Duration::from_secs(120);

/// How far before `--since` the topics are read: the relay may have published an event a
/// little before FirstPromoter recorded its delivery.
const READ_MARGIN: Duration = Duration::from_secs(3600);

/// What a recovery did, by what happened to each failed delivery.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Published from the recorded payload (with its fulfilment request, for an approval).
    pub published: usize,
    /// Already in Kafka but for its fulfilment request, which was published now.
    pub completed: usize,
    /// Sent again by FirstPromoter at our request (or queued already by an earlier request).
    pub retried: usize,
    /// Everything of it is in Kafka already (a relay answered after FirstPromoter gave up, or
    /// an earlier run).
    pub already_in_kafka: usize,
    /// Not in the topics read, but published by a relay or command within `dedup.window`
    /// (`dedup.topic`): not written again.
    pub known_to_dedup: usize,
    /// Whether `dedup.topic` was consulted (the summary says so).
    pub dedup_consulted: bool,
    /// Left undone, with why: the run exits non-zero when this is not empty.
    pub undone: BTreeMap<String, usize>,
    /// Deliveries lists that were not read to the end of the window.
    pub cut_short: Vec<String>,
}

impl Recovered {
    /// Deliveries left undone.
    pub fn undone(&self) -> usize {
        self.undone.values().sum()
    }

    /// Anything left undone or unread: the run did not finish the job.
    pub fn incomplete(&self) -> bool {
        self.undone() > 0 || !self.cut_short.is_empty()
    }

    fn leave(&mut self, why: &str) {
        *self.undone.entry(why.to_owned()).or_default() += 1;
    }
}

/// One failed delivery and what recovery makes of it.
struct Failed {
    subscription: String,
    delivery: Delivery,
    /// The record(s) it becomes; why not, when its payload cannot be published.
    prepared: Result<Prepared, String>,
}

impl Failed {
    fn label(&self) -> String {
        format!(
            "delivery {}/{} {} {}",
            self.subscription,
            self.delivery.id,
            self.delivery.event_type.as_deref().unwrap_or("unknown"),
            self.delivery.event_id.as_deref().unwrap_or("(no event id)")
        )
    }
}

/// A recorded payload as the relay would have published it.
struct Prepared {
    record: OutboundRecord,
    /// The fulfilment request, when the event is a v2 approval fulfilment is on for.
    request: Option<OutboundRecord>,
}

impl Prepared {
    fn event_id(&self) -> Option<&str> {
        self.record.header(headers::EVENT_ID)
    }

    /// The topics what is there already is read from.
    fn topics(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.record.topic.as_str())
            .chain(self.request.iter().map(|r| r.topic.as_str()))
    }
}

/// Recovers every failed delivery of the subscriptions pointing at this relay; a line per
/// delivery on `out`, progress on stderr when it is a terminal, the summary last. The summary
/// says what was left undone; the caller exits non-zero then.
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
            "no subscription delivers to this relay (firstpromoter.webhook_url {}, http.path {}); \
             `fp-relay firstpromoter status` lists them",
            config
                .firstpromoter
                .webhook_url
                .as_deref()
                .map_or("unset".to_owned(), |url| masked_url(url, &config.http.path)),
            config.http.path
        )));
    }
    let pipeline = Pipeline::new(&config);
    let mut summary = Recovered::default();
    let mut failed = Vec::new();
    for subscription in &subscriptions {
        let listed = webhooks
            .deliveries(&subscription.id, since)
            .await
            .map_err(api_error)?;
        if let Some(why) = listed.cut_short {
            writeln!(out, "warning: {why}")?;
            summary.cut_short.push(why);
        }
        for delivery in listed.items {
            if delivery.status == "failed" {
                failed.push(Failed {
                    subscription: subscription.id.clone(),
                    prepared: prepare(&pipeline, &config, &subscription.id, &delivery),
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
    if failed.is_empty() {
        write_summary(out, options, &summary)?;
        return Ok(summary);
    }
    // Everything that is there already, read before anything is published: a read that fails
    // stops the run with nothing published.
    let topics: BTreeSet<String> = failed
        .iter()
        .filter_map(|f| f.prepared.as_ref().ok())
        .flat_map(Prepared::topics)
        .map(str::to_owned)
        .collect();
    let mut in_kafka: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for topic in topics {
        let ids = event_ids_on(&config, &topic, since - READ_MARGIN).await?;
        in_kafka.insert(topic, ids);
    }
    let publisher = crate::tools::publisher(&config)?;
    let shared =
        crate::dedup::shared::for_command(&config, publisher.clone(), "firstpromoter recover")
            .await;
    summary.dedup_consulted = shared.is_some();
    let progress = std::io::stderr().is_terminal();
    let total = failed.len();
    for (done, item) in failed.iter().enumerate() {
        if progress {
            eprint!("\rrecovering {}/{total}", done + 1);
        }
        let label = item.label();
        let prepared = match &item.prepared {
            Ok(prepared) => prepared,
            Err(why) => {
                writeln!(out, "skip    {label}: {why}")?;
                summary.leave(why);
                continue;
            }
        };
        let there = |record: &OutboundRecord| {
            prepared.event_id().is_some_and(|id| {
                in_kafka
                    .get(&record.topic)
                    .is_some_and(|ids| ids.contains(id))
            })
        };
        let known = !there(&prepared.record)
            && shared
                .as_ref()
                .is_some_and(|shared| shared.published(&prepared.record));
        let event_there = there(&prepared.record) || known;
        let request_missing = prepared.request.as_ref().filter(|r| !there(r));
        if known && request_missing.is_none() {
            writeln!(
                out,
                "known   {label}: published by a relay (dedup topic); not written again"
            )?;
            summary.known_to_dedup += 1;
            continue;
        }
        if event_there && request_missing.is_none() {
            writeln!(
                out,
                "in Kafka {label}: already on {}",
                prepared.record.topic
            )?;
            summary.already_in_kafka += 1;
            continue;
        }
        let mut missing: Vec<&OutboundRecord> = Vec::new();
        if !event_there {
            missing.push(&prepared.record);
        }
        missing.extend(request_missing);
        let on: Vec<&str> = missing.iter().map(|r| r.topic.as_str()).collect();
        if options.dry_run {
            let how = if options.retry_delivery && !event_there {
                "ask FirstPromoter to retry, else publish"
            } else {
                "publish"
            };
            writeln!(out, "would   {label}: {how} to {}", on.join(" and "))?;
            continue;
        }
        // Only a delivery with nothing of it in Kafka is sent again through the relay; the
        // missing request of a half-published approval is published here.
        if options.retry_delivery && !event_there {
            match retry(&webhooks, item).await {
                Retry::Queued(how) => {
                    writeln!(out, "retried {label}: {how}")?;
                    summary.retried += 1;
                    continue;
                }
                Retry::Publish(why) => writeln!(out, "note    {label}: {why}; publishing")?,
                Retry::Undone(why) => {
                    writeln!(out, "skip    {label}: {why}")?;
                    summary.leave("retry_delivery failed");
                    continue;
                }
            }
        }
        let mut refused = None;
        for record in &missing {
            let deadline = tokio::time::Instant::now() + config.kafka.ack_timeout;
            if let Err(error) = publisher.publish(record, deadline).await {
                refused = Some(format!("{} refused by Kafka: {error}", record.topic));
                break;
            }
            if let (Some(shared), true) = (&shared, std::ptr::eq(*record, &prepared.record)) {
                shared.mark_and_wait(record).await;
            }
            let ids = in_kafka.entry(record.topic.clone()).or_default();
            ids.extend(prepared.event_id().map(str::to_owned));
        }
        match refused {
            None if event_there => {
                writeln!(
                    out,
                    "publish {label}: fulfilment request on {}",
                    on.join(" and ")
                )?;
                summary.completed += 1;
            }
            None => {
                writeln!(out, "publish {label}: on {}", on.join(" and "))?;
                summary.published += 1;
            }
            Some(why) => {
                writeln!(
                    out,
                    "skip    {label}: {why} (the next run publishes what is missing)"
                )?;
                summary.leave("refused by Kafka");
            }
        }
    }
    if progress {
        eprintln!();
    }
    write_summary(out, options, &summary)?;
    Ok(summary)
}

fn write_summary(
    out: &mut impl Write,
    options: &RecoverOptions,
    summary: &Recovered,
) -> std::io::Result<()> {
    let reasons: Vec<String> = summary
        .undone
        .iter()
        .map(|(why, n)| format!("{n} {why}"))
        .collect();
    writeln!(
        out,
        "{}published {}, fulfilment requests completed {}, retried by FirstPromoter {}, \
         already in Kafka {}{}, undone {}{}{}",
        if options.dry_run { "dry run: " } else { "" },
        summary.published,
        summary.completed,
        summary.retried,
        summary.already_in_kafka,
        if summary.dedup_consulted {
            format!(", known to the dedup topic {}", summary.known_to_dedup)
        } else {
            String::new()
        },
        summary.undone(),
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join("; "))
        },
        if summary.cut_short.is_empty() {
            String::new()
        } else {
            format!(
                "; {} deliveries list(s) not read to the end of the window",
                summary.cut_short.len()
            )
        }
    )
}

/// What asking FirstPromoter to send a delivery again came to.
enum Retry {
    /// It sends it (again): nothing to publish. How, for the line.
    Queued(String),
    /// It will not: publish the recorded payload. Why, for the line.
    Publish(String),
    /// Neither is known: leave it for the next run.
    Undone(String),
}

/// Asks FirstPromoter to retry `item`. A 422 is read by its message and by the delivery's
/// status now: a retry that was queued by an earlier attempt of this call (its answer lost to a
/// timeout) is answered 422 too, and must not be published on top of FirstPromoter's resend.
async fn retry(webhooks: &Webhooks<'_>, item: &Failed) -> Retry {
    let (subscription, id) = (&item.subscription, &item.delivery.id);
    let message = match webhooks.retry_delivery(subscription, id).await {
        Ok(()) => return Retry::Queued("FirstPromoter sends it again".to_owned()),
        Err(ApiError::Rejected {
            status: 422,
            message,
        }) => message,
        Err(error) => return Retry::Undone(format!("retry_delivery failed: {error}")),
    };
    match webhooks.delivery(subscription, id).await {
        Ok(now) if now.status != "failed" => Retry::Queued(format!(
            "FirstPromoter answered 422 ({message}) but the delivery is {} now: queued already",
            now.status
        )),
        Ok(_) if retries_spent(&message) => {
            Retry::Publish(format!("FirstPromoter will not retry it (422: {message})"))
        }
        Ok(_) => Retry::Undone(format!(
            "FirstPromoter refused retry_delivery (422: {message}) for a reason other than \
             spent retries; run again without --retry-delivery to publish its payload"
        )),
        Err(error) => Retry::Undone(format!(
            "FirstPromoter answered 422 ({message}) and the delivery could not be read: {error}"
        )),
    }
}

/// True when a 422's message says the subscription's `max_retries` is spent.
fn retries_spent(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    let about_retries = message.contains("retr") || message.contains("attempt");
    let spent = [
        "max", "limit", "reached", "exceed", "exhaust", "spent", "no more",
    ]
    .iter()
    .any(|word| message.contains(word));
    about_retries && spent
}

/// The recorded payload through the relay's pipeline, with the headers FirstPromoter sends
/// (`X-Event-Id`, `X-Event-Type`) and the recovery header; why not, when it cannot be.
fn prepare(
    pipeline: &Pipeline,
    config: &Config,
    subscription: &str,
    delivery: &Delivery,
) -> Result<Prepared, String> {
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
    let received = Received::now();
    let prepared = pipeline
        .prepare(&request_headers, body, &received)
        .map_err(|e| format!("payload refused: {e}"))?;
    let mut record = prepared.record;
    record.headers.push((
        RECOVERED_FROM.into(),
        format!("firstpromoter delivery {subscription}/{}", delivery.id),
    ));
    let request = pipeline.approval(&prepared.envelope).map(|commission| {
        crate::fulfilment::v2::request_for(
            &record,
            commission,
            &crate::fulfilment::v2::ReplyKeys::new(config),
            &pipeline.topic_for(&config.fulfilment.event_type),
            &config.fulfilment.reply_topic,
            &received,
        )
        .0
    });
    Ok(Prepared { record, request })
}

/// The `fp-event-id` of every record on `topic` written at or after `from`; empty when the
/// topic does not exist. Any other metadata error is an error: taking it for "missing" would
/// publish everything again.
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
        let Some(partitions) = partitions_of(&consumer, &kafka.brokers, &topic)? else {
            return Ok(HashSet::new());
        };
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
        let mut ids = HashSet::new();
        if ends.is_empty() {
            return Ok(ids);
        }
        consumer.assign(&assignment)?;
        let started = std::time::Instant::now();
        while !ends.is_empty() && started.elapsed() < READ_LIMIT {
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
                "could not read {topic} to its end within {} to check what is there already; \
                 nothing was published",
                humantime::format_duration(READ_LIMIT)
            )));
        }
        Ok(ids)
    })
    .await
    .map_err(|e| ToolError::Usage(format!("the Kafka reader stopped: {e}")))?
}

/// How many partitions `topic` has; `None` when Kafka says it does not exist. Other errors are
/// asked again a few times (a leader election), then returned.
fn partitions_of(
    consumer: &BaseConsumer<crate::kafka::context::ToolContext>,
    brokers: &str,
    topic: &str,
) -> Result<Option<i32>, ToolError> {
    const ATTEMPTS: u32 = 5;
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|source| ToolError::Unreachable {
                brokers: brokers.to_owned(),
                source,
            })?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match found.error().map(RDKafkaErrorCode::from) {
            None if found.partitions().is_empty() => return Ok(None),
            None => return Ok(Some(found.partitions().len() as i32)),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
            Some(code) => last = Some(code),
        }
    }
    Err(ToolError::Usage(format!(
        "Kafka answered {} for {topic}'s metadata {ATTEMPTS} times; cannot check what is there \
         already, so nothing was published",
        last.map_or("an error".to_owned(), |code| format!("{code:?}"))
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_422_counts_as_spent_retries_only_when_it_says_so() {
        for spent in [
            "Maximum retries reached (max_retries)",
            "Max retries exceeded",
            "retry limit reached",
            "This delivery has no more retries",
        ] {
            assert!(retries_spent(spent), "{spent}");
        }
        for other in [
            "Delivery is not in a failed state",
            "Delivery already queued",
            "Validation failed",
            "no message",
        ] {
            assert!(!retries_spent(other), "{other}");
        }
    }
}
