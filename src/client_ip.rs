//! Who the client is: the address rate limits, lockouts and logs are keyed by, and the
//! `X-Forwarded-For` value sent upstream.
//!
//! This module is pure: it reads the socket peer, the inbound `X-Forwarded-For` lines and the
//! configured trusted-proxy CIDRs, and never does IO.
//!
//! Decisions, and why:
//!
//! - **The socket peer is the client unless it is a trusted proxy.** Anyone can write an
//!   `X-Forwarded-For` header, so it is read only when the connection itself comes from a
//!   proxy the operator listed in `server.trusted_proxies`.
//! - **Walk the list from the right and take the first untrusted hop.** Each proxy appends the
//!   address it received the request from, so the right-hand end was written by our own
//!   infrastructure and the left-hand end by whoever sent the request first. Taking the
//!   left-most entry (a common mistake) lets a client choose its own address; the right-most
//!   untrusted entry is the last address a trusted proxy vouched for, which is the best we
//!   can know. An attacker can only make us walk through entries that trusted proxies wrote,
//!   so the walk is short and needs no hop limit of its own.
//! - **A malformed entry stops the walk.** Garbage, ports (`1.2.3.4:5678`, `[::1]:80`),
//!   `unknown` and the like mean the chain can no longer be read reliably, so the last good
//!   address (the nearest trusted hop, or the peer itself) is the client. That errs towards
//!   attributing requests to our own proxy rather than to an address someone may have
//!   invented. Empty list elements (`a,,b`, a trailing comma) are skipped, as RFC 9110
//!   §5.6.1 asks of recipients.
//! - **Several header lines form one list**, concatenated in order (RFC 9110 §5.3).
//! - **IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are IPv4 everywhere**: in the peer, in
//!   the list, in the trusted CIDRs (`::ffff:10.0.0.0/104` trusts `10.0.0.0/8`), in rate keys
//!   and in the value sent upstream. A dual-stack listener reports IPv4 clients in mapped
//!   form, and one client must not have two identities.
//! - **Upstream receives only the chain we believe**: the resolved client, the trusted hops
//!   between it and us, then the peer. Entries left of the client were written by the client
//!   and are dropped, so an upstream that naively reads the left-most entry still sees the
//!   address gatehouse decided on. From an untrusted peer the value is just the peer address.
//! - **Rate keys group IPv6 by /64.** One host normally owns a whole /64 and can rotate
//!   through 2^64 addresses at will, so per-address keys would not limit it at all.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// The `X-Forwarded-For` header name (not among `http`'s predefined constants).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client address of a request.
///
/// `peer` is the socket peer; `headers` are the inbound request headers, of which every
/// `X-Forwarded-For` line is read in order; `trusted` are the trusted-proxy CIDRs. The result
/// is always canonical: an IPv4-mapped IPv6 address comes back as IPv4. Never allocates.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    resolve(peer, headers, trusted, |_| {}).client
}

