//! Shared harness for the black-box tests: a real tansu broker per test on a free loopback
//! port, the relay on port 0 in-process, a plain HTTP client, and a consumer that reads what
//! was really written to Kafka.

#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fp_relay::config::Config;
use fp_relay::Server;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A tansu broker process with in-memory storage, killed on drop.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
}

impl Tansu {
    /// Starts a broker on a free port and waits until it answers metadata requests. A port
    /// taken between choosing and binding it (tests run in parallel) is retried with another.
    pub fn start() -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start_on(free_port()) {
                Ok(broker) => return broker,
                Err(why) => last = why,
            }
        }
        panic!("{last}");
    }

    /// Starts a broker on `port` (used to bring a stopped broker back at the same address).
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port).unwrap_or_else(|why| panic!("{why}"))
    }

    /// Starts a broker on a free port that tells clients to connect to `advertised` instead
    /// (a proxy in front of it, see [`secure`]).
    pub fn start_advertising(advertised: u16) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(free_port(), advertised) {
                Ok(broker) => return broker,
                Err(why) => last = why,
            }
        }
        panic!("{last}");
    }

    /// Starts a broker on `port` that tells clients to connect to `advertised` (a proxy in
    /// front of it); used to bring a killed broker back, empty, behind the same proxy.
    pub fn start_on_advertising(port: u16, advertised: u16) -> Self {
        Self::try_start(port, advertised).unwrap_or_else(|why| panic!("{why}"))
    }

    fn try_start_on(port: u16) -> Result<Self, String> {
        Self::try_start(port, port)
    }

    /// Starts a broker with `--authentication`: every client must authenticate with SASL.
    /// tansu 0.6.0 keeps no users in memory storage that a client could authenticate as (see
    /// docs/kafka.md, "How these recipes are tested"), so this broker is for the
    /// refusals; `secure::SecureKafka` is for the accepted logins. Ready once it accepts TCP.
    pub fn start_authenticating() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/", "--authentication"])
            .env_remove("CLUSTER_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu --authentication not listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child: Some(child),
            port,
        }
    }

    fn try_start(port: u16, advertised: u16) -> Result<Self, String> {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env_remove("CLUSTER_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let mut broker = Self {
            child: Some(child),
            port,
        };
        broker.wait_ready(Duration::from_secs(20))?;
        Ok(broker)
    }

    /// `127.0.0.1:port`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until the broker answers metadata requests; `Err` when it exited (its port was
    /// taken) or did not answer within `timeout`.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let consumer: BaseConsumer = client_config(&self.bootstrap()).create().expect("client");
        while Instant::now() < deadline {
            if consumer
                .fetch_metadata(None, Duration::from_millis(500))
                .is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "tansu on port {} exited at start: {status}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "tansu on port {} not ready after {timeout:?}",
            self.port
        ))
    }

    /// Kills the broker (all its data is gone: storage is in memory).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the broker without losing data (SIGSTOP); `thaw` resumes it.
    /// Returns once the kernel reports the process stopped: `kill` returns when the signal
    /// is sent, and a loaded machine let a frozen broker acknowledge one more write.
    pub fn freeze(&self) {
        self.signal("-STOP");
        let tasks = format!("/proc/{}/task", self.child.as_ref().expect("running").id());
        let stopped = |entry: std::fs::DirEntry| {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The state follows the command name's closing parenthesis.
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with(['T', 't']))
        };
        for _ in 0..200 {
            let Ok(mut threads) = std::fs::read_dir(&tasks) else {
                return;
            };
            if threads.all(|thread| thread.is_ok_and(stopped)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resumes a frozen broker.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
    }
}

fn tansu_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return bin.into();
    }
    // Where scripts/cache.sh keeps it.
    let cache = std::env::var("FP_RELAY_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                        .join(".cache")
                })
                .join("fp-relay")
        });
    let cached = cache.join("tansu-0.6.0/tansu");
    assert!(
        cached.exists(),
        "no tansu broker: run scripts/test.sh (it installs one) or set TANSU_BIN"
    );
    cached
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "2000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "50")
        .set("log_level", "3");
    config
}

