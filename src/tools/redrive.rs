//! `fp-relay redrive`: put records from the dead-letter topic back on the topic they came from
//! (`fp-original-topic`), once their cause is fixed: standard events Kafka refused (a topic's
//! ACL or size limit) and v2 fulfilment replies FirstPromoter refused or was given up on (an
//! API key, an outage). The relay's v2 marker then reads a redriven reply like any other.
//!
//! Idempotent across runs: progress is committed in a consumer group of its own (one per
//! filter, so that redriving one reason does not skip the records of another), and only after
//! each record is on its topic; a second run of the same command moves nothing. Each redriven
//! record carries `fp-redriven-from: <dead-letter topic>/<partition>/<offset>` and
//! `fp-redriven-reason`, and loses the dead-letter headers. Records dead-lettered after the
//! run started are left for the next run, so a record that fails again cannot loop. A
//! record without `fp-original-topic` (a body that was not JSON) has nowhere to go and is
//! listed as skipped.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};

use crate::kafka::context::ToolContext;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sha2::{Digest, Sha256};

use crate::kafka::record::headers;
use crate::tools::ToolError;

/// Header on a redriven record: where on the dead-letter topic it was.
pub const REDRIVEN_FROM: &str = "fp-redriven-from";
/// Header on a redriven record: the reason it had been dead-lettered.
pub const REDRIVEN_REASON: &str = "fp-redriven-reason";

/// What to move, and whether to move it.
#[derive(Debug, Clone, clap::Args)]
pub struct RedriveOptions {
    /// Where Kafka is.
    #[command(flatten)]
    pub kafka: super::KafkaArgs,
    /// The relay's `kafka.dead_letter_topic`.
    #[arg(
        long,
        value_name = "TOPIC",
        default_value = "firstpromoter.dead_letter"
    )]
    pub dead_letter_topic: String,
    /// Only records whose fp-dead-letter-reason starts with this (repeatable), e.g.
    /// `kafka_refused`, `firstpromoter_401`, `firstpromoter_gave_up`, `malformed_reply`.
    #[arg(long = "reason", value_name = "PREFIX")]
    pub reasons: Vec<String>,
    /// Only records that came from this topic (repeatable).
    #[arg(long = "topic", value_name = "TOPIC")]
    pub topics: Vec<String>,
    /// Only records dead-lettered at or after this time: RFC 3339, or a duration ago (`2h`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<SystemTime>,
    /// Only records dead-lettered before this time: RFC 3339, or a duration ago (`30m`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<SystemTime>,
    /// List what would move; move nothing and remember nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Consumer group that remembers progress [default: fp-relay-redrive-<hash of the filters>].
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Stop after this long without a record (the end of the topic).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub idle_exit: Duration,
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Records read from the dead-letter topic.
    pub read: usize,
    /// Put back on their topic (or, with `--dry-run`, that would be).
    pub moved: usize,
    /// Left where they are: filtered out, or nowhere to go.
    pub skipped: usize,
}

/// `2026-11-30T08:00:00Z`, or a duration ago (`2h`).
fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    humantime::parse_duration(text)
        .map(|ago| SystemTime::now() - ago)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration like 2h"))
}

impl RedriveOptions {
    /// The consumer group: the one given, or one per set of filters.
    fn group(&self) -> String {
        if let Some(group) = &self.group {
            return group.clone();
        }
        let mut hash = Sha256::new();
        for list in [&self.reasons, &self.topics] {
            for part in list {
                hash.update(part.as_bytes());
                hash.update([0]);
            }
            hash.update([1]);
        }
        for time in [self.since, self.until] {
            let secs = time.map_or(0, |t| {
                t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
            });
            hash.update(secs.to_le_bytes());
        }
        format!("fp-relay-redrive-{}", hex::encode(&hash.finalize()[..6]))
    }
}

/// One dead-lettered record, as far as redrive needs it.
struct DeadLetter {
    partition: i32,
    offset: i64,
    original_topic: Option<String>,
    reason: String,
    at: Option<SystemTime>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Moves (or lists) the matching records; a line per record on `out`, progress on stderr
/// when it is a terminal.
pub async fn run(options: &RedriveOptions, out: &mut impl Write) -> Result<Summary, ToolError> {
    let group = options.group();
    let (mut consumer_config, _) = options
        .kafka
        .client(&[("log_level", "3"), ("fetch.wait.max.ms", "100")])?;
    let consumer: StreamConsumer<ToolContext> = consumer_config
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(ToolContext)?;
    crate::kafka::aws::hand_first_token(&consumer_config, consumer.client());
    let (producer, _) = options.kafka.client(&[
        ("log_level", "3"),
        ("enable.idempotence", "true"),
        ("acks", "all"),
    ])?;
    let producer: FutureProducer<ToolContext> = producer.create_with_context(ToolContext)?;
    let started = SystemTime::now();
    if !assign_from_committed(&consumer, &options.dead_letter_topic).await? {
        // Nothing was ever dead-lettered on these brokers: nothing to move is success.
        writeln!(
            out,
            "redrive: the dead-letter topic {:?} does not exist on these brokers yet: nothing to move",
            options.dead_letter_topic
        )?;
        return Ok(Summary::default());
    }
    let mut summary = Summary::default();
    let mut done: BTreeMap<i32, i64> = BTreeMap::new();
    let progress = std::io::stderr().is_terminal();
    let verb = if options.dry_run {
        "would move"
    } else {
        "moved"
    };
    loop {
        let message = match tokio::time::timeout(options.idle_exit, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(error)) => return Err(error.into()),
            Ok(Ok(message)) => DeadLetter::from_message(&message),
        };
        // Dead-lettered after this run began: perhaps one of this run's records failing again.
        if message.at.is_some_and(|at| at > started) {
            break;
        }
        summary.read += 1;
        let line = match (message.matches(options), &message.original_topic) {
            (false, _) => None,
            (true, None) => {
                summary.skipped += 1;
                Some("skipped (no fp-original-topic)".to_owned())
            }
            (true, Some(topic)) => {
                if !options.dry_run {
                    message
                        .put_back(&producer, topic, &options.dead_letter_topic)
                        .await?;
                }
                summary.moved += 1;
                Some(format!("{verb} to {topic}"))
            }
        };
        if line.is_none() {
            summary.skipped += 1;
        }
        if let Some(line) = line {
            writeln!(
                out,
                "partition {} offset {}: {line} (reason: {})",
                message.partition, message.offset, message.reason
            )?;
        }
        done.insert(message.partition, message.offset + 1);
        if !options.dry_run && summary.read.is_multiple_of(100) {
            commit(&consumer, &options.dead_letter_topic, &done)?;
        }
        if progress {
            eprint!("\rredrive: {} read, {} {verb}", summary.read, summary.moved);
        }
    }
    if !options.dry_run {
        commit(&consumer, &options.dead_letter_topic, &done)?;
    }
    if progress {
        eprintln!();
    }
    writeln!(
        out,
        "redrive: {} read, {} {verb}, {} left where they are (progress group {group}{})",
        summary.read,
        summary.moved,
        summary.skipped,
        if options.dry_run {
            ", nothing remembered"
        } else {
            ""
        }
    )?;
    Ok(summary)
}

