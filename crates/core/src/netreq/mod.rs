//! Parsing of `network create` input: a [`NetworkRequest`] holds the raw strings a
//! front end received; [`NetworkRequest::validate`] turns them into a [`Network`] or
//! an `Error::Invalid` naming the field, the value and why.

use crate::model::{
    first_host, is_network_or_broadcast, parse_cidr, parse_ip, Driver, IpvlanMode, MacvlanMode,
    Network, SubnetConfig,
};
use crate::name::{IfName, NetworkName};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

fn parse_mode<T: for<'de> Deserialize<'de>>(field: &str, v: &str, allowed: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(v.to_string()))
        .map_err(|_| Error::invalid(field, v, format!("unknown mode; use one of {allowed}")))
}

/// Raw input of `network create`, as any front end received it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkRequest {
    /// `NAME`.
    pub name: String,
    /// `--driver`, default bridge.
    pub driver: Option<String>,
    /// `--subnet`, repeatable.
    pub subnets: Vec<String>,
    /// `--gateway`, repeatable; each matched to the subnet containing it.
    pub gateways: Vec<String>,
    /// `--ip-range`, repeatable; each matched to the subnet containing it.
    pub ip_ranges: Vec<String>,
    /// `--aux-address NAME=IP`, repeatable.
    pub aux_addresses: Vec<String>,
    /// `--internal`.
    pub internal: bool,
    /// `--ipv6`.
    pub ipv6: bool,
    /// `--label k=v`.
    pub labels: Vec<String>,
    /// `-o k=v`.
    pub options: Vec<String>,
}

/// Options `-o` accepts.
pub const KNOWN_OPTIONS: &[&str] = &[
    "parent",
    "macvlan_mode",
    "ipvlan_mode",
    "mtu",
    "host_access",
    "snat_source",
    "bridge_name",
];

fn split_kv<'a>(field: &str, s: &'a str) -> Result<(&'a str, &'a str)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => Err(Error::invalid(field, s, "expected KEY=VALUE")),
    }
}

