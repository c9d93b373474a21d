//! Duplicate suppression by event id, per relay instance.
//!
//! An id is recorded only once its event is in Kafka (or the spool), so a failed attempt never
//! blocks FirstPromoter's retry. A second request for an id whose first attempt is still in
//! progress waits for it: if the first succeeds the second is a duplicate, otherwise it becomes
//! the attempt. Memory is bounded by `max_entries` (oldest forgotten first) and `window`, and
//! in bytes: an id is kept as the first 128 bits of its SHA-256 (ids have no length limit, and
//! `X-Event-Id` alone may be 16 KiB), so an entry costs the same whatever the id: 49 bytes in the
//! hash table and the expiry queue, about 77 MB per million entries once the tables' growth
//! (powers of two) is counted ([`tests::an_entry_costs_a_fixed_size_whatever_the_id`]). Two different ids sharing 128 bits is a chance of about 1 in 10^26
//! at a million entries.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// An event id, hashed to a fixed size.
type Key = [u8; 16];

fn key(id: &str) -> Key {
    let digest = Sha256::digest(id.as_bytes());
    digest[..16]
        .try_into()
        .expect("a SHA-256 digest has 32 bytes")
}

/// The answer to "may I publish this id?".
pub enum Claim {
    /// Yes; commit the guard once the event is safe.
    Owner(DedupGuard),
    /// No: an event with this id was already published within the window.
    Duplicate,
}

struct Inner {
    /// Ids published, with when (milliseconds since `base`).
    seen: HashMap<Key, u64>,
    /// The same ids in the order they were recorded, for expiry and the size cap.
    order: VecDeque<(u64, Key)>,
    /// Ids whose first attempt is in progress, and who waits for it.
    in_flight: HashMap<Key, Arc<Notify>>,
    /// What recorded times count from.
    base: Instant,
}

impl Inner {
    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }
}

/// The table of recently published event ids.
pub struct Dedup {
    inner: Mutex<Inner>,
    window: Duration,
    max_entries: usize,
}

impl Dedup {
    /// A table remembering ids for `window`, at most `max_entries` of them.
    pub fn new(window: Duration, max_entries: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                order: VecDeque::new(),
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
                if inner.seen.contains_key(&id) {
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

    fn expire(&self, inner: &mut Inner, now: Instant) {
        let now = inner.millis(now);
        let window = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        while let Some((at, _)) = inner.order.front() {
            if now.saturating_sub(*at) < window && inner.order.len() <= self.max_entries {
                break;
            }
            let (at, id) = inner.order.pop_front().expect("front exists");
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
            inner.order.push_back((at, id));
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
        inner.seen.capacity() * (std::mem::size_of::<(Key, u64)>() + 1)
            + inner.order.capacity() * std::mem::size_of::<(u64, Key)>()
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
            std::mem::size_of::<(Key, u64)>() + 1 + std::mem::size_of::<(u64, Key)>(),
            49
        );
    }
}
