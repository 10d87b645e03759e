//! The durable store interface. SQLite implements it on one host (lanyard-store);
//! etcd will implement it for several hosts on one LAN.
//!
//! Every mutation runs inside [`Store::write`]: one transaction, serialised across
//! processes. The closure may be run more than once (an implementation may retry on
//! contention, as an etcd one would on a failed compare), so it must have no effects
//! outside the transaction.

use crate::model::{Endpoint, MacAddr, Network, PortMapping};
use crate::owner::{Owner, OwnerScope};
use crate::Result;
use ipnet::IpNet;
use std::net::IpAddr;

/// Whether `key` has the form of a full id (64 lowercase hex digits): looked up as an
/// id before any name, so a name equal to another object's id never shadows it.
pub fn is_full_id(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads and writes inside one transaction.
pub trait Tx {
    /// All networks, by name.
    fn networks(&self) -> Result<Vec<Network>>;
    /// A network by full id, exact name or unique id prefix (in that order).
    fn network(&self, name_or_id: &str) -> Result<Option<Network>>;
    /// Inserts or replaces a network (by id). Name must be unique.
    fn put_network(&mut self, n: &Network) -> Result<()>;
    /// Deletes a network and its address records.
    fn delete_network(&mut self, id: &str) -> Result<()>;

    /// All endpoints.
    fn endpoints(&self) -> Result<Vec<Endpoint>>;
    /// Endpoint by full id, exact name or unique id prefix (in that order).
    fn endpoint(&self, name_or_id: &str) -> Result<Option<Endpoint>>;
    /// Inserts or replaces an endpoint (by id). Its name, its owner and its MAC (on
    /// its network) must each be held by no other endpoint (else `Conflict`); all
    /// three are indexed, and the namespace too while it is in one.
    fn put_endpoint(&mut self, e: &Endpoint) -> Result<()>;
    /// Deletes an endpoint and releases its addresses.
    fn delete_endpoint(&mut self, id: &str) -> Result<()>;
    /// Endpoints in the namespace whose identity ((st_dev, st_ino), as in
    /// [`Endpoint::netns_inode`]) is `netns_inode`, by id. Attach and detach look up
    /// only these, so their cost does not grow with the number of endpoints.
    fn endpoints_in_netns(&self, netns_inode: (u64, u64)) -> Result<Vec<Endpoint>>;
    /// The endpoint of a caller's key (one indexed read).
    fn endpoint_by_owner(&self, owner: &Owner) -> Result<Option<Endpoint>>;
    /// The endpoints of one caller's collection, as (owner key, endpoint id), by
    /// key (one indexed range read: CNI's GC, Docker's network).
    fn owned(&self, scope: &OwnerScope) -> Result<Vec<(String, String)>>;
    /// Which endpoint of `network_id` has `mac`, if any.
    fn mac_holder(&self, network_id: &str, mac: &MacAddr) -> Result<Option<String>>;

    /// Who holds `addr` in `network_id`, if anyone.
    fn address_owner(&self, network_id: &str, addr: IpAddr) -> Result<Option<String>>;
    /// The first of `candidates` that no one holds in `network_id` (the allocator's
    /// search, in its order), `None` when all are held. The free one found is a read
    /// like any other (the commit fails if someone took it meanwhile); the held ones
    /// passed over need not be: one freed since was safely passed over. So a store
    /// that guards each read (etcd) may guard just the one, however many it passes.
    fn first_free_address(
        &self,
        network_id: &str,
        candidates: &mut dyn Iterator<Item = IpAddr>,
    ) -> Result<Option<IpAddr>> {
        for addr in candidates {
            if self.address_owner(network_id, addr)?.is_none() {
                return Ok(Some(addr));
            }
        }
        Ok(None)
    }

    /// Every address held in `network_id`, with its holder (an endpoint id, or a
    /// reservation's owner), by address: one range read of the network's holdings.
    fn addresses(&self, network_id: &str) -> Result<Vec<(IpAddr, String)>>;
    /// Records `addr` in `network_id` as held by `owner` (an endpoint id).
    fn take_address(&mut self, network_id: &str, addr: IpAddr, owner: &str) -> Result<()>;
    /// Releases everything `owner` holds: addresses and published ports.
    fn release_addresses(&mut self, owner: &str) -> Result<()>;
    /// Who holds a published host port that clashes with `m` (same protocol and
    /// host port, and the same host address or either one bound to all addresses).
    fn port_holder(&self, m: &PortMapping) -> Result<Option<String>>;
    /// Records `m` as published by `owner` (an endpoint id).
    fn take_port(&mut self, m: &PortMapping, owner: &str) -> Result<()>;
    /// Number of addresses held in `network_id`.
    fn address_count(&self, network_id: &str) -> Result<u64>;
    /// Last address handed out in `subnet` of `network_id` (next-fit cursor).
    fn cursor(&self, network_id: &str, subnet: &IpNet) -> Result<Option<IpAddr>>;
    /// Moves the cursor.
    fn set_cursor(&mut self, network_id: &str, subnet: &IpNet, addr: IpAddr) -> Result<()>;

    /// Small key/value facts (shim state, schema notes).
    fn meta(&self, key: &str) -> Result<Option<String>>;
    /// Sets a fact; `None` deletes it.
    fn set_meta(&mut self, key: &str, value: Option<&str>) -> Result<()>;

    /// Records whose stored form cannot be read (a damaged row): `networks`,
    /// `endpoints` and `endpoints_in_netns` leave them out, so one bad row blocks no
    /// listing; the verbs that must not guess (gc, network create/rm) ask here. A
    /// store that keeps typed values has none.
    fn unreadable(&self) -> Result<Vec<Unreadable>> {
        Ok(Vec::new())
    }
    /// Deletes the endpoint record `key` (full id, name or unique id prefix) with
    /// what it holds, if it cannot be read; its id. `None` when it reads fine or is
    /// not there.
    fn forget_unreadable_endpoint(&mut self, _key: &str) -> Result<Option<String>> {
        Ok(None)
    }
}

/// A stored record that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// `network` or `endpoint`.
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// An endpoint's network id (kept beside the record), if any.
    pub network_id: Option<String>,
    /// Why it cannot be read.
    pub why: String,
}