impl NetworkRequest {
    /// Checks everything that can be checked without the store or the kernel and
    /// returns the network to record. `subnets` may still be empty (pool allocation
    /// happens in the engine); `id` and `created` are filled in by the caller.
    pub fn validate(&self, id: String, created: u64) -> Result<Network> {
        let name = NetworkName::new(&self.name)?;
        if matches!(name.as_str(), "host" | "none") {
            return Err(Error::invalid(
                "network name",
                name.as_str(),
                "is reserved: `--network host` and `--network none` mean no lanyard network",
            ));
        }
        let driver: Driver = self.driver.as_deref().unwrap_or("bridge").parse()?;

        let mut options = BTreeMap::new();
        for o in &self.options {
            let (k, v) = split_kv("--opt", o)?;
            if !KNOWN_OPTIONS.contains(&k) {
                return Err(Error::invalid(
                    "--opt",
                    o,
                    format!(
                        "unknown option {k:?}; known options: {}",
                        KNOWN_OPTIONS.join(", ")
                    ),
                ));
            }
            options.insert(k.to_string(), v.to_string());
        }
        let mut labels = BTreeMap::new();
        for l in &self.labels {
            let (k, v) = split_kv("--label", l)?;
            labels.insert(k.to_string(), v.to_string());
        }

        let parent = match options.get("parent") {
            Some(p) => Some(IfName::parse_user("-o parent", p)?),
            None => None,
        };
        if driver.needs_parent() && parent.is_none() {
            return Err(Error::invalid(
                "-o parent",
                "",
                format!("the {driver} driver needs a parent interface: add -o parent=eth0"),
            ));
        }
        if !driver.needs_parent() && parent.is_some() {
            return Err(Error::invalid(
                "-o parent",
                options["parent"].clone(),
                format!("the {driver} driver takes no parent interface"),
            ));
        }
        let macvlan_mode = match (driver, options.get("macvlan_mode")) {
            (Driver::Macvlan, Some(m)) => Some(parse_mode(
                "-o macvlan_mode",
                m,
                "bridge, private, vepa, passthru",
            )?),
            (Driver::Macvlan, None) => Some(MacvlanMode::Bridge),
            (_, Some(m)) => {
                return Err(Error::invalid(
                    "-o macvlan_mode",
                    m,
                    format!("only for the macvlan driver, not {driver}"),
                ))
            }
            _ => None,
        };
        let ipvlan_mode = match (driver, options.get("ipvlan_mode")) {
            (Driver::Ipvlan, Some(m)) => Some(parse_mode("-o ipvlan_mode", m, "l2, l3, l3s")?),
            (Driver::Ipvlan, None) => Some(IpvlanMode::L2),
            (_, Some(m)) => {
                return Err(Error::invalid(
                    "-o ipvlan_mode",
                    m,
                    format!("only for the ipvlan driver, not {driver}"),
                ))
            }
            _ => None,
        };
        let mtu = match options.get("mtu") {
            Some(m) => {
                let v: u32 = m
                    .parse()
                    .map_err(|_| Error::invalid("-o mtu", m, "not a number"))?;
                if !(68..=65535).contains(&v) {
                    return Err(Error::invalid("-o mtu", m, "must be between 68 and 65535"));
                }
                Some(v)
            }
            None => None,
        };
        // Host access needs a shim beside the endpoints: macvlan bridge mode or ipvlan.
        let shim_possible = matches!(macvlan_mode, Some(MacvlanMode::Bridge))
            || matches!(ipvlan_mode, Some(IpvlanMode::L2));
        let host_access = match options.get("host_access").map(String::as_str) {
            None => shim_possible,
            Some("on" | "true" | "1") if shim_possible => true,
            Some("on" | "true" | "1") => {
                return Err(Error::invalid(
                    "-o host_access",
                    "on",
                    "needs macvlan_mode=bridge or ipvlan_mode=l2 (other modes keep the host out by design)",
                ))
            }
            Some("off" | "false" | "0") => false,
            Some(v) => return Err(Error::invalid("-o host_access", v, "use on or off")),
        };
        let snat_source = match options.get("snat_source") {
            Some(s) if driver == Driver::Bridge => Some(parse_ip("-o snat_source", s)?),
            Some(s) => {
                return Err(Error::invalid(
                    "-o snat_source",
                    s,
                    "only bridge networks are NATed",
                ))
            }
            None => None,
        };
        let bridge = match (driver, options.get("bridge_name")) {
            (Driver::Bridge, Some(b)) => Some(IfName::parse_user("-o bridge_name", b)?),
            (Driver::Bridge, None) => {
                Some(IfName::new(&format!("lyb-{}", &id[..11.min(id.len())]))?)
            }
            (_, Some(b)) => {
                return Err(Error::invalid(
                    "-o bridge_name",
                    b,
                    "only for the bridge driver",
                ))
            }
            _ => None,
        };

        if !driver.has_ipam() {
            for (field, list) in [
                ("--subnet", &self.subnets),
                ("--gateway", &self.gateways),
                ("--ip-range", &self.ip_ranges),
                ("--aux-address", &self.aux_addresses),
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

        let mut subnets: Vec<SubnetConfig> = Vec::new();
        for s in &self.subnets {
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
        let find = |field: &str,
                    v: &str,
                    addr: IpAddr,
                    subnets: &mut Vec<SubnetConfig>|
         -> Result<usize> {
            subnets
                .iter()
                .position(|c| c.subnet.contains(&addr))
                .ok_or_else(|| {
                    Error::invalid(
                        field,
                        v,
                        if subnets.is_empty() {
                            "needs a --subnet to belong to".to_string()
                        } else {
                            format!(
                                "is outside every --subnet ({})",
                                subnets
                                    .iter()
                                    .map(|c| c.subnet.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        },
                    )
                })
        };
        for g in &self.gateways {
            let addr = parse_ip("--gateway", g)?;
            let i = find("--gateway", g, addr, &mut subnets)?;
            let c = &mut subnets[i];
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
        }
        for r in &self.ip_ranges {
            let range = parse_cidr("--ip-range", r)?;
            let i = subnets
                .iter()
                .position(|c| c.subnet.contains(&range))
                .ok_or_else(|| Error::invalid("--ip-range", r, "is not inside any --subnet"))?;
            if subnets[i].ip_range.is_some() {
                return Err(Error::invalid(
                    "--ip-range",
                    r,
                    format!("subnet {} already has an ip-range", subnets[i].subnet),
                ));
            }
            subnets[i].ip_range = Some(range);
        }
        for a in &self.aux_addresses {
            let (k, v) = split_kv("--aux-address", a)?;
            let addr = parse_ip("--aux-address", v)?;
            let i = find("--aux-address", a, addr, &mut subnets)?;
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
        }
        let has_v6 = subnets.iter().any(|c| c.subnet.addr().is_ipv6());
        if has_v6 && !self.ipv6 {
            return Err(Error::invalid(
                "--subnet",
                subnets
                    .iter()
                    .find(|c| c.subnet.addr().is_ipv6())
                    .map(|c| c.subnet.to_string())
                    .unwrap_or_default(),
                "is IPv6; add --ipv6",
            ));
        }
        for c in &mut subnets {
            if c.gateway.is_none() {
                c.gateway = first_host(&c.subnet);
            }
        }
        for c in &subnets {
            check_room(c)?;
        }
        if let (Some(m), true) = (mtu, self.ipv6) {
            if m < 1280 {
                return Err(Error::invalid(
                    "-o mtu",
                    m,
                    "is below 1280, the least IPv6 allows (--ipv6 is on)",
                ));
            }
        }

        Ok(Network {
            id,
            name,
            driver,
            parent,
            macvlan_mode,
            ipvlan_mode,
            bridge,
            subnets,
            internal: self.internal,
            ipv6: self.ipv6,
            mtu,
            host_access: driver.needs_parent() && host_access,
            snat_source,
            labels,
            options,
            created,
            owns_vlan: false,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(f: impl FnOnce(&mut NetworkRequest)) -> Result<Network> {
        let mut r = NetworkRequest {
            name: "lan".into(),
            ..Default::default()
        };
        f(&mut r);
        r.validate(
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            0,
        )
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn reserved_names_loopback_parents_and_roomless_ranges_are_refused_naming_the_field() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        type Case = (&'static str, Box<dyn FnOnce(&mut NetworkRequest)>);
        let cases: Vec<Case> = vec![
            ("network name", Box::new(|r| r.name = "host".into())),
            ("network name", Box::new(|r| r.name = "none".into())),
            (
                "-o parent",
                Box::new(move |r| {
                    r.driver = Some("macvlan".into());
                    r.options = s(&["parent=lo"]);
                }),
            ),
            (
                "-o bridge_name",
                Box::new(move |r| r.options = s(&["bridge_name=all"])),
            ),
            (
                "-o bridge_name",
                Box::new(move |r| r.options = s(&["bridge_name=br%d"])),
            ),
            (
                "--subnet",
                Box::new(move |r| r.subnets = s(&["127.0.0.0/8"])),
            ),
            (
                "--subnet",
                Box::new(move |r| r.subnets = s(&["192.0.2.0/31"])),
            ),
            (
                "--subnet",
                Box::new(move |r| {
                    r.ipv6 = true;
                    r.subnets = s(&["::ffff:192.0.2.0/120"]);
                }),
            ),
            (
                "-o mtu",
                Box::new(move |r| {
                    r.ipv6 = true;
                    r.subnets = s(&["2001:db8::/64"]);
                    r.options = s(&["mtu=1000"]);
                }),
            ),
            (
                "--aux-address",
                Box::new(move |r| {
                    r.subnets = s(&["192.0.2.0/24"]);
                    r.aux_addresses = s(&["gw=192.0.2.1"]);
                }),
            ),
            (
                "--ip-range",
                Box::new(move |r| {
                    r.subnets = s(&["192.0.2.0/24"]);
                    r.gateways = s(&["192.0.2.1"]);
                    r.ip_ranges = s(&["192.0.2.1/32"]);
                }),
            ),
        ];
        for (field, f) in cases {
            let err = req(f).unwrap_err();
            let msg = err.to_string();
            assert_eq!(field_of(err), field, "{msg}");
        }
    }

    #[test]
    fn bad_cidr_names_subnet() {
        assert_eq!(
            field_of(req(|r| r.subnets = vec!["192.0.2.0/33".into()]).unwrap_err()),
            "--subnet"
        );
        assert_eq!(
            field_of(req(|r| r.subnets = vec!["192.0.2.1/24".into()]).unwrap_err()),
            "--subnet"
        );
    }

    #[test]
    fn gateway_outside_subnet_is_refused() {
        let e = req(|r| {
            r.subnets = vec!["192.0.2.0/24".into()];
            r.gateways = vec!["198.51.100.1".into()];
        })
        .unwrap_err();
        assert!(e.to_string().contains("outside every --subnet"), "{e}");
    }

    #[test]
    fn ip_range_and_aux_outside_subnet_are_refused() {
        let e = req(|r| {
            r.subnets = vec!["192.0.2.0/24".into()];
            r.ip_ranges = vec!["198.51.100.0/25".into()];
        });
        assert_eq!(field_of(e.unwrap_err()), "--ip-range");
        let e = req(|r| {
            r.subnets = vec!["192.0.2.0/24".into()];
            r.aux_addresses = vec!["host=198.51.100.9".into()];
        });
        assert_eq!(field_of(e.unwrap_err()), "--aux-address");
    }

    #[test]
    fn macvlan_without_parent_is_refused() {
        let e = req(|r| r.driver = Some("macvlan".into())).unwrap_err();
        assert_eq!(field_of(e), "-o parent");
    }

    #[test]
    fn unknown_driver_and_option_are_refused() {
        assert_eq!(
            field_of(req(|r| r.driver = Some("overlay".into())).unwrap_err()),
            "--driver"
        );
        assert_eq!(
            field_of(req(|r| r.options = vec!["colour=blue".into()]).unwrap_err()),
            "--opt"
        );
    }

    #[test]
    fn macvlan_defaults_to_bridge_mode_with_host_access() {
        let n = req(|r| {
            r.driver = Some("macvlan".into());
            r.options = vec!["parent=eth0".into()];
            r.subnets = vec!["192.0.2.0/24".into()];
        })
        .unwrap();
        assert_eq!(n.macvlan_mode, Some(MacvlanMode::Bridge));
        assert!(n.host_access);
        assert_eq!(n.subnets[0].gateway, Some("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn host_access_on_in_private_mode_is_refused() {
        let e = req(|r| {
            r.driver = Some("macvlan".into());
            r.options = vec![
                "parent=eth0".into(),
                "macvlan_mode=private".into(),
                "host_access=on".into(),
            ];
        });
        assert_eq!(field_of(e.unwrap_err()), "-o host_access");
    }

    #[test]
    fn ipv6_subnet_needs_ipv6_flag() {
        assert!(req(|r| r.subnets = vec!["2001:db8:1::/64".into()]).is_err());
        assert!(req(|r| {
            r.subnets = vec!["2001:db8:1::/64".into()];
            r.ipv6 = true;
        })
        .is_ok());
    }
}
