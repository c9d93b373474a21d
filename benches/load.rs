//! The load benchmark: the release relay against a real tansu broker on loopback, with both
//! ceilings measured in the same run so the ratios hold on a noisy machine.
//!
//! - HTTP ceiling: the same load generator against a minimal hyper server answering 200.
//! - Kafka ceiling: the best of an rdkafka producer (acks=all, idempotent) at linger.ms 0, 1, 5
//!   sending the same payloads at the same concurrency, awaiting each delivery.
//! - Bare relays (hyper + rdkafka, nothing else): one with fp-relay's own producer settings,
//!   the limit the targets are computed against, one at the best linger of the level.
//! - The relay at several concurrency levels, side by side with the bare relays at each, with
//!   CPU per request from /proc; and at linger.ms 1 and 5 for the producer-defaults sweep.
//! - Fulfilment: round trips against an auto-responder, and 10,000 held requests with the
//!   relay's peak RSS.
//! - Open model: a constant arrival rate at 50% and 80% of the best bare relay's maximum, latency
//!   from when each request was due (fp-relay and both bare relays).
//! - Duplicate suppression: v2 events with an id each at c=64, dedup off, per process, shared.
//! - Start-up: process start to `/readyz` = 200.
//!
//! Run it with `benches/load.sh` (builds the release binary, fetches tansu, writes
//! benches/RESULTS.md). `--quick` is the short smoke run CI uses; `--only <parts>` (http, kafka,
//! bare-same, bare-best, peer, relay, relay-linger, open, dedup, fulfilment, holds, startup),
//! `--levels`, `--lingers` and `--thresholds` (fp-relay at other `linger.ms` /
//! `kafka.batch_above_in_flight`) and `--duration` run a part, for profiling.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{free_port, manifest, relay_bin, runtime, serve_forever};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// One measured run.
#[derive(Clone)]
struct Stats {
    requests: u64,
    errors: u64,
    seconds: f64,
    latency: Histogram<u64>,
    /// CPU seconds the measured process used per request, when known.
    cpu_per_request: Option<f64>,
}

