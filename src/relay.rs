//! The request logic: bytes and headers in, an acknowledgement or an error out. No sockets.
//!
//! A unit test builds a `Relay` from [`Services`] without a broker (see `http/handler.rs`);
//! paths that publish are tested against a real one in `tests/`.
//!
//! Over 450 lines: it is every path a webhook can take after its body is read (standard
//! events, the spool handoff, dead letters, fulfilment holds, v2 fulfilment requests), each a
//! short method; splitting them would scatter one decision table over several files.

use std::sync::Arc;
use std::time::Instant as StdInstant;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use crate::config::Config;
use crate::dedup::{Claim, Dedup, DedupGuard, Key};
use crate::error::RelayError;
use crate::fulfilment;
use crate::fulfilment::correlator::{Asked, Correlator, Outcome, Verdict};
use crate::fulfilment::exchange::{self, status, FulfilmentAnswer};
use crate::fulfilment::verdicts::{Known, Waited};
pub use crate::health::Health;
use crate::http::body::{BodyBudget, BodyPermit};
use crate::kafka::publisher::{refusal_reason, Delivered, Handoff, PublishError, Publisher};
use crate::kafka::record::{rfc3339, OutboundRecord, Received};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Prepared};
use crate::spool::Spool;
use crate::trace::TraceContext;
use crate::webhook::auth::{Authenticator, Exchange, Scope, ScopeRefusal};
use crate::webhook::envelope::{self, Envelope, WebhookVersion};

/// What the relay answers when a request was accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// A standard event Kafka has acknowledged.
    Published { topic: String, delivered: Delivered },
    /// A standard event safe in the durable spool, to be replayed to Kafka.
    Spooled { seq: i64 },
    /// A standard event Kafka refused for good (too large, not authorised, no such topic),
    /// kept on the dead-letter topic with the reason; or an event whose type routes into one
    /// of the relay's own topics, which senders may never write.
    DeadLettered {
        topic: String,
        delivered: Delivered,
        /// `kafka_refused` or `reserved_topic`.
        reason: &'static str,
    },
    /// An event id already published: nothing was published again.
    Duplicate,
    /// A `fulfilment_pending` event and the decision about it.
    Fulfilment(FulfilmentAnswer),
    /// An approved non-monetary v2 commission: routed like any event and published as a
    /// fulfilment request; Kafka has both.
    FulfilmentRequested {
        topic: String,
        delivered: Delivered,
        request_topic: String,
        correlation_id: String,
    },
}

/// What is known of a request's event once its body is parsed; for metrics and log lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMeta {
    /// The event type, when the body had one.
    pub event_type: Option<String>,
    /// The event id, when the body or `X-Event-Id` had one.
    pub event_id: Option<String>,
    /// The request's trace (W3C trace context) and the relay's span in it, once its body was
    /// read.
    pub trace: Option<TraceContext>,
    /// Where the event went (or would have gone).
    pub topic: Option<String>,
}

impl EventMeta {
    /// The trace id as tracing systems show it, or `-`.
    pub fn trace_id_hex(&self) -> String {
        self.trace
            .as_ref()
            .map_or_else(|| "-".to_owned(), TraceContext::trace_id_hex)
    }
}

/// The long-lived parts the request logic uses, built by [`crate::Server::run`] (a unit test
/// can build them without a broker: librdkafka connects lazily).
pub struct Services {
    /// The one producer.
    pub publisher: Arc<Publisher>,
    /// Held fulfilment requests; `None` with fulfilment off.
    pub correlator: Option<Arc<Correlator>>,
    /// Every replica's verdict on each reward; `None` with fulfilment or `fulfilment.remember` off.
    pub verdicts: Option<Arc<fulfilment::verdicts::Verdicts>>,
    /// The durable spool; `None` unless `spool.enabled`.
    pub spool: Option<Arc<Spool>>,
    /// Published event ids; `None` unless `dedup.enabled`.
    pub dedup: Option<Arc<Dedup>>,
    /// The same table shared with every replica through `dedup.topic`; `None` unless set.
    pub shared_dedup: Option<Arc<crate::dedup::shared::Shared>>,
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness state.
    pub health: Arc<Health>,
    /// Span export; `None` unless `telemetry.otlp.endpoint` is set.
    pub spans: Option<Arc<crate::spans::Spans>>,
}

