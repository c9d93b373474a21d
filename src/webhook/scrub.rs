//! Secrets out of bodies the relay could not parse, before they are kept on the dead-letter
//! topic. A body that failed to parse (no event type, a number beyond f64, a lone surrogate,
//! broken syntax) may still carry the promoter's `auth_token` and `temp_password`; the strict
//! redaction (`redact.rs`) needs valid JSON, so this is a lenient, byte-level scan.
//!
//! The scan finds every quoted key followed by `:` (escaped keys decoded, so `auth\u005ftoken`
//! is `auth_token`), and replaces the value after a named one: a string, a bracketed value up
//! to its matching bracket, or anything else up to the next delimiter. It never descends into
//! a replaced value and keeps every other byte. A body it cannot delimit (not starting with
//! `{` or `[`, an unterminated string or bracket) is [`Scrubbed::Unscannable`]: the caller
//! keeps only its digest and size, since a secret may hide anywhere in it.

use crate::webhook::redact::FieldSet;

/// What an unparseable body may be kept as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scrubbed {
    /// No named field in it: the bytes as they are.
    Unchanged,
    /// The bytes with `count` values replaced.
    Redacted { bytes: Vec<u8>, count: usize },
    /// The scan cannot tell where a secret would be: keep a digest, never the bytes.
    Unscannable,
}

/// Scans `body` for the values of `fields` and replaces each with the JSON string
/// `replacement` (already serialised, quotes included).
pub fn scrub(body: &[u8], fields: &FieldSet, replacement: &[u8]) -> Scrubbed {
    if fields.is_empty() {
        return Scrubbed::Unchanged;
    }
    let start = skip_whitespace(body, 0);
    if !matches!(body.get(start), Some(b'{' | b'[')) {
        return Scrubbed::Unscannable;
    }
    let mut spans = Vec::new();
    let mut at = start;
    while at < body.len() {
        if body[at] != b'"' {
            at += 1;
            continue;
        }
        let Some(end) = string_end(body, at) else {
            return Scrubbed::Unscannable;
        };
        let after = skip_whitespace(body, end);
        if body.get(after) != Some(&b':') || !fields.contains(&decode_key(&body[at + 1..end - 1])) {
            at = end;
            continue;
        }
        let value = skip_whitespace(body, after + 1);
        let Some(value_end) = value_end(body, value) else {
            return Scrubbed::Unscannable;
        };
        if value_end > value && &body[value..value_end] != b"null" {
            spans.push((value, value_end));
        }
        at = value_end.max(after + 1);
    }
    if spans.is_empty() {
        return Scrubbed::Unchanged;
    }
    let mut bytes = Vec::with_capacity(body.len());
    let mut copied = 0;
    for (from, to) in &spans {
        bytes.extend_from_slice(&body[copied..*from]);
        bytes.extend_from_slice(replacement);
        copied = *to;
    }
    bytes.extend_from_slice(&body[copied..]);
    Scrubbed::Redacted {
        bytes,
        count: spans.len(),
    }
}

