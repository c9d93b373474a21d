//! Why a record is not known to be in Kafka ([`PublishError`]), and the dead-letter reason of
//! one Kafka refused for good ([`refusal_reason`]).

use rdkafka::error::KafkaError;

/// Why a record is not known to be in Kafka.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No delivery report before the deadline; the record may still arrive later.
    #[error("Kafka did not acknowledge before the deadline")]
    Timeout,
    /// The local queue stayed full until the deadline: backpressure.
    #[error("the producer queue is full")]
    QueueFull,
    /// The producer was fatally broken; a fresh one takes the next request.
    #[error("the producer hit a fatal error and is being replaced: {0}")]
    Fatal(KafkaError),
    /// The write failed in a way a retry may fix.
    #[error("Kafka failed the write: {0}")]
    Kafka(KafkaError),
    /// Kafka reported the record delivered without an offset (a duplicate sequence number):
    /// it may or may not be in Kafka, so it is not acknowledged.
    #[error("Kafka reported the write delivered without an offset; not counted as acknowledged")]
    Unconfirmed,
    /// Kafka will never accept this record as it is (too large, not authorised, no such
    /// topic): dead-letter it, never retry it.
    #[error("Kafka refused the record for good: {0}")]
    Refused(KafkaError),
    /// Kafka did not take the event in time and the spool could not either.
    #[error("Kafka did not take the event in time and the spool could not: {0}")]
    Spool(String),
}

impl PublishError {
    /// Stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::QueueFull => "queue_full",
            Self::Fatal(_) => "fatal",
            Self::Kafka(_) => "error",
            Self::Unconfirmed => "unconfirmed",
            Self::Refused(_) => "refused",
            Self::Spool(_) => "spool",
        }
    }

    /// True when no retry can succeed
    /// ([`super::classify::Class::Permanent`](crate::kafka::classify::Class::Permanent)).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused(_))
    }

    /// A permanent refusal that is also what a cluster restarting empty says for a few seconds:
    /// the topic (or partition) does not exist.
    pub fn may_be_transient(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as Code;
        matches!(
            self,
            Self::Refused(kafka) if matches!(
                kafka.rdkafka_error_code(),
                Some(Code::UnknownTopic | Code::UnknownPartition | Code::UnknownTopicOrPartition)
            )
        )
    }
}

/// The `fp-dead-letter-reason` of a record Kafka refused for good, e.g.
/// `kafka_refused: TopicAuthorizationFailed (Broker: Topic authorization failed)`.
pub fn refusal_reason(error: &PublishError) -> String {
    match error {
        PublishError::Refused(kafka) => match kafka.rdkafka_error_code() {
            Some(code) => format!("kafka_refused: {code}"),
            None => format!("kafka_refused: {kafka}"),
        },
        other => format!("kafka_refused: {other}"),
    }
}
