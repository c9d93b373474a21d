//! AWS credentials from where AWS's own SDKs look, in their order: the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), web identity
//! (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`: IAM roles for service accounts on EKS,
//! exchanged at STS), the container endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI` or
//! `_RELATIVE_URI`: EKS Pod Identity, ECS task roles) and the instance profile (IMDSv2).
//! Shared config and credentials files (`~/.aws`) are not read: a service in a container gets
//! its role from the platform.
//!
//! Endpoints can be moved (the tests' fakes, VPC endpoints, FIPS): `AWS_ENDPOINT_URL_STS` or
//! `AWS_ENDPOINT_URL` for STS, `AWS_EC2_METADATA_SERVICE_ENDPOINT` for IMDS; as in the SDKs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::Full;

use crate::http::outbound;

/// An access key, with its session token and expiry when temporary.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// When temporary credentials stop working (seconds since the Unix epoch).
    pub expires_at: Option<u64>,
    /// Where they came from (`environment`, `web_identity`, `container`, `instance_profile`).
    pub source: &'static str,
}

impl std::fmt::Debug for Credentials {
    /// The access key id is not a secret (it is in every signed request); the rest is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("expires_at", &self.expires_at)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why no credentials could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// None of the sources is configured here.
    #[error("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run with a role (EKS IRSA or Pod Identity, ECS, EC2 instance profile)")]
    NotFound,
    /// A source is configured and failed; `source` names it.
    #[error("AWS credentials from {from}: {detail}")]
    Failed { from: &'static str, detail: String },
}

/// The process environment, or a map in tests.
pub trait Environment: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
}

/// Reads `std::env`.
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Environment for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned().filter(|v| !v.trim().is_empty())
    }
}

/// Longest wait for one credentials endpoint.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes read of an endpoint's answer.
const MAX_ANSWER: usize = 64 * 1024;

/// The first source of the chain that is configured here, asked for credentials.
pub async fn resolve(env: &dyn Environment, region: &str) -> Result<Credentials, CredentialsError> {
    if let Some(access_key_id) = env.var("AWS_ACCESS_KEY_ID") {
        let secret_access_key =
            env.var("AWS_SECRET_ACCESS_KEY")
                .ok_or_else(|| CredentialsError::Failed {
                    from: "environment",
                    detail: "AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY".into(),
                })?;
        return Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: env.var("AWS_SESSION_TOKEN"),
            expires_at: None,
            source: "environment",
        });
    }
    if let (Some(token_file), Some(role)) = (
        env.var("AWS_WEB_IDENTITY_TOKEN_FILE"),
        env.var("AWS_ROLE_ARN"),
    ) {
        return web_identity(env, region, &token_file, &role)
            .await
            .map_err(|detail| CredentialsError::Failed {
                from: "web_identity",
                detail,
            });
    }
    if let Some(uri) = container_uri(env) {
        return container(env, &uri)
            .await
            .map_err(|detail| CredentialsError::Failed {
                from: "container",
                detail,
            });
    }
    if env
        .var("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(CredentialsError::NotFound);
    }
    instance_profile(env)
        .await
        .map_err(|failure| match failure {
            // No metadata service answering: not on EC2 (or blocked from it).
            Unreachable::No(detail) => {
                tracing::debug!(%detail, "no instance metadata service");
                CredentialsError::NotFound
            }
            Unreachable::Failed(detail) => CredentialsError::Failed {
                from: "instance_profile",
                detail,
            },
        })
}

