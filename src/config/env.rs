//! The environment layer: `FP_RELAY_{SECTION}_{KEY}` variables over the file's table.

use super::*;

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
pub(super) fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let original = rest;
        let rest = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            continue;
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
                let mut single = toml::Table::new();
                single.insert(entry, env_value(&raw));
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
