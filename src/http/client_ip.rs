//! The client's IP address (DESIGN.md §7): the TCP peer, unless the peer is a configured trusted
//! proxy, in which case `X-Forwarded-For` is walked from the right past trusted proxies. Without
//! trusted proxies the header is ignored, so nobody can pick their own address for throttling.

use std::net::IpAddr;

use ipnet::IpNet;

pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut current = peer?;
    if !is_trusted(&current) {
        return Some(current);
    }
    let hops = forwarded_for.unwrap_or("").split(',').map(str::trim).rev();
    for hop in hops {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                current = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // A malformed entry ends the walk: trust stops where the chain is broken.
            Err(_) => break,
        }
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ignores_forwarding_headers_from_untrusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip(Some(ip("203.0.113.5")), Some("1.2.3.4"), &trusted),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), Some("1.2.3.4"), &[]),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn walks_past_trusted_proxies_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // A client-supplied spoofed first entry is ignored: the right-most untrusted hop wins.
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.2")),
                Some("6.6.6.6, 198.51.100.7, 10.0.0.9"),
                &trusted
            ),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), None, &trusted),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), Some("garbage, 10.0.0.3"), &trusted),
            Some(ip("10.0.0.3"))
        );
    }
}