/// The relay's request logic and everything it shares between requests. Its parts are
/// private: the HTTP layer asks through the methods below.
pub struct Relay {
    /// The validated configuration.
    config: Config,
    /// Parse, redact and route.
    pipeline: Pipeline,
    /// Credential and source checks; replaced whole when secrets read from files change.
    authenticator: std::sync::RwLock<Arc<Authenticator>>,
    /// The producer, correlator, spool, dedup table, metrics and readiness, as built.
    services: Services,
    /// `http.max_buffered_body_bytes`: the memory budget for request bodies.
    body_budget: BodyBudget,
    /// Where v1 `fulfilment_pending` goes, and so v2 fulfilment requests too.
    fulfilment_topic: String,
    /// One "request refused" line per reason every [`REFUSAL_LINE_GAP`].
    refusal_lines: crate::telemetry::LineLimit,
    /// Signs v2 correlation ids (`fulfilment.v2.reply_keys`).
    reply_keys: fulfilment::v2::ReplyKeys,
    /// The relay's own topics (dead letters, fulfilment requests and replies, dedup marks):
    /// no sender's event is ever written to them.
    reserved_topics: Vec<String>,
}

/// How often a refusal of one kind is logged at most; the metrics count every one.
pub const REFUSAL_LINE_GAP: std::time::Duration = std::time::Duration::from_secs(10);

impl Relay {
    /// The memory budget request bodies are read into.
    pub fn body_budget(&self) -> &BodyBudget {
        &self.body_budget
    }

    /// Assembles the request logic from its parts.
    pub fn new(config: Config, services: Services) -> Self {
        let pipeline = Pipeline::new(&config);
        Self {
            body_budget: BodyBudget::new(config.http.max_buffered_body_bytes),
            fulfilment_topic: config.fulfilment_request_topic(),
            pipeline,
            authenticator: std::sync::RwLock::new(Arc::new(Authenticator::new(&config.auth))),
            reply_keys: fulfilment::v2::ReplyKeys::new(&config),
            reserved_topics: config.internal_topics(),
            config,
            services,
            refusal_lines: crate::telemetry::LineLimit::new(REFUSAL_LINE_GAP),
        }
    }

    /// The limiter of "request refused" lines.
    pub fn refusal_lines(&self) -> &crate::telemetry::LineLimit {
        &self.refusal_lines
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Credential and source checks.
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.authenticator
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks credentials with `authenticator` from now on (secrets reloaded from their
    /// files); requests already past their checks are not affected.
    pub fn replace_authenticator(&self, authenticator: Authenticator) {
        *self
            .authenticator
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(authenticator);
    }

    /// Shared metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.services.metrics
    }

    /// Span export, when on.
    pub fn spans(&self) -> Option<&crate::spans::Spans> {
        self.services.spans.as_deref()
    }

    /// `(ready, checks)` for `/readyz` (see [`Health::report`]).
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        self.services.health.report(self.services.spool.as_deref())
    }

    /// The text exposition of every metric, with the gauges that are computed at scrape time
    /// (readiness, the spool's size and oldest age) brought up to date first.
    pub fn render_metrics(&self) -> String {
        self.services
            .metrics
            .ready
            .set(i64::from(self.readiness().0));
        self.services
            .metrics
            .fulfilment_reply_path_ready
            .set(i64::from(self.reply_path_ready()));
        if let Some(spool) = &self.services.spool {
            spool.refresh_metrics();
        }
        self.services.metrics.render()
    }

