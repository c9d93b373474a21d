//! Duplicate suppression by event id: per relay instance, and with `dedup.topic` shared by every
//! replica through Kafka ([`shared`]).
//!
//! An id is recorded only once its event is in Kafka (or the spool), so a failed attempt never
//! blocks FirstPromoter's retry. A second request for an id whose first attempt is still in
//! progress waits for it: if the first succeeds the second is a duplicate, otherwise it becomes
//! the attempt. Memory is bounded by `max_entries` (oldest forgotten first) and `window`, and
//! in bytes: an id is kept as the first 128 bits of its SHA-256 (ids have no length limit, and
//! `X-Event-Id` alone may be 16 KiB), so an entry costs the same whatever the id: 65 bytes in the
//! hash table and the expiry queue, about 98 MB per million entries once the tables' growth
//! (powers of two) is counted ([`tests::an_entry_costs_a_fixed_size_whatever_the_id`]). Two different ids sharing 128 bits is a chance of about 1 in 10^26
//! at a million entries.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

pub mod shared;

/// An event id, hashed to a fixed size: the first 128 bits of SHA-256 of `v1:<id>` / `v2:<id>`.
pub type IdKey = [u8; 16];

/// What a duplicate must match: the same id ([`IdKey`]) and the same event, a 64-bit digest of
/// its type and its JSON with insignificant whitespace left out ([`content_digest`]).
///
/// Why the content: v1 ids are sequential integers, so with the id alone anyone holding a
/// path token could post a `ping` with a future id and have FirstPromoter's genuine event
/// answered `duplicate` and never published (v1 never retries: a loss). A retry carries the
/// same JSON (FirstPromoter's delivery `payload` is "the exact JSON that was or will be sent"),
/// so real retries still match; the same id with other content is a conflict: published, and
/// counted in `fp_relay_dedup_conflicts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// The event id's key.
    pub id: IdKey,
    /// The digest of the event's type and content.
    pub content: u64,
}

impl Key {
    /// Bytes a mark record carries per key.
    pub const BYTES: usize = 24;

    /// The key as a mark record carries it: the id's 16 bytes, then the digest (big-endian).
    pub fn to_bytes(self) -> [u8; Self::BYTES] {
        let mut bytes = [0u8; Self::BYTES];
        bytes[..16].copy_from_slice(&self.id);
        bytes[16..].copy_from_slice(&self.content.to_be_bytes());
        bytes
    }

    /// The key from [`Key::to_bytes`]'s form.
    pub fn from_bytes(bytes: &[u8; Self::BYTES]) -> Self {
        let (id, content) = bytes.split_at(16);
        Self {
            id: id.try_into().expect("16 bytes"),
            content: u64::from_be_bytes(content.try_into().expect("8 bytes")),
        }
    }
}

/// The key of the dedup id `id` (`v1:<event id>` or `v2:<event id>`, see [`id_of`]).
pub fn id_key(id: &str) -> IdKey {
    let digest = Sha256::digest(id.as_bytes());
    digest[..16]
        .try_into()
        .expect("a SHA-256 digest has 32 bytes")
}

/// The dedup id of an event of webhook `version` with event id `event_id`: what the table
/// remembers, the same for the relay, the spool and every command.
pub fn id_of(version: &str, event_id: &str) -> String {
    format!("{version}:{event_id}")
}

/// The dedup key of an event: webhook `version`, `event_id`, `event_type` and the record's
/// `payload` (the bytes the relay writes, after redaction), the same for the relay, the spool
/// and every command.
pub fn key_of_event(version: &str, event_id: &str, event_type: &str, payload: &[u8]) -> Key {
    Key {
        id: id_key(&id_of(version, event_id)),
        content: content_digest(event_type, payload),
    }
}

