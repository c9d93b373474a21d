//! `fp-relay redrive`: put records from the dead-letter topic back on the topic they came from
//! (`fp-original-topic`), once their cause is fixed: standard events Kafka refused (a topic's
//! ACL or size limit) and v2 fulfilment replies FirstPromoter refused or was given up on (an
//! API key, an outage). The relay's v2 marker then reads a redriven reply like any other.
//!
//! Idempotent by construction: progress is kept in a consumer group named after the command
//! line's filters as written (`--since 1h` names the same group at any hour), committed right
//! after each record is back on its topic, and on an error, Ctrl-C or SIGTERM; a second run of
//! the same command moves nothing. The group owns the partitions it reads (a subscription, not
//! an assignment), so two runs of one command at once share them and never both move a record.
//! A record Kafka will not take back (an invalid or forbidden topic) is reported, left on the
//! dead-letter topic and passed; the run then ends with exit status 1 and says how many. Each
//! redriven record carries `fp-redriven-from: <dead-letter topic>/<partition>/<offset>` and
//! `fp-redriven-reason`, and loses the dead-letter headers. Records dead-lettered after the
//! run started are left for the next run (their partition is paused), so a record that fails
//! again cannot loop. A record without `fp-original-topic` (a body that was not JSON) has
//! nowhere to go and is listed as skipped.

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
/// Header on a dead letter that a run could not put back and appended again for the next
/// run: what Kafka said.
pub const REDRIVE_ERROR: &str = "fp-redrive-error";

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
    pub since: Option<TimeArg>,
    /// Only records dead-lettered before this time: RFC 3339, or a duration ago (`30m`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<TimeArg>,
    /// List what would move; move nothing and remember nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Consumer group that remembers progress [default: fp-relay-redrive-<hash of the filters
    /// as written>].
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Stop after this long without a record (the end of the topic).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub idle_exit: Duration,
}

/// A time given on the command line: as written (which names the progress group) and what it
/// meant when the command started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeArg {
    pub text: String,
    pub at: SystemTime,
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
    /// Matching records Kafka would not take back: left on the dead-letter topic, passed.
    pub failed: usize,
    /// Matching records some relay published meanwhile (`dedup.topic`): not written again.
    pub already_published: usize,
    /// Whether `dedup.topic` was consulted (the summary says so).
    pub dedup_consulted: bool,
    /// Stopped by Ctrl-C or SIGTERM (progress committed).
    pub interrupted: bool,
}

/// `2026-11-30T08:00:00Z`, or a duration ago (`2h`).
pub fn parse_time(text: &str) -> Result<TimeArg, String> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(at) => at,
        Err(_) => humantime::parse_duration(text)
            .map(|ago| SystemTime::now() - ago)
            .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration like 2h"))?,
    };
    Ok(TimeArg {
        text: text.trim().to_owned(),
        at,
    })
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
        // As written: `--since 1h` is the same command, and the same progress, at any hour.
        for time in [&self.since, &self.until] {
            hash.update(time.as_ref().map_or("", |t| t.text.as_str()).as_bytes());
            hash.update([2]);
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
    /// The headers a redriven record gets back (the dead-letter ones removed).
    headers: Vec<(String, Vec<u8>)>,
    /// Its dedup key, when it is an event with an id.
    dedup_key: Option<crate::dedup::Key>,
    /// Every header, as it is on the dead-letter topic.
    all_headers: Vec<(String, Vec<u8>)>,
}

/// Moves (or lists) the matching records until the end of the topic, Ctrl-C or SIGTERM; a
/// line per record on `out`, progress on stderr when it is a terminal.
pub async fn run(options: &RedriveOptions, out: &mut impl Write) -> Result<Summary, ToolError> {
    run_until(options, out, crate::shutdown_signal()).await
}

/// How long a run waits to be given partitions by its group before it concludes that another
/// run of the same command holds them.
const JOIN_WAIT: Duration = Duration::from_secs(20);

