//! What the `-o` options say about a network's links, checked against its driver:
//! the parent interface, the macvlan/ipvlan mode, the MTU, host access (a shim),
//! the SNAT source and the bridge's name. An option that does not fit the driver
//! is refused, naming it.

use crate::model::{parse_ip, Driver, IpvlanMode, MacvlanMode};
use crate::name::IfName;
use crate::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The link settings of one network, parsed from its `-o` map.
#[derive(Debug, PartialEq)]
pub(super) struct Links {
    pub parent: Option<IfName>,
    pub macvlan_mode: Option<MacvlanMode>,
    pub ipvlan_mode: Option<IpvlanMode>,
    pub mtu: Option<u32>,
    /// Whether a shim gives the host access (only meaningful with a parent).
    pub host_access: bool,
    pub snat_source: Option<IpAddr>,
    pub bridge: Option<IfName>,
    /// Routed, not NATed: (IPv4, IPv6).
    pub routed: (bool, bool),
    /// The bridge is the host's own, used as it is.
    pub bridge_external: bool,
}

/// Parses the options in a fixed order (parent, modes, mtu, host access, SNAT,
/// bridge name), so the first bad one is always the same. `id` names the default
/// bridge (`lyb-` + its first 11 hex digits).
pub(super) fn parse(driver: Driver, options: &BTreeMap<String, String>, id: &str) -> Result<Links> {
    let parent = parse_parent(driver, options)?;
    let macvlan_mode = match (driver, options.get("macvlan_mode")) {
        (Driver::Macvlan, Some(m)) => Some(parse_mode(
            "-o macvlan_mode",
            m,
            "bridge, private, vepa, passthru",
        )?),
        (Driver::Macvlan, None) => Some(MacvlanMode::Bridge),
        (_, Some(m)) => return Err(only_for("-o macvlan_mode", m, "macvlan", driver)),
        _ => None,
    };
    let ipvlan_mode = match (driver, options.get("ipvlan_mode")) {
        (Driver::Ipvlan, Some(m)) => Some(parse_mode("-o ipvlan_mode", m, "l2, l3, l3s")?),
        (Driver::Ipvlan, None) => Some(IpvlanMode::L2),
        (_, Some(m)) => return Err(only_for("-o ipvlan_mode", m, "ipvlan", driver)),
        _ => None,
    };
    let mtu = options.get("mtu").map(|m| parse_mtu(m)).transpose()?;
    // Host access needs a shim beside the endpoints: macvlan bridge mode or ipvlan.
    let shim_possible = matches!(macvlan_mode, Some(MacvlanMode::Bridge))
        || matches!(ipvlan_mode, Some(IpvlanMode::L2));
    let host_access = parse_host_access(options.get("host_access"), shim_possible)?;
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
    let bridge_external = match options.get("bridge_external").map(String::as_str) {
        None | Some("false" | "off" | "0") => false,
        Some("true" | "on" | "1") if driver == Driver::Bridge => true,
        Some(v @ ("true" | "on" | "1")) => {
            return Err(only_for("-o bridge_external", v, "bridge", driver))
        }
        Some(v) => return Err(Error::invalid("-o bridge_external", v, "use true or false")),
    };
    if let (Some(a), Some(b)) = (options.get("bridge"), options.get("bridge_name")) {
        if a != b {
            return Err(Error::invalid(
                "-o bridge",
                a,
                format!("differs from -o bridge_name={b}; give one"),
            ));
        }
    }
    let bridge_opt = options.get("bridge_name").or_else(|| options.get("bridge"));
    if bridge_external && bridge_opt.is_none() {
        return Err(Error::invalid(
            "-o bridge_external",
            "true",
            "name the host's bridge: -o bridge=br0",
        ));
    }
    let bridge = match (driver, bridge_opt) {
        (Driver::Bridge, Some(b)) => Some(IfName::parse_user(
            if options.contains_key("bridge_name") {
                "-o bridge_name"
            } else {
                "-o bridge"
            },
            b,
        )?),
        (Driver::Bridge, None) => Some(IfName::new(&format!("lyb-{}", &id[..11.min(id.len())]))?),
        (_, Some(b)) => {
            return Err(Error::invalid(
                "-o bridge_name",
                b,
                "only for the bridge driver",
            ))
        }
        _ => None,
    };
    let routed = parse_gateway_modes(driver, options)?;
    if bridge_external {
        let nat = [
            ("-o snat_source", options.get("snat_source")),
            ("-o gateway_mode", options.get("gateway_mode")),
        ];
        if let Some((field, Some(v))) = nat.into_iter().find(|(_, v)| v.is_some()) {
            return Err(Error::invalid(
                field,
                v,
                "a network on the host's own bridge joins its LAN as it is: nothing is NATed or routed",
            ));
        }
    }
    if let (Some(s), true) = (snat_source, routed.0 || routed.1) {
        if (s.is_ipv4() && routed.0) || (s.is_ipv6() && routed.1) {
            return Err(Error::invalid(
                "-o snat_source",
                s,
                "the network is routed for this family (gateway_mode=routed): nothing is translated",
            ));
        }
    }
    Ok(Links {
        parent,
        macvlan_mode,
        ipvlan_mode,
        mtu,
        host_access: driver.needs_parent() && host_access,
        snat_source,
        bridge,
        routed,
        bridge_external,
    })
}

