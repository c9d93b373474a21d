//! `fp-relay firstpromoter subscribe`: one subscription for the relay's URL, with every event
//! type, the credential the relay checks and a timeout that covers the relay's deadline.

use std::collections::HashSet;
use std::io::Write;

use super::{api_error, load, SubscribeOptions, MAX_RETRIES, TIMEOUT_MARGIN_SECS};
use crate::config::{check_webhook_url, masked_url, Config, MASK};
use crate::firstpromoter::webhooks::{Subscription, Webhooks};
use crate::firstpromoter::{points_here, same_url};
use crate::tools::ToolError;

/// How FirstPromoter should present the relay's credential.
#[derive(Debug, Clone, PartialEq)]
enum Credential {
    /// A custom header and its value.
    Header(String, String),
    /// HTTP Basic.
    Basic(String, String),
}

impl Credential {
    /// The first credential the relay accepts that a v2 subscription can send: a shared token
    /// (`auth.tokens`, in `auth.token_header`), else an `auth.basic` user.
    fn of(config: &Config) -> Result<Self, ToolError> {
        let auth = &config.auth;
        if let Some(token) = auth.tokens.first() {
            let header = auth.token_header.to_ascii_lowercase();
            return Ok(if header == "authorization" {
                Self::Header("Authorization".to_owned(), format!("Bearer {token}"))
            } else {
                Self::Header(auth.token_header.clone(), token.clone())
            });
        }
        if let Some((user, password)) = auth.basic.iter().next() {
            return Ok(Self::Basic(user.clone(), password.clone()));
        }
        Err(ToolError::Usage(
            "auth: the relay checks no credential a v2 subscription can send; set auth.tokens \
             (sent as a custom header) or auth.basic (FP_RELAY_AUTH_TOKENS='[\"<token>\"]')"
                .to_owned(),
        ))
    }

    fn describe(&self) -> String {
        match self {
            Self::Header(name, _) => format!("custom header {name}"),
            Self::Basic(user, _) => format!("HTTP Basic as {user}"),
        }
    }
}

/// FirstPromoter's `timeout` for the relay: its longest answer (`kafka.ack_timeout` bounds
/// everything after the request head) plus a margin, within FirstPromoter's 1-120 s.
pub fn subscription_timeout(config: &Config) -> u64 {
    let deadline = config.kafka.ack_timeout.as_secs_f64().ceil() as u64;
    (deadline + TIMEOUT_MARGIN_SECS).clamp(1, 120)
}

/// Creates or updates the subscription for `--url`; what it did goes to `out`.
pub async fn subscribe(options: &SubscribeOptions, out: &mut impl Write) -> Result<(), ToolError> {
    let (config, client) = load("subscribe", &options.api, None)?;
    let url = options
        .url
        .clone()
        .or_else(|| config.firstpromoter.webhook_url.clone())
        .ok_or_else(|| {
            ToolError::Usage(
                "--url: give the relay's public webhook URL (or set firstpromoter.webhook_url)"
                    .to_owned(),
            )
        })?;
    check_webhook_url("--url", &url).map_err(|e| ToolError::Usage(e.to_string()))?;
    let credential = Credential::of(&config)?;
    let webhooks = Webhooks::new(&client);
    let event_types = webhooks.event_types().await.map_err(api_error)?;
    if event_types.is_empty() {
        return Err(ToolError::Usage(
            "FirstPromoter lists no event types; nothing to subscribe to".to_owned(),
        ));
    }
    let existing = webhooks
        .subscriptions()
        .await
        .map_err(api_error)?
        .into_iter()
        .find(|s| same_url(&s.url, &url));
    let timeout = subscription_timeout(&config);
    let wanted = Wanted {
        url: &url,
        event_types: &event_types,
        timeout,
        credential: &credential,
    };
    let changes = wanted.changes(existing.as_ref());
    let body = wanted.body(existing.as_ref());
    let verb = if options.dry_run { "would" } else { "will" };
    let shown = masked_url(&url, &config.http.path);
    if !points_here(&url, &config) && config.firstpromoter.webhook_url.is_none() {
        writeln!(
            out,
            "note: {shown} does not end in http.path ({}); fine behind a proxy that rewrites it",
            config.http.path
        )?;
    }
    match &existing {
        None => writeln!(
            out,
            "{} create a subscription for {shown}",
            if options.dry_run { "would" } else { "creating" }
        )?,
        Some(found) if changes.is_empty() => {
            writeln!(out, "subscription {} for {shown} is up to date", found.id)?;
        }
        Some(found) => writeln!(out, "subscription {} for {shown} {verb} change:", found.id)?,
    }
    for change in &changes {
        writeln!(out, "  {change}")?;
    }
    let subscription = if options.dry_run {
        None
    } else {
        match &existing {
            None => Some(webhooks.create(&body).await.map_err(api_error)?),
            Some(found) if !changes.is_empty() => {
                Some(webhooks.update(&found.id, &body).await.map_err(api_error)?)
            }
            Some(_) => None,
        }
    };
    if let Some(subscription) = subscription {
        writeln!(
            out,
            "{} subscription {}: {} event types, credential as {}, timeout {timeout} s, \
             max_retries {MAX_RETRIES}",
            if existing.is_some() {
                "updated"
            } else {
                "created"
            },
            subscription.id,
            event_types.len(),
            credential.describe()
        )?;
    }
    Ok(())
}

