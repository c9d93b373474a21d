//! fp-relay takes FirstPromoter webhooks off the public internet and puts them into Kafka.
//!
//! Every standard event is published to a per-event-type topic and answered 2xx only after
//! Kafka has acknowledged it. `fulfilment_pending` is published, held open, and answered with
//! the verdict a downstream fulfiller sends back over a reply topic.
//!
//! # Layout
//! - [`config`]: typed configuration, defaults, environment overrides, validation.
//! - [`webhook`]: FirstPromoter's v1 and v2 envelopes, known event types, topic and key rules.
//! - [`kafka`]: the publisher (idempotent, `acks=all`, rebuilt after fatal errors), records and headers.
//! - [`firstpromoter`]: FirstPromoter's v2 API: the shared client, webhook subscriptions and
//!   deliveries, reconciliation.
//! - [`fulfilment`]: the hold-and-reply correlator, the reply consumer, and v2 fulfilment
//!   (`mark_fulfilled` calls for fulfilled replies).
//! - [`pipeline`]: parse, redact and route: bytes and headers in, a Kafka record out.
//! - [`relay`]: the request logic, bytes and headers in, an answer out.
//! - [`health`]: readiness (`/readyz`).
//! - [`http`]: the accept loop, graceful shutdown, the public and admin handlers.
//! - [`error`]: the boundary error and its one mapping to HTTP responses.
//! - [`metrics`]: every Prometheus metric, in one struct.
//! - [`trace`]: W3C trace context, continued from the request onto every record.
//! - [`spans`]: one span per request exported over OTLP (`[telemetry.otlp]`, off by default).
//! - [`tools`]: `fp-relay send`, `tail` and `respond`, the built-in samples, and the embedded
//!   development broker behind `serve --dev`.

