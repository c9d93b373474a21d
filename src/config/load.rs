//! Loading: defaults, then the file, then `FP_RELAY_*` variables, then command-line overrides,
//! validated once; and re-reading the files credentials come from.

use std::net::SocketAddr;
use std::path::Path;

use super::secrets::{is_secret_setting, without_quoted, without_values};
use super::*;

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
    pub(super) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
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
pub(super) const OWNED_PROPERTIES: &[(&str, &str)] = &[
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
                    .map_err(|e| syntax_error(&path.display().to_string(), &text, &e))?;
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

    pub(super) fn apply(&mut self, overrides: &Overrides) {
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
}

/// A TOML syntax error told by its place (line and column) and the parser's short reason,
/// never by the offending text: the line may be `tokens = ["<secret>" "<secret>"]`, and the
/// parser's own message quotes it. Quoted values left in the reason are masked too.
fn syntax_error(path: &str, text: &str, error: &toml::de::Error) -> ConfigError {
    let place = error.span().map_or_else(String::new, |span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        format!("line {line}, column {column}: ")
    });
    let reason = error
        .message()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    ConfigError::Syntax {
        path: path.to_owned(),
        message: format!(
            "{place}{} (the line is not shown: it may hold a secret)",
            without_quoted(&reason, &['"', '\''])
        ),
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
