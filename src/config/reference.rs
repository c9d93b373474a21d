//! The configuration reference, generated from the code: `fp-relay check-config --reference`
//! prints it and docs/configuration.md is exactly that output (a test compares them).
//!
//! Nothing is written twice. The keys and their defaults come from `Config::default()`
//! serialised as the file would be; each key's meaning and type come from its field's `///`
//! comment and declared type in this module's source (`mod.rs`, embedded at build time); its
//! variable comes from `env::variable_for`, the function errors use. The source is read with
//! a few line rules that hold for rustfmt's layout of plain `pub struct`s; `tests/docs.rs`
//! checks that every key of the defaults was found, documented and given a type name, so a
//! new setting without a doc comment fails the build's tests rather than the reader.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{env, Config, TlsConfig};

/// This module's parent as written, read for doc comments and declared types.
const SOURCE: &str = include_str!("mod.rs");

/// How the configuration is read, said once above the generated part.
const PREAMBLE: &str = r#"# Configuration reference

Every setting of the relay: its type, default, environment variable and meaning. This page is
generated from the code by `fp-relay check-config --reference` (the doc comments of
`src/config/mod.rs`, the defaults of `Config::default()`); do not edit it by hand. For a file to
start from, see [config/relay.toml](../config/relay.toml): every setting with its default and a
comment (a test fails if a setting is missing from it).

## How the configuration is read

One TOML file (`--config FILE`, or `FP_RELAY_CONFIG`). Later wins: built-in defaults, the file,
environment variables, command-line flags.

- Environment: `FP_RELAY_{SECTION}_{KEY}`, e.g. `FP_RELAY_KAFKA_BROKERS=kafka:9092`,
  `FP_RELAY_KAFKA_ACK_TIMEOUT=5s`, `FP_RELAY_FULFILMENT_TIMEOUT=8s`. librdkafka properties:
  `FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD=…` sets `kafka.properties."sasl.password"` (underscores
  become dots). A table nested in a section is set one entry at a time with a double underscore
  (`FP_RELAY_FULFILMENT_V2__ENABLED=true`). Values are read as TOML when they parse as a number,
  boolean, array or inline table, and as strings otherwise, so `10s` and `host:9092` need no
  quotes. Tables come from the environment too, whole (an inline TOML table) or one entry at a
  time (a double underscore), merged with the file's:

  ```sh
  FP_RELAY_AUTH_BASIC__FIRSTPROMOTER='a-long-basic-password'      # auth.basic.firstpromoter
  FP_RELAY_AUTH_BASIC__FirstPromoter='a-long-basic-password'      # auth.basic.FirstPromoter
  FP_RELAY_KAFKA_TOPICS='{ reward_created = "affiliate.rewards", "referral.created" = "affiliate.referrals" }'
  ```

  An entry's name after `__` is kept as written, except that one written all in capitals means
  the lower-case name (for an all-capitals Basic user, use the inline table form). Variables
  Kubernetes injects for Services (`FP_RELAY_ADMIN_SERVICE_HOST`, `FP_RELAY_KAFKA_PORT_9092_TCP`,
  … when a Service is named `fp-relay-admin` or `fp-relay-kafka`) are not settings and are
  ignored; the shipped manifests also set `enableServiceLinks: false`.
- Secrets from files: any variable `FP_RELAY_X` can be `FP_RELAY_X_FILE=/run/secrets/x` instead
  (the file's content without its trailing newline; for a list, a TOML array or one entry per
  line). `auth.*` and Kafka credentials read from files are read again when the files change.
- Flags: `fp-relay serve --config FILE --listen ADDR --admin-listen ADDR --brokers LIST --dev --insecure-no-auth --log-format human|json`.
- Parsing is strict: an unknown key, a bad value or a broken rule stops start-up with the field's
  name and its variable (`kafka.ack_timeout (FP_RELAY_KAFKA_ACK_TIMEOUT): must be above 0 and
  below 15s …`) and exit status 2. Durations are written `"10s"`, `"1m30s"`, `"500ms"`; sizes
  are numbers of bytes (`1048576`).
- `fp-relay check-config [--config FILE]` answers as `serve` would (with the same environment;
  without a file it checks an environment-only setup): valid, with the effective configuration
  printed with secrets masked, or exit 2 naming the field and the variable that sets it
  (`kafka.ack_timeout (FP_RELAY_KAFKA_ACK_TIMEOUT): ... write a duration such as "10s"`); a file
  without credentials says so, and whether the rest is valid. Every command that reads the
  configuration (`spool drain`, `firstpromoter ...`) exits 2 the same way, and a secret's value
  is never part of the message.
- `[kafka.properties]` passes any librdkafka setting through (SASL, TLS, client.id …);
  `[kafka.producer_properties]` and `[kafka.consumer_properties]` apply to one client only. Settings
  the relay's guarantees rest on (`bootstrap.servers`, `acks`, `enable.idempotence`,
  `message.timeout.ms`, `delivery.timeout.ms`, `enable.auto.commit`) are refused there.
  Recipes per provider: [kafka.md](kafka.md).

