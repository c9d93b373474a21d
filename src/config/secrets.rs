//! What is secret in a configuration, and how it is shown masked: `check-config`'s TOML,
//! type errors about secret settings, and URLs that carry a credential.

use super::Config;

impl Config {
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
        shown.firstpromoter.webhook_url = shown
            .firstpromoter
            .webhook_url
            .as_deref()
            .map(|url| masked_url(url, &self.http.path));
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
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

/// `message` with every quoted value (`"..."`, `'...'` or `` `...` ``) replaced by the mask.
pub(super) fn without_values(message: &str) -> String {
    without_quoted(message, &['"', '\'', '`'])
}

/// `message` with every value between two of `quotes` replaced by the mask. A backslash
/// escapes the next character inside a value (`"tok\"en"` is one value), and a value whose
/// closing quote never comes is masked to the end: nothing of it is shown.
pub(super) fn without_quoted(message: &str, quotes: &[char]) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if !quotes.contains(&c) {
            continue;
        }
        // Inside a value: skip to its closing quote.
        let mut closed = false;
        while let Some(inner) = chars.next() {
            if inner == '\\' {
                chars.next();
            } else if inner == c {
                closed = true;
                break;
            }
        }
        out.push_str(MASK);
        if closed {
            out.push(c);
        }
    }
    out
}

/// Shortest secret, token or password accepted: guessing must stay hopeless.
pub const MIN_SECRET_LEN: usize = 16;

/// What a masked secret looks like in output.
pub const MASK: &str = "********";

/// The properties librdkafka itself marks sensitive (`_RK_SENSITIVE` in rdkafka_conf.c, checked
/// against the vendored source by a test): masked whatever their name says.
pub const LIBRDKAFKA_SENSITIVE: &[&str] = &[
    "ssl.key.location",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.ca.pem",
    "ssl.keystore.password",
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
];

/// True for librdkafka settings that hold credentials or key material: librdkafka's own
/// sensitive list, and names that say so.
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
    LIBRDKAFKA_SENSITIVE.contains(&key.as_str()) || MARKERS.iter().any(|m| key.contains(m))
}

/// `url` fit to print: user info, the query and any path segment that may be a credential
/// (the path token after the relay's `http_path`, or a long segment of token characters with
/// a digit in it) replaced by [`MASK`]. Scheme, host and the rest of the path stay readable.
pub fn masked_url(url: &str, http_path: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{MASK}@{host}"),
        None => authority.to_owned(),
    };
    let (path, query) = match tail.find(['?', '#']) {
        Some(at) => (&tail[..at], Some(&tail[at..])),
        None => (tail, None),
    };
    let webhook_path = http_path.trim_end_matches('/');
    let token_at = path
        .strip_prefix(webhook_path)
        .filter(|rest| rest.starts_with('/') && !webhook_path.is_empty())
        .map(|_| webhook_path.split('/').count());
    let path: Vec<&str> = path
        .split('/')
        .enumerate()
        .map(|(n, segment)| {
            let is_token = token_at == Some(n) && !segment.is_empty();
            if is_token || looks_like_a_credential(segment) {
                MASK
            } else {
                segment
            }
        })
        .collect();
    let query = match query {
        Some(q) if q.len() > 1 => format!("{}{MASK}", &q[..1]),
        Some(q) => q.to_owned(),
        None => String::new(),
    };
    format!("{scheme}{authority}{}{query}", path.join("/"))
}

/// A path segment long and random-looking enough to be a token.
fn looks_like_a_credential(segment: &str) -> bool {
    segment.len() >= MIN_SECRET_LEN
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b))
        && segment.bytes().any(|b| b.is_ascii_digit())
}