/// Assigns every partition of `topic`, each at this group's committed offset (its beginning
/// when there is none). False when the topic does not exist.
async fn assign_from_committed(
    consumer: &StreamConsumer<ToolContext>,
    topic: &str,
) -> Result<bool, ToolError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32);
    if partitions == 0 {
        return Ok(false);
    }
    let mut wanted = TopicPartitionList::new();
    for partition in 0..partitions {
        wanted.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(wanted, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let offset = match committed
            .find_partition(topic, partition)
            .map(|p| p.offset())
        {
            Some(Offset::Offset(offset)) => Offset::Offset(offset),
            _ => Offset::Beginning,
        };
        assignment.add_partition_offset(topic, partition, offset)?;
    }
    drop(committed);
    consumer.assign(&assignment)?;
    Ok(true)
}

fn commit(
    consumer: &StreamConsumer<ToolContext>,
    topic: &str,
    done: &BTreeMap<i32, i64>,
) -> Result<(), ToolError> {
    if done.is_empty() {
        return Ok(());
    }
    let mut list = TopicPartitionList::new();
    for (partition, next) in done {
        list.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
    }
    consumer.commit(&list, CommitMode::Sync)?;
    Ok(())
}

impl DeadLetter {
    fn from_message(message: &impl Message) -> Self {
        let mut found = Self {
            partition: message.partition(),
            offset: message.offset(),
            original_topic: None,
            reason: String::new(),
            at: message
                .timestamp()
                .to_millis()
                .and_then(|ms| u64::try_from(ms).ok())
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers: Vec::new(),
        };
        if let Some(list) = message.headers() {
            for header in list.iter() {
                let value = header.value.unwrap_or_default();
                match header.key {
                    headers::ORIGINAL_TOPIC => {
                        found.original_topic = Some(String::from_utf8_lossy(value).into_owned())
                    }
                    headers::DEAD_LETTER_REASON => {
                        found.reason = String::from_utf8_lossy(value).into_owned()
                    }
                    // A record redriven before carries the previous run's headers: replaced.
                    REDRIVEN_FROM | REDRIVEN_REASON => {}
                    key => found.headers.push((key.to_owned(), value.to_vec())),
                }
            }
        }
        found
    }

    fn matches(&self, options: &RedriveOptions) -> bool {
        let reason = options.reasons.is_empty()
            || options
                .reasons
                .iter()
                .any(|r| self.reason.starts_with(r.as_str()));
        let topic = options.topics.is_empty()
            || self
                .original_topic
                .as_ref()
                .is_some_and(|t| options.topics.contains(t));
        let since = options
            .since
            .is_none_or(|since| self.at.is_some_and(|at| at >= since));
        let until = options
            .until
            .is_none_or(|until| self.at.is_some_and(|at| at < until));
        reason && topic && since && until
    }

    /// Writes the record to `topic` as it was before it was dead-lettered, and waits for Kafka.
    async fn put_back(
        &self,
        producer: &FutureProducer<ToolContext>,
        topic: &str,
        dead_letter_topic: &str,
    ) -> Result<(), ToolError> {
        let from = format!("{dead_letter_topic}/{}/{}", self.partition, self.offset);
        let mut owned = OwnedHeaders::new_with_capacity(self.headers.len() + 2);
        for (key, value) in &self.headers {
            owned = owned.insert(Header {
                key,
                value: Some(value),
            });
        }
        owned = owned
            .insert(Header {
                key: REDRIVEN_FROM,
                value: Some(from.as_bytes()),
            })
            .insert(Header {
                key: REDRIVEN_REASON,
                value: Some(self.reason.as_bytes()),
            });
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&self.payload)
            .headers(owned);
        if let Some(key) = &self.key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| {
                ToolError::Usage(format!("cannot write {from} to {topic}: {error}"))
            })?;
        Ok(())
    }
}