Each setting below reads: its type, its default (as written in the file; *unset* when it has
none), the environment variable that sets it, then what it is for.
"#;

/// One struct of the source: its doc comment and its fields, in order.
#[derive(Debug, Default)]
struct Struct {
    doc: String,
    /// The `#[serde(...)]` attributes above it (`default` there defaults every field).
    serde: String,
    fields: Vec<Field>,
}

/// One `pub name: Type,` line with what was written above it.
#[derive(Debug)]
struct Field {
    name: String,
    rust_type: String,
    doc: String,
    serde: String,
}

/// One setting as the reference shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `kafka.ack_timeout`.
    pub key: String,
    /// A reader's name for the type (`duration`, `list of strings`), or `unnamed type` and
    /// the Rust type when no name is known for it (a test refuses that).
    pub type_name: String,
    /// The default as TOML, `None` when unset (or required in an optional table).
    pub default: Option<String>,
    /// Required when its table is present (a field of an optional table without a default).
    pub required: bool,
    /// The variables that set it.
    pub variables: Vec<String>,
    /// Its doc comment, paragraphs separated by blank lines.
    pub doc: String,
}

/// A table of settings: `[kafka]`, `[fulfilment.v2]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// `kafka`, `fulfilment.v2`.
    pub name: String,
    /// The struct's doc comment.
    pub doc: String,
    /// Present only when written (`[http.tls]`).
    pub optional: bool,
    /// Its settings, in declaration order.
    pub entries: Vec<Entry>,
}

/// Reads the structs of the source: doc comments, `#[serde]` attributes and fields.
fn parse(source: &str) -> BTreeMap<String, Struct> {
    let mut structs = BTreeMap::new();
    let mut doc: Vec<String> = Vec::new();
    let mut serde = String::new();
    let mut current: Option<(String, Struct)> = None;
    for line in source.lines() {
        let trimmed = line.trim();
        if let Some(text) = trimmed.strip_prefix("///") {
            doc.push(text.strip_prefix(' ').unwrap_or(text).to_owned());
        } else if trimmed.starts_with("#[serde(") {
            serde.push_str(trimmed);
        } else if trimmed.starts_with("#[") {
            // derive, cfg and other attributes say nothing the reference shows
        } else if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest.split([' ', '{', '(', ';']).next().unwrap_or_default();
            let found = Struct {
                doc: join(&doc),
                serde: std::mem::take(&mut serde),
                fields: Vec::new(),
            };
            current = rest
                .trim_end()
                .ends_with('{')
                .then(|| (name.to_owned(), found));
            doc.clear();
        } else if line == "}" {
            if let Some((name, found)) = current.take() {
                structs.insert(name, found);
            }
            doc.clear();
            serde.clear();
        } else if let (Some((_, found)), Some(rest)) =
            (current.as_mut(), trimmed.strip_prefix("pub "))
        {
            if let Some((name, rust_type)) = rest.split_once(": ") {
                found.fields.push(Field {
                    name: name.to_owned(),
                    rust_type: rust_type.trim_end_matches(',').to_owned(),
                    doc: join(&doc),
                    serde: std::mem::take(&mut serde),
                });
            }
            doc.clear();
            serde.clear();
        } else if !trimmed.is_empty() {
            doc.clear();
            serde.clear();
        }
    }
    structs
}

