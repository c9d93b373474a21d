//! Typed configuration: defaults, the TOML file, `FP_RELAY_*` environment overrides and
//! command-line overrides, merged in that order and validated once at start-up.
//!
//! Every error names the field it is about (`kafka.ack_timeout: ...`), so an operator never has
//! to guess which line of a file or which variable was wrong.
//!
//! Layout: this file holds the settings themselves (every field with its doc and its default,
//! which is why it is over 450 lines: it is the typed reference of config/relay.toml) and
//! loading; `validate.rs` holds the rules, `env.rs` the environment layer, `tests.rs` their tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::webhook::envelope::WebhookVersion;
use crate::webhook::routing::TOPIC_PLACEHOLDER;

pub mod env;
mod validate;

use env::apply_env;
pub use validate::check_webhook_url;

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
    /// FirstPromoter's v2 API: v2 fulfilment, reconciliation and the `firstpromoter` commands.
    pub firstpromoter: FirstPromoterConfig,
    /// Traces exported to an OpenTelemetry collector.
    pub telemetry: TelemetryConfig,
    /// Settings written in an old place and moved to the new one while loading; logged at
    /// start-up and printed by check-config. Never part of the file.
    #[serde(skip)]
    pub deprecations: Vec<String>,
    /// Settings read from files named by `FP_RELAY_..._FILE` variables; `auth.*` ones are
    /// reloaded when their files change. Never part of the file.
    #[serde(skip)]
    pub secret_files: Vec<env::SecretFile>,
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
    /// Most connections open at once; further clients wait in the listen backlog. Lowered at
    /// start-up (with a warning) to what fits under the process's descriptor limit.
    pub max_connections: usize,
    /// Most connections open at once from one address, so that one client (silent TLS
    /// handshakes, idle sockets) cannot take every slot; further connections from it are
    /// closed at once. `auth.trusted_proxies` are exempt: everyone arrives through them.
    pub max_connections_per_source: usize,
    /// Largest request head (request line and headers); larger is refused with 431.
    pub max_header_bytes: usize,
    /// Most body bytes buffered across all requests at once (a memory budget), counted as
    /// they arrive: a request whose body would exceed it is answered 503 with Retry-After.
    /// Bodies whose signature is not checked yet may use half of it; at least twice
    /// `max_body_bytes`.
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
            max_connections_per_source: 1024,
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
    /// Refuse v2 webhooks without a valid `X-Webhook-Signature`, whatever else they carry
    /// (v1 cannot sign: its path tokens are not affected).
    pub require_signature: bool,
    /// Header carrying a shared token; in `authorization` it is `Bearer <token>`.
    pub token_header: String,
    /// Accepted shared tokens (FirstPromoter v2 custom headers).
    pub tokens: Vec<String>,
    /// The webhook versions a shared token may deliver (`["v2"]`: FirstPromoter v1 cannot send
    /// headers). A request whose envelope its credential may not send is refused with 403.
    pub token_versions: Vec<WebhookVersion>,
    /// Accepted HTTP Basic users and passwords (FirstPromoter v2 subscriptions).
    pub basic: BTreeMap<String, String>,
    /// The webhook versions HTTP Basic may deliver (`["v2"]`, as `token_versions`). Path
    /// tokens always deliver v1 only and signatures v2 only.
    pub basic_versions: Vec<WebhookVersion>,
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
    /// Refuse a v2 webhook whose `timestamp` is older than this (403 `stale_event`): a bound
    /// on replaying a captured signed body, which carries no other time. Off by default. Keep
    /// it above FirstPromoter's own retry span (10 retries over about 17 hours): 24h or more.
    #[serde(with = "humantime_serde::option")]
    pub max_event_age: Option<Duration>,
    /// How often secrets read from files (`FP_RELAY_AUTH_..._FILE`) are checked for changes
    /// and, when changed, loaded without a restart (a rotated Kubernetes Secret).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            signature_secrets: Vec::new(),
            require_signature: false,
            token_header: "authorization".to_owned(),
            tokens: Vec::new(),
            token_versions: vec![WebhookVersion::V2],
            basic: BTreeMap::new(),
            basic_versions: vec![WebhookVersion::V2],
            path_tokens: Vec::new(),
            allow_sources: Vec::new(),
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::XForwardedFor,
            insecure_no_auth: false,
            max_event_age: None,
            reload_interval: Duration::from_secs(10),
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
    /// Most bytes of spooled events not yet in Kafka (plus quarantine.log); when reached, the
    /// relay answers 503 again. The segment files may exceed it by up to two segments (an
    /// eighth of it each, at most 16 MiB) while done records wait for their segment to go.
    pub max_bytes: u64,
    /// How long librdkafka keeps retrying a write that was handed off (its outcome decides
    /// whether the spooled copy is replayed).
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// How long Kafka must have said a topic does not exist before replay dead-letters its
    /// spooled events: a cluster restarting empty says so for seconds of topics that come
    /// back. Until then those events wait in the spool.
    #[serde(with = "humantime_serde")]
    pub unknown_topic_wait: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: "/var/lib/fp-relay/spool".into(),
            handoff_after: Duration::from_secs(2),
            max_bytes: 1024 * 1024 * 1024,
            delivery_timeout: Duration::from_secs(300),
            unknown_topic_wait: Duration::from_secs(60),
        }
    }
}

