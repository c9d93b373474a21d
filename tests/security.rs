//! The public listener under attack: every hostile or broken request gets its status and
//! publishes nothing; signatures are checked against an independent implementation (openssl);
//! a crowd of slow clients cannot starve a real one; TLS serves HTTP/1.1 and HTTP/2 and swaps
//! its certificate without dropping connections.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::{consume_all, sample, Tansu, TestRelay};
use fp_relay::config::{Config, TlsConfig};
use http::StatusCode;

const PATH_TOKEN: &str = "v1-path-token-0123456789";
const BEARER: &str = "v2-bearer-token-0123456789";
const SECRET: &str = "v2-signing-secret-current";
const OLD_SECRET: &str = "v2-signing-secret-previous";
const RETIRED_SECRET: &str = "v2-signing-secret-retired";
const BASIC_USER: &str = "firstpromoter";
const BASIC_PASSWORD: &str = "basic-password-0123456789";

fn secured(broker: &Tansu) -> Config {
    let mut config = common::test_config(&broker.bootstrap());
    config.auth.insecure_no_auth = false;
    config.auth.path_tokens = vec![PATH_TOKEN.into()];
    config.auth.tokens = vec![BEARER.into()];
    config.auth.signature_secrets = vec![SECRET.into(), OLD_SECRET.into()];
    config
        .auth
        .basic
        .insert(BASIC_USER.into(), BASIC_PASSWORD.into());
    config.http.max_body_bytes = 64 * 1024;
    config.http.max_header_bytes = 16 * 1024;
    config.http.header_read_timeout = Duration::from_secs(2);
    config.http.request_timeout = Duration::from_secs(2);
    // These tests post the same samples again and count every record: duplicate suppression
    // (on by default with credentials) has tests of its own.
    config.dedup.enabled = Some(false);
    config.validate().unwrap();
    config
}