/// Doc comment lines as Markdown: lines of a paragraph joined, paragraphs kept apart.
fn join(lines: &[String]) -> String {
    lines
        .split(|line| line.trim().is_empty())
        .filter(|paragraph| !paragraph.is_empty())
        .map(|paragraph| {
            paragraph
                .iter()
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A reader's name for a field's declared type, `None` for one the reference cannot name.
fn type_name(rust_type: &str) -> Option<&'static str> {
    let inner = rust_type
        .strip_prefix("Option<")
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(rust_type);
    Some(match inner {
        "bool" => "boolean",
        "String" => "string",
        "usize" | "u64" | "u32" | "u16" | "i32" => "integer",
        "Duration" => "duration",
        "SocketAddr" => "address (`host:port`)",
        "std::path::PathBuf" | "PathBuf" => "path",
        "Vec<String>" => "list of strings",
        "Vec<IpNet>" => "list of networks (CIDR)",
        "Vec<WebhookVersion>" => "list of `\"v1\"`, `\"v2\"`",
        "BTreeMap<String, String>" => "table of strings",
        "ForwardedHeader" => "`\"x-forwarded-for\"` or `\"forwarded\"`",
        _ => return None,
    })
}

/// The defaults as the file would hold them, with every optional table filled in with its
/// own defaults, so that their keys are there too.
fn defaults() -> toml::Table {
    let mut config = Config::default();
    config.http.tls = Some(TlsConfig {
        cert_path: Default::default(),
        key_path: Default::default(),
        reload_interval: super::default_tls_reload_interval(),
    });
    toml::Table::try_from(config).expect("the defaults serialise")
}

/// The variables that set `key`: itself, and for a table the form that sets one entry
/// (`FP_RELAY_AUTH_BASIC__<NAME>`, `FP_RELAY_KAFKA_PROPERTY_<NAME>`). The producer's and the
/// consumer's own librdkafka tables have no entry form: librdkafka's names hold dots, which
/// a variable's name cannot.
fn variables(key: &str, rust_type: &str) -> Vec<String> {
    let mut found: Vec<String> = env::variable_for(key).into_iter().collect();
    let librdkafka_table = key.ends_with("_properties");
    if rust_type.starts_with("BTreeMap") && !librdkafka_table {
        if let Some(entry) = env::variable_for(&format!("{key}.entry")) {
            found.push(format!("{}<NAME>", entry.trim_end_matches("ENTRY")));
        }
    }
    found
}

/// Every section and setting, in the order the source declares them.
pub fn sections() -> Vec<Section> {
    let structs = parse(SOURCE);
    let defaults = defaults();
    let mut sections = Vec::new();
    let root = structs.get("Config").expect("Config is declared in mod.rs");
    for field in &root.fields {
        walk(&structs, &defaults, field, "", &mut sections);
    }
    sections
}

/// Adds `field`'s section (and those nested in it) when it holds a struct.
fn walk(
    structs: &BTreeMap<String, Struct>,
    defaults: &toml::Table,
    field: &Field,
    prefix: &str,
    sections: &mut Vec<Section>,
) {
    if field.serde.contains("skip") {
        return;
    }
    let (inner, optional) = match field
        .rust_type
        .strip_prefix("Option<")
        .and_then(|t| t.strip_suffix('>'))
    {
        Some(inner) => (inner, true),
        None => (field.rust_type.as_str(), false),
    };
    let Some(found) = structs.get(inner) else {
        return;
    };
    let name = format!("{prefix}{}", field.name);
    let table = lookup(defaults, &name).and_then(toml::Value::as_table);
    let all_defaulted = found.serde.contains("default");
    let mut section = Section {
        name: name.clone(),
        doc: if found.doc.is_empty() {
            field.doc.clone()
        } else {
            found.doc.clone()
        },
        optional,
        entries: Vec::new(),
    };
    let mut nested = Vec::new();
    for member in &found.fields {
        if member.serde.contains("skip") {
            continue;
        }
        let member_inner = member
            .rust_type
            .strip_prefix("Option<")
            .and_then(|t| t.strip_suffix('>'))
            .unwrap_or(&member.rust_type);
        if structs.contains_key(member_inner) {
            nested.push(member);
            continue;
        }
        let key = format!("{name}.{}", member.name);
        let required = optional && !all_defaulted && !member.serde.contains("default");
        let default = if required {
            None
        } else {
            table.and_then(|t| t.get(&member.name)).map(inline)
        };
        section.entries.push(Entry {
            key: key.clone(),
            type_name: type_name(&member.rust_type)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("unnamed type `{}`", member.rust_type)),
            default,
            required,
            variables: variables(&key, &member.rust_type),
            doc: member.doc.clone(),
        });
    }
    sections.push(section);
    for member in nested {
        walk(structs, defaults, member, &format!("{name}."), sections);
    }
}

/// The value at a dotted path of the defaults.
fn lookup<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// A value as it is written on one line of the file.
fn inline(value: &toml::Value) -> String {
    match value {
        toml::Value::Table(table) if table.is_empty() => "{}".to_owned(),
        other => other.to_string(),
    }
}

/// The whole reference as Markdown (what docs/configuration.md holds).
pub fn markdown() -> String {
    let sections = sections();
    let mut out = String::from(PREAMBLE);
    out.push_str("\n## Sections\n\n");
    for section in &sections {
        let summary = section.doc.split("\n\n").next().unwrap_or_default();
        // Some struct docs open by naming their table, which the link already does.
        let summary = summary
            .strip_prefix(&format!("`[{}]`: ", section.name))
            .unwrap_or(summary);
        let _ = writeln!(
            out,
            "- [`[{}]`](#{}): {summary}",
            section.name,
            section.name.replace('.', "")
        );
    }
    for section in &sections {
        let _ = write!(out, "\n## `[{}]`\n\n", section.name);
        if section.optional {
            out.push_str("*Optional table: absent unless written.* ");
        }
        let _ = writeln!(out, "{}", section.doc);
        for entry in &section.entries {
            let _ = write!(out, "\n### `{}`\n\n", entry.key);
            let default = match (&entry.default, entry.required) {
                (_, true) => "required in this table".to_owned(),
                (Some(value), false) => format!("default `{value}`"),
                (None, false) => "default: unset".to_owned(),
            };
            let variables = entry
                .variables
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(out, "{} · {default} · {variables}\n", entry.type_name);
            let _ = writeln!(out, "{}", entry.doc);
        }
    }
    out
}