/// Duplicate suppression: a repeated event id is answered 200 `duplicate` without publishing.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Remember published event ids (per relay instance) and answer a repeated one
    /// `{"status":"duplicate"}` without publishing it again. Unset (the default): on whenever a
    /// credential is checked, where it is also the defence against a replayed request (a
    /// signed v2 body carries no timestamp); off with `--insecure-no-auth` and no credentials.
    pub enabled: Option<bool>,
    /// How long an id is remembered.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Most ids remembered; the oldest are forgotten first. Each is kept as a 128-bit hash:
    /// about 77 MB per million, whatever the ids' length.
    pub max_entries: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            window: Duration::from_secs(24 * 3600),
            max_entries: 1_000_000,
        }
    }
}

impl Config {
    /// Whether duplicate suppression is on: `dedup.enabled`, or when unset, whether any
    /// credential is checked.
    pub fn dedup_enabled(&self) -> bool {
        let auth = &self.auth;
        self.dedup.enabled.unwrap_or(
            !(auth.signature_secrets.is_empty()
                && auth.tokens.is_empty()
                && auth.basic.is_empty()
                && auth.path_tokens.is_empty()),
        )
    }
}

/// `[telemetry]`: what the relay tells an observability backend beyond logs and metrics.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Span export over OTLP.
    pub otlp: OtlpConfig,
}

