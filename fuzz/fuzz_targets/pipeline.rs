//! Arbitrary bytes and headers through the request-to-record path (envelope parsing, redaction,
//! routing, header building) and the credential check. Nothing may panic, every topic must be a
//! legal Kafka topic, a redacted payload must still be JSON without the secret fields, and what
//! the dead-letter topic keeps of an unparseable body holds no secret either.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use fp_relay::config::Config;
use fp_relay::kafka::record::Received;
use fp_relay::pipeline::Pipeline;
use fp_relay::webhook::auth::Authenticator;
use fp_relay::webhook::routing::is_valid_topic;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    pipeline: Pipeline,
    auth: Authenticator,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut config = Config::default();
        config.auth.tokens = vec!["fuzz-token-0123456789".into()];
        config.auth.signature_secrets = vec!["fuzz-secret-0123456789".into()];
        Fixture {
            pipeline: Pipeline::new(&config),
            auth: Authenticator::new(&config.auth),
        }
    })
}

fuzz_target!(|input: &[u8]| {
    // The first bytes, split at the first NUL, become header values; the rest is the body.
    let (head, body) = match input.iter().position(|b| *b == 0) {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (&[][..], input),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in [
        "x-event-type",
        "x-event-id",
        "x-webhook-signature",
        "authorization",
    ]
    .iter()
    .zip(head.split(|b| *b == b'\n'))
    {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(*name, value);
        }
    }
    let f = fixture();
    let _ = f.auth.check(&headers, None, body);
    let _ = f.auth.client_ip("203.0.113.1".parse().unwrap(), &headers);
    let prepared = f
        .pipeline
        .prepare(&headers, Bytes::copy_from_slice(body), &Received::now());
    if prepared.is_err() {
        // What the dead-letter topic keeps of a body that did not parse: whenever that is JSON
        // (the strict parser's view), no secret field has a value left.
        let (kept, _, _) = f.pipeline.dead_letter_body(Bytes::copy_from_slice(body));
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&kept) {
            assert!(no_secret_left(&value), "a secret reached the dead letter: {value}");
        }
    }
    if let Ok(prepared) = prepared {
        assert!(
            is_valid_topic(&prepared.record.topic),
            "illegal topic {:?}",
            prepared.record.topic
        );
        // The payload (spliced or not) is JSON in which no secret field has a value left.
        let value: serde_json::Value =
            serde_json::from_slice(&prepared.record.payload).expect("the payload is JSON");
        assert!(no_secret_left(&value), "a secret survived: {value}");
    }
});

/// True when every `auth_token` and `temp_password`, at any depth, is null or masked.
fn no_secret_left(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(map) => map.iter().all(|(key, value)| {
            let secret = key == "auth_token" || key == "temp_password";
            (!secret || value.is_null() || value == "[redacted]") && no_secret_left(value)
        }),
        serde_json::Value::Array(items) => items.iter().all(no_secret_left),
        _ => true,
    }
}
