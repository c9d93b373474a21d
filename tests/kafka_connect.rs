//! Connecting to the Kafka that users run: every compression codec both ways, SASL (PLAIN,
//! SCRAM-SHA-256/512) over TLS, OAUTHBEARER, mutual TLS, secrets from files that are fixed
//! while the relay runs, and what an operator sees when a setting is wrong. Against tansu, behind
//! the authenticating proxy of `tests/common/secure.rs` where authentication is involved.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::secure::{sasl_properties, Pki, SecureKafka, Security, TokenEndpoint};
use common::{consume, consume_with, eventually, get, produce_with, sample, Tansu, TestRelay};
use fp_relay::config::Config;
use http::StatusCode;

const REQUESTS: &str = "firstpromoter.fulfilment_pending";
const REPLIES: &str = "firstpromoter.fulfilment_replies";
const WAIT: Duration = Duration::from_secs(20);

/// Replies compressed with each codec a fulfiller may use are heard (the relay's consumer
/// decompresses all four), and the relay's own records can be compressed with each.
#[tokio::test(flavor = "multi_thread")]
async fn every_codec_both_ways() {
    let broker = Tansu::start();
    let mut seen: Vec<String> = Vec::new();
    for (n, codec) in ["gzip", "snappy", "lz4", "zstd"].into_iter().enumerate() {
        let mut config = common::test_config(&broker.bootstrap());
        config.fulfilment.timeout = Duration::from_secs(10);
        config
            .kafka
            .producer_properties
            .insert("compression.type".into(), codec.into());
        config.validate().unwrap();
        let relay = TestRelay::start_ready(config).await;

        let event = relay.post(sample("v1/lead_signup.json")).await;
        assert_eq!(event.status, StatusCode::OK, "{codec}: {}", event.text());

        // A reward of its own per codec: a reward answered fulfilled is remembered, not asked
        // about again.
        let body = String::from_utf8(sample("v1/fulfilment_pending.json").to_vec())
            .unwrap()
            .replacen(r#""id": 771204"#, &format!(r#""id": {}"#, 771_204 + n), 1);
        let held = relay.post_in_background(body.into());
        // The request this relay just published: the correlation id not seen before.
        let mut correlation_id = None;
        let found = eventually(WAIT, async || {
            let ids: Vec<String> = consume(
                &broker.bootstrap(),
                REQUESTS,
                usize::MAX,
                Duration::from_millis(300),
                Duration::ZERO,
            )
            .await
            .iter()
            .filter_map(|r| r.header("fp-correlation-id").map(str::to_owned))
            .collect();
            correlation_id = ids.into_iter().find(|id| !seen.contains(id));
            correlation_id.is_some()
        })
        .await;
        assert!(found, "{codec}: the request was published");
        let correlation_id = correlation_id.unwrap();
        seen.push(correlation_id.clone());
        produce_with(
            &broker.bootstrap(),
            &[("compression.type", codec)],
            REPLIES,
            None,
            None,
            &[("fp-correlation-id", &correlation_id)],
            r#"{"outcome":"fulfilled","reason":"compressed"}"#,
        )
        .await;
        let answer = held.await.unwrap();
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{codec}: a reply compressed with {codec} was heard: {}",
            answer.text()
        );
        relay.shutdown().await;
    }
    let events = consume(
        &broker.bootstrap(),
        "firstpromoter.lead_signup",
        4,
        WAIT,
        Duration::ZERO,
    )
    .await;
    assert_eq!(
        events.len(),
        4,
        "one event written with each codec, all read back"
    );
}

fn relay_config(kafka: &SecureKafka, properties: &[(String, String)]) -> Config {
    let mut config = common::test_config(&kafka.bootstrap());
    config.fulfilment.enabled = false;
    for (key, value) in properties {
        config.kafka.properties.insert(key.clone(), value.clone());
    }
    config.validate().unwrap();
    config
}