    /// Counts a request refused because Kafka did not take its event; true when it should be
    /// logged (see [`ClusterWatch::note_refusal`]).
    pub fn note_kafka_refusal(&self) -> bool {
        self.services.health.cluster.note_refusal()
    }

    /// Parses, routes and publishes one webhook body. Returns what is known of the event
    /// alongside the result, for metrics and logs.
    /// `arrived` is when the request's head arrived: Kafka's acknowledgement (or the spool)
    /// must come within `kafka.ack_timeout` of it.
    /// `budget` is the body's share of `http.max_buffered_body_bytes`, given back once the body
    /// is no longer held (at the end, or before a fulfilment request waits for its answer).
    /// `scope` is what the request's credentials may deliver: another envelope is refused
    /// unpublished (a v1 path token must not carry a v2 approval that makes a reward happen).
    pub async fn ingest(
        &self,
        headers: HeaderMap,
        body: Bytes,
        arrived: Instant,
        budget: BodyPermit<'_>,
        scope: Scope,
    ) -> (EventMeta, Result<Accepted, RelayError>) {
        let received = Received::for_request(&headers);
        let body_for_dead_letter = body.clone();
        let prepared = self.pipeline.prepare(&headers, body, &received);
        // The request's headers and body point into hyper's read buffer; nothing below needs
        // them, and a held fulfilment request must not keep that buffer alive.
        drop(headers);
        let Prepared {
            envelope, record, ..
        } = match prepared {
            Ok(prepared) => {
                drop(body_for_dead_letter);
                prepared
            }
            Err(error) => {
                let error =
                    Box::pin(self.dead_letter(error, &received, body_for_dead_letter, arrived))
                        .await;
                return (EventMeta::default(), Err(error));
            }
        };
        let approval = self.pipeline.approval(&envelope);
        // Which exchange the request enters, decided once from its credential and its envelope.
        let exchange = self
            .authenticator()
            .exchange(
                scope,
                &envelope,
                &self.config.fulfilment.event_type,
                approval,
            )
            .map_err(|refusal| match refusal {
                ScopeRefusal::Unsigned(failure) => RelayError::Unauthorized(failure),
                ScopeRefusal::Version(version) => RelayError::CredentialScope(version),
                ScopeRefusal::Mismatch => RelayError::EnvelopeMismatch,
            })
            .and_then(|exchange| match self.stale(&envelope) {
                Some(age) => Err(RelayError::StaleEvent { age }),
                None => Ok(exchange),
            });
        let Envelope {
            version,
            event_type,
            event_id,
            ..
        } = envelope;
        let key = match (&self.services.dedup, &event_id, &exchange) {
            // A fulfilment request is asked again at every check: never a duplicate.
            (Some(_), Some(id), Ok(Exchange::Standard | Exchange::V2Approval(_))) => Some(
                crate::dedup::key_of_event(version.as_str(), id, &event_type, &record.payload),
            ),
            _ => None,
        };
        let meta = EventMeta {
            event_type: Some(event_type),
            event_id,
            trace: Some(received.trace.clone()),
            // Only spans name the topic; no copy otherwise.
            topic: self.services.spans.is_some().then(|| record.topic.clone()),
        };
        let exchange = match exchange {
            Ok(exchange) => exchange,
            Err(error) => return (meta, Err(error)),
        };
        // Every path but the hold is boxed, so that a held request's state is the hold's alone.
        let result = match exchange {
            Exchange::V1Fulfilment => self.fulfil(&meta, record, budget, arrived).await,
            _ if self.reserved_topics.contains(&record.topic) => {
                Box::pin(self.dead_letter_reserved(record, arrived)).await
            }
            Exchange::V2Approval(commission) => {
                Box::pin(self.request_fulfilment(key, commission, record, &received, arrived)).await
            }
            Exchange::Standard => Box::pin(self.standard(key, record, &received, arrived)).await,
        };
        (meta, result)
    }

