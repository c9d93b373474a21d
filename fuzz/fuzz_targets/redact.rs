//! Differential: the byte splice and the tree walk are two implementations of one redaction
//! rule. For an arbitrary body and an arbitrary field list (chosen by the first input byte from
//! names that nest and need escaping) they must agree whenever the body is JSON, the splice must
//! never panic, and no named field may keep a value in either.
#![no_main]

use fp_relay::config::RedactConfig;
use fp_relay::webhook::redact::Redactor;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const NAMES: [&str; 6] = ["auth_token", "temp_password", "promoter", "data", "a\"b", "id"];

fuzz_target!(|input: &[u8]| {
    let Some((&choice, body)) = input.split_first() else {
        return;
    };
    let fields: Vec<String> = NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| choice & (1 << i) != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect();
    let redactor = Redactor::new(&RedactConfig {
        fields: fields.clone(),
        ..RedactConfig::default()
    });
    let spliced = redactor.splice(body);
    let Ok(mut tree) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let count = redactor.apply(&mut tree);
    assert!(no_secret_left(&tree, &fields), "tree: {tree}");
    match spliced {
        // The scanner may decline JSON it does not walk (the relay then uses the tree).
        Err(_) => {}
        Ok(None) => assert_eq!(count, 0, "the splice found nothing the tree redacted"),
        Ok(Some((bytes, n))) => {
            let reparsed: Value = serde_json::from_slice(&bytes).expect("the splice is JSON");
            assert!(no_secret_left(&reparsed, &fields), "splice: {reparsed}");
            assert_eq!(reparsed, tree, "splice and tree disagree");
            // Duplicate keys: the splice masks every copy, the tree keeps the last one.
            assert!(n >= count, "the splice masked fewer values ({n}) than the tree ({count})");
        }
    }
});

/// True when every named field, at any depth, is null or masked.
fn no_secret_left(value: &Value, fields: &[String]) -> bool {
    match value {
        Value::Object(map) => map.iter().all(|(key, value)| {
            let secret = fields.iter().any(|f| f == key);
            (!secret || value.is_null() || value == "[redacted]") && no_secret_left(value, fields)
        }),
        Value::Array(items) => items.iter().all(|v| no_secret_left(v, fields)),
        _ => true,
    }
}
