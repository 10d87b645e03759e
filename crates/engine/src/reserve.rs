//! Addresses held before their endpoint exists, for an IPAM front end whose caller
//! asks for the address first and makes the endpoint later (Docker: `RequestAddress`,
//! then `CreateEndpoint` with that address). A reservation is an address holding in
//! the store under a reservation owner ([`reservation_owner`]) instead of an endpoint
//! id: other callers see the address taken; the endpoint that names it takes it over
//! in its own allocation transaction ([`claim`]); `free_reserved` gives it back.
//! Also the free pool subnet for a caller that asks for one before its network
//! exists (Docker's `RequestPool` without `--subnet`).

use crate::endpoint::excluded;
use crate::lock::Mode;
use crate::Engine;
use ipnet::IpNet;
use lanyard_core::ipam;
use lanyard_core::kernel::Kernel;
use lanyard_core::model::{Network, SubnetConfig};
use lanyard_core::op::Netns;
use lanyard_core::plan;
use lanyard_core::store::{Store, Tx};
use lanyard_core::{Error, Result};
use std::net::IpAddr;

/// The owner recorded for a reserved address: never an endpoint id (those are hex).
pub fn reservation_owner(network_id: &str, addr: IpAddr) -> String {
    format!(
        "reserved:{}:{addr}",
        &network_id[..12.min(network_id.len())]
    )
}

/// Inside an allocation's transaction: the wanted addresses that are reserved are
/// released, so the allocation that names them takes them.
pub(crate) fn claim(tx: &mut dyn Tx, net: &Network, wanted: &[IpAddr]) -> Result<()> {
    for a in wanted {
        let owner = reservation_owner(&net.id, *a);
        if tx.address_owner(&net.id, *a)?.as_deref() == Some(owner.as_str()) {
            tx.release_addresses(&owner)?;
        }
    }
    Ok(())
}

/// The subnet config of `net` that holds `pool` (same subnet), narrowed to `range`.
fn subnet_for(net: &Network, pool: IpNet, range: Option<IpNet>) -> Result<SubnetConfig> {
    let mut sc = net
        .subnets
        .iter()
        .find(|s| s.subnet == pool)
        .cloned()
        .ok_or_else(|| Error::not_found("subnet", format!("{pool} in network {}", net.name)))?;
    if let Some(r) = range {
        sc.ip_range = Some(r);
    }
    Ok(sc)
}

impl<S: Store, K: Kernel> Engine<S, K> {
    /// Reserves `want` (or the next free address of `pool`, within `range` if given)
    /// on network `network`: the address with the subnet's length.
    pub fn reserve_address(
        &mut self,
        network: &str,
        pool: IpNet,
        range: Option<IpNet>,
        want: Option<IpAddr>,
    ) -> Result<IpNet> {
        let _lock = self.lock(Mode::Shared)?;
        let net = self.network(network)?;
        let sc = subnet_for(&net, pool, range)?;
        let host = self
            .kernel
            .view_links(&Netns::Host, &plan::host_links(&net, None))?;
        let exclude = excluded(&net, &host);
        let addr = self.store.write(&mut |tx| {
            crate::alloc::recheck_network(tx, &net)?;
            let addr = match want {
                Some(a) => {
                    let owner = reservation_owner(&net.id, a);
                    ipam::reserve_excluding(tx, &net.id, &sc, "Address", a, &owner, &exclude)?;
                    a
                }
                None => {
                    let a = ipam::allocate_excluding(tx, &net.id, &sc, "reserved", &exclude)?;
                    tx.take_address(&net.id, a, &reservation_owner(&net.id, a))?;
                    a
                }
            };
            Ok(addr)
        })?;
        IpNet::new(addr, pool.prefix_len()).map_err(|e| Error::Other(e.to_string()))
    }

    /// Gives back a reservation of `addr` on `network`; an address an endpoint holds
    /// (or nobody) is left as it is. True if a reservation was freed.
    pub fn free_reserved(&mut self, network: &str, addr: IpAddr) -> Result<bool> {
        let _lock = self.lock(Mode::Shared)?;
        let net = self.network(network)?;
        let owner = reservation_owner(&net.id, addr);
        self.store.write(&mut |tx| {
            if tx.address_owner(&net.id, addr)?.as_deref() == Some(owner.as_str()) {
                tx.release_addresses(&owner)?;
                return Ok(true);
            }
            Ok(false)
        })
    }

    /// The subnet `network create` without `--subnet` would pick now (IPv6 if `v6`):
    /// free of every network's subnets and of the host's routes and addresses.
    pub fn free_pool(&mut self, v6: bool) -> Result<IpNet> {
        let host = self.kernel.view(&Netns::Host)?;
        let others = self.store.read(&mut |tx| tx.networks())?;
        let taken = crate::network::taken_subnets(&others, &host);
        self.config.pick_subnet(v6, &taken).ok_or_else(|| {
            Error::Conflict(format!(
                "no free IPv{} subnet left in the default address pools; pass --subnet",
                if v6 { 6 } else { 4 }
            ))
        })
    }
}