/// The signature as FirstPromoter computes it, by openssl rather than by the relay's code.
fn openssl_signature(secret: &str, body: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Sends `request` as raw bytes and returns the status of the first response, or `None` when
/// the server closed the connection without answering.
fn raw(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    raw_all(addr, request, 1).first().copied()
}

/// Like `raw`, for `count` pipelined responses.
fn raw_all(addr: SocketAddr, request: &[u8], count: usize) -> Vec<u16> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let statuses = statuses(&response);
        if statuses.len() >= count && response.ends_with(b"}") {
            return statuses;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return statuses,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
}

fn statuses(response: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(response);
    text.match_indices("HTTP/1.")
        .filter_map(|(at, _)| text[at + 9..].get(..3)?.parse().ok())
        .collect()
}

fn post(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut request =
        format!("POST {path} HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Every message on every topic except the dead-letter topic.
async fn event_messages(broker: &Tansu) -> usize {
    let bootstrap = broker.bootstrap();
    let topics: Vec<String> = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .unwrap();
            let metadata = consumer
                .fetch_metadata(None, Duration::from_secs(5))
                .unwrap();
            metadata
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .collect()
        }
    })
    .await
    .unwrap();
    let mut count = 0;
    for topic in topics
        .iter()
        .filter(|t| t.starts_with("firstpromoter.") && !t.ends_with("dead_letter"))
    {
        count += consume_all(&bootstrap, topic, Duration::from_secs(2))
            .await
            .len();
    }
    count
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_and_broken_requests_get_their_status_and_publish_nothing() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(secured(&broker)).await;
    let path = relay.path.clone();
    let token_path = format!("{path}/{PATH_TOKEN}");
    let body = sample("v1/lead_signup.json");
    let bearer = format!("Bearer {BEARER}");
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let big_header = "x".repeat(20 * 1024);
    let mut chunked =
        format!("POST {token_path} HTTP/1.1\r\nhost: relay\r\ntransfer-encoding: chunked\r\n\r\n")
            .into_bytes();
    for _ in 0..80 {
        chunked.extend_from_slice(format!("400\r\n{}\r\n", "a".repeat(1024)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");

    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        ("no credentials", post(&path, &[], &body), Some(401)),
        (
            "wrong bearer token",
            post(
                &path,
                &[("authorization", "Bearer not-the-token-0123456")],
                &body,
            ),
            Some(401),
        ),
        (
            "bad basic password",
            post(
                &path,
                &[("authorization", &basic(BASIC_USER, "wrong-password-012345"))],
                &body,
            ),
            Some(401),
        ),
        (
            "unknown basic user",
            post(
                &path,
                &[("authorization", &basic("mallory", BASIC_PASSWORD))],
                &body,
            ),
            Some(401),
        ),
        (
            "wrong path token",
            post(&format!("{path}/wrong-token-0123456789"), &[], &body),
            Some(401),
        ),
        (
            "path token in the query string",
            post(&format!("{path}?token={PATH_TOKEN}"), &[], &body),
            Some(401),
        ),
        (
            "path token as a bearer token",
            post(
                &path,
                &[("authorization", &format!("Bearer {PATH_TOKEN}"))],
                &body,
            ),
            Some(401),
        ),
        (
            "bearer token in the path",
            post(&format!("{path}/{BEARER}"), &[], &body),
            Some(401),
        ),
        (
            "path token beyond one segment",
            post(&format!("{token_path}/extra"), &[], &body),
            Some(404),
        ),
        (
            "signature with a retired secret",
            post(
                &path,
                &[(
                    "x-webhook-signature",
                    &openssl_signature(RETIRED_SECRET, &body),
                )],
                &body,
            ),
            Some(401),
        ),
        (
            "signature over a different body",
            post(
                &path,
                &[("x-webhook-signature", &openssl_signature(SECRET, b"{}"))],
                &body,
            ),
            Some(401),
        ),
        (
            "right token but a forged signature",
            post(
                &path,
                &[
                    ("authorization", &bearer),
                    ("x-webhook-signature", &"0".repeat(64)),
                ],
                &body,
            ),
            Some(401),
        ),
        (
            "not JSON",
            post(&token_path, &[], b"this is not json"),
            Some(400),
        ),
        (
            "JSON but not an object",
            post(&token_path, &[], b"[1,2,3]"),
            Some(400),
        ),
        (
            "deeply nested JSON",
            post(&token_path, &[], deep.as_bytes()),
            Some(400),
        ),
        (
            "invalid UTF-8",
            post(&token_path, &[], &[0x7b, 0xff, 0xfe, 0x7d]),
            Some(400),
        ),
        (
            "enormous headers",
            post(&token_path, &[("x-padding", &big_header)], &body),
            Some(431),
        ),
        ("chunked body over the limit", chunked, Some(413)),
        // The client stops mid-body and waits: answered 408 after http.request_timeout.
        (
            "truncated body",
            {
                let mut truncated = post(&token_path, &[], &body);
                truncated.truncate(truncated.len() - body.len() / 2);
                truncated
            },
            Some(408),
        ),
    ];
    for (name, request, expected) in &cases {
        let got = tokio::task::spawn_blocking({
            let request = request.clone();
            let addr = relay.addr;
            move || raw(addr, &request)
        })
        .await
        .unwrap();
        match expected {
            Some(status) => assert_eq!(got, Some(*status), "{name}"),
            None => assert_eq!(got, None, "{name}"),
        }
    }
    assert_eq!(
        event_messages(&broker).await,
        0,
        "nothing hostile reached an event topic"
    );
    assert!(
        relay
            .metric(r#"fp_relay_rejected_total{reason="unauthorized"}"#)
            .await
            >= 10.0
    );
    assert!(
        relay
            .metric(r#"fp_relay_auth_failures_total{reason="bad_signature"}"#)
            .await
            >= 3.0
    );
    assert_eq!(
        relay
            .metric(r#"fp_relay_auth_failures_total{reason="bad_path_token"}"#)
            .await,
        2.0
    );
    // Auth failures are neither published nor dead-lettered; only the four parse failures are.
    let dead = consume_all(
        &broker.bootstrap(),
        "firstpromoter.dead_letter",
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(dead.len(), 4);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_credentials_of_every_kind_http10_and_pipelining_are_served() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(secured(&broker)).await;
    let path = relay.path.clone();
    let token_path = format!("{path}/{PATH_TOKEN}");
    // Path tokens deliver v1 envelopes; tokens, Basic and signatures v2 (auth.*_versions).
    let body = sample("v1/lead_signup.json");
    let v2 = sample("v2/referral.created.json");
    let accepted: Vec<(&str, Vec<u8>)> = vec![
        ("v1 path token", post(&token_path, &[], &body)),
        (
            "bearer token",
            post(
                &path,
                &[("authorization", &format!("Bearer {BEARER}"))],
                &v2,
            ),
        ),
        (
            "basic",
            post(
                &path,
                &[("authorization", &basic(BASIC_USER, BASIC_PASSWORD))],
                &v2,
            ),
        ),
        (
            "signature, current secret",
            post(
                &path,
                &[("x-webhook-signature", &openssl_signature(SECRET, &v2))],
                &v2,
            ),
        ),
        (
            "signature, previous secret",
            post(
                &path,
                &[("x-webhook-signature", &openssl_signature(OLD_SECRET, &v2))],
                &v2,
            ),
        ),
        (
            "HTTP/1.0",
            format!(
                "POST {token_path} HTTP/1.0\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes()
            .into_iter()
            .chain(body.iter().copied())
            .collect(),
        ),
    ];
    for (name, request) in &accepted {
        let addr = relay.addr;
        let request = request.clone();
        assert_eq!(
            tokio::task::spawn_blocking(move || raw(addr, &request))
                .await
                .unwrap(),
            Some(200),
            "{name}"
        );
    }
    // Two requests in one write on one keep-alive connection: both answered, in order.
    let mut pipelined = post(&token_path, &[], &body);
    let close = b"connection: close\r\n";
    let at = pipelined
        .windows(close.len())
        .position(|w| w == close)
        .unwrap();
    pipelined.drain(at..at + close.len());
    pipelined.extend(post(&token_path, &[], &body));
    let addr = relay.addr;
    let statuses = tokio::task::spawn_blocking(move || raw_all(addr, &pipelined, 2))
        .await
        .unwrap();
    assert_eq!(statuses, vec![200, 200]);
    assert_eq!(event_messages(&broker).await, accepted.len() + 2);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mandatory_signature_and_source_allowlist() {
    let broker = Tansu::start();
    let mut config = secured(&broker);
    config.auth.require_signature = true;
    config.auth.allow_sources = vec!["127.0.0.0/8".parse().unwrap()];
    config.auth.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let relay = TestRelay::start_ready(config).await;
    let body = sample("v2/referral.created.json");
    let signature = openssl_signature(SECRET, &body);
    let signed = ("x-webhook-signature", signature.as_str());
    let bearer = format!("Bearer {BEARER}");
    let unsigned = relay
        .post_with(body.clone(), &[("authorization", &bearer)])
        .await;
    assert_eq!(
        unsigned.status,
        StatusCode::UNAUTHORIZED,
        "a token does not replace a required signature"
    );
    assert_eq!(
        relay.post_with(body.clone(), &[signed]).await.status,
        StatusCode::OK
    );
    // The peer (127.0.0.1) is a trusted proxy, so the forwarded address is the client's.
    let refused = relay
        .post_with(body.clone(), &[signed, ("x-forwarded-for", "198.51.100.7")])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json()["error"], "forbidden");
    let inside = relay
        .post_with(body.clone(), &[signed, ("x-forwarded-for", "127.0.0.9")])
        .await;
    assert_eq!(inside.status, StatusCode::OK);
    assert_eq!(
        relay
            .metric(r#"fp_relay_auth_failures_total{reason="missing_signature"}"#)
            .await,
        1.0
    );
    assert_eq!(
        relay
            .metric(r#"fp_relay_auth_failures_total{reason="source_not_allowed"}"#)
            .await,
        1.0
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_sending_headers_one_byte_a_second_is_cut_off() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(secured(&broker)).await;
    let addr = relay.addr;
    let started = Instant::now();
    let answered = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        for byte in b"POST /webhooks/firstpromoter HTTP/1.1\r\nhost: relay\r\n" {
            if stream.write_all(&[*byte]).is_err() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1000));
            if started.elapsed() > Duration::from_secs(8) {
                return true;
            }
        }
        true
    })
    .await
    .unwrap();
    assert!(
        !answered,
        "the connection was closed while the client dawdled"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "closed after about header_read_timeout (2s), took {:?}",
        started.elapsed()
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_loris_crowd_does_not_stop_a_legitimate_request() {
    let broker = Tansu::start();
    let relay = TestRelay::start_ready(secured(&broker)).await;
    let crowd: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = TcpStream::connect(relay.addr).unwrap();
            stream
                .write_all(b"POST /webhooks/firstpromoter HTTP/1.1\r\nhost: relay\r\ncontent-le")
                .unwrap();
            stream
        })
        .collect();
    let started = Instant::now();
    let reply = relay
        .post_with(
            sample("v2/referral.created.json"),
            &[("authorization", &format!("Bearer {BEARER}"))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served despite 300 idle connections: {:?}",
        started.elapsed()
    );
    drop(crowd);
    relay.shutdown().await;
}

mod tls {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::client::TlsStream;

    struct Pki {
        ca: rcgen::Certificate,
        ca_key: rcgen::KeyPair,
    }

    impl Pki {
        fn new() -> Self {
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = params.self_signed(&ca_key).unwrap();
            Self { ca, ca_key }
        }

        /// A leaf for localhost with `name` as its common name, written to `dir`.
        fn issue(&self, dir: &std::path::Path, name: &str) -> CertificateDer<'static> {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let leaf = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
            // Write to temporary names and rename, as a certificate manager would.
            std::fs::write(dir.join("tls.crt.tmp"), leaf.pem()).unwrap();
            std::fs::write(dir.join("tls.key.tmp"), key.serialize_pem()).unwrap();
            std::fs::rename(dir.join("tls.key.tmp"), dir.join("tls.key")).unwrap();
            std::fs::rename(dir.join("tls.crt.tmp"), dir.join("tls.crt")).unwrap();
            leaf.der().clone()
        }
    }

    async fn connect(
        addr: SocketAddr,
        pki: &Pki,
        alpn: &[&[u8]],
    ) -> (TlsStream<tokio::net::TcpStream>, Vec<u8>) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        (stream, leaf)
    }

    fn request(body: Bytes) -> http::Request<Full<Bytes>> {
        http::Request::post(format!(
            "https://localhost/webhooks/firstpromoter/{PATH_TOKEN}"
        ))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn https_serves_http1_and_http2_and_reloads_the_certificate_without_dropping_connections()
    {
        let broker = Tansu::start();
        let dir = std::env::temp_dir().join(format!("fp-relay-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki::new();
        let first = pki.issue(&dir, "first");
        let mut config = secured(&broker);
        config.http.tls = Some(TlsConfig {
            cert_path: dir.join("tls.crt"),
            key_path: dir.join("tls.key"),
            reload_interval: Duration::from_millis(100),
        });
        let relay = TestRelay::start_ready(config).await;
        let body = sample("v1/lead_signup.json");

        // HTTP/2 by ALPN.
        let (stream, leaf) = connect(relay.addr, &pki, &[b"h2", b"http/1.1"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(leaf, first.to_vec());
        let (mut h2, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let response = h2.send_request(request(body.clone())).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);

        // HTTP/1.1, kept open across the reload.
        let (stream, _) = connect(relay.addr, &pki, &[b"http/1.1"]).await;
        let (mut h1, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let response = h1.send_request(request(body.clone())).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();

        let second = pki.issue(&dir, "second");
        let reloaded = common::eventually(Duration::from_secs(10), async || {
            connect(relay.addr, &pki, &[b"http/1.1"]).await.1 == second.to_vec()
        })
        .await;
        assert!(reloaded, "new handshakes get the new certificate");
        let response = h1
            .send_request(request(body.clone()))
            .await
            .expect("the old connection still works");
        assert_eq!(response.status(), StatusCode::OK);

        // Plain HTTP on the TLS port is refused, not served.
        let addr = relay.addr;
        let plain = tokio::task::spawn_blocking(move || {
            raw(addr, &post("/webhooks/firstpromoter", &[], b"{}"))
        })
        .await
        .unwrap();
        assert_eq!(plain, None);
        assert_eq!(event_messages(&broker).await, 3);
        relay.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
