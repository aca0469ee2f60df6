//! Proxy headers: who the client is when a trusted reverse proxy (nginx, a load balancer) connected.
//!
//! Behind a proxy the peer address is the proxy's and the scheme is plain `http` even when the client
//! used TLS, so apps would build `http://` redirects and log the proxy as the client. A proxy on the
//! trusted list reports the real ones in `X-Forwarded-For` and `X-Forwarded-Proto`; percore applies them
//! exactly as uvicorn's `ProxyHeadersMiddleware` does (the same defaults: on, trusting `127.0.0.1,::1`,
//! or `FORWARDED_ALLOW_IPS`), so an app moved from uvicorn sees the same `client` and `scheme`:
//!
//! - only when the *peer* is trusted (an IP or network on the list, or `*`); otherwise headers are
//!   ignored, so a client cannot claim another address by sending them itself;
//! - `X-Forwarded-Proto` (the last one if repeated) sets the scheme when it is `http`, `https`, `ws` or
//!   `wss`, anything else is ignored;
//! - `X-Forwarded-For` (repeated headers joined): each proxy appends the address it saw, so the list is
//!   read from the right and the first host that is *not* trusted is the client; if all are trusted,
//!   the leftmost. `host:port` and `[v6]:port` entries give a port, bare hosts port 0. An empty value
//!   leaves the peer as the client.
//!
//! Invariant: nothing here allocates unless a trusted peer sent one of the two headers.

use std::fmt;
use std::net::IpAddr;

use http::HeaderMap;

/// The `--forwarded-allow-ips` list: who may set the proxy headers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrustedProxies {
    everyone: bool,
    addresses: Vec<IpAddr>,
    networks: Vec<(IpAddr, u8)>,
    /// Entries that are not IP addresses: they can only match `X-Forwarded-For` entries spelled the same.
    literals: Vec<String>,
}

/// A `--forwarded-allow-ips` entry that looks like a network but is not one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadNetwork {
    /// The entry as given.
    pub entry: String,
}

impl fmt::Display for BadNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--forwarded-allow-ips: {:?} is not a network (expected e.g. 10.0.0.0/8 or fd00::/8)",
            self.entry
        )
    }
}

impl std::error::Error for BadNetwork {}

impl TrustedProxies {
    /// Comma-separated IPs, networks (`10.0.0.0/8`), other literals, or `*` (the whole value, as uvicorn
    /// reads it; inside a list `*` is just a literal) for everyone.
    pub fn parse(list: &str) -> Result<Self, BadNetwork> {
        let mut trusted = TrustedProxies::default();
        if list.trim() == "*" {
            trusted.everyone = true;
            return Ok(trusted);
        }
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Some((address, bits)) = entry.split_once('/') {
                let network = address
                    .parse::<IpAddr>()
                    .ok()
                    .zip(bits.parse::<u8>().ok())
                    .and_then(|(ip, bits)| canonical_network(ip, bits))
                    .ok_or_else(|| BadNetwork {
                        entry: entry.to_owned(),
                    })?;
                trusted.networks.push(network);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                trusted.addresses.push(ip);
            } else {
                trusted.literals.push(entry.to_owned());
            }
        }
        Ok(trusted)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.everyone
            || self.addresses.iter().any(|a| a.to_canonical() == ip)
            || self
                .networks
                .iter()
                .any(|(network, bits)| in_network(ip, *network, *bits))
    }

    fn trusts_host(&self, host: &str) -> bool {
        match host.parse::<IpAddr>() {
            Ok(ip) => self.trusts(ip),
            Err(_) => self.everyone || self.literals.iter().any(|l| l == host),
        }
    }

    /// The client named by an `X-Forwarded-For` value, as uvicorn picks it; None for an empty value.
    pub fn client_from(&self, forwarded_for: &str) -> Option<(String, u16)> {
        let hosts: Vec<&str> = forwarded_for.split(',').map(str::trim).collect();
        let chosen = if self.everyone {
            host_and_port(hosts[0])
        } else {
            hosts
                .iter()
                .rev()
                .map(|entry| host_and_port(entry))
                .find(|(host, _)| !self.trusts_host(host))
                .unwrap_or_else(|| host_and_port(hosts[0]))
        };
        (!chosen.0.is_empty()).then(|| (chosen.0.to_owned(), chosen.1))
    }
}