impl Stats {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

struct Options {
    /// Parts to run (`--only bare-same,relay`); all when empty.
    only: Vec<String>,
    quick: bool,
    duration: Duration,
    levels: Vec<usize>,
    holds: usize,
    out: Option<PathBuf>,
    /// `linger.ms` values fp-relay is also run at (`--lingers 0.1,0.5`; 1 and 5 by default).
    lingers: Vec<String>,
    /// `kafka.batch_above_in_flight` values fp-relay is also run at (`--thresholds 2,16`).
    thresholds: Vec<String>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    Options {
        only: value("--only")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        quick,
        duration: Duration::from_secs_f64(
            value("--duration").map_or(if quick { 2.0 } else { 10.0 }, |v| v.parse().unwrap()),
        ),
        levels: match value("--levels") {
            Some(levels) => levels.split(',').map(|l| l.parse().unwrap()).collect(),
            None if quick => vec![1, 16],
            None => vec![1, 16, 64, 256],
        },
        holds: if quick { 1_000 } else { 10_000 },
        out: value("--out").map(PathBuf::from),
        lingers: value("--lingers").map_or_else(
            || vec!["1".to_owned(), "5".to_owned()],
            |v| v.split(',').map(str::to_owned).collect(),
        ),
        thresholds: value("--thresholds")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

impl Options {
    /// Whether part `name` runs: http, kafka, bare-same, bare-best, peer, relay, relay-linger,
    /// fulfilment, holds, startup.
    fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(port) = args
        .iter()
        .position(|a| a == "--baseline-server")
        .map(|i| args[i + 1].parse::<u16>().unwrap())
    {
        return baseline_server(port);
    }
    if let Some(i) = args.iter().position(|a| a == "--bare-relay") {
        let (port, bootstrap, linger) = (&args[i + 1], &args[i + 2], &args[i + 3]);
        let producer = match linger.as_str() {
            "same" => same_settings_producer(bootstrap),
            linger => producer(bootstrap, linger.parse().unwrap()),
        };
        return bare_relay(port.parse().unwrap(), producer);
    }
    if let Some(i) = args.iter().position(|a| a == "--holds-only") {
        // Only the held-requests measurement, for working on memory: `--holds-only N`.
        let count: usize = args[i + 1].parse().unwrap();
        return runtime().block_on(async {
            let broker = Process::tansu();
            let bootstrap = format!("127.0.0.1:{}", broker.port);
            let body =
                Bytes::from(std::fs::read(manifest("samples/v1/fulfilment_pending.json")).unwrap());
            let holds = held_requests(&bootstrap, body, count).await;
            println!(
                "holds: {} held, peak RSS {} KiB, idle {} KiB, {:.1} KiB per hold; at 8 s {}",
                holds.held,
                holds.peak_kib,
                holds.idle_kib,
                holds.peak_kib.saturating_sub(holds.idle_kib) as f64 / holds.held.max(1) as f64,
                holds.rss_at_8s
            );
        });
    }
    if args.iter().any(|a| a == "--spool-only") {
        // The spool side by side with another build: `FP_RELAY_BIN=... --spool-only`.
        return runtime().block_on(spool_rates());
    }
    if !args.iter().any(|a| a == "--quick" || a == "--full") {
        // `cargo bench` and `cargo test --all-targets` run every bench binary; this one starts
        // brokers and servers for minutes, so it runs only when asked (benches/load.sh).
        eprintln!("load: skipped (run benches/load.sh, or cargo bench --bench load -- --full)");
        return;
    }
    let options = options();
    let report = runtime().block_on(run(&options));
    println!("{report}");
    if let Some(out) = &options.out {
        std::fs::write(out, &report).unwrap();
        eprintln!("load: wrote {}", out.display());
    }
}

async fn run(options: &Options) -> String {
    let broker = Process::tansu();
    let bootstrap = format!("127.0.0.1:{}", broker.port);
    let body = Bytes::from(std::fs::read(manifest("samples/v1/reward_created.json")).unwrap());
    let fulfilment_body =
        Bytes::from(std::fs::read(manifest("samples/v1/fulfilment_pending.json")).unwrap());
    let mut rows = Vec::new();

    // The HTTP ceiling.
    if options.runs("http") {
        let port = free_port();
        let baseline = Process::spawn(
            Command::new(std::env::current_exe().unwrap())
                .args(["--baseline-server", &port.to_string()]),
            port,
            None,
        );
        let baseline_addr = baseline.addr();
        wait_for(|| async { http_get(baseline_addr, "/").await == Some(200) }).await;
        sweep(
            &mut rows,
            "http ceiling",
            &baseline,
            "/",
            &body,
            options,
            &options.levels,
        )
        .await;
    }

    // The Kafka ceiling: the best a bare producer does at each concurrency, over LINGERS
    // (never the relay's own settings: a ceiling that moves with the relay hides its choices).
    let mut best_linger = std::collections::HashMap::new();
    for &c in &options.levels {
        if !options.runs("kafka") && !options.runs("bare-best") {
            break;
        }
        let mut best: Option<(u32, Stats)> = None;
        for linger in LINGERS {
            let producer = producer(&bootstrap, linger);
            let stats = producer_load(&producer, body.clone(), c, options.duration).await;
            eprintln!(
                "producer c={c} linger.ms={linger}: {:.0} msg/s p99 {:.2} ms",
                stats.rps(),
                stats.ms(0.99)
            );
            if best.as_ref().is_none_or(|(_, b)| stats.rps() > b.rps()) {
                best = Some((linger, stats));
            }
        }
        let (linger, stats) = best.unwrap();
        best_linger.insert(c, linger);
        rows.push((KAFKA, c, stats));
    }

    // The peer: the receiver a team would write by hand (../shared/peer), when Python can
    // install its two packages (benches/ensure-peer.sh sets PEER_PYTHON).
    let peer_script = manifest("../shared/peer/peer_receiver.py");
    match std::env::var("PEER_PYTHON") {
        Ok(python) if peer_script.exists() && options.runs("peer") => {
            let (port, admin) = (free_port(), free_port());
            let peer = Process::spawn(
                Command::new(python).arg(&peer_script).args([
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--admin-listen",
                    &format!("127.0.0.1:{admin}"),
                    "--brokers",
                    &bootstrap,
                    "--insecure-no-auth",
                ]),
                port,
                Some(admin),
            );
            wait_ready(peer.admin()).await;
            let path = "/webhooks/firstpromoter";
            sweep(
                &mut rows,
                PEER,
                &peer,
                path,
                &body,
                options,
                &options.levels,
            )
            .await;
        }
        _ => eprintln!(
            "peer: not measured (PEER_PYTHON unset, ../shared/peer missing, or not asked)"
        ),
    }

    // The relay and the bare relays, level by level and side by side (the broker keeps every
    // record in memory, so measurements far apart in the run would meet a different broker):
    // at each level the same-settings bare relay, fp-relay, then the best-linger bare relay.
    // Bare relays are hyper + rdkafka, each produce awaited, nothing else (no parsing, auth,
    // metrics): one with fp-relay's own producer settings (the ceiling every target is
    // computed against), one at the best linger.ms of the level (what a smarter default could
    // win).
    let path = "/webhooks/firstpromoter";
    let relay = if options.runs("relay") || options.runs("fulfilment") {
        let relay = Process::relay(&bootstrap, None, &[]);
        wait_ready(relay.admin()).await;
        Some(relay)
    } else {
        None
    };
    for &c in &options.levels {
        for (name, part) in [
            (BARE_SAME, "bare-same"),
            (RELAY, "relay"),
            (BARE_BEST, "bare-best"),
        ] {
            if !options.runs(part) {
                continue;
            }
            if name == RELAY {
                let relay = relay.as_ref().expect("started above");
                let before = writes(relay.admin()).await;
                sweep(&mut rows, RELAY, relay, path, &body, options, &[c]).await;
                report_writes(c, before, writes(relay.admin()).await);
                continue;
            }
            let linger = match name {
                BARE_SAME => "same".to_owned(),
                _ => best_linger[&c].to_string(),
            };
            let bare = bare_relay_process(&bootstrap, &linger, &body).await;
            sweep(&mut rows, name, &bare, "/", &body, options, &[c]).await;
        }
    }
    // The open model: requests arrive at a constant rate whatever the answers do (latency from
    // when each was due, so a stall counts for every request it delays), at 50% and 80% of the
    // best a bare relay did in the closed runs above.
    if let (Some(relay), true) = (&relay, options.runs("open") && !options.quick) {
        let bare_max = rows
            .iter()
            .filter(|(name, _, _)| *name == BARE_SAME || *name == BARE_BEST)
            .map(|(_, _, stats)| stats.rps())
            .fold(0.0, f64::max);
        let linger = best_linger.get(&64).map_or("1".to_owned(), u32::to_string);
        for percent in OPEN_PERCENTS {
            let rate = bare_max * f64::from(percent) / 100.0;
            for name in [OPEN_BARE_SAME, OPEN_RELAY, OPEN_BARE_BEST] {
                let (target, path, _bare) = match name {
                    OPEN_RELAY => (relay.addr(), path, None),
                    _ => {
                        let linger = if name == OPEN_BARE_SAME {
                            "same"
                        } else {
                            &linger
                        };
                        let bare = bare_relay_process(&bootstrap, linger, &body).await;
                        (bare.addr(), "/", Some(bare))
                    }
                };
                let pid = match &_bare {
                    Some(bare) => bare.pid(),
                    None => relay.pid(),
                };
                let stats = open_load(
                    target,
                    path,
                    body.clone(),
                    rate,
                    options.duration,
                    Some(pid),
                )
                .await;
                eprintln!(
                    "{name} at {percent}% ({rate:.0} req/s): {:.0} req/s p50 {:.2} p99 {:.2} p99.9 {:.2} ms errors {}",
                    stats.rps(),
                    stats.ms(0.5),
                    stats.ms(0.99),
                    stats.ms(0.999),
                    stats.errors
                );
                rows.push((name, percent as usize, stats));
            }
        }
    }
    let mut round_trip = None;
    if let (Some(relay), true) = (&relay, options.runs("fulfilment")) {
        round_trip =
            Some(fulfilment_round_trip(relay, &bootstrap, &fulfilment_body, options).await);
    }
    drop(relay);
    for threshold in &options.thresholds {
        let relay = Process::relay(
            &bootstrap,
            None,
            &[("FP_RELAY_KAFKA_BATCH_ABOVE_IN_FLIGHT", threshold)],
        );
        wait_ready(relay.admin()).await;
        let name = Box::leak(format!("relay, batch above {threshold}").into_boxed_str());
        for &c in &options.levels {
            let before = writes(relay.admin()).await;
            sweep(&mut rows, name, &relay, path, &body, options, &[c]).await;
            report_writes(c, before, writes(relay.admin()).await);
        }
    }
    if options.runs("relay-linger") {
        for linger in &options.lingers {
            let table = format!("{{ \"linger.ms\" = \"{linger}\" }}");
            let relay = Process::relay(
                &bootstrap,
                None,
                &[("FP_RELAY_KAFKA_PRODUCER_PROPERTIES", &table)],
            );
            wait_ready(relay.admin()).await;
            let name: &'static str = match linger.as_str() {
                "1" => RELAY_LINGER_1,
                "5" => RELAY_LINGER_5,
                other => Box::leak(format!("relay, linger.ms {other}").into_boxed_str()),
            };
            sweep(
                &mut rows,
                name,
                &relay,
                path,
                &body,
                options,
                &options.levels,
            )
            .await;
        }
    }

    // The cost of duplicate suppression at c=64: v2 events, each with its own id, to a relay
    // with dedup off, per process, and shared through a dedup topic.
    if options.runs("dedup") && !options.quick {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let v2 = std::fs::read_to_string(manifest("samples/v2/referral.created.json")).unwrap();
        let v2 = Bytes::from(v2.replace(
            "  \"event_id\": \"1b6e8f0a-4f0e-4a53-9d5a-2f9f5d0c1a02\",\n",
            "",
        ));
        // The dedup topic exists before the relay reads it (a record it ignores: not a mark).
        let seed = producer(&bootstrap, 0);
        seed.send(
            FutureRecord::<str, str>::to("firstpromoter.dedup")
                .key("seed")
                .payload(""),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        for (name, enabled, topic) in [
            (DEDUP_OFF, "false", ""),
            (DEDUP_LOCAL, "true", ""),
            (DEDUP_SHARED, "true", "firstpromoter.dedup"),
        ] {
            let relay = Process::relay(
                &bootstrap,
                None,
                &[
                    ("FP_RELAY_DEDUP_ENABLED", enabled),
                    ("FP_RELAY_DEDUP_TOPIC", topic),
                ],
            );
            wait_ready(relay.admin()).await;
            let stats = http_load(
                relay.addr(),
                path,
                v2.clone(),
                64,
                options.duration,
                Some(relay.pid()),
                Some(&IDS),
            )
            .await;
            eprintln!(
                "{name} c=64: {:.0} req/s p99 {:.2} ms errors {}",
                stats.rps(),
                stats.ms(0.99),
                stats.errors
            );
            rows.push((name, 64, stats));
        }
    }

    // Held requests: a fresh relay so its peak RSS is this test's alone; nobody answers.
    let holds = if options.runs("holds") {
        let holds = held_requests(&bootstrap, fulfilment_body.clone(), options.holds).await;
        eprintln!(
            "holds: {} held, peak RSS {} KiB (idle {} KiB)",
            holds.held, holds.peak_kib, holds.idle_kib
        );
        Some(holds)
    } else {
        None
    };

    // Start-up to ready, against the running broker.
    let mut startup_ms = None;
    if options.runs("startup") {
        let mut startups = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let relay = Process::relay(&bootstrap, None, &[]);
            wait_ready(relay.admin()).await;
            startups.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        startups.sort_by(f64::total_cmp);
        eprintln!("start-up to ready: {:.0} ms (median of 3)", startups[1]);
        startup_ms = Some(startups[1]);
    }

    report(
        options,
        &rows,
        round_trip.as_ref(),
        holds.as_ref(),
        startup_ms,
    )
}

/// The spool during an outage, for the binary `relay_bin()` names (so two builds can be
/// compared in one run): fsynced `202`s per second at c=64 with the broker frozen (3 KB
/// events), the drain rate once it thaws, and start-up on a 200 MB spool (100,000 events of 2
/// KB, spooled by the same binary, which is then killed): time from process start until the
/// relay reports every record, and its peak RSS.
async fn spool_rates() {
    let signal = |process: &Process, signal| {
        // SAFETY: kill(2) on a child's pid; no memory is touched.
        unsafe { libc::kill(process.pid() as i32, signal) };
    };
    let event = |id: u64, pad: usize| {
        Bytes::from(format!(
            r#"{{"event":{{"id":{id},"type":"lead_signup"}},"data":{{"id":{id},"pad":"{}"}}}}"#,
            "x".repeat(pad)
        ))
    };
    let path = "/webhooks/firstpromoter";
    let bin = relay_bin();
    eprintln!("spool: {}", bin.display());

    let broker = Process::tansu();
    let bootstrap = format!("127.0.0.1:{}", broker.port);
    let dir = std::env::temp_dir().join(format!("fp-relay-spool-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_text = dir.display().to_string();
    let env = [
        ("FP_RELAY_SPOOL_ENABLED", "true"),
        ("FP_RELAY_SPOOL_DIR", dir_text.as_str()),
        ("FP_RELAY_SPOOL_HANDOFF_AFTER", "100ms"),
        ("FP_RELAY_FULFILMENT_ENABLED", "false"),
        ("FP_RELAY_HTTP_MAX_CONNECTIONS_PER_SOURCE", "1000"),
    ];
    let relay = Process::relay(&bootstrap, None, &env);
    wait_ready(relay.admin()).await;
    // Warm: topic created and producer connected before the outage.
    http_post(relay.addr(), path, event(0, 10)).await;
    signal(&broker, libc::SIGSTOP);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let until = Instant::now() + Duration::from_secs(10);
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (addr, next) = (relay.addr(), next.clone());
            tokio::spawn(async move {
                let mut sender = connect(addr).await.unwrap();
                let mut spooled = 0u64;
                while Instant::now() < until {
                    let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let request = http::Request::post(path)
                        .header("content-type", "application/json")
                        .body(Full::new(event(id, 3000)))
                        .unwrap();
                    match sender.send_request(request).await {
                        Ok(response) if response.status() == 202 => spooled += 1,
                        Ok(_) => {}
                        Err(_) => sender = connect(addr).await.unwrap(),
                    }
                }
                spooled
            })
        })
        .collect();
    let started = Instant::now();
    let mut spooled = 0;
    for worker in workers {
        spooled += worker.await.unwrap();
    }
    let spooling = spooled as f64 / started.elapsed().as_secs_f64();
    let (immediate, batching) = writes(relay.admin()).await;
    eprintln!("spool: {immediate} + {batching} Kafka writes during the outage");
    let backlog = metric(relay.admin(), "fp_relay_spool_records").await;
    let thawed = Instant::now();
    signal(&broker, libc::SIGCONT);
    let admin = relay.admin();
    wait_for_within(Duration::from_secs(600), || async move {
        metric(admin, "fp_relay_spool_records").await == 0.0
    })
    .await;
    let drain = backlog / thawed.elapsed().as_secs_f64();
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);

    // A 200 MB spool, written by this binary.
    let relay = Process::relay(&bootstrap, None, &env);
    wait_ready(relay.admin()).await;
    http_post(relay.addr(), path, event(0, 10)).await;
    signal(&broker, libc::SIGSTOP);
    const RECORDS: u64 = 100_000;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (addr, next) = (relay.addr(), next.clone());
            tokio::spawn(async move {
                let mut sender = connect(addr).await.unwrap();
                loop {
                    let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if id > RECORDS {
                        return;
                    }
                    let request = http::Request::post(path)
                        .header("content-type", "application/json")
                        .body(Full::new(event(id, 2000)))
                        .unwrap();
                    if sender.send_request(request).await.is_err() {
                        sender = connect(addr).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let held = metric(relay.admin(), "fp_relay_spool_records").await;
    drop(relay); // kill -9
    let bytes: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let started = Instant::now();
    let relay = Process::relay(&bootstrap, None, &env);
    let admin = relay.admin();
    wait_for_within(Duration::from_secs(600), || async move {
        metric(admin, "fp_relay_spool_records").await >= held
    })
    .await;
    let startup = started.elapsed();
    let peak = relay.peak_rss_kib();
    drop(relay);
    signal(&broker, libc::SIGCONT);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "spool: {spooling:.0} spooled/s at c=64 (3 KB, fsynced 202s), drain {drain:.0} records/s ({backlog:.0} records), start-up on {:.0} MB ({held:.0} records) {:.0} ms, peak RSS {:.1} MiB",
        bytes as f64 / 1e6,
        startup.as_secs_f64() * 1000.0,
        peak as f64 / 1024.0
    );
}

/// Fulfilment round trips at c=64 against an auto-responder (`fp-relay respond`), with the
/// relay's CPU per request.
async fn fulfilment_round_trip(
    relay: &Process,
    bootstrap: &str,
    body: &Bytes,
    options: &Options,
) -> Stats {
    let responder = Process::spawn(
        Command::new(relay_bin()).args([
            "respond",
            "--brokers",
            bootstrap,
            "--outcome",
            "fulfilled",
            "--group",
            "bench",
        ]),
        0,
        None,
    );
    // Let the responder join its group before measuring.
    wait_for(|| {
        let (addr, body) = (relay.addr(), body.clone());
        async move { http_post(addr, "/webhooks/firstpromoter", body).await == Some(200) }
    })
    .await;
    let stats = http_load(
        relay.addr(),
        "/webhooks/firstpromoter",
        body.clone(),
        64,
        options.duration,
        Some(relay.pid()),
        None,
    )
    .await;
    eprintln!(
        "fulfilment c=64: {:.0} req/s p99 {:.2} ms errors {}",
        stats.rps(),
        stats.ms(0.99),
        stats.errors
    );
    drop(responder);
    stats
}

/// Held-request memory and start-up before this work (benches/RESULTS.md of 2026-11-23):
/// the no-regression bounds.
const HOLD_KIB_TARGET: f64 = 19.0;
const STARTUP_MS_BEFORE: f64 = 67.0;

fn report(
    options: &Options,
    rows: &[(&str, usize, Stats)],
    round_trip: Option<&Stats>,
    holds: Option<&Holds>,
    startup_ms: Option<f64>,
) -> String {
    let find = |name: &str, c: usize| {
        rows.iter()
            .find(|(n, level, _)| *n == name && *level == c)
            .map(|(_, _, s)| s)
    };
    let headline = *options
        .levels
        .iter()
        .find(|c| **c == 64)
        .unwrap_or(options.levels.last().unwrap());
    let mut out = String::new();
    out.push_str("# fp-relay load benchmark\n\n");
    out.push_str(&format!(
        "Generated by `benches/load.sh{}` on {} ({} cores, {}). Each level ran {:.0} s; relay, broker, \
         baselines and load generator share the machine over loopback. Payload: `samples/v1/reward_created.json` \
         ({} bytes, realistic, with a promoter secret to redact). fp-relay runs with its default \
         configuration. *Same-settings bare relay*: hyper + rdkafka with fp-relay's own producer \
         settings (`fp_relay::kafka::producer_config` on the default `[kafka]`), nothing else; \
         *best-linger bare relay*: the same at the `linger.ms` (0, 1 or 5) a bare producer did best \
         with at that concurrency.\n\n",
        if options.quick { " --quick" } else { "" },
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        options.duration.as_secs_f64(),
        std::fs::metadata(manifest("samples/v1/reward_created.json")).map_or(0, |m| m.len()),
    ));
    out.push_str("## Targets\n\n| target | measured | goal | met |\n|---|---|---|---|\n");
    let mut goal = |name: String, measured: String, goal: String, met: bool| {
        out.push_str(&format!(
            "| {name} | {measured} | {goal} | {} |\n",
            if met { "yes" } else { "**no**" }
        ));
    };
    let ratio = |a: &Stats, b: &Stats| {
        format!(
            "{:.2}x ({:.0} / {:.0} req/s)",
            a.rps() / b.rps(),
            a.rps(),
            b.rps()
        )
    };
    for &c in &options.levels {
        let Some(relay) = find(RELAY, c) else {
            continue;
        };
        if let Some(bare) = find(BARE_SAME, c) {
            // Low load must not pay for batching; under load the best linger is the bar.
            let floor = if c < 64 { 0.95 } else { 0.9 };
            goal(
                format!("fp-relay / same-settings bare relay, c={c}"),
                ratio(relay, bare),
                format!("≥ {floor}x"),
                relay.rps() / bare.rps() >= floor,
            );
            goal(
                format!("fp-relay p99 / same-settings bare relay p99, c={c}"),
                format!(
                    "{:.2}x ({:.2} vs {:.2} ms)",
                    relay.ms(0.99) / bare.ms(0.99),
                    relay.ms(0.99),
                    bare.ms(0.99)
                ),
                "≤ 1.5x".into(),
                relay.ms(0.99) <= 1.5 * bare.ms(0.99),
            );
        }
        if let Some(best) = find(BARE_BEST, c) {
            let floor = if c < 64 { 0.85 } else { 0.9 };
            goal(
                format!("fp-relay / best-linger bare relay, c={c}"),
                ratio(relay, best),
                format!("≥ {floor}x"),
                relay.rps() / best.rps() >= floor,
            );
        }
        if let Some(peer) = find(PEER, c) {
            let (goal_text, met) = if c >= 64 {
                ("≥ 3x".to_owned(), relay.rps() / peer.rps() >= 3.0)
            } else {
                ("(reported)".to_owned(), true)
            };
            goal(
                format!("fp-relay / peer, c={c}"),
                ratio(relay, peer),
                goal_text,
                met,
            );
        }
    }
    for (bare_name, label, limit) in [
        (BARE_SAME, "same-settings", 1.3),
        (BARE_BEST, "best-linger", 1.5),
    ] {
        if let (Some(relay), Some(bare)) = (find(RELAY, headline), find(bare_name, headline)) {
            let (ours, theirs) = (
                relay.cpu_per_request.unwrap_or(f64::MAX) * 1e6,
                bare.cpu_per_request.unwrap_or(f64::MAX) * 1e6,
            );
            goal(
                format!("fp-relay CPU per request / {label} bare relay's, c={headline}"),
                format!("{:.2}x ({ours:.0} vs {theirs:.0} µs)", ours / theirs),
                format!("≤ {limit}x"),
                ours <= limit * theirs,
            );
        }
    }
    for percent in OPEN_PERCENTS {
        let level = percent as usize;
        if let (Some(relay), Some(bare)) = (find(OPEN_RELAY, level), find(OPEN_BARE_SAME, level)) {
            let (goal_text, met) = if percent == 80 {
                ("≤ 1.5x".to_owned(), relay.ms(0.99) <= 1.5 * bare.ms(0.99))
            } else {
                ("(reported)".to_owned(), true)
            };
            goal(
                format!("open model at {percent}% of the bare maximum: fp-relay p99 / same-settings bare relay's"),
                format!(
                    "{:.2}x ({:.2} vs {:.2} ms)",
                    relay.ms(0.99) / bare.ms(0.99),
                    relay.ms(0.99),
                    bare.ms(0.99)
                ),
                goal_text,
                met,
            );
        }
    }
    if let Some(holds) = holds {
        let per_hold =
            holds.peak_kib.saturating_sub(holds.idle_kib) as f64 / holds.held.max(1) as f64;
        goal(
            format!("memory per held fulfilment request ({} held)", holds.held),
            format!(
                "{per_hold:.1} KiB (peak {:.1} MiB, idle {:.1} MiB)",
                holds.peak_kib as f64 / 1024.0,
                holds.idle_kib as f64 / 1024.0
            ),
            format!("≤ {HOLD_KIB_TARGET} KiB"),
            per_hold <= HOLD_KIB_TARGET && holds.held == options.holds,
        );
    }
    if let Some(trip) = round_trip {
        let standard = find(RELAY, 64)
            .map(|s| {
                format!(
                    "; standard events at c=64: {:.0} req/s, p99 {:.2} ms",
                    s.rps(),
                    s.ms(0.99)
                )
            })
            .unwrap_or_default();
        goal(
            "fulfilment round trip, c=64".into(),
            format!(
                "{:.0} req/s, p99 {:.2} ms, {:.0} µs CPU per request{standard}",
                trip.rps(),
                trip.ms(0.99),
                trip.cpu_per_request.unwrap_or(0.0) * 1e6
            ),
            "(reported)".into(),
            trip.errors == 0,
        );
    }
    if let (Some(off), Some(local), Some(shared)) = (
        find(DEDUP_OFF, 64),
        find(DEDUP_LOCAL, 64),
        find(DEDUP_SHARED, 64),
    ) {
        let cpu = |s: &Stats| s.cpu_per_request.unwrap_or(0.0) * 1e6;
        goal(
            "duplicate suppression at c=64 (v2, an id per request): off / per process / shared"
                .into(),
            format!(
                "{:.0} / {:.0} / {:.0} req/s; {:.0} / {:.0} / {:.0} µs CPU per request",
                off.rps(),
                local.rps(),
                shared.rps(),
                cpu(off),
                cpu(local),
                cpu(shared)
            ),
            "(reported)".into(),
            off.errors + local.errors + shared.errors == 0,
        );
    }
    if let Some(startup_ms) = startup_ms {
        goal(
            "start-up to /readyz 200".into(),
            format!("{startup_ms:.0} ms"),
            format!("≤ {STARTUP_MS_BEFORE} ms + 10% (no regression)"),
            startup_ms <= STARTUP_MS_BEFORE * 1.1,
        );
    }
    out.push_str("\n## Every level\n\n| target | concurrency | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU µs/req |\n|---|---|---|---|---|---|---|---|\n");
    let trip_row = round_trip.map(|s| ("fulfilment round trip", 64, s.clone()));
    let open = |name: &str| name.starts_with("open model");
    for (name, c, s) in rows.iter().filter(|r| !open(r.0)).chain(trip_row.iter()) {
        out.push_str(&format!(
            "| {name} | {c} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
            s.rps(),
            s.ms(0.5),
            s.ms(0.99),
            s.ms(0.999),
            s.errors,
            s.cpu_per_request
                .map_or("–".into(), |c| format!("{:.0}", c * 1e6)),
        ));
    }
    if rows.iter().any(|r| open(r.0)) {
        out.push_str("\n## Open model (constant arrival rate, latency from when each request was due)\n\n| target | rate, % of bare max | offered req/s | done req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU µs/req |\n|---|---|---|---|---|---|---|---|---|\n");
        let bare_max = rows
            .iter()
            .filter(|(name, _, _)| *name == BARE_SAME || *name == BARE_BEST)
            .map(|(_, _, stats)| stats.rps())
            .fold(0.0, f64::max);
        for (name, percent, s) in rows.iter().filter(|r| open(r.0)) {
            out.push_str(&format!(
                "| {} | {percent}% | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
                name.trim_start_matches("open model: "),
                bare_max * *percent as f64 / 100.0,
                s.rps(),
                s.ms(0.5),
                s.ms(0.99),
                s.ms(0.999),
                s.errors,
                s.cpu_per_request
                    .map_or("–".into(), |c| format!("{:.0}", c * 1e6)),
            ));
        }
    }
    out
}

/// Row names.
const KAFKA: &str = "kafka ceiling (best linger)";
const BARE_SAME: &str = "bare relay, same settings";
const BARE_BEST: &str = "bare relay, best linger";
const RELAY: &str = "relay";
const RELAY_LINGER_1: &str = "relay, linger.ms 1";
const DEDUP_OFF: &str = "relay, v2, dedup off";
const DEDUP_LOCAL: &str = "relay, v2, dedup per process";
const DEDUP_SHARED: &str = "relay, v2, dedup shared (dedup.topic)";
const OPEN_BARE_SAME: &str = "open model: bare relay, same settings";
const OPEN_RELAY: &str = "open model: relay";
const OPEN_BARE_BEST: &str = "open model: bare relay, linger.ms of c=64";
/// Arrival rates of the open model, in percent of the best bare relay's closed-loop maximum.
const OPEN_PERCENTS: [u32; 2] = [50, 80];
const RELAY_LINGER_5: &str = "relay, linger.ms 5";

/// The peer receiver's row name.
const PEER: &str = "peer (aiohttp + confluent-kafka)";

/// Loads `target` at each of `levels` for `options.duration`; logs and records each result.
async fn sweep(
    rows: &mut Vec<(&'static str, usize, Stats)>,
    name: &'static str,
    target: &Process,
    path: &str,
    body: &Bytes,
    options: &Options,
    levels: &[usize],
) {
    for &c in levels {
        let pid = Some(target.pid());
        let stats = http_load(
            target.addr(),
            path,
            body.clone(),
            c,
            options.duration,
            pid,
            None,
        )
        .await;
        eprintln!(
            "{name} c={c}: {:.0} req/s p99 {:.2} ms errors {}",
            stats.rps(),
            stats.ms(0.99),
            stats.errors
        );
        rows.push((name, c, stats));
    }
}

/// Drives `concurrency` keep-alive connections posting `body` for `duration`.
async fn http_load(
    addr: SocketAddr,
    path: &str,
    body: Bytes,
    concurrency: usize,
    duration: Duration,
    pid: Option<u32>,
    ids: Option<&'static std::sync::atomic::AtomicU64>,
) -> Stats {
    let cpu_before = pid.and_then(cpu_seconds);
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (path, body) = (path.to_owned(), body.clone());
            tokio::spawn(async move {
                let mut tally = Tally::new(addr);
                while Instant::now() < deadline {
                    let id = ids.map(|ids| ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                    if !tally.post(&path, &body, id, None).await {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                tally.into_parts()
            })
        })
        .collect();
    collect(workers, started, pid, cpu_before).await
}

/// One load-generator connection: what it sent and how long each answer took.
struct Tally {
    addr: SocketAddr,
    sender: Option<Sender>,
    latency: Histogram<u64>,
    requests: u64,
    errors: u64,
}

impl Tally {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: None,
            latency: Histogram::new(3).unwrap(),
            requests: 0,
            errors: 0,
        }
    }

    /// POSTs `body` (with `x-event-id: bench-<id>` when given), connecting first if needed,
    /// and records the answer's latency from `due` (when the request was due; sent, if none).
    /// False when no connection could be made.
    async fn post(
        &mut self,
        path: &str,
        body: &Bytes,
        id: Option<u64>,
        due: Option<Instant>,
    ) -> bool {
        if self.sender.is_none() {
            self.sender = connect(self.addr).await;
        }
        let Some(sender) = self.sender.as_mut() else {
            self.errors += 1;
            return false;
        };
        let mut request = http::Request::post(path)
            .header("host", "relay")
            .header("content-type", "application/json");
        if let Some(id) = id {
            request = request.header("x-event-id", format!("bench-{id}"));
        }
        let request = request.body(Full::new(body.clone())).unwrap();
        let from = due.unwrap_or_else(Instant::now);
        match sender.send_request(request).await {
            Ok(response) => {
                let ok = response.status().is_success();
                let _ = response.into_body().collect().await;
                self.latency
                    .record(from.elapsed().as_micros() as u64)
                    .unwrap();
                self.requests += 1;
                self.errors += u64::from(!ok);
            }
            Err(_) => {
                self.errors += 1;
                self.sender = None;
            }
        }
        true
    }

    fn into_parts(self) -> (u64, u64, Histogram<u64>) {
        (self.requests, self.errors, self.latency)
    }
}

async fn collect(
    workers: Vec<tokio::task::JoinHandle<(u64, u64, Histogram<u64>)>>,
    started: Instant,
    pid: Option<u32>,
    cpu_before: Option<f64>,
) -> Stats {
    let mut stats = Stats {
        requests: 0,
        errors: 0,
        seconds: 0.0,
        latency: Histogram::new(3).unwrap(),
        cpu_per_request: None,
    };
    for worker in workers {
        let (requests, errors, latency) = worker.await.unwrap();
        stats.requests += requests;
        stats.errors += errors;
        stats.latency.add(latency).unwrap();
    }
    stats.seconds = started.elapsed().as_secs_f64();
    if let (Some(before), Some(after)) = (cpu_before, pid.and_then(cpu_seconds)) {
        stats.cpu_per_request = Some((after - before) / stats.requests.max(1) as f64);
    }
    stats
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// A bare relay at `linger` ("same": fp-relay's producer settings), answering already.
async fn bare_relay_process(bootstrap: &str, linger: &str, body: &Bytes) -> Process {
    let port = free_port();
    let bare = Process::spawn(
        Command::new(std::env::current_exe().unwrap()).args([
            "--bare-relay",
            &port.to_string(),
            bootstrap,
            linger,
        ]),
        port,
        None,
    );
    let addr = bare.addr();
    wait_for(|| {
        let body = body.clone();
        async move { http_post(addr, "/", body).await == Some(200) }
    })
    .await;
    bare
}

/// Connections the open-model generator sends on (each carries one request at a time).
const OPEN_CONNECTIONS: usize = 512;

/// The open model: one request due every `1 / rate` seconds for `duration`, sent on the first
/// free connection; each latency is measured from when its request was due, so time spent
/// waiting for a free connection (a stalled target) counts (no coordinated omission).
async fn open_load(
    addr: SocketAddr,
    path: &str,
    body: Bytes,
    rate: f64,
    duration: Duration,
    pid: Option<u32>,
) -> Stats {
    let cpu_before = pid.and_then(cpu_seconds);
    let started = Instant::now();
    let (due, tickets) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let tickets = std::sync::Arc::new(tokio::sync::Mutex::new(tickets));
    let interval = Duration::from_secs_f64(1.0 / rate);
    tokio::spawn(async move {
        let mut next = started;
        while next < started + duration {
            tokio::time::sleep_until(next.into()).await;
            // Every request due by now (the timer wakes in whole milliseconds).
            while next <= Instant::now() && next < started + duration {
                if due.send(next).is_err() {
                    return;
                }
                next += interval;
            }
        }
    });
    let workers: Vec<_> = (0..OPEN_CONNECTIONS)
        .map(|_| {
            let (path, body, tickets) = (path.to_owned(), body.clone(), tickets.clone());
            tokio::spawn(async move {
                let mut tally = Tally::new(addr);
                loop {
                    let Some(due) = tickets.lock().await.recv().await else {
                        break;
                    };
                    // Latency from when the request was due, not from when it could be sent.
                    tally.post(&path, &body, None, Some(due)).await;
                }
                tally.into_parts()
            })
        })
        .collect();
    collect(workers, started, pid, cpu_before).await
}

/// The Kafka ceiling: `concurrency` tasks each sending and awaiting one record at a time.
async fn producer_load(
    producer: &FutureProducer,
    body: Bytes,
    concurrency: usize,
    duration: Duration,
) -> Stats {
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (producer, body) = (producer.clone(), body.clone());
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3).unwrap();
                let (mut requests, mut errors) = (0u64, 0u64);
                let key = format!("key-{worker}");
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let record = FutureRecord::to("bench.baseline")
                        .payload(&body[..])
                        .key(&key);
                    match producer.send(record, Duration::from_secs(5)).await {
                        Ok(_) => {
                            latency.record(sent.elapsed().as_micros() as u64).unwrap();
                            requests += 1;
                        }
                        Err(_) => errors += 1,
                    }
                }
                (requests, errors, latency)
            })
        })
        .collect();
    collect(workers, started, None, None).await
}

