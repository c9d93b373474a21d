//! Duplicate suppression by event id: per relay instance, and with `dedup.topic` shared by every
//! replica through Kafka ([`shared`]).
//!
//! An id is recorded only once its event is in Kafka (or the spool), so a failed attempt never
//! blocks FirstPromoter's retry. A second request for an id whose first attempt is still in
//! progress waits for it: if the first succeeds the second is a duplicate, otherwise it becomes
//! the attempt. Memory is bounded by `max_entries` (oldest forgotten first) and `window`, and
//! in bytes: an id is kept as the first 128 bits of its SHA-256 (ids have no length limit, and
//! `X-Event-Id` alone may be 16 KiB), so an entry costs the same whatever the id: 57 bytes in the
//! hash table and the expiry queue, about 86 MB per million entries once the tables' growth
//! (powers of two) is counted ([`tests::an_entry_costs_a_fixed_size_whatever_the_id`]). Two different ids sharing 128 bits is a chance of about 1 in 10^26
//! at a million entries.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

pub mod shared;

/// An event id, hashed to a fixed size.
pub type Key = [u8; 16];

/// The key of the dedup id `id` (`v1:<event id>` or `v2:<event id>`, see [`id_of`]).
pub fn key(id: &str) -> Key {
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

/// The dedup key of a record the relay wrote for an event (its `fp-webhook-version` and
/// `fp-event-id` headers); `None` for anything else: records without an event id, fulfilment
/// requests and replies (they carry their event's id beside a correlation id), dead letters.
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
    )
}

/// The dedup key from a record's `fp-webhook-version` and `fp-event-id` header values.
pub fn key_of_headers(version: &str, event_id: &str) -> Option<Key> {
    (!event_id.is_empty()).then(|| key(&id_of(version, event_id)))
}

/// The answer to "may I publish this id?".
pub enum Claim {
    /// Yes; commit the guard once the event is safe.
    Owner(DedupGuard),
    /// No: an event with this id was already published within the window.
    Duplicate,
}

struct Inner {
    /// Ids published, with when (milliseconds since `base`; before it for marks older than
    /// the process).
    seen: HashMap<Key, i64>,
    /// The same ids, oldest first, for expiry and the size cap (a heap: marks read from Kafka
    /// come in time order per partition, not across partitions).
    /// Equal times keep their order of arrival by `next`.
    order: BinaryHeap<Reverse<(i64, u64, Key)>>,
    /// Arrival number of the next entry.
    next: u64,
    /// Ids whose first attempt is in progress, and who waits for it.
    in_flight: HashMap<Key, Arc<Notify>>,
    /// What recorded times count from.
    base: Instant,
}

impl Inner {
    fn push(&mut self, at: i64, key: Key) {
        self.order.push(Reverse((at, self.next, key)));
        self.next += 1;
    }

    fn millis(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(i64::MAX)
    }
}

