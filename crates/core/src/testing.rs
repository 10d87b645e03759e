//! Test support: builders for the [`Network`]s and [`Endpoint`]s that the tests of
//! every crate need, so that no test spells out every field of an `Endpoint`
//! literal and a new field is added here once; and the firewall's view of them
//! ([`bridge_net`], [`bridge_port`]) for the ruleset tests.
//!
//! Compiled for core's own tests and, in other crates, only with the `testing`
//! feature, which those crates turn on in their `[dev-dependencies]`
//! (`lanyard-core = { workspace = true, features = ["testing"] }`): a release
//! build never contains it. The builders panic on a value they cannot parse
//! (a test's typo), naming it.
//!
//! ```
//! use lanyard_core::testing::{EndpointBuilder, NetworkBuilder};
//!
//! let lan = NetworkBuilder::new("lan")
//!     .driver("macvlan")
//!     .option("parent=eth0")
//!     .subnet("192.0.2.0/24")
//!     .build();
//! let web = EndpointBuilder::of(&lan)
//!     .name("web")
//!     .addr("192.0.2.10/24")
//!     .mac("02:00:00:00:00:01")
//!     .build();
//! assert_eq!(web.network_id, lan.id);
//! assert_eq!(web.gateways, ["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]);
//! ```

use crate::firewall::{BridgeNet, BridgePort};
use crate::model::{Endpoint, EndpointState, MacAddr, Network, NetworkRequest, PortMapping};
use crate::name::{EndpointName, IfName, NetworkName};
use std::fmt::Display;
use std::path::PathBuf;
use std::str::FromStr;

/// The id a [`NetworkBuilder`] gives its network unless told otherwise, and the
/// network id of an endpoint built by [`EndpointBuilder::new`].
pub const NETWORK_ID: &str = "abababababababababababababababababababababababababababababababab";

/// The id an [`EndpointBuilder`] gives its endpoint unless told otherwise.
pub const ENDPOINT_ID: &str = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";

/// A [`Network`] as `lanyard network create` records it: the builder fills a
/// [`NetworkRequest`] (a bridge network with no subnet to start with) and
/// [`build`](Self::build) validates it. Id [`NETWORK_ID`], created at 0.
#[derive(Debug, Clone)]
pub struct NetworkBuilder {
    req: NetworkRequest,
    id: String,
    created: u64,
}

impl NetworkBuilder {
    /// A bridge network named `name`.
    pub fn new(name: &str) -> Self {
        NetworkBuilder {
            req: NetworkRequest {
                name: name.into(),
                ..Default::default()
            },
            id: NETWORK_ID.into(),
            created: 0,
        }
    }

    /// `--driver`.
    pub fn driver(mut self, driver: &str) -> Self {
        self.req.driver = Some(driver.into());
        self
    }

    /// One `-o KEY=VALUE`.
    pub fn option(mut self, option: &str) -> Self {
        self.req.options.push(option.into());
        self
    }

    /// Each of `options` as `-o`.
    pub fn options(self, options: &[&str]) -> Self {
        options.iter().fold(self, |b, o| b.option(o))
    }

    /// One `--subnet`; an IPv6 one also turns on `--ipv6`.
    pub fn subnet(mut self, subnet: &str) -> Self {
        self.req.ipv6 |= subnet.contains(':');
        self.req.subnets.push(subnet.into());
        self
    }

    /// Each of `subnets` as `--subnet`.
    pub fn subnets(self, subnets: &[&str]) -> Self {
        subnets.iter().fold(self, |b, s| b.subnet(s))
    }

    /// One `--gateway`.
    pub fn gateway(mut self, gateway: &str) -> Self {
        self.req.gateways.push(gateway.into());
        self
    }

    /// One `--ip-range`.
    pub fn ip_range(mut self, range: &str) -> Self {
        self.req.ip_ranges.push(range.into());
        self
    }

