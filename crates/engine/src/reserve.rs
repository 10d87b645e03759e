//! Addresses held before their endpoint exists, for an IPAM front end whose caller
//! asks for the address first and makes the endpoint later (Docker: `RequestAddress`,
//! then `CreateEndpoint` with that address). A reservation is an address holding in
//! the store under a reservation owner ([`reservation_owner`]: the network, the
//! address and when it was made) instead of an endpoint id: other callers see the
//! address taken; the endpoint that names it takes it over in its own allocation
//! transaction ([`claim`]); `free_reserved` gives it back; one that nobody claims
//! (its caller died between the two calls, or never gave it back) is freed by `gc`
//! once it is [`RESERVATION_MAX_AGE_SECS`] old ([`Engine::free_stale_reservations`]).
//! Also the free pool subnet for a caller that asks for one before its network
//! exists (Docker's `RequestPool` without `--subnet`).

use crate::endpoint::excluded;
use crate::lock::Mode;
use crate::{now, Engine};
use ipnet::IpNet;
use lanyard_core::ipam;
use lanyard_core::kernel::Kernel;
use lanyard_core::model::{Network, SubnetConfig};
use lanyard_core::op::Netns;
use lanyard_core::plan;
use lanyard_core::store::{Store, Tx};
use lanyard_core::{Error, Result};
use std::net::IpAddr;

/// How long a reservation waits for the endpoint that claims it before `gc` frees
/// it. dockerd sends `CreateEndpoint` right after `RequestAddress` (milliseconds
/// apart); ten minutes is far beyond any live caller, so only a dead one's goes.
pub const RESERVATION_MAX_AGE_SECS: u64 = 600;

/// Overrides [`RESERVATION_MAX_AGE_SECS`] (seconds), for tests.
pub const RESERVATION_MAX_AGE_ENV: &str = "LANYARD_RESERVATION_MAX_AGE";

