//! A bounded, deterministic stand-in for the fuzz target (fuzz/fuzz_targets/pipeline.rs) that
//! runs on the stable toolchain in every test run: mutated FirstPromoter samples through the
//! request-to-record path and the credential check. Nothing may panic; every record must be
//! routable and, when redacted, still JSON.

use std::path::Path;

use bytes::Bytes;
use fp_relay::config::Config;
use fp_relay::kafka::record::Received;
use fp_relay::pipeline::Pipeline;
use fp_relay::webhook::auth::Authenticator;
use fp_relay::webhook::routing::is_valid_topic;
use http::{HeaderMap, HeaderValue};

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"null",
    b"{}",
    b"[]",
    b"\"\"",
    b"-1",
    b"1e999",
    b"\"\\u0000\"",
    b"{\"type\":",
    b"]]]]",
    b"\xff",
    b"\"auth_token\":\"x\"",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(5) {
            0 if !data.is_empty() => {
                let at = at.min(data.len() - 1);
                data[at] = rng.next() as u8;
            }
            1 => data.truncate(at),
            2 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                data.splice(at..at, piece.iter().copied());
            }
            3 if at < data.len() => {
                let end = (at + rng.below(64)).min(data.len());
                data.drain(at..end);
            }
            _ => {
                let from = rng.below(data.len().max(1));
                let end = (from + rng.below(128)).min(data.len());
                let copy = data[from..end].to_vec();
                data.splice(at..at, copy);
            }
        }
    }
    data
}

/// No `auth_token` or `temp_password` field, at any depth, keeps a value.
fn assert_no_secret_field(value: &serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, field) in map {
                if key == "auth_token" || key == "temp_password" {
                    assert!(field.is_null() || field == "[redacted]", "{key} = {field}");
                }
                assert_no_secret_field(field);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(assert_no_secret_field),
        _ => {}
    }
}

#[test]
fn mutated_samples_never_panic_and_always_route_to_legal_topics() {
    let mut config = Config::default();
    config.auth.tokens = vec!["mutation-token-0123456789".into()];
    config.auth.signature_secrets = vec!["mutation-secret-0123456789".into()];
    let pipeline = Pipeline::new(&config);
    let auth = Authenticator::new(&config.auth);
    let samples: Vec<Vec<u8>> = ["samples/v1", "samples/v2"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).unwrap())
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    let mut rng = Rng(0x5eed_f00d_dead_beef);
    let (mut accepted, mut redacted) = (0, 0);
    for _ in 0..20_000 {
        let seed = rng.below(samples.len());
        let body = mutate(&mut rng, &samples[seed]);
        let mut headers = HeaderMap::new();
        if rng.below(3) == 0 {
            let value = mutate(&mut rng, b"lead_signup");
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.insert("x-event-type", value);
            }
        }
        if rng.below(3) == 0 {
            let value = mutate(&mut rng, b"Bearer mutation-token-0123456789");
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.insert("authorization", value);
            }
        }
        let _ = auth.check(&headers, None, &body);
        if let Ok(prepared) = pipeline.prepare(&headers, Bytes::from(body), &Received::now()) {
            accepted += 1;
            assert!(
                is_valid_topic(&prepared.record.topic),
                "{:?}",
                prepared.record.topic
            );
            // Every payload, not only redacted ones: a redaction that silently missed a
            // secret publishes the original bytes with redacted == 0.
            let value: serde_json::Value =
                serde_json::from_slice(&prepared.record.payload).unwrap();
            assert_no_secret_field(&value);
            if prepared.redacted > 0 {
                redacted += 1;
            }
        }
    }
    // The mutations must exercise both outcomes, or this test proves nothing.
    assert!(accepted > 500 && accepted < 19_000, "accepted {accepted}");
    assert!(redacted > 100, "redacted {redacted}");
}
