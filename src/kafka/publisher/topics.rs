//! The lookup before a topic's first write, and what the cluster said, remembered (see the
//! publisher's module docs for why).

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;

use super::error::PublishError;
use super::Publisher;

/// Longest wait for a topic's metadata before its first write.
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a topic found missing is refused before it is looked up again.
pub const RECHECK_MISSING: Duration = Duration::from_secs(10);

/// Most topics remembered (they come from event types; the table starts over past this).
const MAX_KNOWN_TOPICS: usize = 10_000;

/// What the cluster said about a topic.
#[derive(Debug, Clone, Copy)]
pub(super) enum TopicState {
    Exists,
    /// Missing or refused, with the code, since then.
    Refused(RDKafkaErrorCode, Instant),
    /// The lookup got no answer (or a passing state) then: writes go ahead meanwhile.
    Unanswered(Instant),
}

impl TopicState {
    /// Whether a write to the topic may go ahead.
    fn verdict(self) -> Result<(), PublishError> {
        match self {
            Self::Exists | Self::Unanswered(_) => Ok(()),
            Self::Refused(code, _) => {
                Err(PublishError::Refused(KafkaError::MessageProduction(code)))
            }
        }
    }
}

impl Publisher {
    /// Looks `topic` up before its first write: `Err(Refused)` when the cluster says it does
    /// not exist or may not be written. When the cluster does not answer in time, the write
    /// itself decides (nothing is remembered).
    pub(super) async fn check_topic(
        &self,
        topic: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), PublishError> {
        let known = self
            .topics
            .lock()
            .expect("lock not poisoned")
            .get(topic)
            .copied();
        match known {
            Some(state @ TopicState::Exists) => return state.verdict(),
            Some(state @ (TopicState::Refused(_, since) | TopicState::Unanswered(since)))
                if since.elapsed() < RECHECK_MISSING =>
            {
                return state.verdict()
            }
            // Nothing would answer: the write itself is spooled or refused as in any outage.
            _ if self.watch.is_down() => return Ok(()),
            _ => {}
        }
        let timeout = TOPIC_CHECK_TIMEOUT
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let generation = self.current();
        let name = topic.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let metadata = generation
                .producer()
                .client()
                .fetch_metadata(Some(&name), timeout)
                .ok()?;
            let entry = metadata.topics().iter().find(|t| t.name() == name)?;
            Some(match entry.error() {
                None if !entry.partitions().is_empty() => Ok(()),
                None => Err(None),
                Some(error) => Err(Some(RDKafkaErrorCode::from(error))),
            })
        })
        .await
        .ok()
        .flatten();
        let state = match found {
            Some(Ok(())) => TopicState::Exists,
            Some(Err(Some(
                code @ (RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic),
            ))) => TopicState::Refused(code, Instant::now()),
            // No answer, or a passing state (leader not available while it is created).
            _ => TopicState::Unanswered(Instant::now()),
        };
        let mut topics = self.topics.lock().expect("lock not poisoned");
        if topics.len() >= MAX_KNOWN_TOPICS {
            topics.clear();
        }
        topics.insert(topic.to_owned(), state);
        state.verdict()
    }
}