/// SASL over TLS with each password mechanism: events reach Kafka through the authenticated
/// connection, and what a consumer with the same credentials reads is what was sent. With
/// SCRAM-SHA-512, fulfilment too: the request goes out and the reply comes back through the
/// same authenticated connections (the reply consumer's), and the held request gets its 200.
#[tokio::test(flavor = "multi_thread")]
async fn sasl_over_tls_with_each_password_mechanism() {
    let pki = Pki::new();
    let mechanisms = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
    let kafka = SecureKafka::start(&Security {
        mechanisms: &mechanisms,
        users: &[("fp-relay", "relay-password-0123")],
        tls: Some(&pki),
        mutual: false,
    });
    for mechanism in mechanisms {
        let properties = sasl_properties(
            mechanism,
            "fp-relay",
            "relay-password-0123",
            Some(&pki.ca()),
        );
        let mut config = relay_config(&kafka, &properties);
        let fulfil = mechanism == "SCRAM-SHA-512";
        if fulfil {
            config.fulfilment.enabled = true;
            config.fulfilment.timeout = Duration::from_secs(10);
            config.validate().unwrap();
        }
        let relay = TestRelay::start_ready(config).await;
        let reply = relay.post(sample("v1/lead_signup.json")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{mechanism}: {}",
            reply.text()
        );
        if fulfil {
            let held = relay.post_in_background(sample("v1/fulfilment_pending.json"));
            let requests = consume_with(&kafka.bootstrap(), &properties, REQUESTS, 1, WAIT).await;
            let correlation_id = requests
                .first()
                .and_then(|r| r.header("fp-correlation-id"))
                .expect("the request was published through SASL")
                .to_owned();
            let authenticated: Vec<(&str, &str)> = properties
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            produce_with(
                &kafka.bootstrap(),
                &authenticated,
                REPLIES,
                None,
                None,
                &[("fp-correlation-id", &correlation_id)],
                r#"{"outcome":"fulfilled","reason":"over SASL"}"#,
            )
            .await;
            let answer = held.await.unwrap();
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "the reply was heard through SASL: {}",
                answer.text()
            );
        }
        relay.shutdown().await;
    }
    let properties = sasl_properties(
        "SCRAM-SHA-512",
        "fp-relay",
        "relay-password-0123",
        Some(&pki.ca()),
    );
    let events = consume_with(
        &kafka.bootstrap(),
        &properties,
        "firstpromoter.lead_signup",
        3,
        WAIT,
    )
    .await;
    assert_eq!(events.len(), 3, "one event per mechanism");
    assert!(events
        .iter()
        .all(|e| e.header("fp-event-id") == Some("22736304")));
}

/// Mutual TLS: the relay presents a client certificate the broker requires; one the broker
/// refuses is named, and the renewed pair written over it is used without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_a_client_certificate() {
    let pki = Pki::new();
    let kafka = SecureKafka::start(&Security {
        mechanisms: &[],
        users: &[],
        tls: Some(&pki),
        mutual: true,
    });
    // First a certificate from a CA the broker does not trust (an expired or wrong issue).
    let other = Pki::new();
    let (wrong_cert, wrong_key) = other.issue("fp-relay", "client");
    let (cert, key) = (pki.dir.join("client.pem"), pki.dir.join("client.key"));
    std::fs::copy(&wrong_cert, &cert).unwrap();
    std::fs::copy(&wrong_key, &key).unwrap();
    let properties = vec![
        ("security.protocol".to_owned(), "SSL".to_owned()),
        ("ssl.ca.location".to_owned(), pki.ca().display().to_string()),
        (
            "ssl.certificate.location".to_owned(),
            cert.display().to_string(),
        ),
        ("ssl.key.location".to_owned(), key.display().to_string()),
    ];
    let mut config = relay_config(&kafka, &properties);
    config.kafka.credentials_check_interval = Duration::from_millis(200);
    config.kafka.ack_timeout = Duration::from_secs(3);
    let relay = TestRelay::start(config).await;
    assert_eq!(
        relay.post(sample("v1/lead_signup.json")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        eventually(WAIT, async || get(relay.admin, "/readyz")
            .await
            .text()
            .contains("failing: tls"))
        .await,
        "{}",
        get(relay.admin, "/readyz").await.text()
    );
    // cert-manager writes the renewed pair in place: picked up without a restart.
    pki.issue("fp-relay", "client");
    assert!(
        eventually(Duration::from_secs(30), async || relay
            .post(sample("v1/lead_signup.json"))
            .await
            .status
            == StatusCode::OK)
        .await,
        "the renewed certificate is used"
    );
    relay.shutdown().await;
    let events = consume_with(
        &kafka.bootstrap(),
        &properties,
        "firstpromoter.lead_signup",
        1,
        WAIT,
    )
    .await;
    assert_eq!(events.len(), 1, "only what was acknowledged");
}