    /// The network's id (64 hex digits where the test stores it).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// When it was created (seconds since the epoch).
    pub fn created(mut self, created: u64) -> Self {
        self.created = created;
        self
    }

    /// The request a front end would hand the engine (id and created are the
    /// engine's to choose then).
    pub fn request(self) -> NetworkRequest {
        self.req
    }

    /// The validated network; panics with the validation error on bad input.
    pub fn build(self) -> Network {
        self.req
            .validate(self.id, self.created)
            .unwrap_or_else(|e| panic!("NetworkBuilder: {e}"))
    }
}

/// An [`Endpoint`] as attach records it, active in `/run/netns/c1` (identity
/// (1, 10)) as `eth0`, id [`ENDPOINT_ID`], with no name, MAC, address, gateway or
/// port until the test gives them.
#[derive(Debug, Clone)]
pub struct EndpointBuilder(Endpoint);

impl EndpointBuilder {
    /// An endpoint of the network named `network`, whose id is [`NETWORK_ID`].
    pub fn new(network: &str) -> Self {
        EndpointBuilder(Endpoint {
            id: ENDPOINT_ID.into(),
            name: None,
            network_id: NETWORK_ID.into(),
            network: NetworkName::new(network)
                .unwrap_or_else(|e| panic!("EndpointBuilder network: {e}")),
            netns: "/run/netns/c1".into(),
            netns_inode: (1, 10),
            ifname: ifname("eth0"),
            host_ifname: None,
            mac: None,
            addresses: vec![],
            gateways: vec![],
            ports: vec![],
            unprivileged_port_start: None,
            route_metric: None,
            state: EndpointState::Active,
            created: 0,
            owner: None,
            node: None,
            host_link: None,
            routes: vec![],
            lease: None,
            aliases: vec![],
        })
    }

    /// An endpoint of `net`: its id and name, and the gateway of each of its
    /// subnets, as attach fills them in.
    pub fn of(net: &Network) -> Self {
        let mut b = Self::new(net.name.as_str()).network_id(net.id.clone());
        b.0.gateways = net.subnets.iter().filter_map(|s| s.gateway).collect();
        b
    }

    /// The endpoint's id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.0.id = id.into();
        self
    }

    /// Its network's id.
    pub fn network_id(mut self, id: impl Into<String>) -> Self {
        self.0.network_id = id.into();
        self
    }

    /// `--name` (`"web"`), or none (`None`).
    pub fn name<'a>(mut self, name: impl Into<Option<&'a str>>) -> Self {
        self.0.name = name
            .into()
            .map(|n| EndpointName::new(n).unwrap_or_else(|e| panic!("EndpointBuilder name: {e}")));
        self
    }

    /// The namespace: its path and its (dev, inode) identity.
    pub fn netns(mut self, path: impl Into<PathBuf>, identity: (u64, u64)) -> Self {
        self.0.netns = path.into();
        self.0.netns_inode = identity;
        self
    }

    /// The interface name inside the namespace.
    pub fn ifname(mut self, name: &str) -> Self {
        self.0.ifname = ifname(name);
        self
    }

    /// The host-side veth's name (bridge networks).
    pub fn host_ifname(mut self, name: &str) -> Self {
        self.0.host_ifname = Some(ifname(name));
        self
    }

    /// The MAC, `aa:bb:cc:dd:ee:ff`.
    pub fn mac(mut self, mac: &str) -> Self {
        self.0.mac =
            Some(MacAddr::parse_for("mac", mac).unwrap_or_else(|e| panic!("EndpointBuilder: {e}")));
        self
    }

    /// One more address with its prefix length (`192.0.2.10/24`, `2001:db8::a/64`).
    pub fn addr(mut self, addr: &str) -> Self {
        self.0.addresses.push(parse("address", addr));
        self
    }

    /// Each of `addrs` as [`addr`](Self::addr).
    pub fn addrs(self, addrs: &[&str]) -> Self {
        addrs.iter().fold(self, |b, a| b.addr(a))
    }

    /// One more gateway (a default route through it).
    pub fn gateway(mut self, gateway: &str) -> Self {
        self.0.gateways.push(parse("gateway", gateway));
        self
    }

    /// The metric of its default routes.
    pub fn route_metric(mut self, metric: u32) -> Self {
        self.0.route_metric = Some(metric);
        self
    }

    /// Its state.
    pub fn state(mut self, state: EndpointState) -> Self {
        self.0.state = state;
        self
    }

    /// When it was created (seconds since the epoch).
    pub fn created(mut self, created: u64) -> Self {
        self.0.created = created;
        self
    }

    /// The endpoint.
    pub fn build(self) -> Endpoint {
        self.0
    }
}

