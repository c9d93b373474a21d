//! Kafka: the publisher, the records it writes, client settings, and the readiness probe.

pub mod aws;
pub mod classify;
pub mod context;
pub mod failure;
pub mod outage;
pub mod probe;
pub mod publisher;
pub mod record;

use rdkafka::config::ClientConfig;

use crate::config::KafkaConfig;

/// The `[kafka]` settings as they are now: replaced (and every client rebuilt with them) when
/// credentials change in their files; see `Server::run`'s credentials watch.
pub type Settings = tokio::sync::watch::Receiver<std::sync::Arc<KafkaConfig>>;

/// The producer's default `linger.ms` (see [`producer_config`]).
pub const DEFAULT_LINGER_MS: &str = "0";

/// Every Kafka client's settings start here: `defaults`, then the user's `properties` (which
/// may override them), then the bootstrap servers of `kafka`; `sasl.mechanism = "AWS_MSK_IAM"`
/// becomes OAUTHBEARER with the relay's MSK IAM tokens, the signer started ([`aws`]). The
/// producer, the consumers, the admin client and every command's clients build on it.
pub fn client_config<'a>(
    defaults: &[(&str, &str)],
    properties: impl IntoIterator<Item = (&'a String, &'a String)>,
    kafka: &KafkaConfig,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in properties {
        config.set(key, value);
    }
    config.set("bootstrap.servers", &kafka.brokers);
    // What librdkafka says at info level is what tells connection faults apart
    // ([`failure::Failure::from_log`]); rdkafka would pick the level from the `log` crate's
    // filter, which in tests is off and under RUST_LOG=warn hides them. The context filters.
    config.set_log_level(if config.get("debug").is_some() {
        rdkafka::config::RDKafkaLogLevel::Debug
    } else {
        rdkafka::config::RDKafkaLogLevel::Info
    });
    if aws::apply(&mut config) {
        aws::start(&kafka.aws_region);
    }
    config
}

/// Producer settings: the relay's defaults, then the passthrough maps, then the settings the
/// relay's guarantee rests on, which config validation already refuses to let the maps override.
pub fn producer_config(kafka: &KafkaConfig, message_timeout: std::time::Duration) -> ClientConfig {
    // No fixed linger (librdkafka's default is 5 ms): every request would wait it, capping
    // throughput at concurrency / 6 ms. With 0, a record goes out at once when the connection
    // is idle, and records queue into the next batch while requests are in flight, so high
    // concurrency still batches. Measured with benches/load.sh (best bare producer, msg/s):
    // c=1: 842 (0 ms) / 445 (1 ms) / 95 (5 ms); c=16: 3139 / 3123 / 1068; benches/RESULTS.md
    // has every level. Overridable in kafka.producer_properties.
    let defaults = [
        ("statistics.interval.ms", "5000"),
        ("linger.ms", DEFAULT_LINGER_MS),
    ];
    let properties = kafka.properties.iter().chain(&kafka.producer_properties);
    let mut config = client_config(&defaults, properties, kafka);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // librdkafka gives up on a record after this: kafka.ack_timeout, or with the spool on,
        // spool.delivery_timeout (the HTTP answer no longer waits for it).
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        );
    config
}

/// Settings for a consumer that reads by assignment and never commits.
pub fn consumer_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    // Replies are waited for by a held HTTP request: fetch eagerly. 5 ms (librdkafka's default
    // is 500) took the fulfilment round trip's p99 from 21.4 to 16.7 ms against tansu
    // (benches/load.sh); the cost is one fetch request per 5 ms per broker while idle.
    let defaults = [("fetch.wait.max.ms", "5"), ("fetch.min.bytes", "1")];
    let properties = kafka.properties.iter().chain(&kafka.consumer_properties);
    let mut config = client_config(&defaults, properties, kafka);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    config
}

/// Settings for an admin client (creating the reply topic).
pub fn admin_config(kafka: &KafkaConfig) -> ClientConfig {
    client_config(&[], &kafka.properties, kafka)
}

/// Settings for a consumer in a group that commits by hand once its work is done (the v2
/// fulfilment marker). It starts at the earliest offset a new group has: a reply written before
/// any relay ran must still be acted on.
pub fn group_consumer_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    // Joins and rebalances within seconds (librdkafka's defaults are 45 s and 3 s); nobody
    // waits on these replies, so fetching need not be eager.
    let defaults = [
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "1000"),
        ("fetch.wait.max.ms", "100"),
    ];
    let properties = kafka.properties.iter().chain(&kafka.consumer_properties);
    let mut config = client_config(&defaults, properties, kafka);
    config
        .set("group.id", group_id)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    config
}
