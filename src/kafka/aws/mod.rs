//! AWS MSK IAM authentication: `sasl.mechanism = "AWS_MSK_IAM"` in `[kafka.properties]`, as
//! MSK's documentation and other clients spell it. Kafka sees SASL/OAUTHBEARER with a token
//! that is a SigV4-presigned `kafka-cluster:Connect` URL (the format of AWS's
//! `aws-msk-iam-sasl-signer` libraries), signed with credentials from AWS's default chain
//! ([`credentials`]).
//!
//! Credentials are fetched off the Kafka clients' threads, by a thread of their own that keeps
//! them fresh (half-way through their life, at the latest five minutes before they expire),
//! because librdkafka asks for a token on whatever thread polls the client, a tokio worker
//! included, where nothing may block on the network. Signing itself is local and fast. A token
//! lives for 15 minutes, or less when the credentials expire sooner; librdkafka asks for the
//! next one at 80 % of that.
//!
//! One signer per process: credentials belong to the process (its role), and every client of
//! every command (`serve`, `tail`, `respond`, `redrive`, `spool drain`, `recover`) uses it.

pub mod credentials;
pub mod sigv4;

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use rdkafka::client::OAuthToken;
use rdkafka::ClientConfig;

use self::credentials::{Credentials, CredentialsError, Environment};

/// What users write in `sasl.mechanism`.
pub const MECHANISM: &str = "AWS_MSK_IAM";

/// The `sasl.oauthbearer.config` the relay sets for clients that sign MSK IAM tokens; it
/// reaches [`token`] through librdkafka's refresh callback.
pub const OAUTHBEARER_CONFIG: &str = "fp-relay-aws-msk-iam";

/// How long a signed token is valid (what MSK accepts at most, and what AWS's signers use).
const TOKEN_SECONDS: u64 = 900;

/// Rewrites the properties of a client that asked for `AWS_MSK_IAM` into what librdkafka
/// speaks: OAUTHBEARER with the relay's token, over TLS unless told otherwise. True when it did.
pub fn apply(config: &mut ClientConfig) -> bool {
    // librdkafka reads `sasl.mechanisms` as the same setting.
    let key = ["sasl.mechanism", "sasl.mechanisms"]
        .into_iter()
        .find(|key| config.get(key) == Some(MECHANISM));
    let Some(key) = key else {
        return false;
    };
    config.set(key, "OAUTHBEARER");
    config.set("sasl.oauthbearer.config", OAUTHBEARER_CONFIG);
    if config.get("security.protocol").is_none() {
        config.set("security.protocol", "SASL_SSL");
    }
    true
}

/// True when these properties ask for MSK IAM.
pub fn wanted<'a>(mut properties: impl Iterator<Item = (&'a String, &'a String)>) -> bool {
    properties.any(|(key, value)| {
        matches!(key.as_str(), "sasl.mechanism" | "sasl.mechanisms") && value == MECHANISM
    })
}

/// The process's signer, once [`install`]ed.
static SIGNER: OnceLock<Arc<Signer>> = OnceLock::new();

/// Signs MSK IAM tokens with the freshest credentials it has.
pub struct Signer {
    region: String,
    state: Mutex<State>,
    /// Signalled whenever `state` changes, for whoever waits on the first credentials.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    credentials: Option<Credentials>,
    error: Option<CredentialsError>,
}

/// Why MSK IAM could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("kafka.aws_region: empty, and neither AWS_REGION nor AWS_DEFAULT_REGION is set (MSK IAM signs for the cluster's region)")]
    NoRegion,
    #[error("kafka.aws_region: {0:?} is not an AWS region name")]
    BadRegion(String),
}

/// Starts the process's signer for `region` (empty: `AWS_REGION`, then `AWS_DEFAULT_REGION`):
/// credentials from the environment at once, others fetched by a thread of their own. Then
/// [`Signer::wait`] for them. Installing again returns the first signer.
pub fn install(region: &str) -> Result<Arc<Signer>, SetupError> {
    install_with(region, Arc::new(credentials::ProcessEnvironment))
}