/// A bridge network as the firewall sees it: `name` on bridge `br` with `subnets`,
/// `internal` (no way out) or not, its egress SNAT'ed to `snat` if given.
pub fn bridge_net(
    name: &str,
    br: &str,
    subnets: &[&str],
    internal: bool,
    snat: Option<&str>,
) -> BridgeNet {
    BridgeNet::new(
        NetworkName::new(name).unwrap_or_else(|e| panic!("bridge_net name: {e}")),
        ifname(br),
        subnets.iter().map(|s| parse("subnet", s)).collect(),
        internal,
        snat.map(|s| parse("SNAT address", s)),
    )
    .unwrap_or_else(|e| panic!("bridge_net: {e}"))
}

/// A bridge endpoint as the firewall sees it: host-side veth `host` with `mac` and
/// `addrs`, publishing each of `ports` (`-p` specs, one mapping each).
pub fn bridge_port(host: &str, mac: &str, addrs: &[&str], ports: &[&str]) -> BridgePort {
    BridgePort::new(
        ifname(host),
        MacAddr::parse_for("mac", mac).unwrap_or_else(|e| panic!("bridge_port: {e}")),
        addrs.iter().map(|a| parse("address", a)).collect(),
        ports.iter().map(|p| publish(p)).collect(),
    )
    .unwrap_or_else(|e| panic!("bridge_port: {e}"))
}

/// The first mapping of `-p SPEC`.
fn publish(spec: &str) -> PortMapping {
    let mut m = PortMapping::parse_spec(spec).unwrap_or_else(|e| panic!("-p {spec}: {e}"));
    m.remove(0)
}

fn ifname(name: &str) -> IfName {
    IfName::new(name).unwrap_or_else(|e| panic!("test fixture interface name: {e}"))
}

/// `s` parsed, or a panic naming `what` and `s`.
fn parse<T: FromStr<Err: Display>>(what: &str, s: &str) -> T {
    s.parse()
        .unwrap_or_else(|e| panic!("test fixture {what} {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_of_a_network_carries_its_id_name_and_gateways() {
        let lan = NetworkBuilder::new("lan")
            .subnet("192.0.2.0/24")
            .subnet("2001:db8:1::/64")
            .gateway("2001:db8:1::1")
            .build();
        assert!(lan.ipv6, "a v6 subnet turns on --ipv6");
        let ep = EndpointBuilder::of(&lan).build();
        assert_eq!(
            (ep.network_id.as_str(), ep.network.as_str()),
            (NETWORK_ID, "lan")
        );
        assert_eq!(ep.gateways.len(), 2, "{:?}", ep.gateways);
        assert_eq!(EndpointBuilder::new("lan").build().network_id, lan.id);
        assert_eq!(
            (NETWORK_ID, ENDPOINT_ID),
            (&*"ab".repeat(32), &*"cd".repeat(32))
        );
    }

    #[test]
    #[should_panic(expected = "test fixture address")]
    fn a_typo_in_an_address_panics_naming_it() {
        EndpointBuilder::new("lan").addr("192.0.2.300/24");
    }
}
