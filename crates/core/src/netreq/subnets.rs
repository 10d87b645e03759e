//! The address options of `network create`: `--subnet`, `--gateway`, `--ip-range`
//! and `--aux-address`, each gateway, range and aux address matched to the subnet
//! that holds it. A subnet must be one endpoints can use (`crate::subnet::check`),
//! and every range must leave room for an endpoint.

use super::options::split_kv;
use super::NetworkRequest;
use crate::model::{
    first_host, is_network_or_broadcast, parse_cidr, parse_ip, Driver, SubnetConfig,
};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The subnets of `req`, with their gateways (the first host when none is given),
/// ranges and aux addresses. Empty when none is given: the engine picks from its pools.
pub(super) fn parse(req: &NetworkRequest, driver: Driver) -> Result<Vec<SubnetConfig>> {
    if !driver.has_ipam() {
        for (field, list) in [
            ("--subnet", &req.subnets),
            ("--gateway", &req.gateways),
            ("--ip-range", &req.ip_ranges),
            ("--aux-address", &req.aux_addresses),
        ] {
            if let Some(v) = list.first() {
                return Err(Error::invalid(
                    field,
                    v,
                    format!("the {driver} driver has no addresses to manage"),
                ));
            }
        }
    }
    let mut subnets = parse_subnets(&req.subnets)?;
    for g in &req.gateways {
        add_gateway(&mut subnets, g)?;
    }
    for r in &req.ip_ranges {
        add_ip_range(&mut subnets, r)?;
    }
    for a in &req.aux_addresses {
        add_aux_address(&mut subnets, a)?;
    }
    if let Some(c) = subnets.iter().find(|c| c.subnet.addr().is_ipv6()) {
        if !req.ipv6 {
            return Err(Error::invalid("--subnet", c.subnet, "is IPv6; add --ipv6"));
        }
    }
    for c in &mut subnets {
        if c.gateway.is_none() {
            c.gateway = first_host(&c.subnet);
        }
    }
    for c in &subnets {
        check_room(c)?;
    }
    Ok(subnets)
}

/// Each `--subnet`, usable and overlapping no other.
fn parse_subnets(raw: &[String]) -> Result<Vec<SubnetConfig>> {
    let mut subnets: Vec<SubnetConfig> = Vec::new();
    for s in raw {
        let subnet = parse_cidr("--subnet", s)?;
        crate::subnet::check("--subnet", s, &subnet)?;
        if let Some(o) = subnets
            .iter()
            .find(|c| c.subnet.contains(&subnet) || subnet.contains(&c.subnet))
        {
            return Err(Error::invalid(
                "--subnet",
                s,
                format!("overlaps --subnet {}", o.subnet),
            ));
        }
        subnets.push(SubnetConfig {
            subnet,
            gateway: None,
            ip_range: None,
            aux_addresses: BTreeMap::new(),
        });
    }
    Ok(subnets)
}

/// The index of the subnet holding `addr` (given as `v` for `field`).
fn holder(subnets: &[SubnetConfig], field: &str, v: &str, addr: IpAddr) -> Result<usize> {
    subnets
        .iter()
        .position(|c| c.subnet.contains(&addr))
        .ok_or_else(|| {
            let why = if subnets.is_empty() {
                "needs a --subnet to belong to".to_string()
            } else {
                let all: Vec<String> = subnets.iter().map(|c| c.subnet.to_string()).collect();
                format!("is outside every --subnet ({})", all.join(", "))
            };
            Error::invalid(field, v, why)
        })
}

/// One `--gateway`: one per subnet, not its network or broadcast address.
fn add_gateway(subnets: &mut [SubnetConfig], g: &str) -> Result<()> {
    let addr = parse_ip("--gateway", g)?;
    let c = &mut subnets[holder(subnets, "--gateway", g, addr)?];
    if c.gateway.is_some() {
        return Err(Error::invalid(
            "--gateway",
            g,
            format!("subnet {} already has a gateway", c.subnet),
        ));
    }
    if is_network_or_broadcast(&c.subnet, addr) {
        return Err(Error::invalid(
            "--gateway",
            g,
            format!("is the network or broadcast address of {}", c.subnet),
        ));
    }
    c.gateway = Some(addr);
    Ok(())
}

/// One `--ip-range`: inside a subnet, one per subnet.
fn add_ip_range(subnets: &mut [SubnetConfig], r: &str) -> Result<()> {
    let range = parse_cidr("--ip-range", r)?;
    let c = subnets
        .iter_mut()
        .find(|c| c.subnet.contains(&range))
        .ok_or_else(|| Error::invalid("--ip-range", r, "is not inside any --subnet"))?;
    if c.ip_range.is_some() {
        return Err(Error::invalid(
            "--ip-range",
            r,
            format!("subnet {} already has an ip-range", c.subnet),
        ));
    }
    c.ip_range = Some(range);
    Ok(())
}

/// One `--aux-address NAME=IP`: inside a subnet, each name once per subnet.
fn add_aux_address(subnets: &mut [SubnetConfig], a: &str) -> Result<()> {
    let (k, v) = split_kv("--aux-address", a)?;
    let addr = parse_ip("--aux-address", v)?;
    let i = holder(subnets, "--aux-address", a, addr)?;
    if subnets[i]
        .aux_addresses
        .insert(k.to_string(), addr)
        .is_some()
    {
        return Err(Error::invalid(
            "--aux-address",
            a,
            format!("name {k:?} given twice"),
        ));
    }
    Ok(())
}

/// An aux address may not be the gateway, and an ip-range must hold an address
/// for endpoints beside the gateway and aux addresses.
fn check_room(c: &SubnetConfig) -> Result<()> {
    if let Some((k, a)) = c.aux_addresses.iter().find(|(_, a)| Some(**a) == c.gateway) {
        return Err(Error::invalid(
            "--aux-address",
            format!("{k}={a}"),
            "is the subnet's gateway",
        ));
    }
    let Some(range) = c.ip_range else {
        return Ok(());
    };
    // Only a small range can be all taken; count up to a few addresses.
    let usable = range
        .hosts()
        .take(8)
        .filter(|a| {
            c.subnet.contains(a)
                && !is_network_or_broadcast(&c.subnet, *a)
                && Some(*a) != c.gateway
                && !c.aux_addresses.values().any(|x| x == a)
        })
        .count();
    if usable == 0 {
        return Err(Error::invalid(
            "--ip-range",
            range,
            "holds no address for endpoints (only the gateway, aux addresses, or the network/broadcast address)",
        ));
    }
    Ok(())
}
