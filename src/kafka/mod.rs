//! Kafka: the publisher, the records it writes, client settings, and the readiness probe.

pub mod aws;
pub mod classify;
pub mod context;
pub mod failure;
pub mod follow;
pub mod outage;
pub mod probe;
pub mod publisher;
pub mod record;
pub mod topics;

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

/// The producers a [`publisher::Publisher`] writes with: [`producer_config`], and, unless
/// `kafka.batch_linger` is 0 or the user fixed `linger.ms`, the same settings lingering
/// `batch_linger` for writes made while `batch_above_in_flight` are unacknowledged.
///
/// Why two producers and not one fractional `linger.ms`: librdkafka's broker thread waits in
/// whole milliseconds, so a linger of 0.05 ms cost as much at one request at a time as 1 ms
/// (646 against 1,880 req/s with 0; benches/RESULTS.md). Ordering is promised only between
/// acknowledged writes, and requests in flight at once are unordered already, so which producer
/// carries a request's write changes no guarantee; spool replay, which does keep order, sends
/// through one producer ([`publisher::Publisher::send`]). Each producer is idempotent, `acks=all`.
pub fn producer_configs(
    kafka: &KafkaConfig,
    message_timeout: std::time::Duration,
) -> publisher::ProducerConfigs {
    let immediate = producer_config(kafka, message_timeout);
    let fixed = kafka.producer_properties.contains_key("linger.ms")
        || kafka.properties.contains_key("linger.ms");
    let batching = (!kafka.batch_linger.is_zero() && !fixed).then(|| {
        let mut batching = immediate.clone();
        let linger = kafka.batch_linger.as_secs_f64() * 1000.0;
        batching.set("linger.ms", linger.to_string());
        (batching, kafka.batch_above_in_flight)
    });
    publisher::ProducerConfigs {
        immediate,
        batching,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batching_of(kafka: &KafkaConfig) -> Option<(ClientConfig, usize)> {
        producer_configs(kafka, std::time::Duration::from_secs(10)).batching
    }

    #[test]
    fn the_batching_producer_differs_from_the_immediate_one_by_its_linger_alone() {
        let kafka = KafkaConfig {
            batch_linger: std::time::Duration::from_micros(1500),
            batch_above_in_flight: 6,
            ..KafkaConfig::default()
        };
        let configs = producer_configs(&kafka, std::time::Duration::from_secs(10));
        let (batching, above) = configs.batching.expect("on by default");
        assert_eq!(above, 6);
        assert_eq!(configs.immediate.get("linger.ms"), Some("0"));
        assert_eq!(batching.get("linger.ms"), Some("1.5"));
        let without_linger = |config: &ClientConfig| {
            let mut map: Vec<(String, String)> = config
                .config_map()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            map.retain(|(k, _)| k != "linger.ms");
            map
        };
        assert_eq!(
            without_linger(&batching),
            without_linger(&configs.immediate)
        );
        assert_eq!(batching.get("enable.idempotence"), Some("true"));
        assert_eq!(batching.get("acks"), Some("all"));
    }

    #[test]
    fn one_producer_when_batching_is_off_or_the_linger_is_fixed() {
        let off = KafkaConfig {
            batch_linger: std::time::Duration::ZERO,
            ..KafkaConfig::default()
        };
        assert!(batching_of(&off).is_none());
        for properties in ["producer_properties", "properties"] {
            let mut fixed = KafkaConfig::default();
            let map = if properties == "properties" {
                &mut fixed.properties
            } else {
                &mut fixed.producer_properties
            };
            map.insert("linger.ms".into(), "5".into());
            assert!(batching_of(&fixed).is_none(), "{properties}");
        }
        assert!(batching_of(&KafkaConfig::default()).is_some());
    }
}
