//! What is wrong between the relay and Kafka, in an operator's words. librdkafka says the same
//! thing every few hundred milliseconds per broker connection; the relay tells the four
//! common faults apart, says each once with what to check, counts every report
//! (`fp_relay_kafka_client_errors_total{kind}`) and shows the last one on `/readyz`.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode as Code;

/// A fault of the connection to Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The brokers refuse the credentials (a wrong SASL password or user, an expired token).
    Authentication,
    /// The brokers do not offer the SASL mechanism the relay asks for.
    Mechanism,
    /// The TLS handshake failed: an untrusted broker certificate, a client certificate the
    /// broker refuses, TLS spoken to a plaintext port or the reverse.
    Tls,
    /// No broker answers (down, unreachable, a name that does not resolve).
    Unreachable,
}

impl Failure {
    /// The fault `error` (with librdkafka's `reason`) reports, if it is one of these.
    pub fn classify(error: &KafkaError, reason: &str) -> Option<Self> {
        let code = error.rdkafka_error_code();
        let lower = reason.to_ascii_lowercase();
        if lower.contains("mechanism")
            && (lower.contains("unsupported") || lower.contains("handshake failed"))
        {
            return Some(Self::Mechanism);
        }
        if code == Some(Code::Authentication)
            || lower.contains("sasl authentication")
            || lower.contains("authentication failed")
        {
            return Some(Self::Authentication);
        }
        if code == Some(Code::SSL)
            || lower.contains("ssl handshake")
            || lower.contains("certificate verify failed")
        {
            return Some(Self::Tls);
        }
        match code {
            Some(
                Code::BrokerTransportFailure
                | Code::AllBrokersDown
                | Code::Resolve
                | Code::NetworkException,
            ) => Some(Self::Unreachable),
            _ => None,
        }
    }

    /// The `kind` label and the word `/readyz` uses.
    pub fn label(self) -> &'static str {
        match self {
            Self::Authentication => "authentication",
            Self::Mechanism => "sasl_mechanism",
            Self::Tls => "tls",
            Self::Unreachable => "unreachable",
        }
    }

    /// What to check, said with the first report.
    pub fn advice(self) -> &'static str {
        match self {
            Self::Authentication => "Kafka refuses the relay's credentials: check sasl.username and sasl.password (or the token settings) in [kafka.properties] or their FP_RELAY_KAFKA_PROPERTY_* variables and files",
            Self::Mechanism => "Kafka does not offer the SASL mechanism the relay uses: check sasl.mechanism in [kafka.properties] against what the cluster enables",
            Self::Tls => "the TLS handshake with Kafka failed: check ssl.ca.location (the broker's certificate must be trusted), the client certificate and key for mutual TLS, and that security.protocol matches the port",
            Self::Unreachable => "no Kafka broker answers: check kafka.brokers and the network",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(code: Code) -> KafkaError {
        KafkaError::Global(code)
    }

    #[test]
    fn the_four_faults_are_told_apart_by_what_librdkafka_says() {
        for (error, reason, expected) in [
            (
                global(Code::Authentication),
                "SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
                Some(Failure::Authentication),
            ),
            (
                global(Code::BrokerTransportFailure),
                "sasl_ssl://127.0.0.1:9093/bootstrap: SASL SCRAM authentication failed: broker responded with invalid-proof",
                Some(Failure::Authentication),
            ),
            (
                global(Code::Authentication),
                "SASL PLAIN mechanism handshake failed: Broker: Unsupported SASL mechanism: broker's supported mechanisms: SCRAM-SHA-512",
                Some(Failure::Mechanism),
            ),
            (
                global(Code::SSL),
                "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified",
                Some(Failure::Tls),
            ),
            (
                global(Code::BrokerTransportFailure),
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused",
                Some(Failure::Unreachable),
            ),
            (global(Code::AllBrokersDown), "1/1 brokers are down", Some(Failure::Unreachable)),
            (global(Code::MessageTimedOut), "timed out", None),
        ] {
            assert_eq!(Failure::classify(&error, reason), expected, "{reason}");
        }
    }
}