/// A bare producer with the relay's guarantees (idempotent, acks=all) and `linger_ms`.
fn producer(bootstrap: &str, linger_ms: u32) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("message.timeout.ms", "10000")
        .set("log_level", "3")
        .create()
        .unwrap()
}

/// A producer with exactly fp-relay's default settings ([`fp_relay::kafka::producer_config`]
/// on the default `[kafka]` section): the same-settings bare relay's.
fn same_settings_producer(bootstrap: &str) -> FutureProducer {
    let kafka = fp_relay::config::KafkaConfig {
        brokers: bootstrap.to_owned(),
        ..Default::default()
    };
    let mut config = fp_relay::kafka::producer_config(&kafka, kafka.ack_timeout);
    config.set("log_level", "3");
    config.create().unwrap()
}

/// `linger.ms` values the Kafka ceiling tries at each concurrency (it keeps the best).
const LINGERS: [u32; 3] = [0, 1, 5];

/// A multi-threaded runtime for the benchmark's own clients and servers.
/// What [`held_requests`] measured.
struct Holds {
    held: usize,
    peak_kib: u64,
    idle_kib: u64,
    /// The relay's `VmRSS` line 8 s in, while the requests are held.
    rss_at_8s: String,
}

/// A fresh relay (so its peak RSS is this measurement's alone) holding `count` fulfilment
/// requests nobody answers. Under valgrind --tool=massif (FP_RELAY_BIN pointing at a wrapper)
/// with MASSIF_SNAPSHOT set, a detailed heap snapshot is taken while they are held.
async fn held_requests(bootstrap: &str, body: Bytes, count: usize) -> Holds {
    let relay = Process::relay(bootstrap, Some(count), &[]);
    wait_ready(relay.admin()).await;
    let idle_kib = relay.peak_rss_kib();
    let pid = relay.pid();
    let sampler = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(8));
        if let Some(path) = std::env::var_os("MASSIF_SNAPSHOT") {
            let _ = Command::new("vgdb")
                .arg(format!("--pid={pid}"))
                .arg("detailed_snapshot")
                .arg(path)
                .status();
        }
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap_or("")
            .to_owned()
    });
    let (held, peak_kib) = hold_many(&relay, body, count).await;
    Holds {
        held,
        peak_kib,
        idle_kib,
        rss_at_8s: sampler.join().unwrap(),
    }
}

