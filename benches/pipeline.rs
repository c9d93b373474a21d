//! Micro-benchmarks of the request-to-record path: parse + redact + route + build the Kafka
//! record, per v1 event type and for v2 events; and redaction when it matches and when not.

use std::path::Path;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fp_relay::config::Config;
use fp_relay::kafka::record::Received;
use fp_relay::pipeline::Pipeline;
use http::HeaderMap;

fn sample(name: &str) -> Bytes {
    Bytes::from(
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("samples")
                .join(name),
        )
        .unwrap(),
    )
}

fn prepare(c: &mut Criterion) {
    let pipeline = Pipeline::new(&Config::default());
    let headers = HeaderMap::new();
    let received = Received::now();
    let mut group = c.benchmark_group("prepare");
    for name in [
        "v1/lead_signup",
        "v1/lead_becomes_referral",
        "v1/new_customer",
        "v1/lead_cancelled",
        "v1/promoter_signed_up",
        "v1/promoter_accepted",
        "v1/reward_created",
        "v1/fulfilment_pending",
        "v2/referral.created",
        "v2/commission.updated",
    ] {
        let body = sample(&format!("{name}.json"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                pipeline
                    .prepare(&headers, black_box(body.clone()), &received)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn redaction(c: &mut Criterion) {
    let received = Received::now();
    let headers = HeaderMap::new();
    // The same body with and without secrets to find, and with redaction off.
    let with_secrets = sample("v1/promoter_accepted.json");
    let mut clean: serde_json::Value = serde_json::from_slice(&with_secrets).unwrap();
    clean["data"]["promoter"]
        .as_object_mut()
        .unwrap()
        .remove("auth_token");
    let clean = Bytes::from(serde_json::to_vec(&clean).unwrap());
    let on = Pipeline::new(&Config::default());
    let mut off_config = Config::default();
    off_config.redact.fields.clear();
    let off = Pipeline::new(&off_config);
    let mut group = c.benchmark_group("redaction");
    group.bench_function("matches_reserialised", |b| {
        b.iter(|| {
            assert_eq!(
                on.prepare(&headers, black_box(with_secrets.clone()), &received)
                    .unwrap()
                    .redacted,
                1
            )
        })
    });
    group.bench_function("no_match_bytes_untouched", |b| {
        b.iter(|| {
            assert_eq!(
                on.prepare(&headers, black_box(clean.clone()), &received)
                    .unwrap()
                    .redacted,
                0
            )
        })
    });
    group.bench_function("off", |b| {
        b.iter(|| {
            off.prepare(&headers, black_box(with_secrets.clone()), &received)
                .unwrap()
        })
    });
    group.finish();
}

/// The dedup key every standard event gets when dedup is on (#40: the id with a digest of the
/// type and the JSON, whitespace between tokens left out), against the prepare it follows.
fn dedup_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup_key");
    for name in ["v1/lead_signup", "v2/referral.created"] {
        let body = sample(&format!("{name}.json"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                fp_relay::dedup::key_of_event("v1", "22736304", "lead_signup", black_box(&body))
            })
        });
    }
    // The load benchmark's 3 KB payload size.
    let padded = Bytes::from(format!(
        r#"{{"event":{{"id":1,"type":"lead_signup"}},"data":{{"id":1,"note":"{}"}}}}"#,
        "x".repeat(3000)
    ));
    group.throughput(Throughput::Bytes(padded.len() as u64));
    group.bench_function("3KB", |b| {
        b.iter(|| fp_relay::dedup::key_of_event("v1", "1", "lead_signup", black_box(&padded)))
    });
    group.finish();
}

criterion_group!(benches, prepare, redaction, dedup_key);
criterion_main!(benches);
