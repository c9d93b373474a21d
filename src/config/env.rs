//! The environment layer: `FP_RELAY_{SECTION}_{KEY}` variables over the file's table.

use super::*;

/// `FP_RELAY_*` variables that are not settings: read by the command line (`CONFIG`) or by the
/// project's scripts.
const NOT_SETTINGS: &[&str] = &[
    "config",
    "cache_dir",
    "skip_fuzz",
    "soak_secs",
    "examples_python",
    "examples_node_path",
];

/// Sections that `FP_RELAY_{SECTION}_{KEY}` may address.
const SECTIONS: &[&str] = &[
    "http",
    "admin",
    "auth",
    "redact",
    "spool",
    "dedup",
    "kafka",
    "fulfilment",
    "firstpromoter",
    "telemetry",
];

/// Overlays `FP_RELAY_{SECTION}_{KEY}=value` on the file's table. `FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD`
/// sets the librdkafka property `sasl.password` (underscores become dots). Values are read as
/// TOML scalars, arrays or inline tables when they parse as one (`true`, `42`, `["a", "b"]`,
/// `{ firstpromoter = "..." }`) and as strings otherwise, so `10s` and `host:9092` need no
/// quoting. A table is merged into the file's entry by entry, and one entry can be set with a
/// double underscore: `FP_RELAY_AUTH_BASIC__FIRSTPROMOTER=secret` sets `auth.basic.firstpromoter`.
/// An unknown key is refused by the strict parse that follows; a variable that names no section
/// (`FP_RELAY_BROKERS`, `FP_RELAY_KAFAK_BROKERS`) is refused here, with a suggestion.
///
/// Any variable can instead name a file holding its value: `FP_RELAY_AUTH_TOKENS_FILE=/run/
/// secrets/tokens` (a Kubernetes Secret mounted as files). The file's content is the value,
/// without its trailing newline; for a list it may be a TOML array or one entry per line.
///
/// Returns which setting each variable set, so that errors can name the variable, and the
/// files read.
pub(super) fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Sources, Vec<SecretFile>), ConfigError> {
    let mut sources = Vec::new();
    let mut files = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // `..._FILE`: the value is the file's content (no setting's name ends in `_file`).
        let (rest, raw, from_file) = match rest.strip_suffix("_FILE") {
            Some(setting) if !NOT_SETTINGS.contains(&setting.to_ascii_lowercase().as_str()) => {
                let path = std::path::PathBuf::from(&raw);
                let content = read_secret_file(&path).map_err(|source| ConfigError::Read {
                    path: format!("{} (named by {name})", path.display()),
                    source,
                })?;
                files.push(SecretFile {
                    variable: name.clone(),
                    path,
                });
                (setting, content, true)
            }
            _ => (rest, raw, false),
        };
        let original = rest;
        let rest = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            if NOT_SETTINGS.contains(&rest.as_str()) || is_service_link(&rest) {
                continue;
            }
            return Err(ConfigError::invalid(
                name.clone(),
                format!(
                    "is not a setting: settings are FP_RELAY_{{SECTION}}_{{KEY}} with a section of {}{}",
                    SECTIONS.join(", "),
                    suggestion(&rest)
                        .map(|s| format!("; did you mean {s}?"))
                        .unwrap_or_default()
                ),
            ));
        };
        let key = &rest[section.len() + 1..];
        if is_service_link(key) {
            continue;
        }
        let section_table = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| ConfigError::invalid(*section, "must be a table"))?;
        if let Some(property) = key.strip_prefix("property_") {
            sources.push((format!("{section}.properties"), name.clone()));
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
            Some((table, _)) => {
                // The entry's name is user data (a Basic user, an event type): kept as written,
                // except that an all-capitals name, the usual spelling of an environment
                // variable, means the lower-case name.
                let entry = &original[original.len() - (key.len() - table.len() - 2)..];
                let entry = if entry.chars().any(|c| c.is_ascii_lowercase()) {
                    entry.to_owned()
                } else {
                    entry.to_ascii_lowercase()
                };
                sources.push((format!("{section}.{table}.{entry}"), name.clone()));
                let mut single = toml::Table::new();
                single.insert(entry, env_value(&raw));
                (table, toml::Value::Table(single))
            }
            None => {
                sources.push((format!("{section}.{key}"), name.clone()));
                let value = match env_value(&raw) {
                    toml::Value::String(text) if from_file && is_list(section, key) => {
                        toml::Value::Array(
                            text.lines()
                                .map(str::trim)
                                .filter(|line| !line.is_empty())
                                .map(|line| toml::Value::String(line.to_owned()))
                                .collect(),
                        )
                    }
                    value => value,
                };
                (key, value)
            }
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
    Ok((sources, files))
}

/// Which setting each variable set: `(setting, variable)`.
pub(super) type Sources = Vec<(String, String)>;

