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