/// `[telemetry.otlp]`: one span per webhook request (its trace continues the request's
/// `traceparent`), exported over OTLP/HTTP with protobuf in batches. Off unless `endpoint` is set.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318` (spans go to
    /// `{endpoint}/v1/traces`). Plain http: run a collector or agent beside the relay.
    pub endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Longest wait for one export; a batch that fails is dropped (spans are best effort).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: "fp-relay".to_owned(),
            timeout: Duration::from_secs(5),
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
    /// Where bodies that cannot be parsed go, so an operator can recover them, with the
    /// `[redact]` fields' values replaced by a lenient scan; a body the scan cannot delimit
    /// is kept as its SHA-256 and size only (see `dead_letter_raw_bodies`).
    pub dead_letter_topic: String,
    /// Keep unparseable bodies byte for byte on the dead-letter topic, secrets included. Only
    /// for a topic whose readers may see the promoters' tokens and passwords.
    pub dead_letter_raw_bodies: bool,
    /// Longest wait for Kafka's acknowledgement before the relay answers 503. Below 15 s.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// The CloudEvents `ce_source` header of every message.
    pub cloudevents_source: String,
    /// How often the relay checks that it can still reach the cluster (drives `/readyz`).
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// How often the files Kafka credentials come from (`FP_RELAY_KAFKA_..._FILE` secrets,
    /// the `ssl.*.location` files of the properties) are checked; when one changed (a rotated
    /// Secret, a renewed certificate), the Kafka clients are rebuilt with it.
    #[serde(with = "humantime_serde")]
    pub credentials_check_interval: Duration,
    /// The region MSK IAM tokens are signed for (`sasl.mechanism = "AWS_MSK_IAM"`); empty:
    /// `AWS_REGION`, then `AWS_DEFAULT_REGION`.
    pub aws_region: String,
    /// librdkafka settings for every client (SASL, TLS, ...), passed through as they are.
    /// `sasl.mechanism = "AWS_MSK_IAM"` is the relay's own: OAUTHBEARER with MSK IAM tokens
    /// signed from AWS's default credential chain.
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
            dead_letter_raw_bodies: false,
            ack_timeout: Duration::from_secs(10),
            cloudevents_source: "https://firstpromoter.com".to_owned(),
            probe_interval: Duration::from_secs(2),
            credentials_check_interval: Duration::from_secs(10),
            aws_region: String::new(),
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
    /// No longer has any effect (`timeout` is at most 14 s: only webhooks v1 sends
    /// `fulfilment_pending`, and it gives up at 15 s); accepted so that existing files load.
    pub allow_long_timeout: bool,
    /// Status for a `pending` answer: any 2xx except 200.
    pub pending_status: u16,
    /// Status for a `failed` answer: any non-2xx, so FirstPromoter retries.
    pub failed_status: u16,
    /// Status when no answer came in time: any 2xx except 200, so the reward stays pending.
    pub timeout_status: u16,
    /// Most requests held at once; beyond it a request is published and answered pending at once.
    pub max_in_flight: usize,
    /// Non-monetary rewards for webhooks v2: the same Kafka exchange, ending in FirstPromoter's
    /// `mark_fulfilled` API instead of an HTTP status.
    pub v2: FulfilmentV2Config,
}

/// Webhooks v2 fulfilment (`[fulfilment.v2]`, docs/fulfilment-protocol.md): an approved
/// non-monetary `commission.updated` is also published as a fulfilment request, and a
/// `fulfilled` reply makes the relay call FirstPromoter's `mark_fulfilled` (through the
/// `[firstpromoter]` API settings).
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FulfilmentV2Config {
    /// Off by default: every v2 event is only routed.
    pub enabled: bool,
    /// Commission units that are non-monetary rewards (`cash` is monetary and never requested).
    pub units: Vec<String>,
    /// Consumer group that reads replies for v2; one replica in the group acts on each reply.
    pub consumer_group: String,
    /// How long one commission's call may keep failing (timeouts, 5xx, 429) before its reply is
    /// dead-lettered with the last reason, so that it cannot hold back the others forever
    /// (`fp-relay redrive` puts it back). Faults of the relay's own configuration (401, 403,
    /// 404, redirects) never count: they pause marking for every commission until fixed.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// Keys that bind replies to the requests this relay issued: every v2 correlation id
    /// carries an HMAC made with the first, and a reply is acted on only when one of them
    /// verifies it (a forged or unknown reply is dead-lettered, never marked). Every replica
    /// needs the same list; add a new key first and drop the old one once its requests are
    /// answered. Empty (the default): one key derived from `firstpromoter.api_key`, which
    /// every replica already shares (rotating the API key then orphans open requests).
    pub reply_keys: Vec<String>,
    /// Deprecated: API settings that moved to `[firstpromoter]` (same names). Read, with a
    /// warning, and moved there while loading; never shown.
    #[serde(skip_serializing)]
    pub api_url: Option<String>,
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    #[serde(skip_serializing)]
    pub account_id: Option<String>,
    #[serde(with = "humantime_serde::option", skip_serializing)]
    pub call_timeout: Option<Duration>,
    #[serde(with = "humantime_serde::option", skip_serializing)]
    pub retry_initial: Option<Duration>,
    #[serde(with = "humantime_serde::option", skip_serializing)]
    pub retry_max: Option<Duration>,
    #[serde(skip_serializing)]
    pub allow_insecure_http: Option<bool>,
}

