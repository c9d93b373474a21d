//! `fp-relay send`: post sample events to a relay exactly as FirstPromoter would (v1 or v2
//! envelope, v2's `X-Event-Id` / `X-Event-Type`, a signature, token or Basic credentials when
//! asked), print what each answer means, and exit non-zero if any was not acknowledged.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sha2::Sha256;

use crate::tools::samples::{self, Sample};
use crate::tools::ToolError;
use crate::webhook::envelope::{self, WebhookVersion};

/// What to send, where, and how.
#[derive(Debug, Clone, clap::Args)]
pub struct SendOptions {
    /// The relay's webhook URL (http://); append /<token> when the relay expects a v1 path token.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/firstpromoter")]
    pub url: String,
    /// A sample to send (repeatable), e.g. --event lead_signup --event payout.completed; the list is in --help above.
    #[arg(long = "event", value_name = "TYPE")]
    pub events: Vec<String>,
    /// Send every built-in sample.
    #[arg(long)]
    pub all: bool,
    /// Send a captured webhook body from this file (as it is).
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// Copies of each event to send.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Requests per second (default: as fast as answers come).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Sign the body like a FirstPromoter v2 subscription (X-Webhook-Signature). Prefer the
    /// environment or --secret-file: an argument is visible to every user in `ps`.
    #[arg(
        long,
        value_name = "SECRET",
        env = "FP_RELAY_SEND_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    /// Read the signing secret from this file (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    pub secret_file: Option<PathBuf>,
    /// Send "Authorization: Bearer <TOKEN>" (a v2 custom header). Prefer the environment or
    /// --token-file.
    #[arg(long, env = "FP_RELAY_SEND_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the Bearer token from this file (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Send HTTP Basic credentials. Prefer the environment or --basic-file.
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "FP_RELAY_SEND_BASIC",
        hide_env_values = true
    )]
    pub basic: Option<String>,
    /// Read the Basic credentials (USER:PASSWORD) from this file (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "basic")]
    pub basic_file: Option<PathBuf>,
    /// Longest wait for one answer (fulfilment requests are held up to fulfilment.timeout).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub timeout: Duration,
}

/// One request to make.
struct Outgoing {
    label: String,
    version: WebhookVersion,
    event_type: String,
    event_id: Option<String>,
    body: Bytes,
}

/// Sends everything; returns whether every request was acknowledged (2xx).
pub async fn run(options: &SendOptions, out: &mut impl Write) -> Result<bool, ToolError> {
    let options = &with_secret_files(options)?;
    let requests = plan(options)?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut statuses: BTreeMap<String, u32> = BTreeMap::new();
    let mut acknowledged = true;
    let interval = options
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    for (n, request) in requests.iter().enumerate() {
        if let (Some(interval), true) = (interval, n > 0) {
            tokio::time::sleep(interval).await;
        }
        let outcome =
            tokio::time::timeout(options.timeout, send_one(&client, options, request)).await;
        let (status, meaning) = match outcome {
            Ok(Ok((status, body))) => (
                status.to_string(),
                meaning(&request.event_type, status, &body),
            ),
            Ok(Err(error)) => ("---".to_owned(), format!("not delivered: {error:#}")),
            Err(_) => (
                "---".to_owned(),
                format!("no answer within {:?}", options.timeout),
            ),
        };
        acknowledged &= status.starts_with('2');
        writeln!(
            out,
            "{:<26} {:<4} {status:>3}  {meaning}",
            request.label,
            request.version.as_str()
        )?;
        *statuses.entry(status).or_default() += 1;
    }
    writeln!(out, "\nstatus  requests")?;
    for (status, count) in &statuses {
        writeln!(out, "{status:>6}  {count}")?;
    }
    if !acknowledged {
        writeln!(out, "\nsome requests were not acknowledged (see above)")?;
    }
    Ok(acknowledged)
}

/// `options` with the credentials the `--*-file` options name read in (the first line of each).
fn with_secret_files(options: &SendOptions) -> Result<SendOptions, ToolError> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path)
            .map(|text| text.lines().next().unwrap_or_default().trim().to_owned())
            .map_err(|source| ToolError::Read {
                path: path.clone(),
                source,
            })
    };
    let mut options = options.clone();
    for (file, value) in [
        (&options.secret_file.clone(), &mut options.secret),
        (&options.token_file.clone(), &mut options.token),
        (&options.basic_file.clone(), &mut options.basic),
    ] {
        if let Some(path) = file {
            *value = Some(read(path)?);
        }
    }
    Ok(options)
}

/// The URL fit to print: a path token after the webhook path (or any token-like segment) and
/// user info masked.
fn shown_url(url: &str) -> String {
    crate::config::masked_url(url, &crate::config::HttpConfig::default().path)
}