/// A setting read from a file named by a `..._FILE` variable; the relay reloads `auth.*`
/// secrets from their files when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// The variable that named it, e.g. `FP_RELAY_AUTH_TOKENS_FILE`.
    pub variable: String,
    /// The file.
    pub path: std::path::PathBuf,
}

/// A secret file's content: its text without the trailing newline an editor or `echo` adds.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// True when `section.key` holds a list (its default is an array).
fn is_list(section: &str, key: &str) -> bool {
    toml::Table::try_from(Config::default())
        .ok()
        .and_then(|defaults| {
            defaults
                .get(section)?
                .as_table()?
                .get(key)
                .map(toml::Value::is_array)
        })
        .unwrap_or(false)
}

/// The variable a mistyped one probably meant: its key in the section it names (a section
/// spelled within two edits), or in the section that has that key.
fn suggestion(rest: &str) -> Option<String> {
    let defaults = toml::Table::try_from(Config::default()).ok()?;
    let has = |section: &str, key: &str| {
        defaults
            .get(section)
            .and_then(|t| t.as_table())
            .is_some_and(|t| t.contains_key(key))
    };
    let fix =
        |section: &str, key: &str| format!("{ENV_PREFIX}{}_{}", section, key).to_ascii_uppercase();
    if let Some(section) = SECTIONS.iter().find(|s| has(s, rest)) {
        return Some(fix(section, rest));
    }
    let (first, key) = rest.split_once('_')?;
    SECTIONS
        .iter()
        .find(|s| edits(first, s) <= 2 && has(s, key))
        .map(|s| fix(s, key))
}

/// Levenshtein distance, for suggestions.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j + 1] + 1).min(row[j] + 1).min(previous + cost);
            previous = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// `error` with the environment variable named when it set the field.
pub(super) fn naming_variable(error: ConfigError, sources: &[(String, String)]) -> ConfigError {
    match error {
        ConfigError::Invalid { field, message } => {
            // The variable that set this field (or a table holding it), else the unknown key
            // that a variable put into this section.
            let variable = sources
                .iter()
                .rev()
                .find(|(setting, _)| field == *setting || field.starts_with(&format!("{setting}.")))
                .or_else(|| {
                    sources.iter().rev().find(|(setting, _)| {
                        let key = setting.rsplit('.').next().unwrap_or_default();
                        setting.starts_with(&format!("{field}."))
                            && message.contains(&format!("`{key}`"))
                    })
                });
            match variable {
                Some((_, variable)) => ConfigError::Invalid {
                    field,
                    message: format!("{message} (set by {variable})"),
                },
                None => ConfigError::Invalid { field, message },
            }
        }
        other => other,
    }
}

/// ` (FP_RELAY_...)`: the variable that sets `field`, for an error about it, or nothing when the
/// message names the variable that did or no variable can set it.
pub(super) fn variable_hint(field: &str, message: &str) -> String {
    if message.contains("(set by ") {
        return String::new();
    }
    variable_for(field)
        .map(|variable| format!(" ({variable})"))
        .unwrap_or_default()
}

/// The environment variable that sets `field` (`kafka.ack_timeout`, `auth.basic.ops`,
/// `kafka.properties.sasl.password`, `auth.tokens[0]`), if there is one.
pub fn variable_for(field: &str) -> Option<String> {
    let field = field.split('[').next()?;
    let (section, rest) = field.split_once('.')?;
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if !SECTIONS.contains(&section) {
        return None;
    }
    let name = match rest.split_once('.') {
        None if plain(rest) => format!("{section}_{rest}"),
        // Underscores in the variable become dots: a property with an underscore has none.
        Some(("properties", property))
            if property
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.') =>
        {
            format!("{section}_property_{}", property.replace('.', "_"))
        }
        Some((table, entry)) if plain(table) && plain(entry) => {
            format!("{section}_{table}__{entry}")
        }
        _ => return None,
    };
    Some(format!("{ENV_PREFIX}{name}").to_ascii_uppercase())
}

/// Kubernetes injects `{SERVICE}_SERVICE_HOST`, `{SERVICE}_SERVICE_PORT[_NAME]`,
/// `{SERVICE}_PORT` and `{SERVICE}_PORT_{N}_{PROTO}[_PROTO|_PORT|_ADDR]` for every Service in the
/// namespace (unless `enableServiceLinks: false`): a Service named `fp-relay-admin` or
/// `fp-relay-kafka` would make them look like settings and, refused as unknown keys, stop every
/// replica at its next restart. No setting is named like them.
fn is_service_link(key: &str) -> bool {
    if key == "port" || key == "service_host" || key.starts_with("service_port") {
        return true;
    }
    let Some(rest) = key.strip_prefix("port_") else {
        return false;
    };
    let mut parts = rest.split('_');
    let number = parts
        .next()
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let protocol = parts
        .next()
        .is_some_and(|p| matches!(p, "tcp" | "udp" | "sctp"));
    let field = parts
        .next()
        .is_none_or(|f| matches!(f, "proto" | "port" | "addr"));
    number && protocol && field && parts.next().is_none()
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
