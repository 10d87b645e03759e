//! What a CNI plugin prints: the ADD result (interfaces, ips, routes, dns), the
//! abbreviated IPAM result, the VERSION answer and the error object (spec 1.1,
//! section 5), each written in the `cniVersion` the caller asked for.
//!
//! Results before 1.0.0 carry `"version": "4"|"6"` in each IP; from 1.0.0 on they do
//! not. A `prevResult` may come in any supported version: it is read leniently (every
//! field optional, a `version` accepted) and written back in the caller's version.

use lanyard_core::model::Endpoint;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Every spec version lanyard speaks, oldest first (VERSION lists them).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest spec version, for answers to input that named none.
pub const LATEST: &str = "1.1.0";

/// Whether results of `version` still carry an IP's family (`"version": "4"`).
fn ips_have_version(version: &str) -> bool {
    version.starts_with("0.")
}

/// One interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Its MTU, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The namespace it is in (`CNI_NETNS`), or none for the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// A socket of the interface (vhost-user and the like); passed through.
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// A PCI device id; passed through.
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`: written only for versions before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The address in CIDR notation.
    pub address: String,
    /// The subnet's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces` (absent in an IPAM result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination, CIDR.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// Path MTU; passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS; passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority (metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table; passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope; passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

/// DNS settings (the network config's `dns`, passed on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Name servers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// An ADD result (or, without interfaces, an IPAM result); also how a `prevResult`
/// is read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The spec version the result is written in.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Interfaces made by the attachment (absent in an IPAM result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<Interface>>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// Rewrites the result for `version`: the IP family field only before 1.0.0.
    pub fn in_version(mut self, version: &str) -> CniResult {
        self.cni_version = version.to_string();
        let with = ips_have_version(version);
        for ip in &mut self.ips {
            ip.version = with.then(|| family_of(&ip.address).to_string());
        }
        self
    }
}

/// `"4"` or `"6"` for a CIDR string.
fn family_of(cidr: &str) -> &'static str {
    if cidr.contains(':') {
        "6"
    } else {
        "4"
    }
}

/// The default route of a family.
fn default_dst(gw: &IpAddr) -> &'static str {
    if gw.is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    }
}

/// The ADD result of `ep`, appended to `prev` (the chain's result so far, if any):
/// the host-side interfaces first (bridge, veth), then the one in the sandbox, its
/// addresses pointing at it, and a default route per gateway.
pub fn of_endpoint(
    ep: &Endpoint,
    host_side: &[String],
    sandbox: &str,
    mtu: Option<u32>,
    dns: &Dns,
    prev: Option<CniResult>,
) -> CniResult {
    let mut r = prev.unwrap_or_default();
    let interfaces = r.interfaces.get_or_insert_with(Vec::new);
    for name in host_side {
        interfaces.push(Interface {
            name: name.clone(),
            ..Default::default()
        });
    }
    let index = interfaces.len();
    interfaces.push(Interface {
        name: ep.ifname.to_string(),
        mac: ep.mac.map(|m| m.to_string()),
        mtu,
        sandbox: Some(sandbox.to_string()),
        ..Default::default()
    });
    add_addresses(&mut r, ep, Some(index));
    merge_dns(&mut r.dns, dns);
    r
}

/// The IPAM result of an allocated endpoint: addresses without an interface, a
/// default route per gateway.
pub fn of_allocation(ep: &Endpoint, dns: &Dns) -> CniResult {
    let mut r = CniResult::default();
    add_addresses(&mut r, ep, None);
    merge_dns(&mut r.dns, dns);
    r
}

fn add_addresses(r: &mut CniResult, ep: &Endpoint, interface: Option<usize>) {
    for a in &ep.addresses {
        let gateway = ep
            .gateways
            .iter()
            .find(|g| g.is_ipv4() == a.addr().is_ipv4());
        r.ips.push(IpConfig {
            version: None,
            address: a.to_string(),
            gateway: gateway.map(|g| g.to_string()),
            interface,
        });
    }
    for gw in &ep.gateways {
        let route = Route {
            dst: default_dst(gw).to_string(),
            gw: Some(gw.to_string()),
            priority: ep.route_metric,
            ..Default::default()
        };
        if !r.routes.contains(&route) {
            r.routes.push(route);
        }
    }
}

