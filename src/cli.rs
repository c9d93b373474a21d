//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::fulfilment::correlator::Outcome;
use crate::telemetry::LogFormat;

/// Takes FirstPromoter webhooks off the public internet and puts them into Kafka.
///
/// Standard events are answered 2xx only once Kafka has acknowledged them; fulfilment_pending
/// is held until a downstream fulfiller answers over a Kafka reply topic.
#[derive(Debug, Parser)]
#[command(name = "fp-relay", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    ///
    /// Configuration is merged in this order, later wins: built-in defaults, the TOML file,
    /// FP_RELAY_{SECTION}_{KEY} environment variables (e.g. FP_RELAY_KAFKA_BROKERS,
    /// FP_RELAY_KAFKA_ACK_TIMEOUT=5s, FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD for the librdkafka
    /// property sasl.password), then these flags.
    Serve(ServeArgs),
    /// Validate a configuration file and print the effective configuration, secrets masked.
    CheckConfig(CheckConfigArgs),
    /// A reference fulfiller: answer every fulfilment request with one outcome.
    ///
    /// Consumes the fulfilment topic and replies on the topic named by each request's
    /// fp-reply-topic header, as docs/fulfilment-protocol.md says a downstream service should.
    Respond(RespondArgs),
    /// Simulate FirstPromoter: post built-in sample events (or a captured body) to a relay.
    ///
    /// Samples exist for every v1 event type and for promoter.created, referral.created,
    /// referral.converted, commission.created, commission.updated and payout.completed (v2,
    /// sent with X-Event-Id and X-Event-Type). Each copy gets a fresh event id. Exits 1 if any
    /// request was not acknowledged with a 2xx.
    Send(SendArgs),
    /// Print what the relay wrote to Kafka: topic, partition, offset, key, headers and the
    /// pretty-printed value with promoter secrets masked.
    Tail(TailArgs),
}

/// `fp-relay send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The relay's webhook URL (http://); append /<token> when the relay expects a v1 path token.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/firstpromoter")]
    pub url: String,
    /// An event type to send (repeatable), e.g. --event lead_signup --event payout.completed.
    #[arg(long = "event", value_name = "TYPE")]
    pub events: Vec<String>,
    /// Send every built-in sample.
    #[arg(long)]
    pub all: bool,
    /// Send a captured webhook body from this file (as it is).
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// Copies of each event to send.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Requests per second (default: as fast as answers come).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Sign the body like a FirstPromoter v2 subscription (X-Webhook-Signature).
    #[arg(long, value_name = "SECRET")]
    pub secret: Option<String>,
    /// Send "Authorization: Bearer <TOKEN>" (a v2 custom header).
    #[arg(long)]
    pub token: Option<String>,
    /// Send HTTP Basic credentials.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub basic: Option<String>,
    /// Longest wait for one answer (fulfilment requests are held up to fulfilment.timeout).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub timeout: Duration,
}

/// `fp-relay tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Kafka bootstrap servers (the address `serve --dev` prints).
    #[arg(long, value_name = "LIST", default_value = "localhost:9092")]
    pub brokers: String,
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
    /// A librdkafka property for the Kafka client, e.g. `-X security.protocol=SASL_SSL
    /// -X sasl.mechanisms=SCRAM-SHA-512` (repeatable).
    #[arg(short = 'X', long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

/// `fp-relay serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see config/relay.toml for every setting).
    #[arg(long, short, env = "FP_RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the public webhook listener [default: 0.0.0.0:8080; 127.0.0.1:8080 with --dev].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the private listener for /healthz, /readyz and /metrics [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Kafka bootstrap servers, comma separated [default: localhost:9092].
    #[arg(long, value_name = "LIST")]
    pub brokers: Option<String>,
    /// Start an embedded in-memory Kafka-protocol broker and relay to it (for trying it out).
    /// Without [auth] settings, --dev accepts unauthenticated requests (with a warning).
    #[arg(long, conflicts_with = "brokers")]
    pub dev: bool,
    /// Accept requests without any credential check. Only behind something that checks them.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// `fp-relay check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// TOML configuration file to validate.
    #[arg(long, short, env = "FP_RELAY_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// Check the file as `serve --insecure-no-auth` would read it (no warning when it
    /// configures no credentials).
    #[arg(long)]
    pub insecure_no_auth: bool,
}

/// `fp-relay respond`.
#[derive(Debug, Args)]
pub struct RespondArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, value_name = "LIST", default_value = "localhost:9092")]
    pub brokers: String,
    /// A librdkafka property for the Kafka client, e.g. `-X security.protocol=SASL_SSL
    /// -X sasl.mechanisms=SCRAM-SHA-512` (repeatable).
    #[arg(short = 'X', long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
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
    #[arg(long, default_value = "firstpromoter.fulfilment_replies")]
    pub reply_topic: String,
    /// Wait this long before each answer (e.g. 20s to watch the relay time out).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub delay: Duration,
    /// Consumer group; responders in one group share the requests.
    #[arg(long, default_value = "fp-relay-responder")]
    pub group: String,
}

/// `KEY=VALUE` for `--property`.
fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}
