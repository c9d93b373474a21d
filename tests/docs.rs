//! The documentation stays true to the code: docs/configuration.md is what
//! `fp-relay check-config --reference` prints, every setting is documented and every variable
//! it names sets it, every alert carries a runbook_url to a section of docs/runbooks.md, every
//! configuration snippet in the README and docs/ loads, and every relative link and anchor
//! resolves. None of this needs a broker. docs/development.md says how to keep it so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fp_relay::config::{reference, Config, Overrides};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- the generated configuration reference ----------------------------------------------

#[test]
fn the_configuration_page_is_what_check_config_reference_prints() {
    let generated = reference::markdown();
    let written = read(&root().join("docs/configuration.md"));
    if generated != written {
        let line = generated
            .lines()
            .zip(written.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| generated.lines().count().min(written.lines().count()));
        panic!(
            "docs/configuration.md is not what `fp-relay check-config --reference` prints (first \
             difference at line {}: {:?} generated, {:?} written). Regenerate it:\n\n    \
             cargo run -- check-config --reference > docs/configuration.md\n",
            line + 1,
            generated.lines().nth(line),
            written.lines().nth(line),
        );
    }
}

/// Every setting (leaf) of a table: `kafka.ack_timeout`; a map-valued setting is a leaf.
fn leaves(table: &toml::Table, prefix: &str, maps: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let name = format!("{prefix}{key}");
        match value {
            toml::Value::Table(inner) if !maps.contains(&name) => {
                leaves(inner, &format!("{name}."), maps, out)
            }
            _ => {
                out.insert(name);
            }
        }
    }
}

#[test]
fn every_setting_is_in_the_reference_with_a_type_and_a_doc_comment() {
    let sections = reference::sections();
    let entries: Vec<&reference::Entry> = sections.iter().flat_map(|s| &s.entries).collect();
    let keys: BTreeSet<String> = entries.iter().map(|e| e.key.clone()).collect();
    let maps: BTreeSet<String> = entries
        .iter()
        .filter(|e| e.type_name.starts_with("table"))
        .map(|e| e.key.clone())
        .collect();
    // The defaults as the file would hold them, the optional table filled in.
    let mut config = Config::default();
    config.http.tls = Some(fp_relay::config::TlsConfig {
        cert_path: "c".into(),
        key_path: "k".into(),
        reload_interval: std::time::Duration::from_secs(1),
    });
    let table = toml::Table::try_from(config).unwrap();
    let mut all = BTreeSet::new();
    leaves(&table, "", &maps, &mut all);
    let missing: Vec<&String> = all.difference(&keys).collect();
    assert!(
        missing.is_empty(),
        "settings missing from the reference (src/config/reference.rs reads them from \
         src/config/mod.rs): {missing:?}"
    );
    for entry in entries {
        assert!(
            !entry.doc.trim().is_empty(),
            "{}: no doc comment on its field in src/config/mod.rs",
            entry.key
        );
        assert!(
            !entry.type_name.starts_with("unnamed type"),
            "{}: no reader's name for the type {} (add it to reference::type_name)",
            entry.key,
            entry.type_name
        );
        assert!(
            !entry.variables.is_empty(),
            "{}: no environment variable",
            entry.key
        );
    }
}

#[test]
fn every_variable_the_reference_names_sets_its_setting() {
    // Setting each variable to the documented default loads, and changes nothing: the
    // variable exists, reaches its key, and the default shown is the real one.
    let overrides = Overrides {
        insecure_no_auth: true,
        ..Overrides::default()
    };
    let mut expected = Config::default();
    expected.auth.insecure_no_auth = true;
    for section in reference::sections() {
        if section.optional {
            continue; // one key alone would be an incomplete table
        }
        for entry in &section.entries {
            let Some(default) = &entry.default else {
                continue;
            };
            // The value as a variable holds it: strings without their TOML quotes.
            let value = match format!("v = {default}").parse::<toml::Table>().unwrap()["v"] {
                toml::Value::String(ref text) => text.clone(),
                _ => default.clone(),
            };
            let variable = entry.variables[0].clone();
            let config = Config::load(None, [(variable.clone(), value.clone())], &overrides)
                .unwrap_or_else(|e| panic!("{variable}={value}: {e}"));
            assert_eq!(
                config, expected,
                "{variable}={value} changed the configuration"
            );
        }
    }
}