/// [`run`], stopping (progress committed) when `stop` completes.
pub async fn run_until(
    options: &RedriveOptions,
    out: &mut impl Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Summary, ToolError> {
    let group = options.group();
    let (mut consumer_config, _) = options.kafka.client(&[
        ("log_level", "3"),
        ("fetch.wait.max.ms", "100"),
        // A second run of the same command joins within seconds, not librdkafka's 45.
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "1000"),
    ])?;
    let consumer: StreamConsumer<ToolContext> = consumer_config
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
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
    let topic = options.dead_letter_topic.as_str();
    if partitions_of(&consumer, topic)? == 0 {
        // Nothing was ever dead-lettered on these brokers: nothing to move is success.
        writeln!(
            out,
            "redrive: the dead-letter topic {topic:?} does not exist on these brokers yet: nothing to move"
        )?;
        return Ok(Summary::default());
    }
    if options.dry_run {
        // Reads where the real run would start, without joining its group (a dry run must not
        // take partitions from a real run).
        assign_from_committed(&consumer, topic).await?;
    } else {
        consumer.subscribe(&[topic])?;
    }
    // With dedup.topic in the relay's configuration: what any relay published meanwhile is
    // not put back a second time.
    let relay_config = super::relay_config(
        options.kafka.config.as_deref(),
        options.kafka.brokers.clone(),
    )?;
    let shared = match relay_config.shared_dedup_topic() {
        Some(_) if !options.dry_run => {
            let publisher = super::publisher(&relay_config)?;
            crate::dedup::shared::for_command(&relay_config, publisher, "redrive").await
        }
        _ => None,
    };
    let mut run = Run {
        options,
        consumer: &consumer,
        producer: &producer,
        shared: shared.as_deref(),
        started,
        summary: Summary {
            dedup_consulted: shared.is_some(),
            ..Summary::default()
        },
        done: BTreeMap::new(),
        uncommitted: 0,
    };
    let outcome = run.read(out, stop).await;
    // Whatever ended the run, what was done is remembered.
    let committed = run.commit();
    let summary = run.summary;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    outcome?;
    committed?;
    writeln!(
        out,
        "redrive: {} read, {} {}, {} left where they are, {} could not be put back{}{} (progress group {group}{})",
        summary.read,
        summary.moved,
        if options.dry_run { "would move" } else { "moved" },
        summary.skipped,
        summary.failed,
        if summary.dedup_consulted {
            format!(", {} published already (dedup topic)", summary.already_published)
        } else {
            String::new()
        },
        if summary.interrupted { "; interrupted" } else { "" },
        if options.dry_run {
            ", nothing remembered"
        } else {
            ""
        }
    )?;
    Ok(summary)
}

/// One run's state: what was read and done, per partition the next offset to commit.
struct Run<'a> {
    options: &'a RedriveOptions,
    consumer: &'a StreamConsumer<ToolContext>,
    producer: &'a FutureProducer<ToolContext>,
    /// `dedup.topic`, loaded, when the relay's configuration names one.
    shared: Option<&'a crate::dedup::shared::Shared>,
    started: SystemTime,
    summary: Summary,
    done: BTreeMap<i32, i64>,
    /// Records passed since the last commit (committed every 100, and after each move).
    uncommitted: usize,
}