pub mod cli;
pub mod config;
pub mod dedup;
pub mod error;
pub mod firstpromoter;
pub mod fulfilment;
pub mod health;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod relay;
pub mod spans;
pub mod spool;
pub mod telemetry;
pub mod tools;
pub mod trace;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dedup::Dedup;
use crate::fulfilment::consumer::ReplyConsumer;
use crate::fulfilment::correlator::Correlator;
use crate::kafka::publisher::Publisher;
use crate::metrics::Metrics;
use crate::relay::{Health, Relay, Services};
use crate::spool::Spool;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create a Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("http.tls: {0}")]
    Tls(#[from] http::tls::TlsError),
    #[error("spool.dir: {0}")]
    Spool(#[from] spool::SpoolError),
    #[error(transparent)]
    Spans(#[from] spans::SpansError),
    #[error(transparent)]
    FirstPromoterApi(#[from] firstpromoter::client::ApiConfigError),
}

/// Shortest time a released fulfilment id is remembered, so its reply counts as late.
const MIN_LATE_RETENTION: Duration = Duration::from_secs(60);

/// Longest wait at shutdown for the v2 marker to leave its consumer group.
const MARKER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the files `auth.*` secrets came from every `auth.reload_interval`; when one changed,
/// reads them all again and checks credentials with the new set (a Secret rotated in place).
/// A set that does not validate is refused with one line, and the previous one stays.
async fn watch_auth_files(relay: Arc<Relay>, stop: CancellationToken) {
    let fingerprint = |relay: &Relay| -> Vec<Option<[u8; 32]>> {
        use sha2::Digest;
        relay
            .config()
            .secret_files
            .iter()
            .map(|f| {
                std::fs::read(&f.path)
                    .ok()
                    .map(|b| sha2::Sha256::digest(b).into())
            })
            .collect()
    };
    let mut seen = fingerprint(&relay);
    let mut tick = tokio::time::interval(relay.config().auth.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = fingerprint(&relay);
        if now == seen {
            continue;
        }
        seen = now;
        match relay.config().reread_auth_files() {
            Ok(Some(auth)) => {
                relay.replace_authenticator(webhook::auth::Authenticator::new(&auth));
                tracing::info!("auth secrets changed in their files; the new ones are in use");
            }
            Ok(None) => {}
            Err(error) => tracing::error!(
                %error,
                "auth secrets changed in their files but are not usable; the previous ones stay in use"
            ),
        }
    }
}

/// Checks the files Kafka credentials come from every `kafka.credentials_check_interval`
/// ([`Config::kafka_credential_files`]); when one changed, reads the secrets again and rebuilds
/// every Kafka client with them: the producer at once, the consumers through `settings`. A
/// set that does not validate is refused with one line, and the clients keep theirs.
async fn watch_kafka_credentials(
    config: Config,
    publisher: Arc<Publisher>,
    settings: tokio::sync::watch::Sender<Arc<config::KafkaConfig>>,
    message_timeout: Duration,
    stop: CancellationToken,
) {
    let files = config.kafka_credential_files();
    let fingerprint = || -> Vec<Option<[u8; 32]>> {
        use sha2::Digest;
        files
            .iter()
            .map(|path| {
                std::fs::read(path)
                    .ok()
                    .map(|b| sha2::Sha256::digest(b).into())
            })
            .collect()
    };
    let mut seen = fingerprint();
    let mut tick = tokio::time::interval(config.kafka.credentials_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = fingerprint();
        if now == seen {
            continue;
        }
        seen = now;
        let kafka = match config.reread_kafka_files() {
            Ok(Some(kafka)) => kafka,
            // Only TLS files changed: librdkafka reads them itself when a client is built.
            Ok(None) => config.kafka.clone(),
            Err(error) => {
                tracing::error!(%error, "Kafka credentials changed in their files but are not usable; the clients keep the previous ones");
                continue;
            }
        };
        tracing::info!(
            "Kafka credentials changed in their files; rebuilding the Kafka clients with them"
        );
        publisher.reconfigure(kafka::producer_configs(&kafka, message_timeout));
        settings.send_replace(Arc::new(kafka));
    }
}

/// A relay whose listeners are bound and which is ready to [`Server::run`].
pub struct Server {
    config: Config,
    public: TcpListener,
    admin: TcpListener,
}

impl Server {
    /// Binds both listeners (port 0 picks a free port, as tests do).
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let public = bind(config.http.listen).await?;
        let admin = bind(config.admin.listen).await?;
        Ok(Self {
            config,
            public,
            admin,
        })
    }

    /// The bound public (webhook) address.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The bound admin (probes, metrics) address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then shuts down in order: stop accepting, answer every
    /// held fulfilment request with the pending status, let open requests finish (bounded by
    /// `http.shutdown_timeout`), flush the producer (bounded by `kafka.ack_timeout`), return.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let Server {
            config,
            public,
            admin,
        } = self;
        let background = CancellationToken::new();
        let (services, marker, replay) = start_services(&config, &background)?;
        let publisher = services.publisher.clone();
        let watch = services.health.cluster.clone();
        let spans = services.spans.clone();
        let ack_timeout = config.kafka.ack_timeout;
        let relay = Arc::new(Relay::new(config, services));
        tracing::info!(
            listen = %public.local_addr().expect("bound"),
            admin = %admin.local_addr().expect("bound"),
            path = %relay.config().http.path,
            brokers = %relay.config().kafka.brokers,
            "fp-relay is serving"
        );

        if relay
            .config()
            .secret_files
            .iter()
            .any(|f| f.variable.starts_with("FP_RELAY_AUTH_"))
        {
            tokio::spawn(watch_auth_files(relay.clone(), background.clone()));
        }
        let tls = match &relay.config().http.tls {
            Some(settings) => {
                let (acceptor, cert) = http::tls::acceptor(settings)?;
                tokio::spawn(http::tls::watch(
                    cert,
                    settings.reload_interval,
                    background.clone(),
                ));
                Some(acceptor)
            }
            None => None,
        };
        let admin_relay = relay.clone();
        let admin_task = tokio::spawn(http::server::serve(
            admin,
            None,
            http::server::Limits::admin(),
            move |request, _| {
                let relay = admin_relay.clone();
                async move { http::admin::handle(&relay, &request) }
            },
            background.clone().cancelled_owned(),
        ));
        let stop_accepting = CancellationToken::new();
        let public_relay = relay.clone();
        let public_task = tokio::spawn(http::server::serve(
            public,
            tls,
            http::server::Limits::public(
                &relay.config().http,
                &relay.config().auth.trusted_proxies,
            ),
            move |request, peer| {
                let relay = public_relay.clone();
                async move { http::handler::handle(&relay, request, peer).await }
            },
            stop_accepting.clone().cancelled_owned(),
        ));

        shutdown.await;
        tracing::info!("shutting down: no new connections, releasing held fulfilment requests");
        stop_accepting.cancel();
        relay.release_holds();
        let _ = public_task.await;
        // Marks of events acknowledged just now are handed to the producer before it flushes:
        // a mark left behind would let another replica publish a retry of its event again.
        let marks_by = tokio::time::Instant::now() + ack_timeout;
        relay.marks_written(marks_by.into_std()).await;
        tracing::info!("flushing the Kafka producer");
        let flushing = publisher.clone();
        let flushed = tokio::task::spawn_blocking(move || flushing.flush(ack_timeout)).await;
        let flushed = matches!(flushed, Ok(Ok(())));
        if !flushed {
            tracing::error!(
                "the producer did not flush in time; unacknowledged records may be lost"
            );
        }
        // The spool's replay settles the batch it handed over (its outcomes are known once the
        // producer flushed) and records it done, so a restart does not replay it again.
        let replay_settled = if flushed {
            ack_timeout
        } else {
            Duration::from_secs(1)
        };
        if let Some(spans) = spans {
            let _ = tokio::task::spawn_blocking(move || spans.flush()).await;
        }
        background.cancel();
        if let Some(replay) = replay {
            if tokio::time::timeout(replay_settled, replay).await.is_err() {
                tracing::warn!("the spool's replay did not settle its last batch in time; it may be replayed again after a restart");
            }
            // The replay marks what it delivered last; those marks go out too (briefly: the
            // grace period is nearly spent).
            let last = replay_settled.min(Duration::from_secs(2));
            if flushed && relay.marks_written(std::time::Instant::now() + last).await {
                let _ = tokio::task::spawn_blocking(move || publisher.flush(last)).await;
            }
        }
        let _ = admin_task.await;
        if let Some(marker) = marker {
            let _ = tokio::time::timeout(MARKER_STOP_TIMEOUT, marker).await;
        }
        // Kafka clients still being torn down have nothing left to tell the operator.
        watch.silence();
        tracing::info!("fp-relay stopped");
        Ok(())
    }
}