/// 64 bits of SHA-256 over `event_type`, a NUL and `json` without the whitespace between its
/// tokens: the same event pretty-printed or compact has one digest; any other change to a
/// name or a value gives another.
pub fn content_digest(event_type: &str, json: &[u8]) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(event_type.as_bytes());
    hasher.update([0]);
    feed_without_whitespace(&mut hasher, json);
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Feeds `json` to `hasher` leaving out spaces, tabs and line breaks outside strings. Strings
/// are skipped to their closing quote with `memchr` (escapes honoured); bytes that are not
/// JSON are fed as they are (a body that is not JSON never gets here).
fn feed_without_whitespace(hasher: &mut Sha256, json: &[u8]) {
    let mut start = 0;
    let mut at = 0;
    while at < json.len() {
        match json[at] {
            b'"' => {
                at += 1;
                // To the closing quote: the next quote not escaped by a backslash.
                loop {
                    match memchr::memchr2(b'"', b'\\', &json[at.min(json.len())..]) {
                        Some(found) if json[at + found] == b'\\' => at += found + 2,
                        Some(found) => {
                            at += found + 1;
                            break;
                        }
                        None => {
                            at = json.len();
                            break;
                        }
                    }
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {
                if start < at {
                    hasher.update(&json[start..at]);
                }
                at += 1;
                start = at;
            }
            _ => at += 1,
        }
    }
    if start < json.len() {
        hasher.update(&json[start..]);
    }
}

/// The dedup key of a record the relay wrote for an event (its `fp-webhook-version`,
/// `fp-event-id` and `fp-event-type` headers and its value); `None` for anything else: records
/// without an event id, fulfilment requests and replies (they carry their event's id beside a
/// correlation id), dead letters.
pub fn key_of_record(record: &crate::kafka::record::OutboundRecord) -> Option<Key> {
    use crate::kafka::record::headers;
    let other = [
        headers::CORRELATION_ID,
        headers::REPLY_TOPIC,
        headers::ORIGINAL_TOPIC,
        headers::DEAD_LETTER_REASON,
    ];
    if other.iter().any(|name| record.header(name).is_some()) {
        return None;
    }
    key_of_headers(
        record.header(headers::WEBHOOK_VERSION)?,
        record.header(headers::EVENT_ID)?,
        record.header(headers::EVENT_TYPE)?,
        &record.payload,
    )
}

/// The dedup key from a record's `fp-webhook-version`, `fp-event-id` and `fp-event-type`
/// header values and its value.
pub fn key_of_headers(
    version: &str,
    event_id: &str,
    event_type: &str,
    payload: &[u8],
) -> Option<Key> {
    (!event_id.is_empty()).then(|| key_of_event(version, event_id, event_type, payload))
}

/// The answer to "may I publish this event?".
pub enum Claim {
    /// Yes; commit the guard once the event is safe.
    Owner(DedupGuard),
    /// No: this event (same id, same content) was already published within the window.
    Duplicate,
}

struct Inner {
    /// Ids published, with when (milliseconds since `base`; before it for marks older than
    /// the process) and the digest of the content last published under the id.
    seen: HashMap<IdKey, (i64, u64)>,
    /// The same ids, oldest first, for expiry and the size cap (a heap: marks read from Kafka
    /// come in time order per partition, not across partitions).
    /// Equal times keep their order of arrival by `next`.
    order: BinaryHeap<Reverse<(i64, u64, IdKey)>>,
    /// Arrival number of the next entry.
    next: u64,
    /// Ids whose first attempt is in progress, and who waits for it.
    in_flight: HashMap<IdKey, Arc<Notify>>,
    /// What recorded times count from.
    base: Instant,
}

impl Inner {
    fn push(&mut self, at: i64, id: IdKey) {
        self.order.push(Reverse((at, self.next, id)));
        self.next += 1;
    }

    fn millis(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(i64::MAX)
    }
}

/// The table of recently published events.
pub struct Dedup {
    inner: Mutex<Inner>,
    window: Duration,
    max_entries: usize,
    /// What every replica published (read from `dedup.topic`), consulted by [`Dedup::claim`]
    /// beside this process's own claims. Kept apart: this table also holds events that are
    /// only in the spool, which the shared one must never call published.
    shared: Option<Arc<Dedup>>,
}

impl Dedup {
    /// A table remembering ids for `window`, at most `max_entries` of them.
    pub fn new(window: Duration, max_entries: usize) -> Arc<Self> {
        Self::with_shared(window, max_entries, None)
    }

    /// A table that also answers "duplicate" for every event `shared` knows.
    pub fn with_shared(
        window: Duration,
        max_entries: usize,
        shared: Option<Arc<Dedup>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared,
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                order: BinaryHeap::new(),
                next: 0,
                in_flight: HashMap::new(),
                base: Instant::now(),
            }),
            window,
            max_entries,
        })
    }

    /// Claims the event `key`, waiting while another request holds its id. The guard says
    /// whether the id was known with other content ([`DedupGuard::conflict`]).
    pub async fn claim(self: &Arc<Self>, key: Key) -> Claim {
        loop {
            let notify = {
                let mut inner = self.inner.lock().expect("lock not poisoned");
                self.expire(&mut inner, Instant::now());
                // Lock order: this table, then the shared one (which never takes this one's).
                let local = inner.seen.get(&key.id).map(|(_, content)| *content);
                let shared = self.shared.as_ref().and_then(|s| s.content_of(&key.id));
                if local == Some(key.content) || shared == Some(key.content) {
                    return Claim::Duplicate;
                }
                match inner.in_flight.get(&key.id) {
                    Some(notify) => notify.clone(),
                    None => {
                        inner.in_flight.insert(key.id, Arc::new(Notify::new()));
                        return Claim::Owner(DedupGuard {
                            dedup: self.clone(),
                            key,
                            conflict: local.is_some() || shared.is_some(),
                            committed: false,
                        });
                    }
                }
            };
            // Register before re-checking, so a release between the lock and here is not missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self
                .inner
                .lock()
                .expect("lock not poisoned")
                .in_flight
                .contains_key(&key.id)
            {
                continue;
            }
            notified.await;
        }
    }

    /// Ids remembered right now.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("lock not poisoned").seen.len()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the event `key` (its id with this content) was published within the window.
    pub fn knows(&self, key: &Key) -> bool {
        self.content_of(&key.id) == Some(key.content)
    }

    /// The digest of what was last published under `id` within the window.
    pub fn content_of(&self, id: &IdKey) -> Option<u64> {
        let mut inner = self.inner.lock().expect("lock not poisoned");
        self.expire(&mut inner, Instant::now());
        inner.seen.get(id).map(|(_, content)| *content)
    }

    /// Remembers `key` as published at `at` (another replica's mark, read from Kafka); a time
    /// older than the window is ignored, one in the future counts as now. Of two contents
    /// under one id the later is kept.
    pub fn remember(&self, key: Key, at: SystemTime) {
        let now = Instant::now();
        let age = SystemTime::now()
            .duration_since(at)
            .unwrap_or(Duration::ZERO);
        if age >= self.window {
            return;
        }
        let mut inner = self.inner.lock().expect("lock not poisoned");
        let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let at = inner.millis(now).saturating_sub(age);
        if inner
            .seen
            .get(&key.id)
            .is_some_and(|(known, _)| *known >= at)
        {
            return;
        }
        inner.seen.insert(key.id, (at, key.content));
        inner.push(at, key.id);
        self.expire(&mut inner, now);
    }

    /// Forgets ids older than the window, and the oldest beyond `max_entries` ids. The cap
    /// counts ids, not queue entries: an id remembered again later (a replica re-reading its
    /// own mark) leaves a stale entry behind, which is dropped when it comes up, or all at
    /// once when stale entries outnumber live ones.
    fn expire(&self, inner: &mut Inner, now: Instant) {
        let now = inner.millis(now);
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        while let Some(Reverse((at, _, id))) = inner.order.peek() {
            let latest = inner.seen.get(id).map(|(known, _)| *known) == Some(*at);
            if latest && now.saturating_sub(*at) < window && inner.seen.len() <= self.max_entries {
                break;
            }
            let Reverse((at, _, id)) = inner.order.pop().expect("oldest exists");
            // Only forget the id if this entry is its latest record.
            if inner.seen.get(&id).map(|(known, _)| *known) == Some(at) {
                inner.seen.remove(&id);
            }
        }
        if inner.order.len() > 2 * inner.seen.len() + 1024 {
            let seen = &inner.seen;
            let live: Vec<_> = inner
                .order
                .drain()
                .filter(|Reverse((at, _, id))| seen.get(id).map(|(known, _)| *known) == Some(*at))
                .collect();
            inner.order = live.into();
        }
    }

    fn release(&self, key: Key, committed: bool) {
        let mut inner = self.inner.lock().expect("lock not poisoned");
        if committed {
            let now = Instant::now();
            let at = inner.millis(now);
            inner.seen.insert(key.id, (at, key.content));
            inner.push(at, key.id);
            self.expire(&mut inner, now);
        }
        if let Some(notify) = inner.in_flight.remove(&key.id) {
            notify.notify_waiters();
        }
    }
}

