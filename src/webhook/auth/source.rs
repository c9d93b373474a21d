//! Where a request comes from: the peer, or behind trusted proxies the first untrusted hop of
//! the configured forwarding header; and the `auth.allow_sources` check.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::config::ForwardedHeader;

use super::{AuthFailure, Authenticator};

impl Authenticator {
    /// The address the request came from: the peer, or, when the peer is a trusted proxy, the
    /// first untrusted hop from the right in the configured forwarding header
    /// (`auth.forwarded_header`): only what trusted proxies appended is believed, so a client
    /// cannot pick its address by writing entries on the left. `None` when that hop cannot be
    /// read as an address (`unknown`, junk): it is then allowed nowhere.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        if !contains(&self.trusted_proxies, peer) {
            return Some(peer);
        }
        let chain = forwarded_chain(headers, self.forwarded_header);
        for hop in chain.iter().rev() {
            match hop {
                Some(ip) if contains(&self.trusted_proxies, *ip) => continue,
                hop => return *hop,
            }
        }
        // Every hop is a trusted proxy: the leftmost is the client (or, with no header, the
        // peer itself).
        Some(chain.first().copied().flatten().unwrap_or(peer))
    }

    /// Checks the client address against `auth.allow_sources` (an unreadable one is in none).
    pub fn check_source(&self, client: Option<IpAddr>) -> Result<(), AuthFailure> {
        if self.allow_sources.is_empty()
            || client.is_some_and(|client| contains(&self.allow_sources, client))
        {
            Ok(())
        } else {
            Err(AuthFailure::SourceNotAllowed)
        }
    }

    /// True when `peer` is a proxy whose forwarding header is believed.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        contains(&self.trusted_proxies, peer)
    }
}

fn contains(networks: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    networks.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) as the IPv4 addresses they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Hops from the one configured forwarding header, leftmost (client) first; `None` for a hop
/// that is not an address.
fn forwarded_chain(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    match header {
        ForwardedHeader::XForwardedFor => headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| match v.to_str() {
                Ok(text) => text.split(',').map(hop_ip).collect::<Vec<_>>(),
                Err(_) => vec![None],
            })
            .map(|ip| ip.map(canonical))
            .collect(),
        ForwardedHeader::Forwarded => headers
            .get_all(http::header::FORWARDED)
            .iter()
            .flat_map(|v| match v.to_str() {
                // One element per hop; its `for=` parameter names it.
                Ok(text) => text
                    .split(',')
                    .map(|element| {
                        element.split(';').find_map(|pair| {
                            let (key, value) = pair.trim().split_once('=')?;
                            key.trim()
                                .eq_ignore_ascii_case("for")
                                .then(|| hop_ip(value))
                        })?
                    })
                    .collect::<Vec<_>>(),
                Err(_) => vec![None],
            })
            .map(|ip| ip.map(canonical))
            .collect(),
    }
}

/// One hop as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`, any of them quoted.
fn hop_ip(value: &str) -> Option<IpAddr> {
    let value = value.trim().trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    value.parse().ok().or_else(|| {
        let (host, port) = value.rsplit_once(':')?;
        // `host:port` only for IPv4: a bare IPv6 address has colons of its own.
        (port.bytes().all(|b| b.is_ascii_digit()) && !host.contains(':'))
            .then(|| host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4))?
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{auth, headers};
    use super::*;

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        let a = auth(|c| {
            c.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
            c.allow_sources = vec!["203.0.113.0/24".parse().unwrap()];
        });
        let xff = headers(&[("x-forwarded-for", "198.51.100.9, 203.0.113.7, 10.0.0.2")]);
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(a.client_ip(proxy, &xff), ip("203.0.113.7"));
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            a.client_ip(stranger, &xff),
            Some(stranger),
            "untrusted peers cannot claim an address"
        );
        let fwd = headers(&[(
            "forwarded",
            r#"for="[2001:db8::1]:80", for=203.0.113.8;proto=https"#,
        )]);
        assert_eq!(
            a.client_ip(proxy, &fwd),
            Some(proxy),
            "only the configured header (x-forwarded-for) is read"
        );
        let rfc = auth(|c| {
            c.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
            c.forwarded_header = ForwardedHeader::Forwarded;
        });
        assert_eq!(rfc.client_ip(proxy, &fwd), ip("203.0.113.8"));
        let both = headers(&[
            ("x-forwarded-for", "198.51.100.66"),
            ("forwarded", "for=203.0.113.8"),
        ]);
        assert_eq!(
            rfc.client_ip(proxy, &both),
            ip("203.0.113.8"),
            "a client-supplied X-Forwarded-For cannot override the proxy's Forwarded"
        );
        assert_eq!(a.check_source(ip("203.0.113.8")), Ok(()));
        assert_eq!(
            a.check_source(Some(stranger)),
            Err(AuthFailure::SourceNotAllowed)
        );
        assert_eq!(
            a.check_source(ip("::ffff:203.0.113.8")),
            Ok(()),
            "v4-mapped v6 is v4"
        );
        assert_eq!(
            a.check_source(None),
            Err(AuthFailure::SourceNotAllowed),
            "an unreadable hop is allowed nowhere"
        );
    }

    #[test]
    fn forwarded_hops_with_ports_and_brackets_are_read_and_a_forged_left_entry_never_counts() {
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        let a = auth(|c| c.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()]);
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        for (value, client) in [
            // The proxy appended the real client with its port; the left entry is forged.
            ("203.0.113.250, 198.51.100.7:51234", ip("198.51.100.7")),
            ("203.0.113.250, [2001:db8::7]:443", ip("2001:db8::7")),
            ("203.0.113.250, 2001:db8::7", ip("2001:db8::7")),
            (
                "203.0.113.250, \"198.51.100.7\", 10.0.0.9:80",
                ip("198.51.100.7"),
            ),
            // The first untrusted hop from the right is junk: nobody can be named.
            ("203.0.113.250, unknown", None),
            ("203.0.113.250, 198.51.100.7:port", None),
            // Only trusted hops: the leftmost.
            ("10.0.0.7, 10.0.0.8", ip("10.0.0.7")),
        ] {
            let h = headers(&[("x-forwarded-for", value)]);
            assert_eq!(a.client_ip(proxy, &h), client, "{value}");
        }
        assert_eq!(a.client_ip(proxy, &HeaderMap::new()), Some(proxy));
    }
}
