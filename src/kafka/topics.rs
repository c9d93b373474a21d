//! Creating the relay's own topics (the reply, verdict and dedup topics) when they are missing
//! and the operator allows it; an existing topic is left exactly as it is.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use super::context::RelayContext;
use super::outage::ClusterWatch;
use crate::metrics::Metrics;

/// Timeout of the create call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A topic the relay may create: its partitions and topic-level settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopicSpec {
    /// Partitions when created.
    pub partitions: i32,
    /// Topic settings (`retention.ms`, `cleanup.policy`), applied only when the relay creates it.
    pub settings: Vec<(&'static str, String)>,
}

impl NewTopicSpec {
    /// A topic whose records must stay readable for `retention` at least (a day more, so a
    /// record written at the end of a window is still there when a replica reads the window).
    pub fn retained_for(partitions: i32, retention: Duration) -> Self {
        let millis = retention
            .saturating_add(Duration::from_secs(24 * 3600))
            .as_millis();
        Self {
            partitions,
            settings: vec![("retention.ms", millis.to_string())],
        }
    }

    /// The same, compacted as well: the latest record of each key survives the window's end
    /// only until `retention` passes.
    pub fn compacted_for(partitions: i32, retention: Duration) -> Self {
        let mut spec = Self::retained_for(partitions, retention);
        spec.settings
            .push(("cleanup.policy", "compact,delete".to_owned()));
        spec
    }
}

/// Creates `topic` as `spec` says; true when this call created it, false when it existed.
pub async fn create(
    admin_config: &ClientConfig,
    topic: &str,
    spec: &NewTopicSpec,
    metrics: &Arc<Metrics>,
    watch: &Arc<ClusterWatch>,
) -> Result<bool, KafkaError> {
    let context = RelayContext::new(metrics.clone(), watch.clone(), "admin");
    let admin: AdminClient<RelayContext> = admin_config.create_with_context(context)?;
    super::aws::hand_first_token(admin_config, admin.inner());
    let mut new_topic = NewTopic::new(topic, spec.partitions, TopicReplication::Fixed(-1));
    for (name, value) in &spec.settings {
        new_topic = new_topic.set(name, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
    let results = admin.create_topics([&new_topic], &options).await;
    // Destroying a librdkafka client joins its threads; never on an async worker.
    std::thread::spawn(move || drop(admin));
    let mut created = false;
    for result in results? {
        match result {
            Ok(_) => {
                created = true;
                tracing::info!(
                    topic,
                    partitions = spec.partitions,
                    settings = ?spec.settings,
                    "created a topic of the relay's own (it was missing)"
                );
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_topic_keeps_its_records_a_day_past_the_window() {
        let spec = NewTopicSpec::retained_for(4, Duration::from_secs(3600));
        assert_eq!(
            spec.settings,
            vec![("retention.ms", (25 * 3600 * 1000).to_string())]
        );
        let compacted = NewTopicSpec::compacted_for(1, Duration::from_secs(3600));
        assert!(compacted
            .settings
            .contains(&("cleanup.policy", "compact,delete".to_owned())));
    }
}
