//! A cheap liveness probe of the cluster for `/readyz`.
//!
//! rust-rdkafka's `fetch_metadata(None, ..)` asks for every topic, which is heavy on a large
//! cluster every few seconds. librdkafka's own "no topic" request is no better: with
//! `all_topics = 0` and no topic handle it asks for every topic the client has written to, so
//! each event type stayed in every probe, and with auto-create on a deleted topic came back
//! within one probe interval. The probe names one topic the relay needs (see
//! `fp_relay::probe_topic`), so its request never grows.

use std::ffi::CString;
use std::ptr;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::client::{Client, ClientContext};

/// True when a metadata request for `topic` alone succeeds within `timeout` and names at
/// least one broker. Blocks the calling thread for up to `timeout`.
pub fn brokers_reachable<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> bool {
    let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let Ok(name) = CString::new(topic) else {
        return false;
    };
    let mut metadata: *const rdsys::rd_kafka_metadata = ptr::null();
    // SAFETY: the client pointer is valid for the borrow of `client`; the topic handle is
    // created here and destroyed exactly once below, after the call that uses it; on success
    // librdkafka hands us `metadata`, which we read once and release with
    // rd_kafka_metadata_destroy exactly once.
    unsafe {
        let handle = rdsys::rd_kafka_topic_new(client.native_ptr(), name.as_ptr(), ptr::null_mut());
        if handle.is_null() {
            return false;
        }
        let err =
            rdsys::rd_kafka_metadata(client.native_ptr(), 0, handle, &mut metadata, timeout_ms);
        rdsys::rd_kafka_topic_destroy(handle);
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || metadata.is_null() {
            return false;
        }
        let brokers = (*metadata).broker_cnt;
        rdsys::rd_kafka_metadata_destroy(metadata);
        brokers > 0
    }
}
