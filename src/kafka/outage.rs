//! What an operator reads while Kafka is away: one line when the cluster becomes unreachable, a
//! summary at most every [`SUMMARY_EVERY`] while it stays so (how long, how many requests were
//! refused), one line when it is back. librdkafka's own reconnect chatter is kept at debug level
//! (see [`super::context`]), and every Kafka client of a relay falls silent once it has stopped.
//!
//! Why: librdkafka reports a lost broker every few seconds per client and per broker thread,
//! once as a log line and once as an error callback. During a one-hour outage that was about
//! 13 MB of logs saying the same thing, and the one line that mattered (when it started) was
//! hard to find.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest silence while the cluster stays unreachable.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Shortest gap between two logged per-request Kafka refusals; the rest are counted and
/// reported in the summaries.
pub const REFUSAL_LOG_GAP: Duration = Duration::from_secs(10);

/// Kafka's reachability as the relay's log reports it; shared by the probe, the request
/// handler and every Kafka client context of one relay.
#[derive(Debug, Default)]
pub struct ClusterWatch {
    /// The outage in progress, if any, and the per-request log limiter.
    state: Mutex<State>,
    /// Set once the relay has stopped: its clients say nothing more.
    silenced: AtomicBool,
    /// What the operator probably got wrong, said with the first "unreachable" line (a broker
    /// name that does not resolve, the default address with no broker there).
    hint: Mutex<Option<String>>,
    /// The last fault a Kafka client reported since the cluster was last reachable, and
    /// librdkafka's words for it (shown on `/readyz`).
    failure: Mutex<Option<(super::failure::Failure, String)>>,
}

#[derive(Debug, Default)]
struct State {
    /// When the current outage began; `None` while the cluster is reachable.
    down_since: Option<Instant>,
    /// When the last outage line (start or summary) was written.
    last_line: Option<Instant>,
    /// Requests refused for Kafka since the current outage began (or since the last reachable
    /// probe, for refusals that come before the probe notices).
    refused: u64,
    /// When a per-request Kafka refusal was last logged.
    last_refusal_line: Option<Instant>,
}

impl ClusterWatch {
    /// Notes a fault a client reported; true when it is a different fault from the last one (it
    /// is then worth a log line; repeats are only counted).
    pub fn note_failure(&self, failure: super::failure::Failure, detail: &str) -> bool {
        let mut last = self.failure.lock().expect("lock not poisoned");
        let new = last.as_ref().is_none_or(|(kind, _)| *kind != failure);
        // An authentication, mechanism or TLS fault says more than the connection loss each
        // one also causes: it is not overwritten by that.
        let keep = matches!(last.as_ref(), Some((kind, _)) if *kind != super::failure::Failure::Unreachable)
            && failure == super::failure::Failure::Unreachable;
        if !keep {
            *last = Some((failure, detail.chars().take(300).collect()));
        }
        new && !keep
    }

    /// The last fault reported since the cluster was last reachable, for `/readyz`.
    pub fn failure(&self) -> Option<(super::failure::Failure, String)> {
        self.failure.lock().expect("lock not poisoned").clone()
    }

    /// Sets the hint said when the cluster is first found unreachable.
    pub fn set_hint(&self, hint: String) {
        *self.hint.lock().expect("lock not poisoned") = Some(hint);
    }

    /// Takes the latest probe result and logs a transition or a due summary. Call it after
    /// every probe.
    pub fn observe(&self, reachable: bool) {
        if reachable {
            *self.failure.lock().expect("lock not poisoned") = None;
        }
        self.observe_at(reachable, Instant::now());
    }

    fn observe_at(&self, reachable: bool, now: Instant) {
        if self.is_silenced() {
            return;
        }
        let mut state = self.state.lock().expect("lock not poisoned");
        match (state.down_since, reachable) {
            (None, false) => {
                state.down_since = Some(now);
                state.last_line = Some(now);
                match self.hint.lock().expect("lock not poisoned").as_deref() {
                    Some(hint) => tracing::warn!(
                        hint,
                        "Kafka cluster unreachable; /readyz answers 503 until it is back"
                    ),
                    None => tracing::warn!(
                        "Kafka cluster unreachable; /readyz answers 503 until it is back"
                    ),
                }
            }
            (Some(since), false) => {
                if state
                    .last_line
                    .is_none_or(|last| now.duration_since(last) >= SUMMARY_EVERY)
                {
                    state.last_line = Some(now);
                    tracing::warn!(
                        down_for = %humantime::format_duration(whole_seconds(now - since)),
                        refused = state.refused,
                        "Kafka cluster still unreachable"
                    );
                }
            }
            (Some(since), true) => {
                tracing::info!(
                    was_down_for = %humantime::format_duration(whole_seconds(now - since)),
                    refused = state.refused,
                    "Kafka cluster reachable again"
                );
                *state = State::default();
            }
            (None, true) => state.refused = 0,
        }
    }

    /// Counts one request refused because Kafka did not take its event; true when this one
    /// should be logged (at most one every [`REFUSAL_LOG_GAP`]).
    pub fn note_refusal(&self) -> bool {
        self.note_refusal_at(Instant::now())
    }

    fn note_refusal_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock().expect("lock not poisoned");
        state.refused += 1;
        let due = state
            .last_refusal_line
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_LOG_GAP);
        if due {
            state.last_refusal_line = Some(now);
        }
        due
    }

    /// True while an outage is in progress.
    pub fn is_down(&self) -> bool {
        self.state
            .lock()
            .expect("lock not poisoned")
            .down_since
            .is_some()
    }

    /// Silences every client of this relay for good (called once it has stopped).
    pub fn silence(&self) {
        self.silenced.store(true, Ordering::Release);
    }

    /// True once [`ClusterWatch::silence`] was called.
    pub fn is_silenced(&self) -> bool {
        self.silenced.load(Ordering::Acquire)
    }
}

fn whole_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_one_start_line_then_a_summary_per_period_then_one_end() {
        let watch = ClusterWatch::default();
        let start = Instant::now();
        watch.observe_at(true, start);
        assert!(!watch.is_down());
        watch.observe_at(false, start);
        assert!(watch.is_down());
        // The first refusal is logged, the next ones within the gap only counted.
        assert!(watch.note_refusal_at(start));
        assert!(!watch.note_refusal_at(start + Duration::from_secs(1)));
        assert!(watch.note_refusal_at(start + REFUSAL_LOG_GAP));
        let state = |w: &ClusterWatch| {
            let s = w.state.lock().unwrap();
            (s.down_since, s.last_line, s.refused)
        };
        watch.observe_at(false, start + Duration::from_secs(5));
        assert_eq!(
            state(&watch),
            (Some(start), Some(start), 3),
            "no summary yet"
        );
        let later = start + SUMMARY_EVERY;
        watch.observe_at(false, later);
        assert_eq!(
            state(&watch),
            (Some(start), Some(later), 3),
            "summary written"
        );
        watch.observe_at(true, later + Duration::from_secs(1));
        assert!(!watch.is_down());
        assert_eq!(state(&watch), (None, None, 0), "back: counters reset");
    }

    #[test]
    fn a_silenced_watch_ignores_probes() {
        let watch = ClusterWatch::default();
        watch.silence();
        watch.observe(false);
        assert!(!watch.is_down());
        assert!(watch.is_silenced());
    }
}