/// The `X-Forwarded-For` value to send upstream, for the same inputs as [`client_ip`].
///
/// It is the believed chain: the client that [`client_ip`] returns, the trusted hops between
/// it and gatehouse, and finally the peer, each in canonical form and separated by `", "`.
/// When the peer is not trusted the value is the peer address alone, so whatever the client
/// wrote is replaced. The string contains only ASCII digits, hex letters, `.`, `:`, `,` and
/// spaces, so it is always a valid header value.
pub fn forwarded_for_value(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> String {
    // The walk visits the believed hops right to left; a Vec stays unallocated when the peer
    // is not trusted, and holds a handful of addresses otherwise.
    let mut hops = Vec::new();
    let resolved = resolve(peer, headers, trusted, |hop| hops.push(hop));
    // Each address is at most 39 characters (full IPv6) plus the separator.
    let mut out = String::with_capacity((hops.len() + 1) * 41);
    for hop in hops.iter().rev() {
        // Writing to a String cannot fail.
        let _ = write!(out, "{hop}, ");
    }
    let _ = write!(out, "{}", resolved.peer);
    out
}

/// [`forwarded_for_value`] as a header value. The common case, a peer that is not a trusted
/// proxy, writes the peer address on the stack and allocates only the header value itself.
pub fn forwarded_for_header(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> HeaderValue {
    let canonical = peer.to_canonical();
    let value = if is_trusted(canonical, trusted) {
        HeaderValue::from_str(&forwarded_for_value(peer, headers, trusted))
    } else {
        // A full IPv6 address is at most 39 characters.
        let mut buf = StackBuf::<48>::new();
        let _ = write!(buf, "{canonical}");
        HeaderValue::from_bytes(buf.as_bytes())
    };
    // Digits, hex letters, `.`, `:`, `,` and spaces are always a valid header value.
    value.unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A fixed-size `fmt::Write` target; writes past the end fail.
struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> std::fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The key a client is rate-limited under.
///
/// IPv4 addresses key on the whole address, taken in its IPv4-mapped IPv6 form so that it can
/// never equal an IPv6 key. IPv6 addresses key on their /64 prefix (low 64 bits zero), since
/// one host can use every address in its /64.
pub fn rate_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !u128::from(u64::MAX),
    }
}

/// What walking the chain found.
struct Resolved {
    /// The canonical socket peer.
    peer: IpAddr,
    /// The client address.
    client: IpAddr,
}

/// Walks the chain, calling `on_hop` with each `X-Forwarded-For` entry it believes (the
/// client and the trusted hops after it), right to left.
fn resolve(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    mut on_hop: impl FnMut(IpAddr),
) -> Resolved {
    let peer = peer.to_canonical();
    let mut resolved = Resolved { peer, client: peer };
    if !is_trusted(peer, trusted) {
        return resolved;
    }
    for element in elements_reversed(headers) {
        let Some(addr) = parse_addr(element) else {
            break;
        };
        resolved.client = addr;
        on_hop(addr);
        if !is_trusted(addr, trusted) {
            break;
        }
    }
    resolved
}

/// The non-empty, whitespace-trimmed elements of every `X-Forwarded-For` line, last first.
fn elements_reversed(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','))
        .map(|element| element.trim_ascii())
        .filter(|element| !element.is_empty())
}

/// A bare IP address in canonical form, or `None` for anything else (ports, brackets, zone
/// ids, obfuscated identifiers, non-ASCII bytes).
fn parse_addr(element: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(element).ok()?;
    text.parse::<IpAddr>().ok().map(|addr| addr.to_canonical())
}

/// Whether a (canonical) address is one of the trusted proxies; the one rule every caller
/// uses, so the gate and the X-Forwarded-For walk never disagree.
pub fn is_trusted(addr: IpAddr, trusted: &[IpNet]) -> bool {
    trusted
        .iter()
        .any(|net| net_contains(net, addr.to_canonical()))
}