/// Written by hand so that a (deprecated) API key never reaches a log line.
impl std::fmt::Debug for FulfilmentV2Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FulfilmentV2Config")
            .field("enabled", &self.enabled)
            .field("units", &self.units)
            .field("consumer_group", &self.consumer_group)
            .field("give_up_after", &self.give_up_after)
            .finish_non_exhaustive()
    }
}

impl Default for FulfilmentV2Config {
    fn default() -> Self {
        Self {
            enabled: false,
            units: [
                "points",
                "credits",
                "free_months",
                "mon_discount",
                "discount_per",
            ]
            .map(str::to_owned)
            .to_vec(),
            consumer_group: "fp-relay-fulfilment-v2".to_owned(),
            give_up_after: Duration::from_secs(24 * 3600),
            reply_keys: Vec::new(),
            api_url: None,
            api_key: None,
            account_id: None,
            call_timeout: None,
            retry_initial: None,
            retry_max: None,
            allow_insecure_http: None,
        }
    }
}

/// FirstPromoter's v2 company API (`[firstpromoter]`): one client, one rate budget and one set
/// of retry rules for v2 fulfilment, reconciliation and the `fp-relay firstpromoter` commands.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FirstPromoterConfig {
    /// The company API's base URL.
    pub api_url: String,
    /// FirstPromoter API key (sent as `Authorization: Bearer`). A secret: prefer the
    /// environment (`FP_RELAY_FIRSTPROMOTER_API_KEY`); masked by check-config, never logged.
    pub api_key: String,
    /// FirstPromoter account id (sent as `Account-ID`).
    pub account_id: String,
    /// The relay's public webhook URL as FirstPromoter calls it (`https://.../webhooks/firstpromoter`):
    /// the subscription `firstpromoter subscribe` manages by default, and the one reconciliation
    /// and recovery read. Unset: subscriptions whose URL path is `http.path` (or under it).
    pub webhook_url: Option<String>,
    /// Longest wait for one API call before it counts as failed and is retried.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// First pause before retrying a call that failed (doubled each time, with jitter).
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest pause between retries (also caps a `Retry-After`).
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Calls per minute this process makes at most, shared by everything that calls the API.
    /// FirstPromoter allows 400 per account, and other integrations share that allowance.
    pub requests_per_minute: u32,
    /// Allow an `http://` `api_url` (the API key then travels in clear): only for tests and
    /// local fakes of FirstPromoter's API.
    pub allow_insecure_http: bool,
    /// Reconciliation against FirstPromoter's delivery records (`serve` only).
    pub reconcile: ReconcileConfig,
}

/// `[firstpromoter.reconcile]`: what FirstPromoter says it delivered, as metrics.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Off by default; needs `firstpromoter.api_key` and `account_id`.
    pub enabled: bool,
    /// How often the deliveries are read.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How far back deliveries count.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: Duration::from_secs(300),
            window: Duration::from_secs(24 * 3600),
        }
    }
}

impl Default for FirstPromoterConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.firstpromoter.com/api/v2/company".to_owned(),
            api_key: String::new(),
            account_id: String::new(),
            webhook_url: None,
            call_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            requests_per_minute: 240,
            allow_insecure_http: false,
            reconcile: ReconcileConfig::default(),
        }
    }
}