/// The table of recently published event ids.
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

    /// A table that also answers "duplicate" for every id `shared` knows.
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

    /// Claims `id`, waiting while another request holds it.
    pub async fn claim(self: &Arc<Self>, id: &str) -> Claim {
        let id = key(id);
        loop {
            let notify = {
                let mut inner = self.inner.lock().expect("lock not poisoned");
                self.expire(&mut inner, Instant::now());
                // Lock order: this table, then the shared one (which never takes this one's).
                if inner.seen.contains_key(&id)
                    || self.shared.as_ref().is_some_and(|shared| shared.knows(&id))
                {
                    return Claim::Duplicate;
                }
                match inner.in_flight.get(&id) {
                    Some(notify) => notify.clone(),
                    None => {
                        inner.in_flight.insert(id, Arc::new(Notify::new()));
                        return Claim::Owner(DedupGuard {
                            dedup: self.clone(),
                            id,
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
                .contains_key(&id)
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

    /// Whether `key` was published within the window.
    pub fn knows(&self, key: &Key) -> bool {
        let mut inner = self.inner.lock().expect("lock not poisoned");
        self.expire(&mut inner, Instant::now());
        inner.seen.contains_key(key)
    }

    /// Remembers `key` as published at `at` (another replica's mark, read from Kafka); a time
    /// older than the window is ignored, one in the future counts as now.
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
        if inner.seen.get(&key).is_some_and(|known| *known >= at) {
            return;
        }
        inner.seen.insert(key, at);
        inner.push(at, key);
        self.expire(&mut inner, now);
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        let now = inner.millis(now);
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        while let Some(Reverse((at, _, _))) = inner.order.peek() {
            if now.saturating_sub(*at) < window && inner.order.len() <= self.max_entries {
                break;
            }
            let Reverse((at, _, id)) = inner.order.pop().expect("oldest exists");
            // Only forget the id if this entry is its latest record.
            if inner.seen.get(&id) == Some(&at) {
                inner.seen.remove(&id);
            }
        }
    }

    fn release(&self, id: Key, committed: bool) {
        let mut inner = self.inner.lock().expect("lock not poisoned");
        if committed {
            let now = Instant::now();
            let at = inner.millis(now);
            inner.seen.insert(id, at);
            inner.push(at, id);
            self.expire(&mut inner, now);
        }
        if let Some(notify) = inner.in_flight.remove(&id) {
            notify.notify_waiters();
        }
    }
}

/// Held by the request publishing an id; dropping it without [`DedupGuard::commit`] lets the
/// next request with that id try.
pub struct DedupGuard {
    dedup: Arc<Dedup>,
    id: Key,
    committed: bool,
}

impl DedupGuard {
    /// The key claimed.
    pub fn key(&self) -> Key {
        self.id
    }

    /// The event is safe in Kafka or the spool: remember its id.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for DedupGuard {
    fn drop(&mut self) {
        self.dedup.release(self.id, self.committed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_committed_id_is_a_duplicate_and_an_uncommitted_one_is_not() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let Claim::Owner(guard) = dedup.claim("a").await else {
            panic!("first claim owns")
        };
        drop(guard);
        let Claim::Owner(guard) = dedup.claim("a").await else {
            panic!("a failed attempt blocks nothing")
        };
        guard.commit();
        assert!(matches!(dedup.claim("a").await, Claim::Duplicate));
    }

    #[tokio::test]
    async fn a_concurrent_claim_waits_for_the_first_and_follows_its_outcome() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let Claim::Owner(first) = dedup.claim("x").await else {
            panic!()
        };
        let waiter = tokio::spawn({
            let dedup = dedup.clone();
            async move { matches!(dedup.claim("x").await, Claim::Duplicate) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "waits while the first is in flight");
        first.commit();
        assert!(waiter.await.unwrap(), "duplicate once the first succeeded");
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
        assert!(!inner.seen.contains_key(&key("late")), "50 s old plus 11 s");
        assert!(inner.seen.contains_key(&key("early")) && inner.seen.contains_key(&key("future")));
    }

    #[tokio::test]
    async fn a_shared_id_is_a_duplicate_and_a_local_claim_never_becomes_shared() {
        let shared = Dedup::new(Duration::from_secs(60), 10);
        let local = Dedup::with_shared(Duration::from_secs(60), 10, Some(shared.clone()));
        shared.remember(key("v2:a"), SystemTime::now());
        assert!(matches!(local.claim("v2:a").await, Claim::Duplicate));
        let Claim::Owner(guard) = local.claim("v2:b").await else {
            panic!("unknown to both")
        };
        guard.commit();
        assert!(matches!(local.claim("v2:b").await, Claim::Duplicate));
        assert!(
            !shared.knows(&key("v2:b")),
            "a spooled event is not published: only a mark says so"
        );
    }

    #[test]
    fn memory_is_bounded_by_max_entries() {
        let dedup = Dedup::new(Duration::from_secs(60), 3);
        for id in ["a", "b", "c", "d", "e"] {
            dedup.release(key(id), true);
        }
        assert_eq!(dedup.len(), 3);
        let inner = dedup.inner.lock().unwrap();
        assert!(!inner.seen.contains_key(&key("a")) && inner.seen.contains_key(&key("e")));
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
        inner.seen.capacity() * (std::mem::size_of::<(Key, i64)>() + 1)
            + inner.order.capacity() * std::mem::size_of::<(i64, u64, Key)>()
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
            std::mem::size_of::<(Key, i64)>() + 1 + std::mem::size_of::<(i64, u64, Key)>(),
            57
        );
    }
}