fn skip_whitespace(body: &[u8], mut at: usize) -> usize {
    while matches!(body.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The index just past the closing quote of the string opening at `open`.
fn string_end(body: &[u8], open: usize) -> Option<usize> {
    let mut at = open + 1;
    loop {
        at += memchr::memchr2(b'"', b'\\', body.get(at..)?)?;
        if body[at] == b'"' {
            return Some(at + 1);
        }
        at += 2;
    }
}

/// The end of the value starting at `at`: a string, a bracketed value (brackets counted,
/// strings skipped), or a bare token up to the next delimiter. `None` when it never ends.
fn value_end(body: &[u8], at: usize) -> Option<usize> {
    match body.get(at) {
        None => Some(at),
        Some(b'"') => string_end(body, at),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut i = at;
            while i < body.len() {
                match body[i] {
                    b'"' => {
                        i = string_end(body, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        Some(_) => {
            let mut end = at;
            while !matches!(
                body.get(end),
                None | Some(b',' | b'}' | b']' | b'\n' | b'\r' | b'"')
            ) {
                end += 1;
            }
            while end > at && matches!(body[end - 1], b' ' | b'\t') {
                end -= 1;
            }
            Some(end)
        }
    }
}

/// A key's bytes with JSON escapes decoded; anything undecodable (a lone surrogate, a bad
/// escape) becomes U+FFFD or stays as written, so a key never fails to decode.
fn decode_key(raw: &[u8]) -> Vec<u8> {
    if !raw.contains(&b'\\') {
        return raw.to_vec();
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' || i + 1 >= raw.len() {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let simple = match raw[i + 1] {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(byte) = simple {
            out.push(byte);
            i += 2;
            continue;
        }
        let unit = |at: usize| {
            raw.get(at..at + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u16::from_str_radix(h, 16).ok())
        };
        match (raw[i + 1], unit(i + 2)) {
            (b'u', Some(high @ 0xD800..=0xDBFF)) => {
                let low = (raw.get(i + 6..i + 8) == Some(b"\\u"))
                    .then(|| unit(i + 8))
                    .flatten()
                    .filter(|low| (0xDC00..=0xDFFF).contains(low));
                let (c, used) = match low {
                    Some(low) => (
                        char::from_u32(
                            0x10000
                                + ((u32::from(high) - 0xD800) << 10)
                                + (u32::from(low) - 0xDC00),
                        ),
                        12,
                    ),
                    None => (None, 6),
                };
                push_char(&mut out, c.unwrap_or('\u{FFFD}'));
                i += used;
            }
            (b'u', Some(unit)) => {
                push_char(
                    &mut out,
                    char::from_u32(u32::from(unit)).unwrap_or('\u{FFFD}'),
                );
                i += 6;
            }
            _ => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    out
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buffer = [0; 4];
    out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &[u8] = br#""[redacted]""#;

    fn fields() -> FieldSet {
        FieldSet::new(&["auth_token".to_owned(), "temp_password".to_owned()])
    }

    fn scrubbed(body: &str) -> String {
        match scrub(body.as_bytes(), &fields(), R) {
            Scrubbed::Unchanged => body.to_owned(),
            Scrubbed::Redacted { bytes, .. } => String::from_utf8(bytes).unwrap(),
            Scrubbed::Unscannable => "<digest>".to_owned(),
        }
    }

    #[test]
    fn the_bodies_that_fail_to_parse_keep_no_secret() {
        for (body, expected) in [
            // No event type: valid JSON the envelope refused.
            (
                r#"{"data":{"promoter":{"auth_token":"s3cr3t","temp_password":"pw"}}}"#,
                r#"{"data":{"promoter":{"auth_token":"[redacted]","temp_password":"[redacted]"}}}"#,
            ),
            // A number serde_json refuses, next to the secret.
            (
                r#"{"amount":1e999,"promoter":{"auth_token":"s3cr3t"}}"#,
                r#"{"amount":1e999,"promoter":{"auth_token":"[redacted]"}}"#,
            ),
            // A lone surrogate elsewhere.
            (
                r#"{"name":"\ud800","temp_password":"pw"}"#,
                r#"{"name":"\ud800","temp_password":"[redacted]"}"#,
            ),
            // An escaped key.
            (
                r#"{"auth\u005ftoken":"s3cr3t"}"#,
                r#"{"auth\u005ftoken":"[redacted]"}"#,
            ),
            // Values that are not strings, and broken syntax after the secret.
            (
                r#"{"auth_token": 12345 , "x": [1,2"#,
                r#"{"auth_token": "[redacted]" , "x": [1,2"#,
            ),
            (
                r#"[{"auth_token":{"nested":"s3cr3t"}},}"#,
                r#"[{"auth_token":"[redacted]"},}"#,
            ),
            // A null secret stays null, as the strict redaction leaves it.
            (r#"{"auth_token":null,}"#, r#"{"auth_token":null,}"#),
            // A field name as a value is not a key.
            (r#"{"k":"auth_token","v":1,"#, r#"{"k":"auth_token","v":1,"#),
        ] {
            assert_eq!(scrubbed(body), expected, "{body}");
        }
    }

    #[test]
    fn what_cannot_be_delimited_is_unscannable() {
        for body in [
            r#"{"auth_token":"s3cr3t"#,            // unterminated string
            r#"{"auth_token":{"a":"s3cr3t""#,      // unterminated object
            r#"{"x":"unterminated, "auth_token""#, // the key is inside a string
            "auth_token=s3cr3t&user=1",            // not JSON at all
            "\u{feff}{\"auth_token\":\"s\"}",      // a byte-order mark first
        ] {
            assert_eq!(scrubbed(body), "<digest>", "{body}");
        }
        assert_eq!(scrub(b"{}", &FieldSet::new(&[]), R), Scrubbed::Unchanged);
    }

    proptest::proptest! {
        /// For any body (valid JSON or not) that scrubs to bytes, no named field's string
        /// value survives: differential against a search for the secret itself.
        #[test]
        fn a_scrubbed_body_never_holds_the_secret(
            prefix in "[ -~]{0,40}",
            suffix in "[ -~]{0,40}",
            escaped in proptest::bool::ANY,
        ) {
            let key = if escaped { r"auth\u005ftoken" } else { "auth_token" };
            let body = format!("{{{prefix}\"{key}\":\"SECRET-VALUE\"{suffix}");
            match scrub(body.as_bytes(), &fields(), R) {
                Scrubbed::Redacted { bytes, .. } => {
                    let text = String::from_utf8(bytes).unwrap();
                    // The secret survives only inside another string that swallowed the key.
                    if text.contains("SECRET-VALUE") {
                        proptest::prop_assert!(prefix.contains('"'), "{}", text);
                    }
                }
                Scrubbed::Unchanged => proptest::prop_assert!(prefix.contains('"'), "{}", body),
                Scrubbed::Unscannable => {}
            }
        }

        /// On valid JSON the lenient scan agrees with the strict splice.
        #[test]
        fn on_valid_json_it_agrees_with_the_strict_redaction(
            secret in "[a-zA-Z0-9]{1,20}",
            other in "[a-z]{1,10}",
        ) {
            let body = format!(
                r#"{{"{other}":[1,{{"auth_token":"{secret}"}}],"temp_password":"{secret}","n":null}}"#
            );
            let strict = crate::webhook::redact::Redactor::new(&crate::config::RedactConfig::default())
                .splice(body.as_bytes())
                .unwrap()
                .map(|(bytes, _)| bytes);
            let lenient = match scrub(body.as_bytes(), &fields(), R) {
                Scrubbed::Redacted { bytes, .. } => Some(bytes),
                _ => None,
            };
            proptest::prop_assert_eq!(strict, lenient);
        }
    }
}
