//! Address management for one subnet: what can be handed out (ip-range minus the
//! gateway, aux addresses, network and broadcast addresses), next-fit allocation with
//! a stored cursor (O(1) amortized: each address is passed over at most once per
//! wrap, never a scan over every taken address), and static requests honoured or
//! refused with the reason.

use crate::model::{is_network_or_broadcast, SubnetConfig};
use crate::store::Tx;
use crate::{Error, Result};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most candidates one allocation looks at before it gives up (IPv6 subnets are
/// too large to walk; a /64 with 2^16 consecutive taken addresses is not a real case).
pub const MAX_PROBES: u128 = 1 << 17;

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// Why `addr` can never be handed out in `sc`, if it can't.
pub fn reserved_reason(sc: &SubnetConfig, addr: IpAddr) -> Option<String> {
    if !sc.subnet.contains(&addr) {
        return Some(format!("is outside subnet {}", sc.subnet));
    }
    if is_network_or_broadcast(&sc.subnet, addr) {
        return Some(format!(
            "is the network or broadcast address of {}",
            sc.subnet
        ));
    }
    if sc.gateway == Some(addr) {
        return Some(format!("is the gateway of {}", sc.subnet));
    }
    if let Some((name, _)) = sc.aux_addresses.iter().find(|(_, a)| **a == addr) {
        return Some(format!("is reserved as aux address {name:?}"));
    }
    None
}

/// Inclusive bounds of the allocatable range, as integers.
fn bounds(sc: &SubnetConfig) -> (u128, u128) {
    let r: IpNet = sc.ip_range.unwrap_or(sc.subnet);
    (to_u128(r.network()), to_u128(r.broadcast()))
}

/// Hands out the next free address of `sc` in `network_id` to `owner`, and records it.
pub fn allocate(
    tx: &mut dyn Tx,
    network_id: &str,
    sc: &SubnetConfig,
    owner: &str,
) -> Result<IpAddr> {
    allocate_excluding(tx, network_id, sc, owner, &[])
}

/// [`allocate`], skipping `exclude`: addresses in use outside lanyard's records (the
/// host's own addresses on the parent LAN).
pub fn allocate_excluding(
    tx: &mut dyn Tx,
    network_id: &str,
    sc: &SubnetConfig,
    owner: &str,
    exclude: &[IpAddr],
) -> Result<IpAddr> {
    let v4 = sc.subnet.addr().is_ipv4();
    let (lo, hi) = bounds(sc);
    let size = hi - lo + 1;
    let start = match tx.cursor(network_id, &sc.subnet)? {
        Some(c) if (lo..=hi).contains(&to_u128(c)) => to_u128(c),
        _ => hi, // so the first candidate is `lo`
    };
    let probes = size.min(MAX_PROBES);
    let mut cand = start;
    let mut candidates = (0..probes).filter_map(|_| {
        cand = if cand >= hi { lo } else { cand + 1 };
        let addr = from_u128(v4, cand);
        (reserved_reason(sc, addr).is_none() && !exclude.contains(&addr)).then_some(addr)
    });
    if let Some(addr) = tx.first_free_address(network_id, &mut candidates)? {
        tx.take_address(network_id, addr, owner)?;
        tx.set_cursor(network_id, &sc.subnet, addr)?;
        return Ok(addr);
    }
    Err(Error::Conflict(format!(
        "no free address in {}{} (looked at {probes} addresses)",
        sc.subnet,
        sc.ip_range
            .map(|r| format!(" ip-range {r}"))
            .unwrap_or_default()
    )))
}

/// Records a static request (`--ip`), or says why it can't be had.
pub fn reserve(
    tx: &mut dyn Tx,
    network_id: &str,
    sc: &SubnetConfig,
    field: &str,
    addr: IpAddr,
    owner: &str,
) -> Result<()> {
    reserve_excluding(tx, network_id, sc, field, addr, owner, &[])
}

/// [`reserve`], refusing `exclude` (the host's own addresses) too.
#[allow(clippy::too_many_arguments)]
pub fn reserve_excluding(
    tx: &mut dyn Tx,
    network_id: &str,
    sc: &SubnetConfig,
    field: &str,
    addr: IpAddr,
    owner: &str,
    exclude: &[IpAddr],
) -> Result<()> {
    if let Some(why) = reserved_reason(sc, addr) {
        return Err(Error::invalid(field, addr, why));
    }
    if exclude.contains(&addr) {
        return Err(Error::Conflict(format!(
            "{field} {addr}: that is the host's own address"
        )));
    }
    if let Some(holder) = tx.address_owner(network_id, addr)? {
        // A reservation's owner is `reserved:…` (lanyard-engine's reserve.rs).
        let by = if holder.starts_with("reserved:") {
            "a Docker endpoint being created (reserved by RequestAddress; `lanyard gc` \
             frees it if no endpoint claims it within 10 minutes)"
                .to_string()
        } else {
            format!("endpoint {}", &holder[..12.min(holder.len())])
        };
        return Err(Error::Conflict(format!(
            "{field} {addr}: address is already in use by {by}"
        )));
    }
    tx.take_address(network_id, addr, owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mem::MemStore;
    use crate::store::Store;
    use std::collections::BTreeMap;

    fn sc(subnet: &str, range: Option<&str>) -> SubnetConfig {
        let subnet: IpNet = subnet.parse().unwrap();
        SubnetConfig {
            subnet,
            gateway: crate::model::first_host(&subnet),
            ip_range: range.map(|r| r.parse().unwrap()),
            aux_addresses: BTreeMap::from([("printer".to_string(), "192.0.2.3".parse().unwrap())]),
        }
    }

    fn alloc(s: &MemStore, c: &SubnetConfig, owner: &str) -> Result<IpAddr> {
        s.write(&mut |tx| allocate(tx, "n", c, owner))
    }

    #[test]
    fn skips_network_gateway_and_aux_addresses() {
        let s = MemStore::default();
        let c = sc("192.0.2.0/24", None);
        assert_eq!(alloc(&s, &c, "a").unwrap().to_string(), "192.0.2.2");
        assert_eq!(alloc(&s, &c, "b").unwrap().to_string(), "192.0.2.4");
    }

    #[test]
    fn honours_ip_range_and_runs_out_with_a_clear_error() {
        let s = MemStore::default();
        let c = sc("192.0.2.0/24", Some("192.0.2.252/30"));
        let got: Vec<String> = (0..3)
            .map(|i| alloc(&s, &c, &i.to_string()).unwrap().to_string())
            .collect();
        assert_eq!(got, ["192.0.2.252", "192.0.2.253", "192.0.2.254"]);
        let e = alloc(&s, &c, "x").unwrap_err();
        assert!(e.to_string().contains("no free address"), "{e}");
    }

    #[test]
    fn released_addresses_are_reused_after_wrap() {
        let s = MemStore::default();
        let c = sc("198.51.100.0/29", None); // hosts .1-.6, .1 gateway
        let mut all = vec![];
        while let Ok(a) = alloc(&s, &c, &format!("o{}", all.len())) {
            all.push(a);
        }
        assert_eq!(all.len(), 5);
        s.write(&mut |tx| tx.release_addresses("o1")).unwrap();
        assert_eq!(alloc(&s, &c, "x").unwrap(), all[1]);
    }

    #[test]
    fn static_request_refused_with_reason() {
        let s = MemStore::default();
        let c = sc("192.0.2.0/24", None);
        let e = s
            .write(&mut |tx| reserve(tx, "n", &c, "--ip", "192.0.2.1".parse().unwrap(), "a"))
            .unwrap_err();
        assert!(e.to_string().contains("gateway"), "{e}");
        let e = s
            .write(&mut |tx| reserve(tx, "n", &c, "--ip", "192.0.2.3".parse().unwrap(), "a"))
            .unwrap_err();
        assert!(e.to_string().contains("printer"), "{e}");
        s.write(&mut |tx| reserve(tx, "n", &c, "--ip", "192.0.2.9".parse().unwrap(), "a"))
            .unwrap();
        let e = s
            .write(&mut |tx| reserve(tx, "n", &c, "--ip", "192.0.2.9".parse().unwrap(), "b"))
            .unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        // The allocator never hands out the static one.
        for i in 0..20 {
            assert_ne!(
                alloc(&s, &c, &format!("d{i}")).unwrap().to_string(),
                "192.0.2.9"
            );
        }
    }

    #[test]
    fn the_hosts_own_address_is_never_handed_out() {
        let s = MemStore::default();
        let c = sc("192.0.2.0/24", None);
        let host: IpAddr = "192.0.2.2".parse().unwrap();
        let got = s
            .write(&mut |tx| allocate_excluding(tx, "n", &c, "a", &[host]))
            .unwrap();
        assert_eq!(got.to_string(), "192.0.2.4");
        let e = s
            .write(&mut |tx| reserve_excluding(tx, "n", &c, "--ip", host, "b", &[host]))
            .unwrap_err();
        assert!(e.to_string().contains("host's own address"), "{e}");
    }

    #[test]
    fn ipv6_allocates_from_one() {
        let s = MemStore::default();
        let mut c = sc("2001:db8:1::/64", None);
        c.aux_addresses.clear();
        assert_eq!(alloc(&s, &c, "a").unwrap().to_string(), "2001:db8:1::2");
    }
}
