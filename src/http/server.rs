//! The accept loop shared by both listeners: a cap on open connections (and on those of one
//! address), timeouts against slow, silent and idle clients, a request-head size limit,
//! optional TLS, and graceful shutdown.
//!
//! Connection lifetimes are managed here rather than by hyper-util's `GracefulShutdown`, because
//! the idle timeout and the shutdown signal must both be able to close one connection, and the
//! connection cap's semaphore doubles as the "all connections closed" signal at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::descriptors;
use crate::config::HttpConfig;

/// Accept errors (out of descriptors, memory) are logged once, then summed up at most this often.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What a listener tolerates from its clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time to send a request head (also bounds an idle HTTP/1 keep-alive wait, and the TLS handshake).
    pub header_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one address; `usize::MAX` for no limit.
    pub max_connections_per_source: usize,
    /// Addresses the per-source cap does not apply to (trusted proxies).
    pub exempt_sources: Vec<ipnet::IpNet>,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// How long shutdown waits for open connections.
    pub grace: Duration,
    /// Close the longest-idle connection to make room rather than let a new one wait, with
    /// this many connections at most from one address (the admin listener: probes must always
    /// get through, see [`super::evict`]); `None` on the public listener.
    pub evict_idle: Option<usize>,
    /// Offer HTTP/2 (always with TLS; on plain text only with `http.h2c`). Off, connections
    /// are HTTP/1.1 only: each request then counts against the connection cap and the head
    /// timeout, which HTTP/2 streams would not.
    pub http2: bool,
}

/// Most admin connections from one address: a scraper and a prober need one or two each.
const ADMIN_CONNECTIONS_PER_SOURCE: usize = 16;

/// Most concurrent HTTP/2 streams on one connection (hyper's default is 200; FirstPromoter
/// sends one request at a time per connection).
const MAX_STREAMS_PER_CONNECTION: u32 = 32;

impl Limits {
    /// The public listener's limits, from `[http]`. `http.max_connections` is lowered to what
    /// fits under the process's descriptor limit (with [`descriptors::RESERVED`] and the admin
    /// listener's connections kept aside), with a warning that says so.
    pub fn public(http: &HttpConfig, trusted_proxies: &[ipnet::IpNet]) -> Self {
        let admin = Self::admin().max_connections;
        let max_connections = match descriptors::limits() {
            Ok((soft, _))
                if descriptors::connections_that_fit(soft, admin) < http.max_connections =>
            {
                let fit = descriptors::connections_that_fit(soft, admin);
                tracing::warn!(
                    configured = http.max_connections,
                    serving = fit,
                    descriptor_limit = soft,
                    "http.max_connections does not fit under the descriptor limit (RLIMIT_NOFILE) \
                     with room kept for Kafka, the spool and the admin listener; accepting fewer \
                     connections at once (raise the hard limit: ulimit -Hn, systemd LimitNOFILE, \
                     the container runtime's nofile)"
                );
                fit
            }
            _ => http.max_connections,
        };
        Self {
            header_read_timeout: http.header_read_timeout,
            idle_timeout: http.idle_timeout,
            max_connections,
            max_connections_per_source: http.max_connections_per_source,
            exempt_sources: trusted_proxies.to_vec(),
            max_header_bytes: http.max_header_bytes,
            grace: http.shutdown_timeout,
            evict_idle: None,
            http2: http.tls.is_some() || http.h2c,
        }
    }

    /// The admin listener's limits: few, short-lived scrapers and probes.
    pub fn admin() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 64,
            max_connections_per_source: usize::MAX,
            exempt_sources: Vec::new(),
            max_header_bytes: 16 * 1024,
            grace: Duration::from_secs(1),
            evict_idle: Some(ADMIN_CONNECTIONS_PER_SOURCE),
            http2: false,
        }
    }
}