/// A configuration for tests: port 0 everywhere, short timeouts.
pub fn test_config(bootstrap: &str) -> Config {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.http.shutdown_timeout = Duration::from_secs(5);
    config.kafka.brokers = bootstrap.to_owned();
    config.kafka.ack_timeout = Duration::from_secs(3);
    config.kafka.probe_interval = Duration::from_millis(200);
    config
        .kafka
        .properties
        .insert("log_level".into(), "3".into());
    config.fulfilment.timeout = Duration::from_secs(2);
    // Authentication has its own tests (tests/security.rs); elsewhere it would only add noise.
    config.auth.insecure_no_auth = true;
    config.validate().expect("test config is valid");
    config
}

/// A relay running in this process.
pub struct TestRelay {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub path: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl TestRelay {
    /// Binds and starts a relay with `config`.
    pub async fn start(config: Config) -> Self {
        let path = config.http.path.clone();
        let server = Server::bind(config).await.expect("binds");
        let (addr, admin) = (server.public_addr(), server.admin_addr());
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(async move {
            server
                .run(signal.cancelled_owned())
                .await
                .expect("relay runs");
        });
        Self {
            addr,
            admin,
            path,
            stop,
            task,
        }
    }

    /// Starts a relay and waits until `/readyz` says 200.
    pub async fn start_ready(config: Config) -> Self {
        let relay = Self::start(config).await;
        relay.wait_ready(Duration::from_secs(20)).await;
        relay
    }

    /// Waits until `/readyz` says 200 and the fulfilment reply path is ready (see [`fully_ready`]).
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if fully_ready(self.admin).await {
                return;
            }
            let response = get(self.admin, "/readyz").await;
            assert!(
                Instant::now() < deadline,
                "relay not ready: {}",
                response.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs `body` to the webhook path.
    pub async fn post(&self, body: impl Into<Bytes>) -> Reply {
        self.post_with(body, &[]).await
    }

    /// POSTs `body` with extra headers to the webhook path.
    pub async fn post_with(&self, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Reply {
        send(self.addr, "POST", &self.path, headers, body.into()).await
    }

    /// POSTs `body` on a task of its own, for requests the test answers or watches while they wait.
    pub fn post_in_background(&self, body: Bytes) -> JoinHandle<Reply> {
        let (addr, path) = (self.addr, self.path.clone());
        tokio::spawn(async move { send(addr, "POST", &path, &[], body).await })
    }

    /// Waits until `series` reads `value` (or `timeout` passes); whether it did.
    pub async fn wait_for_metric(&self, series: &str, value: f64, timeout: Duration) -> bool {
        eventually(timeout, async || self.metric(series).await == value).await
    }

    /// The value of one sample of the admin listener's `/metrics`, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(self.admin, series).await
    }

    /// Stops the relay the way SIGTERM does and waits for it to finish.
    /// Fails the test if handling any request panicked (each was answered 500 and counted).
    pub async fn shutdown(self) {
        let panics = self.metric("fp_relay_panics_total").await;
        assert_eq!(panics, 0.0, "handling a request panicked in this relay");
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("relay stops within 30s")
            .expect("relay task did not panic");
    }

    /// Asks the relay to stop without waiting.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }
}

/// A response, read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("JSON body, got {:?}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request over a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        request = request.header("content-type", "application/json");
    }
    let response = client
        .request(request.body(Full::new(body)).unwrap())
        .await
        .expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body read")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[], Bytes::new()).await
}

/// A message read back from Kafka.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Consumed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn from_message(message: &OwnedMessage) -> Self {
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }
}

/// Reads `topic` from the beginning until `expected` messages arrived or `timeout` passed, and
/// then for `settle` more to catch any extra (duplicate) message. Counts by consuming: tansu's
/// high watermark is not reliable.
pub async fn consume(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<Consumed> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        consume_blocking(&bootstrap, &topic, expected, timeout, settle)
    })
    .await
    .unwrap()
}

/// The value of one sample (`series`, labels included) of `/metrics` on `admin`, 0 when absent.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = get(admin, "/metrics").await.text();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |value| value.trim().parse().expect("numeric sample"))
}

/// Reads everything already in `topic` (waiting `quiet` for stragglers).
pub async fn consume_all(bootstrap: &str, topic: &str, quiet: Duration) -> Vec<Consumed> {
    consume(bootstrap, topic, usize::MAX, quiet, Duration::ZERO).await
}