/// Held by the request publishing an event; dropping it without [`DedupGuard::commit`] lets
/// the next request with that id try.
pub struct DedupGuard {
    dedup: Arc<Dedup>,
    key: Key,
    /// The id was known with other content: this event is published all the same.
    conflict: bool,
    committed: bool,
}

impl DedupGuard {
    /// The key claimed.
    pub fn key(&self) -> Key {
        self.key
    }

    /// True when the id was already published with other content (a conflict, not a
    /// duplicate: FirstPromoter's event and someone else's under one id).
    pub fn conflict(&self) -> bool {
        self.conflict
    }

    /// The event is safe in Kafka or the spool: remember it.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for DedupGuard {
    fn drop(&mut self) {
        self.dedup.release(self.key, self.committed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key for the id `id` with content digest 0.
    fn key(id: &str) -> Key {
        Key {
            id: id_key(id),
            content: 0,
        }
    }

    #[tokio::test]
    async fn a_committed_id_is_a_duplicate_and_an_uncommitted_one_is_not() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let Claim::Owner(guard) = dedup.claim(key("a")).await else {
            panic!("first claim owns")
        };
        drop(guard);
        let Claim::Owner(guard) = dedup.claim(key("a")).await else {
            panic!("a failed attempt blocks nothing")
        };
        guard.commit();
        assert!(matches!(dedup.claim(key("a")).await, Claim::Duplicate));
    }

    #[tokio::test]
    async fn a_concurrent_claim_waits_for_the_first_and_follows_its_outcome() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let Claim::Owner(first) = dedup.claim(key("x")).await else {
            panic!()
        };
        let waiter = tokio::spawn({
            let dedup = dedup.clone();
            async move { matches!(dedup.claim(key("x")).await, Claim::Duplicate) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "waits while the first is in flight");
        first.commit();
        assert!(waiter.await.unwrap(), "duplicate once the first succeeded");
    }

    #[test]
    fn the_cap_counts_ids_not_the_times_an_id_was_seen() {
        // Under load a replica reads its own marks back with a later timestamp: every id is
        // remembered twice. All max_entries ids must still be kept for the whole window.
        let max = 1000;
        let dedup = Dedup::new(Duration::from_secs(3600), max);
        let now = SystemTime::now();
        for round in 0..2u64 {
            for n in 0..max {
                let at = now - Duration::from_secs(60) + Duration::from_millis(round * 5000);
                dedup.remember(key(&format!("id-{n}")), at);
            }
        }
        assert_eq!(dedup.len(), max);
        for n in 0..max {
            assert!(
                dedup.knows(&key(&format!("id-{n}"))),
                "id-{n} forgotten early"
            );
        }
        // One more id pushes out exactly the oldest one.
        dedup.remember(key("one-more"), now);
        assert_eq!(dedup.len(), max);
        assert!(dedup.knows(&key("one-more")));
        let inner = dedup.inner.lock().unwrap();
        assert!(
            inner.order.len() <= 2 * inner.seen.len() + 1024,
            "stale queue entries are bounded: {}",
            inner.order.len()
        );
    }

    #[test]
    fn marks_from_kafka_count_from_their_own_time_in_any_order() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let now = SystemTime::now();
        dedup.remember(key("early"), now - Duration::from_secs(10));
        dedup.remember(key("old"), now - Duration::from_secs(120));
        dedup.remember(key("late"), now - Duration::from_secs(50));
        dedup.remember(key("future"), now + Duration::from_secs(30));
        assert!(!dedup.knows(&key("old")), "older than the window");
        for id in ["early", "late", "future"] {
            assert!(dedup.knows(&key(id)), "{id}");
        }
        let mut inner = dedup.inner.lock().unwrap();
        dedup.expire(&mut inner, Instant::now() + Duration::from_secs(11));
        assert!(
            !inner.seen.contains_key(&id_key("late")),
            "50 s old plus 11 s"
        );
        assert!(
            inner.seen.contains_key(&id_key("early")) && inner.seen.contains_key(&id_key("future"))
        );
    }

    #[tokio::test]
    async fn a_shared_id_is_a_duplicate_and_a_local_claim_never_becomes_shared() {
        let shared = Dedup::new(Duration::from_secs(60), 10);
        let local = Dedup::with_shared(Duration::from_secs(60), 10, Some(shared.clone()));
        shared.remember(key("v2:a"), SystemTime::now());
        assert!(matches!(local.claim(key("v2:a")).await, Claim::Duplicate));
        let Claim::Owner(guard) = local.claim(key("v2:b")).await else {
            panic!("unknown to both")
        };
        guard.commit();
        assert!(matches!(local.claim(key("v2:b")).await, Claim::Duplicate));
        assert!(
            !shared.knows(&key("v2:b")),
            "a spooled event is not published: only a mark says so"
        );
    }

    /// The same id with other content is not a duplicate: published (a conflict the guard
    /// reports), and from then on the later content is the one a retry must match.
    #[tokio::test]
    async fn the_same_id_with_other_content_is_a_conflict_not_a_duplicate() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let ping = key_of_event(
            "v1",
            "22736305",
            "ping",
            br#"{"event":{"id":22736305,"type":"ping"}}"#,
        );
        let signup = key_of_event(
            "v1",
            "22736305",
            "lead_signup",
            br#"{"event":{"id":22736305,"type":"lead_signup"},"data":{"id":1}}"#,
        );
        let Claim::Owner(guard) = dedup.claim(ping).await else {
            panic!("first")
        };
        assert!(!guard.conflict());
        guard.commit();
        let Claim::Owner(guard) = dedup.claim(signup).await else {
            panic!("the genuine event is not a duplicate of the ping")
        };
        assert!(guard.conflict(), "same id, other content");
        guard.commit();
        assert!(matches!(dedup.claim(signup).await, Claim::Duplicate));
        // The shared table's content counts the same way.
        let shared = Dedup::new(Duration::from_secs(60), 10);
        let local = Dedup::with_shared(Duration::from_secs(60), 10, Some(shared.clone()));
        shared.remember(ping, SystemTime::now());
        let Claim::Owner(guard) = local.claim(signup).await else {
            panic!("a replica's ping does not suppress the genuine event")
        };
        assert!(guard.conflict());
        drop(guard);
        assert!(matches!(local.claim(ping).await, Claim::Duplicate));
    }

