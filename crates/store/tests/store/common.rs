//! Builders for the objects the tests store (networks from the same request a user
//! would type, endpoints with the fields attach fills in, 64-hex-digit ids) and
//! small helpers to look at the database file directly.

use ipnet::IpNet;
use lanyard_core::model::SubnetConfig;
use lanyard_core::model::{Endpoint, Network, PortMapping};
use lanyard_core::store::Tx;
use lanyard_core::testing::{EndpointBuilder, NetworkBuilder};
use lanyard_core::{ipam, Error, Result};
use lanyard_store::{SqliteStore, DB_FILE};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A 64-hex-digit id: `tag` in the first 16 digits, `n` in the last 48.
pub fn hex_id(tag: u64, n: u64) -> String {
    format!("{tag:016x}{n:048x}")
}

/// A bridge network as `lanyard network create --subnet SUBNET NAME` records it.
pub fn network(name: &str, id: &str, subnet: &str) -> Network {
    NetworkBuilder::new(name)
        .id(id)
        .subnet(subnet)
        .created(1_700_000_000)
        .build()
}

/// An endpoint of `net` as attach records it.
pub fn endpoint(id: &str, name: Option<&str>, net: &Network, addresses: Vec<IpNet>) -> Endpoint {
    let e = EndpointBuilder::of(net)
        .id(id)
        .name(name)
        .netns(format!("/run/netns/{}", &id[..12]), (4, 4026532000))
        .host_ifname(&format!("veth{}", &id[..8]))
        .created(1_700_000_001);
    Endpoint {
        addresses,
        ..e.build()
    }
}

/// The mappings of `-p SPEC` for each spec, in order.
pub fn ports(specs: &[&str]) -> Vec<PortMapping> {
    specs
        .iter()
        .flat_map(|s| PortMapping::parse_spec(s).unwrap())
        .collect()
}

/// The first mapping of `-p SPEC`.
pub fn port(spec: &str) -> PortMapping {
    ports(&[spec])[0]
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub fn kind(e: &Error) -> &'static str {
    match e {
        Error::Invalid { .. } => "Invalid",
        Error::Conflict(_) => "Conflict",
        Error::NotFound { .. } => "NotFound",
        Error::Unsupported(_) => "Unsupported",
        Error::TryAgain(_) => "TryAgain",
        Error::Kernel { .. } => "Kernel",
        Error::Store(_) => "Store",
        Error::Unreachable(_) => "Unreachable",
        Error::Other(_) => "Other",
    }
}

pub fn open_new() -> (tempfile::TempDir, SqliteStore) {
    let tmp = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&tmp.path().join("state")).unwrap();
    (tmp, s)
}

pub fn raw(store_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(store_dir.join(DB_FILE)).unwrap()
}

pub fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `ipam::allocate`, as the engine calls it (one place to follow its signature).
pub fn allocate(
    tx: &mut dyn Tx,
    network_id: &str,
    sc: &SubnetConfig,
    owner: &str,
) -> Result<IpAddr> {
    ipam::allocate(tx, network_id, sc, owner)
}
