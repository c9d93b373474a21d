//! W3C Trace Context (https://www.w3.org/TR/trace-context/) across the Kafka hop.
//!
//! The relay continues the trace of an incoming `traceparent` (FirstPromoter sends none today;
//! a proxy or gateway in front of the relay may) or starts one, and is itself one span of it:
//! every record it publishes for a request carries `traceparent` (and `tracestate` when one
//! came in) naming the relay's span as the parent, under both the plain W3C name and the
//! CloudEvents Kafka binding's `ce_traceparent` (the Distributed Tracing extension), so a
//! consumer's own span joins the same trace whichever convention its library follows.

use std::fmt::Write as _;

/// `traceparent`: version, trace id, parent span id, flags.
pub const TRACEPARENT: &str = "traceparent";
/// Vendor-specific trace state, passed on as received.
pub const TRACESTATE: &str = "tracestate";
/// The CloudEvents Kafka binding's names of the same two headers.
pub const CE_TRACEPARENT: &str = "ce_traceparent";
pub const CE_TRACESTATE: &str = "ce_tracestate";

/// Longest `tracestate` passed on (the specification's own limit).
const MAX_TRACESTATE: usize = 512;

/// The trace a request belongs to and the relay's span in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: u128,
    /// The relay's own span for this request: the parent of whatever a consumer does.
    pub span_id: u64,
    /// The caller's span, when the request carried a `traceparent`.
    pub parent_span_id: Option<u64>,
    /// `trace-flags` (bit 0: sampled).
    pub flags: u8,
    /// The incoming `tracestate`, if valid enough to pass on.
    pub state: Option<String>,
}

impl TraceContext {
    /// A new trace, sampled.
    pub fn start() -> Self {
        Self {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            parent_span_id: None,
            flags: 1,
            state: None,
        }
    }

    /// The trace named by `traceparent` (and `tracestate`) headers, with a fresh span of the
    /// relay's under it; a new trace when the header is absent or invalid.
    pub fn continue_from(headers: &http::HeaderMap) -> Self {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
        };
        Self::continue_parts(text(TRACEPARENT), text(TRACESTATE))
    }

    /// [`TraceContext::continue_from`] with the two header values.
    pub fn continue_parts(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        match traceparent.and_then(parse_traceparent) {
            Some(parent) => Self::under(
                parent,
                tracestate
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE)
                    .map(str::to_owned),
            ),
            None => Self::start(),
        }
    }

    /// A new span under `parent`, in its trace with its flags.
    fn under(parent: Parent, state: Option<String>) -> Self {
        Self {
            trace_id: parent.trace_id,
            span_id: nonzero_u64(),
            parent_span_id: Some(parent.span_id),
            flags: parent.flags,
            state,
        }
    }

    /// The trace id as 32 lowercase hex digits, as tracing systems show it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// `traceparent` naming the relay's span as the parent.
    pub fn traceparent(&self) -> String {
        let mut text = String::with_capacity(55);
        let _ = write!(
            text,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        );
        text
    }
}

/// The parts of a valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

/// A `traceparent` as the specification defines it: `00-<32 hex>-<16 hex>-<2 hex>`, lower
/// case, ids not all zero, version `ff` invalid; a later version is read by its first four
/// fields (and must be followed by `-` or end there).
pub fn parse_traceparent(value: &str) -> Option<Parent> {
    let value = value.trim();
    let bytes = value.as_bytes();
    if bytes.len() < 55
        || !bytes[..55]
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'a'..=b'f' | b'-'))
    {
        return None;
    }
    let version = &value[..2];
    if version == "ff" || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    if version == "00" && bytes.len() != 55 {
        return None;
    }
    if bytes.len() > 55 && bytes[55] != b'-' {
        return None;
    }
    hex(version)?;
    let trace_id = u128::from_str_radix(hex(&value[3..35])?, 16).ok()?;
    let span_id = u64::from_str_radix(hex(&value[36..52])?, 16).ok()?;
    let flags = u8::from_str_radix(hex(&value[53..55])?, 16).ok()?;
    (trace_id != 0 && span_id != 0).then_some(Parent {
        trace_id,
        span_id,
        flags,
    })
}

fn hex(part: &str) -> Option<&str> {
    part.bytes().all(|b| b.is_ascii_hexdigit()).then_some(part)
}

/// A `traceparent` for a new span under `parent` (same trace and flags); `None` when `parent`
/// is invalid.
pub fn child_of(parent: &str) -> Option<String> {
    parse_traceparent(parent).map(|parent| TraceContext::under(parent, None).traceparent())
}

/// The trace id of a `traceparent` header value, for log lines; `None` when invalid.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    parse_traceparent(traceparent).map(|p| format!("{:032x}", p.trace_id))
}

fn nonzero_u128() -> u128 {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id;
        }
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_is_continued_with_a_new_span() {
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, EXAMPLE.parse().unwrap());
        headers.insert(TRACESTATE, "congo=t61rcWkgMzE".parse().unwrap());
        let trace = TraceContext::continue_from(&headers);
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_span_id, Some(0x00f0_67aa_0ba9_02b7));
        assert_ne!(trace.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(trace.state.as_deref(), Some("congo=t61rcWkgMzE"));
        let written = trace.traceparent();
        assert_eq!(written.len(), 55);
        assert!(written.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(written.ends_with("-01"));
        assert_eq!(
            parse_traceparent(&written).map(|p| p.span_id),
            Some(trace.span_id)
        );
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A later version is read by its first four fields.
        assert!(parse_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        )
        .is_some());
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, "garbage".parse().unwrap());
        headers.insert(TRACESTATE, "congo=t61rcWkgMzE".parse().unwrap());
        let trace = TraceContext::continue_from(&headers);
        assert_eq!(trace.parent_span_id, None);
        assert_eq!(
            trace.state, None,
            "no tracestate without a valid traceparent"
        );
        assert_ne!(trace.trace_id, 0);
    }

    #[test]
    fn an_oversized_or_undecodable_tracestate_is_not_passed_on() {
        let long = format!("congo={}", "a".repeat(MAX_TRACESTATE));
        let trace = TraceContext::continue_parts(Some(EXAMPLE), Some(&long));
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.state, None);
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, EXAMPLE.parse().unwrap());
        headers.insert(
            TRACESTATE,
            http::HeaderValue::from_bytes(b"congo=\xff\xfe").unwrap(),
        );
        let trace = TraceContext::continue_from(&headers);
        assert_eq!(trace.parent_span_id, Some(0x00f0_67aa_0ba9_02b7));
        assert_eq!(trace.state, None, "not text: left out, the trace kept");
    }

    proptest! {
        /// What the relay writes, it reads back; and no input makes the parser panic.
        #[test]
        fn written_traceparents_parse_back(trace_id in 1u128.., span_id in 1u64.., flags: u8) {
            let trace = TraceContext { trace_id, span_id, parent_span_id: None, flags, state: None };
            let parsed = parse_traceparent(&trace.traceparent()).unwrap();
            prop_assert_eq!(parsed, Parent { trace_id, span_id, flags });
        }

        #[test]
        fn any_text_is_parsed_or_refused_without_panicking(text in ".{0,80}") {
            let _ = parse_traceparent(&text);
        }
    }
}