/// [`install`] with another environment (tests).
pub fn install_with(region: &str, env: Arc<dyn Environment>) -> Result<Arc<Signer>, SetupError> {
    if let Some(signer) = SIGNER.get() {
        return Ok(signer.clone());
    }
    let region = match region.trim() {
        "" => env
            .var("AWS_REGION")
            .or_else(|| env.var("AWS_DEFAULT_REGION"))
            .ok_or(SetupError::NoRegion)?,
        region => region.to_owned(),
    };
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(SetupError::BadRegion(region));
    }
    let signer = Arc::new(Signer {
        region,
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
    });
    let signer = SIGNER.get_or_init(|| signer).clone();
    let refresher = signer.clone();
    std::thread::Builder::new()
        .name("aws-credentials".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            runtime.block_on(refresher.keep_fresh(env));
        })
        .expect("a thread starts");
    Ok(signer)
}

/// [`install`]s the signer unless there is one, and waits up to 10 s for its first
/// credentials, so that a client created next authenticates at once rather than after
/// librdkafka's 10 s retry. A region that configuration validation let through cannot fail
/// here; if it does, the clients' token requests say so.
pub fn start(region: &str) {
    if SIGNER.get().is_some() {
        return;
    }
    match install(region) {
        Ok(signer) => signer.wait(Duration::from_secs(10)),
        Err(error) => tracing::error!(%error, "MSK IAM cannot sign tokens"),
    }
}

/// Gives a client created from `config` its first MSK IAM token at once. librdkafka asks for
/// tokens through the client's event queue, served only when the application polls; a client
/// that fetches metadata or offsets before its first poll (the reply consumer, `tail`,
/// `redrive`, `recover`) would wait for a login that never starts. Later tokens are asked for
/// at 80 % of each one's life, by then from the client's regular polls. Does nothing for a
/// client that does not use MSK IAM.
pub fn hand_first_token<C: rdkafka::ClientContext>(
    config: &ClientConfig,
    client: &rdkafka::client::Client<C>,
) {
    if config.get("sasl.oauthbearer.config") != Some(OAUTHBEARER_CONFIG) {
        return;
    }
    let Some(signer) = SIGNER.get() else {
        return;
    };
    // Without credentials yet, librdkafka's own request (and its retry) will say why.
    let Ok(token) = signer.sign(credentials::now()) else {
        return;
    };
    let (Ok(value), Ok(principal)) = (
        std::ffi::CString::new(token.token),
        std::ffi::CString::new(token.principal_name),
    ) else {
        return;
    };
    let mut error = [0 as std::ffi::c_char; 256];
    // SAFETY: the client pointer is valid for as long as `client` is borrowed; the strings
    // and the error buffer outlive the call, which copies what it keeps; no extensions.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            client.native_ptr(),
            value.as_ptr(),
            token.lifetime_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if code != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: librdkafka writes a NUL-terminated message into the buffer it was given.
        let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) };
        tracing::debug!(error = %message.to_string_lossy(), "could not hand a client its first MSK IAM token");
    }
}

/// A token for librdkafka's refresh callback: `config` is the client's
/// `sasl.oauthbearer.config`. An error says why there is none (librdkafka retries in 10 s and
/// reports it as an authentication failure).
pub fn token(config: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
    if config.map(str::trim) != Some(OAUTHBEARER_CONFIG) {
        return Err("sasl.mechanism is OAUTHBEARER without a token source: set sasl.oauthbearer.method = \"oidc\" and its token endpoint, or sasl.mechanism = \"AWS_MSK_IAM\"".into());
    }
    let signer = SIGNER
        .get()
        .ok_or("AWS MSK IAM is not set up in this process")?;
    signer.sign(credentials::now()).map_err(Into::into)
}

impl Signer {
    /// The region tokens are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Waits up to `timeout` for the first credentials (or the first failure to get them).
    /// Not having them in time is not fatal: librdkafka asks again every 10 s, and `/readyz`
    /// says why meanwhile. Blocks the calling thread.
    pub fn wait(&self, timeout: Duration) {
        let state = self.state.lock().expect("lock not poisoned");
        let _ = self
            .changed
            .wait_timeout_while(state, timeout, |state| {
                state.credentials.is_none() && state.error.is_none()
            })
            .expect("lock not poisoned");
    }

