//! Duplicate suppression by event id, per relay instance.
//!
//! An id is recorded only once its event is in Kafka (or the spool), so a failed attempt never
//! blocks FirstPromoter's retry. A second request for an id whose first attempt is still in
//! progress waits for it: if the first succeeds the second is a duplicate, otherwise it becomes
//! the attempt. Memory is bounded by `max_entries` (oldest forgotten first) and `window`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The answer to "may I publish this id?".
pub enum Claim {
    /// Yes; commit the guard once the event is safe.
    Owner(DedupGuard),
    /// No: an event with this id was already published within the window.
    Duplicate,
}

#[derive(Default)]
struct Inner {
    /// Ids published, with when.
    seen: HashMap<String, Instant>,
    /// The same ids in the order they were recorded, for expiry and the size cap.
    order: VecDeque<(Instant, String)>,
    /// Ids whose first attempt is in progress, and who waits for it.
    in_flight: HashMap<String, Arc<Notify>>,
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
            inner: Mutex::new(Inner::default()),
            window,
            max_entries,
        })
    }

    /// Claims `id`, waiting while another request holds it.
    pub async fn claim(self: &Arc<Self>, id: &str) -> Claim {
        loop {
            let notify = {
                let mut inner = self.inner.lock().expect("lock not poisoned");
                self.expire(&mut inner, Instant::now());
                if inner.seen.contains_key(id) {
                    return Claim::Duplicate;
                }
                match inner.in_flight.get(id) {
                    Some(notify) => notify.clone(),
                    None => {
                        inner
                            .in_flight
                            .insert(id.to_owned(), Arc::new(Notify::new()));
                        return Claim::Owner(DedupGuard {
                            dedup: self.clone(),
                            id: id.to_owned(),
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
                .contains_key(id)
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
        while let Some((at, _)) = inner.order.front() {
            if now.duration_since(*at) < self.window && inner.order.len() <= self.max_entries {
                break;
            }
            let (at, id) = inner.order.pop_front().expect("front exists");
            // Only forget the id if this entry is its latest record.
            if inner.seen.get(&id) == Some(&at) {
                inner.seen.remove(&id);
            }
        }
    }

    fn release(&self, id: &str, committed: bool) {
        let mut inner = self.inner.lock().expect("lock not poisoned");
        if committed {
            let now = Instant::now();
            inner.seen.insert(id.to_owned(), now);
            inner.order.push_back((now, id.to_owned()));
            self.expire(&mut inner, now);
        }
        if let Some(notify) = inner.in_flight.remove(id) {
            notify.notify_waiters();
        }
    }
}

/// Held by the request publishing an id; dropping it without [`DedupGuard::commit`] lets the
/// next request with that id try.
pub struct DedupGuard {
    dedup: Arc<Dedup>,
    id: String,
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
        self.dedup.release(&self.id, self.committed);
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
            dedup.release(id, true);
        }
        assert_eq!(dedup.len(), 3);
        let inner = dedup.inner.lock().unwrap();
        assert!(!inner.seen.contains_key("a") && inner.seen.contains_key("e"));
    }

    #[test]
    fn ids_are_forgotten_after_the_window() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        dedup.release("a", true);
        let later = Instant::now() + Duration::from_secs(61);
        let mut inner = dedup.inner.lock().unwrap();
        dedup.expire(&mut inner, later);
        assert!(inner.seen.is_empty());
    }
}
