//! `fp-relay respond`: a reference fulfiller for demos and tests. It consumes the fulfilment
//! topic and answers every request with one chosen outcome, exactly as the contract says a
//! downstream service should.

use std::io::Write;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};

use crate::kafka::context::ToolContext;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use crate::fulfilment::correlator::Outcome;
use crate::kafka::record::headers;

/// What the responder consumes and how it answers.
#[derive(Debug, Clone, clap::Args)]
pub struct ResponderOptions {
    /// Where Kafka is.
    #[command(flatten)]
    pub kafka: super::KafkaArgs,
    /// The answer to give every request.
    #[arg(long, value_enum, default_value_t = Outcome::Fulfilled)]
    pub outcome: Outcome,
    /// Text to send as the reply's reason.
    #[arg(long)]
    pub reason: Option<String>,
    /// Topic the relay publishes fulfilment requests to.
    #[arg(long, default_value = "firstpromoter.fulfilment_pending")]
    pub topic: String,
    /// Reply topic for requests that carry no fp-reply-topic header.
    #[arg(
        long = "reply-topic",
        value_name = "REPLY_TOPIC",
        default_value = "firstpromoter.fulfilment_replies"
    )]
    pub default_reply_topic: String,
    /// Wait this long before each answer (e.g. 20s to watch the relay time out).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub delay: Duration,
    /// Consumer group; responders in one group share the requests.
    #[arg(long, default_value = "fp-relay-responder")]
    pub group: String,
}