/// Serves `handle` on `listener` (through `tls` when given) until `stop` resolves, then stops
/// accepting, asks every connection to finish its request and close, and waits up to
/// `limits.grace` for them.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    handle: H,
    stop: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    if !limits.http2 {
        builder = builder.http1_only();
    }
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let sources = Arc::new(SourceCounts::default());
    let registry = Arc::new(super::evict::Registry::default());
    let mut over_cap_lines = Instant::now() - ACCEPT_ERROR_LOG_INTERVAL;
    let mut over_cap = 0u64;
    let (closing, closing_rx) = watch::channel(false);
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(stop);
    loop {
        // Take a connection slot first: at the cap, clients wait in the kernel's backlog
        // (unless the listener makes room by closing idle connections: then after accepting).
        let waited = match limits.evict_idle {
            Some(_) => None,
            None => Some(tokio::select! {
                _ = &mut stop => break,
                permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
            }),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_errors.recovered();
                    accepted
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    accept_errors.failed(&error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match waited {
            Some(permit) => permit,
            None => {
                let per_source = limits.evict_idle.unwrap_or(usize::MAX);
                let room = registry.make_room(&permits, peer.ip(), per_source).await;
                match permits.clone().try_acquire_owned() {
                    Ok(permit) if room => permit,
                    _ => {
                        // Every connection busy: this one is refused.
                        over_cap += 1;
                        if over_cap_lines.elapsed() >= ACCEPT_ERROR_LOG_INTERVAL {
                            tracing::warn!(%peer, closed = over_cap, "every connection busy; closing new ones");
                            over_cap_lines = Instant::now();
                            over_cap = 0;
                        }
                        continue;
                    }
                }
            }
        };
        let activity = Arc::new(Activity::default());
        let place = limits
            .evict_idle
            .map(|_| registry.enter(peer.ip(), activity.clone()));
        let exempt = limits
            .exempt_sources
            .iter()
            .any(|net| net.contains(&peer.ip()));
        let source = if exempt {
            None
        } else {
            match sources.enter(peer.ip(), limits.max_connections_per_source) {
                Some(slot) => Some(slot),
                None => {
                    // Closed at once: this address holds its share of the slots already.
                    over_cap += 1;
                    if over_cap_lines.elapsed() >= ACCEPT_ERROR_LOG_INTERVAL {
                        tracing::warn!(
                            %peer,
                            closed = over_cap,
                            limit = limits.max_connections_per_source,
                            "connections from one address over http.max_connections_per_source; closing new ones"
                        );
                        over_cap_lines = Instant::now();
                        over_cap = 0;
                    }
                    drop(stream);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            handle: handle.clone(),
            peer,
            idle_timeout: limits.idle_timeout,
            first_request_timeout: limits.header_read_timeout,
            closing: closing_rx.clone(),
            activity,
            close: place.as_ref().map(|place| place.close.clone()),
        };
        let tls = tls.clone();
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let _source = source;
            let _place = place;
            match tls {
                None => connection.serve(stream).await,
                // Boxed: the handshake's state would otherwise sit in every plain connection too.
                Some(acceptor) => {
                    Box::pin(async move {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => connection.serve(stream).await,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    })
                    .await
                }
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(grace = ?limits.grace, "connections still open after the grace period; closing them");
    }
}

/// Accept errors come in floods (every 50 ms while descriptors are out): the first is logged,
/// then one line with a count at most every [`ACCEPT_ERROR_LOG_INTERVAL`], and one when
/// accepting works again.
#[derive(Default)]
struct AcceptErrors {
    /// Errors since the last line, and when that line was written.
    unlogged: u64,
    logged_at: Option<Instant>,
    since: Option<Instant>,
}

impl AcceptErrors {
    fn failed(&mut self, error: &std::io::Error) {
        self.unlogged += 1;
        let now = Instant::now();
        self.since.get_or_insert(now);
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_INTERVAL)
        {
            tracing::warn!(%error, errors = self.unlogged, "cannot accept connections");
            self.unlogged = 0;
            self.logged_at = Some(now);
        }
    }

    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                after = ?since.elapsed(),
                unlogged_errors = self.unlogged,
                "accepting connections again"
            );
            *self = Self::default();
        }
    }
}

/// Open connections per address, for the per-source cap.
#[derive(Default)]
struct SourceCounts {
    open: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl SourceCounts {
    /// A slot for one more connection from `ip`, unless it holds `limit` already.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr, limit: usize) -> Option<SourceSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            counts: self.clone(),
            ip,
        })
    }
}

/// One connection's place in its address's count, given back when it closes.
struct SourceSlot {
    counts: Arc<SourceCounts>,
    ip: std::net::IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// One accepted connection and what it needs to serve itself.
struct Connection<H> {
    builder: auto::Builder<TokioExecutor>,
    handle: H,
    peer: SocketAddr,
    idle_timeout: Duration,
    /// A connection that has not begun a request this long after it was accepted (and after
    /// its TLS handshake) is closed: hyper's header timeout starts only once the protocol is
    /// known, so a silent h2c or TLS client would otherwise keep its slot until idle_timeout.
    first_request_timeout: Duration,
    /// Becomes true when the server shuts down.
    closing: watch::Receiver<bool>,
    /// Whether a request is in progress, and since when the connection has been idle.
    activity: Arc<Activity>,
    /// Notified when the listener closes this connection to make room for another.
    close: Option<Arc<tokio::sync::Notify>>,
}

impl<H, F> Connection<H>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    async fn serve<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = self.activity.clone();
        let (handle, peer, tracked) = (self.handle.clone(), self.peer, activity.clone());
        let close = self.close.clone();
        let make_room = async move {
            match close {
                Some(close) => close.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(make_room);
        let service = service_fn(move |request| {
            let busy = tracked.begin();
            let response = handle(request, peer);
            async move {
                let response = response.await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        });
        let connection = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let mut check = tokio::time::interval(
            (self.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        );
        let mut closing = false;
        let opened = Instant::now();
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(peer = %self.peer, %error, "connection ended with an error");
                    }
                    return;
                }
                // Chosen while idle, but a request may have begun since: hyper finishes what is
                // in progress (and the answer's bytes) and then closes, which frees the slot.
                () = &mut make_room, if !closing => {
                    tracing::debug!(peer = %self.peer, "closing an idle connection to make room");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                changed = self.closing.changed(), if !closing => {
                    if changed.is_err() || *self.closing.borrow() {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
                _ = check.tick(), if !closing => {
                    if !activity.has_begun() && opened.elapsed() >= self.first_request_timeout {
                        tracing::debug!(peer = %self.peer, "closing a connection that sent no request");
                        return;
                    }
                    if activity.idle_for() >= self.idle_timeout {
                        tracing::debug!(peer = %self.peer, "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}

/// Whether a connection is busy, and since when it has been idle.
pub(super) struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// A request has begun on it (its head was read).
    begun: std::sync::atomic::AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            begun: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Activity {
    /// Marks a request in progress until the returned guard drops (also when a hung-up
    /// client's request future is dropped).
    pub(super) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.begun.store(true, Ordering::Release);
        Busy(self.clone())
    }

    fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// How long the connection has been idle; `None` while a request is in progress.
    pub(super) fn idle(&self) -> Option<Duration> {
        (self.in_flight.load(Ordering::Acquire) == 0)
            .then(|| self.idle_since.lock().expect("lock not poisoned").elapsed())
    }

    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.idle_since.lock().expect("lock not poisoned").elapsed()
    }
}

pub(super) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.idle_since.lock().expect("lock not poisoned") = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
