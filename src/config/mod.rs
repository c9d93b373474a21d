//! Typed configuration: defaults, the TOML file, `FP_RELAY_*` environment overrides and
//! command-line overrides, merged in that order and validated once at start-up.
//!
//! Every error names the field it is about (`kafka.ack_timeout: ...`), so an operator never has
//! to guess which line of a file or which variable was wrong.
//!
//! Layout: this file holds the settings themselves (every field with its doc and its default,
//! which is why it is over 600 lines: it is the typed reference of config/relay.toml);
//! `load.rs` the layering and re-reading of credential files, `env.rs` the environment layer,
//! `validate.rs` the rules, `secrets.rs` what is secret and how it is shown masked, `tests.rs`
//! their tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::webhook::envelope::WebhookVersion;
use crate::webhook::routing::TOPIC_PLACEHOLDER;

pub mod env;
pub mod reference;
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
    /// Directory of the spool's SQLite database (`spool.db`); must survive restarts (a
    /// persistent volume, not tmpfs). One process owns it at a time.
    pub dir: std::path::PathBuf,
    /// How long a request waits for Kafka before its event is spooled. Below `kafka.ack_timeout`.
    #[serde(with = "humantime_serde")]
    pub handoff_after: Duration,
    /// Most bytes of spooled events not yet in Kafka plus quarantined ones; when reached, the
    /// relay answers 503 again. Also checked against free disk space (16 MiB always left
    /// free). `/readyz` says not ready once a record of `http.max_body_bytes` would not fit, so
    /// it must hold at least one.
    pub max_bytes: u64,
    /// How long librdkafka keeps retrying a write that was handed off (its outcome decides
    /// whether the spooled copy is replayed). Every later spooled event waits behind a write
    /// still in flight (receive order), so this is also how long the spool can stall after a
    /// cluster comes back changed (30 s; it was 5 min until the chaos run found a spool held
    /// back that long after a broker restarted empty).
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
            delivery_timeout: Duration::from_secs(30),
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
    /// about 98 MB per million, whatever the ids' length.
    pub max_entries: usize,
    /// A Kafka topic that shares what was published with every replica and across restarts:
    /// each acknowledged event's 24-byte key (id and content digest) is written there, and every replica reads every
    /// key of the last `window` (docs/durability.md). Empty: per process. Give it a
    /// retention of at least `window` (the relay does when it creates it).
    pub topic: String,
    /// Create `topic` when it is missing (4 partitions, `retention.ms` of `window` and a day),
    /// and say so in the log. Off: the relay waits for it (or for the first mark to
    /// auto-create it) and follows it within a second of its appearing.
    pub create_topic: bool,
    /// Longest a starting relay waits, before it says ready, to read the marks of the last
    /// `window` from `topic`.
    #[serde(with = "humantime_serde")]
    pub load_timeout: Duration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            window: Duration::from_secs(24 * 3600),
            max_entries: 1_000_000,
            topic: String::new(),
            create_topic: true,
            load_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Where v1 `fulfilment_pending` requests (and v2 fulfilment requests) are published: the
    /// topic `kafka.topics` / `kafka.topic_template` give `fulfilment.event_type`.
    pub fn fulfilment_request_topic(&self) -> String {
        crate::webhook::routing::Router::new(
            &self.kafka.topic_template,
            &self.kafka.topics,
            &BTreeMap::new(),
        )
        .topic(&self.fulfilment.event_type)
    }

    /// The relay's own topics, which no sender's event may be written to: dead letters,
    /// fulfilment requests, replies and verdicts, and `dedup.topic` when set.
    pub fn internal_topics(&self) -> Vec<String> {
        let mut topics = vec![
            self.kafka.dead_letter_topic.clone(),
            self.fulfilment_request_topic(),
            self.fulfilment.reply_topic.clone(),
            self.fulfilment.verdict_topic.clone(),
        ];
        let dedup = self.dedup.topic.trim();
        if !dedup.is_empty() {
            topics.push(dedup.to_owned());
        }
        topics
    }

    /// `dedup.topic` when duplicate suppression is on and shared through it.
    pub fn shared_dedup_topic(&self) -> Option<&str> {
        let topic = self.dedup.topic.trim();
        (!topic.is_empty() && self.dedup_enabled()).then_some(topic)
    }

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
    /// Under load, writes go to a second producer that waits this long to fill a batch (its
    /// `linger.ms`), while the first sends each write at once: batching where it pays, no wait
    /// added at low load. `0s`: one producer only. Off as well when
    /// `kafka.producer_properties` sets `linger.ms` (a fixed linger, the user's choice).
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Writes in flight (handed to Kafka, not yet acknowledged) from which new writes take
    /// the batching producer.
    pub batch_above_in_flight: usize,
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
            batch_linger: Duration::from_millis(1),
            batch_above_in_flight: 8,
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
    /// Create the reply topic at start-up, and the verdict topic, when they are missing.
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
    /// How long a fulfiller's verdict on a reward (v1 `data.id`) is remembered by every
    /// replica, late verdicts included: a `fulfilment_pending` whose reward was `fulfilled`
    /// is answered 200 at once without asking again, and one whose reward is being asked
    /// about by any replica waits for that answer instead of asking twice
    /// (docs/fulfilment-protocol.md). `0s`: off, every check asks.
    #[serde(with = "humantime_serde")]
    pub remember: Duration,
    /// Most rewards remembered at once; the oldest verdicts are forgotten first.
    pub remember_max: usize,
    /// The topic verdicts are shared on (keyed by reward, compacted); every replica reads the
    /// last `remember` of it at start. Created with the reply topic when `create_reply_topic`.
    pub verdict_topic: String,
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
    /// Calls per minute at most for the whole account's use by fp-relay: every process's
    /// share is `requests_per_minute / replicas`, shared by everything in it that calls the
    /// API. FirstPromoter allows 400 per account, and other integrations share that allowance.
    pub requests_per_minute: u32,
    /// How many fp-relay processes call the API with this account at once: the relay's
    /// replicas, plus one for a `firstpromoter recover` (or `status`) run beside them. Each
    /// takes `requests_per_minute / replicas`.
    pub replicas: u32,
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

impl FirstPromoterConfig {
    /// This process's share of `requests_per_minute` (at least one call a minute).
    pub fn process_requests_per_minute(&self) -> u32 {
        (self.requests_per_minute / self.replicas.max(1)).max(1)
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
            replicas: 1,
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
            .field("replicas", &self.replicas)
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
            remember: Duration::from_secs(3 * 24 * 3600),
            remember_max: 100_000,
            verdict_topic: "firstpromoter.fulfilment_verdicts".to_owned(),
            v2: FulfilmentV2Config::default(),
        }
    }
}

mod load;
mod secrets;

pub use load::*;
pub use secrets::*;

#[cfg(test)]
mod tests;
