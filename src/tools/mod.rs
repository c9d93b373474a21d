//! The developer's tools, each a subcommand: `fp-relay send` simulates FirstPromoter with the
//! built-in [`samples`], `fp-relay tail` shows what reached Kafka, `fp-relay respond` is a
//! reference fulfiller, and [`dev`] is the embedded broker behind `serve --dev`.

pub mod dev;
pub mod respond;
pub mod samples;
pub mod send;
pub mod tail;

/// `KEY=VALUE` for `--property`.
pub fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}
