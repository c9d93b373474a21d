//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;
use crate::tools::drain::DrainOptions;
use crate::tools::firstpromoter::{RecoverOptions, StatusOptions, SubscribeOptions};
use crate::tools::redrive::RedriveOptions;
use crate::tools::requeue::RequeueOptions;
use crate::tools::respond::ResponderOptions;
use crate::tools::send::SendOptions;
use crate::tools::spool_status::SpoolStatusOptions;
use crate::tools::tail::TailOptions;

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
    /// Validate the configuration as `serve` would read it and print the effective
    /// configuration, secrets masked.
    ///
    /// Reads the same layers as `serve`: built-in defaults, the file (--config or
    /// FP_RELAY_CONFIG, if given), then FP_RELAY_{SECTION}_{KEY} variables. Without a file it
    /// checks an environment-only setup. Exits 2, naming the setting and its variable, when
    /// `serve` would refuse it.
    CheckConfig(CheckConfigArgs),
    /// A reference fulfiller: answer every fulfilment request with one outcome.
    ///
    /// Consumes the fulfilment topic and replies on the topic named by each request's
    /// fp-reply-topic header, as docs/fulfilment-protocol.md says a downstream service should.
    Respond(ResponderOptions),
    /// Simulate FirstPromoter: post built-in sample events (or a captured body) to a relay.
    ///
    /// Samples exist for every v1 event type and for promoter.created, referral.created,
    /// referral.converted, commission.created, commission.updated, commission.updated.reward (a
    /// commission.updated approving a points reward: a fulfilment request with [fulfilment.v2])
    /// and payout.completed (v2, sent with X-Event-Id and X-Event-Type). Each copy gets a fresh
    /// event id. Exits 1 if any request was not acknowledged with a 2xx.
    Send(SendOptions),
    /// Print what the relay wrote to Kafka: topic, partition, offset, key, headers and the
    /// pretty-printed value with promoter secrets masked.
    Tail(TailOptions),
    /// Put records from the dead-letter topic back on the topic they came from, once their
    /// cause is fixed (a topic's ACL, FirstPromoter's API key).
    ///
    /// Standard events Kafka refused go back to their event topic; v2 fulfilment replies
    /// FirstPromoter refused (or was given up on) go back to the reply topic, where the relay
    /// acts on them again. Filter by --reason, --topic, --since and --until; --dry-run lists
    /// what would move. Progress is kept in a consumer group of its own, so running the same
    /// command again moves nothing new.
    Redrive(RedriveOptions),
    /// Work on a spool directory without serving.
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Ask the admin listener /readyz (or /healthz) and exit 0 when it answers 200: an exec
    /// probe for an admin listener kept on loopback (the image has no shell or curl).
    Probe(crate::tools::probe::ProbeOptions),
    /// FirstPromoter's v2 API: set up the webhook subscription, see what FirstPromoter
    /// delivered, and recover what it gave up on.
    #[command(subcommand, name = "firstpromoter")]
    FirstPromoter(FirstPromoterCommand),
}

/// `fp-relay spool ...`.
#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Replay a spool directory into Kafka, deleting each record once Kafka has it, and exit.
    ///
    /// For a spool whose relay will not come back (a replica scaled down, a machine retired):
    /// run it as a Kubernetes Job on the replica's volume, or from a preStop hook. It reads
    /// Kafka's settings as `serve` does (file, FP_RELAY_* environment, --brokers). Exits 1,
    /// losing nothing, if the spool is not drained within --timeout, or if a file in it could
    /// not be read (kept, never deleted). Refused while a relay (or another drain) owns the
    /// directory.
    Drain(DrainOptions),
    /// Put the spool's quarantined records back into Kafka, once.
    ///
    /// Quarantined records are those neither their topic nor the dead-letter topic would take
    /// (a topic's size limit, an ACL). Once that is fixed, this publishes each to its topic
    /// again (with an fp-requeued-from header) and deletes it; interrupted or stopped by a
    /// refusal, a second run publishes exactly the rest. Refused while a relay owns the
    /// directory.
    Requeue(RequeueOptions),
    /// Print what a spool directory holds: pending records by topic, the oldest's age,
    /// quarantined records and why, files set aside. Safe beside a running relay (read only).
    Status(SpoolStatusOptions),
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
    /// TOML configuration file to validate [default: none: defaults and environment only].
    #[arg(long, short, env = "FP_RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the file as `serve --insecure-no-auth` would read it (no warning when it
    /// configures no credentials).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Print the reference of every setting instead (type, default, environment variable,
    /// meaning) as Markdown, as docs/configuration.md holds it. Reads no configuration.
    #[arg(long)]
    pub reference: bool,
}

/// `fp-relay firstpromoter ...`.
#[derive(Debug, Subcommand)]
pub enum FirstPromoterCommand {
    /// Create or update the v2 webhook subscription that delivers to this relay.
    ///
    /// Found by URL (never a duplicate): every event type FirstPromoter lists, the relay's
    /// credential sent the way the relay checks it (auth.tokens as a custom header, else
    /// auth.basic as HTTP Basic), a timeout that covers the relay's deadline, max_retries 10.
    /// Reads the relay's configuration like `serve`.
    Subscribe(SubscribeOptions),
    /// Show the account's subscriptions and, for those delivering to this relay, the
    /// deliveries of the last day by status.
    Status(StatusOptions),
    /// Put the events of deliveries FirstPromoter gave up on (status failed) into Kafka.
    ///
    /// Each recorded payload goes through the relay's own pipeline (routing, redaction,
    /// headers) with an fp-recovered-from header; an event whose id is on its topic already
    /// is left alone, so running it again publishes nothing twice. --retry-delivery asks
    /// FirstPromoter to send them again instead, where it still can.
    Recover(RecoverOptions),
}
