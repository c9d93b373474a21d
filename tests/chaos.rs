//! The seeded chaos run (issue #41): FirstPromoter traffic through two relay processes (spool
//! on, `dedup.topic` on, v1 and v2 credentials as in the gateway manifests) and one tansu
//! broker behind a fault-injecting TCP proxy, with faults drawn from a seed at random times,
//! then a checker that holds the history of every answer against what Kafka holds.
//!
//! `scripts/chaos.sh --seeds N [--first-seed S] [--duration SECONDS] [--traffic SECONDS]` runs
//! it (`--duration` is a soak's wall-time budget); so does `cargo test --test chaos` (two
//! short schedules). Each schedule's plan (traffic, fault kinds,
//! their times and lengths) comes from its seed alone; the processes' own timing does not, so a
//! replay runs the same plan, not the same interleaving.
//!
//! What the checker enforces, rule by rule (docs/durability.md):
//! - **lost**: an event answered 2xx (`published`, `spooled`, `dead_lettered`, `duplicate`,
//!   `fulfilment_requested`) is in Kafka once faults heal and every spool is drained ("a 2xx
//!   means the event is durably in Kafka or in the durable spool"). Seen by a tap that reads
//!   every topic during the run, or in the final read. One exception, classified and printed,
//!   never hidden: the broker (memory storage) killed and restarted empty within 2 s of the
//!   answer, before the tap could read the record: the broker forgot it.
//! - **duplicates beyond the guarantee**: an event on its topic more than once in the final
//!   read is allowed only where docs/durability.md says one can happen: it was sent more than once (a
//!   retry: the consistency window, a restarted replica, a failed mark), or a relay that held it
//!   was killed or stopped, or the broker restarted, after it was sent (a write in flight at a
//!   crash, the idempotent producer's id forgotten). Anything else counts.
//! - **order**: a v1 lane posts one event at a time to one relay under one key; events it had
//!   acknowledged appear on their partition in the order they were acknowledged.
//! - **false verdicts**: a `fulfilment_pending` answered 200 whose correlation id the fulfiller
//!   never answered `fulfilled` (or, answered from the relays' memory of verdicts, about a
//!   reward no request of which was answered `fulfilled`); a `mark_fulfilled` call for a commission the fulfiller never
//!   answered `fulfilled`.
//! - **problems**: a relay that exited without being told to, a request unanswered long past
//!   its deadline, a second relay on an owned spool that was not refused.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{RelayProcess, Tansu};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const PATH_TOKEN: &str = "v1-path-token-0123456789";
const BEARER: &str = "v2-bearer-token-0123456789";
const DEDUP_TOPIC: &str = "firstpromoter.dedup";
const REQUESTS: &str = "firstpromoter.fulfilment_pending";
const DEAD_LETTERS: &str = "firstpromoter.dead_letter";
/// How long the read of what a broker holds, before it is restarted empty, lasts.
const SNAPSHOT_READ: Duration = Duration::from_secs(2);
const EVENT_TOPICS: &[&str] = &[
    "firstpromoter.lead_signup",
    "firstpromoter.referral.created",
    "firstpromoter.commission.updated",
];
/// Runs a relay or a drain as `nobody`.
const UNPRIVILEGED: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

/// Longest a request may go unanswered: the relay's deadlines (3 s) and a margin.
const HANG: Duration = Duration::from_secs(9);

/// A small deterministic generator (splitmix64): the schedule's plan comes from it alone.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

/// What the proxy between the relays (and every other client) and the broker does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    Pass,
    Delay(Duration),
    /// Bytes are held, not forwarded, until the mode changes.
    Blackhole,
    /// Every connection is closed and new ones are refused.
    Cut,
}