/// STS `AssumeRoleWithWebIdentity` with the token in the file (re-read every time: the kubelet
/// rotates it). Unsigned: the web identity token is the proof.
async fn web_identity(
    env: &dyn Environment,
    region: &str,
    token_file: &str,
    role: &str,
) -> Result<Credentials, String> {
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| format!("cannot read AWS_WEB_IDENTITY_TOKEN_FILE {token_file}: {e}"))?;
    let session = env
        .var("AWS_ROLE_SESSION_NAME")
        .unwrap_or_else(|| format!("fp-relay-{}", std::process::id()));
    let endpoint = env
        .var("AWS_ENDPOINT_URL_STS")
        .or_else(|| env.var("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role),
        ("RoleSessionName", session.as_str()),
        ("WebIdentityToken", token.trim()),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", super::sigv4::uri_encode(v)))
    .collect::<Vec<_>>()
    .join("&");
    let base: Uri = endpoint
        .parse()
        .map_err(|_| format!("STS endpoint {endpoint} is not a URL"))?;
    let path = match base.path() {
        "" => "/",
        path => path,
    };
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, outbound::authority(&base))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/xml")
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| e.to_string())?;
    let answer = call(&base, request).await?;
    let body = String::from_utf8_lossy(&answer.body);
    if !answer.status.is_success() {
        let message = xml_text(&body, "Message").unwrap_or_default();
        return Err(format!(
            "STS answered {}: {}",
            answer.status,
            message.chars().take(200).collect::<String>()
        ));
    }
    let field =
        |name: &str| xml_text(&body, name).ok_or_else(|| format!("STS answer without <{name}>"));
    Ok(Credentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: Some(field("SessionToken")?),
        expires_at: Some(parse_timestamp(&field("Expiration")?)?),
        source: "web_identity",
    })
}

/// The container credentials endpoint, if configured.
fn container_uri(env: &dyn Environment) -> Option<String> {
    env.var("AWS_CONTAINER_CREDENTIALS_FULL_URI").or_else(|| {
        env.var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .map(|relative| format!("http://169.254.170.2{relative}"))
    })
}

/// The ECS / EKS Pod Identity agent: a GET with the authorization token from its file.
async fn container(env: &dyn Environment, uri: &str) -> Result<Credentials, String> {
    let base: Uri = uri
        .parse()
        .map_err(|_| format!("container credentials URI {uri} is not a URL"))?;
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(base.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, outbound::authority(&base))
        .header(header::ACCEPT, "application/json");
    let authorization = match env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
        Some(file) => Some(std::fs::read_to_string(&file).map_err(|e| {
            format!("cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {file}: {e}")
        })?),
        None => env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
    };
    if let Some(authorization) = authorization {
        request = request.header(header::AUTHORIZATION, authorization.trim());
    }
    let request = request
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let answer = call(&base, request).await?;
    if !answer.status.is_success() {
        return Err(format!(
            "the credentials endpoint answered {}",
            answer.status
        ));
    }
    from_json(&answer.body, "container")
}

/// Why the instance metadata service gave nothing.
enum Unreachable {
    /// It does not answer at all (not on EC2).
    No(String),
    /// It answered, and not with credentials.
    Failed(String),
}

/// IMDSv2: a session token (PUT), the role's name, then its credentials.
async fn instance_profile(env: &dyn Environment) -> Result<Credentials, Unreachable> {
    let endpoint = env
        .var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or_else(|| "http://169.254.169.254".to_owned());
    let base: Uri = endpoint
        .parse()
        .map_err(|_| Unreachable::Failed(format!("{endpoint} is not a URL")))?;
    let host = outbound::authority(&base);
    let request = |method: Method, path: &str, token: Option<&str>| {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host.as_str());
        request = match token {
            Some(token) => request.header("x-aws-ec2-metadata-token", token),
            None => request.header("x-aws-ec2-metadata-token-ttl-seconds", "21600"),
        };
        request
            .body(Full::new(Bytes::new()))
            .expect("a request of constant parts")
    };
    let token = call(&base, request(Method::PUT, "/latest/api/token", None))
        .await
        .map_err(Unreachable::No)?;
    if !token.status.is_success() {
        return Err(Unreachable::Failed(format!(
            "IMDS token request answered {}",
            token.status
        )));
    }
    let token = String::from_utf8_lossy(&token.body).trim().to_owned();
    let roles_path = "/latest/meta-data/iam/security-credentials/";
    let roles = call(&base, request(Method::GET, roles_path, Some(&token)))
        .await
        .map_err(Unreachable::Failed)?;
    if !roles.status.is_success() {
        return Err(Unreachable::Failed(format!(
            "no instance profile role (IMDS answered {})",
            roles.status
        )));
    }
    let role = String::from_utf8_lossy(&roles.body)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    if role.is_empty() || role.contains('/') {
        return Err(Unreachable::Failed("no instance profile role".into()));
    }
    let answer = call(
        &base,
        request(Method::GET, &format!("{roles_path}{role}"), Some(&token)),
    )
    .await
    .map_err(Unreachable::Failed)?;
    if !answer.status.is_success() {
        return Err(Unreachable::Failed(format!(
            "IMDS answered {} for role {role}",
            answer.status
        )));
    }
    from_json(&answer.body, "instance_profile").map_err(Unreachable::Failed)
}