/// Written by hand so that the API key never reaches a log line.
impl std::fmt::Debug for FirstPromoterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstPromoterConfig")
            .field("api_url", &self.api_url)
            .field("api_key", &MASK)
            .field("account_id", &self.account_id)
            .field("webhook_url", &self.webhook_url)
            .field("call_timeout", &self.call_timeout)
            .field("retry_initial", &self.retry_initial)
            .field("retry_max", &self.retry_max)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("reconcile", &self.reconcile)
            .finish()
    }
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
            v2: FulfilmentV2Config::default(),
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
    /// A setting's value breaks a rule; shown with the variable that sets it
    /// (`kafka.ack_timeout (FP_RELAY_KAFKA_ACK_TIMEOUT): ...`) unless the message names the one
    /// that did.
    #[error("{field}{}: {message}", env::variable_hint(field, message))]
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
        let (sources, secret_files) = apply_env(&mut table, env)?;
        let name = |error| env::naming_variable(error, &sources);
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let field = e.path().to_string();
                let message = explain_type_error(&field, e.into_inner().message());
                name(ConfigError::Invalid {
                    field: if field == "." { origin.clone() } else { field },
                    message,
                })
            })?;
        config.secret_files = secret_files;
        config.move_deprecated().map_err(name)?;
        config.apply(overrides);
        let moved = |error| config.naming_old_place(error);
        config.validate().map_err(moved).map_err(name)?;
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

    /// Moves `[fulfilment.v2]` API settings to `[firstpromoter]`, noting each in
    /// `deprecations`; the same setting given in both places with different values is an error.
    fn move_deprecated(&mut self) -> Result<(), ConfigError> {
        let old = &mut self.fulfilment.v2;
        let defaults = FirstPromoterConfig::default();
        let fp = &mut self.firstpromoter;
        let mut moved = Vec::new();
        macro_rules! carry {
            ($key:ident) => {
                if let Some(value) = old.$key.take() {
                    if fp.$key != defaults.$key && fp.$key != value {
                        return Err(ConfigError::invalid(
                            concat!("fulfilment.v2.", stringify!($key)),
                            concat!(
                                "has moved to firstpromoter.",
                                stringify!($key),
                                ", which is set to something else: keep only firstpromoter.",
                                stringify!($key)
                            ),
                        ));
                    }
                    fp.$key = value;
                    moved.push(stringify!($key));
                }
            };
        }
        carry!(api_url);
        carry!(api_key);
        carry!(account_id);
        carry!(call_timeout);
        carry!(retry_initial);
        carry!(retry_max);
        carry!(allow_insecure_http);
        self.deprecations.extend(moved.into_iter().map(|key| {
            format!(
                "fulfilment.v2.{key} is deprecated: it is read as firstpromoter.{key} \
                 (FP_RELAY_FIRSTPROMOTER_{}); move it there",
                key.to_ascii_uppercase()
            )
        }));
        Ok(())
    }

    /// An error about a `[firstpromoter]` setting that was written in its deprecated place
    /// names that place, which is where the operator will look.
    fn naming_old_place(&self, error: ConfigError) -> ConfigError {
        match error {
            ConfigError::Invalid { field, message } => {
                let key = field.strip_prefix("firstpromoter.").unwrap_or_default();
                let old = format!("fulfilment.v2.{key}");
                if !key.is_empty()
                    && self
                        .deprecations
                        .iter()
                        .any(|d| d.starts_with(&format!("{old} ")))
                {
                    ConfigError::Invalid {
                        field: format!("{old} (now {field})"),
                        message,
                    }
                } else {
                    ConfigError::Invalid { field, message }
                }
            }
            other => other,
        }
    }

    /// The `[auth]` settings with the secrets that came from files read again: `None` when no
    /// `auth.*` setting came from a file. Validated like a start-up; an error leaves the caller
    /// with the settings it has.
    pub fn reread_auth_files(&self) -> Result<Option<AuthConfig>, ConfigError> {
        Ok(self
            .reread_files("FP_RELAY_AUTH_")?
            .map(|config| config.auth))
    }

    /// The `[kafka]` settings with the secrets that came from files (`FP_RELAY_KAFKA_..._FILE`,
    /// e.g. a SASL password) read again; `None` when none came from a file.
    pub fn reread_kafka_files(&self) -> Result<Option<KafkaConfig>, ConfigError> {
        Ok(self
            .reread_files("FP_RELAY_KAFKA_")?
            .map(|config| config.kafka))
    }

    /// Files the Kafka clients read their credentials from: secrets named by
    /// `FP_RELAY_KAFKA_..._FILE` variables and the TLS files the librdkafka properties name
    /// (`ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location`, ...). A change to
    /// any of them rebuilds the clients.
    pub fn kafka_credential_files(&self) -> Vec<std::path::PathBuf> {
        let kafka = &self.kafka;
        let mut files: Vec<std::path::PathBuf> = self
            .secret_files
            .iter()
            .filter(|f| f.variable.starts_with("FP_RELAY_KAFKA_"))
            .map(|f| f.path.clone())
            .collect();
        for map in [
            &kafka.properties,
            &kafka.producer_properties,
            &kafka.consumer_properties,
        ] {
            files.extend(
                map.iter()
                    .filter(|(key, _)| key.starts_with("ssl.") && key.ends_with(".location"))
                    .map(|(_, value)| std::path::PathBuf::from(value)),
            );
        }
        files.sort();
        files.dedup();
        files
    }

    /// The configuration with the secrets of variables starting with `prefix` read again from
    /// their files, validated; `None` when no such secret came from a file.
    fn reread_files(&self, prefix: &str) -> Result<Option<Config>, ConfigError> {
        let files: Vec<(String, String)> = self
            .secret_files
            .iter()
            .filter(|f| f.variable.starts_with(prefix))
            .map(|f| (f.variable.clone(), f.path.display().to_string()))
            .collect();
        if files.is_empty() {
            return Ok(None);
        }
        let mut table = toml::Table::try_from(self).map_err(|e| {
            ConfigError::invalid("config", format!("cannot re-read the settings: {e}"))
        })?;
        let (sources, _) = apply_env(&mut table, files)?;
        let name = |error| env::naming_variable(error, &sources);
        let reread: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let field = e.path().to_string();
                let message = explain_type_error(&field, e.into_inner().message());
                name(ConfigError::Invalid { field, message })
            })?;
        reread.validate().map_err(name)?;
        Ok(Some(reread))
    }

    /// Checks every rule that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_http()?;
        self.validate_auth()?;
        self.validate_redact()?;
        self.validate_spool()?;
        self.validate_kafka()?;
        self.validate_fulfilment()?;
        self.validate_firstpromoter()?;
        self.validate_telemetry()
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
        if !shown.firstpromoter.api_key.is_empty() {
            shown.firstpromoter.api_key = MASK.to_owned();
        }
        shown
            .fulfilment
            .v2
            .reply_keys
            .iter_mut()
            .for_each(|key| *key = MASK.to_owned());
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

