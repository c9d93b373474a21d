//! What one request costs, counted rather than timed: instructions and heap allocations per
//! request of the whole process (every thread, librdkafka's included) under
//! `valgrind --tool=callgrind`, for fp-relay and for a bare relay that writes the identical
//! record, at one request at a time and in batches.
//!
//! A timing on two shared cores cannot tell a 3 % gain from noise; an instruction count can.
//! Each target runs under callgrind against a real tansu broker (native, not counted), is warmed
//! up, and (fp-relay) left until its reply consumer rests (it fetches every few milliseconds
//! for its first quiet minute; the steady state for standard events is after that). Then:
//! - idle: counters zeroed (`callgrind_control --zero`), 8 s of nothing, dumped: the rate at
//!   which librdkafka's and tokio's timers run whether requests come or not;
//! - five rounds per batch size: counters zeroed, the requests sent, dumped. Per request =
//!   (round - idle rate x its duration) / requests; the median round is reported.
//! - librdkafka's statistics (every 5 s per client, millions of instructions at once) are left
//!   out of every window by the inclusive cost of their calls (see [`PERIODIC`]).
//!
//! Rounds of one run agree within about 1 %, runs within about 2 % (benches/RESULTS.md).
//!
//! Allocations are the calls into the allocator's entry points (`malloc`, `calloc`, `realloc`,
//! `posix_memalign`, `aligned_alloc`, `memalign`, and mimalloc's `mi_*` when it is linked)
//! from outside the allocator, read from the same dumps' call counts: Rust's and C's alike.
//!
//! The *bare relay writing the same record* is hyper plus one rdkafka producer: on each POST it
//! writes the record fp-relay writes for the benchmark's payload (same topic, key, payload
//! bytes and headers; `fp-received-at` and the trace headers made afresh per request, as
//! fp-relay does) and answers the bytes fp-relay answers. The record is worked out once at
//! start-up with fp-relay's own pipeline: per request the bare relay does no parsing, routing or
//! redaction, which is what makes it the floor.
//!
//! Run it with `benches/cost.sh` (builds, fetches tansu, prints the table; `--check` compares
//! with benches/cost-baseline.txt).

mod support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{free_port, manifest, relay_bin, runtime, serve_forever};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The payload: the load benchmark's (3 KB, realistic, with a promoter secret to redact).
const SAMPLE: &str = "samples/v1/reward_created.json";
/// The path fp-relay serves webhooks on by default.
const WEBHOOK_PATH: &str = "/webhooks/firstpromoter";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bare-same-record") {
        let (port, bootstrap) = (&args[i + 1], &args[i + 2]);
        return bare_same_record(port.parse().unwrap(), bootstrap);
    }
    if !args.iter().any(|a| a == "--run") {
        // `cargo bench` and `cargo test --all-targets` run every bench binary; this one needs
        // valgrind and a broker, so it runs only when asked (benches/cost.sh).
        eprintln!("cost: skipped (run benches/cost.sh)");
        return;
    }
    let options = Options::parse(&args);
    let rows = runtime().block_on(run(&options));
    print!("{}", table(&rows, &options));
}

/// What `--run` measures.
struct Options {
    /// Measured requests per target and batch size.
    requests: usize,
    /// Measurements per target and batch size; the median is reported.
    rounds: usize,
    /// Requests sent before the counters are zeroed (connections, metadata, topic creation).
    warmup: usize,
    /// Batch sizes: how many requests are sent at once, each batch awaited whole.
    batches: Vec<usize>,
    /// Targets to measure: `fp-relay`, `bare`.
    only: Vec<String>,
    /// Where callgrind's dumps go (kept for `callgrind_annotate`).
    out: PathBuf,
}

