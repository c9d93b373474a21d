//! Every Kafka failure classified once, after Vector's Kafka sink: the publisher, the request
//! logic, the spool and its replay all act on the [`Class`], never on raw error codes.
//!
//! | class | meaning | what the relay does |
//! |---|---|---|
//! | `Backpressure` | the local queue is full | waits briefly, then 503 (or spools) |
//! | `Fatal` | the producer instance is broken for good | replaces it; the write is retried by the sender or the spool |
//! | `Permanent` | this record will never be accepted as it is | dead-letter topic, never retried |
//! | `Retriable` | anything else: timeouts, lost brokers, leader changes | 503 with Retry-After, or the spool |
//!
//! Permanent is a short, named list: when in doubt a failure is retriable, because retrying a
//! record that can never succeed only delays it, while dead-lettering a record that would have
//! succeeded takes it off its topic.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode as Code;

/// What a Kafka failure means for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The producer's queue is full.
    Backpressure,
    /// The producer instance can never produce again.
    Fatal,
    /// This record can never be written as it is (too large, not authorised, no such topic).
    Permanent,
    /// Worth trying again later.
    Retriable,
}

/// Refusals that no retry changes: the record is too large, the topic is invalid or missing
/// with auto-creation off, or the relay is not allowed to write it.
const PERMANENT: &[Code] = &[
    Code::MessageSizeTooLarge,
    Code::InvalidMessageSize,
    Code::InvalidTopic,
    Code::UnknownTopic,
    Code::UnknownPartition,
    Code::TopicAuthorizationFailed,
    Code::ClusterAuthorizationFailed,
    Code::InvalidRecord,
    Code::PolicyViolation,
];

/// The class of `error`.
pub fn classify(error: &KafkaError) -> Class {
    match error.rdkafka_error_code() {
        Some(Code::QueueFull) => Class::Backpressure,
        Some(Code::Fatal) => Class::Fatal,
        Some(code) if PERMANENT.contains(&code) => Class::Permanent,
        _ => Class::Retriable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce_error(code: Code) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    #[test]
    fn each_failure_has_one_class() {
        assert_eq!(
            classify(&produce_error(Code::QueueFull)),
            Class::Backpressure
        );
        assert_eq!(classify(&produce_error(Code::Fatal)), Class::Fatal);
        for code in [
            Code::MessageSizeTooLarge,
            Code::TopicAuthorizationFailed,
            Code::UnknownTopic,
        ] {
            assert_eq!(classify(&produce_error(code)), Class::Permanent, "{code:?}");
        }
        for code in [
            Code::MessageTimedOut,
            Code::BrokerTransportFailure,
            Code::NotLeaderForPartition,
            Code::UnknownTopicOrPartition,
            Code::RequestTimedOut,
        ] {
            assert_eq!(classify(&produce_error(code)), Class::Retriable, "{code:?}");
        }
        assert_eq!(classify(&KafkaError::Canceled), Class::Retriable);
    }
}