/// A background task shutdown waits for.
type Task = tokio::task::JoinHandle<()>;

/// Builds the producer, the reply consumer, the spool and the dedup table, and starts their
/// background tasks (stopped by `background`). Also returns the tasks shutdown waits for: the
/// v2 fulfilment marker (so that it leaves its consumer group) and the spool's replay (so that
/// it settles the batch it handed over).
fn start_services(
    config: &Config,
    background: &CancellationToken,
) -> Result<(Services, Option<Task>, Option<Task>), StartError> {
    let metrics = Arc::new(Metrics::new());
    // A write handed to the spool keeps its chance of delivery for spool.delivery_timeout;
    // its outcome decides whether the spooled copy is replayed.
    let message_timeout = if config.spool.enabled {
        config.spool.delivery_timeout
    } else {
        config.kafka.ack_timeout
    };
    let health = Arc::new(Health {
        firstpromoter_api: config
            .fulfilment
            .v2
            .enabled
            .then(|| Arc::new(AtomicBool::new(true))),
        dedup_shared: config
            .shared_dedup_topic()
            .map(|_| Arc::new(dedup::shared::SharedState::default())),
        verdicts: (config.fulfilment.enabled && !config.fulfilment.remember.is_zero())
            .then(|| Arc::new(kafka::follow::FollowState::default())),
        ..Health::default()
    });
    if let Some(hint) = broker_hint(&config.kafka.brokers) {
        health.cluster.set_hint(hint);
    }
    let publisher = Arc::new(Publisher::new(
        kafka::producer_configs(&config.kafka, message_timeout),
        config.kafka.ack_timeout,
        metrics.clone(),
        health.cluster.clone(),
    )?);
    // The Kafka settings every client is built from, replaced when credentials change.
    let (settings, kafka_settings) = tokio::sync::watch::channel(Arc::new(config.kafka.clone()));
    if !config.kafka_credential_files().is_empty() {
        tokio::spawn(watch_kafka_credentials(
            config.clone(),
            publisher.clone(),
            settings,
            message_timeout,
            background.clone(),
        ));
    }
    let verdicts = health.verdicts.as_ref().map(|state| {
        let verdicts = fulfilment::verdicts::Verdicts::new(
            config,
            publisher.clone(),
            metrics.clone(),
            state.clone(),
        );
        tokio::spawn(verdicts.clone().follow(
            kafka_settings.clone(),
            health.cluster.clone(),
            config.dedup.load_timeout,
            background.clone(),
        ));
        verdicts
    });
    let correlator = if config.fulfilment.enabled {
        metrics
            .fulfilment_max_in_flight
            .set(i64::try_from(config.fulfilment.max_in_flight).unwrap_or(i64::MAX));
        let retention = MIN_LATE_RETENTION.max(config.fulfilment.timeout * 6);
        let correlator = Correlator::new(
            config.fulfilment.max_in_flight,
            retention,
            metrics.clone(),
            verdicts.clone(),
        );
        ReplyConsumer::new(
            kafka_settings.clone(),
            &config.fulfilment,
            correlator.clone(),
            metrics.clone(),
            health.cluster.clone(),
            health.reply_consumer.clone(),
        )?
        .spawn(background.clone());
        Some(correlator)
    } else {
        health.reply_consumer.store(true, Ordering::Release);
        None
    };
    let api = (config.fulfilment.v2.enabled || config.firstpromoter.reconcile.enabled)
        .then(|| {
            firstpromoter::client::ApiClient::new(&config.firstpromoter, Some(metrics.clone()))
        })
        .transpose()?
        .map(Arc::new);
    if let (true, Some(api)) = (config.firstpromoter.reconcile.enabled, &api) {
        tokio::spawn(
            firstpromoter::reconcile::Reconciler::new(config, api.clone(), metrics.clone())
                .run(background.clone()),
        );
    }
    let marker = match (&health.firstpromoter_api, &api) {
        (Some(api_reachable), Some(api)) => Some(
            fulfilment::v2::marker::Marker::new(
                config,
                kafka_settings.clone(),
                publisher.clone(),
                metrics.clone(),
                health.cluster.clone(),
                api_reachable.clone(),
                api.clone(),
            )?
            .remembering(verdicts.clone())
            .spawn(background.clone()),
        ),
        _ => None,
    };
    let shared_dedup = match &health.dedup_shared {
        Some(state) => {
            let shared = dedup::shared::Shared::new(
                &config.dedup,
                publisher.clone(),
                metrics.clone(),
                config.kafka.ack_timeout,
                state.clone(),
            );
            tokio::spawn(shared.clone().follow(
                kafka_settings.clone(),
                health.cluster.clone(),
                config.dedup.load_timeout,
                background.clone(),
            ));
            Some(shared)
        }
        None => None,
    };
    let (spool, replay) = if config.spool.enabled {
        let limits = spool::Limits {
            max_bytes: config.spool.max_bytes,
            largest_record: config.http.max_body_bytes as u64 + config::RECORD_OVERHEAD_BYTES,
        };
        let spool = Spool::open(&config.spool.dir, limits, metrics.clone())?;
        let replay = spool::replay::Replay {
            publisher: publisher.clone(),
            dead_letter_topic: config.kafka.dead_letter_topic.clone(),
            enqueue_timeout: config.kafka.ack_timeout,
            unknown_topic_wait: config.spool.unknown_topic_wait,
            shared_dedup: shared_dedup.clone(),
        };
        let task = tokio::spawn(spool.clone().replay(replay, background.clone()));
        (Some(spool), Some(task))
    } else {
        (None, None)
    };
    let dedup = config.dedup_enabled().then(|| {
        let shared = shared_dedup.as_ref().map(|shared| shared.table().clone());
        Dedup::with_shared(config.dedup.window, config.dedup.max_entries, shared)
    });
    tokio::spawn(probe_cluster(
        publisher.clone(),
        health.clone(),
        probe_topic(config),
        config.kafka.probe_interval,
        background.clone(),
    ));
    let spans = match &config.telemetry.otlp.endpoint {
        Some(_) => Some(Arc::new(spans::Spans::start(
            &config.telemetry.otlp,
            metrics.clone(),
        )?)),
        None => None,
    };
    let services = Services {
        spans,
        publisher,
        correlator,
        verdicts,
        spool,
        dedup,
        shared_dedup,
        metrics,
        health,
    };
    Ok((services, marker, replay))
}