/// [`consume`] with extra client properties (SASL, TLS).
pub async fn consume_with(
    bootstrap: &str,
    properties: &[(String, String)],
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    let (bootstrap, topic, properties) =
        (bootstrap.to_owned(), topic.to_owned(), properties.to_vec());
    tokio::task::spawn_blocking(move || {
        consume_blocking_with(
            &bootstrap,
            &properties,
            &topic,
            expected,
            timeout,
            Duration::ZERO,
        )
    })
    .await
    .unwrap()
}

fn consume_blocking(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<Consumed> {
    consume_blocking_with(bootstrap, &[], topic, expected, timeout, settle)
}

fn consume_blocking_with(
    bootstrap: &str,
    properties: &[(String, String)],
    topic: &str,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<Consumed> {
    let mut config = client_config(bootstrap);
    for (key, value) in properties {
        config.set(key, value);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let started = Instant::now();
    let mut out = Vec::new();
    // The topic may not exist yet (the relay creates it with its first write): keep looking.
    let partitions = loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("metadata");
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32);
        if partitions > 0 {
            break partitions;
        }
        if started.elapsed() >= timeout {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    // The polling window starts once assigned: joining and the first fetch take a moment.
    let mut until = Instant::now() + timeout;
    let mut settled = false;
    while Instant::now() < until {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            out.push(Consumed::from_message(&message.detach()));
        }
        if !settled && out.len() >= expected {
            settled = true;
            until = Instant::now() + settle;
        }
    }
    out
}

/// Waits until `check` holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

/// Loads a sample body from samples/ (e.g. `v1/lead_signup.json`).
pub fn sample(name: &str) -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Produces one message to `topic` the way a downstream fulfiller would answer.
pub async fn produce(
    bootstrap: &str,
    topic: &str,
    partition: Option<i32>,
    key: Option<&str>,
    headers: &[(&str, &str)],
    value: &str,
) {
    produce_with(bootstrap, &[], topic, partition, key, headers, value).await
}

/// [`produce`] with extra producer properties (`compression.type`, SASL, TLS).
pub async fn produce_with(
    bootstrap: &str,
    properties: &[(&str, &str)],
    topic: &str,
    partition: Option<i32>,
    key: Option<&str>,
    headers: &[(&str, &str)],
    value: &str,
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3");
    for (key, value) in properties {
        config.set(*key, *value);
    }
    let producer: FutureProducer = config.create().expect("producer");
    let owned = headers.iter().fold(OwnedHeaders::new(), |acc, (k, v)| {
        acc.insert(Header {
            key: k,
            value: Some(*v),
        })
    });
    let mut record = FutureRecord::<str, str>::to(topic)
        .payload(value)
        .headers(owned);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(5))
        .await
        .expect("reply produced");
}

/// The status of a GET, or `None` when nothing answers yet.
pub async fn try_get(addr: SocketAddr, path: &str) -> Option<StatusCode> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    client.request(request).await.ok().map(|r| r.status())
}

/// True when `/readyz` on `admin` answers 200 and the fulfilment reply path is ready too
/// (readiness does not require it, but a test that posts `fulfilment_pending` does: until then
/// the relay answers it pending without publishing).
pub async fn fully_ready(admin: SocketAddr) -> bool {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(format!("http://{admin}/readyz"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let Ok(response) = client.request(request).await else {
        return false;
    };
    if response.status() != StatusCode::OK {
        return false;
    }
    let Ok(body) = response.into_body().collect().await else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&body.to_bytes())
        .is_ok_and(|ready| ready["checks"]["reply_consumer"] == "ok")
}

/// Creates `topic` with `partitions` partitions (already existing is fine), as an operator
/// would before traffic arrives.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()
        .expect("admin client");
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
    for result in admin.create_topics([&new_topic], &options).await.unwrap() {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => panic!("cannot create {name}: {code}"),
        }
    }
}

/// `fp-relay serve` as a child process, its stderr (JSON log lines) in a file.
pub struct RelayProcess {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Where stderr goes.
    log: std::path::PathBuf,
}

