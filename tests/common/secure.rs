//! An authenticating Kafka for the tests: tansu (plaintext, in memory) behind
//! `tests/support/sasl_proxy.py`, which answers SASL (PLAIN, SCRAM-SHA-256/512, OAUTHBEARER with
//! unsecured JWTs) and TLS, optionally requiring a client certificate, and then pipes bytes to
//! tansu. tansu advertises the proxy's address, so every connection a client makes goes through
//! it. A stand-in for the broker's side of authentication (the tansu 0.6.0 the tests run cannot
//! authenticate a client by itself; docs/kafka.md, "How these recipes are tested").

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Tansu};

/// A CA and the certificates the tests need, as PEM files in a directory.
pub struct Pki {
    pub dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("fp-relay-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fp-relay test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca, ca_key }
    }

    /// Issues a certificate for `name` (valid for localhost and 127.0.0.1), written as
    /// `<file>.pem` and `<file>.key`; the paths.
    pub fn issue(&self, name: &str, file: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let leaf = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (cert, key_path) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        // Moved into place, as a certificate manager does.
        std::fs::write(self.dir.join(".cert.tmp"), leaf.pem()).unwrap();
        std::fs::write(self.dir.join(".key.tmp"), key.serialize_pem()).unwrap();
        std::fs::rename(self.dir.join(".key.tmp"), &key_path).unwrap();
        std::fs::rename(self.dir.join(".cert.tmp"), &cert).unwrap();
        (cert, key_path)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How the proxy in front of tansu authenticates clients.
pub struct Security<'a> {
    /// SASL mechanisms offered; empty for TLS only.
    pub mechanisms: &'a [&'a str],
    /// `user:password` pairs.
    pub users: &'a [(&'a str, &'a str)],
    /// Serve TLS with a certificate from this PKI.
    pub tls: Option<&'a Pki>,
    /// Require a client certificate signed by the PKI's CA.
    pub mutual: bool,
}

/// tansu behind the authenticating proxy; both stopped on drop.
pub struct SecureKafka {
    pub broker: Tansu,
    proxy: Child,
    /// The proxy's port: the only address clients are given.
    pub port: u16,
    /// The proxy's log: one line per connection authenticated or refused, with the principal.
    pub log: PathBuf,
}

impl SecureKafka {
    pub fn start(security: &Security<'_>) -> Self {
        Self::start_with(security, &[])
    }

    /// [`start`](Self::start) with more of the proxy's options (`--msk-iam-keys`,
    /// `--max-connection-age`).
    pub fn start_with(security: &Security<'_>, options: &[&str]) -> Self {
        let port = free_port();
        let broker = Tansu::start_advertising(port);
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/sasl_proxy.py");
        let users: Vec<String> = security
            .users
            .iter()
            .map(|(user, password)| format!("{user}:{password}"))
            .collect();
        let log = std::env::temp_dir().join(format!("fp-relay-sasl-proxy-{port}.log"));
        let mut command = Command::new("python3");
        command
            .arg(&script)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--upstream", &broker.bootstrap()])
            .arg("-v")
            .args(options)
            .env("SASL_PROXY_USERS", users.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the proxy's log file"));
        if security.mechanisms.contains(&"OAUTHBEARER") {
            // The users' names are the token subjects accepted.
            let subjects: Vec<&str> = security.users.iter().map(|(user, _)| *user).collect();
            command.args(["--oauth-principals", &subjects.join(",")]);
        }
        if security.mechanisms.is_empty() {
            command.arg("--no-sasl");
        } else {
            command.args(["--mechanisms", &security.mechanisms.join(",")]);
        }
        if let Some(pki) = security.tls {
            let (cert, key) = pki.issue("broker", "broker");
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
            if security.mutual {
                command.arg("--tls-client-ca").arg(pki.ca());
            }
        }
        let proxy = command.spawn().expect("python3 runs the SASL proxy");
        let kafka = Self {
            broker,
            proxy,
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the SASL proxy never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        kafka
    }

    /// The address clients bootstrap from.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The principals the proxy let in so far, in order, repeats included.
    pub fn authenticated(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split(" authenticated '").nth(1))
            .filter_map(|rest| rest.split('\'').next())
            .map(str::to_owned)
            .collect()
    }

    /// The reasons the proxy refused authentications so far.
    pub fn refusals(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split(" authentication failed: ").nth(1))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for SecureKafka {
    fn drop(&mut self) {
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The librdkafka properties of a SASL client (`SASL_SSL` when `ca` is given).
pub fn sasl_properties(
    mechanism: &str,
    user: &str,
    password: &str,
    ca: Option<&Path>,
) -> Vec<(String, String)> {
    let mut properties = vec![
        (
            "security.protocol".to_owned(),
            if ca.is_some() {
                "SASL_SSL"
            } else {
                "SASL_PLAINTEXT"
            }
            .to_owned(),
        ),
        ("sasl.mechanism".to_owned(), mechanism.to_owned()),
        ("sasl.username".to_owned(), user.to_owned()),
        ("sasl.password".to_owned(), password.to_owned()),
    ];
    if let Some(ca) = ca {
        properties.push(("ssl.ca.location".to_owned(), ca.display().to_string()));
    }
    properties
}

/// An OAuth 2.0 token endpoint (client credentials grant, RFC 6749 §4.4) served by the test:
/// it checks the client's id and secret (HTTP Basic, as librdkafka sends them) and the scope,
/// and issues unsecured JWTs (`alg: none`, the only kind the proxy accepts) for `subject`
/// that expire after `lifetime`. Counts what it was asked.
pub struct TokenEndpoint {
    pub url: String,
    /// Tokens issued.
    pub issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Requests refused (wrong client, wrong scope).
    pub refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TokenEndpoint {
    pub async fn start(
        client_id: &'static str,
        secret: &'static str,
        scope: &'static str,
        subject: &'static str,
        lifetime: Duration,
    ) -> Self {
        use base64::Engine as _;
        use http_body_util::BodyExt as _;
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (counted, refusals) = (issued.clone(), refused.clone());
        let addr = super::serve_http(move |request: http::Request<hyper::body::Incoming>| {
            let (counted, refusals) = (counted.clone(), refusals.clone());
            async move {
                let expected = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{client_id}:{secret}"))
                );
                let authorized = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let form = String::from_utf8_lossy(&body).into_owned();
                let granted = form
                    .split('&')
                    .any(|p| p == "grant_type=client_credentials")
                    && form.split('&').any(|p| p == format!("scope={scope}"));
                if !(authorized && granted) {
                    refusals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return json_answer(401, r#"{"error":"invalid_client"}"#.to_owned());
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let claims = serde_json::json!({
                    "sub": subject, "iat": now, "exp": now + lifetime.as_secs(), "scope": scope,
                });
                let token = format!(
                    "{}.{}.",
                    b64(r#"{"alg":"none","typ":"JWT"}"#),
                    b64(&claims.to_string())
                );
                json_answer(
                    200,
                    serde_json::json!({
                        "access_token": token, "token_type": "Bearer",
                        "expires_in": lifetime.as_secs(),
                    })
                    .to_string(),
                )
            }
        })
        .await;
        Self {
            url: format!("http://{addr}/oauth2/token"),
            issued,
            refused,
        }
    }
}

fn json_answer(status: u16, body: String) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap()
}