/// Adds what `dns` says that `into` lacks (a chain's earlier plugin may have set
/// some already).
fn merge_dns(into: &mut Dns, dns: &Dns) {
    for s in &dns.nameservers {
        if !into.nameservers.contains(s) {
            into.nameservers.push(s.clone());
        }
    }
    if into.domain.is_none() {
        into.domain.clone_from(&dns.domain);
    }
    for s in &dns.search {
        if !into.search.contains(s) {
            into.search.push(s.clone());
        }
    }
    for s in &dns.options {
        if !into.options.contains(s) {
            into.options.push(s.clone());
        }
    }
}

/// The VERSION answer.
#[derive(Debug, Serialize)]
pub struct VersionResult {
    /// The version asked in.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Every version lanyard speaks.
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<&'static str>,
}

/// A CNI error, printed on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    /// The version asked in (the newest when the input named none).
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Spec code (1-11, 50, 51) or lanyard's own (100+).
    pub code: u32,
    /// Short: what kind of failure, naming the field or variable.
    pub msg: String,
    /// Long: the value and why, and what to do.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::testing::EndpointBuilder;

    fn endpoint() -> Endpoint {
        EndpointBuilder::new("lan")
            .mac("02:42:c0:00:02:82")
            .addrs(&["192.0.2.130/24", "2001:db8:1::82/64"])
            .gateway("192.0.2.1")
            .route_metric(100)
            .build()
    }

    #[test]
    fn an_add_result_points_each_address_at_the_sandbox_interface() {
        let r = of_endpoint(
            &endpoint(),
            &[],
            "/var/run/netns/c1",
            Some(1500),
            &Dns::default(),
            None,
        )
        .in_version("1.1.0");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(
            j,
            serde_json::json!({
                "cniVersion": "1.1.0",
                "interfaces": [{"name": "eth0", "mac": "02:42:c0:00:02:82", "mtu": 1500,
                                "sandbox": "/var/run/netns/c1"}],
                "ips": [
                    {"address": "192.0.2.130/24", "gateway": "192.0.2.1", "interface": 0},
                    {"address": "2001:db8:1::82/64", "interface": 0}
                ],
                "routes": [{"dst": "0.0.0.0/0", "gw": "192.0.2.1", "priority": 100}]
            })
        );
    }

    #[test]
    fn results_before_1_0_carry_the_ip_family_and_later_ones_do_not() {
        let r = of_allocation(&endpoint(), &Dns::default());
        let old = serde_json::to_value(r.clone().in_version("0.3.1")).unwrap();
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert!(old["ips"][0].get("interface").is_none(), "IPAM: no index");
        let new = serde_json::to_value(r.in_version("1.0.0")).unwrap();
        assert!(new["ips"][0].get("version").is_none());
        assert!(new.get("interfaces").is_none());
    }

    #[test]
    fn a_prev_result_is_kept_and_the_new_interface_indexed_after_it() {
        let prev: CniResult = serde_json::from_value(serde_json::json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "lo", "sandbox": "/x"}],
            "ips": [{"version": "4", "address": "127.0.0.1/8", "interface": 0}],
            "dns": {"nameservers": ["192.0.2.53"]}
        }))
        .unwrap();
        let dns = Dns {
            nameservers: vec!["192.0.2.53".into(), "192.0.2.54".into()],
            ..Default::default()
        };
        let r = of_endpoint(&endpoint(), &["lyb-x".into()], "/x", None, &dns, Some(prev))
            .in_version("1.0.0");
        let names: Vec<_> = r
            .interfaces
            .as_ref()
            .unwrap()
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(names, ["lo", "lyb-x", "eth0"]);
        assert_eq!(r.ips[0].address, "127.0.0.1/8");
        assert_eq!(r.ips[1].interface, Some(2));
        assert_eq!(r.ips[0].version, None, "1.0.0 drops the family field");
        assert_eq!(r.dns.nameservers, ["192.0.2.53", "192.0.2.54"]);
    }

    #[test]
    fn an_error_omits_empty_details() {
        let e = CniError {
            cni_version: "1.0.0".into(),
            code: 11,
            msg: "try again".into(),
            details: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"cniVersion":"1.0.0","code":11,"msg":"try again"}"#
        );
    }
}