/// A wrong SASL password: nothing is acknowledged (503), /readyz names the reason, and once
/// the password's file is fixed the relay recovers by itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_named_and_fixing_its_file_recovers_the_relay() {
    let pki = Pki::new();
    let kafka = SecureKafka::start(&Security {
        mechanisms: &["SCRAM-SHA-512"],
        users: &[("fp-relay", "the-right-password")],
        tls: Some(&pki),
        mutual: false,
    });
    let secret = pki.dir.join("sasl-password");
    std::fs::write(&secret, "a-wrong-password\n").unwrap();
    let env = [
        ("FP_RELAY_KAFKA_BROKERS".to_owned(), kafka.bootstrap()),
        (
            "FP_RELAY_AUTH_INSECURE_NO_AUTH".to_owned(),
            "true".to_owned(),
        ),
        ("FP_RELAY_FULFILMENT_ENABLED".to_owned(), "false".to_owned()),
        ("FP_RELAY_KAFKA_ACK_TIMEOUT".to_owned(), "3s".to_owned()),
        (
            "FP_RELAY_KAFKA_PROPERTY_SECURITY_PROTOCOL".to_owned(),
            "SASL_SSL".to_owned(),
        ),
        (
            "FP_RELAY_KAFKA_PROPERTY_SASL_MECHANISM".to_owned(),
            "SCRAM-SHA-512".to_owned(),
        ),
        (
            "FP_RELAY_KAFKA_PROPERTY_SASL_USERNAME".to_owned(),
            "fp-relay".to_owned(),
        ),
        (
            "FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD_FILE".to_owned(),
            secret.display().to_string(),
        ),
        (
            "FP_RELAY_KAFKA_PROPERTY_SSL_CA_LOCATION".to_owned(),
            pki.ca().display().to_string(),
        ),
        (
            "FP_RELAY_KAFKA_CREDENTIALS_CHECK_INTERVAL".to_owned(),
            "200ms".to_owned(),
        ),
        ("FP_RELAY_HTTP_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("FP_RELAY_ADMIN_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
    ];
    let config = Config::load(None, env, &Default::default()).unwrap();
    let relay = TestRelay::start(config).await;
    let reply = relay.post(sample("v1/lead_signup.json")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert!(
        eventually(WAIT, async || get(relay.admin, "/readyz")
            .await
            .text()
            .contains("authentication"))
        .await,
        "/readyz names the failure: {}",
        get(relay.admin, "/readyz").await.text()
    );
    std::fs::write(&secret, "the-right-password\n").unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || relay
            .post(sample("v1/lead_signup.json"))
            .await
            .status
            == StatusCode::OK)
        .await,
        "the relay recovers once the password's file is fixed"
    );
    relay.shutdown().await;
}

