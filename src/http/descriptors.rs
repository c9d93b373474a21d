//! File descriptors: every connection is one, and so is every Kafka socket, spool segment and
//! listener. A process that runs out cannot accept, read its spool or reach Kafka, so the
//! relay raises its soft limit to the hard limit at start-up and keeps connections below what
//! is left after a reserve for everything else.

use std::io;

/// Descriptors kept for everything but public connections: Kafka clients (a socket and a
/// wake-up pipe per broker, for the producer, the reply consumer and the v2 marker), the spool
/// (the active segment, one segment read at a time, the quarantine file, directory syncs), the
/// listeners, the runtime, logging and TLS files. The admin listener's connections come on top.
pub const RESERVED: u64 = 128;

/// The process's `RLIMIT_NOFILE` as (soft, hard).
pub fn limits() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises the soft descriptor limit to the hard limit; returns (before, after).
pub fn raise_soft_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = limits()?;
    if soft >= hard {
        return Ok((soft, soft));
    }
    let limit = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one needs no
    // privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((soft, hard))
}

/// How many public connections fit under a soft limit of `soft` descriptors, with
/// [`RESERVED`] and the admin listener's `admin` connections kept aside (at least one).
pub fn connections_that_fit(soft: u64, admin: usize) -> usize {
    let spare = soft.saturating_sub(RESERVED + admin as u64).max(1);
    usize::try_from(spare).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_under_the_limit_with_the_reserve_kept() {
        assert_eq!(connections_that_fit(1024, 64), 1024 - 128 - 64);
        assert_eq!(connections_that_fit(256, 64), 64);
        assert_eq!(connections_that_fit(100, 64), 1, "never zero");
        assert!(connections_that_fit(u64::MAX, 64) > 1 << 60);
    }

    #[test]
    fn the_soft_limit_can_be_raised_to_the_hard_one() {
        let (_, hard) = limits().unwrap();
        let (_, after) = raise_soft_limit().unwrap();
        assert_eq!(after, hard);
        assert_eq!(limits().unwrap().0, hard);
    }
}
