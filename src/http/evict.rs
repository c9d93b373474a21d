//! Room for the next connection on a listener that must always answer (the admin listener's
//! probes): when the listener is full, or the new connection's address holds its share, the
//! connection idle the longest is closed instead of the new one waiting in the kernel's
//! backlog.
//!
//! Why: 70 idle sockets, opened without any credential, held every admin slot until their
//! idle timeout, and 4 of 5 `/healthz` probes timed out (the kubelet then restarts a healthy
//! pod). A connection with a request in progress is never closed; one that has sent nothing
//! yet counts as idle since it was opened, so a probe (which sends its request at once) is
//! always younger than the sockets that crowd it.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::server::Activity;

/// How long the accept loop waits for a closed connection to give its slot back.
const ROOM_WAIT: Duration = Duration::from_millis(200);

/// The connections open on one listener, each closable.
#[derive(Default)]
pub(super) struct Registry {
    open: Mutex<Vec<Entry>>,
    next: std::sync::atomic::AtomicU64,
}

struct Entry {
    id: u64,
    ip: IpAddr,
    activity: Arc<Activity>,
    close: Arc<Notify>,
}

/// One connection's place in the registry, removed when it closes.
pub(super) struct Place {
    registry: Arc<Registry>,
    id: u64,
    /// Notified when the registry wants this connection closed.
    pub close: Arc<Notify>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|entry| entry.id != self.id);
    }
}

impl Registry {
    /// Registers a new connection from `ip` whose requests `activity` tracks.
    pub(super) fn enter(self: &Arc<Self>, ip: IpAddr, activity: Arc<Activity>) -> Place {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Entry {
                id,
                ip,
                activity,
                close: close.clone(),
            });
        Place {
            registry: self.clone(),
            id,
            close,
        }
    }

    fn from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.iter().filter(|entry| entry.ip == ip).count()
    }

    /// Asks the longest-idle connection (of `ip` only, when given) to close; false when every
    /// such connection is busy.
    fn close_longest_idle(&self, ip: Option<IpAddr>) -> bool {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let victim = open
            .iter()
            .filter(|entry| ip.is_none_or(|ip| entry.ip == ip))
            .filter_map(|entry| entry.activity.idle().map(|idle| (idle, entry)))
            .max_by_key(|(idle, _)| *idle)
            .map(|(_, entry)| entry);
        victim.inspect(|victim| victim.close.notify_one()).is_some()
    }

    /// Makes room for a connection from `ip`: while the listener is full (`slots` has no
    /// permit) or `ip` holds `per_source` connections, closes the longest-idle one (of `ip`
    /// in the second case) and waits for it to go. False when every candidate is busy: the
    /// new connection is then refused.
    pub(super) async fn make_room(&self, slots: &Semaphore, ip: IpAddr, per_source: usize) -> bool {
        // Two rounds at most: one for the address's share, one for the listener's.
        for _ in 0..2 {
            let over_source = self.from(ip) >= per_source;
            let full = slots.available_permits() == 0;
            if !over_source && !full {
                return true;
            }
            if !self.close_longest_idle(over_source.then_some(ip)) {
                return false;
            }
            // The closed connection leaves the registry and gives its slot back as its task
            // ends; refused if that takes longer than ROOM_WAIT.
            let still_short = || {
                if over_source {
                    self.from(ip) >= per_source
                } else {
                    slots.available_permits() == 0
                }
            };
            let waited = tokio::time::timeout(ROOM_WAIT, async {
                while still_short() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
            if waited.is_err() {
                return false;
            }
        }
        self.from(ip) < per_source && slots.available_permits() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_longest_idle_connection_makes_room_and_a_busy_one_never_does() {
        let registry = Arc::new(Registry::default());
        let slots = Arc::new(Semaphore::new(2));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let old = Arc::new(Activity::default());
        tokio::time::sleep(Duration::from_millis(5)).await;
        let young = Arc::new(Activity::default());
        let mut places = Vec::new();
        for activity in [&old, &young] {
            let place = registry.enter(ip, activity.clone());
            let permit = slots.clone().try_acquire_owned().unwrap();
            let close = place.close.clone();
            places.push(tokio::spawn(async move {
                close.notified().await;
                drop((place, permit));
            }));
        }
        assert!(registry.make_room(&slots, ip, 16).await, "full: room made");
        assert!(
            places[0].is_finished(),
            "the older idle connection was closed"
        );
        assert!(!places[1].is_finished());
        // Busy: never closed, the new connection is refused instead.
        let _busy = young.begin();
        let _permit = slots.clone().try_acquire_owned().unwrap();
        assert!(!registry.make_room(&slots, ip, 16).await);
        assert!(!places[1].is_finished());
    }
}