/// OAUTHBEARER with OIDC client credentials, librdkafka's own token fetch: with a wrong client
/// secret nothing is acknowledged and /readyz names it; once the secret's file is fixed the
/// relay fetches a token, events reach Kafka through the OAuth-authenticated connection, and
/// the token is fetched again before it expires.
#[tokio::test(flavor = "multi_thread")]
async fn oauth_client_credentials_from_a_token_endpoint_refreshed_before_expiry() {
    let pki = Pki::new();
    let kafka = SecureKafka::start(&Security {
        mechanisms: &["OAUTHBEARER"],
        users: &[("fp-relay-client", "")],
        tls: Some(&pki),
        mutual: false,
    });
    let lifetime = Duration::from_secs(6);
    let endpoint = TokenEndpoint::start(
        "fp-relay-client",
        "the-client-secret",
        "kafka.produce",
        "fp-relay-client",
        lifetime,
    )
    .await;
    let secret = pki.dir.join("client-secret");
    std::fs::write(&secret, "a-wrong-secret\n").unwrap();
    let property = |name: &str, value: &str| {
        (
            format!(
                "FP_RELAY_KAFKA_PROPERTY_{}",
                name.replace('.', "_").to_ascii_uppercase()
            ),
            value.to_owned(),
        )
    };
    let env = [
        ("FP_RELAY_KAFKA_BROKERS".to_owned(), kafka.bootstrap()),
        (
            "FP_RELAY_AUTH_INSECURE_NO_AUTH".to_owned(),
            "true".to_owned(),
        ),
        ("FP_RELAY_KAFKA_ACK_TIMEOUT".to_owned(), "3s".to_owned()),
        (
            "FP_RELAY_KAFKA_CREDENTIALS_CHECK_INTERVAL".to_owned(),
            "200ms".to_owned(),
        ),
        ("FP_RELAY_HTTP_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("FP_RELAY_ADMIN_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        property("security.protocol", "SASL_SSL"),
        property("ssl.ca.location", &pki.ca().display().to_string()),
        property("sasl.mechanism", "OAUTHBEARER"),
        property("sasl.oauthbearer.method", "oidc"),
        property("sasl.oauthbearer.client.id", "fp-relay-client"),
        property(
            "sasl.oauthbearer.client.secret_file",
            &secret.display().to_string(),
        ),
        property("sasl.oauthbearer.token.endpoint.url", &endpoint.url),
        property("sasl.oauthbearer.scope", "kafka.produce"),
        property(
            "sasl.oauthbearer.extensions",
            "logicalCluster=lkc-test,identityPoolId=pool-test",
        ),
    ];
    let config = Config::load(None, env, &Default::default()).unwrap();
    let relay = TestRelay::start(config).await;
    assert_eq!(
        relay.post(sample("v1/lead_signup.json")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        eventually(WAIT, async || get(relay.admin, "/readyz")
            .await
            .text()
            .contains("failing: authentication"))
        .await,
        "/readyz names the failure: {}",
        get(relay.admin, "/readyz").await.text()
    );
    assert!(endpoint.refused.load(Ordering::SeqCst) >= 1);
    assert_eq!(endpoint.issued.load(Ordering::SeqCst), 0);

    std::fs::write(&secret, "the-client-secret\n").unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || relay
            .post(sample("v1/lead_signup.json"))
            .await
            .status
            == StatusCode::OK)
        .await,
        "the relay recovers once the secret's file is fixed"
    );
    let first = endpoint.issued.load(Ordering::SeqCst);
    assert!(first >= 1);
    // librdkafka asks again at 80 % of the token's life: twice within two lifetimes.
    tokio::time::sleep(lifetime * 2).await;
    assert!(
        endpoint.issued.load(Ordering::SeqCst) >= first + 2,
        "refreshed before expiry: {} tokens after {first}",
        endpoint.issued.load(Ordering::SeqCst)
    );
    // A new connection after the first token expired authenticates with a fresh one.
    assert_eq!(
        relay.post(sample("v1/lead_signup.json")).await.status,
        StatusCode::OK
    );
    relay.shutdown().await;
    let reader = [
        ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
        ("ssl.ca.location".to_owned(), pki.ca().display().to_string()),
        ("sasl.mechanism".to_owned(), "OAUTHBEARER".to_owned()),
        (
            "enable.sasl.oauthbearer.unsecure.jwt".to_owned(),
            "true".to_owned(),
        ),
        (
            "sasl.oauthbearer.config".to_owned(),
            "principal=fp-relay-client".to_owned(),
        ),
    ];
    let events = consume_with(
        &kafka.bootstrap(),
        &reader,
        "firstpromoter.lead_signup",
        2,
        WAIT,
    )
    .await;
    assert_eq!(events.len(), 2, "only what was acknowledged");
    assert!(events
        .iter()
        .all(|e| e.header("fp-event-id") == Some("22736304")));
}