/// Opens `count` fulfilment requests at once (nobody answers) and returns how many were held
/// at the peak and the relay's peak RSS in KiB.
async fn hold_many(relay: &Process, body: Bytes, count: usize) -> (usize, u64) {
    let addr = relay.addr();
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move {
                let mut sender = connect(addr).await?;
                let request = http::Request::post("/webhooks/firstpromoter")
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .unwrap();
                sender
                    .send_request(request)
                    .await
                    .ok()
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut peak = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let held = metric(relay.admin(), "fp_relay_fulfilment_in_flight").await as usize;
        peak = peak.max(held);
        if held >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss = relay.peak_rss_kib();
    for task in tasks {
        let _ = task.await;
    }
    (peak, rss)
}

/// The relay's writes so far by producer: (immediate, batching).
async fn writes(admin: SocketAddr) -> (f64, f64) {
    let series = |producer| format!("fp_relay_kafka_writes_total{{producer=\"{producer}\"}}");
    (
        metric(admin, &series("immediate")).await,
        metric(admin, &series("batching")).await,
    )
}

/// Says which share of a level's writes took the batching producer.
fn report_writes(c: usize, before: (f64, f64), after: (f64, f64)) {
    let (immediate, batching) = (after.0 - before.0, after.1 - before.1);
    eprintln!(
        "  c={c}: {:.0}% of {:.0} writes batched",
        100.0 * batching / (immediate + batching).max(1.0),
        immediate + batching
    );
}

async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let Some(stream) = tokio::net::TcpStream::connect(admin).await.ok() else {
        return 0.0;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return 0.0;
    };
    tokio::spawn(connection);
    let request = http::Request::get("/metrics")
        .header("host", "admin")
        .body(Empty::new())
        .unwrap();
    let Ok(response) = sender.send_request(request).await else {
        return 0.0;
    };
    let text = String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes())
        .into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "bench")
        .body(Empty::new())
        .unwrap();
    sender
        .send_request(request)
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