// ---- headings and anchors -----------------------------------------------------------------

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings, a repeated one numbered as GitHub does (`-1`, `-2`).
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut found = BTreeSet::new();
    let mut fence = false;
    for line in markdown.lines() {
        if line.trim().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let base = anchor(&line[hashes..]);
            let count = seen.entry(base.clone()).or_default();
            found.insert(if *count == 0 {
                base.clone()
            } else {
                format!("{base}-{count}")
            });
            *count += 1;
        }
    }
    found
}

#[test]
fn anchors_follow_githubs_rules() {
    assert_eq!(anchor("OAuth / OIDC"), "oauth--oidc");
    assert_eq!(
        anchor("Self-hosted: SCRAM with a private CA"),
        "self-hosted-scram-with-a-private-ca"
    );
    assert_eq!(anchor("`[fulfilment.v2]`"), "fulfilmentv2");
    assert_eq!(anchor("`kafka.ack_timeout`"), "kafkaack_timeout");
    let page = "# A\n## Same\n```\n# not a heading\n```\n## Same\n";
    assert_eq!(
        anchors(page),
        ["a", "same", "same-1"].map(str::to_owned).into()
    );
}

// ---- runbooks -----------------------------------------------------------------------------

#[test]
fn every_alert_has_a_runbook_url_to_a_section_of_the_runbooks() {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read(&root().join("deploy/prometheus/alerts.yml"))).unwrap();
    let runbooks = anchors(&read(&root().join("docs/runbooks.md")));
    let base = format!(
        "{}/blob/main/docs/runbooks.md#",
        env!("CARGO_PKG_REPOSITORY")
    );
    let mut alerts = BTreeSet::new();
    let mut problems = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(alert) = rule["alert"].as_str() else {
                continue; // a recording rule
            };
            alerts.insert(anchor(alert));
            match rule["annotations"]["runbook_url"].as_str() {
                None => problems.push(format!("{alert}: no runbook_url annotation")),
                Some(url) => match url.strip_prefix(&base) {
                    None => problems.push(format!("{alert}: runbook_url {url} is not {base}…")),
                    Some(fragment) if !runbooks.contains(fragment) => problems.push(format!(
                        "{alert}: docs/runbooks.md has no section #{fragment}"
                    )),
                    Some(fragment) if fragment != anchor(alert) => problems.push(format!(
                        "{alert}: its runbook_url points at #{fragment}, another alert's section"
                    )),
                    Some(_) => {}
                },
            }
        }
    }
    assert!(alerts.len() >= 18, "only {} alerts found", alerts.len());
    // And no runbook for an alert that no longer exists.
    let stale: Vec<&String> = runbooks
        .iter()
        .filter(|a| a.starts_with("fprelay") && !alerts.contains(*a))
        .collect();
    assert!(
        stale.is_empty(),
        "runbooks for alerts that do not exist: {stale:?}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
// ---- snippets -----------------------------------------------------------------------------

/// The README and every Markdown page of docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A fenced code block: its language, its text, whether it is marked partial, where it starts.
struct Block {
    language: String,
    /// The fence's indentation (a block inside a list item), taken off each line.
    indent: usize,
    text: String,
    partial: bool,
    line: usize,
}

/// The fenced blocks of a Markdown page. A block is partial when the last non-empty line before
/// its fence is an HTML comment starting `<!-- partial`.
fn blocks(markdown: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let mut open: Option<Block> = None;
    let mut previous = "";
    for (number, line) in markdown.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            match open.take() {
                Some(block) => found.push(block),
                None => {
                    open = Some(Block {
                        language: info.trim().to_owned(),
                        indent: line.len() - line.trim_start().len(),
                        text: String::new(),
                        partial: previous.starts_with("<!-- partial"),
                        line: number + 1,
                    })
                }
            }
        } else if let Some(block) = open.as_mut() {
            let indent = line.len() - line.trim_start().len();
            block.text.push_str(&line[indent.min(block.indent)..]);
            block.text.push('\n');
        }
        if !trimmed.is_empty() {
            previous = trimmed;
        }
    }
    found
}

