//! The documents downstream teams and operators code against stay true to the code:
//! docs/asyncapi.yaml names every topic the relay writes, and config/relay.toml shows every
//! setting the relay has.

use std::collections::BTreeSet;
use std::path::Path;

use fp_relay::config::Config;
use fp_relay::webhook::known_event_types;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn the_asyncapi_document_parses_and_has_a_channel_for_every_known_event_type() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read("docs/asyncapi.yaml")).expect("valid YAML");
    assert_eq!(doc["asyncapi"].as_str(), Some("3.0.0"));
    let addresses: BTreeSet<String> = doc["channels"]
        .as_mapping()
        .unwrap()
        .values()
        .map(|channel| channel["address"].as_str().unwrap().to_owned())
        .collect();
    let config = Config::default();
    for event_type in known_event_types() {
        let topic = config
            .kafka
            .topic_template
            .replace("{event_type}", event_type);
        assert!(
            addresses.contains(&topic),
            "docs/asyncapi.yaml has no channel for {topic}"
        );
    }
    for topic in [
        &config.kafka.dead_letter_topic,
        &config.fulfilment.reply_topic,
    ] {
        assert!(addresses.contains(topic.as_str()), "no channel for {topic}");
    }
    // Every $ref resolves.
    let text = read("docs/asyncapi.yaml");
    for reference in text.lines().filter_map(|l| l.split("$ref: ").nth(1)) {
        let path = reference.trim().trim_matches('\'').trim_start_matches("#/");
        let mut node = &doc;
        for part in path.split('/') {
            node = &node[part];
        }
        assert!(!node.is_null(), "dangling $ref {reference}");
    }
    // The headers the relay writes are all described.
    let headers = &doc["components"]["schemas"]["EventHeaders"]["properties"];
    for header in [
        "fp-event-id",
        "fp-event-type",
        "fp-webhook-version",
        "fp-received-at",
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
    ] {
        assert!(!headers[header].is_null(), "EventHeaders lacks {header}");
    }
}

/// Every `[section]` and `key` the relay's configuration has, from its own serialisation.
fn settings(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner)
                if ![
                    "topics",
                    "keys",
                    "properties",
                    "producer_properties",
                    "consumer_properties",
                    "basic",
                ]
                .contains(&key.as_str()) =>
            {
                settings(inner, &path, out)
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

#[test]
fn the_example_config_documents_every_setting() {
    let mut config = Config::default();
    // Optional sections appear in the example too, commented out.
    config.http.tls = Some(fp_relay::config::TlsConfig {
        cert_path: "c".into(),
        key_path: "k".into(),
        reload_interval: std::time::Duration::from_secs(1),
    });
    let table: toml::Table = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
    let mut all = BTreeSet::new();
    settings(&table, "", &mut all);
    let example = read("config/relay.toml");
    let mut section = String::new();
    let mut documented = BTreeSet::new();
    for line in example.lines() {
        let line = line.trim().trim_start_matches("# ").trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            documented.insert(section.clone()); // a map-valued setting is its own [section]
        } else if let Some((key, _)) = line.split_once(" = ") {
            if !key.contains(' ') && !key.starts_with('"') {
                documented.insert(format!("{section}.{key}"));
            }
        }
    }
    let missing: Vec<&String> = all
        .iter()
        .filter(|s| {
            !documented.contains(*s)
                && !s.starts_with("kafka.topics")
                && !s.starts_with("kafka.keys")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "config/relay.toml does not show: {missing:?}"
    );
}