fn plan(options: &SendOptions) -> Result<Vec<Outgoing>, ToolError> {
    // (label, event type, version, body): the label tells samples of one type apart.
    let mut chosen: Vec<(String, String, WebhookVersion, Bytes)> = Vec::new();
    if let Some(path) = &options.from_file {
        let body = std::fs::read(path).map_err(|source| ToolError::Read {
            path: path.clone(),
            source,
        })?;
        let envelope = envelope::parse(&body, &http::HeaderMap::new()).map_err(|error| {
            ToolError::Usage(format!(
                "{} is not a FirstPromoter webhook: {error}",
                path.display()
            ))
        })?;
        chosen.push((
            envelope.event_type.clone(),
            envelope.event_type,
            envelope.version,
            Bytes::from(body),
        ));
    }
    let samples: Vec<&Sample> = if options.all {
        samples::SAMPLES.iter().collect()
    } else {
        options
            .events
            .iter()
            .map(|name| {
                samples::find(name).ok_or_else(|| {
                    let known: Vec<&str> = samples::SAMPLES.iter().map(|s| s.name).collect();
                    ToolError::Usage(format!(
                        "no sample for {name:?}; known: {}",
                        known.join(", ")
                    ))
                })
            })
            .collect::<Result<_, ToolError>>()?
    };
    chosen.extend(samples.iter().map(|s| {
        (
            s.name.to_owned(),
            s.event_type.to_owned(),
            s.version,
            Bytes::from_static(s.body),
        )
    }));
    if chosen.is_empty() {
        return Err(ToolError::Usage(
            "nothing to send: name events with --event, or use --all or --from-file".into(),
        ));
    }
    let mut requests = Vec::new();
    for copy in 0..options.count.max(1) {
        for (label, event_type, version, body) in &chosen {
            // A captured body goes as it is; samples get a fresh id per copy, as real events would.
            let (body, event_id) =
                if options.from_file.is_some() && copy == 0 && requests.is_empty() {
                    let id = envelope::parse(body, &http::HeaderMap::new())
                        .ok()
                        .and_then(|e| e.event_id);
                    (body.clone(), id)
                } else {
                    fresh_id(body, *version)?
                };
            requests.push(Outgoing {
                label: label.clone(),
                version: *version,
                event_type: event_type.clone(),
                event_id,
                body,
            });
        }
    }
    Ok(requests)
}

/// The body with a new, unique event id.
fn fresh_id(body: &Bytes, version: WebhookVersion) -> Result<(Bytes, Option<String>), ToolError> {
    let mut document: Value = serde_json::from_slice(body)?;
    let id = match version {
        WebhookVersion::V1 => {
            let id = unique_number();
            document["event"]["id"] = Value::from(id);
            id.to_string()
        }
        WebhookVersion::V2 => {
            let id = uuid::Uuid::new_v4().to_string();
            document["event_id"] = Value::from(id.clone());
            id
        }
    };
    Ok((Bytes::from(serde_json::to_vec_pretty(&document)?), Some(id)))
}

fn unique_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    base + NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn send_one(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    options: &SendOptions,
    request: &Outgoing,
) -> Result<(u16, Value), ToolError> {
    let mut builder = http::Request::post(&options.url).header("content-type", "application/json");
    if request.version == WebhookVersion::V2 {
        builder = builder.header("x-event-type", &request.event_type);
        if let Some(id) = &request.event_id {
            builder = builder.header("x-event-id", id);
        }
    }
    if let Some(secret) = &options.secret {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(&request.body);
        builder = builder.header(
            "x-webhook-signature",
            hex::encode(mac.finalize().into_bytes()),
        );
    }
    if let Some(token) = &options.token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    if let Some(basic) = &options.basic {
        let encoded = base64::engine::general_purpose::STANDARD.encode(basic);
        builder = builder.header("authorization", format!("Basic {encoded}"));
    }
    let unreachable = |detail: String| ToolError::Http {
        url: shown_url(&options.url),
        detail,
    };
    let request = builder
        .body(Full::new(request.body.clone()))
        .map_err(|error| {
            ToolError::Usage(format!("invalid URL {}: {error}", shown_url(&options.url)))
        })?;
    let response = client
        .request(request)
        .await
        .map_err(|error| unreachable(error.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| unreachable(error.to_string()))?
        .to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// What an answer means, in FirstPromoter's terms.
fn meaning(event_type: &str, status: u16, body: &Value) -> String {
    let text = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    if event_type == "fulfilment_pending" {
        return match status {
            200 => "fulfilled: FirstPromoter marks the reward fulfilled".into(),
            201..=299 => format!(
                "stays pending ({}): FirstPromoter asks again at its next fulfilment check",
                text("status")
            ),
            _ => format!(
                "error ({}): FirstPromoter retries, up to 7 times a day",
                text("error")
            ),
        };
    }
    match (status, text("status").as_str()) {
        (200, "published") => format!(
            "published to {} [partition {}] @ offset {}",
            text("topic"),
            body["partition"],
            body["offset"]
        ),
        (202, "spooled") => {
            "spooled: safe on the relay's disk, replayed to Kafka when it is back".into()
        }
        (200, "duplicate") => "duplicate: this event id was already published".into(),
        (200, "fulfilment_requested") => format!(
            "published to {}; fulfilment requested on {} (correlation id {})",
            text("topic"),
            text("request_topic"),
            text("correlation_id")
        ),
        (200..=299, other) => other.to_owned(),
        _ => format!("refused: {} {}", text("error"), text("message")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        options: SendOptions,
    }

    /// `send --all` labels each sample by its name, so the two commission.updated samples are
    /// told apart (the reward one requests fulfilment).
    #[test]
    fn every_sample_is_sent_under_its_own_label() {
        let options = Command::parse_from(["send", "--all"]).options;
        let labels: Vec<String> = plan(&options)
            .unwrap()
            .into_iter()
            .map(|r| r.label)
            .collect();
        let unique: std::collections::HashSet<&String> = labels.iter().collect();
        assert_eq!(unique.len(), labels.len(), "{labels:?}");
        assert!(labels.contains(&"commission.updated.reward".to_owned()));
    }
}