/// `FP_RELAY_*` assignments of a shell block (`export` optional), values unquoted; a value
/// written as a `<placeholder>` is taken whole.
fn assignments(script: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for line in script.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, rest)) = line.split_once('=') else {
            continue;
        };
        if !name.starts_with("FP_RELAY_") || name.contains(' ') {
            continue;
        }
        let value = match rest.chars().next() {
            Some(quote @ ('\'' | '"')) => rest[1..].split(quote).next().unwrap_or_default(),
            Some('<') => rest.split_inclusive('>').next().unwrap_or_default(),
            _ => rest.split_whitespace().next().unwrap_or_default(),
        };
        found.push((name.to_owned(), value.to_owned()));
    }
    found
}

#[test]
fn every_configuration_snippet_in_the_docs_loads() {
    let overrides = Overrides {
        insecure_no_auth: true,
        ..Overrides::default()
    };
    let dir = std::env::temp_dir().join(format!("fp-relay-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut checked = 0;
    for page in pages() {
        for block in blocks(&read(&page)) {
            let at = format!("{}:{}", relative(&page), block.line);
            match block.language.as_str() {
                "toml" if block.partial => {
                    block
                        .text
                        .parse::<toml::Table>()
                        .unwrap_or_else(|e| panic!("{at}: a partial block must still parse: {e}"));
                }
                "toml" => {
                    let file = dir.join("snippet.toml");
                    std::fs::write(&file, &block.text).unwrap();
                    Config::load(Some(&file), Vec::<(String, String)>::new(), &overrides)
                        .unwrap_or_else(|e| {
                            panic!(
                                "{at}: the relay refuses this snippet: {e}\n(mark a deliberate \
                                 fragment with <!-- partial --> before its fence)"
                            )
                        });
                    checked += 1;
                }
                "sh" | "bash" | "shell" if !block.partial => {
                    let env = assignments(&block.text);
                    if env.is_empty() {
                        continue;
                    }
                    Config::load(None, env.clone(), &overrides).unwrap_or_else(|e| {
                        panic!("{at}: the relay refuses these variables {env:?}: {e}")
                    });
                    checked += 1;
                }
                _ => {}
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    // The Kafka recipes alone are nine; a parser that found none would pass vacuously.
    assert!(checked >= 10, "only {checked} snippets found");
}

#[test]
fn snippet_blocks_and_assignments_are_read_as_documented() {
    let page = "text\n\n<!-- partial: one table -->\n```toml\n[http.tls]\n```\n\n```sh\n\
                export FP_RELAY_A='x y'   # comment\nFP_RELAY_B=<a placeholder> rest\nkubectl apply\n```\n";
    let found = blocks(page);
    assert_eq!(found.len(), 2);
    assert!(found[0].partial && found[0].language == "toml" && found[0].line == 4);
    assert!(!found[1].partial);
    assert_eq!(
        assignments(&found[1].text),
        [
            ("FP_RELAY_A".to_owned(), "x y".to_owned()),
            ("FP_RELAY_B".to_owned(), "<a placeholder>".to_owned())
        ]
    );
}

// ---- links -------------------------------------------------------------------------------

/// The targets of the inline links of a page, outside code (fenced or in backticks).
fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut fence = false;
    for (number, line) in markdown.lines().enumerate() {
        if line.trim().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        // Code spans hold text like `[kafka.properties]` that is not a link.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let end = after.find(')').unwrap_or(after.len());
            found.push((number + 1, after[..end].to_owned()));
            rest = &after[end..];
        }
    }
    found
}

#[test]
fn every_relative_link_and_anchor_in_the_readme_and_docs_resolves() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = read(&page);
        for (line, target) in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((path, fragment)) => (path, Some(fragment)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            let at = format!("{}:{line}: {target}", relative(&page));
            if !file.exists() {
                broken.push(format!("{at}: no such file"));
                continue;
            }
            if let Some(fragment) = fragment {
                if file.extension().is_some_and(|e| e == "md")
                    && !anchors(&read(&file)).contains(fragment)
                {
                    broken.push(format!("{at}: no heading with that anchor"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