    /// How old a v2 event is when `auth.max_event_age` refuses it (its `timestamp` is in the
    /// signed body); `None` when it is young enough, v1, or without a readable timestamp.
    fn stale(&self, envelope: &Envelope) -> Option<std::time::Duration> {
        let max = self.config.auth.max_event_age?;
        if envelope.version != WebhookVersion::V2 {
            return None;
        }
        let at = crate::firstpromoter::parse_time(envelope.occurred_at.as_deref()?)?;
        std::time::SystemTime::now()
            .duration_since(at)
            .ok()
            .filter(|age| *age > max)
    }

    /// A standard event: suppressed if it was already published, otherwise into Kafka, or
    /// into the spool when Kafka cannot take it in time.
    async fn standard(
        &self,
        key: Option<Key>,
        record: OutboundRecord,
        received: &Received,
        arrived: Instant,
    ) -> Result<Accepted, RelayError> {
        let guard = match self.claim(key).await {
            Ok(guard) => guard,
            Err(duplicate) => return Ok(duplicate),
        };
        let accepted = match &self.services.spool {
            Some(spool) => {
                self.publish_or_spool(spool, record, received, arrived)
                    .await?
            }
            None => {
                match self.publish(&record, arrived).await {
                    Ok(delivered) => Accepted::Published {
                        topic: record.topic,
                        delivered,
                    },
                    Err(error) if error.is_permanent() => {
                        self.dead_letter_refused(record, &error, arrived).await?
                    }
                    // The refusal is logged once, by the handler (rate-limited during an outage).
                    Err(error) => return Err(error.into()),
                }
            }
        };
        self.settle(guard, &accepted);
        Ok(accepted)
    }

    /// Claims the event when dedup is on: `Err(Accepted::Duplicate)` when it was published
    /// already, otherwise the guard to settle once Kafka has the event (`None` without dedup
    /// or id).
    async fn claim(&self, key: Option<Key>) -> Result<Option<DedupGuard>, Accepted> {
        let (Some(dedup), Some(key)) = (&self.services.dedup, key) else {
            return Ok(None);
        };
        match dedup.claim(key).await {
            Claim::Duplicate => {
                self.services.metrics.duplicates.inc();
                Err(Accepted::Duplicate)
            }
            Claim::Owner(guard) => Ok(Some(guard)),
        }
    }

    /// The event is safe (`accepted`): its id is remembered, a conflict (the id published
    /// before with other content) counted and logged once a while, and an event in its own
    /// topic marked for the other replicas (a spooled one is marked when the spool delivers
    /// it, a dead-lettered one may be redriven).
    fn settle(&self, guard: Option<DedupGuard>, accepted: &Accepted) {
        let Some(guard) = guard else {
            return;
        };
        if guard.conflict() {
            self.services.metrics.dedup_conflicts.inc();
            if let Some(held_back) = self.refusal_lines.admit("dedup_conflict") {
                tracing::warn!(
                    like_this_not_logged = held_back,
                    "an event id was published before with other content; published this one too                      (fp_relay_dedup_conflicts_total)"
                );
            }
        }
        if let (Some(shared), Accepted::Published { .. } | Accepted::FulfilmentRequested { .. }) =
            (&self.services.shared_dedup, accepted)
        {
            shared.mark(guard.key());
        }
        guard.commit();
    }