impl Run<'_> {
    /// Reads and acts until the topic's end (`idle_exit` without a record), `stop`, or a
    /// consumer error.
    async fn read(
        &mut self,
        out: &mut impl Write,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), ToolError> {
        let options = self.options;
        let topic = options.dead_letter_topic.as_str();
        let progress = std::io::stderr().is_terminal();
        let begun = tokio::time::Instant::now();
        let mut last_record = begun;
        let mut ever_assigned = options.dry_run;
        let mut stop = std::pin::pin!(stop);
        loop {
            let received = tokio::select! {
                _ = &mut stop => {
                    self.summary.interrupted = true;
                    writeln!(out, "redrive: interrupted; progress so far is committed")?;
                    return Ok(());
                }
                received = tokio::time::timeout(Duration::from_millis(500), self.consumer.recv()) => received,
            };
            let message = match received {
                Ok(Ok(message)) => DeadLetter::from_message(&message),
                Ok(Err(error)) => return Err(error.into()),
                Err(_) => {
                    let assigned = self.consumer.assignment().map_or(0, |a| a.count());
                    if assigned > 0 && !ever_assigned {
                        // The idle time counts from when there is something to read.
                        ever_assigned = true;
                        last_record = tokio::time::Instant::now();
                    }
                    if ever_assigned && last_record.elapsed() >= options.idle_exit {
                        return Ok(());
                    }
                    if !ever_assigned && begun.elapsed() >= JOIN_WAIT.max(options.idle_exit) {
                        writeln!(
                            out,
                            "redrive: no partition of {topic} was given to this run: another run of the same command holds them"
                        )?;
                        return Ok(());
                    }
                    continue;
                }
            };
            ever_assigned = true;
            last_record = tokio::time::Instant::now();
            // Dead-lettered after this run began: perhaps one of this run's records failing
            // again. Its partition waits for the next run.
            if message.at.is_some_and(|at| at > self.started) {
                let mut partition = TopicPartitionList::new();
                partition.add_partition(topic, message.partition);
                let _ = self.consumer.pause(&partition);
                continue;
            }
            self.summary.read += 1;
            let line = match (message.matches(options), &message.original_topic) {
                (false, _) => {
                    self.summary.skipped += 1;
                    None
                }
                (true, None) => {
                    self.summary.skipped += 1;
                    Some("skipped (no fp-original-topic)".to_owned())
                }
                (true, Some(original)) if options.dry_run => {
                    self.summary.moved += 1;
                    Some(format!("would move to {original}"))
                }
                (true, Some(original))
                    if message
                        .dedup_key
                        .is_some_and(|key| self.shared.is_some_and(|s| s.knows(&key))) =>
                {
                    self.summary.already_published += 1;
                    self.pass(&message);
                    self.commit()?;
                    Some(format!(
                        "not moved: a relay published it to {original} already (dedup topic)"
                    ))
                }
                (true, Some(original)) => {
                    let line = match message.put_back(self.producer, original, topic).await {
                        Ok(()) => {
                            self.summary.moved += 1;
                            if let (Some(shared), Some(key)) = (self.shared, message.dedup_key) {
                                shared.mark_key_and_wait(key).await;
                            }
                            format!("moved to {original}")
                        }
                        // A poison record must not hold back the ones behind it: it is passed,
                        // and appended again for the next run. Kafka refusing that as well is
                        // an error: the run stops before passing it.
                        Err(why) => {
                            let offset = message
                                .append_again(self.producer, topic, &why)
                                .await
                                .map_err(ToolError::Usage)?;
                            self.summary.failed += 1;
                            format!("could not be put back ({why}); left on the dead-letter topic at offset {offset} for the next run")
                        }
                    };
                    self.pass(&message);
                    // Right after the record is dealt with: a second run, or the one that takes
                    // this partition over, starts after it.
                    self.commit()?;
                    Some(line)
                }
            };
            if let Some(line) = line {
                writeln!(
                    out,
                    "partition {} offset {}: {line} (reason: {})",
                    message.partition, message.offset, message.reason
                )?;
            }
            self.pass(&message);
            if self.uncommitted >= 100 {
                self.commit()?;
            }
            if progress {
                eprint!(
                    "\rredrive: {} read, {} moved, {} not",
                    self.summary.read, self.summary.moved, self.summary.failed
                );
            }
        }
    }

    /// Notes that `message` is behind this run.
    fn pass(&mut self, message: &DeadLetter) {
        let next = self.done.entry(message.partition).or_insert(0);
        if *next < message.offset + 1 {
            *next = message.offset + 1;
            self.uncommitted += 1;
        }
    }

    /// Commits what was passed (nothing on a dry run). Partitions this run no longer holds
    /// (another run took them over) are left to their new holder.
    fn commit(&mut self) -> Result<(), ToolError> {
        if self.options.dry_run || self.uncommitted == 0 {
            return Ok(());
        }
        let topic = self.options.dead_letter_topic.as_str();
        let held: Vec<i32> = match self.consumer.assignment() {
            Ok(list) => list.elements().iter().map(|e| e.partition()).collect(),
            Err(_) => self.done.keys().copied().collect(),
        };
        let mut list = TopicPartitionList::new();
        for (partition, next) in &self.done {
            if held.contains(partition) {
                list.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
            }
        }
        if list.count() > 0 {
            self.consumer.commit(&list, CommitMode::Sync)?;
        }
        self.uncommitted = 0;
        Ok(())
    }
}

/// Partitions of `topic`; 0 when it does not exist.
fn partitions_of(consumer: &StreamConsumer<ToolContext>, topic: &str) -> Result<i32, ToolError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as i32))
}

