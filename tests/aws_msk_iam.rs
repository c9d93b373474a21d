//! AWS MSK IAM: `sasl.mechanism = "AWS_MSK_IAM"`. The relay signs OAUTHBEARER tokens from AWS
//! credentials; the tests' broker proxy verifies each token's SigV4 signature with its own
//! implementation (tests/support/sasl_proxy.py) before letting the connection through to
//! tansu. Credentials come from the environment, or from a web identity exchanged at a fake
//! STS the test serves; the credential chain's other sources are checked against fakes of the
//! container endpoint and the instance metadata service.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::secure::{Pki, SecureKafka, Security};
use common::{consume_with, eventually, get, sample, serve_http};
use fp_relay::kafka::aws::credentials::{resolve, CredentialsError};
use http::StatusCode;
use http_body_util::{BodyExt, Full};

const WAIT: Duration = Duration::from_secs(20);

/// A consumer that reads through the proxy with an unsecured JWT (subject `reader`).
fn reader(pki: &Pki) -> Vec<(String, String)> {
    [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "OAUTHBEARER"),
        ("enable.sasl.oauthbearer.unsecure.jwt", "true"),
        ("sasl.oauthbearer.config", "principal=reader"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .chain([("ssl.ca.location".to_owned(), pki.ca().display().to_string())])
    .collect()
}

/// The relay's environment for MSK IAM through the proxy, plus `more`.
fn msk_env<'a>(ca: &'a str, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("FP_RELAY_KAFKA_PROPERTY_SASL_MECHANISM", "AWS_MSK_IAM"),
        ("FP_RELAY_KAFKA_PROPERTY_SSL_CA_LOCATION", ca),
        ("FP_RELAY_KAFKA_AWS_REGION", "eu-west-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    env.extend_from_slice(more);
    env
}

async fn readyz_says(relay: &common::RelayProcess, what: &str) -> bool {
    eventually(WAIT, async || {
        common::try_get(relay.admin, "/readyz").await.is_some()
            && get(relay.admin, "/readyz").await.text().contains(what)
    })
    .await
}

/// Keys from the environment: events reach Kafka through a connection whose token the broker
/// side verified; a wrong secret key is refused there, and the relay acknowledges nothing and
/// says why.
#[tokio::test(flavor = "multi_thread")]
async fn keys_from_the_environment_sign_tokens_the_broker_verifies() {
    let pki = Pki::new();
    let kafka = SecureKafka::start_with(
        &Security {
            mechanisms: &["OAUTHBEARER"],
            users: &[("reader", "")],
            tls: Some(&pki),
            mutual: false,
        },
        &[
            "--msk-iam-keys",
            "AKIATESTRELAY0001:the-secret-key:the-session-token",
        ],
    );
    let ca = pki.ca().display().to_string();
    let relay = common::RelayProcess::launch(
        &kafka.bootstrap(),
        &msk_env(
            &ca,
            &[
                ("AWS_ACCESS_KEY_ID", "AKIATESTRELAY0001"),
                ("AWS_SECRET_ACCESS_KEY", "the-secret-key"),
                ("AWS_SESSION_TOKEN", "the-session-token"),
            ],
        ),
        &[],
    );
    assert!(
        relay.wait_ready(WAIT).await.is_some(),
        "{:?}",
        kafka.refusals()
    );
    assert_eq!(
        relay.post(sample("v1/lead_signup.json")).await,
        StatusCode::OK
    );
    assert!(kafka
        .authenticated()
        .contains(&"AKIATESTRELAY0001".to_owned()));
    relay.terminate().await;
    let events = consume_with(
        &kafka.bootstrap(),
        &reader(&pki),
        "firstpromoter.lead_signup",
        1,
        WAIT,
    )
    .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].header("fp-event-id"), Some("22736304"));

    // The commands read the same Kafka settings and sign their own tokens: `tail` finds it.
    let tail = std::process::Command::new(env!("CARGO_BIN_EXE_fp-relay"))
        .args(["tail", "--brokers", &kafka.bootstrap(), "--from-beginning"])
        .args([
            "--event",
            "lead_signup",
            "--count",
            "1",
            "--idle-exit",
            "20s",
        ])
        .envs(msk_env(
            &ca,
            &[
                ("AWS_ACCESS_KEY_ID", "AKIATESTRELAY0001"),
                ("AWS_SECRET_ACCESS_KEY", "the-secret-key"),
                ("AWS_SESSION_TOKEN", "the-session-token"),
            ],
        ))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&tail.stdout);
    assert!(
        tail.status.success() && printed.contains("22736304"),
        "{printed}\n{}",
        String::from_utf8_lossy(&tail.stderr)
    );

    let wrong = common::RelayProcess::launch(
        &kafka.bootstrap(),
        &msk_env(
            &ca,
            &[
                ("AWS_ACCESS_KEY_ID", "AKIATESTRELAY0001"),
                ("AWS_SECRET_ACCESS_KEY", "not-the-secret-key"),
                ("AWS_SESSION_TOKEN", "the-session-token"),
            ],
        ),
        &[],
    );
    assert!(
        readyz_says(&wrong, "failing: authentication").await,
        "{}",
        get(wrong.admin, "/readyz").await.text()
    );
    assert_eq!(
        wrong.post(sample("v1/lead_signup.json")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(kafka
        .refusals()
        .iter()
        .any(|r| r.contains("signature does not match")));
    let (_, lines) = wrong.terminate().await;
    let text = serde_json::to_string(&lines).unwrap();
    assert!(
        !text.contains("not-the-secret-key") && !text.contains("the-session-token"),
        "no secret in the log"
    );
}

/// A fake STS: `AssumeRoleWithWebIdentity` for `role` with the token `accepted` (read from the
/// token file as the relay sends it); each call issues the next temporary keys, expiring after
/// `lifetime`. Counts the calls it granted.
async fn fake_sts(
    role: &'static str,
    accepted: &'static str,
    lifetime: Duration,
) -> (String, Arc<AtomicUsize>) {
    let granted = Arc::new(AtomicUsize::new(0));
    let counter = granted.clone();
    let addr = serve_http(move |request: http::Request<hyper::body::Incoming>| {
        let counter = counter.clone();
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let form: HashMap<String, String> = form_urlencoded(&body);
            let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
            if get("Action") != "AssumeRoleWithWebIdentity"
                || get("RoleArn") != role
                || get("WebIdentityToken") != accepted
            {
                return xml(
                    403,
                    "<ErrorResponse><Error><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error></ErrorResponse>".into(),
                );
            }
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let expires = std::time::SystemTime::now() + lifetime;
            let expiration = iso_8601(expires);
            xml(
                200,
                format!(
                    "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
                     <AccessKeyId>ASIATEST{n:04}</AccessKeyId><SecretAccessKey>secret-{n}</SecretAccessKey>\
                     <SessionToken>session-{n}</SessionToken><Expiration>{expiration}</Expiration>\
                     </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
                ),
            )
        }
    })
    .await;
    (format!("http://{addr}"), granted)
}