    /// An approved non-monetary v2 commission: routed to its topic and, as a fulfilment
    /// request keyed by the commission id, to the fulfilment topic. Answered 200 once Kafka has
    /// both; otherwise 503, which v2 retries (never spooled: a request must reach fulfillers).
    async fn request_fulfilment(
        &self,
        key: Option<Key>,
        commission: u64,
        record: OutboundRecord,
        received: &Received,
        arrived: Instant,
    ) -> Result<Accepted, RelayError> {
        let guard = match self.claim(key).await {
            Ok(guard) => guard,
            Err(duplicate) => return Ok(duplicate),
        };
        // A commission FirstPromoter already marked fulfilled: routed, asking no fulfiller.
        if let Some(verdicts) = &self.services.verdicts {
            if verdicts.fulfilled(&format!("v2:{commission}")) {
                let delivered = self.publish(&record, arrived).await?;
                self.services
                    .metrics
                    .fulfilment_outcomes
                    .with_label_values(&["remembered"])
                    .inc();
                let accepted = Accepted::Published {
                    topic: record.topic,
                    delivered,
                };
                self.settle(guard, &accepted);
                return Ok(accepted);
            }
        }
        let (request, correlation_id) = fulfilment::v2::request_for(
            &record,
            commission,
            &self.reply_keys,
            &self.fulfilment_topic,
            &self.config.fulfilment.reply_topic,
            received,
        );
        let (requested, routed) = tokio::join!(
            self.publish_request(&request, arrived),
            self.publish(&record, arrived)
        );
        requested?;
        let delivered = routed?;
        self.services.metrics.fulfilment_v2_requests.inc();
        let accepted = Accepted::FulfilmentRequested {
            topic: record.topic,
            delivered,
            request_topic: request.topic,
            correlation_id,
        };
        self.settle(guard, &accepted);
        Ok(accepted)
    }

    /// An event whose type routes into one of the relay's own topics: kept on the dead-letter
    /// topic (its payload redacted like any event's) with the reason `reserved_topic`, never
    /// written where the relay or a fulfiller would read it as its own.
    async fn dead_letter_reserved(
        &self,
        record: OutboundRecord,
        arrived: Instant,
    ) -> Result<Accepted, RelayError> {
        let original = record.topic.clone();
        // Without `fp-original-topic`: `redrive` puts a dead letter back where that header says,
        // and this one must never reach the internal topic it names (the reason says which).
        let reason = format!("reserved_topic: {original}");
        let mut record = record.into_dead_letter(&self.config.kafka.dead_letter_topic, &reason);
        record
            .headers
            .retain(|(name, _)| name != crate::kafka::record::headers::ORIGINAL_TOPIC);
        let accepted = self
            .publish_dead_letter(record, arrived, "reserved_topic")
            .await?;
        if let Some(held_back) = self.refusal_lines.admit("reserved_topic") {
            tracing::warn!(
                topic = %original,
                like_this_not_logged = held_back,
                "an event's type routes into one of the relay's own topics; kept it on the dead-letter topic"
            );
        }
        Ok(accepted)
    }

    /// Publishes directly unless the spool has a backlog (receive order), and spools what Kafka
    /// cannot take within `spool.handoff_after`. Only a full or failing spool means 503.
    async fn publish_or_spool(
        &self,
        spool: &Arc<Spool>,
        record: OutboundRecord,
        received: &Received,
        arrived: Instant,
    ) -> Result<Accepted, RelayError> {
        let attempt = if spool.has_backlog() {
            None
        } else {
            let handoff = arrived + self.config.spool.handoff_after;
            match self
                .services
                .publisher
                .publish_or_handoff(&record, handoff)
                .await
            {
                Ok(delivered) => {
                    return Ok(Accepted::Published {
                        topic: record.topic,
                        delivered,
                    })
                }
                // "No such topic" may be a cluster restarting empty: spooled, where replay
                // waits to see whether the topic comes back before dead-lettering.
                Err(Handoff::Failed(error))
                    if error.is_permanent() && !error.may_be_transient() =>
                {
                    match self
                        .dead_letter_refused(record.clone(), &error, arrived)
                        .await
                    {
                        Ok(accepted) => return Ok(accepted),
                        // Replay dead-letters it once Kafka takes writes again.
                        Err(_) => None,
                    }
                }
                Err(Handoff::Failed(error)) => {
                    tracing::warn!(topic = %record.topic, kind = error.kind(), %error, "Kafka did not take the event; spooling it");
                    None
                }
                Err(Handoff::InFlight(pending)) => Some(pending),
            }
        };
        // Bounded like everything after the head: at the deadline the write is cancelled
        // unless the writer has it already (then its outcome is the answer).
        let deadline = arrived + self.config.kafka.ack_timeout;
        let appended = spool.append(&record, received.at, attempt, deadline).await;
        match appended {
            Ok(seq) => Ok(Accepted::Spooled { seq }),
            Err(error) => {
                tracing::error!(%error, topic = %record.topic, "cannot spool an event Kafka did not take");
                Err(RelayError::Unavailable(PublishError::Spool(
                    error.to_string(),
                )))
            }
        }
    }

