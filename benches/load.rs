//! The load benchmark: the release relay against a real tansu broker on loopback, with both
//! ceilings measured in the same run so the ratios hold on a noisy machine.
//!
//! - HTTP ceiling: the same load generator against a minimal hyper server answering 200.
//! - Kafka ceiling: an rdkafka producer with the relay's settings (acks=all, idempotent)
//!   sending the same payloads at the same concurrency, awaiting each delivery.
//! - The relay at several concurrency levels, with CPU per request from /proc.
//! - Fulfilment: round trips against an auto-responder, and 10,000 held requests with the
//!   relay's peak RSS.
//! - Start-up: process start to `/readyz` = 200.
//!
//! Run it with `benches/load.sh` (builds the release binary, fetches tansu, writes
//! benches/RESULTS.md). `--quick` is the short smoke run CI uses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
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
    quick: bool,
    duration: Duration,
    levels: Vec<usize>,
    holds: usize,
    out: Option<PathBuf>,
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
        quick,
        duration: Duration::from_secs_f64(
            value("--duration").map_or(if quick { 2.0 } else { 10.0 }, |v| v.parse().unwrap()),
        ),
        levels: if quick {
            vec![1, 16]
        } else {
            vec![1, 16, 64, 256]
        },
        holds: if quick { 1_000 } else { 10_000 },
        out: value("--out").map(PathBuf::from),
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
        return bare_relay(port.parse().unwrap(), bootstrap, linger.parse().unwrap());
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
    drop(baseline);

    // The Kafka ceiling: the best a bare producer does at each concurrency, over LINGERS
    // (never the relay's own settings: a ceiling that moves with the relay hides its choices).
    let mut best_linger = std::collections::HashMap::new();
    for &c in &options.levels {
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
        rows.push(("kafka ceiling", c, stats));
    }

    // A bare relay: hyper + rdkafka, each produce awaited, nothing else (no parsing, auth,
    // metrics), at the best linger.ms for the level.
    for &c in &options.levels {
        let port = free_port();
        let bare = Process::spawn(
            Command::new(std::env::current_exe().unwrap()).args([
                "--bare-relay",
                &port.to_string(),
                &bootstrap,
                &best_linger[&c].to_string(),
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
        sweep(&mut rows, "bare relay", &bare, "/", &body, options, &[c]).await;
    }

    // The peer: the receiver a team would write by hand (../shared/peer), when Python can
    // install its two packages (benches/ensure-peer.sh sets PEER_PYTHON).
    let peer_script = manifest("../shared/peer/peer_receiver.py");
    match std::env::var("PEER_PYTHON") {
        Ok(python) if peer_script.exists() => {
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
        _ => eprintln!("peer: not measured (PEER_PYTHON unset or ../shared/peer missing)"),
    }

    // The relay.
    let relay = Process::relay(&bootstrap, None);
    wait_ready(relay.admin()).await;
    let path = "/webhooks/firstpromoter";
    sweep(
        &mut rows,
        "relay",
        &relay,
        path,
        &body,
        options,
        &options.levels,
    )
    .await;

    // Fulfilment round trips against an auto-responder.
    let responder = Process::spawn(
        Command::new(relay_bin()).args([
            "respond",
            "--brokers",
            &bootstrap,
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
        let (addr, body) = (relay.addr(), fulfilment_body.clone());
        async move { http_post(addr, "/webhooks/firstpromoter", body).await == Some(200) }
    })
    .await;
    let round_trip = http_load(
        relay.addr(),
        "/webhooks/firstpromoter",
        fulfilment_body.clone(),
        64,
        options.duration,
        Some(relay.pid()),
    )
    .await;
    eprintln!(
        "fulfilment c=64: {:.0} req/s p99 {:.2} ms errors {}",
        round_trip.rps(),
        round_trip.ms(0.99),
        round_trip.errors
    );
    drop(responder);
    drop(relay);

    // Held requests: a fresh relay so its peak RSS is this test's alone; nobody answers.
    let holds = held_requests(&bootstrap, fulfilment_body.clone(), options.holds).await;
    let (held, holds_rss, baseline_rss) = (holds.held, holds.peak_kib, holds.idle_kib);
    eprintln!("holds: {held} held, peak RSS {holds_rss} KiB (idle {baseline_rss} KiB)");

    // Start-up to ready, against the running broker.
    let mut startups = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let relay = Process::relay(&bootstrap, None);
        wait_ready(relay.admin()).await;
        startups.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    startups.sort_by(f64::total_cmp);
    let startup_ms = startups[1];
    eprintln!("start-up to ready: {startup_ms:.0} ms (median of 3)");

    report(
        options,
        &rows,
        &round_trip,
        held,
        holds_rss,
        baseline_rss,
        startup_ms,
    )
}

fn report(
    options: &Options,
    rows: &[(&str, usize, Stats)],
    round_trip: &Stats,
    held: usize,
    holds_rss: u64,
    idle_rss: u64,
    startup_ms: f64,
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
    let relay_at = |c: usize| find("relay", c).unwrap();
    let peer_at = |c: usize| find(PEER, c);
    let bare_at = |c: usize| find("bare relay", c).unwrap();
    let mut out = String::new();
    out.push_str("# fp-relay load benchmark\n\n");
    out.push_str(&format!(
        "Generated by `benches/load.sh{}` on {} ({} cores, {}). Each level ran {:.0} s; relay, broker, \
         baselines and load generator share the machine over loopback. Payload: `samples/v1/reward_created.json` \
         ({} bytes, realistic, with a promoter secret to redact). fp-relay runs with its default \
         configuration.\n\n",
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
    for &c in &options.levels {
        let relay = relay_at(c);
        match peer_at(c) {
            Some(peer) => {
                let want = match c {
                    1 => 1.0,
                    16 => 1.3,
                    _ => 4.0,
                };
                goal(
                    format!("fp-relay / peer, c={c}"),
                    format!(
                        "{:.2}x ({:.0} / {:.0} req/s)",
                        relay.rps() / peer.rps(),
                        relay.rps(),
                        peer.rps()
                    ),
                    format!("≥ {want}x"),
                    relay.rps() / peer.rps() >= want,
                );
            }
            None => goal(
                format!("fp-relay / peer, c={c}"),
                "peer not measured".into(),
                "–".into(),
                false,
            ),
        }
        let bare = bare_at(c);
        goal(
            format!("fp-relay / bare relay, c={c}"),
            format!(
                "{:.2}x ({:.0} / {:.0} req/s)",
                relay.rps() / bare.rps(),
                relay.rps(),
                bare.rps()
            ),
            "≥ 0.9x".into(),
            relay.rps() / bare.rps() >= 0.9,
        );
        goal(
            format!("fp-relay p99 − bare relay p99, c={c}"),
            format!(
                "{:+.2} ms ({:.2} vs {:.2})",
                relay.ms(0.99) - bare.ms(0.99),
                relay.ms(0.99),
                bare.ms(0.99)
            ),
            "≤ +0.5 ms".into(),
            relay.ms(0.99) <= bare.ms(0.99) + 0.5,
        );
    }
    let cpu = relay_at(headline).cpu_per_request.unwrap_or(f64::MAX) * 1e6;
    goal(
        format!("fp-relay CPU per request, c={headline}"),
        format!("{cpu:.0} µs"),
        "≤ 20 µs".into(),
        cpu <= 20.0,
    );
    goal(
        format!("peak RSS with {held} held fulfilment requests"),
        format!(
            "{:.1} MiB (idle {:.1} MiB, {:.1} KiB per held request)",
            holds_rss as f64 / 1024.0,
            idle_rss as f64 / 1024.0,
            holds_rss.saturating_sub(idle_rss) as f64 / held.max(1) as f64
        ),
        "< 100 MiB".into(),
        holds_rss < 100 * 1024 && held == options.holds,
    );
    goal(
        "fulfilment round trip, c=64".into(),
        format!(
            "{:.0} req/s, p99 {:.2} ms",
            round_trip.rps(),
            round_trip.ms(0.99)
        ),
        "(reported)".into(),
        round_trip.errors == 0,
    );
    goal(
        "start-up to /readyz 200".into(),
        format!("{startup_ms:.0} ms"),
        "< 300 ms".into(),
        startup_ms < 300.0,
    );
    out.push_str("\n## Every level\n\n| target | concurrency | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU µs/req |\n|---|---|---|---|---|---|---|---|\n");
    for (name, c, s) in rows.iter().chain(std::iter::once(&(
        "fulfilment round trip",
        64,
        round_trip.clone(),
    ))) {
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
    out
}

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
        let stats = http_load(target.addr(), path, body.clone(), c, options.duration, pid).await;
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
) -> Stats {
    let cpu_before = pid.and_then(cpu_seconds);
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (path, body) = (path.to_owned(), body.clone());
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3).unwrap();
                let (mut requests, mut errors) = (0u64, 0u64);
                let mut sender = None;
                while Instant::now() < deadline {
                    if sender.is_none() {
                        sender = connect(addr).await;
                    }
                    let Some(s) = sender.as_mut() else {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let request = http::Request::post(&path)
                        .header("host", "relay")
                        .header("content-type", "application/json")
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let sent = Instant::now();
                    match s.send_request(request).await {
                        Ok(response) => {
                            let ok = response.status().is_success();
                            let _ = response.into_body().collect().await;
                            latency.record(sent.elapsed().as_micros() as u64).unwrap();
                            requests += 1;
                            errors += u64::from(!ok);
                        }
                        Err(_) => {
                            errors += 1;
                            sender = None;
                        }
                    }
                }
                (requests, errors, latency)
            })
        })
        .collect();
    collect(workers, started, pid, cpu_before).await
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

/// `linger.ms` values the Kafka ceiling tries at each concurrency (it keeps the best).
const LINGERS: [u32; 3] = [0, 1, 5];

/// A multi-threaded runtime for the benchmark's own clients and servers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

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
    let relay = Process::relay(bootstrap, Some(count));
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

async fn wait_for<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting"
        );
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

    fn relay(bootstrap: &str, max_in_flight: Option<usize>) -> Self {
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
            .env("RUST_LOG", "error");
        if let Some(max) = max_in_flight {
            command
                .env("FP_RELAY_FULFILMENT_MAX_IN_FLIGHT", max.to_string())
                .env("FP_RELAY_HTTP_MAX_CONNECTIONS", (2 * max + 100).to_string());
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

fn manifest(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn relay_bin() -> PathBuf {
    std::env::var_os("FP_RELAY_BIN")
        .map_or_else(|| manifest("target/release/fp-relay"), PathBuf::from)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves `handle` on 127.0.0.1:`port` with hyper, one task per connection, until killed.
fn serve_forever<F, Fut>(port: u16, handle: F)
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    runtime().block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = handle(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// The HTTP ceiling: hyper answering 200 to everything, reading the body like the relay does.
fn baseline_server(port: u16) {
    serve_forever(port, |request| async move {
        let _ = request.into_body().collect().await;
        http::Response::new(Full::new(Bytes::from_static(b"{\"status\":\"ok\"}")))
    });
}

/// The bare relay: hyper and one rdkafka producer (acks=all, idempotent, `linger_ms`); every
/// POST body is produced to one topic and answered 200 once Kafka acknowledged it. What a relay
/// costs with nothing but the two libraries.
fn bare_relay(port: u16, bootstrap: &str, linger_ms: u32) {
    let producer = producer(bootstrap, linger_ms);
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
