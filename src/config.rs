//! Typed configuration: defaults, the TOML file, `FP_RELAY_*` environment overrides and
//! command-line overrides, merged in that order and validated once at start-up.
//!
//! Every error names the field it is about (`kafka.ack_timeout: ...`), so an operator never has
//! to guess which line of a file or which variable was wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::webhook::routing::{is_valid_topic, TOPIC_PLACEHOLDER};

/// FirstPromoter v1 gives up on a webhook after 15 seconds; anything the relay waits for must
/// finish before that or the answer is never read.
pub const FIRSTPROMOTER_V1_TIMEOUT: Duration = Duration::from_secs(15);

/// Prefix of the environment variables that override the file: `FP_RELAY_{SECTION}_{KEY}`.
pub const ENV_PREFIX: &str = "FP_RELAY_";

/// The whole configuration of one relay process.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The public listener FirstPromoter posts to.
    pub http: HttpConfig,
    /// Who may post.
    pub auth: AuthConfig,
    /// Secrets taken out of payloads before they reach Kafka.
    pub redact: RedactConfig,
    /// The durable local spool for when Kafka is unreachable.
    pub spool: SpoolConfig,
    /// Duplicate suppression by event id.
    pub dedup: DedupConfig,
    /// The private listener for probes and metrics.
    pub admin: AdminConfig,
    /// Where events go and how they are acknowledged.
    pub kafka: KafkaConfig,
    /// The hold-and-reply exchange for `fulfilment_pending`.
    pub fulfilment: FulfilmentConfig,
}

/// The public webhook listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the webhook listener binds.
    pub listen: SocketAddr,
    /// Path FirstPromoter posts to; everything else is 404.
    pub path: String,
    /// Largest body accepted; a larger one is refused with 413 before it is read further.
    pub max_body_bytes: usize,
    /// How long graceful shutdown waits for open requests before it closes them.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// A client must send its request headers within this (slow-loris guard). An idle HTTP/1
    /// keep-alive connection waiting for its next request is also closed after it.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A client must send its whole body within this after its headers (and within
    /// `kafka.ack_timeout`, which bounds everything after the head); else 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A connection with no request in progress is closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request head (request line and headers); larger is refused with 431.
    pub max_header_bytes: usize,
    /// Most body bytes buffered across all requests at once (a memory budget): a request
    /// that would exceed it is answered 503 with Retry-After before its body is read.
    pub max_buffered_body_bytes: u64,
    /// Accept HTTP/2 without TLS (h2c, prior knowledge). Off: plain-text connections are
    /// HTTP/1.1 only, so every request counts against `max_connections` and
    /// `header_read_timeout` (HTTP/2 streams would not). With TLS, HTTP/2 is always offered.
    pub h2c: bool,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 via ALPN) instead of plain HTTP.
    pub tls: Option<TlsConfig>,
}

/// Native TLS on the public listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_path: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: std::path::PathBuf,
    /// How often the files are checked for changes; they are also reloaded on SIGHUP.
    #[serde(with = "humantime_serde", default = "default_tls_reload_interval")]
    pub reload_interval: Duration,
}

fn default_tls_reload_interval() -> Duration {
    Duration::from_secs(10)
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            path: "/webhooks/firstpromoter".to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_timeout: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_header_bytes: 16 * 1024,
            max_buffered_body_bytes: 64 * 1024 * 1024,
            h2c: false,
            tls: None,
        }
    }
}

/// Who may post. At least one credential mode, or `insecure_no_auth = true`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// FirstPromoter v2 signing secrets: `X-Webhook-Signature` is verified against each, so a
    /// new secret can be added before the old one is removed.
    pub signature_secrets: Vec<String>,
    /// Refuse requests without `X-Webhook-Signature`.
    pub require_signature: bool,
    /// Header carrying a shared token; in `authorization` it is `Bearer <token>`.
    pub token_header: String,
    /// Accepted shared tokens (FirstPromoter v2 custom headers).
    pub tokens: Vec<String>,
    /// Accepted HTTP Basic users and passwords (FirstPromoter v2 subscriptions).
    pub basic: BTreeMap<String, String>,
    /// Accepted tokens in the path, `POST {http.path}/{token}` (FirstPromoter v1).
    pub path_tokens: Vec<String>,
    /// Client networks allowed to post (CIDR); empty allows any.
    pub allow_sources: Vec<IpNet>,
    /// Proxies whose forwarding header is believed (CIDR).
    pub trusted_proxies: Vec<IpNet>,
    /// The one header those proxies set: `x-forwarded-for` or `forwarded`. Only it is read,
    /// so a client cannot slip in the other one.
    pub forwarded_header: ForwardedHeader,
    /// Run with no credential check at all (`--insecure-no-auth`).
    pub insecure_no_auth: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            signature_secrets: Vec::new(),
            require_signature: false,
            token_header: "authorization".to_owned(),
            tokens: Vec::new(),
            basic: BTreeMap::new(),
            path_tokens: Vec::new(),
            allow_sources: Vec::new(),
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::XForwardedFor,
            insecure_no_auth: false,
        }
    }
}