/// A durable store.
pub trait Store {
    /// Runs `f` in a read transaction (a consistent snapshot).
    fn read<T>(&self, f: &mut dyn FnMut(&dyn Tx) -> Result<T>) -> Result<T>;
    /// Runs `f` in one write transaction, serialised with every other writer, in
    /// this and other processes. Commits if `f` returns Ok, rolls back otherwise.
    fn write<T>(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<T>) -> Result<T>;
}

pub mod mem {
    //! An in-memory [`Store`] for unit tests (and a reference for other backends):
    //! a write transaction works on a copy that replaces the original on success.

    use super::*;
    use crate::Error;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, Default)]
    struct Data {
        networks: BTreeMap<String, Network>,
        endpoints: BTreeMap<String, Endpoint>,
        addresses: BTreeMap<(String, IpAddr), String>,
        cursors: BTreeMap<(String, IpNet), IpAddr>,
        ports: Vec<(PortMapping, String)>,
        meta: BTreeMap<String, String>,
        /// Calls of [`Tx::endpoints`] (in committed transactions and reads).
        endpoint_scans: std::cell::Cell<u64>,
    }

    /// In-memory store.
    #[derive(Debug, Default)]
    pub struct MemStore(RefCell<Data>);

    impl MemStore {
        /// How often a transaction read every endpoint ([`Tx::endpoints`]): what
        /// a hot path must not do, since its cost grows with the number of endpoints.
        pub fn endpoint_scans(&self) -> u64 {
            self.0.borrow().endpoint_scans.get()
        }
    }

    fn by_name_or_id<'a, T>(
        items: impl Iterator<Item = &'a T>,
        key: &str,
        name: impl Fn(&T) -> Option<String>,
        id: impl Fn(&T) -> &str,
    ) -> Result<Option<T>>
    where
        T: Clone + 'a,
    {
        let items: Vec<&T> = items.collect();
        let exact = |t: &&&T| id(t) == key;
        let named = |t: &&&T| name(t).as_deref() == Some(key);
        if let Some(t) = items
            .iter()
            .find(exact)
            .or_else(|| items.iter().find(named))
        {
            return Ok(Some((*t).clone()));
        }
        let m: Vec<&&T> = items
            .iter()
            .filter(|t| !key.is_empty() && id(t).starts_with(key))
            .collect();
        match m.len() {
            0 => Ok(None),
            1 => Ok(Some((*m[0]).clone())),
            _ => Err(Error::Conflict(format!("id prefix {key:?} is ambiguous"))),
        }
    }

    impl Tx for Data {
        fn networks(&self) -> Result<Vec<Network>> {
            let mut v: Vec<Network> = self.networks.values().cloned().collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(v)
        }
        fn network(&self, key: &str) -> Result<Option<Network>> {
            by_name_or_id(
                self.networks.values(),
                key,
                |n| Some(n.name.to_string()),
                |n| &n.id,
            )
        }
        fn put_network(&mut self, n: &Network) -> Result<()> {
            if self
                .networks
                .values()
                .any(|o| o.name == n.name && o.id != n.id)
            {
                return Err(Error::Conflict(format!(
                    "network {} already exists",
                    n.name
                )));
            }
            self.networks.insert(n.id.clone(), n.clone());
            Ok(())
        }
        fn delete_network(&mut self, id: &str) -> Result<()> {
            self.networks.remove(id);
            self.addresses.retain(|(n, _), _| n != id);
            self.cursors.retain(|(n, _), _| n != id);
            Ok(())
        }
        fn endpoints(&self) -> Result<Vec<Endpoint>> {
            self.endpoint_scans.set(self.endpoint_scans.get() + 1);
            Ok(self.endpoints.values().cloned().collect())
        }
        fn endpoint(&self, key: &str) -> Result<Option<Endpoint>> {
            by_name_or_id(
                self.endpoints.values(),
                key,
                |e| e.name.as_ref().map(|n| n.to_string()),
                |e| &e.id,
            )
        }
        fn put_endpoint(&mut self, e: &Endpoint) -> Result<()> {
            if e.name.is_some()
                && self
                    .endpoints
                    .values()
                    .any(|o| o.name == e.name && o.id != e.id)
            {
                return Err(Error::Conflict(format!(
                    "endpoint name {} is already in use",
                    e.display_name()
                )));
            }
            // As the SQLite store: refused when an endpoint is recorded; an update of
            // one from before MACs were held goes on.
            let recording = matches!(
                e.state,
                crate::model::EndpointState::Pending | crate::model::EndpointState::Allocated
            );
            if let Some(o) = self.endpoints.values().find(|o| {
                o.id != e.id
                    && recording
                    && ((e.owner.is_some() && o.owner == e.owner)
                        || (e.mac.is_some() && o.network_id == e.network_id && o.mac == e.mac))
            }) {
                return Err(Error::Conflict(format!(
                    "endpoint {} already has {}",
                    o.display_name(),
                    if o.owner == e.owner {
                        "this owner"
                    } else {
                        "this MAC"
                    }
                )));
            }
            self.endpoints.insert(e.id.clone(), e.clone());
            Ok(())
        }
        fn endpoint_by_owner(&self, owner: &Owner) -> Result<Option<Endpoint>> {
            Ok(self
                .endpoints
                .values()
                .find(|e| e.owner.as_ref() == Some(owner))
                .cloned())
        }
        fn owned(&self, scope: &OwnerScope) -> Result<Vec<(String, String)>> {
            let mut v: Vec<(String, String)> = self
                .endpoints
                .values()
                .filter_map(|e| {
                    let o = e.owner.as_ref().filter(|o| &o.scope() == scope)?;
                    Some((o.key(), e.id.clone()))
                })
                .collect();
            v.sort();
            Ok(v)
        }
        fn mac_holder(&self, network_id: &str, mac: &MacAddr) -> Result<Option<String>> {
            Ok(self
                .endpoints
                .values()
                .find(|e| e.network_id == network_id && e.mac.as_ref() == Some(mac))
                .map(|e| e.id.clone()))
        }
        fn delete_endpoint(&mut self, id: &str) -> Result<()> {
            self.endpoints.remove(id);
            self.release_addresses(id)
        }
        fn endpoints_in_netns(&self, netns_inode: (u64, u64)) -> Result<Vec<Endpoint>> {
            Ok(self
                .endpoints
                .values()
                .filter(|e| e.netns_inode == netns_inode)
                .cloned()
                .collect())
        }
        fn address_owner(&self, network_id: &str, addr: IpAddr) -> Result<Option<String>> {
            Ok(self.addresses.get(&(network_id.to_string(), addr)).cloned())
        }
        fn addresses(&self, network_id: &str) -> Result<Vec<(IpAddr, String)>> {
            Ok(self
                .addresses
                .iter()
                .filter(|((n, _), _)| n == network_id)
                .map(|((_, a), o)| (*a, o.clone()))
                .collect())
        }
        fn take_address(&mut self, network_id: &str, addr: IpAddr, owner: &str) -> Result<()> {
            self.addresses
                .insert((network_id.to_string(), addr), owner.to_string());
            Ok(())
        }
        fn release_addresses(&mut self, owner: &str) -> Result<()> {
            self.addresses.retain(|_, o| o != owner);
            self.ports.retain(|(_, o)| o != owner);
            Ok(())
        }
        fn port_holder(&self, m: &PortMapping) -> Result<Option<String>> {
            Ok(self
                .ports
                .iter()
                .find(|(q, _)| q.clashes_with(m))
                .map(|(_, o)| o.clone()))
        }
        fn take_port(&mut self, m: &PortMapping, owner: &str) -> Result<()> {
            self.ports.push((*m, owner.to_string()));
            Ok(())
        }
        fn address_count(&self, network_id: &str) -> Result<u64> {
            Ok(self
                .addresses
                .keys()
                .filter(|(n, _)| n == network_id)
                .count() as u64)
        }
        fn cursor(&self, network_id: &str, subnet: &IpNet) -> Result<Option<IpAddr>> {
            Ok(self
                .cursors
                .get(&(network_id.to_string(), *subnet))
                .copied())
        }
        fn set_cursor(&mut self, network_id: &str, subnet: &IpNet, addr: IpAddr) -> Result<()> {
            self.cursors.insert((network_id.to_string(), *subnet), addr);
            Ok(())
        }
        fn meta(&self, key: &str) -> Result<Option<String>> {
            Ok(self.meta.get(key).cloned())
        }
        fn set_meta(&mut self, key: &str, value: Option<&str>) -> Result<()> {
            match value {
                Some(v) => self.meta.insert(key.to_string(), v.to_string()),
                None => self.meta.remove(key),
            };
            Ok(())
        }
    }

    impl Store for MemStore {
        fn read<T>(&self, f: &mut dyn FnMut(&dyn Tx) -> Result<T>) -> Result<T> {
            f(&*self.0.borrow())
        }
        fn write<T>(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
            let mut copy = self.0.borrow().clone();
            let out = f(&mut copy)?;
            *self.0.borrow_mut() = copy;
            Ok(out)
        }
    }
}
