//! `fp-relay tail`: print what the relay wrote to Kafka: topic, partition, offset, key,
//! headers, and the JSON value pretty-printed with the promoter's secrets masked. Useful with
//! `serve --dev`, where no other Kafka tooling is set up.

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::kafka::context::ToolContext;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::RedactConfig;
use crate::tools::ToolError;
use crate::webhook::redact::Redactor;

/// What to read and when to stop.
#[derive(Debug, Clone, clap::Args)]
pub struct TailOptions {
    /// Where Kafka is (`--brokers`: the address `serve --dev` prints).
    #[command(flatten)]
    pub kafka: super::KafkaArgs,
    /// Only this event type's topic (repeatable); default: every topic starting with --prefix.
    #[arg(long = "event", value_name = "TYPE")]
    pub events: Vec<String>,
    /// Topic name prefix of the relay's topics.
    #[arg(long, default_value = "firstpromoter.")]
    pub prefix: String,
    /// Start at the beginning of each topic instead of its end.
    #[arg(long)]
    pub from_beginning: bool,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<usize>,
    /// Exit after this long without a message (e.g. 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_exit: Option<Duration>,
}

/// How often new topics are looked for.
const REFRESH: Duration = Duration::from_secs(1);

/// Prints messages until `count` or `idle_exit` (or forever). Blocking: run it on its own thread.
pub fn run(options: &TailOptions, out: &mut impl Write) -> Result<usize, ToolError> {
    let (mut client, brokers) = options
        .kafka
        .client(&[("fetch.wait.max.ms", "100"), ("log_level", "3")])?;
    let consumer: BaseConsumer<ToolContext> = client
        .set(
            "group.id",
            format!("fp-relay-tail-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create_with_context(ToolContext)?;
    crate::kafka::aws::hand_first_token(&client, consumer.client());
    let mask = Redactor::new(&RedactConfig::default());
    let mut assigned: HashSet<(String, i32)> = HashSet::new();
    let (mut printed, mut last_message, mut last_refresh) =
        (0usize, Instant::now(), None::<Instant>);
    loop {
        if last_refresh.is_none_or(|at| at.elapsed() >= REFRESH) {
            let first = last_refresh.is_none();
            last_refresh = Some(Instant::now());
            let added =
                new_partitions(&consumer, options, &mut assigned, first).map_err(|error| {
                    match error {
                        ToolError::Kafka(source) if first => ToolError::Unreachable {
                            brokers: brokers.clone(),
                            source,
                        },
                        other => other,
                    }
                })?;
            // Only the new partitions: assigning the whole list again would rewind every
            // partition already being read to its starting offset (records shown twice).
            if added.count() > 0 {
                consumer.incremental_assign(&added)?;
            }
            if first {
                let from = if options.from_beginning {
                    "beginning"
                } else {
                    "end"
                };
                eprintln!(
                    "tail: watching {} partition(s) from their {from}; new topics are read whole",
                    assigned.len()
                );
            }
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                print(&message, &mask, out)?;
                printed += 1;
                last_message = Instant::now();
                if options.count.is_some_and(|count| printed >= count) {
                    return Ok(printed);
                }
            }
            Some(Err(error)) => writeln!(out, "(consumer error: {error})")?,
            None => {}
        }
        if options
            .idle_exit
            .is_some_and(|idle| last_message.elapsed() >= idle)
        {
            return Ok(printed);
        }
    }
}

/// Partitions of wanted topics not read yet, each at the offset to start from. Topics found at
/// start begin at their current end, resolved now (a lazily resolved end would skip what is
/// written meanwhile), or at the beginning if asked; a topic that appears later was created by
/// new events, so it is read whole.
fn new_partitions(
    consumer: &BaseConsumer<ToolContext>,
    options: &TailOptions,
    assigned: &mut HashSet<(String, i32)>,
    first: bool,
) -> Result<TopicPartitionList, ToolError> {
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(5))?;
    let mut added = TopicPartitionList::new();
    for topic in metadata.topics() {
        // --event lead_signup means the topic {prefix}lead_signup.
        let wanted = if options.events.is_empty() {
            topic.name().starts_with(&options.prefix)
        } else {
            options
                .events
                .iter()
                .any(|event| topic.name().strip_prefix(options.prefix.as_str()) == Some(event))
        };
        if !wanted || topic.error().is_some() {
            continue;
        }
        for partition in topic.partitions() {
            if !assigned.insert((topic.name().to_owned(), partition.id())) {
                continue;
            }
            let start = if first && !options.from_beginning {
                let (_, high) = consumer.fetch_watermarks(
                    topic.name(),
                    partition.id(),
                    Duration::from_secs(5),
                )?;
                Offset::Offset(high)
            } else {
                Offset::Beginning
            };
            added.add_partition_offset(topic.name(), partition.id(), start)?;
        }
    }
    Ok(added)
}

fn print(
    message: &rdkafka::message::BorrowedMessage<'_>,
    mask: &Redactor,
    out: &mut impl Write,
) -> Result<(), ToolError> {
    let key = message
        .key()
        .map_or("-".into(), |k| String::from_utf8_lossy(k).into_owned());
    writeln!(
        out,
        "── {} [{}] @{}  key={key}",
        message.topic(),
        message.partition(),
        message.offset()
    )?;
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let value = header
                .value
                .map_or("".into(), |v| String::from_utf8_lossy(v).into_owned());
            writeln!(out, "   {}: {value}", header.key)?;
        }
    }
    let payload = message.payload().unwrap_or_default();
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(mut value) => {
            mask.apply(&mut value);
            for line in serde_json::to_string_pretty(&value)?.lines() {
                writeln!(out, "   {line}")?;
            }
        }
        Err(_) => writeln!(out, "   (not JSON, {} bytes)", payload.len())?,
    }
    writeln!(out)?;
    Ok(())
}
