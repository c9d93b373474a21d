//! Start-up validation: every rule a configuration must meet, each failure naming its field.

use super::*;
use crate::webhook::routing::{is_valid_topic, Router};
use crate::webhook::{V1_EVENT_TYPES, V2_EVENT_TYPES};

/// Longest `fulfilment.timeout`: FirstPromoter v1 (the only version with `fulfilment_pending`)
/// gives up at 15 s, and the answer needs time to reach it.
pub const MAX_FULFILMENT_TIMEOUT: Duration = Duration::from_secs(14);

impl Config {
    pub(super) fn validate_http(&self) -> Result<(), ConfigError> {
        let path = &self.http.path;
        if !path.starts_with('/') || (path.len() > 1 && path.ends_with('/')) {
            return Err(ConfigError::invalid(
                "http.path",
                format!("{path:?} must start with '/' and not end with one"),
            ));
        }
        for (field, value) in [
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("http.request_timeout", self.http.request_timeout),
            ("http.idle_timeout", self.http.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(field, "must be above 0"));
            }
        }
        if self.http.max_connections == 0 {
            return Err(ConfigError::invalid(
                "http.max_connections",
                "must be at least 1",
            ));
        }
        if self.http.max_connections_per_source == 0 {
            return Err(ConfigError::invalid(
                "http.max_connections_per_source",
                "must be at least 1",
            ));
        }
        if !(8 * 1024..=1024 * 1024).contains(&self.http.max_header_bytes) {
            return Err(ConfigError::invalid(
                "http.max_header_bytes",
                "must be between 8 KiB and 1 MiB",
            ));
        }
        if !(1..=64 * 1024 * 1024).contains(&self.http.max_body_bytes) {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                "must be between 1 byte and 64 MiB",
            ));
        }
        if self.http.max_buffered_body_bytes < 2 * self.http.max_body_bytes as u64 {
            return Err(ConfigError::invalid(
                "http.max_buffered_body_bytes",
                format!(
                    "must be at least twice http.max_body_bytes ({}): bodies whose signature is \
                     not checked yet may use half of it, and a large signed body must fit there",
                    self.http.max_body_bytes
                ),
            ));
        }
        // A body the producer cannot send would be accepted by HTTP and then refused by Kafka
        // and by the dead-letter topic alike: refuse it up front with 413 instead.
        let message_max = self.kafka.message_max_bytes();
        if self.http.max_body_bytes as u64 + RECORD_OVERHEAD_BYTES > message_max {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                format!(
                    "must leave {RECORD_OVERHEAD_BYTES} bytes (headers, key) under the producer's \
                     message.max.bytes ({message_max}): at most {}",
                    message_max.saturating_sub(RECORD_OVERHEAD_BYTES)
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        let modes = !auth.signature_secrets.is_empty()
            || !auth.tokens.is_empty()
            || !auth.basic.is_empty()
            || !auth.path_tokens.is_empty();
        if !modes && !auth.insecure_no_auth {
            return Err(ConfigError::invalid(
                "auth",
                "no authentication configured: set auth.path_tokens (v1), auth.tokens, auth.basic or \
                 auth.signature_secrets (v2), or run with --insecure-no-auth",
            ));
        }
        if auth.require_signature && auth.signature_secrets.is_empty() {
            return Err(ConfigError::invalid(
                "auth.require_signature",
                "needs auth.signature_secrets",
            ));
        }
        for (field, list) in [
            ("auth.signature_secrets", &auth.signature_secrets),
            ("auth.tokens", &auth.tokens),
            ("auth.path_tokens", &auth.path_tokens),
        ] {
            if list.iter().any(|secret| secret.len() < MIN_SECRET_LEN) {
                return Err(ConfigError::invalid(
                    field,
                    format!("every entry needs at least {MIN_SECRET_LEN} characters"),
                ));
            }
        }
        if auth.path_tokens.iter().any(|t| {
            !t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        }) {
            return Err(ConfigError::invalid(
                "auth.path_tokens",
                "tokens may use only [A-Za-z0-9-._~] (they go in a URL)",
            ));
        }
        for (user, password) in &auth.basic {
            if user.is_empty() || user.contains(':') || password.len() < MIN_SECRET_LEN {
                return Err(ConfigError::invalid(
                    format!("auth.basic.{user}"),
                    format!("needs a user without ':' and a password of at least {MIN_SECRET_LEN} characters"),
                ));
            }
        }
        if auth
            .max_event_age
            .is_some_and(|age| age < Duration::from_secs(3600))
        {
            return Err(ConfigError::invalid(
                "auth.max_event_age",
                "must be at least 1h (FirstPromoter retries a v2 delivery for about 17 hours; 24h or more is safe)",
            ));
        }
        if auth.reload_interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "auth.reload_interval",
                "must be at least 100ms",
            ));
        }
        for (field, versions) in [
            ("auth.token_versions", &auth.token_versions),
            ("auth.basic_versions", &auth.basic_versions),
        ] {
            if versions.is_empty() {
                return Err(ConfigError::invalid(
                    field,
                    "needs at least one of \"v1\", \"v2\" (the webhook versions the credential may deliver)",
                ));
            }
        }
        if http::HeaderName::from_bytes(auth.token_header.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                "auth.token_header",
                "is not a valid header name",
            ));
        }
        Ok(())
    }

    pub(super) fn validate_spool(&self) -> Result<(), ConfigError> {
        let spool = &self.spool;
        if spool.enabled
            && (spool.handoff_after.is_zero() || spool.handoff_after >= self.kafka.ack_timeout)
        {
            return Err(ConfigError::invalid(
                "spool.handoff_after",
                "must be above 0 and below kafka.ack_timeout (a request waits this long before spooling)",
            ));
        }
        if spool.enabled && spool.max_bytes < 1024 * 1024 {
            return Err(ConfigError::invalid(
                "spool.max_bytes",
                "must be at least 1 MiB",
            ));
        }
        if spool.enabled
            && spool.max_bytes < self.http.max_body_bytes as u64 + RECORD_OVERHEAD_BYTES
        {
            return Err(ConfigError::invalid(
                "spool.max_bytes",
                format!(
                    "must hold at least one record of http.max_body_bytes ({} bytes and {RECORD_OVERHEAD_BYTES} for headers and key): readiness waits for room for one",
                    self.http.max_body_bytes
                ),
            ));
        }
        if spool.delivery_timeout < self.kafka.ack_timeout {
            return Err(ConfigError::invalid(
                "spool.delivery_timeout",
                "must be at least kafka.ack_timeout",
            ));
        }
        if self.dedup_enabled() && (self.dedup.max_entries == 0 || self.dedup.window.is_zero()) {
            return Err(ConfigError::invalid(
                "dedup",
                "window and max_entries must be above 0",
            ));
        }
        let topic = self.dedup.topic.trim();
        if !topic.is_empty() {
            if !self.dedup_enabled() {
                return Err(ConfigError::invalid(
                    "dedup.topic",
                    "is set but duplicate suppression is off (dedup.enabled = false, or no credential is checked): set dedup.enabled = true or leave dedup.topic empty",
                ));
            }
            let requests = self.fulfilment_request_topic();
            let taken = [
                (
                    "kafka.dead_letter_topic",
                    self.kafka.dead_letter_topic.as_str(),
                ),
                (
                    "fulfilment.reply_topic",
                    self.fulfilment.reply_topic.as_str(),
                ),
                ("the fulfilment request topic", requests.as_str()),
            ];
            if let Some((field, _)) = taken.iter().find(|(_, t)| *t == topic) {
                return Err(ConfigError::invalid(
                    "dedup.topic",
                    format!("{topic:?} is already {field}: marks need a topic of their own"),
                ));
            }
            if self.dedup.load_timeout.is_zero()
                || self.dedup.load_timeout > Duration::from_secs(600)
            {
                return Err(ConfigError::invalid(
                    "dedup.load_timeout",
                    "must be above 0 and at most 10m",
                ));
            }
        }
        // A sender's event type must never be routed into a topic the relay reads or writes
        // as its own: such an event would be dead-lettered (`reserved_topic`) instead of
        // published, so a configuration that routes a known type there is refused here. (The
        // reply topic's collisions are named by check_reply_topic, with fulfilment.)
        let internal = self.internal_topics();
        let reply = self.fulfilment.reply_topic.as_str();
        let router = Router::new(
            &self.kafka.topic_template,
            &self.kafka.topics,
            &BTreeMap::new(),
        );
        let known = V1_EVENT_TYPES
            .iter()
            .chain(crate::webhook::V1_EVENT_ALIASES)
            .chain(V2_EVENT_TYPES)
            .map(|t| (*t).to_owned())
            .chain(self.kafka.topics.keys().cloned());
        for event_type in known {
            if event_type == self.fulfilment.event_type {
                continue;
            }
            let topic = router.topic(&event_type);
            if topic != reply && internal.contains(&topic) {
                let field = if self.kafka.topics.contains_key(&event_type) {
                    format!("kafka.topics.{event_type}")
                } else {
                    "kafka.topic_template".to_owned()
                };
                return Err(ConfigError::invalid(
                    field,
                    format!(
                        "routes {event_type} events to {topic:?}, one of the relay's own topics \
                         (dead letters, fulfilment requests, dedup marks): events need topics of \
                         their own (a single-topic template also needs kafka.topics.{} set apart)",
                        self.fulfilment.event_type
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn validate_redact(&self) -> Result<(), ConfigError> {
        if let Some(pointer) = self.redact.pointers.iter().find(|p| !p.starts_with('/')) {
            return Err(ConfigError::invalid(
                "redact.pointers",
                format!("{pointer:?} is not a JSON pointer (it must start with '/')"),
            ));
        }
        Ok(())
    }

    pub(super) fn validate_kafka(&self) -> Result<(), ConfigError> {
        let kafka = &self.kafka;
        if kafka.brokers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.brokers",
                "must name at least one broker",
            ));
        }
        if !is_valid_topic(&kafka.topic_template.replace(TOPIC_PLACEHOLDER, "x")) {
            return Err(ConfigError::invalid(
                "kafka.topic_template",
                format!(
                    "{:?} does not make a valid Kafka topic name",
                    kafka.topic_template
                ),
            ));
        }
        for (event_type, topic) in &kafka.topics {
            check_topic(&format!("kafka.topics.{event_type}"), topic)?;
        }
        check_topic("kafka.dead_letter_topic", &kafka.dead_letter_topic)?;
        for (event_type, pointer) in &kafka.keys {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(ConfigError::invalid(
                    format!("kafka.keys.{event_type}"),
                    format!("{pointer:?} is not a JSON pointer (it must start with '/')"),
                ));
            }
        }
        if kafka.ack_timeout.is_zero() || kafka.ack_timeout >= FIRSTPROMOTER_V1_TIMEOUT {
            return Err(ConfigError::invalid(
                "kafka.ack_timeout",
                "must be above 0 and below 15s (FirstPromoter v1 gives up at 15 s)",
            ));
        }
        if kafka.credentials_check_interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "kafka.credentials_check_interval",
                "must be at least 100ms",
            ));
        }
        if kafka.batch_linger > Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "kafka.batch_linger",
                "must be at most 1s (0s turns batching off)",
            ));
        }
        if kafka.batch_above_in_flight == 0 {
            return Err(ConfigError::invalid(
                "kafka.batch_above_in_flight",
                "must be at least 1 (turn batching off with kafka.batch_linger = \"0s\")",
            ));
        }
        if kafka.probe_interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "kafka.probe_interval",
                "must be at least 100ms",
            ));
        }
        for (section, map) in [
            ("kafka.properties", &kafka.properties),
            ("kafka.producer_properties", &kafka.producer_properties),
            ("kafka.consumer_properties", &kafka.consumer_properties),
        ] {
            if map.get("sasl.mechanism").map(String::as_str) == Some(crate::kafka::aws::MECHANISM) {
                self.check_msk_iam(section, map)?;
            }
            for key in map.keys() {
                if let Some((_, owner)) = OWNED_PROPERTIES.iter().find(|(k, _)| k == key) {
                    return Err(ConfigError::invalid(
                        format!("{section}.\"{key}\""),
                        format!("conflicts with a typed setting; set {owner} instead"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `sasl.mechanism = "AWS_MSK_IAM"` needs a region to sign for, and no other token source.
    fn check_msk_iam(
        &self,
        section: &str,
        map: &BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        if map.get("sasl.oauthbearer.method").map(String::as_str) == Some("oidc") {
            return Err(ConfigError::invalid(
                format!("{section}.\"sasl.oauthbearer.method\""),
                "\"oidc\" is another token source than sasl.mechanism = \"AWS_MSK_IAM\": use one",
            ));
        }
        let region = &self.kafka.aws_region;
        let from_env = || {
            ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
        };
        if region.trim().is_empty() && from_env().is_none() {
            return Err(ConfigError::invalid(
                "kafka.aws_region",
                "MSK IAM signs for the cluster's region: set it, or AWS_REGION",
            ));
        }
        if !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::invalid(
                "kafka.aws_region",
                format!("{region:?} is not an AWS region name (like eu-west-1)"),
            ));
        }
        Ok(())
    }

    pub(super) fn validate_fulfilment(&self) -> Result<(), ConfigError> {
        let f = &self.fulfilment;
        check_topic("fulfilment.reply_topic", &f.reply_topic)?;
        if f.event_type.is_empty() {
            return Err(ConfigError::invalid(
                "fulfilment.event_type",
                "must not be empty",
            ));
        }
        if f.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "fulfilment.timeout",
                "must be above 0",
            ));
        }
        if f.timeout > MAX_FULFILMENT_TIMEOUT {
            return Err(ConfigError::invalid(
                "fulfilment.timeout",
                "must be at most 14s: fulfilment_pending exists only in webhooks v1, which gives \
                 up at 15 s, and the answer needs time to reach it (fulfilment.allow_long_timeout \
                 no longer lifts this)",
            ));
        }
        self.check_reply_topic()?;
        for (field, status) in [
            ("fulfilment.pending_status", f.pending_status),
            ("fulfilment.timeout_status", f.timeout_status),
        ] {
            if !(201..=299).contains(&status) {
                return Err(ConfigError::invalid(
                    field,
                    format!(
                        "{status} must be a 2xx other than 200 (200 marks the reward fulfilled)"
                    ),
                ));
            }
        }
        if !(300..=599).contains(&f.failed_status) {
            return Err(ConfigError::invalid(
                "fulfilment.failed_status",
                format!(
                    "{} must be a non-2xx status from 300 to 599 so FirstPromoter retries",
                    f.failed_status
                ),
            ));
        }
        if self.fulfilment.enabled && f.max_in_flight > self.http.max_connections / 2 {
            return Err(ConfigError::invalid(
                "fulfilment.max_in_flight",
                format!(
                    "must be at most half of http.max_connections ({}): held requests each keep a \
                     connection, and standard events must always find one",
                    self.http.max_connections
                ),
            ));
        }
        if f.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "fulfilment.max_in_flight",
                "must be at least 1",
            ));
        }
        if !(1..=10_000).contains(&f.reply_topic_partitions) {
            return Err(ConfigError::invalid(
                "fulfilment.reply_topic_partitions",
                "must be between 1 and 10000",
            ));
        }
        if !f.remember.is_zero() {
            if f.remember_max == 0 {
                return Err(ConfigError::invalid(
                    "fulfilment.remember_max",
                    "must be at least 1 while fulfilment.remember is on (set remember = \"0s\" to turn it off)",
                ));
            }
            let internal = self.internal_topics();
            let uses = internal.iter().filter(|t| **t == f.verdict_topic).count();
            if f.verdict_topic.trim().is_empty() || uses > 1 {
                return Err(ConfigError::invalid(
                    "fulfilment.verdict_topic",
                    "must be a topic of its own: not empty, and not the reply, request, dead-letter or dedup topic",
                ));
            }
        }
        self.validate_fulfilment_v2()
    }

    /// The reply topic must be nobody else's: a fulfiller reading requests (or a consumer of
    /// an event topic, or of dead letters) from the topic it answers on would answer its own
    /// replies in a loop, and the relay would read requests as replies.
    fn check_reply_topic(&self) -> Result<(), ConfigError> {
        let f = &self.fulfilment;
        let kafka = &self.kafka;
        let router = Router::new(&kafka.topic_template, &kafka.topics, &BTreeMap::new());
        let request_topic = self.fulfilment_request_topic();
        let mut others: Vec<(String, String)> = vec![
            ("the fulfilment request topic".into(), request_topic),
            (
                "kafka.dead_letter_topic".into(),
                kafka.dead_letter_topic.clone(),
            ),
        ];
        others.extend(
            kafka
                .topics
                .iter()
                .map(|(event_type, topic)| (format!("kafka.topics.{event_type}"), topic.clone())),
        );
        others.extend(
            V1_EVENT_TYPES
                .iter()
                .chain(V2_EVENT_TYPES)
                .map(|event_type| {
                    (
                        format!("the topic of {event_type} events"),
                        router.topic(event_type),
                    )
                }),
        );
        match others.iter().find(|(_, topic)| *topic == f.reply_topic) {
            Some((what, _)) => Err(ConfigError::invalid(
                "fulfilment.reply_topic",
                format!(
                    "{:?} is also {what}; replies need a topic of their own",
                    f.reply_topic
                ),
            )),
            None if kafka.dead_letter_topic == others[0].1 => Err(ConfigError::invalid(
                "kafka.dead_letter_topic",
                "is also the fulfilment request topic; dead letters need a topic of their own",
            )),
            None => Ok(()),
        }
    }

    fn validate_fulfilment_v2(&self) -> Result<(), ConfigError> {
        let v2 = &self.fulfilment.v2;
        if !v2.enabled {
            return Ok(());
        }
        self.validate_firstpromoter_api("when fulfilment.v2.enabled is true")?;
        if v2.reply_keys.iter().any(|key| key.len() < MIN_SECRET_LEN) {
            return Err(ConfigError::invalid(
                "fulfilment.v2.reply_keys",
                format!("every entry needs at least {MIN_SECRET_LEN} characters"),
            ));
        }
        if v2.units.is_empty() {
            return Err(ConfigError::invalid(
                "fulfilment.v2.units",
                "must name at least one unit (e.g. \"points\")",
            ));
        }
        if v2.units.iter().any(|u| u == "cash") {
            return Err(ConfigError::invalid(
                "fulfilment.v2.units",
                "\"cash\" is a monetary commission: FirstPromoter pays it out, nothing is fulfilled",
            ));
        }
        if v2.consumer_group.trim().is_empty() {
            return Err(ConfigError::invalid(
                "fulfilment.v2.consumer_group",
                "must not be empty",
            ));
        }
        if v2.give_up_after.is_zero() {
            return Err(ConfigError::invalid(
                "fulfilment.v2.give_up_after",
                "must be above 0",
            ));
        }
        Ok(())
    }

    /// `[firstpromoter]`: the shape of every setting always; the key and account only when
    /// something in `serve` calls the API.
    pub(super) fn validate_firstpromoter(&self) -> Result<(), ConfigError> {
        let fp = &self.firstpromoter;
        let url: http::Uri = fp
            .api_url
            .parse()
            .map_err(|_| ConfigError::invalid("firstpromoter.api_url", "is not a URL"))?;
        if !matches!(url.scheme_str(), Some("https" | "http")) || url.host().is_none() {
            return Err(ConfigError::invalid(
                "firstpromoter.api_url",
                "must be an https:// URL with a host",
            ));
        }
        if url.scheme_str() == Some("http") && !fp.allow_insecure_http {
            return Err(ConfigError::invalid(
                "firstpromoter.api_url",
                "must be https://: the API key would travel in clear (set \
                 firstpromoter.allow_insecure_http = true only for a local fake of the API)",
            ));
        }
        if let Some(webhook_url) = &fp.webhook_url {
            check_webhook_url("firstpromoter.webhook_url", webhook_url)?;
        }
        for (field, value) in [
            ("firstpromoter.call_timeout", fp.call_timeout),
            ("firstpromoter.retry_initial", fp.retry_initial),
            ("firstpromoter.reconcile.interval", fp.reconcile.interval),
            ("firstpromoter.reconcile.window", fp.reconcile.window),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(field, "must be above 0"));
            }
        }
        if fp.retry_max < fp.retry_initial {
            return Err(ConfigError::invalid(
                "firstpromoter.retry_max",
                "must be at least firstpromoter.retry_initial",
            ));
        }
        if !(1..=400).contains(&fp.requests_per_minute) {
            return Err(ConfigError::invalid(
                "firstpromoter.requests_per_minute",
                "must be between 1 and 400 (FirstPromoter's limit per account)",
            ));
        }
        if fp.replicas == 0 || fp.replicas > fp.requests_per_minute {
            return Err(ConfigError::invalid(
                "firstpromoter.replicas",
                format!(
                    "must be between 1 and firstpromoter.requests_per_minute ({}): each of that \
                     many processes calls at most requests_per_minute / replicas a minute",
                    fp.requests_per_minute
                ),
            ));
        }
        if fp.reconcile.enabled {
            self.validate_firstpromoter_api("when firstpromoter.reconcile.enabled is true")?;
        }
        Ok(())
    }

    /// The key and account id a caller of the API needs; `because` says what makes the relay
    /// call it ("when fulfilment.v2.enabled is true", "for `fp-relay firstpromoter status`").
    /// Both are named at once when both are missing, each with its variable.
    pub fn validate_firstpromoter_api(&self, because: &str) -> Result<(), ConfigError> {
        let fp = &self.firstpromoter;
        let key = fp.api_key.trim().is_empty();
        let account = fp.account_id.trim().is_empty();
        let (field, also) = match (key, account) {
            (false, false) => return Ok(()),
            (true, true) => (
                "firstpromoter.api_key",
                ", and so is firstpromoter.account_id (FP_RELAY_FIRSTPROMOTER_ACCOUNT_ID)",
            ),
            (true, false) => ("firstpromoter.api_key", ""),
            (false, true) => ("firstpromoter.account_id", ""),
        };
        Err(ConfigError::invalid(
            field,
            format!(
                "is required {because}{also}: your FirstPromoter API key and account id (set \
                 the key from the environment or a secret, not in the file)"
            ),
        ))
    }
}