async fn http_post(addr: SocketAddr, path: &str, body: Bytes) -> Option<u16> {
    let mut sender = connect(addr).await?;
    let request = http::Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    sender
        .send_request(request)
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

async fn wait_ready(admin: SocketAddr) {
    wait_for(|| async move { http_get(admin, "/readyz").await == Some(200) }).await;
}

async fn wait_for<F, Fut>(check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for_within(Duration::from_secs(60), check).await;
}

async fn wait_for_within<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A child process killed on drop.
struct Process {
    child: Child,
    port: u16,
    admin: Option<u16>,
}

impl Process {
    fn spawn(command: &mut Command, port: u16, admin: Option<u16>) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, port, admin }
    }

    fn tansu() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let bin = std::env::var("TANSU_BIN").expect("TANSU_BIN: run benches/load.sh");
        let process = Self::spawn(
            Command::new(bin).args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ]),
            port,
            None,
        );
        std::thread::sleep(Duration::from_millis(300));
        process
    }

    fn relay(bootstrap: &str, max_in_flight: Option<usize>, env: &[(&str, &str)]) -> Self {
        let (port, admin) = (free_port(), free_port());
        let mut command = Command::new(relay_bin());
        command
            .args(["serve", "--insecure-no-auth", "--brokers", bootstrap])
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ])
            .env("RUST_LOG", "error")
            // The benchmark's own variable, not a setting (the relay refuses unknown ones).
            .env_remove("FP_RELAY_BIN")
            .envs(env.iter().copied());
        if let Some(max) = max_in_flight {
            command
                .env("FP_RELAY_FULFILMENT_MAX_IN_FLIGHT", max.to_string())
                .env("FP_RELAY_HTTP_MAX_CONNECTIONS", (2 * max + 100).to_string())
                // Every held request comes from 127.0.0.1.
                .env(
                    "FP_RELAY_HTTP_MAX_CONNECTIONS_PER_SOURCE",
                    (2 * max + 100).to_string(),
                );
        }
        Self::spawn(&mut command, port, Some(admin))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin.expect("has an admin port")))
    }
    /// VmHWM: the process's peak resident set, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmHWM:")
                        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
                })
            })
            .unwrap_or(0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of `pid` so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The HTTP ceiling: hyper answering 200 to everything, reading the body like the relay does.
fn baseline_server(port: u16) {
    serve_forever(port, |request| async move {
        let _ = request.into_body().collect().await;
        http::Response::new(Full::new(Bytes::from_static(b"{\"status\":\"ok\"}")))
    });
}

/// The bare relay: hyper and one rdkafka producer (acks=all, idempotent); every
/// POST body is produced to one topic and answered 200 once Kafka acknowledged it. What a relay
/// costs with nothing but the two libraries.
fn bare_relay(port: u16, producer: FutureProducer) {
    serve_forever(port, move |request| {
        let producer = producer.clone();
        async move {
            let status = match request.into_body().collect().await {
                Ok(body) => {
                    let body = body.to_bytes();
                    let record = FutureRecord::<(), [u8]>::to("bench.bare").payload(&body[..]);
                    match producer.send(record, Duration::from_secs(10)).await {
                        Ok(_) => 200,
                        Err(_) => 503,
                    }
                }
                Err(_) => 400,
            };
            let mut response = http::Response::new(Full::new(Bytes::from_static(b"{}")));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            response
        }
    });
}
