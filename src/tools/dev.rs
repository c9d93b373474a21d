//! `serve --dev`: an embedded Kafka-protocol broker (librdkafka's mock cluster) so the relay
//! can be tried with nothing else installed. Data lives in memory and ends with the process.

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::config::Config;
use crate::webhook::routing::Router;

/// Partitions of the topics the development broker creates up front.
const DEV_PARTITIONS: i32 = 4;

/// The embedded broker; it stops when this is dropped.
pub struct DevBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl DevBroker {
    /// Starts a one-broker cluster with the fulfilment request and reply topics already created
    /// (the mock cluster does not support CreateTopics, and a responder started before the first
    /// request needs its topic to exist).
    pub fn start(config: &Config) -> Result<Self, KafkaError> {
        let cluster = MockCluster::new(1)?;
        let requests = Router::new(
            &config.kafka.topic_template,
            &config.kafka.topics,
            &config.kafka.keys,
        )
        .topic(&config.fulfilment.event_type);
        for topic in [requests.as_str(), config.fulfilment.reply_topic.as_str()] {
            cluster.create_topic(topic, DEV_PARTITIONS, 1)?;
        }
        Ok(Self { cluster })
    }

    /// The bootstrap address any Kafka client can use.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}