    /// Keeps a standard event Kafka refused for good on the dead-letter topic (see
    /// [`crate::kafka::classify`]); 503 if even that fails.
    async fn dead_letter_refused(
        &self,
        record: OutboundRecord,
        error: &PublishError,
        arrived: Instant,
    ) -> Result<Accepted, RelayError> {
        let original = record.topic.clone();
        let record =
            record.into_dead_letter(&self.config.kafka.dead_letter_topic, &refusal_reason(error));
        let accepted = self
            .publish_dead_letter(record, arrived, "kafka_refused")
            .await?;
        tracing::warn!(topic = %original, %error, "Kafka refused the event for good; kept it on the dead-letter topic");
        Ok(accepted)
    }

    /// Publishes a record already moved to the dead-letter topic and counts it: the answer,
    /// naming `reason`, once Kafka has it.
    async fn publish_dead_letter(
        &self,
        record: OutboundRecord,
        arrived: Instant,
        reason: &'static str,
    ) -> Result<Accepted, RelayError> {
        let delivered = self.publish(&record, arrived).await?;
        self.services.metrics.dead_lettered.inc();
        Ok(Accepted::DeadLettered {
            topic: record.topic,
            delivered,
            reason,
        })
    }

    /// Publishes `record`, acknowledged within `kafka.ack_timeout` of the request's arrival.
    /// A failure is logged once, by the handler (rate-limited during an outage).
    async fn publish(
        &self,
        record: &OutboundRecord,
        arrived: Instant,
    ) -> Result<Delivered, PublishError> {
        let deadline = arrived + self.config.kafka.ack_timeout;
        self.services.publisher.publish(record, deadline).await
    }

    /// A fulfilment request: through the producer that sends at once, since an HTTP request (v1)
    /// or a fulfiller's answer (v2) waits on it.
    async fn publish_request(
        &self,
        record: &OutboundRecord,
        arrived: Instant,
    ) -> Result<Delivered, PublishError> {
        let deadline = arrived + self.config.kafka.ack_timeout;
        self.services
            .publisher
            .publish_at_once(record, deadline)
            .await
    }

    /// Keeps an unparseable body on the dead-letter topic and says why it was refused.
    async fn dead_letter(
        &self,
        error: envelope::EnvelopeError,
        received: &Received,
        body: Bytes,
        arrived: Instant,
    ) -> RelayError {
        let (body, redacted, digest_only) = if self.config.kafka.dead_letter_raw_bodies {
            (body, 0, false)
        } else {
            self.pipeline.dead_letter_body(body)
        };
        let mut record = OutboundRecord::dead_letter(
            &self.config.kafka.dead_letter_topic,
            error.reason(),
            received,
            body,
        );
        if redacted > 0 {
            record.mark_redacted(redacted);
        }
        if digest_only {
            record.headers.push((
                crate::kafka::record::headers::DEAD_LETTER_BODY.into(),
                "sha256".to_owned(),
            ));
        }
        let dead_lettered = match self.publish(&record, arrived).await {
            Ok(_) => {
                self.services.metrics.dead_lettered.inc();
                true
            }
            Err(publish_error) => {
                tracing::error!(%publish_error, reason = error.reason(), "cannot dead-letter a refused body");
                false
            }
        };
        RelayError::Invalid {
            error,
            dead_lettered,
        }
    }