/// A TCP proxy on `listen` forwarding to the broker's port, whose behaviour `link` sets.
async fn proxy(listen: tokio::net::TcpListener, broker: u16, link: watch::Receiver<Link>) {
    loop {
        let Ok((client, _)) = listen.accept().await else {
            continue;
        };
        if *link.borrow() == Link::Cut {
            continue;
        }
        let link = link.clone();
        tokio::spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", broker)).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                _ = pipe(client_read, server_write, link.clone()) => {}
                _ = pipe(server_read, client_write, link) => {}
            }
        });
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = link.changed() => {
                if *link.borrow() == Link::Cut { return; }
                continue;
            }
        };
        let Ok(n) = read else { return };
        if n == 0 {
            return;
        }
        loop {
            let mode = *link.borrow();
            match mode {
                Link::Pass => break,
                Link::Delay(by) => {
                    tokio::time::sleep(by).await;
                    break;
                }
                Link::Cut => return,
                Link::Blackhole => {
                    if link.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// One request the client made and what became of it.
#[derive(Debug, Clone)]
struct Attempt {
    /// The event's identity: its event id (`fp-event-id`), or for fulfilment its reward.
    event: String,
    kind: Kind,
    lane: usize,
    relay: usize,
    sent: Instant,
    answered: Instant,
    /// None: no answer (connection refused or reset, or the client's timeout).
    status: Option<u16>,
    body: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A v1 standard event (lead_signup), one lane posting in order to one relay.
    V1,
    /// A v2 event (referral.created), retried to either replica.
    V2,
    /// v1 fulfilment_pending.
    Fulfil,
    /// A v2 approval of a points commission.
    Approval,
}

impl Attempt {
    fn acknowledged(&self) -> bool {
        matches!(self.status, Some(200 | 202))
            && matches!(
                self.body["status"].as_str(),
                Some(
                    "published"
                        | "spooled"
                        | "dead_lettered"
                        | "duplicate"
                        | "fulfilment_requested"
                )
            )
    }
}

/// What happened to the processes, in order, with when.
#[derive(Default)]
struct Timeline(Mutex<Vec<(Instant, String)>>);

impl Timeline {
    fn note(&self, what: impl Into<String>) {
        self.0.lock().unwrap().push((Instant::now(), what.into()));
    }
}

/// What the fulfiller answered: correlation ids and commissions it said `fulfilled` for.
#[derive(Default)]
struct Verdicts {
    fulfilled_correlations: HashSet<String>,
    fulfilled_commissions: HashSet<u64>,
    /// v1 rewards (`data.id`, the request's key) some request about which was answered
    /// `fulfilled`: a later check may be answered 200 without a request of its own.
    fulfilled_rewards: HashSet<String>,
}

/// The figures of one schedule (or all of them).
#[derive(Default, Debug, Clone)]
struct Figures {
    schedules: usize,
    acknowledged: usize,
    lost: usize,
    duplicates: usize,
    order: usize,
    false_verdicts: usize,
    problems: usize,
    /// Classified, allowed, printed.
    forgotten_by_broker: usize,
    allowed_duplicates: usize,
    faults: usize,
}

impl Figures {
    fn add(&mut self, other: &Figures) {
        self.schedules += other.schedules;
        self.acknowledged += other.acknowledged;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.order += other.order;
        self.false_verdicts += other.false_verdicts;
        self.problems += other.problems;
        self.forgotten_by_broker += other.forgotten_by_broker;
        self.allowed_duplicates += other.allowed_duplicates;
        self.faults += other.faults;
    }
    fn failed(&self) -> bool {
        self.lost + self.duplicates + self.order + self.false_verdicts + self.problems > 0
    }
}

/// What scripts/chaos.sh sets: `CHAOS_SEEDS` (most schedules), `CHAOS_FIRST_SEED`,
/// `CHAOS_BUDGET` (seconds of wall time after which no new schedule starts; 0: none) and
/// `CHAOS_TRAFFIC` (seconds of traffic and faults per schedule).
struct Settings {
    seeds: u64,
    first: u64,
    budget: Option<Duration>,
    traffic: Duration,
}

fn settings() -> Settings {
    let number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    Settings {
        seeds: number("CHAOS_SEEDS", 2),
        first: number("CHAOS_FIRST_SEED", 1),
        budget: Some(number("CHAOS_BUDGET", 0))
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        traffic: Duration::from_secs(number("CHAOS_TRAFFIC", 10)),
    }
}

#[test]
fn seeded_fault_schedules_lose_nothing_acknowledged() {
    let settings = settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut total = Figures::default();
    let mut failing = Vec::new();
    let started = Instant::now();
    let duration = settings.traffic;
    for seed in settings.first..settings.first + settings.seeds {
        if settings
            .budget
            .is_some_and(|budget| started.elapsed() >= budget)
        {
            break;
        }
        let seed = &seed;
        let (figures, report) = runtime.block_on(schedule(*seed, duration));
        eprintln!(
            "seed {seed}: {} acknowledged, {} faults, {} lost, {} duplicates beyond the guarantee \
             ({} allowed), {} order violations, {} false verdicts, {} problems, {} forgotten by the broker",
            figures.acknowledged,
            figures.faults,
            figures.lost,
            figures.duplicates,
            figures.allowed_duplicates,
            figures.order,
            figures.false_verdicts,
            figures.problems,
            figures.forgotten_by_broker
        );
        if figures.failed() {
            eprintln!(
                "seed {seed} FAILED; replay: scripts/chaos.sh --seeds 1 --first-seed {seed} --traffic {}\n{report}",
                duration.as_secs()
            );
            failing.push(*seed);
        }
        total.add(&figures);
    }
    println!(
        "chaos: {} schedules, {} acknowledged, {} lost, {} duplicates beyond the guarantee, {} order violations, {} false verdicts ({} problems, {} faults, {} allowed duplicates, {} forgotten by the broker; {:.0} s)",
        total.schedules,
        total.acknowledged,
        total.lost,
        total.duplicates,
        total.order,
        total.false_verdicts,
        total.problems,
        total.faults,
        total.allowed_duplicates,
        total.forgotten_by_broker,
        started.elapsed().as_secs_f64()
    );
    assert!(failing.is_empty(), "failing seeds: {failing:?}");
}

/// The relays' shared settings; `dir` is the relay's spool.
fn relay_env(dir: &str, api: SocketAddr) -> Vec<(String, String)> {
    [
        ("FP_RELAY_AUTH_PATH_TOKENS", format!(r#"["{PATH_TOKEN}"]"#)),
        ("FP_RELAY_AUTH_TOKENS", format!(r#"["{BEARER}"]"#)),
        ("FP_RELAY_SPOOL_ENABLED", "true".into()),
        ("FP_RELAY_SPOOL_DIR", dir.into()),
        ("FP_RELAY_SPOOL_HANDOFF_AFTER", "500ms".into()),
        ("FP_RELAY_SPOOL_UNKNOWN_TOPIC_WAIT", "10s".into()),
        ("FP_RELAY_DEDUP_ENABLED", "true".into()),
        ("FP_RELAY_DEDUP_TOPIC", DEDUP_TOPIC.into()),
        ("FP_RELAY_DEDUP_LOAD_TIMEOUT", "5s".into()),
        ("FP_RELAY_FULFILMENT_TIMEOUT", "3s".into()),
        ("FP_RELAY_FULFILMENT_V2__ENABLED", "true".into()),
        (
            "FP_RELAY_FIRSTPROMOTER_API_URL",
            format!("http://{api}/api/v2/company"),
        ),
        ("FP_RELAY_FIRSTPROMOTER_ALLOW_INSECURE_HTTP", "true".into()),
        ("FP_RELAY_FIRSTPROMOTER_API_KEY", common::API_KEY.into()),
        ("FP_RELAY_FIRSTPROMOTER_ACCOUNT_ID", common::ACCOUNT.into()),
        ("FP_RELAY_FIRSTPROMOTER_RETRY_INITIAL", "200ms".into()),
        ("FP_RELAY_FIRSTPROMOTER_RETRY_MAX", "1s".into()),
        ("FP_RELAY_CONFIG", consumer_config()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A configuration file with what has no environment variable of its own: the consumer
/// groups' timeouts, so a group joins in about a second on tansu.
fn consumer_config() -> String {
    let path = std::env::temp_dir().join("fp-relay-chaos-consumers.toml");
    std::fs::write(
        &path,
        "[kafka.properties]\nlog_level = \"2\"\n[kafka.consumer_properties]\n\"session.timeout.ms\" = \"2000\"\n\"heartbeat.interval.ms\" = \"500\"\n",
    )
    .unwrap();
    path.display().to_string()
}

/// A relay process slot: the process when it runs, its spool, and whether we stopped it.
struct Slot {
    process: Option<RelayProcess>,
    dir: PathBuf,
}

/// Everything a schedule shares between its tasks.
struct World {
    seed: u64,
    bootstrap: String,
    api: SocketAddr,
    slots: Mutex<Vec<Slot>>,
    addrs: Mutex<Vec<Option<SocketAddr>>>,
    attempts: Mutex<Vec<Attempt>>,
    timeline: Timeline,
    problems: Mutex<Vec<String>>,
    /// Kills, SIGTERMs and broker restarts, with when: a duplicate after one is allowed.
    crashes: Mutex<Vec<Instant>>,
    broker_restarts: Mutex<Vec<Instant>>,
    /// When a relay's spool files were made unreadable, by relay: an event it had spooled may
    /// then reach Kafka after later ones (docs/durability.md: in order "unless a read failed on the way").
    unreadable: Mutex<Vec<(usize, Instant)>>,
    /// Before each broker kill: when the read of what it held began, and when it was killed.
    snapshots: Mutex<Vec<(Instant, Instant)>>,
    /// When a relay's producer was replaced (its writes in flight purged: a duplicate after
    /// one is allowed), as seen by polling `fp_relay_kafka_producer_rebuilds_total`.
    rebuilds: Mutex<Vec<Instant>>,
    verdicts: Mutex<Verdicts>,
    marked: Mutex<Vec<u64>>,
    /// Event ids the tap saw on any topic during the run.
    seen: Mutex<HashSet<String>>,
    stop: AtomicBool,
}

impl World {
    fn launch(&self, index: usize, wrapper: &[&str]) -> RelayProcess {
        let dir = self.slots.lock().unwrap()[index].dir.display().to_string();
        let env = relay_env(&dir, self.api);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        RelayProcess::launch(&self.bootstrap, &env, wrapper)
    }

    /// Starts relay `index` on its spool (under `wrapper`), waiting up to 20 s for it to be
    /// ready; it serves traffic from then on. Relays run as an unprivileged user (root ignores
    /// file modes, and the unreadable-spool fault needs them to count).
    async fn start_relay(&self, index: usize, wrapper: &[&str]) {
        let mut wrapped = UNPRIVILEGED.to_vec();
        wrapped.extend_from_slice(wrapper);
        let mut process = self.launch(index, &wrapped);
        let mut ready = false;
        for _ in 0..100 {
            if process.exited().is_some() {
                break;
            }
            if process
                .wait_ready(Duration::from_millis(200))
                .await
                .is_some()
            {
                ready = true;
                break;
            }
        }
        self.timeline.note(format!(
            "relay {index} started{} ({})",
            if wrapper.is_empty() {
                String::new()
            } else {
                format!(" under {}", wrapper.join(" "))
            },
            if ready {
                "ready"
            } else {
                "not ready after 20 s"
            }
        ));
        self.addrs.lock().unwrap()[index] = Some(process.addr);
        self.slots.lock().unwrap()[index].process = Some(process);
    }

    fn take_relay(&self, index: usize) -> Option<RelayProcess> {
        self.addrs.lock().unwrap()[index] = None;
        let mut process = self.slots.lock().unwrap()[index].process.take()?;
        if let Some((status, tail)) = process.exited() {
            self.problems.lock().unwrap().push(format!(
                "relay {index} had exited by itself: {status:?}\n{tail}"
            ));
        }
        Some(process)
    }

    fn check_alive(&self) {
        let mut slots = self.slots.lock().unwrap();
        for (index, slot) in slots.iter_mut().enumerate() {
            if let Some(process) = &mut slot.process {
                if let Some((status, tail)) = process.exited() {
                    self.problems.lock().unwrap().push(format!(
                        "relay {index} exited by itself: {status:?}\n{tail}"
                    ));
                    slot.process = None;
                    self.addrs.lock().unwrap()[index] = None;
                }
            }
        }
    }

    fn spool_drain(&self, index: usize, timeout: &str) -> std::process::Child {
        let dir = self.slots.lock().unwrap()[index].dir.display().to_string();
        Command::new(UNPRIVILEGED[0])
            .args(&UNPRIVILEGED[1..])
            .arg(env!("CARGO_BIN_EXE_fp-relay"))
            .args([
                "spool",
                "drain",
                "--dir",
                &dir,
                "--brokers",
                &self.bootstrap,
            ])
            .args(["--timeout", timeout])
            .env("FP_RELAY_DEDUP_ENABLED", "true")
            .env("FP_RELAY_DEDUP_TOPIC", DEDUP_TOPIC)
            .env("FP_RELAY_DEDUP_LOAD_TIMEOUT", "3s")
            .env("FP_RELAY_CONFIG", consumer_config())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

/// One request to a relay: the status and JSON body, or `None` when it could not be sent or
/// was not answered within [`HANG`].
async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Option<(u16, Value)> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let exchange = async {
        let response = client
            .request(request.body(Full::new(body)).ok()?)
            .await
            .ok()?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    };
    tokio::time::timeout(HANG + Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}

/// Polls each relay's `fp_relay_kafka_producer_rebuilds_total` and notes when it rises.
async fn watch_rebuilds(world: Arc<World>) {
    let mut last: HashMap<SocketAddr, f64> = HashMap::new();
    loop {
        let admins: Vec<SocketAddr> = world
            .slots
            .lock()
            .unwrap()
            .iter()
            .filter_map(|slot| slot.process.as_ref().map(|p| p.admin))
            .collect();
        for admin in admins {
            if let Some(now) = metric_of(admin, "fp_relay_kafka_producer_rebuilds_total").await {
                if last.insert(admin, now).is_some_and(|before| now > before) {
                    world.rebuilds.lock().unwrap().push(Instant::now());
                    world
                        .timeline
                        .note(format!("a producer was replaced ({admin})"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `fp_relay_spool_records` of the relay whose admin listener is `admin`; `None` when it does
/// not answer.
async fn spool_records(admin: SocketAddr) -> Option<f64> {
    metric_of(admin, "fp_relay_spool_records").await
}

/// The value of the metric `name` (no labels) on the admin listener `admin`.
async fn metric_of(admin: SocketAddr, name: &str) -> Option<f64> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::get(format!("http://{admin}/metrics"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = tokio::time::timeout(Duration::from_secs(2), client.request(request))
        .await
        .ok()?
        .ok()?;
    let text = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

fn consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("session.timeout.ms", "2000")
        .set("heartbeat.interval.ms", "500")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("log_level", "0")
        .create()
        .unwrap()
}

fn header<'m>(message: &'m rdkafka::message::BorrowedMessage<'m>, name: &str) -> Option<String> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// Reads every event topic for the whole run, noting each event id it sees. Partitions are
/// assigned, not subscribed through a group (a group rejoins for seconds after every broker
/// restart, and what the broker forgot meanwhile was never seen), and assigned afresh from the
/// beginning after each restart.
fn tap(world: Arc<World>) {
    let mut epoch = usize::MAX;
    let mut consumer: Option<BaseConsumer> = None;
    while !world.stop.load(Ordering::Acquire) {
        let now = world.broker_restarts.lock().unwrap().len();
        if now != epoch {
            epoch = now;
            let fresh: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &world.bootstrap)
                .set("group.id", format!("chaos-tap-{}", world.seed))
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "50")
                .set("log_level", "0")
                .create()
                .unwrap();
            let mut partitions = rdkafka::TopicPartitionList::new();
            for topic in EVENT_TOPICS.iter().chain([&DEAD_LETTERS]) {
                for partition in 0..4 {
                    let _ = partitions.add_partition_offset(
                        topic,
                        partition,
                        rdkafka::Offset::Beginning,
                    );
                }
            }
            let _ = fresh.assign(&partitions);
            consumer = Some(fresh);
        }
        let Some(consumer) = &consumer else { continue };
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
            if let Some(id) = header(&message, "fp-event-id") {
                world.seen.lock().unwrap().insert(id);
            }
        }
    }
}

/// The fulfiller: answers each request fast, late (after its deadline) or never, as the seed
/// and the reward say; keeps what it answered `fulfilled`.
fn fulfiller(world: Arc<World>) {
    let consumer = consumer(&world.bootstrap, &format!("chaos-fulfiller-{}", world.seed));
    consumer.subscribe(&[REQUESTS]).unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &world.bootstrap)
        .set("log_level", "0")
        .create()
        .unwrap();
    let mut late: Vec<(Instant, String, String, String, Vec<u8>)> = Vec::new();
    let mut rng = Rng::new(world.seed ^ 0xf00d);
    while !world.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        late.retain(|(at, topic, correlation, outcome, key)| {
            if *at > now {
                return true;
            }
            let value = json!({ "outcome": outcome }).to_string();
            let _ = producer.send(BaseRecord::to(topic).key(key).payload(&value).headers(
                OwnedHeaders::new().insert(Header {
                    key: "fp-correlation-id",
                    value: Some(correlation),
                }),
            ));
            false
        });
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let (Some(correlation), Some(reply_topic)) = (
            header(&message, "fp-correlation-id"),
            header(&message, "fp-reply-topic"),
        ) else {
            continue;
        };
        let key = message.key().unwrap_or_default().to_vec();
        let commission = (header(&message, "fp-webhook-version").as_deref() == Some("v2"))
            .then(|| String::from_utf8_lossy(&key).parse::<u64>().ok())
            .flatten();
        let outcome = match rng.below(10) {
            0 => "pending",
            1 => "failed",
            _ => "fulfilled",
        };
        let when = match rng.below(10) {
            0 => None,                         // never
            1 => Some(Duration::from_secs(4)), // after the relay's 3 s hold
            _ => Some(Duration::ZERO),
        };
        let Some(when) = when else { continue };
        if outcome == "fulfilled" {
            let mut verdicts = world.verdicts.lock().unwrap();
            verdicts.fulfilled_correlations.insert(correlation.clone());
            if let Some(commission) = commission {
                verdicts.fulfilled_commissions.insert(commission);
            } else {
                verdicts
                    .fulfilled_rewards
                    .insert(String::from_utf8_lossy(&key).into_owned());
            }
        }
        late.push((
            Instant::now() + when,
            reply_topic,
            correlation,
            outcome.to_owned(),
            key,
        ));
    }
    let _ = producer.flush(Duration::from_secs(2));
}

/// One planned request: the event's identity, body, headers, path, and the relays it goes to
/// in turn (a retry goes to the next).
type Planned = (
    String,
    Bytes,
    Vec<(&'static str, String)>,
    String,
    Vec<usize>,
);

/// One lane of FirstPromoter traffic until `until`.
async fn lane(world: Arc<World>, lane: usize, kind: Kind, until: Instant) {
    let mut rng = Rng::new(world.seed.wrapping_mul(31).wrapping_add(lane as u64));
    let mut n = 0u64;
    let base = world.seed * 1_000_000 + lane as u64 * 10_000;
    while Instant::now() < until {
        n += 1;
        let id = base + n;
        let (event, body, headers, path, relays): Planned = match kind {
            Kind::V1 => (
                id.to_string(),
                Bytes::from(
                    json!({"event": {"id": id, "type": "lead_signup"},
                                   "data": {"id": lane, "email": format!("l{id}@example.com")}})
                    .to_string(),
                ),
                vec![],
                format!("/webhooks/firstpromoter/{PATH_TOKEN}"),
                vec![lane % 2],
            ),
            Kind::V2 => {
                let event = format!("evt-{id}");
                let body = json!({"event_id": event, "event_type": "referral.created",
                                  "entity_id": id, "data": {"id": id}})
                .to_string();
                // FirstPromoter retries the same delivery: to either replica.
                let first = rng.below(2) as usize;
                let tries = 1 + rng.below(3) as usize;
                let relays = (0..tries).map(|t| (first + t) % 2).collect();
                (
                    event.clone(),
                    Bytes::from(body),
                    vec![
                        ("authorization", format!("Bearer {BEARER}")),
                        ("x-event-id", event),
                        ("x-event-type", "referral.created".into()),
                    ],
                    "/webhooks/firstpromoter".into(),
                    relays,
                )
            }
            Kind::Fulfil => {
                // A few rewards, each asked again at later checks.
                let reward = base + 1 + rng.below(5);
                (
                    format!("reward-{reward}"),
                    Bytes::from(
                        json!({"event": {"id": id, "type": "fulfilment_pending"},
                                    "data": {"id": reward, "status": "pending"}})
                        .to_string(),
                    ),
                    vec![],
                    format!("/webhooks/firstpromoter/{PATH_TOKEN}"),
                    vec![rng.below(2) as usize],
                )
            }
            Kind::Approval => {
                let event = format!("evt-{id}");
                (event.clone(),
                 Bytes::from(json!({"event_id": event, "event_type": "commission.updated", "entity_id": id,
                                    "changes": {"status": ["pending", "approved"]},
                                    "data": {"id": id, "unit": "points", "status": "approved"}}).to_string()),
                 vec![("authorization", format!("Bearer {BEARER}"))],
                 "/webhooks/firstpromoter".into(), vec![rng.below(2) as usize, rng.below(2) as usize])
            }
        };
        for (attempt, relay) in relays.iter().enumerate() {
            let Some(addr) = world.addrs.lock().unwrap()[*relay] else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let sent = Instant::now();
            let answer = post(addr, &path, &headers, body.clone()).await;
            let answered = Instant::now();
            let (status, reply) = answer.map_or((None, Value::Null), |(s, b)| (Some(s), b));
            if answered - sent > HANG {
                world.problems.lock().unwrap().push(format!(
                    "{kind:?} {event} to relay {relay}: answered after {:?}",
                    answered - sent
                ));
            }
            let record = Attempt {
                event: event.clone(),
                kind,
                lane,
                relay: *relay,
                sent,
                answered,
                status,
                body: reply,
            };
            let acknowledged = record.acknowledged();
            world.attempts.lock().unwrap().push(record);
            // v2 retries only what was not acknowledged, unless the plan says a retry crosses
            // the answer (the consistency window).
            if acknowledged && (kind != Kind::V2 || attempt > 0) {
                break;
            }
            tokio::time::sleep(rng.millis(0, 300)).await;
        }
        if kind == Kind::Fulfil || kind == Kind::Approval {
            tokio::time::sleep(rng.millis(50, 300)).await;
        } else {
            tokio::time::sleep(rng.millis(0, 40)).await;
        }
    }
}

/// The faults a schedule draws from.
const FAULTS: &[&str] = &[
    "freeze broker",
    "restart broker empty",
    "delay link",
    "blackhole link",
    "cut link",
    "kill -9 relay",
    "SIGTERM relay",
    "kill -9 relay, spool drain (twice, the first interrupted)",
    "relay under prlimit --fsize (disk full)",
    "second relay on an owned spool",
    "spool files unreadable across a restart",
    "redrive dead letters (twice)",
];

/// Sets the mode of every file in the spool directory `dir` (the database, its WAL, files set
/// aside; not the directory, not the owner lock).
fn set_modes(dir: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        // The owner lock stays readable: a relay that cannot take it refuses to start, as it
        // should, which is not the fault under test (an unreadable database is).
        if entry.file_type().is_ok_and(|t| t.is_file()) && entry.file_name() != "owner.lock" {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode));
        }
    }
}

/// Every topic the relays write, created as an operator would before starting them.
async fn create_topics(bootstrap: &str) {
    common::create_topic(bootstrap, DEDUP_TOPIC, 1).await;
    for topic in
        EVENT_TOPICS
            .iter()
            .chain(&[DEAD_LETTERS, REQUESTS, "firstpromoter.fulfilment_replies"])
    {
        common::create_topic(bootstrap, topic, 4).await;
    }
}

/// Runs one schedule; its figures and, for a failing one, the report to print.
async fn schedule(seed: u64, duration: Duration) -> (Figures, String) {
    let mut rng = Rng::new(seed);
    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = proxy_listener.local_addr().unwrap().port();
    let broker_port = common::free_port();
    let (link, link_rx) = watch::channel(Link::Pass);
    let proxy_task = tokio::spawn(proxy(proxy_listener, broker_port, link_rx));
    let mut broker =
        tokio::task::block_in_place(|| Tansu::start_on_advertising(broker_port, proxy_port));
    let bootstrap = format!("127.0.0.1:{proxy_port}");
    create_topics(&bootstrap).await;
    let (marked, api) = common::recording_api().await;
    let dirs: Vec<PathBuf> = (0..2).map(|_| common::spool::spool_dir()).collect();
    for dir in &dirs {
        std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
    }
    let world = Arc::new(World {
        seed,
        bootstrap: bootstrap.clone(),
        api,
        slots: Mutex::new(
            dirs.iter()
                .map(|dir| Slot {
                    process: None,
                    dir: dir.clone(),
                })
                .collect(),
        ),
        addrs: Mutex::new(vec![None, None]),
        attempts: Mutex::default(),
        timeline: Timeline::default(),
        problems: Mutex::default(),
        crashes: Mutex::default(),
        broker_restarts: Mutex::default(),
        snapshots: Mutex::default(),
        unreadable: Mutex::default(),
        rebuilds: Mutex::default(),
        verdicts: Mutex::default(),
        marked: Mutex::default(),
        seen: Mutex::default(),
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();
    for index in 0..2 {
        world.start_relay(index, &[]).await;
    }
    world.check_alive();
    if world.addrs.lock().unwrap().iter().any(Option::is_none) {
        let problems = world.problems.lock().unwrap().join("\n");
        let figures = Figures {
            schedules: 1,
            problems: 1,
            ..Figures::default()
        };
        return (figures, format!("the relays did not start:\n{problems}"));
    }
    let tap = std::thread::spawn({
        let world = world.clone();
        move || tap(world)
    });
    let fulfiller = std::thread::spawn({
        let world = world.clone();
        move || fulfiller(world)
    });
    let until = Instant::now() + duration;
    let kinds = [
        Kind::V1,
        Kind::V1,
        Kind::V2,
        Kind::V2,
        Kind::Fulfil,
        Kind::Approval,
    ];
    let lanes: Vec<_> = kinds
        .iter()
        .enumerate()
        .map(|(n, kind)| tokio::spawn(lane(world.clone(), n, *kind, until)))
        .collect();

    let watcher = tokio::spawn(watch_rebuilds(world.clone()));
    // Faults at random times until the traffic stops, drawn from FAULTS (or the names in
    // CHAOS_FAULTS, comma separated, to aim at one).
    let only = std::env::var("CHAOS_FAULTS").unwrap_or_default();
    let drawn: Vec<&str> = FAULTS
        .iter()
        .copied()
        .filter(|f| only.is_empty() || only.split(',').any(|o| o.trim() == *f))
        .collect();
    assert!(
        !drawn.is_empty(),
        "CHAOS_FAULTS names no fault of {FAULTS:?}"
    );
    let mut faults = 0;
    while Instant::now() + Duration::from_secs(1) < until {
        tokio::time::sleep(rng.millis(300, 2000)).await;
        world.check_alive();
        let fault = drawn[rng.below(drawn.len() as u64) as usize];
        let relay = rng.below(2) as usize;
        let length = rng.millis(500, 3000);
        faults += 1;
        world
            .timeline
            .note(format!("fault: {fault} (relay {relay}, {length:?})"));
        match fault {
            "freeze broker" => {
                broker.freeze();
                tokio::time::sleep(length).await;
                broker.thaw();
            }
            "restart broker empty" => {
                // What the broker holds, read just before it is killed: an event acknowledged
                // after this read began is the only kind the broker can be blamed for losing.
                // Every topic at once, each for SNAPSHOT_READ: a read of 300 ms each missed
                // records on a loaded machine (a consumer can take longer than that to fetch its
                // first batch), and an event the snapshot missed was reported lost.
                let snapshot = Instant::now();
                let reads: Vec<_> = EVENT_TOPICS
                    .iter()
                    .chain([&DEAD_LETTERS])
                    .map(|topic| {
                        let (bootstrap, topic) = (bootstrap.clone(), (*topic).to_owned());
                        tokio::spawn(async move {
                            common::consume_all(&bootstrap, &topic, SNAPSHOT_READ).await
                        })
                    })
                    .collect();
                for read in reads {
                    for record in read.await.unwrap() {
                        if let Some(id) = record.header("fp-event-id") {
                            world.seen.lock().unwrap().insert(id.to_owned());
                        }
                    }
                }
                broker.stop();
                world
                    .snapshots
                    .lock()
                    .unwrap()
                    .push((snapshot, Instant::now()));
                world.broker_restarts.lock().unwrap().push(Instant::now());
                tokio::time::sleep(length.min(Duration::from_secs(1))).await;
                broker = tokio::task::block_in_place(|| {
                    Tansu::start_on_advertising(broker_port, proxy_port)
                });
                // As an operator (or auto-creation) would: the topics come back.
                create_topics(&bootstrap).await;
            }
            "delay link" => {
                let _ = link.send(Link::Delay(rng.millis(20, 400)));
                tokio::time::sleep(length).await;
                let _ = link.send(Link::Pass);
            }
            "blackhole link" => {
                let _ = link.send(Link::Blackhole);
                tokio::time::sleep(length).await;
                let _ = link.send(Link::Pass);
            }
            "cut link" => {
                let _ = link.send(Link::Cut);
                tokio::time::sleep(length).await;
                let _ = link.send(Link::Pass);
            }
            "kill -9 relay" | "SIGTERM relay" => {
                if let Some(process) = world.take_relay(relay) {
                    world.crashes.lock().unwrap().push(Instant::now());
                    if fault == "kill -9 relay" {
                        process.kill();
                    } else {
                        let (status, _) = process.terminate().await;
                        if !status.success() {
                            world
                                .problems
                                .lock()
                                .unwrap()
                                .push(format!("relay {relay} SIGTERM exit {status:?}"));
                        }
                    }
                    tokio::time::sleep(length.min(Duration::from_millis(1500))).await;
                    world.start_relay(relay, &[]).await;
                }
            }
            "kill -9 relay, spool drain (twice, the first interrupted)" => {
                if let Some(process) = world.take_relay(relay) {
                    world.crashes.lock().unwrap().push(Instant::now());
                    process.kill();
                    let mut first = world.spool_drain(relay, "3s");
                    tokio::time::sleep(rng.millis(50, 800)).await;
                    let _ = first.kill();
                    let _ = first.wait();
                    world.crashes.lock().unwrap().push(Instant::now());
                    let mut second = world.spool_drain(relay, "3s");
                    let _ = tokio::task::spawn_blocking(move || second.wait()).await;
                    world.start_relay(relay, &[]).await;
                }
            }
            "relay under prlimit --fsize (disk full)" => {
                if let Some(process) = world.take_relay(relay) {
                    world.crashes.lock().unwrap().push(Instant::now());
                    let (_, _) = process.terminate().await;
                    // From 1 MB: SQLite must grow its WAL's shared-memory file (32 KiB per 4,096
                    // WAL frames) to open a database a killed relay left; a limit below that
                    // makes the relay refuse to start naming the disk (docs/durability.md), which is the
                    // disk's fault at start, not the disk filling while it serves.
                    let size = format!("--fsize={}", 1_000_000 + rng.below(2_000_000));
                    world.start_relay(relay, &["prlimit", &size]).await;
                    tokio::time::sleep(length).await;
                    if let Some(process) = world.take_relay(relay) {
                        world.crashes.lock().unwrap().push(Instant::now());
                        let _ = process.terminate().await;
                    }
                    world.start_relay(relay, &[]).await;
                }
            }
            "second relay on an owned spool" => {
                if world.addrs.lock().unwrap()[relay].is_some() {
                    let mut intruder = world.launch(relay, UNPRIVILEGED);
                    let refused = common::eventually(Duration::from_secs(10), async || {
                        intruder.exited().is_some()
                    })
                    .await;
                    match intruder.exited() {
                        Some((status, _)) if refused && !status.success() => {}
                        other => {
                            world.problems.lock().unwrap().push(format!(
                                "a second relay on relay {relay}'s spool was not refused: {:?}",
                                other.map(|(s, _)| s)
                            ));
                            intruder.kill();
                        }
                    }
                }
            }
            "spool files unreadable across a restart" => {
                let dir = world.slots.lock().unwrap()[relay].dir.clone();
                set_modes(&dir, 0o000);
                world
                    .unreadable
                    .lock()
                    .unwrap()
                    .push((relay, Instant::now()));
                if let Some(process) = world.take_relay(relay) {
                    world.crashes.lock().unwrap().push(Instant::now());
                    process.kill();
                    world.start_relay(relay, &[]).await;
                }
                tokio::time::sleep(length).await;
                set_modes(&dir, 0o600);
                world
                    .timeline
                    .note(format!("relay {relay}'s spool files readable again"));
            }
            "redrive dead letters (twice)" => {
                for _ in 0..2 {
                    let mut redrive = Command::new(env!("CARGO_BIN_EXE_fp-relay"))
                        .args(["redrive", "--brokers", &bootstrap, "--idle-exit", "1s"])
                        .env("FP_RELAY_DEDUP_ENABLED", "true")
                        .env("FP_RELAY_DEDUP_TOPIC", DEDUP_TOPIC)
                        .env("FP_RELAY_CONFIG", consumer_config())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap();
                    let waited = tokio::time::timeout(
                        Duration::from_secs(20),
                        tokio::task::spawn_blocking(move || redrive.wait()),
                    )
                    .await;
                    if waited.is_err() {
                        world
                            .problems
                            .lock()
                            .unwrap()
                            .push("redrive ran past 20 s".into());
                    }
                }
            }
            _ => unreachable!("every fault is handled"),
        }
    }
    for lane in lanes {
        let _ = lane.await;
    }
    world.timeline.note("traffic stopped; healing");

    // Heal: the link, the broker, every relay up; then every spool drained.
    let _ = link.send(Link::Pass);
    world.check_alive();
    for index in 0..2 {
        if world.addrs.lock().unwrap()[index].is_none() {
            world.start_relay(index, &[]).await;
        }
    }
    let drained = common::eventually(Duration::from_secs(60), async || {
        let mut empty = true;
        for index in 0..2 {
            let admin = world.slots.lock().unwrap()[index]
                .process
                .as_ref()
                .map(|p| p.admin);
            match admin {
                Some(admin) => empty &= spool_records(admin).await == Some(0.0),
                None => empty = false,
            }
        }
        empty
    })
    .await;
    if !drained {
        world
            .problems
            .lock()
            .unwrap()
            .push("a spool was not empty 60 s after healing".into());
    }
    // Replies still on their way (late ones) and marks of approvals.
    tokio::time::sleep(Duration::from_secs(6)).await;
    world.stop.store(true, Ordering::Release);
    watcher.abort();
    let _ = tap.join();
    let _ = fulfiller.join();
    *world.marked.lock().unwrap() = marked.lock().unwrap().clone();

    // The final read of every topic the traffic reaches.
    let mut final_read: HashMap<String, Vec<common::Consumed>> = HashMap::new();
    for topic in EVENT_TOPICS.iter().chain([&DEAD_LETTERS, &REQUESTS]) {
        final_read.insert(
            (*topic).to_owned(),
            common::consume_all(&bootstrap, topic, Duration::from_secs(2)).await,
        );
    }
    world.check_alive();
    let mut report = String::new();
    let figures = check(&world, &final_read, faults, &mut report);
    if figures.failed() {
        for (index, slot) in world.slots.lock().unwrap().iter().enumerate() {
            if let Some(process) = &slot.process {
                let text = process.log_text();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                report.push_str(&format!("relay {index}'s last log lines:\n{tail}\n"));
                let kept = std::env::temp_dir().join(format!(
                    "fp-relay-chaos-seed{}-relay{index}.log",
                    world.seed
                ));
                if std::fs::write(&kept, &text).is_ok() {
                    report.push_str(&format!("relay {index}'s whole log: {}\n", kept.display()));
                }
                let admin = process.admin;
                let metrics = tokio::task::block_in_place(|| {
                    Command::new("curl")
                        .args(["-s", "-m", "2", &format!("http://{admin}/metrics")])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default()
                });
                let spool: Vec<&str> = metrics
                    .lines()
                    .filter(|l| {
                        l.starts_with("fp_relay_spool")
                            || l.starts_with("fp_relay_kafka_produce_total")
                            || l.starts_with("fp_relay_ready")
                    })
                    .collect();
                report.push_str(&format!(
                    "relay {index}'s spool metrics:\n{}\n",
                    spool.join("\n")
                ));
                if std::env::var_os("CHAOS_GDB").is_some() {
                    let stacks = Command::new("gdb")
                        .args([
                            "-p",
                            &process.pid().to_string(),
                            "-batch",
                            "-ex",
                            "thread apply all bt 30",
                        ])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    report.push_str(&format!("relay {index}'s threads:\n{stacks}\n"));
                }
            }
        }
    }

    // Tear down.
    for index in 0..2 {
        if let Some(process) = world.take_relay(index) {
            process.kill();
        }
    }
    proxy_task.abort();
    drop(broker);
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    let elapsed = started.elapsed();
    let timeline: Vec<String> = world
        .timeline
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(at, what)| {
            format!(
                "  {:>7.2}s {what}",
                at.duration_since(started).as_secs_f64()
            )
        })
        .collect();
    report.push_str(&format!(
        "timeline ({elapsed:?}):\n{}\n",
        timeline.join("\n")
    ));
    (figures, report)
}

/// Holds the history against what Kafka holds.
fn check(
    world: &World,
    final_read: &HashMap<String, Vec<common::Consumed>>,
    faults: usize,
    report: &mut String,
) -> Figures {
    let attempts = world.attempts.lock().unwrap().clone();
    let seen = world.seen.lock().unwrap().clone();
    let crashes = world.crashes.lock().unwrap().clone();
    let restarts = world.broker_restarts.lock().unwrap().clone();
    let snapshots = world.snapshots.lock().unwrap().clone();
    let rebuilds = world.rebuilds.lock().unwrap().clone();
    let unreadable = world.unreadable.lock().unwrap().clone();
    let verdicts = world.verdicts.lock().unwrap();
    let mut figures = Figures {
        schedules: 1,
        faults,
        ..Figures::default()
    };
    let mut by_event: BTreeMap<String, Vec<&Attempt>> = BTreeMap::new();
    for attempt in &attempts {
        by_event
            .entry(attempt.event.clone())
            .or_default()
            .push(attempt);
    }
    // Every copy of each event id in the final read (event topics and dead letters).
    // (A dead letter makes an event present, not a copy: redrive puts it back on its topic
    // and the dead letter stays where it was.)
    let mut copies: HashMap<String, usize> = HashMap::new();
    for topic in EVENT_TOPICS {
        for record in &final_read[*topic] {
            if let Some(id) = record.header("fp-event-id") {
                *copies.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
    let dead_lettered: HashSet<&str> = final_read[DEAD_LETTERS]
        .iter()
        .filter_map(|r| r.header("fp-event-id"))
        .collect();
    let history = |event: &str| -> String {
        by_event
            .get(event)
            .map(|list| {
                list.iter()
                    .map(|a| {
                        format!(
                            "    relay {} {:?} -> {:?} {}",
                            a.relay,
                            a.answered - a.sent,
                            a.status,
                            a.body
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    for (event, list) in &by_event {
        let kind = list[0].kind;
        if kind == Kind::Fulfil {
            continue;
        }
        let Some(acked) = list.iter().find(|a| a.acknowledged()) else {
            continue;
        };
        figures.acknowledged += 1;
        let present = copies.contains_key(event)
            || seen.contains(event)
            || dead_lettered.contains(event.as_str());
        if !present {
            // Acknowledged between the snapshot's start and the kill (or spooled, so written to
            // Kafka at a time nobody saw, before a kill): the broker forgot it. A request sent
            // before the kill and answered after it was acknowledged by the old broker just
            // before it died (the answer takes its time on a loaded machine; the new broker
            // would have kept it).
            let forgotten = snapshots
                .iter()
                .any(|(read, killed)| acked.answered >= *read && acked.sent <= *killed)
                || (acked.body["status"] == "spooled"
                    && restarts.iter().any(|at| *at >= acked.sent));
            if forgotten {
                figures.forgotten_by_broker += 1;
            } else {
                figures.lost += 1;
                // What Kafka holds where the relay said it wrote the event, if anything.
                let place = (
                    acked.body["topic"].as_str().unwrap_or_default().to_owned(),
                    acked.body["partition"].as_i64().unwrap_or(-1),
                    acked.body["offset"].as_i64().unwrap_or(-1),
                );
                let there = final_read.get(&place.0).and_then(|records| {
                    records
                        .iter()
                        .find(|r| i64::from(r.partition) == place.1 && r.offset == place.2)
                        .map(|r| r.header("fp-event-id").unwrap_or("?").to_owned())
                });
                report.push_str(&format!(
                    "LOST {kind:?} {event} (at {place:?} Kafka holds {there:?}):\n{}\n",
                    history(event)
                ));
            }
        }
        let count = copies.get(event).copied().unwrap_or(0);
        if count > 1 {
            let first = list[0].sent;
            let explained = list.len() > 1
                || crashes
                    .iter()
                    .chain(&restarts)
                    .chain(&rebuilds)
                    .any(|at| *at >= first);
            if explained {
                figures.allowed_duplicates += 1;
            } else {
                figures.duplicates += 1;
                report.push_str(&format!(
                    "DUPLICATE x{count} {kind:?} {event}:\n{}\n",
                    history(event)
                ));
            }
        }
    }
    // Order: each v1 lane's acknowledged events, by acknowledgement, on their partition.
    let offsets: HashMap<String, (i32, i64)> = final_read["firstpromoter.lead_signup"]
        .iter()
        .filter_map(|r| Some((r.header("fp-event-id")?.to_owned(), (r.partition, r.offset))))
        .fold(HashMap::new(), |mut map, (id, at)| {
            map.entry(id).or_insert(at);
            map
        });
    let mut lanes: BTreeMap<usize, Vec<&Attempt>> = BTreeMap::new();
    for attempt in attempts
        .iter()
        .filter(|a| a.kind == Kind::V1 && a.acknowledged())
    {
        lanes.entry(attempt.lane).or_default().push(attempt);
    }
    for (lane, mut acked) in lanes {
        acked.sort_by_key(|a| a.answered);
        let placed: Vec<(&str, (i32, i64))> = acked
            .iter()
            .filter_map(|a| Some((a.event.as_str(), *offsets.get(&a.event)?)))
            .collect();
        for pair in placed.windows(2) {
            let ((a, (pa, oa)), (b, (pb, ob))) = (pair[0], pair[1]);
            // A spooled event behind a read that failed may come later, as docs/durability.md says.
            let excused = acked.iter().find(|x| x.event == a).is_some_and(|first| {
                first.body["status"] == "spooled"
                    && unreadable
                        .iter()
                        .any(|(relay, at)| *relay == first.relay && *at >= first.sent)
            });
            if pa == pb && ob < oa && !excused {
                figures.order += 1;
                report.push_str(&format!(
                    "ORDER lane {lane}: {b} at {ob} before {a} at {oa}\n"
                ));
            }
        }
    }
    // Verdicts: a 200 for fulfilment_pending only after the fulfiller said fulfilled.
    for attempt in attempts
        .iter()
        .filter(|a| a.kind == Kind::Fulfil && a.status == Some(200))
    {
        // Answered from a request of its own: that request was answered fulfilled. Answered
        // from memory (`remembered`, or `joined` to another check's request): some request
        // about the reward was.
        let correct = match attempt.body["correlation_id"].as_str() {
            Some(correlation) => verdicts.fulfilled_correlations.contains(correlation),
            None => attempt
                .event
                .strip_prefix("reward-")
                .is_some_and(|reward| verdicts.fulfilled_rewards.contains(reward)),
        };
        if !correct {
            figures.false_verdicts += 1;
            report.push_str(&format!(
                "FALSE VERDICT {}: 200 {}\n",
                attempt.event, attempt.body
            ));
        }
    }
    for commission in world.marked.lock().unwrap().iter() {
        if !verdicts.fulfilled_commissions.contains(commission) {
            figures.false_verdicts += 1;
            report.push_str(&format!(
                "FALSE VERDICT: mark_fulfilled for commission {commission} nobody fulfilled\n"
            ));
        }
    }
    let problems = world.problems.lock().unwrap();
    figures.problems = problems.len();
    for problem in problems.iter() {
        report.push_str(&format!("PROBLEM {problem}\n"));
    }
    figures
}
