//! Logging: human-readable by default, JSON lines with `--log-format json`. The level comes
//! from `RUST_LOG` (default `info`). Nothing the relay logs contains a request body or secret.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Single lines for people, coloured when stderr is a terminal.
    #[default]
    Human,
    /// One JSON object per line for log pipelines.
    Json,
}

/// The log target of a panic's line, which tests look for.
pub const PANIC_TARGET: &str = "fp_relay::panic";

/// Logs every panic as one error line (location and message) instead of the standard library's
/// unstructured stderr text, so that a log pipeline sees it.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = panic_message(info.payload());
        tracing::error!(target: PANIC_TARGET, %location, panic = message, "panicked");
    }));
}

/// The text a panic was raised with, if it was text.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not text)")
}

/// Installs the global subscriber; call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    log_panics();
}

/// At most one log line per key every `gap`, with how many were held back since the last one:
/// a flood of the same refusal (a scanner guessing tokens, a misconfigured sender retrying)
/// costs one line per interval, and the metrics count every one. Keys are a bounded set
/// (stable reason codes), so the table stays small.
#[derive(Debug)]
pub struct LineLimit {
    gap: std::time::Duration,
    last: std::sync::Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>,
}

impl LineLimit {
    /// A limiter allowing one line per key every `gap`.
    pub fn new(gap: std::time::Duration) -> Self {
        Self {
            gap,
            last: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// `Some(held_back)` when a line for `key` is due now (and how many were not logged since
    /// the previous one), `None` when it is to be held back.
    pub fn admit(&self, key: &'static str) -> Option<u64> {
        self.admit_at(key, std::time::Instant::now())
    }

    fn admit_at(&self, key: &'static str, now: std::time::Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(key) {
            Some((at, held)) if now.duration_since(*at) < self.gap => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                *at = now;
                Some(std::mem::take(held))
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn one_line_per_key_and_interval_with_the_count_held_back() {
        let limit = LineLimit::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limit.admit_at("unauthorized", start), Some(0));
        for n in 1..=5 {
            let at = start + Duration::from_secs(n);
            assert_eq!(limit.admit_at("unauthorized", at), None);
        }
        // Another key has its own interval.
        assert_eq!(limit.admit_at("forbidden", start), Some(0));
        assert_eq!(
            limit.admit_at("unauthorized", start + Duration::from_secs(10)),
            Some(5)
        );
        assert_eq!(
            limit.admit_at("unauthorized", start + Duration::from_secs(11)),
            None
        );
    }
}