    /// Publishes a `fulfilment_pending` event and holds the request for the fulfiller's answer.
    async fn fulfil(
        &self,
        event: &EventMeta,
        mut record: OutboundRecord,
        budget: BodyPermit<'_>,
        arrived: Instant,
    ) -> Result<Accepted, RelayError> {
        let settings = &self.config.fulfilment;
        let pending = status(settings.pending_status);
        let Some(correlator) = &self.services.correlator else {
            Box::pin(self.publish_fulfilment(&record, arrived)).await?;
            return Ok(self.answer(pending, "disabled", None, None));
        };
        let reward = self
            .services
            .verdicts
            .as_ref()
            .and_then(|_| fulfilment::verdicts::reward_of(&record.payload));
        if let (Some(verdicts), Some(reward)) = (&self.services.verdicts, &reward) {
            match verdicts.lookup(reward) {
                Some(Known::Answered(reply)) if reply.outcome == Outcome::Fulfilled => {
                    tracing::info!(
                        event_id = event.event_id.as_deref().unwrap_or("-"),
                        reward,
                        "fulfilment remembered as fulfilled; answered 200 without asking again"
                    );
                    return Ok(self.answer(StatusCode::OK, "remembered", None, reply.reason));
                }
                Some(Known::Asking { .. }) if !correlator.releasing() => {
                    if let Some(answer) = self.join(correlator, verdicts, reward, arrived).await {
                        return Ok(answer);
                    }
                }
                _ => {}
            }
        }
        if correlator.releasing() || !self.reply_path_ready() {
            // No reply could reach this hold (starting, rebuilding the reply consumer, shutting
            // down): publishing would let a fulfiller act on a reward FirstPromoter is then told
            // is still pending. Unpublished and answered pending, it is asked again at
            // FirstPromoter's next fulfilment check.
            return Ok(self.answer(
                pending,
                "unavailable",
                None,
                Some("the reply path is not ready; not published".to_owned()),
            ));
        }
        let asked = reward.as_deref().map(|reward| Asked {
            reward: Arc::from(reward),
            at: fulfilment::verdicts::Verdicts::now(),
        });
        let Some(mut hold) = correlator.hold(asked.clone()) else {
            // Beyond max_in_flight: still publish (a fulfiller may act on it), but do not hold.
            Box::pin(self.publish_fulfilment(&record, arrived)).await?;
            tracing::warn!(event_id = ?event.event_id, "fulfilment in-flight cap reached; answered pending at once");
            return Ok(self.answer(pending, "overflow", None, None));
        };
        let correlation_id = hold.id().to_string();
        let deadline = arrived + settings.timeout;
        // The instant the hold ends, on the wall clock: `received` was taken after the body
        // was read, up to request_timeout later, and a fulfiller working to it replied late.
        let deadline_at =
            std::time::SystemTime::now() + deadline.saturating_duration_since(Instant::now());
        record.add_fulfilment_request(&correlation_id, &settings.reply_topic, rfc3339(deadline_at));
        // Later checks of this reward (here at once, on other replicas once Kafka has the
        // request) wait for this request's verdict instead of asking again.
        let asking = self.services.verdicts.as_ref().zip(asked);
        if let Some((verdicts, asked)) = &asking {
            verdicts.asking(&asked.reward, asked.at, deadline_at);
        }
        let published = Box::pin(self.publish_fulfilment(&record, arrived)).await;
        if let Some((verdicts, asked)) = &asking {
            match &published {
                Ok(_) => verdicts.asked(&asked.reward, asked.at, deadline_at),
                Err(_) => verdicts.not_asked(&asked.reward, asked.at),
            }
        }
        published?;
        // In Kafka now; the hold needs only the correlation id.
        drop(record);
        drop(budget);
        let published = StdInstant::now();
        let verdict = hold.wait(deadline).await;
        if matches!(verdict, Verdict::Answered(_)) {
            self.services
                .metrics
                .fulfilment_reply_duration
                .observe(published.elapsed().as_secs_f64());
        }
        let (code, outcome, reason) = exchange::decide(verdict, settings);
        // The reply path's line: the request's trace, which a fulfiller continues.
        tracing::info!(
            trace_id = %event.trace_id_hex(),
            event_id = event.event_id.as_deref().unwrap_or("-"),
            correlation_id,
            outcome,
            status = code.as_u16(),
            "fulfilment request answered"
        );
        Ok(self.answer(code, outcome, Some(correlation_id), reason))
    }

