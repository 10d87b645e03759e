//! A DHCP lease: what the server gave (address, prefix, router, DNS, domain,
//! classless routes, times) and where it stands at a given moment: bound, renewing
//! from T1, rebinding from T2, expired at the lease's end (RFC 2131 §4.4.5).
//! Stored with the endpoint ([`crate::model::Endpoint::lease`]), so a restart asks
//! for the same address again. The protocol itself is `lanyard_dhcp`'s.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// `0xffffffff` seconds: a lease that never ends.
pub const INFINITE: u32 = u32::MAX;

/// One lease, as acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// `yiaddr`.
    pub address: Ipv4Addr,
    /// From option 1 (the subnet mask); 32 when none was given.
    pub prefix_len: u8,
    /// Option 3's first router, if any.
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Option 15.
    #[serde(default)]
    pub domain: Option<String>,
    /// Option 121 (RFC 3442): destination and next hop (0.0.0.0: on link).
    #[serde(default)]
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// Option 54: the server that gave it (renewals go there).
    pub server: Ipv4Addr,
    /// Option 51, in seconds.
    pub lease_secs: u32,
    /// T1 (option 58, else half the lease).
    pub t1_secs: u32,
    /// T2 (option 59, else 7/8 of the lease).
    pub t2_secs: u32,
    /// When the ACK came (Unix seconds); the times count from here.
    pub acquired_at: u64,
}

/// Where a lease stands (RFC 2131 §4.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before T1: nothing to do.
    Bound,
    /// From T1: ask the server that gave it (unicast).
    Renewing,
    /// From T2: ask any server (broadcast).
    Rebinding,
    /// The lease has ended: the address must go.
    Expired,
}

impl Lease {
    /// The address with its prefix, as it goes on the interface.
    pub fn net(&self) -> Ipv4Net {
        // prefix_len comes from a valid mask or is 32.
        Ipv4Net::new(self.address, self.prefix_len.min(32)).unwrap_or(Ipv4Net::from(self.address))
    }

    /// The default gateway: with classless routes (option 121) their 0.0.0.0/0 next
    /// hop, since RFC 3442 has a client ignore option 3 then; else option 3.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        if self.routes.is_empty() {
            return self.router;
        }
        self.routes
            .iter()
            .find(|(d, _)| d.prefix_len() == 0)
            .map(|(_, via)| *via)
            .filter(|via| !via.is_unspecified())
    }

    /// The classless routes other than the default one.
    pub fn static_routes(&self) -> impl Iterator<Item = &(Ipv4Net, Ipv4Addr)> {
        self.routes.iter().filter(|(d, _)| d.prefix_len() != 0)
    }

    /// Where the lease stands at `now` (Unix seconds).
    pub fn phase(&self, now: u64) -> Phase {
        if self.lease_secs == INFINITE {
            return Phase::Bound;
        }
        let age = now.saturating_sub(self.acquired_at);
        if age >= u64::from(self.lease_secs) {
            Phase::Expired
        } else if age >= u64::from(self.t2_secs) {
            Phase::Rebinding
        } else if age >= u64::from(self.t1_secs) {
            Phase::Renewing
        } else {
            Phase::Bound
        }
    }

    /// When (Unix seconds) the lease next needs attention: T1 while bound; while
    /// renewing or rebinding, halfway to the next mark (RFC 2131 §4.4.5's retry, at
    /// least 60 s apart unless the mark is nearer); the end while expired (now).
    /// None for an infinite lease.
    pub fn next_due(&self, now: u64) -> Option<u64> {
        if self.lease_secs == INFINITE {
            return None;
        }
        let at = |secs: u32| self.acquired_at + u64::from(secs);
        let retry = |mark: u64| {
            let left = mark.saturating_sub(now);
            now + (left / 2).max(60).min(left)
        };
        Some(match self.phase(now) {
            Phase::Bound => at(self.t1_secs),
            Phase::Renewing => retry(at(self.t2_secs)),
            Phase::Rebinding => retry(at(self.lease_secs)),
            Phase::Expired => now,
        })
    }

    /// A lease for tests: `address`/24 from `server` (also the router) for `secs`.
    #[doc(hidden)]
    pub fn test(address: Ipv4Addr, server: Ipv4Addr, secs: u32) -> Lease {
        let (t1_secs, t2_secs) = times(secs, None, None);
        Lease {
            address,
            prefix_len: 24,
            router: Some(server),
            dns: vec![],
            domain: None,
            routes: vec![],
            server,
            lease_secs: secs,
            t1_secs,
            t2_secs,
            acquired_at: 1000,
        }
    }
}

/// The network option that bounds a DHCP exchange (seconds, e.g. `4` or `0.5`).
pub const TIMEOUT_OPTION: &str = "dhcp_timeout";