impl RelayProcess {
    /// Starts the binary against `broker` with the default configuration, except shorter
    /// Kafka and fulfilment timeouts so the test does not wait 10 s per refusal.
    pub async fn start(broker: &Tansu) -> Self {
        Self::start_with(broker, &[]).await
    }

    /// [`RelayProcess::start`] with extra environment variables.
    pub async fn start_with(broker: &Tansu, env: &[(&str, &str)]) -> Self {
        Self::start_wrapped(broker, env, &[]).await
    }

    /// [`RelayProcess::start_with`], run under `wrapper` (e.g. `prlimit --fsize=N`).
    pub async fn start_wrapped(broker: &Tansu, env: &[(&str, &str)], wrapper: &[&str]) -> Self {
        let relay = Self::launch(&broker.bootstrap(), env, wrapper);
        assert!(
            relay.wait_ready(Duration::from_secs(20)).await.is_some(),
            "relay never became ready"
        );
        relay
    }

    /// Starts the binary against the brokers at `bootstrap` without waiting for it to be ready
    /// (a relay whose Kafka settings are wrong never is).
    pub fn launch(bootstrap: &str, env: &[(&str, &str)], wrapper: &[&str]) -> Self {
        let (port, admin) = (free_port(), free_port());
        let log =
            std::env::temp_dir().join(format!("fp-relay-recovery-{}.log", uuid::Uuid::new_v4()));
        let binary = env!("CARGO_BIN_EXE_fp-relay");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["serve", "--brokers", bootstrap, "--insecure-no-auth"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .env("FP_RELAY_KAFKA_ACK_TIMEOUT", "3s")
            .env("FP_RELAY_FULFILMENT_TIMEOUT", "5s")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            admin: format!("127.0.0.1:{admin}").parse().unwrap(),
            log,
        }
    }

    /// Waits for `/readyz` 200 with the reply path ready (see [`fully_ready`]); how long it
    /// took, or `None` after `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if fully_ready(self.admin).await {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    pub async fn post(&self, body: Bytes) -> StatusCode {
        send(self.addr, "POST", "/webhooks/firstpromoter", &[], body)
            .await
            .status
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics (naming the signal) if the process has died.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "the relay died: {status:?} (signal {:?}); last log lines:\n{}",
                status.signal(),
                self.log_tail()
            );
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The exit status if the process has ended on its own, with its last log lines.
    pub fn exited(&mut self) -> Option<(std::process::ExitStatus, String)> {
        let status = self.child.try_wait().ok().flatten()?;
        Some((status, self.log_tail()))
    }

    /// The log lines written so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no flush, as a crash or an OOM kill.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }

    /// SIGTERM, then the exit status and every log line.
    pub async fn terminate(self) -> (std::process::ExitStatus, Vec<serde_json::Value>) {
        let log = self.log;
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let mut child = self.child;
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("every log line is JSON"))
            .collect();
        let panics: Vec<_> = lines
            .iter()
            .filter(|line| line["target"] == fp_relay::telemetry::PANIC_TARGET)
            .collect();
        assert!(panics.is_empty(), "the relay panicked: {panics:?}");
        (status, lines)
    }
}