    /// A token signed at `now` (seconds since the Unix epoch).
    pub fn sign(&self, now: u64) -> Result<OAuthToken, String> {
        let state = self.state.lock().expect("lock not poisoned");
        let credentials = match (&state.credentials, &state.error) {
            (Some(credentials), _) if credentials.expires_at.is_none_or(|at| at > now) => {
                credentials.clone()
            }
            (_, Some(error)) => return Err(error.to_string()),
            _ => return Err("no valid AWS credentials yet".into()),
        };
        drop(state);
        Ok(sign_token(&credentials, &self.region, now))
    }

    /// Fetches credentials, and again before they expire; after a failure, again with backoff
    /// (keeping the old ones while they last). Each new failure is logged once.
    async fn keep_fresh(self: Arc<Self>, env: Arc<dyn Environment>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let result = credentials::resolve(env.as_ref(), &self.region).await;
            let pause = {
                let mut state = self.state.lock().expect("lock not poisoned");
                match result {
                    Ok(fresh) => {
                        if state.error.take().is_some() || state.credentials.is_none() {
                            tracing::info!(source = fresh.source, access_key_id = %fresh.access_key_id, region = %self.region, "AWS credentials for MSK IAM");
                        }
                        backoff = Duration::from_secs(1);
                        let pause = refresh_after(fresh.expires_at, credentials::now());
                        state.credentials = Some(fresh);
                        pause
                    }
                    Err(error) => {
                        if state.error.as_ref() != Some(&error) {
                            tracing::error!(%error, "cannot get AWS credentials for MSK IAM; retrying");
                        }
                        state.error = Some(error);
                        let pause = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        Some(pause)
                    }
                }
            };
            self.changed.notify_all();
            match pause {
                Some(pause) => tokio::time::sleep(pause).await,
                // Credentials without an expiry (the environment's) never change in-process.
                None => return,
            }
        }
    }
}

/// When to fetch credentials expiring at `expires_at` again: half-way through what is left,
/// and at the latest five minutes before the end; `None` for credentials that do not expire.
fn refresh_after(expires_at: Option<u64>, now: u64) -> Option<Duration> {
    let left = expires_at?.saturating_sub(now);
    let at = if left > 600 { left - 300 } else { left / 2 };
    Some(Duration::from_secs(at.max(1)))
}