/// The header a trusted proxy records the client address in.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, ...` (most load balancers).
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for=proxy1`.
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// Secrets removed from payloads before publishing (FirstPromoter sends the promoter's
/// `auth_token` and `temp_password` in several events).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    /// Field names redacted wherever they appear, at any depth.
    pub fields: Vec<String>,
    /// JSON pointers redacted at exactly that place, e.g. `/data/promoter/email`.
    pub pointers: Vec<String>,
    /// Remove the field instead of replacing its value.
    pub remove: bool,
    /// The value a redacted field gets when it is not removed.
    pub replacement: String,
}

impl Default for RedactConfig {
    fn default() -> Self {
        Self {
            fields: vec!["auth_token".to_owned(), "temp_password".to_owned()],
            pointers: Vec::new(),
            remove: false,
            replacement: "[redacted]".to_owned(),
        }
    }
}

/// The durable spool (off by default; recommended for FirstPromoter v1, which never retries).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Spool standard events Kafka cannot take within `handoff_after`, and answer 202.
    pub enabled: bool,
    /// Directory of the journal; must survive restarts (a volume, not tmpfs).
    pub dir: std::path::PathBuf,
    /// How long a request waits for Kafka before its event is spooled. Below `kafka.ack_timeout`.
    #[serde(with = "humantime_serde")]
    pub handoff_after: Duration,
    /// Largest journal; when full, the relay answers 503 again.
    pub max_bytes: u64,
    /// How long librdkafka keeps retrying a write that was handed off (its outcome decides
    /// whether the spooled copy is replayed).
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: "/var/lib/fp-relay/spool".into(),
            handoff_after: Duration::from_secs(2),
            max_bytes: 1024 * 1024 * 1024,
            delivery_timeout: Duration::from_secs(300),
        }
    }
}

/// Duplicate suppression: a repeated event id is answered 200 `duplicate` without publishing.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Remember published event ids (per relay instance).
    pub enabled: bool,
    /// How long an id is remembered.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Most ids remembered; the oldest are forgotten first.
    pub max_entries: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            window: Duration::from_secs(24 * 3600),
            max_entries: 1_000_000,
        }
    }
}

/// The private listener: `/healthz`, `/readyz`, `/metrics`. Keep it off the internet.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address the admin listener binds; loopback by default so nothing leaks by accident.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// Kafka: brokers, topic routing, acknowledgement and client passthrough settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`host:port,host:port`).
    pub brokers: String,
    /// Topic for an event type; `{event_type}` is replaced by the sanitised event type.
    pub topic_template: String,
    /// Per-event-type topic overrides, e.g. `reward_created = "rewards"`.
    pub topics: BTreeMap<String, String>,
    /// Per-event-type message key overrides as JSON pointers, e.g. `reward_created = "/data/promoter/id"`.
    pub keys: BTreeMap<String, String>,
    /// Where bodies that cannot be parsed go, raw, so an operator can recover them.
    pub dead_letter_topic: String,
    /// Longest wait for Kafka's acknowledgement before the relay answers 503. Below 15 s.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// The CloudEvents `ce_source` header of every message.
    pub cloudevents_source: String,
    /// How often the relay checks that it can still reach the cluster (drives `/readyz`).
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// librdkafka settings for every client (SASL, TLS, ...), passed through as they are.
    pub properties: BTreeMap<String, String>,
    /// librdkafka settings for the producer only (`linger.ms`, `compression.type`, ...).
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka settings for the reply consumer only.
    pub consumer_properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// The producer's `message.max.bytes`: a producer property, else a client property, else
    /// librdkafka's default.
    pub fn message_max_bytes(&self) -> u64 {
        self.producer_properties
            .get("message.max.bytes")
            .or_else(|| self.properties.get("message.max.bytes"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(LIBRDKAFKA_MESSAGE_MAX_BYTES)
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".to_owned(),
            topic_template: format!("firstpromoter.{TOPIC_PLACEHOLDER}"),
            topics: BTreeMap::new(),
            keys: BTreeMap::new(),
            dead_letter_topic: "firstpromoter.dead_letter".to_owned(),
            ack_timeout: Duration::from_secs(10),
            cloudevents_source: "https://firstpromoter.com".to_owned(),
            probe_interval: Duration::from_secs(2),
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
        }
    }
}

/// The `fulfilment_pending` request/reply exchange (see `docs/fulfilment-protocol.md`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FulfilmentConfig {
    /// Off: `fulfilment_pending` is published like any other event and answered 202 so the
    /// reward stays pending instead of being marked fulfilled by a mere acknowledgement.
    pub enabled: bool,
    /// The event type that is held for a reply.
    pub event_type: String,
    /// Topic downstream fulfillers answer on; every replica reads all of its partitions.
    pub reply_topic: String,
    /// Create the reply topic at start-up when it is missing.
    pub create_reply_topic: bool,
    /// Partitions of the reply topic when the relay creates it.
    pub reply_topic_partitions: i32,
    /// How long a request is held for its answer, counted from its arrival.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Accept a `timeout` of 15 s or more (only useful for v2 subscriptions with a longer timeout).
    pub allow_long_timeout: bool,
    /// Status for a `pending` answer: any 2xx except 200.
    pub pending_status: u16,
    /// Status for a `failed` answer: any non-2xx, so FirstPromoter retries.
    pub failed_status: u16,
    /// Status when no answer came in time: any 2xx except 200, so the reward stays pending.
    pub timeout_status: u16,
    /// Most requests held at once; beyond it a request is published and answered pending at once.
    pub max_in_flight: usize,
}

impl Default for FulfilmentConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            event_type: "fulfilment_pending".to_owned(),
            reply_topic: "firstpromoter.fulfilment_replies".to_owned(),
            create_reply_topic: true,
            reply_topic_partitions: 4,
            timeout: Duration::from_secs(10),
            allow_long_timeout: false,
            pending_status: 202,
            failed_status: 500,
            timeout_status: 202,
            max_in_flight: 2048,
        }
    }
}

/// A configuration that cannot be used, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Command-line values that win over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub brokers: Option<String>,
    /// `--insecure-no-auth`: allow running with no credential check.
    pub insecure_no_auth: bool,
}

/// librdkafka's default `message.max.bytes`, the largest record the producer sends.
pub const LIBRDKAFKA_MESSAGE_MAX_BYTES: u64 = 1_000_000;
/// Room kept under `message.max.bytes` for a record's headers, key and framing.
pub const RECORD_OVERHEAD_BYTES: u64 = 16 * 1024;
/// Default `http.max_body_bytes`: 960 KiB, under librdkafka's default `message.max.bytes`
/// less [`RECORD_OVERHEAD_BYTES`] (FirstPromoter's bodies are a few KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 960 * 1024;

/// librdkafka settings the relay owns through typed fields; setting them in a passthrough map
/// would silently weaken the acknowledgement guarantee, so it is refused.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.brokers"),
    ("metadata.broker.list", "kafka.brokers"),
    ("enable.idempotence", "the relay (always true)"),
    ("acks", "the relay (always all)"),
    ("request.required.acks", "the relay (always all)"),
    ("message.timeout.ms", "kafka.ack_timeout"),
    ("delivery.timeout.ms", "kafka.ack_timeout"),
    (
        "enable.auto.commit",
        "the relay (replies are never committed)",
    ),
];

impl Config {
    /// Loads defaults, then `path` (if any), then `FP_RELAY_*` variables from `env`, then
    /// `overrides`, and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let (mut table, origin) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                let table = text
                    .parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                (table, path.display().to_string())
            }
            None => (toml::Table::new(), "defaults".to_owned()),
        };
        apply_env(&mut table, env)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let field = e.path().to_string();
                ConfigError::Invalid {
                    field: if field == "." { origin.clone() } else { field },
                    message: e.into_inner().message().to_owned(),
                }
            })?;
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, overrides: &Overrides) {
        if let Some(listen) = overrides.listen {
            self.http.listen = listen;
        }
        if let Some(listen) = overrides.admin_listen {
            self.admin.listen = listen;
        }
        if let Some(brokers) = &overrides.brokers {
            self.kafka.brokers = brokers.clone();
        }
        self.auth.insecure_no_auth |= overrides.insecure_no_auth;
    }

    /// Checks every rule that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_http()?;
        self.validate_auth()?;
        self.validate_redact()?;
        self.validate_spool()?;
        self.validate_kafka()?;
        self.validate_fulfilment()
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        let path = &self.http.path;
        if !path.starts_with('/') || (path.len() > 1 && path.ends_with('/')) {
            return Err(ConfigError::invalid(
                "http.path",
                format!("{path:?} must start with '/' and not end with one"),
            ));
        }
        for (field, value) in [
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("http.request_timeout", self.http.request_timeout),
            ("http.idle_timeout", self.http.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(field, "must be above 0"));
            }
        }
        if self.http.max_connections == 0 {
            return Err(ConfigError::invalid(
                "http.max_connections",
                "must be at least 1",
            ));
        }
        if !(8 * 1024..=1024 * 1024).contains(&self.http.max_header_bytes) {
            return Err(ConfigError::invalid(
                "http.max_header_bytes",
                "must be between 8 KiB and 1 MiB",
            ));
        }
        if !(1..=64 * 1024 * 1024).contains(&self.http.max_body_bytes) {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                "must be between 1 byte and 64 MiB",
            ));
        }
        if self.http.max_buffered_body_bytes < self.http.max_body_bytes as u64 {
            return Err(ConfigError::invalid(
                "http.max_buffered_body_bytes",
                format!(
                    "must be at least http.max_body_bytes ({}), or no large body could ever be read",
                    self.http.max_body_bytes
                ),
            ));
        }
        // A body the producer cannot send would be accepted by HTTP and then refused by Kafka
        // and by the dead-letter topic alike: refuse it up front with 413 instead.
        let message_max = self.kafka.message_max_bytes();
        if self.http.max_body_bytes as u64 + RECORD_OVERHEAD_BYTES > message_max {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                format!(
                    "must leave {RECORD_OVERHEAD_BYTES} bytes (headers, key) under the producer's \
                     message.max.bytes ({message_max}): at most {}",
                    message_max.saturating_sub(RECORD_OVERHEAD_BYTES)
                ),
            ));
        }
        Ok(())
    }

    /// A development relay answers unauthenticated requests: it listens on 127.0.0.1 unless
    /// its address was chosen (by flag, environment or file, i.e. differs from the default).
    pub fn listen_locally_unless_chosen(&mut self) {
        if self.http.listen == Config::default().http.listen {
            self.http
                .listen
                .set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        let modes = !auth.signature_secrets.is_empty()
            || !auth.tokens.is_empty()
            || !auth.basic.is_empty()
            || !auth.path_tokens.is_empty();
        if !modes && !auth.insecure_no_auth {
            return Err(ConfigError::invalid(
                "auth",
                "no authentication configured: set auth.path_tokens (v1), auth.tokens, auth.basic or \
                 auth.signature_secrets (v2), or run with --insecure-no-auth",
            ));
        }
        if auth.require_signature && auth.signature_secrets.is_empty() {
            return Err(ConfigError::invalid(
                "auth.require_signature",
                "needs auth.signature_secrets",
            ));
        }
        for (field, list) in [
            ("auth.signature_secrets", &auth.signature_secrets),
            ("auth.tokens", &auth.tokens),
            ("auth.path_tokens", &auth.path_tokens),
        ] {
            if list.iter().any(|secret| secret.len() < MIN_SECRET_LEN) {
                return Err(ConfigError::invalid(
                    field,
                    format!("every entry needs at least {MIN_SECRET_LEN} characters"),
                ));
            }
        }
        if auth.path_tokens.iter().any(|t| {
            !t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        }) {
            return Err(ConfigError::invalid(
                "auth.path_tokens",
                "tokens may use only [A-Za-z0-9-._~] (they go in a URL)",
            ));
        }
        for (user, password) in &auth.basic {
            if user.is_empty() || user.contains(':') || password.len() < MIN_SECRET_LEN {
                return Err(ConfigError::invalid(
                    format!("auth.basic.{user}"),
                    format!("needs a user without ':' and a password of at least {MIN_SECRET_LEN} characters"),
                ));
            }
        }
        if http::HeaderName::from_bytes(auth.token_header.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                "auth.token_header",
                "is not a valid header name",
            ));
        }
        Ok(())
    }

    fn validate_spool(&self) -> Result<(), ConfigError> {
        let spool = &self.spool;
        if spool.enabled
            && (spool.handoff_after.is_zero() || spool.handoff_after >= self.kafka.ack_timeout)
        {
            return Err(ConfigError::invalid(
                "spool.handoff_after",
                "must be above 0 and below kafka.ack_timeout (a request waits this long before spooling)",
            ));
        }
        if spool.enabled && spool.max_bytes < 1024 * 1024 {
            return Err(ConfigError::invalid(
                "spool.max_bytes",
                "must be at least 1 MiB",
            ));
        }
        if spool.delivery_timeout < self.kafka.ack_timeout {
            return Err(ConfigError::invalid(
                "spool.delivery_timeout",
                "must be at least kafka.ack_timeout",
            ));
        }
        if self.dedup.enabled && (self.dedup.max_entries == 0 || self.dedup.window.is_zero()) {
            return Err(ConfigError::invalid(
                "dedup",
                "window and max_entries must be above 0",
            ));
        }
        Ok(())
    }

    fn validate_redact(&self) -> Result<(), ConfigError> {
        if let Some(pointer) = self.redact.pointers.iter().find(|p| !p.starts_with('/')) {
            return Err(ConfigError::invalid(
                "redact.pointers",
                format!("{pointer:?} is not a JSON pointer (it must start with '/')"),
            ));
        }
        Ok(())
    }

    fn validate_kafka(&self) -> Result<(), ConfigError> {
        let kafka = &self.kafka;
        if kafka.brokers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.brokers",
                "must name at least one broker",
            ));
        }
        if !is_valid_topic(&kafka.topic_template.replace(TOPIC_PLACEHOLDER, "x")) {
            return Err(ConfigError::invalid(
                "kafka.topic_template",
                format!(
                    "{:?} does not make a valid Kafka topic name",
                    kafka.topic_template
                ),
            ));
        }
        for (event_type, topic) in &kafka.topics {
            check_topic(&format!("kafka.topics.{event_type}"), topic)?;
        }
        check_topic("kafka.dead_letter_topic", &kafka.dead_letter_topic)?;
        for (event_type, pointer) in &kafka.keys {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(ConfigError::invalid(
                    format!("kafka.keys.{event_type}"),
                    format!("{pointer:?} is not a JSON pointer (it must start with '/')"),
                ));
            }
        }
        if kafka.ack_timeout.is_zero() || kafka.ack_timeout >= FIRSTPROMOTER_V1_TIMEOUT {
            return Err(ConfigError::invalid(
                "kafka.ack_timeout",
                "must be above 0 and below 15s (FirstPromoter v1 gives up at 15 s)",
            ));
        }
        if kafka.probe_interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "kafka.probe_interval",
                "must be at least 100ms",
            ));
        }
        for (section, map) in [
            ("kafka.properties", &kafka.properties),
            ("kafka.producer_properties", &kafka.producer_properties),
            ("kafka.consumer_properties", &kafka.consumer_properties),
        ] {
            for key in map.keys() {
                if let Some((_, owner)) = OWNED_PROPERTIES.iter().find(|(k, _)| k == key) {
                    return Err(ConfigError::invalid(
                        format!("{section}.\"{key}\""),
                        format!("conflicts with a typed setting; set {owner} instead"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_fulfilment(&self) -> Result<(), ConfigError> {
        let f = &self.fulfilment;
        check_topic("fulfilment.reply_topic", &f.reply_topic)?;
        if f.event_type.is_empty() {
            return Err(ConfigError::invalid(
                "fulfilment.event_type",
                "must not be empty",
            ));
        }
        if f.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "fulfilment.timeout",
                "must be above 0",
            ));
        }
        if f.timeout >= FIRSTPROMOTER_V1_TIMEOUT && !f.allow_long_timeout {
            return Err(ConfigError::invalid(
                "fulfilment.timeout",
                "must be below 15s, where FirstPromoter v1 gives up \
                 (set fulfilment.allow_long_timeout = true for v2 subscriptions with a longer timeout)",
            ));
        }
        for (field, status) in [
            ("fulfilment.pending_status", f.pending_status),
            ("fulfilment.timeout_status", f.timeout_status),
        ] {
            if !(201..=299).contains(&status) {
                return Err(ConfigError::invalid(
                    field,
                    format!(
                        "{status} must be a 2xx other than 200 (200 marks the reward fulfilled)"
                    ),
                ));
            }
        }
        if !(300..=599).contains(&f.failed_status) {
            return Err(ConfigError::invalid(
                "fulfilment.failed_status",
                format!(
                    "{} must be a non-2xx status from 300 to 599 so FirstPromoter retries",
                    f.failed_status
                ),
            ));
        }
        if self.fulfilment.enabled && f.max_in_flight > self.http.max_connections / 2 {
            return Err(ConfigError::invalid(
                "fulfilment.max_in_flight",
                format!(
                    "must be at most half of http.max_connections ({}): held requests each keep a \
                     connection, and standard events must always find one",
                    self.http.max_connections
                ),
            ));
        }
        if f.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "fulfilment.max_in_flight",
                "must be at least 1",
            ));
        }
        if !(1..=10_000).contains(&f.reply_topic_partitions) {
            return Err(ConfigError::invalid(
                "fulfilment.reply_topic_partitions",
                "must be between 1 and 10000",
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, with every secret-looking value masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        let auth = &mut shown.auth;
        for list in [
            &mut auth.signature_secrets,
            &mut auth.tokens,
            &mut auth.path_tokens,
        ] {
            list.iter_mut().for_each(|secret| *secret = MASK.to_owned());
        }
        auth.basic
            .values_mut()
            .for_each(|password| *password = MASK.to_owned());
        for map in [
            &mut shown.kafka.properties,
            &mut shown.kafka.producer_properties,
            &mut shown.kafka.consumer_properties,
        ] {
            for (key, value) in map.iter_mut() {
                if is_secret_property(key) {
                    *value = MASK.to_owned();
                }
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Shortest secret, token or password accepted: guessing must stay hopeless.
pub const MIN_SECRET_LEN: usize = 16;

/// What a masked secret looks like in output.
pub const MASK: &str = "********";

/// True for librdkafka settings that hold credentials or key material.
pub fn is_secret_property(key: &str) -> bool {
    const MARKERS: &[&str] = &[
        "password",
        "secret",
        "jaas",
        "oauthbearer.config",
        "key.pem",
        "ssl.key",
        "token",
    ];
    let key = key.to_ascii_lowercase();
    MARKERS.iter().any(|m| key.contains(m))
}

fn check_topic(field: &str, topic: &str) -> Result<(), ConfigError> {
    if is_valid_topic(topic) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("{topic:?} is not a valid Kafka topic name (1-249 of [a-zA-Z0-9._-], not '.' or '..')"),
        ))
    }
}

/// Sections that `FP_RELAY_{SECTION}_{KEY}` may address; other `FP_RELAY_*` variables are not
/// configuration and are left alone.
const SECTIONS: &[&str] = &[
    "http",
    "admin",
    "auth",
    "redact",
    "spool",
    "dedup",
    "kafka",
    "fulfilment",
];

/// Overlays `FP_RELAY_{SECTION}_{KEY}=value` on the file's table. `FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD`
/// sets the librdkafka property `sasl.password` (underscores become dots). Values are read as
/// TOML scalars, arrays or inline tables when they parse as one (`true`, `42`, `["a", "b"]`,
/// `{ firstpromoter = "..." }`) and as strings otherwise, so `10s` and `host:9092` need no
/// quoting. A table is merged into the file's entry by entry, and one entry can be set with a
/// double underscore: `FP_RELAY_AUTH_BASIC__FIRSTPROMOTER=secret` sets `auth.basic.firstpromoter`.
/// An unknown key is refused by the strict parse that follows.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            continue;
        };
        let key = &rest[section.len() + 1..];
        let section_table = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| ConfigError::invalid(*section, "must be a table"))?;
        if let Some(property) = key.strip_prefix("property_") {
            let properties = section_table
                .entry("properties")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| {
                    ConfigError::invalid(format!("{section}.properties"), "must be a table")
                })?;
            properties.insert(property.replace('_', "."), toml::Value::String(raw));
            continue;
        }
        let (key, value) = match key.split_once("__") {
            Some((table, entry)) => {
                let mut single = toml::Table::new();
                single.insert(entry.to_owned(), env_value(&raw));
                (table, toml::Value::Table(single))
            }
            None => (key, env_value(&raw)),
        };
        match (section_table.get_mut(key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(entries)) => {
                existing.extend(entries);
            }
            (_, value) => {
                section_table.insert(key.to_owned(), value);
            }
        }
    }
    Ok(())
}

fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_)
                | toml::Value::Boolean(_)
                | toml::Value::Float(_)
                | toml::Value::Array(_)
                | toml::Value::Table(_)),
            ) => v,
            _ => toml::Value::String(raw.to_owned()),
        },
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `text` with `insecure_no_auth` added, so tests of other sections need no credentials.
    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_exact(&format!("{text}\n[auth]\ninsecure_no_auth = true\n"), env)
    }

    fn load_exact(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("fp-relay-config-{}", uuid::Uuid::new_v4()));
        std::fs::write(&dir, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let result = Config::load(Some(&dir), env, &Overrides::default());
        std::fs::remove_file(&dir).ok();
        result
    }

    #[test]
    fn shipped_example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/relay.toml");
        // Credentials come from the environment, as the example's comments recommend.
        let env = vec![(
            "FP_RELAY_AUTH_PATH_TOKENS".to_owned(),
            r#"["0123456789abcdef"]"#.to_owned(),
        )];
        let config = Config::load(Some(&path), env, &Overrides::default()).unwrap();
        assert_eq!(config.http.path, "/webhooks/firstpromoter");
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let mut config = load_str("", &[]).unwrap();
        config.auth.insecure_no_auth = false;
        assert_eq!(config, Config::default());
        assert_eq!(config.http.max_body_bytes, 960 * 1024);
        assert_eq!(config.kafka.topic_template, "firstpromoter.{event_type}");
        assert_eq!(config.kafka.ack_timeout, Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = load_str("[kafka]\nbrokerz = \"x:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("brokerz"), "{err}");
    }

    #[test]
    fn bad_value_names_the_field_path() {
        let err = load_str("[kafka]\nack_timeout = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("kafka.ack_timeout"), "{err}");
    }

    #[test]
    fn ack_timeout_must_stay_below_firstpromoter_timeout() {
        let err = load_str("[kafka]\nack_timeout = \"15s\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("kafka.ack_timeout:"), "{err}");
    }

    #[test]
    fn passthrough_property_conflicting_with_typed_setting_is_refused() {
        let err = load_str(
            "[kafka.properties]\n\"enable.idempotence\" = \"false\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("enable.idempotence"), "{err}");
    }

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        let env = [
            ("FP_RELAY_KAFKA_BROKERS", "env:9092"),
            ("FP_RELAY_KAFKA_ACK_TIMEOUT", "3s"),
            ("FP_RELAY_FULFILMENT_MAX_IN_FLIGHT", "7"),
            ("FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD", "hunter2"),
            ("FP_RELAY_UNRELATED", "ignored"),
        ];
        let config = load_str("[kafka]\nbrokers = \"file:9092\"\n", &env).unwrap();
        assert_eq!(config.kafka.brokers, "env:9092");
        assert_eq!(config.kafka.ack_timeout, Duration::from_secs(3));
        assert_eq!(config.fulfilment.max_in_flight, 7);
        assert_eq!(config.kafka.properties["sasl.password"], "hunter2");

        let mut overridden = config.clone();
        overridden.apply(&Overrides {
            brokers: Some("flag:9092".into()),
            ..Default::default()
        });
        assert_eq!(overridden.kafka.brokers, "flag:9092");
    }

    #[test]
    fn unknown_environment_key_in_a_known_section_is_refused() {
        let err = load_str("", &[("FP_RELAY_KAFKA_BROKER", "x:1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("broker"), "{err}");
    }

    #[test]
    fn fulfilment_statuses_are_checked_against_the_protocol() {
        for (text, field) in [
            (
                "[fulfilment]\npending_status = 200\n",
                "fulfilment.pending_status",
            ),
            (
                "[fulfilment]\ntimeout_status = 500\n",
                "fulfilment.timeout_status",
            ),
            (
                "[fulfilment]\nfailed_status = 204\n",
                "fulfilment.failed_status",
            ),
            ("[fulfilment]\ntimeout = \"20s\"\n", "fulfilment.timeout"),
        ] {
            let err = load_str(text, &[]).unwrap_err().to_string();
            assert!(err.starts_with(field), "{text}: {err}");
        }
        let long = load_str(
            "[fulfilment]\ntimeout = \"20s\"\nallow_long_timeout = true\n",
            &[],
        );
        assert!(long.is_ok());
    }

    #[test]
    fn masked_output_hides_credentials() {
        let config = load_str(
            "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"sasl.username\" = \"relay\"\n",
            &[],
        )
        .unwrap();
        let shown = config.to_masked_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("relay"), "{shown}");
        assert!(shown.contains(MASK));
    }

    #[test]
    fn no_authentication_is_refused_unless_explicitly_insecure() {
        let err = load_exact("", &[]).unwrap_err().to_string();
        assert!(err.starts_with("auth:"), "{err}");
        assert!(load_exact("[auth]\npath_tokens = [\"0123456789abcdef\"]\n", &[]).is_ok());
        let env = [("FP_RELAY_AUTH_TOKENS", r#"["0123456789abcdef0"]"#)];
        assert_eq!(
            load_exact("", &env).unwrap().auth.tokens,
            vec!["0123456789abcdef0"]
        );
    }

    #[test]
    fn weak_or_malformed_credentials_are_refused_naming_the_field() {
        for (text, field) in [
            ("[auth]\ntokens = [\"short\"]\n", "auth.tokens"),
            (
                "[auth]\npath_tokens = [\"has/slash/0123456789\"]\n",
                "auth.path_tokens",
            ),
            ("[auth]\nbasic = { fp = \"short\" }\n", "auth.basic.fp"),
            (
                "[auth]\nrequire_signature = true\ninsecure_no_auth = true\n",
                "auth.require_signature",
            ),
            (
                "[auth]\nallow_sources = [\"not-a-cidr\"]\ninsecure_no_auth = true\n",
                "auth.allow_sources",
            ),
        ] {
            let err = load_exact(text, &[]).unwrap_err().to_string();
            assert!(err.starts_with(field), "{text}: {err}");
        }
    }

    #[test]
    fn masked_output_hides_every_auth_secret() {
        let config = load_exact(
            "[auth]\ntokens = [\"tok-0123456789abcdef\"]\nsignature_secrets = [\"sig-0123456789abcdef\"]\n\
             path_tokens = [\"pth-0123456789abcdef\"]\nbasic = { fp = \"pw-0123456789abcdef\" }\n",
            &[],
        )
        .unwrap();
        let shown = config.to_masked_toml();
        for secret in ["tok-", "sig-", "pth-", "pw-"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
    }

    #[test]
    fn invalid_topic_names_are_refused() {
        let err = load_str("[kafka.topics]\nlead_signup = \"bad topic\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("kafka.topics.lead_signup"), "{err}");
    }

    #[test]
    fn dev_mode_listens_on_localhost_unless_an_address_was_chosen() {
        let mut config = Config::default();
        config.listen_locally_unless_chosen();
        assert_eq!(config.http.listen, "127.0.0.1:8080".parse().unwrap());
        let mut chosen = Config::default();
        chosen.http.listen = "0.0.0.0:9000".parse().unwrap();
        chosen.listen_locally_unless_chosen();
        assert_eq!(chosen.http.listen, "0.0.0.0:9000".parse().unwrap());
    }

    #[test]
    fn environment_variables_set_tables_whole_or_one_entry_at_a_time() {
        let config = load_exact(
            "[auth]\nbasic = { from_file = \"password-in-file-0001\" }\n",
            &[
                ("FP_RELAY_AUTH_BASIC__FIRSTPROMOTER", "password-from-env-01"),
                (
                    "FP_RELAY_KAFKA_TOPICS",
                    r#"{ reward_created = "affiliate.rewards", "referral.created" = "affiliate.referrals" }"#,
                ),
            ],
        )
        .unwrap();
        assert_eq!(config.auth.basic["firstpromoter"], "password-from-env-01");
        assert_eq!(
            config.auth.basic["from_file"], "password-in-file-0001",
            "merged, not replaced"
        );
        assert_eq!(config.kafka.topics["reward_created"], "affiliate.rewards");
        assert_eq!(
            config.kafka.topics["referral.created"],
            "affiliate.referrals"
        );
    }
}
