//! The request bodies dockerd sends, field for field (libnetwork's remote API names).
//! Unknown fields are ignored (newer dockerds add some); missing optional ones are
//! empty. Nothing here is checked beyond its JSON type: [`crate::translate`] checks.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Option maps are free-form JSON objects; `null` reads as empty.
fn object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default())
}

fn strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

fn list<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// A network, by Docker's id.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NetworkRef {
    /// Docker's network id (64 hex digits).
    #[serde(rename = "NetworkID", deserialize_with = "text", default)]
    pub network_id: String,
}

/// An endpoint, by Docker's ids.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EndpointRef {
    /// Docker's network id.
    #[serde(rename = "NetworkID", deserialize_with = "text", default)]
    pub network_id: String,
    /// Docker's endpoint id.
    #[serde(rename = "EndpointID", deserialize_with = "text", default)]
    pub endpoint_id: String,
}

/// One address family's pool as IPAM gave it (`IPv4Data`/`IPv6Data`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IpamData {
    /// The address space the pool came from.
    #[serde(rename = "AddressSpace", deserialize_with = "text", default)]
    pub address_space: String,
    /// The subnet, `192.0.2.0/24`.
    #[serde(rename = "Pool", deserialize_with = "text", default)]
    pub pool: String,
    /// The gateway with the pool's length, `192.0.2.1/24`; may be empty.
    #[serde(rename = "Gateway", deserialize_with = "text", default)]
    pub gateway: String,
    /// `--aux-address` names and their addresses (with length).
    #[serde(rename = "AuxAddresses", deserialize_with = "strings", default)]
    pub aux_addresses: BTreeMap<String, String>,
}

/// `NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CreateNetwork {
    /// Docker's network id.
    #[serde(rename = "NetworkID", deserialize_with = "text", default)]
    pub network_id: String,
    /// `com.docker.network.generic` (the `-o` options), `…enable_ipv6`,
    /// `…internal` and the like.
    #[serde(rename = "Options", deserialize_with = "object", default)]
    pub options: Map<String, Value>,
    /// IPv4 pools.
    #[serde(rename = "IPv4Data", deserialize_with = "list", default)]
    pub ipv4: Vec<IpamData>,
    /// IPv6 pools.
    #[serde(rename = "IPv6Data", deserialize_with = "list", default)]
    pub ipv6: Vec<IpamData>,
}

/// The interface of `CreateEndpoint`: what Docker (its IPAM, `--mac-address`) chose.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct EndpointInterface {
    /// IPv4 address with length; empty if none.
    #[serde(rename = "Address", deserialize_with = "text", default)]
    pub address: String,
    /// IPv6 address with length; empty if none.
    #[serde(rename = "AddressIPv6", deserialize_with = "text", default)]
    pub address_ipv6: String,
    /// MAC; empty if Docker leaves it to the driver.
    #[serde(rename = "MacAddress", deserialize_with = "text", default)]
    pub mac_address: String,
}

/// `NetworkDriver.CreateEndpoint`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CreateEndpoint {
    /// Which endpoint.
    #[serde(flatten)]
    pub endpoint: EndpointRef,
    /// What Docker chose; `null` reads as nothing chosen.
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
    /// Endpoint options (port maps, exposed ports, …).
    #[serde(rename = "Options", deserialize_with = "object", default)]
    pub options: Map<String, Value>,
}

/// `NetworkDriver.Join`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Join {
    /// Which endpoint.
    #[serde(flatten)]
    pub endpoint: EndpointRef,
    /// The container's network namespace (a bind-mounted nsfs file).
    #[serde(rename = "SandboxKey", deserialize_with = "text", default)]
    pub sandbox_key: String,
    /// Join options.
    #[serde(rename = "Options", deserialize_with = "object", default)]
    pub options: Map<String, Value>,
}

/// `NetworkDriver.ProgramExternalConnectivity`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExternalConnectivity {
    /// Which endpoint.
    #[serde(flatten)]
    pub endpoint: EndpointRef,
    /// `com.docker.network.portmap` (the `-p` bindings) and exposed ports.
    #[serde(rename = "Options", deserialize_with = "object", default)]
    pub options: Map<String, Value>,
}

/// One `-p` binding (libnetwork's `types.PortBinding`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PortBinding {
    /// IP protocol number: 6 tcp, 17 udp, 132 sctp.
    #[serde(rename = "Proto", default)]
    pub proto: u8,
    /// The container's port.
    #[serde(rename = "Port", default)]
    pub port: u16,
    /// The host address to listen on; empty or unspecified means every address.
    #[serde(rename = "HostIP", deserialize_with = "text", default)]
    pub host_ip: String,
    /// The host port; 0 means any.
    #[serde(rename = "HostPort", default)]
    pub host_port: u16,
    /// The end of a host port range; 0 or equal to `host_port` means none.
    #[serde(rename = "HostPortEnd", default)]
    pub host_port_end: u16,
}

/// `IpamDriver.RequestPool`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RequestPool {
    /// The address space.
    #[serde(rename = "AddressSpace", deserialize_with = "text", default)]
    pub address_space: String,
    /// `--subnet`; empty: lanyard picks one.
    #[serde(rename = "Pool", deserialize_with = "text", default)]
    pub pool: String,
    /// `--ip-range`; empty: the whole pool.
    #[serde(rename = "SubPool", deserialize_with = "text", default)]
    pub sub_pool: String,
    /// `--ipam-opt`.
    #[serde(rename = "Options", deserialize_with = "strings", default)]
    pub options: BTreeMap<String, String>,
    /// An IPv6 pool.
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

/// `IpamDriver.ReleasePool`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReleasePool {
    /// The pool id `RequestPool` gave.
    #[serde(rename = "PoolID", deserialize_with = "text", default)]
    pub pool_id: String,
}

/// `IpamDriver.RequestAddress`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RequestAddress {
    /// The pool id `RequestPool` gave.
    #[serde(rename = "PoolID", deserialize_with = "text", default)]
    pub pool_id: String,
    /// A wanted address (`--gateway`, `--aux-address`, `docker run --ip`); empty: any.
    #[serde(rename = "Address", deserialize_with = "text", default)]
    pub address: String,
    /// `RequestAddressType` says a gateway is asked for.
    #[serde(rename = "Options", deserialize_with = "strings", default)]
    pub options: BTreeMap<String, String>,
}

/// `IpamDriver.ReleaseAddress`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReleaseAddress {
    /// The pool id.
    #[serde(rename = "PoolID", deserialize_with = "text", default)]
    pub pool_id: String,
    /// The address to free.
    #[serde(rename = "Address", deserialize_with = "text", default)]
    pub address: String,
}