/// `{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}` (container and IMDS).
fn from_json(body: &[u8], source: &'static str) -> Result<Credentials, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("credentials are not JSON: {e}"))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("credentials without {name}"))
    };
    Ok(Credentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: field("Token").ok(),
        expires_at: field("Expiration")
            .ok()
            .map(|at| parse_timestamp(&at))
            .transpose()?,
        source,
    })
}

async fn call(base: &Uri, request: Request<Full<Bytes>>) -> Result<outbound::Answer, String> {
    match tokio::time::timeout(CALL_TIMEOUT, outbound::send(base, request, MAX_ANSWER)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(failure)) => Err(failure.to_string()),
        Err(_) => Err(format!("{base}: no answer within {CALL_TIMEOUT:?}")),
    }
}

/// The text of the first `<name>` element (STS answers are small and flat enough).
fn xml_text(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    let text = xml[start..end].trim();
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// `2026-12-02T06:15:00Z` (ISO 8601 as AWS writes it; fractions and a `+00:00` offset accepted).
fn parse_timestamp(text: &str) -> Result<u64, String> {
    let bad = || format!("expiration {text:?} is not an ISO 8601 UTC time");
    let text = text.trim();
    let (date, time) = text.split_once('T').ok_or_else(bad)?;
    let time = time.trim_end_matches('Z').trim_end_matches("+00:00");
    let time = time.split('.').next().unwrap_or(time);
    let numbers = |part: &str, separator: char| -> Option<Vec<u64>> {
        part.split(separator).map(|n| n.parse().ok()).collect()
    };
    let (Some(date), Some(time)) = (numbers(date, '-'), numbers(time, ':')) else {
        return Err(bad());
    };
    let (&[year, month, day], &[hour, minute, second]) = (&date[..], &time[..]) else {
        return Err(bad());
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad());
    }
    let days = days_from_civil(year as i64, month as u32, day as u32);
    Ok(days as u64 * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a calendar date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_as_aws_writes_them() {
        assert_eq!(parse_timestamp("2015-08-30T12:36:00Z"), Ok(1_440_938_160));
        assert_eq!(
            parse_timestamp("2015-08-30T12:36:00.123Z"),
            Ok(1_440_938_160)
        );
        assert_eq!(
            parse_timestamp("2015-08-30T12:36:00+00:00"),
            Ok(1_440_938_160)
        );
        assert_eq!(parse_timestamp("2000-02-29T00:00:00Z"), Ok(951_782_400));
        assert!(parse_timestamp("tomorrow").is_err());
        assert!(parse_timestamp("2015-13-30T12:36:00Z").is_err());
    }

    #[test]
    fn dates_round_trip_through_both_conversions() {
        for unix in [
            0u64,
            951_782_400,
            1_440_938_160,
            4_102_444_800,
            1_735_689_599,
        ] {
            let stamp = super::super::sigv4::Stamp::at(unix);
            let iso = format!(
                "{}-{}-{}T{}:{}:{}Z",
                &stamp.time[0..4],
                &stamp.time[4..6],
                &stamp.time[6..8],
                &stamp.time[9..11],
                &stamp.time[11..13],
                &stamp.time[13..15]
            );
            assert_eq!(parse_timestamp(&iso), Ok(unix), "{iso}");
        }
    }

    #[test]
    fn the_sts_answer_is_read_and_unescaped() {
        let xml =
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
            <AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>s&amp;cret</SecretAccessKey>\
            </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        assert_eq!(xml_text(xml, "AccessKeyId").as_deref(), Some("ASIAEXAMPLE"));
        assert_eq!(xml_text(xml, "SecretAccessKey").as_deref(), Some("s&cret"));
        assert_eq!(xml_text(xml, "SessionToken"), None);
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let credentials = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: Some("session-token-value".into()),
            expires_at: None,
            source: "environment",
        };
        let shown = format!("{credentials:?}");
        assert!(shown.contains("AKIDEXAMPLE"));
        assert!(!shown.contains("wJalrXUtnFEMI") && !shown.contains("session-token-value"));
    }
}