    /// Another check of `reward` is being answered (here or on another replica): waits, within
    /// this request's own deadline, for that request's verdict instead of asking again. `None`
    /// when that request could not be published after all: this check asks itself.
    async fn join(
        &self,
        correlator: &Correlator,
        verdicts: &fulfilment::verdicts::Verdicts,
        reward: &str,
        arrived: Instant,
    ) -> Option<Accepted> {
        let settings = &self.config.fulfilment;
        let deadline = arrived + settings.timeout;
        let verdict = tokio::select! {
            waited = verdicts.wait(reward, deadline) => match waited {
                Waited::Verdict(reply) => Verdict::Answered(reply),
                Waited::TimedOut => Verdict::TimedOut,
                Waited::NobodyAsking => return None,
            },
            () = correlator.released() => Verdict::Released,
        };
        let (code, outcome, reason) = exchange::decide(verdict, settings);
        let outcome = if outcome == "timeout" || outcome == "released" {
            outcome
        } else {
            "joined"
        };
        tracing::info!(
            reward,
            outcome,
            status = code.as_u16(),
            "fulfilment check answered by the verdict of a request already asking about its reward"
        );
        Some(self.answer(code, outcome, None, reason))
    }

    /// Publishes a fulfilment request; failure is 503, which FirstPromoter retries.
    async fn publish_fulfilment(
        &self,
        record: &OutboundRecord,
        arrived: Instant,
    ) -> Result<Delivered, RelayError> {
        let delivered = self
            .publish_request(record, arrived)
            .await
            .inspect_err(|_| {
                self.services
                    .metrics
                    .fulfilment_outcomes
                    .with_label_values(&["publish_error"])
                    .inc();
            })?;
        Ok(delivered)
    }

    fn answer(
        &self,
        status: StatusCode,
        outcome: &'static str,
        correlation_id: Option<String>,
        reason: Option<String>,
    ) -> Accepted {
        self.services
            .metrics
            .fulfilment_outcomes
            .with_label_values(&[outcome])
            .inc();
        Accepted::Fulfilment(FulfilmentAnswer {
            status,
            outcome,
            correlation_id,
            reason,
        })
    }

    /// True when replies can reach a held request: the reply consumer is positioned.
    pub fn reply_path_ready(&self) -> bool {
        self.services
            .health
            .reply_consumer
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits, until `deadline` at the latest, for the dedup marks handed to the background to
    /// reach the producer (see [`crate::dedup::shared::Shared::marks_written`]); true at once
    /// without a shared table.
    pub async fn marks_written(&self, deadline: std::time::Instant) -> bool {
        match &self.services.shared_dedup {
            Some(shared) => {
                let written = shared.marks_written(deadline).await;
                if !written {
                    tracing::warn!("dedup marks still pending at shutdown; a retry of their events may be published again by another replica");
                }
                written
            }
            None => true,
        }
    }

    /// Everything held is answered with the pending status now, and every later fulfilment
    /// request at once: the relay is shutting down.
    pub fn release_holds(&self) {
        if let Some(correlator) = &self.services.correlator {
            correlator.release_all();
        }
    }
}
