//! Typed configuration: defaults, the TOML file, `FP_RELAY_*` environment overrides and
//! command-line overrides, merged in that order and validated once at start-up.
//!
//! Every error names the field it is about (`kafka.ack_timeout: ...`), so an operator never has
//! to guess which line of a file or which variable was wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

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
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            path: "/webhooks/firstpromoter".to_owned(),
            max_body_bytes: 1024 * 1024,
            shutdown_timeout: Duration::from_secs(20),
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
            max_in_flight: 10_000,
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
}

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
    }

    /// Checks every rule that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_http()?;
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
        if !(1..=64 * 1024 * 1024).contains(&self.http.max_body_bytes) {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                "must be between 1 byte and 64 MiB",
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
const SECTIONS: &[&str] = &["http", "admin", "kafka", "fulfilment"];

/// Overlays `FP_RELAY_{SECTION}_{KEY}=value` on the file's table. `FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD`
/// sets the librdkafka property `sasl.password` (underscores become dots). Values are read as
/// TOML scalars when they parse as one (`true`, `42`) and as strings otherwise, so `10s` and
/// `host:9092` need no quoting. An unknown key is refused by the strict parse that follows.
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
        section_table.insert(key.to_owned(), env_value(&raw));
    }
    Ok(())
}

fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_)),
            ) => v,
            _ => toml::Value::String(raw.to_owned()),
        },
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
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
        let config = Config::load(Some(&path), Vec::new(), &Overrides::default()).unwrap();
        assert_eq!(config.http.path, "/webhooks/firstpromoter");
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = load_str("", &[]).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.http.max_body_bytes, 1 << 20);
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
    fn invalid_topic_names_are_refused() {
        let err = load_str("[kafka.topics]\nlead_signup = \"bad topic\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("kafka.topics.lead_signup"), "{err}");
    }
}