/// The bound when the network does not set one.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// `-o dhcp_timeout=SECS` checked: from 0.1 to 60 seconds.
pub fn parse_timeout(raw: &str) -> crate::Result<std::time::Duration> {
    let bad = || {
        crate::Error::invalid(
            "-o dhcp_timeout",
            raw,
            "expected seconds from 0.1 to 60, e.g. 4 or 0.5",
        )
    };
    let secs: f64 = raw.parse().map_err(|_| bad())?;
    if !(0.1..=60.0).contains(&secs) {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// The network option that makes attach probe each IPv4 address with ARP first
/// (RFC 5227), in milliseconds of waiting for an answer; 0 or absent: no probe.
pub const ARP_PROBE_OPTION: &str = "arp_probe";

/// `-o arp_probe=MS` checked: 0 to 1000 milliseconds.
pub fn parse_arp_probe(raw: &str) -> crate::Result<std::time::Duration> {
    match raw.parse::<u64>() {
        Ok(ms) if ms <= 1000 => Ok(std::time::Duration::from_millis(ms)),
        _ => Err(crate::Error::invalid(
            "-o arp_probe",
            raw,
            "expected milliseconds to wait for an ARP answer, 0 (off) to 1000, e.g. 200",
        )),
    }
}

/// One endpoint's DHCP conversation: where it happens and who asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpWho {
    /// The endpoint's namespace.
    pub netns: std::path::PathBuf,
    /// Its interface there.
    pub ifname: crate::name::IfName,
    /// The endpoint's id: its ClientID (option 61) is derived from it.
    pub endpoint_id: String,
    /// Its name, sent as hostname (option 12).
    pub hostname: Option<String>,
    /// The whole exchange's bound.
    pub timeout: std::time::Duration,
    /// How often each message is sent within it.
    pub tries: u32,
}

/// What a renewal or rebinding got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extended {
    /// The lease, extended (or changed in its options).
    Ack(Lease),
    /// The server refused: the address must go; start over (INIT).
    Nak,
    /// No answer in time: try again later (the lease holds until it expires).
    NoAnswer,
}

/// T1 and T2 for a lease of `lease` seconds with the server's values if any, kept in
/// order (T1 ≤ T2 ≤ lease): RFC 2131's defaults are 0.5 and 0.875 of the lease.
pub fn times(lease: u32, t1: Option<u32>, t2: Option<u32>) -> (u32, u32) {
    if lease == INFINITE {
        return (INFINITE, INFINITE);
    }
    let t2 = t2
        .filter(|t| *t <= lease)
        .unwrap_or((u64::from(lease) * 7 / 8) as u32);
    let t1 = t1.filter(|t| *t <= t2).unwrap_or((lease / 2).min(t2));
    (t1, t2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_prefers_classless_routes_rfc3442() {
        let mut l = Lease::test(
            "192.0.2.50".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            60,
        );
        assert_eq!(l.gateway(), Some("192.0.2.1".parse().unwrap()));
        l.routes = vec![
            ("0.0.0.0/0".parse().unwrap(), "192.0.2.254".parse().unwrap()),
            (
                "198.51.100.0/24".parse().unwrap(),
                "192.0.2.9".parse().unwrap(),
            ),
        ];
        assert_eq!(l.gateway(), Some("192.0.2.254".parse().unwrap()));
        assert_eq!(l.static_routes().count(), 1);
        l.routes.truncate(0);
        l.routes.push((
            "198.51.100.0/24".parse().unwrap(),
            "192.0.2.9".parse().unwrap(),
        ));
        assert_eq!(l.gateway(), None, "option 121 without a default: none");
        let back: Lease = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn times_are_put_in_order() {
        assert_eq!(times(3600, None, None), (1800, 3150));
        assert_eq!(
            times(3600, Some(4000), None),
            (1800, 3150),
            "T1 past T2 ignored"
        );
        assert_eq!(times(3600, Some(100), Some(200)), (100, 200));
        assert_eq!(times(INFINITE, None, None), (INFINITE, INFINITE));
    }

    #[test]
    fn phases_bound_renewing_rebinding_expired() {
        let l = Lease::test(
            "192.0.2.50".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            800,
        );
        // acquired at 1000; T1 400, T2 700, end 800.
        assert_eq!(l.phase(1000), Phase::Bound);
        assert_eq!(l.next_due(1000), Some(1400));
        assert_eq!(l.phase(1400), Phase::Renewing);
        assert_eq!(l.next_due(1400), Some(1550), "halfway to T2");
        assert_eq!(l.phase(1700), Phase::Rebinding);
        assert_eq!(l.next_due(1750), Some(1800), "never past the end");
        assert_eq!(l.phase(1800), Phase::Expired);
        assert_eq!(l.next_due(1900), Some(1900));
        let mut forever = l.clone();
        forever.lease_secs = INFINITE;
        assert_eq!(forever.phase(u64::MAX), Phase::Bound);
        assert_eq!(forever.next_due(5), None);
    }
}