/// A network with its prefix length checked, stored the way `in_network` compares it: an IPv4-mapped
/// IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network it covers (`10.0.0.0/8`), since peers are
/// compared in canonical form; None when the prefix is too long (or too short to be IPv4-mapped only).
fn canonical_network(ip: IpAddr, bits: u8) -> Option<(IpAddr, u8)> {
    match (ip, ip.to_canonical()) {
        (IpAddr::V4(_), _) => (bits <= 32).then_some((ip, bits)),
        (IpAddr::V6(_), IpAddr::V4(mapped)) => (96..=128)
            .contains(&bits)
            .then(|| (IpAddr::V4(mapped), bits - 96)),
        (IpAddr::V6(_), _) => (bits <= 128).then_some((ip, bits)),
    }
}

fn in_network(ip: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

/// `1.2.3.4:80` → (`1.2.3.4`, 80), `[::1]:80` → (`::1`, 80), anything else → (itself, 0): malformed
/// values keep their spelling so they are never mistaken for a trusted address.
fn host_and_port(entry: &str) -> (&str, u16) {
    if let Some(rest) = entry.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return (entry, 0);
        };
        return match after.strip_prefix(':') {
            None if after.is_empty() => (host, 0),
            None => (entry, 0),
            Some(port) => (host, port.parse().unwrap_or(0)),
        };
    }
    match entry.split_once(':') {
        Some((host, port)) if !port.contains(':') => match port.parse() {
            Ok(port) => (host, port),
            Err(_) => (entry, 0),
        },
        _ => (entry, 0),
    }
}

/// What a trusted proxy said about the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// (host, port) of the client; the port is 0 when the proxy did not give one.
    pub client: Option<(String, u16)>,
    /// `http`, `https`, `ws` or `wss`, as sent.
    pub scheme: Option<&'static str>,
}

