//! The relay's few outbound HTTP calls (FirstPromoter's API, AWS's credential endpoints): one
//! request over a fresh HTTP/1.1 connection, TLS with the Mozilla root store built in (no
//! dependency on the host's CA bundle), the answer's body read up to a limit. Calls are rare
//! (a reward, a page of deliveries, a credential refresh), so nothing is pooled.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::crypto::ring;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// An HTTP answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    /// What the server asked for (`Retry-After`), if anything.
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The host name does not resolve: the settings' fault (or DNS's), not a passing one.
    Resolve(String),
    /// A refused or reset connection, or a broken exchange: passing.
    Network(String),
    /// The TLS handshake failed (an untrusted certificate, a wrong name): the settings'.
    Tls(String),
    /// The request could not be built (a URL that is no host name, a header that is not one).
    Request(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resolve(detail)
            | Self::Network(detail)
            | Self::Tls(detail)
            | Self::Request(detail) => f.write_str(detail),
        }
    }
}

/// Sends `request` to the server of `base` (an `http://` or `https://` URL; its path is the
/// request's business) and reads at most `max_body` bytes of the answer. No timeout: callers
/// bound the whole call.
pub async fn send(
    base: &Uri,
    request: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Answer, Failure> {
    let host = base
        .host()
        .ok_or_else(|| Failure::Request(format!("{base} has no host")))?;
    // `[::1]` in a URL, `::1` to resolve and to name.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tls = base.scheme_str() == Some("https");
    let port = base.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addresses: Vec<_> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| Failure::Resolve(format!("cannot resolve {host}: {e}")))?
        .collect();
    let tcp = TcpStream::connect(&addresses[..])
        .await
        .map_err(|e| Failure::Network(format!("cannot connect to {host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    if tls {
        let name = ServerName::try_from(bare.to_owned())
            .map_err(|_| Failure::Tls(format!("{host} is not a valid TLS server name")))?;
        let stream = connector()
            .connect(name, tcp)
            .await
            .map_err(|e| Failure::Tls(format!("TLS with {host}: {e}")))?;
        exchange(TokioIo::new(stream), request, max_body).await
    } else {
        exchange(TokioIo::new(tcp), request, max_body).await
    }
}

/// The `Host` header of a request to `base`.
pub fn authority(base: &Uri) -> String {
    base.authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| base.host().map(str::to_owned))
        .unwrap_or_default()
}

async fn exchange<S>(
    io: TokioIo<S>,
    request: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Answer, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Network(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::Network(format!("request failed: {e}")))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        // A status without a readable body is still an answer.
        .unwrap_or_default();
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// One TLS client configuration for the process (building it parses the root store).
fn connector() -> TlsConnector {
    static CONNECTOR: OnceLock<TlsConnector> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            TlsConnector::from(Arc::new(config))
        })
        .clone()
}