/// Answers requests until `stop` resolves.
pub async fn run(
    options: ResponderOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), super::ToolError> {
    // librdkafka's own lines only for errors: a broker away is said once below.
    let (base, brokers) = options.kafka.client(&[("log_level", "3")])?;
    let consumer: StreamConsumer<ToolContext> = base
        .clone()
        .set("group.id", &options.group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        // A relay is holding an HTTP request for every message here: fetch eagerly (see
        // kafka::consumer_config for the measurement behind 5 ms).
        .set("fetch.wait.max.ms", "5")
        .create_with_context(ToolContext)?;
    crate::kafka::aws::hand_first_token(&base, consumer.client());
    let producer: FutureProducer<ToolContext> = base
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create_with_context(ToolContext)?;
    // A wrong address is an error at once, not a wait that never ends.
    if let Err(source) = consumer
        .client()
        .fetch_metadata(Some(&options.topic), Duration::from_secs(10))
    {
        return Err(super::ToolError::Unreachable { brokers, source });
    }
    consumer.subscribe(&[&options.topic])?;
    eprintln!(
        "fp-relay respond: answering {:?} to every request on {} (group {})",
        options.outcome.as_str(),
        options.topic,
        options.group
    );
    tokio::pin!(stop);
    // Piped into `head`, which has read enough: stop as Unix tools do, whether or not another
    // line is ever written (the answers before may all sit in the pipe already).
    let closed = output_closed();
    tokio::pin!(closed);
    let mut last_error = String::new();
    loop {
        let message = tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = &mut closed => return Ok(()),
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            // Typically "unknown topic" until the relay publishes its first request: keep
            // waiting, saying so once per kind of error.
            Err(error) => {
                let text = error.to_string();
                if text != last_error {
                    eprintln!("waiting for requests: {text}");
                    last_error = text;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        last_error.clear();
        // Replies are independent: each is sent on its own task so one slow delivery report
        // does not hold up the next request.
        let (producer, options, request) = (producer.clone(), options.clone(), message.detach());
        tokio::spawn(async move {
            if !options.delay.is_zero() {
                tokio::time::sleep(options.delay).await;
            }
            answer(&producer, &options, &request).await;
        });
    }
}

/// Resolves once standard output is a pipe or socket whose reading end has closed. poll(2)
/// reports POLLERR (pipe) or POLLHUP (socket, terminal) on the writing end then, without a
/// write; for a file it never resolves. The waiting thread blocks in poll and costs nothing.
async fn output_closed() {
    let (closed, wait) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("stdout-watch".into())
        .spawn(move || loop {
            let mut stdout = libc::pollfd {
                fd: libc::STDOUT_FILENO,
                events: 0,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            let ready = unsafe { libc::poll(&mut stdout, 1, -1) };
            if ready > 0 && stdout.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                let _ = closed.send(());
                return;
            }
            if ready < 0
                && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                return; // cannot watch: answer until stopped otherwise
            }
        });
    if spawned.is_err() || wait.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// True when the request's `fp-deadline` (RFC 3339) has passed: the relay has answered
/// FirstPromoter already (v1: "pending", it asks again later), so acting on it now would grant
/// a reward nobody is told about.
fn past_deadline(deadline: Option<&str>, now: std::time::SystemTime) -> bool {
    deadline
        .and_then(|text| humantime::parse_rfc3339_weak(text.trim()).ok())
        .is_some_and(|at| at <= now)
}

/// A client context that keeps librdkafka's connection chatter at debug level: a broker that
/// is away is said once by `run` (librdkafka repeats it for every reconnect attempt).
async fn answer(
    producer: &FutureProducer<ToolContext>,
    options: &ResponderOptions,
    request: &OwnedMessage,
) {
    let header = |name: &str| -> Option<String> {
        request
            .headers()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    };
    let Some(correlation_id) = header(headers::CORRELATION_ID) else {
        eprintln!(
            "skipped offset {}: no {} header",
            request.offset(),
            headers::CORRELATION_ID
        );
        return;
    };
    if past_deadline(
        header(headers::DEADLINE).as_deref(),
        std::time::SystemTime::now(),
    ) {
        // Not an error: a request published before this responder started (or while it was
        // away) that the relay has answered "pending" already. Said so a newcomer's first
        // run, which reads the requests `send --all` left behind, does not look broken.
        eprintln!(
            "old request {correlation_id}: left alone, its fp-deadline passed (the relay already \
             answered it; normal for requests sent before respond started)"
        );
        return;
    }
    let reply_topic =
        header(headers::REPLY_TOPIC).unwrap_or_else(|| options.default_reply_topic.clone());
    let value =
        serde_json::json!({ "outcome": options.outcome.as_str(), "reason": options.reason })
            .to_string();
    // The reply continues the request's trace, as a fulfiller's own span would.
    let traceparent = header(crate::trace::TRACEPARENT)
        .as_deref()
        .and_then(crate::trace::child_of);
    let mut reply_headers = OwnedHeaders::new().insert(Header {
        key: headers::CORRELATION_ID,
        value: Some(&correlation_id),
    });
    if let Some(traceparent) = &traceparent {
        reply_headers = reply_headers.insert(Header {
            key: crate::trace::TRACEPARENT,
            value: Some(traceparent),
        });
    }
    let mut record = FutureRecord::<[u8], str>::to(&reply_topic)
        .payload(&value)
        .headers(reply_headers);
    if let Some(key) = request.key() {
        record = record.key(key);
    }
    match producer.send(record, Duration::from_secs(5)).await {
        Ok(_) => {
            let line = format!(
                "{} -> {} (correlation id {correlation_id})",
                options.outcome.as_str(),
                reply_topic
            );
            // Output piped into `head` and closed: the reply is sent; stop as Unix tools do.
            if let Err(error) = writeln!(std::io::stdout().lock(), "{line}") {
                if error.kind() == std::io::ErrorKind::BrokenPipe {
                    std::process::exit(0);
                }
            }
        }
        Err((error, _)) => eprintln!("cannot reply to {correlation_id}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_deadline_in_the_past_is_past_and_anything_else_is_not() {
        let now = humantime::parse_rfc3339("2026-12-02T10:00:00Z").unwrap();
        assert!(past_deadline(Some("2026-12-02T09:59:59.999Z"), now));
        assert!(past_deadline(Some("2026-12-02T10:00:00Z"), now));
        assert!(!past_deadline(Some("2026-12-02T10:00:00.001Z"), now));
        // What the relay writes (crate::kafka::record::rfc3339) reads back.
        let later = crate::kafka::record::rfc3339(now + Duration::from_secs(10));
        assert!(!past_deadline(Some(&later), now));
        assert!(past_deadline(Some(&later), now + Duration::from_secs(11)));
        // No deadline, or one that does not parse: answered (the relay decides lateness).
        assert!(!past_deadline(None, SystemTime::now()));
        assert!(!past_deadline(Some("soon"), SystemTime::now()));
    }
}
