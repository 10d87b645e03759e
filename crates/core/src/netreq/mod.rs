//! Parsing of `network create` input: a [`NetworkRequest`] holds the raw strings a
//! front end received; [`NetworkRequest::validate`] turns them into a [`Network`] or
//! an `Error::Invalid` naming the field, the value and why. One parser per option
//! group: `options` (the `-o` and `--label` lists), `driver` (what the options say
//! about the links, checked against the driver) and `subnets` (addresses).

mod driver;
mod options;
mod subnets;

pub use options::KNOWN_OPTIONS;

use crate::model::{Driver, IpamDriver, Network};
use crate::name::NetworkName;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

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
    /// `--ipam-driver`: `default` (lanyard's) or `dhcp` (the LAN's server).
    #[serde(default)]
    pub ipam_driver: Option<String>,
}

impl NetworkRequest {
    /// Checks everything that can be checked without the store or the kernel and
    /// returns the network to record. `subnets` may still be empty (pool allocation
    /// happens in the engine); `id` and `created` are filled in by the caller.
    pub fn validate(&self, id: String, created: u64) -> Result<Network> {
        let name = parse_name(&self.name)?;
        let driver: Driver = self.driver.as_deref().unwrap_or("bridge").parse()?;
        let options = options::parse_options(&self.options)?;
        let labels = options::parse_labels(&self.labels)?;
        let links = driver::parse(driver, &options, &id)?;
        let ipam = parse_ipam(self, driver, links.bridge_external, &options)?;
        if let Some(p) = options.get(crate::lease::ARP_PROBE_OPTION) {
            crate::lease::parse_arp_probe(p)?;
            if !driver.needs_parent() {
                return Err(Error::invalid(
                    "-o arp_probe",
                    p,
                    format!("probes the LAN of a macvlan or ipvlan network; this one is {driver}"),
                ));
            }
        }
        if let Some(d) = options.get(crate::dnsname::DNS_OPTION) {
            crate::dnsname::network_servers(d)?;
        }
        let subnets = match ipam {
            IpamDriver::Default => subnets::parse(self, driver)?,
            IpamDriver::Dhcp => vec![],
        };
        if let (Some(m), true) = (links.mtu, self.ipv6) {
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
            parent: links.parent,
            macvlan_mode: links.macvlan_mode,
            ipvlan_mode: links.ipvlan_mode,
            bridge: links.bridge,
            subnets,
            internal: self.internal,
            ipv6: self.ipv6,
            mtu: links.mtu,
            host_access: links.host_access,
            snat_source: links.snat_source,
            labels,
            options,
            created,
            owns_vlan: false,
            routed_v4: links.routed.0,
            routed_v6: links.routed.1,
            ipam,
            bridge_external: links.bridge_external,
        })
    }
}