/// Four faults an operator meets, four different answers: a wrong password, an untrusted
/// broker certificate, a mechanism the cluster does not offer, and no broker at all. Each is
/// named on `/readyz` and in one log line with what to check (librdkafka repeats them every few
/// hundred milliseconds: those are counted, not logged), and nothing is acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn each_connection_fault_has_its_own_answer_said_once() {
    let pki = Pki::new();
    let other_ca = Pki::new();
    let kafka = SecureKafka::start(&Security {
        mechanisms: &["SCRAM-SHA-512"],
        users: &[("fp-relay", "the-right-password")],
        tls: Some(&pki),
        mutual: false,
    });
    let ca = pki.ca().display().to_string();
    let untrusted = other_ca.ca().display().to_string();
    let unreachable = format!("127.0.0.1:{}", common::free_port());
    let cases: [(&str, &str, &str, &str, &str); 4] = [
        (
            "authentication",
            "SCRAM-SHA-512",
            "a-wrong-password",
            &ca,
            &kafka.bootstrap(),
        ),
        (
            "tls",
            "SCRAM-SHA-512",
            "the-right-password",
            &untrusted,
            &kafka.bootstrap(),
        ),
        (
            "sasl_mechanism",
            "PLAIN",
            "the-right-password",
            &ca,
            &kafka.bootstrap(),
        ),
        (
            "unreachable",
            "SCRAM-SHA-512",
            "the-right-password",
            &ca,
            &unreachable,
        ),
    ];
    for (kind, mechanism, password, ca, bootstrap) in cases {
        let relay = common::RelayProcess::launch(
            bootstrap,
            &[
                ("FP_RELAY_FULFILMENT_ENABLED", "false"),
                ("FP_RELAY_KAFKA_PROPERTY_SECURITY_PROTOCOL", "SASL_SSL"),
                ("FP_RELAY_KAFKA_PROPERTY_SASL_MECHANISM", mechanism),
                ("FP_RELAY_KAFKA_PROPERTY_SASL_USERNAME", "fp-relay"),
                ("FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD", password),
                ("FP_RELAY_KAFKA_PROPERTY_SSL_CA_LOCATION", ca),
            ],
            &[],
        );
        let named = eventually(WAIT, async || {
            common::try_get(relay.admin, "/readyz").await.is_some()
                && get(relay.admin, "/readyz").await.json()["checks"]["kafka_producer"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("failing: {kind}")))
        })
        .await;
        let ready = get(relay.admin, "/readyz").await;
        assert!(named, "{kind}: {}", ready.text());
        assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            relay.post(sample("v1/lead_signup.json")).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Long enough for librdkafka to say it again and again.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let metrics = get(relay.admin, "/metrics").await.text();
        let reports: f64 = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "fp_relay_kafka_client_errors_total{{kind=\"{kind}\"}} "
                ))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let (_, lines) = relay.terminate().await;
        let said: Vec<_> = lines
            .iter()
            .filter(|l| l["kind"] == kind && l["level"] == "ERROR")
            .collect();
        if kind == "unreachable" {
            // Said by the outage lines instead (once, then summaries).
            assert!(lines.iter().any(|l| l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Kafka cluster unreachable"))));
        } else {
            assert_eq!(said.len(), 1, "{kind}: said once: {said:?}");
            assert!(reports >= 1.0, "{kind}: counted");
        }
    }
}

/// tansu's own `--authentication`, no proxy: a SCRAM user the broker does not know, and a
/// client that offers no SASL at all (the broker hangs up at its first request); then plaintext
/// spoken to a TLS port. Each is named on `/readyz` as what to fix, counted, and nothing is
/// acknowledged (503: FirstPromoter v1 never retries a 2xx'd event, and retries a 503'd v2 or
/// fulfilment event).
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_requires_what_the_relay_does_not_do_is_named() {
    let kafka = Tansu::start_authenticating();
    let pki = Pki::new();
    let tls_only = SecureKafka::start(&Security {
        mechanisms: &[],
        users: &[],
        tls: Some(&pki),
        mutual: false,
    });
    type Properties<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, String, Properties); 3] = [
        (
            "authentication",
            kafka.bootstrap(),
            &[
                (
                    "FP_RELAY_KAFKA_PROPERTY_SECURITY_PROTOCOL",
                    "SASL_PLAINTEXT",
                ),
                ("FP_RELAY_KAFKA_PROPERTY_SASL_MECHANISM", "SCRAM-SHA-512"),
                (
                    "FP_RELAY_KAFKA_PROPERTY_SASL_USERNAME",
                    "nobody-tansu-knows",
                ),
                ("FP_RELAY_KAFKA_PROPERTY_SASL_PASSWORD", "a-password"),
            ],
        ),
        ("sasl_required", kafka.bootstrap(), &[]),
        ("tls", tls_only.bootstrap(), &[]),
    ];
    for (kind, bootstrap, properties) in cases {
        let mut env = vec![("FP_RELAY_FULFILMENT_ENABLED", "false")];
        env.extend_from_slice(properties);
        let relay = common::RelayProcess::launch(&bootstrap, &env, &[]);
        let named = eventually(WAIT, async || {
            common::try_get(relay.admin, "/readyz").await.is_some()
                && get(relay.admin, "/readyz").await.json()["checks"]["kafka_producer"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("failing: {kind}")))
        })
        .await;
        let ready = get(relay.admin, "/readyz").await;
        assert!(named, "{kind}: {}", ready.text());
        assert_eq!(
            relay.post(sample("v1/lead_signup.json")).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let metrics = get(relay.admin, "/metrics").await.text();
        assert!(
            metrics.contains(&format!(
                "fp_relay_kafka_client_errors_total{{kind=\"{kind}\"}}"
            )),
            "{kind}: counted"
        );
        let (_, lines) = relay.terminate().await;
        let said: Vec<_> = lines
            .iter()
            .filter(|l| l["kind"] == kind && l["level"] == "ERROR")
            .collect();
        assert_eq!(said.len(), 1, "{kind}: said once: {said:?}");
    }
}