/// What the subscription should say.
struct Wanted<'a> {
    url: &'a str,
    event_types: &'a [String],
    timeout: u64,
    credential: &'a Credential,
}

impl Wanted<'_> {
    /// The body of the create or update call; an update keeps the subscription's campaign
    /// filter, description and other custom headers.
    fn body(&self, existing: Option<&Subscription>) -> serde_json::Value {
        let mut headers = existing.and_then(|s| s.headers.clone()).unwrap_or_default();
        let mut body = serde_json::json!({
            "url": self.url,
            "event_types": self.event_types,
            "active": true,
            "timeout": self.timeout,
            "max_retries": MAX_RETRIES,
        });
        match self.credential {
            Credential::Header(name, value) => {
                headers.retain(|k, _| !k.eq_ignore_ascii_case(name));
                headers.insert(name.clone(), value.clone().into());
            }
            Credential::Basic(user, password) => {
                body["basic_auth_user"] = user.clone().into();
                body["basic_auth_password"] = password.clone().into();
            }
        }
        body["headers"] = headers.into();
        if existing.is_none() {
            body["description"] = "fp-relay: FirstPromoter webhooks into Kafka".into();
            body["campaign_ids"] = serde_json::json!([1]);
        }
        body
    }

    /// What differs, one line each, secrets masked; empty when nothing does.
    fn changes(&self, existing: Option<&Subscription>) -> Vec<String> {
        let mut changes = Vec::new();
        let Some(found) = existing else {
            changes.push(format!("event_types: all {}", self.event_types.len()));
            changes.push(format!("credential: {}", self.credential.describe()));
            changes.push(format!("timeout: {} s", self.timeout));
            changes.push(format!("max_retries: {MAX_RETRIES}"));
            return changes;
        };
        let have: HashSet<&String> = found.event_types.iter().collect();
        let missing: Vec<&str> = self
            .event_types
            .iter()
            .filter(|t| !have.contains(t))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            changes.push(format!(
                "event_types: + {} ({})",
                missing.len(),
                missing.join(", ")
            ));
        }
        match self.credential {
            Credential::Header(name, value) => {
                let sent = found.headers.as_ref().and_then(|h| {
                    h.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .and_then(|(_, v)| v.as_str())
                });
                if sent != Some(value.as_str()) {
                    changes.push(format!("credential: custom header {name} = {MASK}"));
                }
            }
            // The password is write-only: always sent again.
            Credential::Basic(user, _) => {
                changes.push(format!("credential: HTTP Basic as {user}, password {MASK}"))
            }
        }
        if found.timeout != Some(self.timeout) {
            changes.push(format!(
                "timeout: {} -> {} s",
                found
                    .timeout
                    .map_or("unset".to_owned(), |t| format!("{t} s")),
                self.timeout
            ));
        }
        if found.max_retries != Some(MAX_RETRIES) {
            changes.push(format!(
                "max_retries: {} -> {MAX_RETRIES}",
                found
                    .max_retries
                    .map_or("unset".to_owned(), |r| r.to_string())
            ));
        }
        if found.active == Some(false) {
            changes.push("active: false -> true".to_owned());
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_timeout_covers_the_relays_deadline_within_firstpromoters_range() {
        let mut config = Config::default();
        config.kafka.ack_timeout = Duration::from_millis(4_500);
        assert_eq!(subscription_timeout(&config), 10);
        config.kafka.ack_timeout = Duration::from_secs(600);
        assert_eq!(subscription_timeout(&config), 120);
    }

    #[test]
    fn the_credential_is_the_one_the_relay_checks() {
        let mut config = Config::default();
        assert!(Credential::of(&config).is_err());
        config
            .auth
            .basic
            .insert("fp".into(), "a-long-password-123".into());
        assert_eq!(
            Credential::of(&config).unwrap(),
            Credential::Basic("fp".into(), "a-long-password-123".into())
        );
        config.auth.tokens = vec!["tok-0123456789abcdef".into()];
        assert_eq!(
            Credential::of(&config).unwrap(),
            Credential::Header("Authorization".into(), "Bearer tok-0123456789abcdef".into())
        );
        config.auth.token_header = "X-Relay-Token".into();
        assert_eq!(
            Credential::of(&config).unwrap(),
            Credential::Header("X-Relay-Token".into(), "tok-0123456789abcdef".into())
        );
    }

    #[test]
    fn an_update_keeps_other_headers_and_replaces_ours() {
        let credential = Credential::Header("Authorization".into(), "Bearer new".into());
        let types = vec!["referral.created".to_owned()];
        let wanted = Wanted {
            url: "https://relay.example.com/webhooks/firstpromoter",
            event_types: &types,
            timeout: 15,
            credential: &credential,
        };
        let existing: Subscription = serde_json::from_value(serde_json::json!({
            "id": 3, "url": wanted.url, "event_types": ["referral.created"], "timeout": 15,
            "max_retries": 10, "active": true,
            "headers": {"authorization": "Bearer old", "X-Team": "growth"}
        }))
        .unwrap();
        let body = wanted.body(Some(&existing));
        assert_eq!(body["headers"]["Authorization"], "Bearer new");
        assert_eq!(body["headers"]["X-Team"], "growth");
        assert!(body["headers"].get("authorization").is_none());
        assert!(
            body.get("campaign_ids").is_none(),
            "an update keeps the campaign filter"
        );
        let changes = wanted.changes(Some(&existing));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            !changes[0].contains("new"),
            "secrets are masked: {changes:?}"
        );
    }
}