/// Assigns every partition of `topic`, each at this group's committed offset (its beginning
/// when there is none). False when the topic does not exist.
async fn assign_from_committed(
    consumer: &StreamConsumer<ToolContext>,
    topic: &str,
) -> Result<bool, ToolError> {
    let partitions = partitions_of(consumer, topic)?;
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
            all_headers: Vec::new(),
            dedup_key: None,
        };
        if let Some(list) = message.headers() {
            for header in list.iter() {
                let value = header.value.unwrap_or_default();
                if header.key != REDRIVE_ERROR {
                    found
                        .all_headers
                        .push((header.key.to_owned(), value.to_vec()));
                }
                match header.key {
                    headers::ORIGINAL_TOPIC => {
                        found.original_topic = Some(String::from_utf8_lossy(value).into_owned())
                    }
                    headers::DEAD_LETTER_REASON => {
                        found.reason = String::from_utf8_lossy(value).into_owned()
                    }
                    // A record redriven before carries the previous run's headers: replaced.
                    REDRIVEN_FROM | REDRIVEN_REASON | REDRIVE_ERROR => {}
                    key => found.headers.push((key.to_owned(), value.to_vec())),
                }
            }
        }
        let header = |name: &str| {
            found
                .headers
                .iter()
                .find(|(key, _)| key == name)
                .and_then(|(_, value)| std::str::from_utf8(value).ok())
        };
        // Only an event: a fulfilment request or reply carries its event's id beside a
        // correlation id, and must never be taken for the event.
        let exchange =
            header(headers::CORRELATION_ID).is_some() || header(headers::REPLY_TOPIC).is_some();
        found.dedup_key = match (
            header(headers::WEBHOOK_VERSION),
            header(headers::EVENT_ID),
            header(headers::EVENT_TYPE),
        ) {
            (Some(version), Some(id), Some(event_type)) if !exchange => {
                crate::dedup::key_of_headers(version, id, event_type, &found.payload)
            }
            _ => None,
        };
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
            .as_ref()
            .is_none_or(|since| self.at.is_some_and(|at| at >= since.at));
        let until = options
            .until
            .as_ref()
            .is_none_or(|until| self.at.is_some_and(|at| at < until.at));
        reason && topic && since && until
    }

    /// Appends the record again to the dead-letter topic, as it is plus `fp-redrive-error`, so
    /// that the next run of the same command (which starts after this one's progress) tries it
    /// again; the offset it got.
    async fn append_again(
        &self,
        producer: &FutureProducer<ToolContext>,
        dead_letter_topic: &str,
        error: &str,
    ) -> Result<i64, String> {
        self.send(
            producer,
            dead_letter_topic,
            &self.all_headers,
            &[(REDRIVE_ERROR, error.as_bytes())],
        )
        .await
        .map_err(|error| format!("{dead_letter_topic} refused it too: {error}"))
    }

    /// Writes the record to `topic` as it was before it was dead-lettered, and waits for Kafka.
    async fn put_back(
        &self,
        producer: &FutureProducer<ToolContext>,
        topic: &str,
        dead_letter_topic: &str,
    ) -> Result<(), String> {
        let from = format!("{dead_letter_topic}/{}/{}", self.partition, self.offset);
        self.send(
            producer,
            topic,
            &self.headers,
            &[
                (REDRIVEN_FROM, from.as_bytes()),
                (REDRIVEN_REASON, self.reason.as_bytes()),
            ],
        )
        .await
        .map(|_| ())
        .map_err(|error| format!("Kafka refused it on {topic}: {error}"))
    }

    /// Writes this record's key and value to `topic` with `headers` and then `extra`, and
    /// waits for Kafka; the offset it got.
    async fn send(
        &self,
        producer: &FutureProducer<ToolContext>,
        topic: &str,
        headers: &[(String, Vec<u8>)],
        extra: &[(&str, &[u8])],
    ) -> Result<i64, rdkafka::error::KafkaError> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len() + extra.len());
        let all = headers
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_slice()))
            .chain(extra.iter().copied());
        for (key, value) in all {
            owned = owned.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&self.payload)
            .headers(owned);
        if let Some(key) = &self.key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|delivery| delivery.offset)
            .map_err(|(error, _)| error)
    }
}