/// The MSK IAM token: base64url (no padding) of the presigned
/// `https://kafka.<region>.amazonaws.com/?Action=kafka-cluster:Connect&...` URL, with the
/// unsigned `User-Agent` parameter AWS's signers add. Valid for 15 minutes, or until the
/// credentials expire if sooner.
pub fn sign_token(credentials: &Credentials, region: &str, now: u64) -> OAuthToken {
    let host = format!("kafka.{region}.amazonaws.com");
    let url = sigv4::presign(
        credentials,
        (&host, "/"),
        &[("Action", "kafka-cluster:Connect")],
        sigv4::Service {
            name: "kafka-cluster",
            region,
        },
        &sigv4::Stamp::at(now),
        TOKEN_SECONDS as u32,
    );
    let url = format!(
        "{url}&User-Agent={}",
        sigv4::uri_encode(concat!("fp-relay/", env!("CARGO_PKG_VERSION")))
    );
    let expires = (now + TOKEN_SECONDS).min(credentials.expires_at.unwrap_or(u64::MAX));
    OAuthToken {
        token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url),
        principal_name: credentials.access_key_id.clone(),
        lifetime_ms: (expires * 1000) as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(session_token: Option<&str>, expires_at: Option<u64>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: session_token.map(str::to_owned),
            expires_at,
            source: "environment",
        }
    }

    fn decode(token: &OAuthToken) -> String {
        String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&token.token)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_token_is_a_presigned_connect_url_for_the_region() {
        let now = 1_440_938_160;
        let token = sign_token(
            &credentials(Some("the/session+token"), None),
            "eu-west-1",
            now,
        );
        let url = decode(&token);
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, "https://kafka.eu-west-1.amazonaws.com/");
        let params: Vec<(&str, &str)> = query
            .split('&')
            .map(|p| p.split_once('=').unwrap())
            .collect();
        let names: Vec<&str> = params.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "Action",
                "X-Amz-Algorithm",
                "X-Amz-Credential",
                "X-Amz-Date",
                "X-Amz-Expires",
                "X-Amz-Security-Token",
                "X-Amz-SignedHeaders",
                "X-Amz-Signature",
                "User-Agent"
            ]
        );
        let get = |name: &str| params.iter().find(|(k, _)| *k == name).unwrap().1;
        assert_eq!(get("Action"), "kafka-cluster%3AConnect");
        assert_eq!(
            get("X-Amz-Credential"),
            "AKIDEXAMPLE%2F20150830%2Feu-west-1%2Fkafka-cluster%2Faws4_request"
        );
        assert_eq!(get("X-Amz-Date"), "20150830T123600Z");
        assert_eq!(get("X-Amz-Expires"), "900");
        assert_eq!(get("X-Amz-Security-Token"), "the%2Fsession%2Btoken");
        assert_eq!(get("X-Amz-SignedHeaders"), "host");
        assert_eq!(get("X-Amz-Signature").len(), 64);
        assert!(
            !token.token.contains(['+', '/', '=']),
            "base64url, unpadded"
        );
        assert_eq!(token.principal_name, "AKIDEXAMPLE");
        assert_eq!(token.lifetime_ms, (now as i64 + 900) * 1000);
    }

    #[test]
    fn a_token_lives_no_longer_than_its_credentials() {
        let now = 1_700_000_000;
        let token = sign_token(&credentials(Some("t"), Some(now + 60)), "us-east-1", now);
        assert_eq!(token.lifetime_ms, (now as i64 + 60) * 1000);
    }

    #[test]
    fn the_signature_changes_with_every_signed_part() {
        let now = 1_700_000_000;
        let base = decode(&sign_token(&credentials(None, None), "us-east-1", now));
        let signature = |url: &str| url.split("X-Amz-Signature=").nth(1).unwrap()[..64].to_owned();
        let mut other_secret = credentials(None, None);
        other_secret.secret_access_key.push('x');
        for other in [
            decode(&sign_token(&credentials(None, None), "us-east-2", now)),
            decode(&sign_token(&credentials(None, None), "us-east-1", now + 1)),
            decode(&sign_token(&other_secret, "us-east-1", now)),
            decode(&sign_token(&credentials(Some("t"), None), "us-east-1", now)),
        ] {
            assert_ne!(signature(&base), signature(&other));
        }
    }

    #[test]
    fn credentials_are_fetched_again_well_before_they_expire() {
        let now = 1_000;
        assert_eq!(refresh_after(None, now), None);
        // An hour's credentials: five minutes before the end.
        assert_eq!(
            refresh_after(Some(now + 3600), now),
            Some(Duration::from_secs(3300))
        );
        // Ten minutes or less: half-way.
        assert_eq!(
            refresh_after(Some(now + 600), now),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            refresh_after(Some(now + 8), now),
            Some(Duration::from_secs(4))
        );
        // Expired or about to: at once (after a second).
        assert_eq!(refresh_after(Some(now), now), Some(Duration::from_secs(1)));
        assert_eq!(
            refresh_after(Some(now - 5), now),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn only_clients_that_ask_for_msk_iam_are_rewritten() {
        let mut plain = ClientConfig::new();
        plain.set("sasl.mechanism", "SCRAM-SHA-512");
        assert!(!apply(&mut plain));
        assert_eq!(plain.get("sasl.mechanism"), Some("SCRAM-SHA-512"));

        let mut iam = ClientConfig::new();
        iam.set("sasl.mechanism", MECHANISM);
        assert!(apply(&mut iam));
        assert_eq!(iam.get("sasl.mechanism"), Some("OAUTHBEARER"));
        assert_eq!(iam.get("sasl.oauthbearer.config"), Some(OAUTHBEARER_CONFIG));
        assert_eq!(iam.get("security.protocol"), Some("SASL_SSL"));

        let mut alias = ClientConfig::new();
        alias.set("sasl.mechanisms", MECHANISM);
        assert!(apply(&mut alias));
        assert_eq!(alias.get("sasl.mechanisms"), Some("OAUTHBEARER"));

        let mut plaintext = ClientConfig::new();
        plaintext
            .set("sasl.mechanism", MECHANISM)
            .set("security.protocol", "SASL_PLAINTEXT");
        apply(&mut plaintext);
        assert_eq!(plaintext.get("security.protocol"), Some("SASL_PLAINTEXT"));
    }
}
