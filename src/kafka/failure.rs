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
    /// A broker answers the first exchange and then hangs up: its listener requires SASL and
    /// the relay does not authenticate.
    SaslRequired,
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

    /// The fault a librdkafka log line reports, for the faults that only come as log lines: a
    /// connection closed with requests in flight is logged as a warning, never sent to the
    /// error callback. `message` starts with the broker's name, which librdkafka prefixes with
    /// the security protocol (`sasl_ssl://`, `ssl://`) unless it is plaintext.
    pub fn from_log(facility: &str, message: &str) -> Option<Self> {
        // librdkafka's own OAUTHBEARER token fetch (sasl.oauthbearer.method=oidc): the token
        // endpoint refused the client or could not be reached. Retried every 10 s.
        if matches!(facility, "OIDC" | "JWT") && message.starts_with("Failed") {
            return Some(Self::Authentication);
        }
        if facility != "FAIL" {
            return None;
        }
        if message.contains("connecting to a SSL listener?") {
            return Some(Self::Tls);
        }
        if !(message.contains("closed by peer") || message.contains("reset by peer")) {
            return None;
        }
        // "[thrd:ssl://host:9093/bootstrap]: ssl://host:9093/bootstrap: Disconnected: ..."
        let message = match message.split_once("]: ") {
            Some((thread, rest)) if thread.starts_with("[thrd:") => rest,
            _ => message,
        };
        let (ms, state) = hung_up_in(message)?;
        let sasl = message.starts_with("sasl_");
        // librdkafka's own rules for its hints: a hang-up before the ApiVersions answer is a TLS
        // port spoken to in plaintext, or, over TLS, the broker refusing the client's
        // certificate (TLS 1.3 says so only after the handshake); one within 2 s of coming up
        // is a SASL listener.
        match state {
            "APIVERSION_QUERY" => Some(Self::Tls),
            "UP" if ms < 2000 && !sasl => Some(Self::SaslRequired),
            _ => None,
        }
    }

    /// The `kind` label and the word `/readyz` uses.
    pub fn label(self) -> &'static str {
        match self {
            Self::Authentication => "authentication",
            Self::Mechanism => "sasl_mechanism",
            Self::Tls => "tls",
            Self::SaslRequired => "sasl_required",
            Self::Unreachable => "unreachable",
        }
    }

    /// What to check, said with the first report.
    pub fn advice(self) -> &'static str {
        match self {
            Self::Authentication => "Kafka refuses the relay's credentials: check sasl.username and sasl.password (or the token settings) in [kafka.properties] or their FP_RELAY_KAFKA_PROPERTY_* variables and files",
            Self::Mechanism => "Kafka does not offer the SASL mechanism the relay uses: check sasl.mechanism in [kafka.properties] against what the cluster enables",
            Self::Tls => "the TLS handshake with Kafka failed: check ssl.ca.location (the broker's certificate must be trusted), the client certificate and key for mutual TLS, and that security.protocol matches the port",
            Self::SaslRequired => "a Kafka broker answers and then closes the connection at the first request: its listener probably requires SASL. Set security.protocol (SASL_SSL or SASL_PLAINTEXT), sasl.mechanism and the credentials in [kafka.properties] or their FP_RELAY_KAFKA_PROPERTY_* variables",
            Self::Unreachable => "no Kafka broker answers: check kafka.brokers and the network",
        }
    }
}

/// How long the connection had been in which state when it went down, from librdkafka's
/// "(after 12ms in state UP" suffix.
fn hung_up_in(message: &str) -> Option<(u32, &str)> {
    let (_, tail) = message.rsplit_once("(after ")?;
    let (ms, tail) = tail.split_once("ms in state ")?;
    let state = tail.split([',', ')']).next()?;
    Some((ms.parse().ok()?, state))
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

    #[test]
    fn hang_ups_are_told_apart_by_protocol_and_timing() {
        for (message, expected) in [
            (
                "127.0.0.1:9092/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 0ms in state UP)",
                Some(Failure::SaslRequired),
            ),
            (
                "127.0.0.1:9092/bootstrap: Disconnected: connection reset by peer (after 2ms in state UP, 3 identical error(s) suppressed)",
                Some(Failure::SaslRequired),
            ),
            (
                "127.0.0.1:9092/1: Disconnected: connection reset by peer (after 1999ms in state UP)",
                Some(Failure::SaslRequired),
            ),
            // A broker restarting after hours up is not a SASL listener.
            (
                "127.0.0.1:9092/1: Disconnected: connection closed by peer: receive 0 after POLLIN (after 3600000ms in state UP)",
                None,
            ),
            // With SASL configured, a hang-up is something else.
            (
                "sasl_ssl://127.0.0.1:9092/bootstrap: Disconnected: connection closed by peer (after 0ms in state UP)",
                None,
            ),
            (
                "127.0.0.1:9093/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 0ms in state APIVERSION_QUERY)",
                Some(Failure::Tls),
            ),
            (
                "[thrd:ssl://127.0.0.1:9093/bootstrap]: ssl://127.0.0.1:9093/bootstrap: Disconnected: SSL connection closed by peer (after 0ms in state APIVERSION_QUERY)",
                Some(Failure::Tls),
            ),
            (
                "[thrd:sasl_ssl://127.0.0.1:9093/1]: sasl_ssl://127.0.0.1:9093/1: Disconnected: connection closed by peer (after 3ms in state UP)",
                None,
            ),
            (
                "[thrd:127.0.0.1:9092/1]: 127.0.0.1:9092/1: Disconnected: connection closed by peer (after 3ms in state UP)",
                Some(Failure::SaslRequired),
            ),
            (
                "127.0.0.1:9093/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 (see api.version.request) (after 1ms in state APIVERSION_QUERY)",
                Some(Failure::Tls),
            ),
        ] {
            assert_eq!(Failure::from_log("FAIL", message), expected, "{message}");
        }
        assert_eq!(
            Failure::from_log(
                "OIDC",
                "Failed to retrieve OIDC token from \"https://idp.example/oauth2/token\": HTTP 401 (401)"
            ),
            Some(Failure::Authentication)
        );
        assert_eq!(
            Failure::from_log(
                "CONNECT",
                "127.0.0.1:9092/bootstrap: Disconnected: connection closed by peer (after 0ms in state UP)"
            ),
            None
        );
    }
}