impl Options {
    fn parse(args: &[String]) -> Self {
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .map(|i| args[i + 1].clone())
        };
        Self {
            requests: value("--requests").map_or(200, |v| v.parse().unwrap()),
            rounds: value("--rounds").map_or(5, |v| v.parse().unwrap()),
            warmup: value("--warmup").map_or(64, |v| v.parse().unwrap()),
            batches: value("--batches").map_or(vec![1, 32], |v| {
                v.split(',').map(|b| b.parse().unwrap()).collect()
            }),
            only: value("--only").map_or(vec!["fp-relay".into(), "bare".into()], |v| {
                v.split(',').map(str::to_owned).collect()
            }),
            out: value("--out").map_or_else(|| manifest("target/cost"), PathBuf::from),
        }
    }
}

/// A measure's name and how to read it from a row.
type Measure = (&'static str, fn(&Row) -> f64);

/// One target at one batch size.
struct Row {
    target: &'static str,
    batch: usize,
    requests: usize,
    instructions: f64,
    allocations: f64,
    frees: f64,
    /// Instructions per second of idle, for the record (what was subtracted).
    idle_per_second: f64,
    /// How long the measured requests took under callgrind.
    seconds: f64,
}

async fn run(options: &Options) -> Vec<Row> {
    std::fs::create_dir_all(&options.out).unwrap();
    let broker = Process::tansu();
    let bootstrap = format!("127.0.0.1:{}", broker.port);
    let body = Bytes::from(std::fs::read(manifest(SAMPLE)).unwrap());
    let mut rows = Vec::new();
    for target in ["fp-relay", "bare"] {
        if !options.only.iter().any(|o| o == target) {
            continue;
        }
        let dir = options.out.join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (name, process, path) = if target == "fp-relay" {
            let process = Process::relay_under_callgrind(&bootstrap, &dir);
            ("fp-relay", process, WEBHOOK_PATH)
        } else {
            let process = Process::bare_under_callgrind(&bootstrap, &dir);
            ("bare-same-record", process, "/")
        };
        eprintln!("cost: {name}: starting under callgrind");
        let addr = process.addr();
        wait_for(Duration::from_secs(120), || {
            let body = body.clone();
            async move { post_once(addr, path, body).await == Some(200) }
        })
        .await;
        let widest = options.batches.iter().copied().max().unwrap_or(1);
        let warm_up = || async {
            let mut clients = Clients::connect(addr, widest).await;
            for &batch in &options.batches {
                clients.send(path, &body, options.warmup, batch).await;
            }
        };
        warm_up().await;
        if let Some(admin) = process.admin {
            // The reply consumer fetches every few milliseconds until it has been quiet for a
            // minute: steady state for standard events is after that, and its fetches would be
            // most of the idle figure subtracted below (6-7 M instructions/s, varying by 25 %).
            eprintln!("cost: {name}: waiting for the reply consumer to rest");
            wait_for(Duration::from_secs(180), || async move {
                metric(admin, "fp_relay_fulfilment_reply_consumer_resting").await == Some(1.0)
            })
            .await;
            // Warmed again: the steady state is what is counted.
            warm_up().await;
        }
        // librdkafka's and tokio's timers run whether requests come or not: their rate, measured
        // once over a long window (single short windows vary by half), is taken off each round.
        let idle = measure_idle(&process, &dir, 0, IDLE_WINDOW).await;
        let idle_rate = |count: u64| count as f64 / idle.seconds;
        let target = Target {
            path,
            body: body.clone(),
            dir: dir.clone(),
        };
        let mut dump = 1;
        for &batch in &options.batches {
            let mut rounds = Vec::new();
            for _ in 0..options.rounds {
                let load = measure_load(&process, &target, options, batch, dump).await;
                dump += 1;
                let n = options.requests as f64;
                let net = |load_count: u64, idle_count: u64| {
                    (load_count as f64 - idle_rate(idle_count) * load.seconds) / n
                };
                rounds.push(Row {
                    target: name,
                    batch,
                    requests: options.requests,
                    instructions: net(load.instructions, idle.instructions),
                    allocations: net(load.allocations, idle.allocations),
                    frees: net(load.frees, idle.frees),
                    idle_per_second: idle_rate(idle.instructions),
                    seconds: load.seconds,
                });
            }
            let each: Vec<String> = rounds
                .iter()
                .map(|r| format!("{:.0}", r.instructions))
                .collect();
            // The median round by instructions: what is left of the broker thread's timing
            // (how records fall into produce requests, queue wake-ups, glibc's heap state)
            // moves single rounds by a per cent or two.
            let (low, high) = rounds.iter().fold((f64::MAX, 0.0f64), |(l, h), r| {
                (l.min(r.instructions), h.max(r.instructions))
            });
            rounds.sort_by(|a, b| a.instructions.total_cmp(&b.instructions));
            let row = rounds.swap_remove(rounds.len() / 2);
            eprintln!(
                "cost: {name} at batch {batch}: {:.0} instructions, {:.1} allocations per request (median of {}: {}; {:.1} % apart; {:.1} s each)",
                row.instructions,
                row.allocations,
                options.rounds,
                each.join(" "),
                (high - low) / low * 100.0,
                row.seconds
            );
            rows.push(row);
        }
    }
    rows
}

/// The idle window: long enough that librdkafka's and rust-rdkafka's timers average out.
const IDLE_WINDOW: Duration = Duration::from_secs(8);

/// The process left alone for `window`: counters zeroed, then dumped (the `dump`th dump).
async fn measure_idle(process: &Process, dir: &Path, dump: usize, window: Duration) -> Counts {
    callgrind_control(process.pid(), &["--zero"]);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    callgrind_control(process.pid(), &["--dump=idle"]);
    let mut idle = Counts::read(&dumps(dir)[dump]);
    idle.seconds = started.elapsed().as_secs_f64();
    idle
}

/// One round: fresh connections warmed by one batch (the relay closes idle ones), counters
/// zeroed, `options.requests` sent `batch` at a time, dumped (the `dump`th dump).
async fn measure_load(
    process: &Process,
    target: &Target,
    options: &Options,
    batch: usize,
    dump: usize,
) -> Counts {
    let mut clients = Clients::connect(process.addr(), batch).await;
    clients.send(target.path, &target.body, batch, batch).await;
    callgrind_control(process.pid(), &["--zero"]);
    let started = Instant::now();
    clients
        .send(target.path, &target.body, options.requests, batch)
        .await;
    callgrind_control(process.pid(), &[&format!("--dump=load-c{batch}")]);
    let mut load = Counts::read(&dumps(&target.dir)[dump]);
    load.seconds = started.elapsed().as_secs_f64();
    load
}

/// What a round needs to know about the target.
struct Target {
    path: &'static str,
    body: Bytes,
    dir: PathBuf,
}

/// A metric's value from the admin port's /metrics, if it is there.
async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let request = http::Request::get("/metrics")
        .header("host", "relay")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.ok()?;
    let text = response.into_body().collect().await.ok()?.to_bytes();
    std::str::from_utf8(&text).ok()?.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The table: one row per measure and batch size, ending in fp-relay's ratio to the bare relay.
fn table(rows: &[Row], options: &Options) -> String {
    let find =
        |target: &str, batch: usize| rows.iter().find(|r| r.target == target && r.batch == batch);
    let mut out = String::new();
    for &batch in &options.batches {
        let (Some(relay), bare) = (find("fp-relay", batch), find("bare-same-record", batch)) else {
            continue;
        };
        let requests = relay.requests;
        let measures: [Measure; 3] = [
            ("instructions per request", |r| r.instructions),
            ("allocations per request", |r| r.allocations),
            ("frees per request", |r| r.frees),
        ];
        for (measure, get) in measures {
            let _ = write!(
                out,
                "{measure}, batch {batch} | fp-relay {} ",
                thousands(get(relay))
            );
            match bare {
                Some(bare) => {
                    let _ = writeln!(
                        out,
                        "| bare-same-record {} | {:.2}x",
                        thousands(get(bare)),
                        get(relay) / get(bare)
                    );
                }
                None => out.push_str("| bare-same-record – | –\n"),
            }
        }
        let _ = writeln!(
            out,
            "(batch {batch}: {requests} requests; idle subtracted: fp-relay {} instructions/s{}; {:.1} s measured)",
            thousands(relay.idle_per_second),
            bare.map_or(String::new(), |b| format!(", bare {}", thousands(b.idle_per_second))),
            relay.seconds,
        );
    }
    out
}

/// `1234567.8` as `1,234,568`; under 100, one decimal.
fn thousands(value: f64) -> String {
    if value.abs() < 100.0 {
        return format!("{value:.1}");
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// What one callgrind dump counted.
#[derive(Default)]
struct Counts {
    /// How long the window lasted, seconds.
    seconds: f64,
    /// Every instruction but the periodic work's.
    instructions: u64,
    /// Instructions spent in [`PERIODIC`] work.
    periodic: u64,
    allocations: u64,
    frees: u64,
}

/// The allocator's entry points: an allocation is a call to one of these from outside them.
const ALLOCATORS: [&str; 14] = [
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "mi_malloc",
    "mi_zalloc",
    "mi_calloc",
    "mi_realloc",
    "mi_malloc_aligned",
    "mi_zalloc_aligned",
    "mi_realloc_aligned",
    "mi_aligned_alloc",
];
const FREES: [&str; 2] = ["free", "mi_free"];

/// librdkafka's statistics, every `statistics.interval.ms` (5 s) per client: the JSON built in C
/// and read in Rust. A cost per five seconds, not per request, and a large one (millions of
/// instructions) that lands in one window or the other at random: left out of both, by the
/// inclusive cost of these calls.
const PERIODIC: [&str; 2] = [
    "rd_kafka_stats_emit_tmr_cb",
    "rdkafka::client::ClientContext::stats_raw",
];

impl Counts {
    /// Reads a dump written with `--compress-strings=no`: `totals:` for the instructions, and
    /// the `calls=` lines under each `cfn=` for the allocator calls.
    fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap();
        let mut counts = Counts::default();
        let mut caller = String::new();
        let mut callee = String::new();
        // The next cost line is a call's inclusive cost (it follows `calls=`).
        let mut periodic_call = false;
        let is_allocator = |name: &str| {
            ALLOCATORS.contains(&name)
                || FREES.contains(&name)
                || name.starts_with("_mi_")
                || name.starts_with("mi_")
                || name.starts_with("_int_")
                || name.starts_with("__libc_")
        };
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("fn=") {
                caller = name.to_owned();
            } else if let Some(name) = line.strip_prefix("cfn=") {
                callee = name.to_owned();
            } else if let Some(calls) = line.strip_prefix("calls=") {
                periodic_call = PERIODIC.contains(&callee.as_str()) && caller != callee;
                if is_allocator(&caller) {
                    continue;
                }
                let n: u64 = calls.split_whitespace().next().unwrap().parse().unwrap();
                if ALLOCATORS.contains(&callee.as_str()) {
                    counts.allocations += n;
                } else if FREES.contains(&callee.as_str()) {
                    counts.frees += n;
                }
            } else if periodic_call {
                periodic_call = false;
                counts.periodic += line
                    .split_whitespace()
                    .nth(1)
                    .map_or(0, |cost| cost.parse().unwrap());
            } else if let Some(total) = line
                .strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
            {
                counts.instructions = total.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        counts.instructions -= counts.periodic;
        counts
    }
}

/// The dumps in `dir` in the order they were written (callgrind numbers them:
/// `callgrind.<pid>.<n>`).
fn dumps(dir: &Path) -> Vec<PathBuf> {
    let mut numbered: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let n = path.extension()?.to_str()?.parse().ok()?;
            Some((n, path))
        })
        .collect();
    numbered.sort();
    numbered.into_iter().map(|(_, path)| path).collect()
}

/// Runs `callgrind_control` on `pid`; it waits until the process has acted on the command.
fn callgrind_control(pid: u32, args: &[&str]) {
    let status = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("callgrind_control (valgrind) is installed");
    assert!(status.success(), "callgrind_control {args:?} failed");
}

/// Keep-alive connections that send requests `batch` at a time.
struct Clients {
    senders: Vec<Sender>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Clients {
    async fn connect(addr: SocketAddr, count: usize) -> Self {
        let mut senders = Vec::new();
        for _ in 0..count {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(connection);
            senders.push(sender);
        }
        Self { senders }
    }

    /// Sends `total` requests in batches of `batch`, each batch sent at once and awaited whole;
    /// every answer must be 200.
    async fn send(&mut self, path: &str, body: &Bytes, total: usize, batch: usize) {
        let mut sent = 0;
        while sent < total {
            let n = batch.min(total - sent);
            for sender in &mut self.senders[..n] {
                sender.ready().await.expect("the connection stays open");
            }
            let requests = self.senders[..n].iter_mut().map(|sender| {
                let request = http::Request::post(path)
                    .header("host", "relay")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .unwrap();
                let answer = sender.send_request(request);
                async move {
                    let response = answer.await.unwrap();
                    let status = response.status();
                    let _ = response.into_body().collect().await;
                    status
                }
            });
            for status in futures_join_all(requests).await {
                assert_eq!(status, 200, "every measured request is published");
            }
            sent += n;
        }
    }
}

/// Awaits every future, concurrently, on this task.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    let mut pending: Vec<_> = handles.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(output) => {
                        *result = Some(output);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.extend(results.into_iter().map(Option::unwrap));
    outputs
}

/// One POST on a fresh connection; its status, if it was answered.
async fn post_once(addr: SocketAddr, path: &str, body: Bytes) -> Option<u16> {
    let mut clients = tokio::time::timeout(Duration::from_secs(5), async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        Some(sender)
    })
    .await
    .ok()??;
    let request = http::Request::post(path)
        .header("host", "relay")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), clients.send_request(request))
        .await
        .ok()?
        .ok()?;
    Some(response.status().as_u16())
}

