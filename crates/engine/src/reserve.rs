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

#[cfg(test)]
mod tests {
    use crate::endpoint::tests::engine;
    use lanyard_core::owner::{AllocateRequest, Owner};
    use std::net::IpAddr;

    fn docker(ep: &str, ip: Option<&str>) -> AllocateRequest {
        AllocateRequest {
            network: "lan".into(),
            owner: Some(Owner::Docker {
                network_id: "d0".into(),
                endpoint_id: ep.into(),
            }),
            ip: ip.map(str::to_string),
            ..Default::default()
        }
    }

    fn v4(e: &lanyard_core::model::Endpoint) -> IpAddr {
        e.addresses
            .iter()
            .find(|a| a.addr().is_ipv4())
            .unwrap()
            .addr()
    }

    #[test]
    fn a_reserved_address_is_taken_by_its_endpoint_only_and_can_be_given_back() {
        let mut e = engine();
        let pool = "192.0.2.0/24".parse().unwrap();
        let range = Some("192.0.2.200/29".parse().unwrap());
        let r = e.reserve_address("lan", pool, range, None).unwrap();
        assert_eq!(
            r.to_string(),
            "192.0.2.200/24",
            "the first of the pool's range"
        );
        // Held: neither the next allocation nor a CLI --ip gets it.
        let next = e.reserve_address("lan", pool, range, None).unwrap();
        assert_ne!(next.addr(), r.addr());
        let cli = AllocateRequest {
            network: "lan".into(),
            ip: Some(r.addr().to_string()),
            ..Default::default()
        };
        let err = e.allocate(&cli).unwrap_err().to_string();
        assert!(err.contains("already in use"), "{err}");
        let again = e.reserve_address("lan", pool, None, Some(r.addr()));
        assert!(again.unwrap_err().to_string().contains("already in use"));
        // Docker's CreateEndpoint names it: the endpoint takes it over.
        let ep = e
            .allocate(&docker("e1", Some(&r.addr().to_string())))
            .unwrap();
        assert_eq!(v4(&ep), r.addr());
        // Now the endpoint's: ReleaseAddress of it frees nothing.
        assert!(!e.free_reserved("lan", r.addr()).unwrap());
        assert!(e
            .allocate(&docker("e2", Some(&r.addr().to_string())))
            .is_err());
        // A reservation never claimed is given back and can be taken.
        assert!(e.free_reserved("lan", next.addr()).unwrap());
        let ep3 = e
            .allocate(&docker("e3", Some(&next.addr().to_string())))
            .unwrap();
        assert_eq!(v4(&ep3), next.addr());
    }

    #[test]
    fn a_free_pool_subnet_avoids_the_networks_and_the_host() {
        let mut e = engine();
        let p = e.free_pool(false).unwrap();
        let lan: ipnet::IpNet = "192.0.2.0/24".parse().unwrap();
        assert!(
            !p.contains(&lan.network()) && !lan.contains(&p.network()),
            "{p}"
        );
    }
}
