//! Native TLS for the public listener (rustls; HTTP/2 and HTTP/1.1 by ALPN), with the
//! certificate reloaded on SIGHUP or when its files change, without dropping connections: new
//! handshakes get the new certificate, open connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: unusable private key: {message}")]
    Key { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Size and modification time of both files: a change means reload.
type Stamp = Option<[(u64, SystemTime); 2]>;

/// Serves the current certificate to every new handshake.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
    cert_path: PathBuf,
    key_path: PathBuf,
    /// The files' state when last loaded.
    stamp: Mutex<Stamp>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("lock not poisoned").clone())
    }
}

impl ReloadingCert {
    /// Reloads when the files changed since the last load (or always, with `force`). Returns
    /// whether a new certificate is in use; on error the old one stays.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let stamp = stamp(&self.cert_path, &self.key_path);
        if !force && stamp == *self.stamp.lock().expect("lock not poisoned") {
            return Ok(false);
        }
        let key = load(&self.cert_path, &self.key_path)?;
        *self.current.write().expect("lock not poisoned") = Arc::new(key);
        *self.stamp.lock().expect("lock not poisoned") = stamp;
        Ok(true)
    }
}

/// The acceptor for the public listener and the handle that reloads its certificate.
pub fn acceptor(config: &TlsConfig) -> Result<(TlsAcceptor, Arc<ReloadingCert>), TlsError> {
    let cert = Arc::new(ReloadingCert {
        current: RwLock::new(Arc::new(load(&config.cert_path, &config.key_path)?)),
        stamp: Mutex::new(stamp(&config.cert_path, &config.key_path)),
        cert_path: config.cert_path.clone(),
        key_path: config.key_path.clone(),
    });
    let mut server = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(server)), cert))
}

/// Reloads on SIGHUP and whenever the files change (checked every `interval`), until `stop`.
pub async fn watch(cert: Arc<ReloadingCert>, interval: Duration, stop: CancellationToken) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<Option<()>>();
        let force = tokio::select! {
            _ = stop.cancelled() => return,
            _ = sighup => true,
            _ = tokio::time::sleep(interval) => false,
        };
        let reloader = cert.clone();
        match tokio::task::spawn_blocking(move || reloader.reload(force)).await {
            Ok(Ok(true)) => {
                tracing::info!(cert = %cert.cert_path.display(), "reloaded the TLS certificate")
            }
            Ok(Ok(false)) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot reload the TLS certificate; keeping the current one")
            }
            Err(_) => {}
        }
    }
}

fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let read_error = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.into(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| read_error(cert_path, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(cert_path, &e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| read_error(key_path, &e))?;
    let signing_key = ring::sign::any_supported_type(&key).map_err(|e| TlsError::Key {
        path: key_path.into(),
        message: e.to_string(),
    })?;
    Ok(CertifiedKey::new(chain, signing_key))
}

fn stamp(cert_path: &Path, key_path: &Path) -> Stamp {
    let one = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.len(), meta.modified().ok()?))
    };
    Some([one(cert_path)?, one(key_path)?])
}