impl Forwarded {
    /// The proxy headers of a request from `peer`, if `trusted` lets that peer set them and it did. A peer
    /// without an address (a Unix socket) is trusted only by `*`, as under uvicorn.
    pub fn of(
        trusted: &TrustedProxies,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Option<Box<Forwarded>> {
        let proto = headers.get_all("x-forwarded-proto").iter().next_back();
        let mut for_values = headers.get_all("x-forwarded-for").iter().peekable();
        if (proto.is_none() && for_values.peek().is_none())
            || !peer.map_or(trusted.everyone, |p| trusted.trusts(p))
        {
            return None;
        }
        let scheme = proto.and_then(|value| {
            ["http", "https", "ws", "wss"]
                .into_iter()
                .find(|s| value.as_bytes().trim_ascii() == s.as_bytes())
        });
        let client = for_values.peek().is_some().then(|| {
            // Latin-1, as uvicorn decodes it: every byte is one character.
            let joined = for_values
                .map(|v| {
                    v.as_bytes()
                        .iter()
                        .map(|&b| char::from(b))
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join(", ");
            trusted.client_from(&joined)
        });
        Some(Box::new(Forwarded {
            client: client.flatten(),
            scheme,
        }))
    }

    /// The scheme for a WebSocket scope: `http`/`https` from the proxy become `ws`/`wss`.
    pub fn websocket_scheme(&self) -> Option<&'static str> {
        self.scheme.map(|s| match s {
            "http" | "ws" => "ws",
            _ => "wss",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn local() -> TrustedProxies {
        TrustedProxies::parse("127.0.0.1,::1").unwrap()
    }

    #[test]
    fn only_a_trusted_peer_may_set_client_and_scheme() {
        let sent = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let seen = Forwarded::of(&local(), Some("127.0.0.1".parse().unwrap()), &sent).unwrap();
        assert_eq!(seen.client, Some(("1.2.3.4".to_owned(), 0)));
        assert_eq!(seen.scheme, Some("https"));
        assert_eq!(seen.websocket_scheme(), Some("wss"));
        assert_eq!(
            Forwarded::of(&local(), Some("10.1.1.1".parse().unwrap()), &sent),
            None
        );
        // An IPv4 peer seen through a dual-stack socket is the same address.
        assert!(local().trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert_eq!(
            Forwarded::of(&local(), Some("127.0.0.1".parse().unwrap()), &headers(&[])),
            None
        );
    }

    #[test]
    fn a_unix_socket_peer_is_trusted_only_by_everyone() {
        let sent = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(Forwarded::of(&local(), None, &sent), None);
        let everyone = TrustedProxies::parse("*").unwrap();
        let seen = Forwarded::of(&everyone, None, &sent).unwrap();
        assert_eq!(seen.client, Some(("1.2.3.4".to_owned(), 0)));
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let trusted = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        assert_eq!(
            trusted.client_from("203.0.113.7, 198.51.100.2, 10.2.3.4"),
            Some(("198.51.100.2".to_owned(), 0))
        );
        // All trusted: the leftmost.
        assert_eq!(
            trusted.client_from("10.0.0.1, 10.0.0.2"),
            Some(("10.0.0.1".to_owned(), 0))
        );
        assert_eq!(
            TrustedProxies::parse("*")
                .unwrap()
                .client_from("1.1.1.1, 2.2.2.2"),
            Some(("1.1.1.1".to_owned(), 0))
        );
        assert_eq!(trusted.client_from(""), None);
        assert_eq!(
            trusted.client_from("[2001:db8::1]:4711"),
            Some(("2001:db8::1".to_owned(), 4711))
        );
        assert_eq!(
            trusted.client_from("192.0.2.1:8080"),
            Some(("192.0.2.1".to_owned(), 8080))
        );
        assert_eq!(
            trusted.client_from("unknown"),
            Some(("unknown".to_owned(), 0))
        );
    }

    #[test]
    fn repeated_headers_join_and_the_last_proto_wins() {
        let sent = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-proto", "http"),
        ]);
        let seen = Forwarded::of(&local(), Some("::1".parse().unwrap()), &sent).unwrap();
        assert_eq!(seen.client, Some(("198.51.100.2".to_owned(), 0)));
        assert_eq!(seen.scheme, Some("http"));
        // Bytes past ASCII are Latin-1 characters, as uvicorn decodes them.
        let mut latin1 = HeaderMap::new();
        latin1.insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        let seen = Forwarded::of(&local(), Some("::1".parse().unwrap()), &latin1).unwrap();
        assert_eq!(seen.client, Some(("caf\u{e9}".to_owned(), 0)));
        let odd = headers(&[("x-forwarded-proto", "gopher")]);
        let seen = Forwarded::of(&local(), Some("::1".parse().unwrap()), &odd).unwrap();
        assert_eq!((seen.client.clone(), seen.scheme), (None, None));
    }

    #[test]
    fn networks_match_by_prefix_and_bad_ones_are_errors() {
        let trusted = TrustedProxies::parse("192.168.0.0/16, fd00::/8").unwrap();
        assert!(trusted.trusts("192.168.44.1".parse().unwrap()));
        assert!(!trusted.trusts("192.169.0.1".parse().unwrap()));
        assert!(trusted.trusts("fd12::5".parse().unwrap()));
        assert!(!trusted.trusts("fe80::1".parse().unwrap()));
        assert!(TrustedProxies::parse("0.0.0.0/0")
            .unwrap()
            .trusts("8.8.8.8".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "fd00::/129",
            "nope/8",
            "::ffff:10.0.0.0/95",
        ] {
            assert_eq!(
                TrustedProxies::parse(bad),
                Err(BadNetwork {
                    entry: bad.to_owned()
                })
            );
        }
    }

    #[test]
    fn an_ipv4_mapped_network_covers_only_its_ipv4_addresses() {
        // Once compared as 10.0.0.0 with 104 bits, whose mask overflowed: every IPv4 peer was trusted.
        let mapped = TrustedProxies::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.trusts("10.9.8.7".parse().unwrap()));
        assert!(mapped.trusts("::ffff:10.9.8.7".parse().unwrap()));
        assert!(!mapped.trusts("203.0.113.7".parse().unwrap()));
        assert!(!mapped.trusts("fd00::1".parse().unwrap()));
    }

    #[test]
    fn a_star_inside_a_list_is_a_literal_as_in_uvicorn() {
        let listed = TrustedProxies::parse("127.0.0.1, *").unwrap();
        assert!(!listed.trusts("203.0.113.7".parse().unwrap()));
        assert!(TrustedProxies::parse(" * ")
            .unwrap()
            .trusts("203.0.113.7".parse().unwrap()));
    }
}