fn form_urlencoded(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// `2026-12-02T06:15:00Z`.
fn iso_8601(at: std::time::SystemTime) -> String {
    let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let stamp = fp_relay::kafka::aws::sigv4::Stamp::at(secs).time;
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    )
}

fn xml(status: u16, body: String) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/xml")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// EKS IRSA: a web identity token in a file, exchanged at STS for keys that expire. A token
/// file STS refuses leaves the relay refusing events with the reason named; once the kubelet
/// writes a good token, the relay gets keys and serves. Keys that live 8 s are fetched again
/// before they expire, and connections opened later (the proxy closes each after 2 s)
/// authenticate with tokens signed by the newer keys.
#[tokio::test(flavor = "multi_thread")]
async fn a_web_identity_is_exchanged_for_keys_that_are_renewed_before_they_expire() {
    let pki = Pki::new();
    let keys: Vec<String> = (1..=60)
        .map(|n| format!("ASIATEST{n:04}:secret-{n}:session-{n}"))
        .collect();
    let kafka = SecureKafka::start_with(
        &Security {
            mechanisms: &["OAUTHBEARER"],
            users: &[("reader", "")],
            tls: Some(&pki),
            mutual: false,
        },
        &[
            "--msk-iam-keys",
            &keys.join(","),
            "--max-connection-age",
            "2",
        ],
    );
    let role = "arn:aws:iam::123456789012:role/fp-relay";
    let (sts, granted) = fake_sts(role, "the-projected-token", Duration::from_secs(8)).await;
    let token_file = pki.dir.join("aws-web-identity-token");
    std::fs::write(&token_file, "an-expired-token\n").unwrap();
    let ca = pki.ca().display().to_string();
    let token_path = token_file.display().to_string();
    let relay = common::RelayProcess::launch(
        &kafka.bootstrap(),
        &msk_env(
            &ca,
            &[
                ("AWS_ACCESS_KEY_ID", ""),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", &token_path),
                ("AWS_ROLE_ARN", role),
                ("AWS_ENDPOINT_URL_STS", &sts),
                ("FP_RELAY_FULFILMENT_ENABLED", "false"),
                // librdkafka backs off longer after each lost connection; the proxy cuts one
                // every 2 s here, which no cluster does.
                ("FP_RELAY_KAFKA_PROPERTY_RECONNECT_BACKOFF_MAX_MS", "500"),
            ],
        ),
        &[],
    );
    assert!(
        readyz_says(&relay, "failing: authentication").await,
        "{}",
        get(relay.admin, "/readyz").await.text()
    );
    assert_eq!(
        relay.post(sample("v1/lead_signup.json")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(granted.load(Ordering::SeqCst), 0);

    std::fs::write(&token_file, "the-projected-token\n").unwrap();
    assert!(
        eventually(Duration::from_secs(45), async || relay
            .post(sample("v1/lead_signup.json"))
            .await
            == StatusCode::OK)
        .await,
        "the relay serves once STS accepts the token: {:?}",
        kafka.refusals()
    );
    let first = granted.load(Ordering::SeqCst);
    // Three lifetimes of the keys, events all along. A write in flight when the proxy cuts
    // its connection may miss its 3 s acknowledgement (and is answered 503, truthfully): each
    // round asks until one is acknowledged.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            eventually(WAIT, async || relay
                .post(sample("v1/lead_signup.json"))
                .await
                == StatusCode::OK)
            .await,
            "the relay serves through renewals: {:?}",
            kafka.refusals()
        );
    }
    let renewed = granted.load(Ordering::SeqCst);
    assert!(
        renewed >= first + 3,
        "keys fetched again before they expire: {first} then {renewed}"
    );
    let principals: std::collections::BTreeSet<String> = kafka
        .authenticated()
        .into_iter()
        .filter(|p| p.starts_with("ASIATEST"))
        .collect();
    assert!(
        principals.len() >= 3,
        "later connections signed with newer keys: {principals:?}"
    );
    relay.terminate().await;
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The chain's order and its other sources, against fakes: the environment first; the
/// container endpoint (EKS Pod Identity) with its authorization token file; IMDSv2 with its
/// session token; and nothing configured is "not found", not an error of some source.
#[tokio::test(flavor = "multi_thread")]
async fn the_credential_chain_reads_each_source_as_aws_sdks_do() {
    let json = |body: &str| {
        http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    };
    let creds = r#"{"AccessKeyId":"ASIACONTAINER","SecretAccessKey":"s","Token":"t","Expiration":"2099-01-01T00:00:00Z"}"#;
    let pod_identity = serve_http(move |request: http::Request<hyper::body::Incoming>| {
        let authorized = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .is_some_and(|v| v == "pod-identity-token");
        async move {
            if authorized && request.uri().path() == "/v1/credentials" {
                json(creds)
            } else {
                http::Response::builder()
                    .status(401)
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            }
        }
    })
    .await;
    let dir = std::env::temp_dir().join(format!("fp-relay-aws-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("eks-pod-identity-token");
    std::fs::write(&token_file, "pod-identity-token\n").unwrap();
    let full_uri = format!("http://{pod_identity}/v1/credentials");
    let token_path = token_file.display().to_string();

    let found = resolve(
        &env(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full_uri),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_path),
        ]),
        "eu-west-1",
    )
    .await
    .unwrap();
    assert_eq!(found.access_key_id, "ASIACONTAINER");
    assert_eq!(found.session_token.as_deref(), Some("t"));
    assert_eq!(found.expires_at, Some(4_070_908_800));
    assert_eq!(found.source, "container");

    // The environment wins over every other source.
    let found = resolve(
        &env(&[
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full_uri),
        ]),
        "eu-west-1",
    )
    .await
    .unwrap();
    assert_eq!(
        (found.access_key_id.as_str(), found.source),
        ("AKIAENV", "environment")
    );

    // IMDSv2: PUT a session token, then the role, then its keys, each with the token.
    let session = "imds-session-token";
    let imds = serve_http(move |request: http::Request<hyper::body::Incoming>| {
        let token = request
            .headers()
            .get("x-aws-ec2-metadata-token")
            .map(|v| v.to_str().unwrap().to_owned());
        let ttl = request
            .headers()
            .contains_key("x-aws-ec2-metadata-token-ttl-seconds");
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        async move {
            let deny = || {
                http::Response::builder()
                    .status(401)
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            };
            match (method.as_str(), path.as_str()) {
                ("PUT", "/latest/api/token") if ttl => json(session),
                _ if token.as_deref() != Some(session) => deny(),
                ("GET", "/latest/meta-data/iam/security-credentials/") => json("fp-relay-node\n"),
                ("GET", "/latest/meta-data/iam/security-credentials/fp-relay-node") => json(
                    r#"{"Code":"Success","AccessKeyId":"ASIAINSTANCE","SecretAccessKey":"s","Token":"t","Expiration":"2099-01-01T00:00:00Z"}"#,
                ),
                _ => deny(),
            }
        }
    })
    .await;
    let endpoint = format!("http://{imds}");
    let found = resolve(
        &env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint)]),
        "eu-west-1",
    )
    .await
    .unwrap();
    assert_eq!(
        (found.access_key_id.as_str(), found.source),
        ("ASIAINSTANCE", "instance_profile")
    );

    // Nothing configured, no metadata service: not found.
    let nowhere = format!("http://127.0.0.1:{}", common::free_port());
    assert_eq!(
        resolve(
            &env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &nowhere)]),
            "eu-west-1"
        )
        .await,
        Err(CredentialsError::NotFound)
    );
    // A configured source that fails is named, with what it said.
    let wrong_token = dir.join("wrong");
    std::fs::write(&wrong_token, "not-the-token").unwrap();
    let wrong_path = wrong_token.display().to_string();
    let failed = resolve(
        &env(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full_uri),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &wrong_path),
        ]),
        "eu-west-1",
    )
    .await
    .unwrap_err();
    assert!(
        failed.to_string().contains("container") && failed.to_string().contains("401"),
        "{failed}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