/// [`RESERVATION_MAX_AGE_SECS`], or [`RESERVATION_MAX_AGE_ENV`] seconds if set to a
/// number.
pub fn reservation_max_age() -> u64 {
    std::env::var(RESERVATION_MAX_AGE_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(RESERVATION_MAX_AGE_SECS)
}

/// The owner recorded for `addr` reserved on `network_id` at `since` (unix
/// seconds): `reserved:NET12:ADDR@SINCE`, never an endpoint id (those are hex).
pub fn reservation_owner(network_id: &str, addr: IpAddr, since: u64) -> String {
    format!("{}@{since}", owner_stem(network_id, addr))
}

/// `reserved:NET12:ADDR`: a reservation's owner without its time (as reservations
/// were recorded before they were dated).
fn owner_stem(network_id: &str, addr: IpAddr) -> String {
    format!(
        "reserved:{}:{addr}",
        &network_id[..12.min(network_id.len())]
    )
}

/// If `owner` is a reservation of `addr` on `network_id`: when it was made (`None`
/// for an undated one, from before reservations were dated).
fn reserved_since(owner: &str, network_id: &str, addr: IpAddr) -> Option<Option<u64>> {
    let rest = owner.strip_prefix(owner_stem(network_id, addr).as_str())?;
    if rest.is_empty() {
        return Some(None);
    }
    rest.strip_prefix('@')?.parse().ok().map(Some)
}

/// Inside a transaction: whether `addr` on `net` is held by a reservation, and by
/// which owner.
fn reservation_of(tx: &dyn Tx, net_id: &str, addr: IpAddr) -> Result<Option<String>> {
    Ok(tx
        .address_owner(net_id, addr)?
        .filter(|o| reserved_since(o, net_id, addr).is_some()))
}

/// A reservation `gc` frees (or dates, if undated).
pub(crate) struct Stale {
    /// Its network's id.
    pub network_id: String,
    /// Its network's name.
    pub network: String,
    /// The address.
    pub addr: IpAddr,
    /// Its owner as stored.
    pub owner: String,
    /// When it was made; `None` if undated.
    pub since: Option<u64>,
}

/// The reservations made `max_age` seconds or more before `now`, and the undated
/// ones: one range read per network.
pub(crate) fn stale_reservations(tx: &dyn Tx, max_age: u64, now: u64) -> Result<Vec<Stale>> {
    let mut found = vec![];
    for net in tx.networks()? {
        for (addr, owner) in tx.addresses(&net.id)? {
            let Some(since) = reserved_since(&owner, &net.id, addr) else {
                continue;
            };
            if since.is_none_or(|t| now.saturating_sub(t) >= max_age) {
                found.push(Stale {
                    network_id: net.id.clone(),
                    network: net.name.to_string(),
                    addr,
                    owner,
                    since,
                });
            }
        }
    }
    Ok(found)
}

/// Inside an allocation's transaction: the wanted addresses that are reserved are
/// released, so the allocation that names them takes them.
pub(crate) fn claim(tx: &mut dyn Tx, net: &Network, wanted: &[IpAddr]) -> Result<()> {
    for a in wanted {
        if let Some(owner) = reservation_of(tx, &net.id, *a)? {
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
    /// on network `network`: the address with the subnet's length. A `want` that is
    /// reserved already is reserved again (idempotent, dated now); one an endpoint
    /// holds is a conflict.
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
            let since = now();
            let addr = match want {
                // Asked again while reserved (a retried request, or a container
                // started again after dockerd died before its CreateEndpoint): the
                // same reservation, dated anew.
                Some(a) => {
                    if let Some(old) = reservation_of(tx, &net.id, a)? {
                        tx.release_addresses(&old)?;
                    }
                    let owner = reservation_owner(&net.id, a, since);
                    ipam::reserve_excluding(tx, &net.id, &sc, "Address", a, &owner, &exclude)?;
                    a
                }
                None => {
                    let a = ipam::allocate_excluding(tx, &net.id, &sc, "reserved", &exclude)?;
                    tx.take_address(&net.id, a, &reservation_owner(&net.id, a, since))?;
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
        self.store.write(&mut |tx| {
            if let Some(owner) = reservation_of(tx, &net.id, addr)? {
                tx.release_addresses(&owner)?;
                return Ok(true);
            }
            Ok(false)
        })
    }

    /// Frees every reservation made `max_age` seconds ago or earlier (one no
    /// endpoint claimed: a claimed address is its endpoint's, not a reservation).
    /// An undated one (recorded before reservations were dated) is dated now, so
    /// it goes `max_age` later. One read transaction; a write only when there is
    /// something to change, re-checked inside it. What was freed, for gc's report.
    pub fn free_stale_reservations(&mut self, max_age: u64) -> Result<Vec<String>> {
        let _lock = self.lock(Mode::Shared)?;
        let now = now();
        let found = self
            .store
            .read(&mut |tx| stale_reservations(tx, max_age, now))?;
        if found.is_empty() {
            return Ok(vec![]);
        }
        self.store.write(&mut |tx| {
            let mut freed = vec![];
            for r in &found {
                // Claimed, given back or asked again meanwhile: not this one any more.
                if tx.address_owner(&r.network_id, r.addr)?.as_deref() != Some(r.owner.as_str()) {
                    continue;
                }
                tx.release_addresses(&r.owner)?;
                match r.since {
                    Some(t) => freed.push(format!(
                        "reservation of {} on network {} (no endpoint claimed it in {} s)",
                        r.addr,
                        r.network,
                        now.saturating_sub(t)
                    )),
                    None => tx.take_address(
                        &r.network_id,
                        r.addr,
                        &reservation_owner(&r.network_id, r.addr, now),
                    )?,
                }
            }
            Ok(freed)
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
    use lanyard_core::kernel::fake::FakeKernel;
    use lanyard_core::owner::{AllocateRequest, Owner};
    use lanyard_core::store::mem::MemStore;
    use lanyard_core::store::Store;
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
        assert!(
            err.contains("already in use by a Docker endpoint being created"),
            "{err}"
        );
        // Asked again by its caller (a retry, a container started again): the same.
        let again = e
            .reserve_address("lan", pool, None, Some(r.addr()))
            .unwrap();
        assert_eq!(again, r);
        // Docker's CreateEndpoint names it: the endpoint takes it over.
        let ep = e
            .allocate(&docker("e1", Some(&r.addr().to_string())))
            .unwrap();
        assert_eq!(v4(&ep), r.addr());
        // Now the endpoint's: asking for it is a conflict, ReleaseAddress of it frees
        // nothing.
        let err = e.reserve_address("lan", pool, None, Some(r.addr()));
        assert!(err.unwrap_err().to_string().contains("already in use"));
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

    /// Who holds `a` on "lan" now.
    fn holder(e: &crate::Engine<MemStore, FakeKernel>, a: IpAddr) -> Option<String> {
        let net = e.network("lan").unwrap();
        e.store
            .read(&mut |tx| tx.address_owner(&net.id, a))
            .unwrap()
    }

    /// dockerd killed between RequestAddress and CreateEndpoint (or never sending
    /// ReleaseAddress) left a reservation nobody claims: `gc` frees it once it is
    /// older than the bound, and only it.
    #[test]
    fn gc_frees_a_reservation_never_claimed_and_keeps_fresh_and_claimed_ones() {
        let mut e = engine();
        let net = e.network("lan").unwrap();
        let pool = "192.0.2.0/24".parse().unwrap();
        // Made 11 minutes ago (as the store keeps it: the time is in the owner).
        let old: IpAddr = "192.0.2.150".parse().unwrap();
        let aged = format!(
            "reserved:{}:{old}@{}",
            &net.id[..12],
            crate::now() - 11 * 60
        );
        e.store
            .write(&mut |tx| tx.take_address(&net.id, old, &aged))
            .unwrap();
        // Made a moment ago for a CreateEndpoint in flight.
        let fresh = e.reserve_address("lan", pool, None, None).unwrap().addr();
        // Claimed by its endpoint.
        let claimed = e.reserve_address("lan", pool, None, None).unwrap().addr();
        let ep = e
            .allocate(&docker("e1", Some(&claimed.to_string())))
            .unwrap();
        let report = e.gc().unwrap();
        assert_eq!(holder(&e, old), None, "{:?}", report.removed);
        assert!(
            report
                .removed
                .iter()
                .any(|r| r.contains("192.0.2.150") && r.contains("reservation")),
            "{:?}",
            report.removed
        );
        assert!(holder(&e, fresh).unwrap().starts_with("reserved:"));
        assert_eq!(holder(&e, claimed).unwrap(), ep.id);
        // The freed address is anyone's again.
        let again = e.allocate(&docker("e2", Some("192.0.2.150"))).unwrap();
        assert_eq!(v4(&again), old);
    }

    /// A reservation recorded before they were dated has no age: the first gc dates
    /// it (a CreateEndpoint may be in flight across the upgrade), a later one frees it.
    #[test]
    fn an_undated_reservation_is_dated_first_and_freed_later() {
        let mut e = engine();
        let net = e.network("lan").unwrap();
        let a: IpAddr = "192.0.2.140".parse().unwrap();
        let undated = format!("reserved:{}:{a}", &net.id[..12]);
        e.store
            .write(&mut |tx| tx.take_address(&net.id, a, &undated))
            .unwrap();
        assert!(e.gc().unwrap().removed.is_empty());
        let dated = holder(&e, a).unwrap();
        assert!(dated.starts_with(&format!("{undated}@")), "{dated}");
        // Still a reservation: its endpoint takes it over, ReleaseAddress frees it.
        assert!(e.free_reserved("lan", a).unwrap());
        e.store
            .write(&mut |tx| tx.take_address(&net.id, a, &undated))
            .unwrap();
        e.free_stale_reservations(0).unwrap();
        assert_eq!(e.free_stale_reservations(0).unwrap().len(), 1);
        assert_eq!(holder(&e, a), None);
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
