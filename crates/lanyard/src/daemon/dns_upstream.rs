//! Which upstream DNS servers the responder forwards to when a network names none:
//! the host's real servers from a resolv.conf, never a loopback stub (such as
//! systemd-resolved's 127.0.0.53) that an endpoint's namespace cannot reach.

use std::net::IpAddr;
use std::path::Path;

/// The `nameserver` addresses in resolv.conf text, in order; malformed lines skipped.
pub fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| a.split('%').next()?.parse().ok())
        .collect()
}

/// The non-loopback servers of `resolv` (normally /etc/resolv.conf); when it lists
/// only loopback stubs, those of `fallback` (systemd-resolved's real list,
/// /run/systemd/resolve/resolv.conf: `lanyard daemon --resolved-conf`).
pub fn host_upstreams(resolv: &Path, fallback: &Path) -> Vec<IpAddr> {
    let read = |p: &Path| std::fs::read_to_string(p).map(|t| parse_nameservers(&t));
    let real =
        |v: Vec<IpAddr>| -> Vec<IpAddr> { v.into_iter().filter(|a| !a.is_loopback()).collect() };
    match read(resolv).map(real) {
        Ok(v) if !v.is_empty() => v,
        _ => read(fallback).map(real).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameservers_skipping_junk() {
        let t = "# c\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver bad\nsearch x\n";
        let v = parse_nameservers(t);
        assert_eq!(
            v,
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn stub_resolv_falls_back_to_systemd_list() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, "nameserver 127.0.0.53\n").unwrap();
        std::fs::write(&b, "nameserver 198.51.100.7\n").unwrap();
        assert_eq!(
            host_upstreams(&a, &b),
            vec!["198.51.100.7".parse::<IpAddr>().unwrap()]
        );
        std::fs::write(&a, "nameserver 203.0.113.5\n").unwrap();
        assert_eq!(
            host_upstreams(&a, &b),
            vec!["203.0.113.5".parse::<IpAddr>().unwrap()]
        );
    }
}
