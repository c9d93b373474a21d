//! FirstPromoter's v2 company API (API reference "Webhooks"): what it knows about the webhooks it
//! sent, so that the relay can see what never reached it.
//!
//! - [`client`]: the one client: credentials, rate budget, retry rules.
//! - [`webhooks`]: subscriptions, event types and delivery records, typed.
//! - [`reconcile`]: `serve`'s periodic read of delivery records into metrics.
//!
//! The commands built on them (`fp-relay firstpromoter subscribe|status|recover`) live in
//! `tools::firstpromoter`.

pub mod client;
pub mod reconcile;
pub mod webhooks;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Config;

/// True when a subscription's `url` delivers to this relay: the configured
/// `firstpromoter.webhook_url`, or else any URL whose path the relay serves (`http.path`, or
/// `http.path/<path token>`: the handler's own rule).
pub fn points_here(url: &str, config: &Config) -> bool {
    match &config.firstpromoter.webhook_url {
        Some(ours) => same_url(url, ours),
        None => crate::http::handler::match_path(path_of(url), &config.http.path).is_some(),
    }
}

/// Two URLs equal but for the case of scheme and host and a trailing slash.
pub fn same_url(a: &str, b: &str) -> bool {
    let normal = |url: &str| {
        let url = url.trim().trim_end_matches('/');
        match url.split_once("://") {
            Some((scheme, rest)) => {
                let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                format!(
                    "{}://{}{path}",
                    scheme.to_ascii_lowercase(),
                    host.to_ascii_lowercase()
                )
            }
            None => url.to_owned(),
        }
    };
    normal(a) == normal(b)
}

/// The path of a URL, without query and trailing slash.
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.trim_end_matches('/')
}

/// An ISO 8601 / RFC 3339 time as FirstPromoter writes it (`2026-11-30T09:15:02.123Z`, or with
/// an offset such as `+02:00`).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (date, time) = text.split_once(['T', ' '])?;
    let mut date_parts = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (
        date_parts.next()?.ok()?,
        date_parts.next()?.ok()?,
        date_parts.next()?.ok()?,
    );
    // Split the clock from its offset.
    let (clock, offset_seconds) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else if let Some(at) = time.rfind(['+', '-']) {
        let (clock, offset) = time.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let digits: String = offset[1..].chars().filter(char::is_ascii_digit).collect();
        if digits.len() != 4 {
            return None;
        }
        let hours: i64 = digits[..2].parse().ok()?;
        let minutes: i64 = digits[2..].parse().ok()?;
        (clock, sign * (hours * 3600 + minutes * 60))
    } else {
        (time, 0)
    };
    let (whole, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut clock_parts = whole.splitn(3, ':').map(str::parse::<i64>);
    let (hour, minute, second) = (
        clock_parts.next()?.ok()?,
        clock_parts.next()?.ok()?,
        clock_parts.next().unwrap_or(Ok(0)).ok()?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().take(9).collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        format!("{digits:0<9}").parse().ok()?
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_seconds;
    let seconds = u64::try_from(seconds).ok()?;
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_with_fractions_and_offsets_and_agree_with_humantime() {
        let at = |text: &str| parse_time(text).unwrap();
        let reference = humantime::parse_rfc3339("2026-11-30T09:15:02Z").unwrap();
        assert_eq!(at("2026-11-30T09:15:02Z"), reference);
        assert_eq!(at("2026-11-30T10:15:02+01:00"), reference);
        assert_eq!(at("2026-11-30T04:15:02-05:00"), reference);
        assert_eq!(
            at("2026-11-30 09:15:02 UTC".replace(" UTC", "Z").as_str()),
            reference
        );
        assert_eq!(
            at("2026-11-30T09:15:02.250Z"),
            reference + Duration::from_millis(250)
        );
        for text in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-30T09:15:02+1",
        ] {
            assert_eq!(parse_time(text), None, "{text}");
        }
        // Every day of four years, against humantime's formatter.
        let start = humantime::parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
        for day in 0..(4 * 366) {
            let time = start + Duration::from_secs(day * 86_400 + 3_723);
            let text = humantime::format_rfc3339_seconds(time).to_string();
            assert_eq!(parse_time(&text), Some(time), "{text}");
        }
    }

    #[test]
    fn subscriptions_point_here_by_url_or_by_path() {
        let mut config = Config::default();
        assert!(points_here(
            "https://relay.example.com/webhooks/firstpromoter",
            &config
        ));
        assert!(points_here(
            "https://relay.example.com/webhooks/firstpromoter/tok",
            &config
        ));
        assert!(!points_here(
            "https://relay.example.com/webhooks/firstpromoterx",
            &config
        ));
        assert!(!points_here("https://other.example.com/hooks", &config));
        config.firstpromoter.webhook_url =
            Some("https://Relay.example.com/webhooks/firstpromoter/".into());
        assert!(points_here(
            "https://relay.example.com/webhooks/firstpromoter",
            &config
        ));
        assert!(!points_here(
            "https://staging.example.com/webhooks/firstpromoter",
            &config
        ));
    }
}