impl Config {
    pub(super) fn validate_telemetry(&self) -> Result<(), ConfigError> {
        let otlp = &self.telemetry.otlp;
        if let Some(endpoint) = &otlp.endpoint {
            let url: http::Uri = endpoint.parse().map_err(|_| {
                ConfigError::invalid(
                    "telemetry.otlp.endpoint",
                    format!("{endpoint:?} is not a URL"),
                )
            })?;
            if url.scheme_str() != Some("http") || url.host().is_none() {
                return Err(ConfigError::invalid(
                    "telemetry.otlp.endpoint",
                    format!(
                        "{endpoint:?} must be an http:// URL with a host (an OpenTelemetry \
                         collector's OTLP/HTTP port, usually 4318, beside the relay)"
                    ),
                ));
            }
        }
        if otlp.service_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "telemetry.otlp.service_name",
                "must not be empty",
            ));
        }
        if otlp.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "telemetry.otlp.timeout",
                "must be above 0",
            ));
        }
        Ok(())
    }
}

/// A URL FirstPromoter can deliver to: https (its subscriptions refuse anything else).
pub fn check_webhook_url(field: &str, url: &str) -> Result<(), ConfigError> {
    let parsed: http::Uri = url
        .parse()
        .map_err(|_| ConfigError::invalid(field, format!("{url:?} is not a URL")))?;
    if parsed.scheme_str() != Some("https") || parsed.host().is_none() {
        return Err(ConfigError::invalid(
            field,
            format!(
                "{url:?} must be an https:// URL with a host: FirstPromoter delivers only to https"
            ),
        ));
    }
    Ok(())
}

fn check_topic(field: &str, topic: &str) -> Result<(), ConfigError> {
    if is_valid_topic(topic) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("{topic:?} is not a valid Kafka topic name (1-249 of [a-zA-Z0-9._-], not '.' or '..')"),
        ))
    }
}