/// Whether `net` contains the canonical address `addr`, treating an IPv6 net that lies wholly
/// inside `::ffff:0:0/96` as the IPv4 net it maps. A broader IPv6 net such as `::/0` does not
/// match IPv4 addresses: trusting "all of IPv6" should not silently trust all of IPv4.
fn net_contains(net: &IpNet, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpNet::V4(net), IpAddr::V4(addr)) => net.contains(&addr),
        (IpNet::V6(net), IpAddr::V6(addr)) => net.contains(&addr),
        (IpNet::V6(net), IpAddr::V4(addr)) => {
            net.prefix_len() >= 96
                && net.network().to_ipv4_mapped().is_some()
                && net.contains(&addr.to_ipv6_mapped())
        }
        (IpNet::V4(_), IpAddr::V6(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const TRUSTED: &[&str] = &["10.0.0.0/8", "2001:db8:ffff::/48", "::ffff:192.168.0.0/112"];

    fn trusted() -> Vec<IpNet> {
        TRUSTED.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(xff: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in xff {
            map.append(X_FORWARDED_FOR, HeaderValue::from_bytes(line).unwrap());
        }
        map
    }

    /// Resolves `peer` with the given `X-Forwarded-For` lines against [`TRUSTED`] and checks
    /// both the client and the value sent upstream.
    fn check(peer: &str, xff: &[&[u8]], expect_client: &str, expect_forwarded: &str) {
        let peer: IpAddr = peer.parse().unwrap();
        let map = headers(xff);
        let trusted = trusted();
        let client = client_ip(peer, &map, &trusted);
        let forwarded = forwarded_for_value(peer, &map, &trusted);
        assert_eq!(
            forwarded_for_header(peer, &map, &trusted),
            forwarded.as_str(),
            "header form of {forwarded:?}"
        );
        assert_eq!(
            (client.to_string().as_str(), forwarded.as_str()),
            (expect_client, expect_forwarded),
            "peer {peer}, X-Forwarded-For {xff:?}",
            xff = xff
                .iter()
                .map(|l| String::from_utf8_lossy(l))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn untrusted_peer_is_the_client_and_its_header_is_replaced() {
        check("203.0.113.7", &[], "203.0.113.7", "203.0.113.7");
        check("203.0.113.7", &[b"1.1.1.1"], "203.0.113.7", "203.0.113.7");
        check(
            "203.0.113.7",
            &[b"10.0.0.1, 1.1.1.1"],
            "203.0.113.7",
            "203.0.113.7",
        );
        check("2001:db8::1", &[b"1.1.1.1"], "2001:db8::1", "2001:db8::1");
        // A peer just outside a trusted range is not trusted.
        check("11.0.0.1", &[b"1.1.1.1"], "11.0.0.1", "11.0.0.1");
        check("2001:db9::1", &[b"1.1.1.1"], "2001:db9::1", "2001:db9::1");
    }

    #[test]
    fn trusted_peer_takes_the_right_most_untrusted_hop() {
        // No header at all: the trusted proxy is the client.
        check("10.0.0.1", &[], "10.0.0.1", "10.0.0.1");
        check("10.0.0.1", &[b"1.1.1.1"], "1.1.1.1", "1.1.1.1, 10.0.0.1");
        // Spoofed entries left of the real client are ignored and not forwarded.
        check(
            "10.0.0.1",
            &[b"6.6.6.6, 7.7.7.7, 1.1.1.1"],
            "1.1.1.1",
            "1.1.1.1, 10.0.0.1",
        );
        // Trusted hops are skipped and kept in the forwarded chain.
        check(
            "10.0.0.1",
            &[b"6.6.6.6, 1.1.1.1, 10.0.0.3, 10.0.0.2"],
            "1.1.1.1",
            "1.1.1.1, 10.0.0.3, 10.0.0.2, 10.0.0.1",
        );
        // Every hop trusted: the left-most one is the best we know.
        check(
            "10.0.0.1",
            &[b"10.0.0.3, 10.0.0.2"],
            "10.0.0.3",
            "10.0.0.3, 10.0.0.2, 10.0.0.1",
        );
        check(
            "2001:db8:ffff::1",
            &[b"2001:db8:1::5, 2001:db8:ffff::2"],
            "2001:db8:1::5",
            "2001:db8:1::5, 2001:db8:ffff::2, 2001:db8:ffff::1",
        );
        // Whitespace and tabs around elements are optional whitespace.
        check(
            "10.0.0.1",
            &[b" 1.1.1.1 ,\t10.0.0.2 "],
            "1.1.1.1",
            "1.1.1.1, 10.0.0.2, 10.0.0.1",
        );
    }

    #[test]
    fn several_lines_are_one_list_in_order() {
        check(
            "10.0.0.1",
            &[b"6.6.6.6", b"1.1.1.1, 10.0.0.3", b"10.0.0.2"],
            "1.1.1.1",
            "1.1.1.1, 10.0.0.3, 10.0.0.2, 10.0.0.1",
        );
        // Empty elements and empty lines are skipped, not treated as malformed.
        check(
            "10.0.0.1",
            &[b"1.1.1.1,, 10.0.0.2,", b"", b" , "],
            "1.1.1.1",
            "1.1.1.1, 10.0.0.2, 10.0.0.1",
        );
    }

    #[test]
    fn malformed_entries_stop_at_the_last_good_address() {
        let malformed: &[&[u8]] = &[
            b"garbage",
            b"1.1.1.1:8080",
            b"[2001:db8::1]:443",
            b"[2001:db8::1]",
            b"unknown",
            b"_hidden",
            b"fe80::1%eth0",
            b"1.1.1",
            b"010.1.1.1",
            b"1.1.1.1 2.2.2.2",
            b"\xff\xfe",
        ];
        for &bad in malformed {
            // Right after the peer: the peer itself is the last good address.
            let line = [b"1.1.1.1, ".as_slice(), bad].concat();
            check("10.0.0.1", &[&line], "10.0.0.1", "10.0.0.1");
            // After a trusted hop: that hop is the client.
            let line = [b"1.1.1.1, ".as_slice(), bad, b", 10.0.0.2"].concat();
            check("10.0.0.1", &[&line], "10.0.0.2", "10.0.0.2, 10.0.0.1");
            // Left of the first untrusted hop: never reached.
            let line = [bad, b", 1.1.1.1, 10.0.0.2".as_slice()].concat();
            check(
                "10.0.0.1",
                &[&line],
                "1.1.1.1",
                "1.1.1.1, 10.0.0.2, 10.0.0.1",
            );
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4_everywhere() {
        // Mapped peer in a plain IPv4 trusted range, mapped client in the list.
        check(
            "::ffff:10.0.0.1",
            &[b"::ffff:1.1.1.1"],
            "1.1.1.1",
            "1.1.1.1, 10.0.0.1",
        );
        // Mapped peer that is untrusted comes back as IPv4.
        check(
            "::ffff:203.0.113.7",
            &[b"1.1.1.1"],
            "203.0.113.7",
            "203.0.113.7",
        );
        // A trusted range written in mapped form trusts the IPv4 addresses it maps.
        check(
            "192.168.0.9",
            &[b"1.1.1.1, ::ffff:192.168.0.8"],
            "1.1.1.1",
            "1.1.1.1, 192.168.0.8, 192.168.0.9",
        );
        check("192.169.0.9", &[b"1.1.1.1"], "192.169.0.9", "192.169.0.9");
    }

    #[test]
    fn broad_ipv6_ranges_do_not_trust_ipv4() {
        let peer: IpAddr = "1.2.3.4".parse().unwrap();
        let map = headers(&[b"5.6.7.8"]);
        let all_v6: Vec<IpNet> = vec!["::/0".parse().unwrap()];
        assert_eq!(client_ip(peer, &map, &all_v6), peer);
        let all_v4: Vec<IpNet> = vec!["0.0.0.0/0".parse().unwrap()];
        assert_eq!(
            client_ip(peer, &map, &all_v4),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn rate_keys() {
        fn key(s: &str) -> u128 {
            rate_key(s.parse().unwrap())
        }
        let cases: &[(&str, &str, bool)] = &[
            // Same /64: one key.
            ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", true),
            // Neighbouring /64s: different keys.
            ("2001:db8:1:2::1", "2001:db8:1:3::1", false),
            // Mapped and plain IPv4 are the same client.
            ("::ffff:1.2.3.4", "1.2.3.4", true),
            // IPv4 is keyed per address.
            ("1.2.3.4", "1.2.3.5", false),
            // IPv4 keys never collide with the IPv6 /64 that holds small values (`::/64`).
            ("0.0.0.0", "::1", false),
            ("0.0.0.1", "::", false),
        ];
        for &(a, b, same) in cases {
            assert_eq!(key(a) == key(b), same, "{a} vs {b}");
        }
        assert_eq!(key("1.2.3.4"), 0xffff_0102_0304);
        assert_eq!(
            key("2001:db8:1:2:3:4:5:6"),
            0x2001_0db8_0001_0002_u128 << 64
        );
    }
}