/// `-o gateway_mode=nat|routed` (both families), or Docker's per-family
/// `com.docker.network.bridge.gateway_mode_ipv4/ipv6` (which win for their family):
/// whether IPv4 and IPv6 are routed rather than NATed. Bridge networks only.
fn parse_gateway_modes(driver: Driver, options: &BTreeMap<String, String>) -> Result<(bool, bool)> {
    let mode = |field: &str, key: &str| -> Result<Option<bool>> {
        match options.get(key).map(String::as_str) {
            None => Ok(None),
            Some(v) if driver != Driver::Bridge => Err(only_for(field, v, "bridge", driver)),
            Some("routed") => Ok(Some(true)),
            Some("nat") => Ok(Some(false)),
            Some(v) => Err(Error::invalid(field, v, "use nat or routed")),
        }
    };
    let both = mode("-o gateway_mode", "gateway_mode")?.unwrap_or(false);
    let v4 = mode(
        "-o com.docker.network.bridge.gateway_mode_ipv4",
        "com.docker.network.bridge.gateway_mode_ipv4",
    )?;
    let v6 = mode(
        "-o com.docker.network.bridge.gateway_mode_ipv6",
        "com.docker.network.bridge.gateway_mode_ipv6",
    )?;
    Ok((v4.unwrap_or(both), v6.unwrap_or(both)))
}

/// `-o parent`: required by macvlan and ipvlan, refused by the others.
fn parse_parent(driver: Driver, options: &BTreeMap<String, String>) -> Result<Option<IfName>> {
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
    Ok(parent)
}

fn parse_mode<T: for<'de> Deserialize<'de>>(field: &str, v: &str, allowed: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(v.to_string()))
        .map_err(|_| Error::invalid(field, v, format!("unknown mode; use one of {allowed}")))
}

fn only_for(field: &str, v: &str, wanted: &str, driver: Driver) -> Error {
    Error::invalid(
        field,
        v,
        format!("only for the {wanted} driver, not {driver}"),
    )
}

/// `-o mtu`: 68 to 65535 (the least IPv6 allows is checked with the subnets).
fn parse_mtu(m: &str) -> Result<u32> {
    let v: u32 = m
        .parse()
        .map_err(|_| Error::invalid("-o mtu", m, "not a number"))?;
    if !(68..=65535).contains(&v) {
        return Err(Error::invalid("-o mtu", m, "must be between 68 and 65535"));
    }
    Ok(v)
}