/// A type error from the parser made useful: secrets' values left out (a bare token where a
/// list belongs must not land in a pod's log), and an accepted form shown for lists of
/// secrets, durations and sizes.
fn explain_type_error(field: &str, message: &str) -> String {
    // `auth.path_tokens[0]` is the list's field.
    let setting = field.split('[').next().unwrap_or(field);
    let mut message = if is_secret_setting(setting) {
        without_values(message)
    } else {
        message.to_owned()
    };
    let key = setting.rsplit('.').next().unwrap_or(setting);
    if message.contains("expected a sequence") {
        let variable = format!("{ENV_PREFIX}{}", setting.replace('.', "_")).to_ascii_uppercase();
        message.push_str(&format!(
            "; write a list, e.g. {key} = [\"<first>\", \"<second>\"] in the file or {variable}='[\"<first>\"]'"
        ));
    } else if message.contains("duration") || message.contains("time unit") {
        message.push_str("; write a duration such as \"10s\", \"1m30s\" or \"500ms\"");
    } else if key.ends_with("_bytes") {
        message.push_str("; write a number of bytes, e.g. 1048576 for 1 MiB");
    }
    message
}

/// True for settings whose values are secrets (what `to_masked_toml` masks).
pub fn is_secret_setting(field: &str) -> bool {
    let field = field.to_ascii_lowercase();
    matches!(
        field.as_str(),
        "auth.tokens"
            | "auth.path_tokens"
            | "auth.signature_secrets"
            | "firstpromoter.api_key"
            | "fulfilment.v2.reply_keys"
    ) || field.starts_with("auth.basic")
        || field
            .split_once("properties.")
            .is_some_and(|(_, key)| is_secret_property(key))
}

/// `message` with every quoted value (`"..."` or `` `...` ``) replaced by the mask.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['"', '`']) {
        let quote = rest[start..].chars().next().unwrap_or('"');
        let Some(length) = rest[start + 1..].find(quote) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push(quote);
        out.push_str(MASK);
        out.push(quote);
        rest = &rest[start + 1 + length + 1..];
    }
    out.push_str(rest);
    out
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

#[cfg(test)]
mod tests;