/// Serves `handle` over HTTP/1.1 on a free loopback port until the test ends: the fakes of
/// FirstPromoter's API and the OTLP collector the tests run.
pub async fn serve_http<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let answer = handle(request);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// FirstPromoter's v2 signature of `body` with `secret`: lowercase hex HMAC-SHA256.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// FirstPromoter's API as a fake that answers every call `completed` and keeps the commission
/// ids of each `mark_fulfilled` (`{"ids": [...]}`).
pub async fn recording_api() -> (std::sync::Arc<std::sync::Mutex<Vec<u64>>>, SocketAddr) {
    let marked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = marked.clone();
    let addr = serve_http(move |request: Request<hyper::body::Incoming>| {
        let kept = kept.clone();
        async move {
            let body = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let ids: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            for id in ids["ids"].as_array().into_iter().flatten() {
                kept.lock().unwrap().push(id.as_u64().unwrap_or(0));
            }
            http::Response::new(Full::new(Bytes::from_static(br#"{"status":"completed"}"#)))
        }
    })
    .await;
    (marked, addr)
}

/// The FirstPromoter API key and account id the tests' fakes expect.
pub const API_KEY: &str = "fp_test_key_0123456789abcdef";
pub const ACCOUNT: &str = "acc_4242";

/// A relay with v2 fulfilment on, calling a fake FirstPromoter API at `api` over plain http
/// with short retries, and its consumer groups joining fast on tansu.
pub fn v2_config(broker: &Tansu, api: SocketAddr) -> Config {
    let mut config = test_config(&broker.bootstrap());
    config.fulfilment.v2.enabled = true;
    let fp = &mut config.firstpromoter;
    fp.api_url = format!("http://{api}/api/v2/company");
    fp.allow_insecure_http = true;
    fp.api_key = API_KEY.to_owned();
    fp.account_id = ACCOUNT.to_owned();
    fp.retry_initial = Duration::from_millis(200);
    fp.retry_max = Duration::from_secs(2);
    fp.call_timeout = Duration::from_secs(2);
    // Group joins in about a second on tansu (see ../shared/KAFKA-TESTING.md).
    for (key, value) in [
        ("session.timeout.ms", "2000"),
        ("heartbeat.interval.ms", "500"),
    ] {
        config
            .kafka
            .consumer_properties
            .insert(key.into(), value.into());
    }
    config.validate().expect("valid v2 config");
    config
}

/// `fp-relay respond --outcome fulfilled` against `broker`, its output discarded.
pub fn respond_process(broker: &Tansu) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fp-relay"))
        .args([
            "respond",
            "--brokers",
            &broker.bootstrap(),
            "--outcome",
            "fulfilled",
        ])
        .args(["-X", "log_level=3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fp-relay respond starts")
}

/// What the spool tests share: lead_signup events, a spool directory, posting many at once, and
/// reading which arrived.
pub mod secure;

pub mod spool {
    use std::collections::HashSet;
    use std::time::Duration;

    use http::StatusCode;

    use super::{consume, Tansu};

    pub const TOPIC: &str = "firstpromoter.lead_signup";

    /// A `lead_signup` with id `id` and `pad` bytes of filler (to fill a disk quickly).
    pub fn event(id: u64, pad: usize) -> bytes::Bytes {
        format!(
            r#"{{"event":{{"id":{id},"type":"lead_signup","created_at":"2024-10-03T13:45:20.103Z"}},"data":{{"id":{id},"note":"{}"}}}}"#,
            "x".repeat(pad)
        )
        .into()
    }

    pub fn spool_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fp-relay-spool-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The environment of a relay process spooling into `dir` after 300 ms, fulfilment off.
    pub fn spooling_env(dir: &str) -> Vec<(&'static str, &str)> {
        vec![
            ("FP_RELAY_SPOOL_ENABLED", "true"),
            ("FP_RELAY_SPOOL_DIR", dir),
            ("FP_RELAY_SPOOL_HANDOFF_AFTER", "300ms"),
            ("FP_RELAY_FULFILMENT_ENABLED", "false"),
        ]
    }

    /// Posts the events `ids` (padded with `pad` bytes) all at once; each id with its status.
    pub async fn post_at_once(
        addr: std::net::SocketAddr,
        ids: impl IntoIterator<Item = u64>,
        pad: usize,
    ) -> Vec<(u64, StatusCode)> {
        let posts: Vec<_> = ids
            .into_iter()
            .map(|id| {
                tokio::spawn(async move {
                    let path = "/webhooks/firstpromoter";
                    let reply = super::send(addr, "POST", path, &[], event(id, pad)).await;
                    (id, reply.status)
                })
            })
            .collect();
        let mut statuses = Vec::with_capacity(posts.len());
        for post in posts {
            statuses.push(post.await.unwrap());
        }
        statuses
    }

    /// The `fp-event-id`s on the lead_signup topic (read for `window`).
    pub async fn ids_in_kafka(broker: &Tansu, window: Duration) -> HashSet<u64> {
        consume(
            &broker.bootstrap(),
            TOPIC,
            usize::MAX,
            window,
            Duration::ZERO,
        )
        .await
        .iter()
        .filter_map(|m| m.header("fp-event-id").and_then(|id| id.parse().ok()))
        .collect()
    }
}