/// `-o host_access`: on by default where a shim is possible, refused where not.
fn parse_host_access(v: Option<&String>, shim_possible: bool) -> Result<bool> {
    match v.map(String::as_str) {
        None => Ok(shim_possible),
        Some("on" | "true" | "1") if shim_possible => Ok(true),
        Some("on" | "true" | "1") => Err(Error::invalid(
            "-o host_access",
            "on",
            "needs macvlan_mode=bridge or ipvlan_mode=l2 (other modes keep the host out by design)",
        )),
        Some("off" | "false" | "0") => Ok(false),
        Some(v) => Err(Error::invalid("-o host_access", v, "use on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netreq::tests::field_of;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn links(driver: &str, opts: &[&str]) -> Result<Links> {
        let map = opts
            .iter()
            .map(|o| {
                let (k, v) = o.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        parse(driver.parse().unwrap(), &map, ID)
    }

    #[test]
    fn gateway_mode_sets_both_families_and_dockers_spelling_one() {
        let routed = |opts: &[&str]| links("bridge", opts).unwrap().routed;
        assert_eq!(routed(&[]), (false, false));
        assert_eq!(routed(&["gateway_mode=routed"]), (true, true));
        assert_eq!(
            routed(&["com.docker.network.bridge.gateway_mode_ipv4=routed"]),
            (true, false)
        );
        assert_eq!(
            routed(&[
                "gateway_mode=routed",
                "com.docker.network.bridge.gateway_mode_ipv6=nat"
            ]),
            (true, false)
        );
        // A v6 SNAT source beside a routed v4 is fine.
        assert!(links(
            "bridge",
            &[
                "com.docker.network.bridge.gateway_mode_ipv4=routed",
                "snat_source=2001:db8::9"
            ]
        )
        .is_ok());
    }

    #[test]
    fn every_bad_option_names_itself() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("macvlan", &[], "-o parent"),
            ("ipvlan", &[], "-o parent"),
            ("bridge", &["parent=eth0"], "-o parent"),
            ("macvlan", &["parent=lo"], "-o parent"),
            ("macvlan", &["parent=a/b"], "-o parent"),
            ("macvlan", &["parent=much-too-long-name0"], "-o parent"),
            (
                "macvlan",
                &["parent=eth0", "macvlan_mode=fast"],
                "-o macvlan_mode",
            ),
            ("bridge", &["macvlan_mode=bridge"], "-o macvlan_mode"),
            (
                "ipvlan",
                &["parent=eth0", "ipvlan_mode=l4"],
                "-o ipvlan_mode",
            ),
            (
                "macvlan",
                &["parent=eth0", "ipvlan_mode=l2"],
                "-o ipvlan_mode",
            ),
            ("bridge", &["mtu=big"], "-o mtu"),
            ("bridge", &["mtu=67"], "-o mtu"),
            ("bridge", &["mtu=65536"], "-o mtu"),
            ("bridge", &["mtu=-1"], "-o mtu"),
            (
                "macvlan",
                &["parent=eth0", "host_access=maybe"],
                "-o host_access",
            ),
            (
                "macvlan",
                &["parent=eth0", "macvlan_mode=private", "host_access=on"],
                "-o host_access",
            ),
            (
                "ipvlan",
                &["parent=eth0", "ipvlan_mode=l3", "host_access=1"],
                "-o host_access",
            ),
            ("bridge", &["snat_source=host"], "-o snat_source"),
            ("bridge", &["gateway_mode=direct"], "-o gateway_mode"),
            (
                "macvlan",
                &["parent=eth0", "gateway_mode=routed"],
                "-o gateway_mode",
            ),
            (
                "bridge",
                &["com.docker.network.bridge.gateway_mode_ipv6=nat-unprotected"],
                "-o com.docker.network.bridge.gateway_mode_ipv6",
            ),
            (
                "bridge",
                &["gateway_mode=routed", "snat_source=192.0.2.9"],
                "-o snat_source",
            ),
            (
                "macvlan",
                &["parent=eth0", "snat_source=192.0.2.1"],
                "-o snat_source",
            ),
            ("bridge", &["bridge_name=all"], "-o bridge_name"),
            ("bridge", &["bridge_name=br%d"], "-o bridge_name"),
            ("bridge", &["bridge_name=lo"], "-o bridge_name"),
            (
                "macvlan",
                &["parent=eth0", "bridge_name=br0"],
                "-o bridge_name",
            ),
        ];
        for (driver, opts, field) in cases {
            let e = links(driver, opts).unwrap_err();
            let msg = e.to_string();
            assert_eq!(field_of(e), *field, "{driver} {opts:?}: {msg}");
        }
    }

    #[test]
    fn defaults_follow_the_driver() {
        let m = links("macvlan", &["parent=eth0"]).unwrap();
        assert_eq!(m.macvlan_mode, Some(MacvlanMode::Bridge));
        assert!(m.host_access);
        let p = links("macvlan", &["parent=eth0", "macvlan_mode=private"]).unwrap();
        assert!(!p.host_access);
        let i = links("ipvlan", &["parent=eth0"]).unwrap();
        assert_eq!(i.ipvlan_mode, Some(IpvlanMode::L2));
        let b = links("bridge", &[]).unwrap();
        assert_eq!(b.bridge.unwrap().as_str(), "lyb-0123456789a");
        assert!(!b.host_access);
        assert_eq!(links("bridge", &["mtu=9000"]).unwrap().mtu, Some(9000));
    }
}