async fn wait_for<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "not ready within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A child process killed on drop.
struct Process {
    child: Child,
    port: u16,
    /// The admin listener, for fp-relay.
    admin: Option<SocketAddr>,
}

impl Process {
    fn spawn(command: &mut Command, port: u16) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            port,
            admin: None,
        }
    }

    fn tansu() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let bin = std::env::var("TANSU_BIN").expect("TANSU_BIN: run benches/cost.sh");
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
        );
        std::thread::sleep(Duration::from_millis(300));
        process
    }

    /// `valgrind --tool=callgrind` with the options the counts are read with.
    fn callgrind(dir: &Path) -> Command {
        let mut command = Command::new("valgrind");
        command.args([
            "--tool=callgrind",
            &format!("--callgrind-out-file={}/callgrind.%p", dir.display()),
            "--compress-strings=no",
            "--compress-pos=no",
        ]);
        command
    }

    fn relay_under_callgrind(bootstrap: &str, dir: &Path) -> Self {
        let (port, admin) = (free_port(), free_port());
        let mut command = Self::callgrind(dir);
        command
            .arg(relay_bin())
            .args(["serve", "--insecure-no-auth", "--brokers", bootstrap])
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ])
            .env("RUST_LOG", "error")
            .env_remove("FP_RELAY_BIN");
        let mut process = Self::spawn(&mut command, port);
        process.admin = Some(SocketAddr::from(([127, 0, 0, 1], admin)));
        process
    }

    fn bare_under_callgrind(bootstrap: &str, dir: &Path) -> Self {
        let port = free_port();
        let mut command = Self::callgrind(dir);
        command.arg(std::env::current_exe().unwrap()).args([
            "--bare-same-record",
            &port.to_string(),
            bootstrap,
        ]);
        Self::spawn(&mut command, port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The record fp-relay writes for the benchmark's payload, worked out once.
struct Template {
    topic: String,
    key: Option<String>,
    payload: Bytes,
    /// Every header but the ones made per request, in fp-relay's order, with `None` where a
    /// per-request value goes.
    headers: Vec<(String, Option<String>)>,
}

impl Template {
    fn new() -> Self {
        let body = Bytes::from(std::fs::read(manifest(SAMPLE)).unwrap());
        let pipeline = fp_relay::pipeline::Pipeline::new(&fp_relay::config::Config::default());
        let received = fp_relay::kafka::record::Received::now();
        let record = pipeline
            .prepare(&http::HeaderMap::new(), body, &received)
            .unwrap()
            .record;
        let fresh = [
            fp_relay::kafka::record::headers::RECEIVED_AT,
            fp_relay::trace::TRACEPARENT,
            fp_relay::trace::CE_TRACEPARENT,
        ];
        Self {
            headers: record
                .headers
                .iter()
                .map(|(k, v)| {
                    let value = (!fresh.contains(&k.as_ref())).then(|| v.clone());
                    (k.to_string(), value)
                })
                .collect(),
            topic: record.topic,
            key: record.key,
            payload: record.payload,
        }
    }
}

/// The bare relay writing fp-relay's record: hyper and rdkafka with fp-relay's producer
/// settings, including its load-aware pair (`kafka.batch_above_in_flight` 8: a write made while
/// fewer are unacknowledged goes out at once, the others through a producer lingering
/// `kafka.batch_linger`), so both write the same batches. Every POST writes the template record
/// with a fresh arrival time and trace, and is answered as fp-relay answers once Kafka has it.
fn bare_same_record(port: u16, bootstrap: &str) {
    let kafka = fp_relay::config::KafkaConfig {
        brokers: bootstrap.to_owned(),
        ..Default::default()
    };
    let mut immediate = fp_relay::kafka::producer_config(&kafka, kafka.ack_timeout);
    immediate.set("log_level", "3");
    let mut batching = immediate.clone();
    batching.set(
        "linger.ms",
        (kafka.batch_linger.as_secs_f64() * 1000.0).to_string(),
    );
    let producers: [FutureProducer; 2] = [immediate.create().unwrap(), batching.create().unwrap()];
    let above = kafka.batch_above_in_flight;
    let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let template = std::sync::Arc::new(Template::new());
    serve_forever(port, move |request| {
        let producers = producers.clone();
        let template = template.clone();
        let in_flight = in_flight.clone();
        async move {
            let Ok(body) = request.into_body().collect().await else {
                return status_only(400);
            };
            drop(body);
            let received_at = fp_relay::kafka::record::rfc3339(std::time::SystemTime::now());
            let traceparent = format!(
                "00-{:032x}-{:016x}-01",
                fastrand::u128(1..),
                fastrand::u64(1..)
            );
            let mut headers = OwnedHeaders::new_with_capacity(template.headers.len());
            for (name, value) in &template.headers {
                let value = match value {
                    Some(value) => value.as_str(),
                    None if name == fp_relay::kafka::record::headers::RECEIVED_AT => &received_at,
                    None => &traceparent,
                };
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
            let mut record = FutureRecord::to(&template.topic)
                .payload(&template.payload[..])
                .headers(headers);
            if let Some(key) = &template.key {
                record = record.key(key.as_str());
            }
            let ahead = in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let producer = &producers[usize::from(ahead >= above)];
            let sent = producer.send(record, Duration::from_secs(10)).await;
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            match sent {
                Ok(delivered) => {
                    let mut answer = String::with_capacity(96);
                    let _ = write!(
                        answer,
                        r#"{{"status":"published","topic":"{}","partition":{},"offset":{}}}"#,
                        template.topic, delivered.partition, delivered.offset
                    );
                    let mut response = http::Response::new(Full::new(Bytes::from(answer)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(_) => status_only(503),
            }
        }
    });
}

fn status_only(status: u16) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response
}
