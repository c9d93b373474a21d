//! A cheap liveness probe of the cluster for `/readyz`.
//!
//! rust-rdkafka's `fetch_metadata(None, ..)` asks for every topic, which is heavy on a large
//! cluster every few seconds; librdkafka can ask for brokers only, so this calls it directly.

use std::ptr;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::client::{Client, ClientContext};

/// True when a metadata request listing only brokers succeeds within `timeout` and names at
/// least one broker. Blocks the calling thread for up to `timeout`.
pub fn brokers_reachable<C: ClientContext>(client: &Client<C>, timeout: Duration) -> bool {
    let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut metadata: *const rdsys::rd_kafka_metadata = ptr::null();
    // SAFETY: the client pointer is valid for the borrow of `client`; with all_topics = 0 and no
    // topic handle librdkafka requests brokers only; on success it hands us `metadata`, which we
    // read once and release with rd_kafka_metadata_destroy exactly once.
    unsafe {
        let err = rdsys::rd_kafka_metadata(
            client.native_ptr(),
            0,
            ptr::null_mut(),
            &mut metadata,
            timeout_ms,
        );
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || metadata.is_null() {
            return false;
        }
        let brokers = (*metadata).broker_cnt;
        rdsys::rd_kafka_metadata_destroy(metadata);
        brokers > 0
    }
}