/// The one topic the readiness probe names: the reply topic when fulfilment is on (the relay
/// creates it at start-up), else the dead-letter topic. Naming a topic that did not exist yet
/// in every probe kept tansu from ever assigning the v2 marker's consumer group its partitions
/// (seen in tests/fulfilment_v2.rs; not understood), so the topic the relay creates itself is
/// preferred.
fn probe_topic(config: &Config) -> String {
    if config.fulfilment.enabled {
        config.fulfilment.reply_topic.clone()
    } else {
        config.kafka.dead_letter_topic.clone()
    }
}

/// Keeps `health.producer` current with a metadata request about `topic` alone (see
/// [`probe_topic`]) every `interval`, and tells the
/// [`ClusterWatch`](kafka::outage::ClusterWatch) (which logs outages once, with summaries).
async fn probe_cluster(
    publisher: Arc<Publisher>,
    health: Arc<Health>,
    topic: String,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        let probe = publisher.clone();
        let topic = topic.clone();
        let reachable = tokio::task::spawn_blocking(move || probe.probe(&topic, interval))
            .await
            .unwrap_or(false);
        health.producer.store(reachable, Ordering::Release);
        health.cluster.observe(reachable);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// What to say if the brokers never answer: a name that does not resolve, or the default
/// address (nobody chose one: no --brokers, no FP_RELAY_KAFKA_BROKERS, no file).
fn broker_hint(brokers: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let unresolved: Vec<&str> = brokers
        .split(',')
        .map(str::trim)
        .filter(|broker| !broker.is_empty())
        .filter(|broker| {
            let address = broker.rsplit_once("://").map_or(*broker, |(_, a)| a);
            address
                .to_socket_addrs()
                .map_or(true, |mut a| a.next().is_none())
        })
        .collect();
    if !unresolved.is_empty() {
        return Some(format!(
            "kafka.brokers: cannot resolve {} (a typo, or a name only another network knows)",
            unresolved.join(", ")
        ));
    }
    (brokers == config::KafkaConfig::default().brokers).then(|| {
        format!(
            "nothing answers at {brokers}, the default: give the brokers with --brokers or \
             FP_RELAY_KAFKA_BROKERS, or try `fp-relay serve --dev` for an embedded broker"
        )
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