    #[test]
    fn the_content_digest_ignores_whitespace_between_tokens_only() {
        let compact = br#"{"event":{"id":1,"type":"lead_signup"},"data":{"name":"a b","x":[1,2]}}"#;
        let pretty = b"{\n  \"event\" : {\"id\": 1, \"type\":\"lead_signup\"},\r\n\t\"data\": {\"name\": \"a b\", \"x\": [1, 2]}\n}\n";
        let digest = |json: &[u8]| content_digest("lead_signup", json);
        assert_eq!(digest(compact), digest(pretty));
        for other in [
            &br#"{"event":{"id":1,"type":"lead_signup"},"data":{"name":"ab","x":[1,2]}}"#[..],
            br#"{"event":{"id":1,"type":"lead_signup"},"data":{"name":"a  b","x":[1,2]}}"#,
            br#"{"event":{"id":1,"type":"lead_signup"},"data":{"name":"a b","x":[1,3]}}"#,
            br#"{"event":{"id":1,"type":"lead_signup"},"data":{"name":"a b\" ","x":[1,2]}}"#,
        ] {
            assert_ne!(
                digest(compact),
                digest(other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        assert_ne!(
            digest(compact),
            content_digest("ping", compact),
            "the type counts"
        );
        // Strings that end in an escaped backslash, and bodies cut short, are read to the end.
        assert_ne!(
            digest(br#"{"a":"\\"," b":1}"#),
            digest(br#"{"a":"\\","b":1}"#)
        );
        assert_ne!(
            digest(br#"{"a":"cut short  "#),
            digest(br#"{"a":"cut short"#)
        );
    }

    proptest::proptest! {
        /// Differential: the digest of any document as serde_json writes it compact equals the
        /// digest of the same document pretty-printed; and two different documents differ.
        #[test]
        fn compact_and_pretty_json_have_one_digest(value in json_value(), other in json_value()) {
            let compact = serde_json::to_vec(&value).unwrap();
            let pretty = serde_json::to_vec_pretty(&value).unwrap();
            proptest::prop_assert_eq!(content_digest("t", &compact), content_digest("t", &pretty));
            if value != other {
                let other = serde_json::to_vec(&other).unwrap();
                proptest::prop_assert_ne!(content_digest("t", &compact), content_digest("t", &other));
            }
        }
    }

    /// JSON documents with strings full of quotes, backslashes and whitespace.
    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            "[ a\\\\\"\\t\\n{}:,\\[\\]]{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z \\\"]{0,6}", inner, 0..6)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn memory_is_bounded_by_max_entries() {
        let dedup = Dedup::new(Duration::from_secs(60), 3);
        for id in ["a", "b", "c", "d", "e"] {
            dedup.release(key(id), true);
        }
        assert_eq!(dedup.len(), 3);
        let inner = dedup.inner.lock().unwrap();
        assert!(!inner.seen.contains_key(&id_key("a")) && inner.seen.contains_key(&id_key("e")));
    }

    #[test]
    fn ids_are_forgotten_after_the_window() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        dedup.release(key("a"), true);
        let later = Instant::now() + Duration::from_secs(61);
        let mut inner = dedup.inner.lock().unwrap();
        dedup.expire(&mut inner, later);
        assert!(inner.seen.is_empty());
    }

    /// What the table holds in memory: its allocations' sizes, entries included.
    fn table_bytes(dedup: &Dedup) -> usize {
        let inner = dedup.inner.lock().unwrap();
        // hashbrown: one control byte per bucket besides the entry.
        inner.seen.capacity() * (std::mem::size_of::<(IdKey, (i64, u64))>() + 1)
            + inner.order.capacity() * std::mem::size_of::<(i64, u64, IdKey)>()
    }

    /// Ids of any length cost the same: 3,000 ids of 16 KiB (the largest `X-Event-Id`) take
    /// no more than 3,000 ids of 8 bytes, at most 100 bytes an entry with the tables' growth.
    #[test]
    fn an_entry_costs_a_fixed_size_whatever_the_id() {
        let per_entry = |length: usize| {
            let dedup = Dedup::new(Duration::from_secs(3600), 1_000_000);
            for n in 0..3_000 {
                let id = format!("{n:0>length$}");
                dedup.release(key(&id), true);
            }
            assert_eq!(dedup.len(), 3_000);
            table_bytes(&dedup) / 3_000
        };
        let (short, long) = (per_entry(8), per_entry(16 * 1024));
        assert_eq!(short, long);
        assert!(long <= 100, "{long} bytes an entry");
        assert_eq!(
            std::mem::size_of::<(IdKey, (i64, u64))>()
                + 1
                + std::mem::size_of::<(i64, u64, IdKey)>(),
            65
        );
    }
}