/// `--ipam-driver`: `dhcp` only on the LAN (macvlan, ipvlan, a bridge network onto
/// the LAN's own bridge), and then without the address options (the LAN's server
/// decides).
fn parse_ipam(
    req: &NetworkRequest,
    driver: Driver,
    bridge_external: bool,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<IpamDriver> {
    let raw = req.ipam_driver.as_deref().unwrap_or("default");
    let timeout = options.get(crate::lease::TIMEOUT_OPTION);
    let ipam = match raw {
        "default" | "" => {
            if let Some(t) = timeout {
                return Err(Error::invalid(
                    "-o dhcp_timeout",
                    t,
                    "only goes with --ipam-driver dhcp",
                ));
            }
            return Ok(IpamDriver::Default);
        }
        "dhcp" => IpamDriver::Dhcp,
        _ => {
            return Err(Error::invalid(
                "--ipam-driver",
                raw,
                "unknown IPAM driver; known: default, dhcp",
            ))
        }
    };
    if !driver.needs_parent() && !bridge_external {
        return Err(Error::invalid(
            "--ipam-driver",
            raw,
            format!(
                "needs a network on the LAN (the LAN's server): macvlan, ipvlan, or a bridge \
                 network onto the LAN's bridge (-o bridge=BR -o bridge_external=true); this \
                 one is {driver}"
            ),
        ));
    }
    for (field, given) in [
        ("--subnet", &req.subnets),
        ("--gateway", &req.gateways),
        ("--ip-range", &req.ip_ranges),
        ("--aux-address", &req.aux_addresses),
    ] {
        if let Some(v) = given.first() {
            return Err(Error::invalid(
                field,
                v,
                "does not go with --ipam-driver dhcp: the LAN's DHCP server hands out the addresses",
            ));
        }
    }
    if let Some(t) = timeout {
        crate::lease::parse_timeout(t)?;
    }
    Ok(ipam)
}

/// The network's name; `host` and `none` are reserved.
fn parse_name(raw: &str) -> Result<NetworkName> {
    let name = NetworkName::new(raw)?;
    if matches!(name.as_str(), "host" | "none") {
        return Err(Error::invalid(
            "network name",
            name.as_str(),
            "is reserved: `--network host` and `--network none` mean no lanyard network",
        ));
    }
    Ok(name)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::MacvlanMode;

    pub(super) fn req(f: impl FnOnce(&mut NetworkRequest)) -> Result<Network> {
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

    pub(super) fn field_of(e: Error) -> String {
        match e {
            Error::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// Every field of a `network create`, one bad value each, written as its
    /// command line: the error names the field. (`driver.rs` and `options.rs` hold
    /// the longer tables for `-o`.)
    #[test]
    fn every_bad_value_names_its_field() {
        let cases: &[(&str, &str)] = &[
            ("network name", "--name host"),
            ("network name", "--name none"),
            ("network name", "--name a/b"),
            ("network name", "--name -x"),
            ("--driver", "--driver overlay"),
            ("--opt", "-o colour=blue"),
            ("--opt", "-o mtu"),
            ("--label", "--label x"),
            ("-o parent", "--driver macvlan"),
            ("-o parent", "--driver macvlan -o parent=lo"),
            (
                "-o macvlan_mode",
                "--driver macvlan -o parent=eth0 -o macvlan_mode=x",
            ),
            (
                "-o ipvlan_mode",
                "--driver ipvlan -o parent=eth0 -o ipvlan_mode=x",
            ),
            ("-o mtu", "-o mtu=0"),
            ("-o mtu", "--ipv6 -o mtu=1279"),
            (
                "-o host_access",
                "--driver macvlan -o parent=eth0 -o host_access=x",
            ),
            ("-o snat_source", "-o snat_source=x"),
            ("-o bridge_name", "-o bridge_name=all"),
            ("--subnet", "--subnet x"),
            ("--subnet", "--subnet 192.0.2.1/24"),
            ("--subnet", "--subnet 192.0.2.0/33"),
            ("--subnet", "--subnet 224.0.0.0/24"),
            ("--subnet", "--subnet 127.0.0.0/8"),
            ("--subnet", "--subnet 192.0.2.0/31"),
            ("--subnet", "--ipv6 --subnet ::ffff:192.0.2.0/120"),
            ("--subnet", "--subnet 192.0.2.0/24 --subnet 192.0.2.0/25"),
            ("--subnet", "--subnet 2001:db8::/64"),
            ("--subnet", "--driver host --subnet 192.0.2.0/24"),
            ("--gateway", "--subnet 192.0.2.0/24 --gateway x"),
            ("--gateway", "--gateway 192.0.2.1"),
            ("--gateway", "--subnet 192.0.2.0/24 --gateway 198.51.100.1"),
            (
                "--gateway",
                "--subnet 192.0.2.0/24 --gateway 192.0.2.1 --gateway 192.0.2.2",
            ),
            ("--gateway", "--subnet 192.0.2.0/24 --gateway 192.0.2.255"),
            ("--gateway", "--driver none --gateway 192.0.2.1"),
            ("--ip-range", "--subnet 192.0.2.0/24 --ip-range x"),
            (
                "--ip-range",
                "--subnet 192.0.2.0/24 --ip-range 192.0.2.128/24",
            ),
            (
                "--ip-range",
                "--subnet 192.0.2.0/24 --ip-range 198.51.100.0/25",
            ),
            (
                "--ip-range",
                "--subnet 192.0.2.0/24 --ip-range 192.0.2.0/25 --ip-range 192.0.2.128/25",
            ),
            (
                "--ip-range",
                "--subnet 192.0.2.0/24 --gateway 192.0.2.1 --ip-range 192.0.2.1/32",
            ),
            (
                "--aux-address",
                "--subnet 192.0.2.0/24 --aux-address 192.0.2.5",
            ),
            ("--aux-address", "--subnet 192.0.2.0/24 --aux-address h=x"),
            (
                "--aux-address",
                "--subnet 192.0.2.0/24 --aux-address h=198.51.100.5",
            ),
            ("--aux-address", "--aux-address h=192.0.2.5"),
            (
                "--aux-address",
                "--subnet 192.0.2.0/24 --aux-address h=192.0.2.5 --aux-address h=192.0.2.6",
            ),
            (
                "--aux-address",
                "--subnet 192.0.2.0/24 --aux-address gw=192.0.2.1",
            ),
        ];
        for (field, line) in cases {
            let e = req(|r| parse_line(r, line)).unwrap_err();
            let msg = e.to_string();
            assert_eq!(field_of(e), *field, "{line}: {msg}");
        }
    }

    /// Fills `r` from a `network create` command line (flags only, each with its value).
    fn parse_line(r: &mut NetworkRequest, line: &str) {
        let mut words = line.split_whitespace();
        while let Some(flag) = words.next() {
            if flag == "--ipv6" {
                r.ipv6 = true;
                continue;
            }
            let v = words.next().expect("a value").to_string();
            match flag {
                "--name" => r.name = v,
                "--driver" => r.driver = Some(v),
                "-o" => r.options.push(v),
                "--label" => r.labels.push(v),
                "--subnet" => r.subnets.push(v),
                "--gateway" => r.gateways.push(v),
                "--ip-range" => r.ip_ranges.push(v),
                "--aux-address" => r.aux_addresses.push(v),
                _ => panic!("unknown flag {flag}"),
            }
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
