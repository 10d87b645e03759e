//! What a subnet given to `--subnet` must be: a range of unicast addresses that
//! endpoints on a LAN or a bridge can use, with room for at least one endpoint beside
//! the gateway. Refused, each with the reason named: loopback, multicast,
//! link-local, "this network" (0.0.0.0/8), the reserved 240.0.0.0/4 and the
//! broadcast address, the unspecified and loopback IPv6 addresses, IPv4-mapped IPv6,
//! and subnets too small (IPv4 /31 and /32, IPv6 /127 and /128).

use crate::{Error, Result};
use ipnet::IpNet;
use std::net::IpAddr;

/// Checks `subnet` (as given: `raw`) for `field`.
pub fn check(field: &str, raw: &str, subnet: &IpNet) -> Result<()> {
    let why = match subnet.network() {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_loopback() {
                Some("is loopback (127.0.0.0/8)")
            } else if o[0] >= 224 && o[0] <= 239 {
                Some("is multicast (224.0.0.0/4)")
            } else if a.is_link_local() {
                Some("is link-local (169.254.0.0/16)")
            } else if o[0] == 0 {
                Some("is \"this network\" (0.0.0.0/8)")
            } else if o[0] >= 240 {
                Some("is reserved (240.0.0.0/4) or the broadcast address")
            } else if subnet.prefix_len() < 8 {
                Some("is wider than a /8 and spans special ranges")
            } else if subnet.prefix_len() >= 31 {
                Some("has no room: an IPv4 subnet needs at least a /30 (network, gateway, endpoint, broadcast)")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let seg = a.segments();
            if a.is_unspecified() || a.is_loopback() {
                Some("is the unspecified or loopback address (::, ::1)")
            } else if seg[0] & 0xff00 == 0xff00 {
                Some("is multicast (ff00::/8)")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("is link-local (fe80::/10); every link has its own already")
            } else if seg[..5] == [0; 5] && seg[5] == 0xffff {
                Some("is IPv4-mapped (::ffff:0:0/96); use the IPv4 subnet")
            } else if subnet.prefix_len() < 8 {
                Some("is wider than a /8 and spans special ranges")
            } else if subnet.prefix_len() >= 127 {
                Some("has no room: an IPv6 subnet needs at least a /126")
            } else {
                None
            }
        }
    };
    match why {
        Some(why) => Err(Error::invalid(field, raw, why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_and_roomless_subnets_are_refused_naming_why() {
        for (bad, why) in [
            ("127.0.0.0/8", "loopback"),
            ("127.1.0.0/16", "loopback"),
            ("224.0.0.0/24", "multicast"),
            ("169.254.0.0/16", "link-local"),
            ("0.0.0.0/8", "this network"),
            ("0.1.0.0/16", "this network"),
            ("240.0.0.0/24", "reserved"),
            ("255.255.255.255/32", "reserved"),
            ("0.0.0.0/0", "this network"),
            ("192.0.2.0/31", "no room"),
            ("192.0.2.7/32", "no room"),
            ("::1/128", "loopback"),
            ("::/0", "unspecified"),
            ("ff02::/16", "multicast"),
            ("fe80::/64", "link-local"),
            ("::ffff:192.0.2.0/120", "IPv4-mapped"),
            ("2001:db8::/127", "no room"),
            ("2001:db8::1/128", "no room"),
        ] {
            let n: IpNet = bad.parse().unwrap();
            let err = check("--subnet", bad, &n.trunc()).unwrap_err().to_string();
            assert!(
                err.contains("--subnet") && err.contains(why),
                "{bad}: {err}"
            );
        }
        for good in [
            "192.0.2.0/24",
            "10.0.0.0/8",
            "198.51.100.0/30",
            "2001:db8::/64",
            "2001:db8::/126",
            "fd00::/8",
        ] {
            let n: IpNet = good.parse().unwrap();
            check("--subnet", good, &n).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }
}
