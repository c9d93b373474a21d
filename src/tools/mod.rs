//! The developer's tools, each a subcommand: `fp-relay send` simulates FirstPromoter with the
//! built-in [`samples`], `fp-relay tail` shows what reached Kafka, `fp-relay respond` is a
//! reference fulfiller, `fp-relay redrive` puts dead letters back, and [`dev`] is the embedded
//! broker behind `serve --dev`.

use std::path::PathBuf;

use rdkafka::error::KafkaError;

pub mod dev;
pub mod drain;
pub mod firstpromoter;
pub mod probe;
pub mod redrive;
pub mod requeue;
pub mod respond;
pub mod samples;
pub mod send;
pub mod spool_status;
pub mod tail;

/// The relay's configuration as `serve` reads it (file, `FP_RELAY_*` environment, `--brokers`),
/// for a tool that serves nothing: webhook credentials are read but not required.
pub fn relay_config(
    file: Option<&std::path::Path>,
    brokers: Option<String>,
) -> Result<crate::config::Config, ToolError> {
    let overrides = crate::config::Overrides {
        brokers,
        insecure_no_auth: true,
        ..Default::default()
    };
    Ok(crate::config::Config::load(
        file,
        std::env::vars(),
        &overrides,
    )?)
}

/// Which spool, and how to reach Kafka: what `spool drain` and `spool requeue` share.
#[derive(Debug, Clone, clap::Args)]
pub struct SpoolArgs {
    /// The spool directory [default: spool.dir from the configuration].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The relay's TOML configuration: its [kafka] and [spool] settings.
    #[arg(long, short, env = "FP_RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides the configuration).
    #[arg(long, value_name = "LIST")]
    pub brokers: Option<String>,
}

impl SpoolArgs {
    /// The relay's configuration and the spool directory these arguments name.
    pub fn load(&self) -> Result<(crate::config::Config, PathBuf), ToolError> {
        let config = relay_config(self.config.as_deref(), self.brokers.clone())?;
        let dir = self.dir.clone().unwrap_or_else(|| config.spool.dir.clone());
        Ok((config, dir))
    }
}

/// A producer for a tool that publishes as the relay does: the relay's `[kafka]` settings and
/// `ack_timeout`, with metrics and a cluster watch of its own (a tool exports neither).
pub fn publisher(
    config: &crate::config::Config,
) -> Result<std::sync::Arc<crate::kafka::publisher::Publisher>, ToolError> {
    use std::sync::Arc;
    Ok(Arc::new(crate::kafka::publisher::Publisher::new(
        crate::kafka::producer_configs(&config.kafka, config.kafka.ack_timeout),
        config.kafka.ack_timeout,
        Arc::new(crate::metrics::Metrics::new()),
        Arc::new(crate::kafka::outage::ClusterWatch::default()),
    )?))
}

/// How a tool reaches Kafka: the relay's own `[kafka]` settings (the same file and
/// `FP_RELAY_*` variables `serve` reads, SASL and TLS included), with `--brokers` and `-X`
/// over them. Without a file or variables it is librdkafka's defaults at localhost:9092.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KafkaArgs {
    /// The relay's configuration file; its [kafka] settings (brokers, SASL, TLS) are used.
    #[arg(long, short, env = "FP_RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers, comma separated [default: kafka.brokers, localhost:9092].
    #[arg(long, value_name = "LIST")]
    pub brokers: Option<String>,
    /// A librdkafka property over the configuration's, e.g. `-X security.protocol=SASL_SSL
    /// -X sasl.mechanisms=SCRAM-SHA-512` (repeatable).
    #[arg(short = 'X', long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

impl KafkaArgs {
    /// Bootstrap servers and properties given on the command line only (tests, scripts).
    pub fn at(brokers: &str, properties: &[(&str, &str)]) -> Self {
        Self {
            config: None,
            brokers: Some(brokers.to_owned()),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The client settings: `defaults`, then the configuration's `kafka.properties`, then
    /// `-X`, with the bootstrap servers; and those servers, for messages.
    pub fn client(
        &self,
        defaults: &[(&str, &str)],
    ) -> Result<(rdkafka::ClientConfig, String), ToolError> {
        let config = relay_config(self.config.as_deref(), self.brokers.clone())?;
        let mut properties = config.kafka.properties.clone();
        properties.extend(self.properties.iter().cloned());
        let client = crate::kafka::client_config(defaults, &properties, &config.kafka);
        Ok((client, config.kafka.brokers))
    }
}

/// `KEY=VALUE` for `--property`.
pub fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// Why a developer tool stopped.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The configuration (file, `FP_RELAY_*` environment) is unusable: exit status 2, as
    /// `serve` and `check-config` answer it.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The command line asks for something that cannot be done (exit status 2 too).
    #[error("{0}")]
    Usage(String),
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Writing the tool's output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// The relay did not answer.
    #[error("cannot reach {url}: {detail}")]
    Http { url: String, detail: String },
    /// A Kafka client failed.
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    /// The brokers given did not answer.
    #[error("cannot reach Kafka at {brokers} ({source}); is the address right? `serve --dev` prints its broker's")]
    Unreachable { brokers: String, source: KafkaError },
    /// A body that should be JSON is not.
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The command did part of its work and said what it left undone (exit status 1).
    #[error("{0}")]
    Incomplete(String),
}
