//! [`EtcdTx`]: each [`Tx`] method as reads and buffered writes of etcd keys, laid
//! out as the SQLite store's tables (and behaving as the reference `MemStore`):
//!
//! | key (after the store's prefix) | value |
//! |---|---|
//! | `net/ID`, `ep/ID` | the network's, the endpoint's JSON |
//! | `netname/NAME`, `epname/NAME` | the id holding the name |
//! | `hold/SCOPE␟KEY` | the id holding it: addresses (scope: the network id), published ports (`port/tcp/80`, key the host address), MACs (`mac/NETWORK`), owners (`owner/cni/NET`), namespaces (`netns/DEV:INO`, key the endpoint id) |
//! | `rev/ID␟SCOPE␟KEY` | empty: what `ID` holds, to release it without a scan |
//! | `cursor/NETWORK␟SUBNET` | the last address handed out there |
//! | `meta/KEY` | a small fact; `meta/alive/NODE` (empty) is bound to that host's lease (store.rs) |
//! | `gen/DIR` | bumped by every delete in a large range (kv.rs) |
//!
//! `␟` is U+001F ([`SEP`]), which no scope, key or name contains.

use crate::kv::{prefix_end, KvTx};
use ipnet::IpNet;
use lanyard_core::model::{Endpoint, EndpointState, MacAddr, Network, PortMapping};
use lanyard_core::owner::{Owner, OwnerScope};
use lanyard_core::store::{is_full_id, Tx, Unreadable};
use lanyard_core::{Error, Result};
use std::collections::HashSet;
use std::net::IpAddr;

/// Candidates an allocation looks up one by one before it reads the network's
/// holdings as one range ([`Tx::first_free_address`]).
const PROBES_ONE_BY_ONE: usize = 4;

/// Separates a holding's scope from its key.
pub(crate) const SEP: char = '\u{1f}';

/// One object kind's keys.
struct Kind {
    kind: &'static str,
    by_id: &'static str,
    by_name: &'static str,
}

const NETWORKS: Kind = Kind {
    kind: "network",
    by_id: "net/",
    by_name: "netname/",
};

const ENDPOINTS: Kind = Kind {
    kind: "endpoint",
    by_id: "ep/",
    by_name: "epname/",
};

fn hold_key(scope: &str, key: &str) -> String {
    format!("hold/{scope}{SEP}{key}")
}

fn netns_scope((dev, ino): (u64, u64)) -> String {
    format!("netns/{dev}:{ino}")
}

fn port_scope(m: &PortMapping) -> String {
    format!("port/{}/{}", m.proto.as_str(), m.host_port)
}

fn mac_scope(network_id: &str) -> String {
    format!("mac/{network_id}")
}

/// The cursor `c` as a retry sees it: writers that collided on one address all
/// read the same cursor and would pick the same next address again, so the
/// `attempt`-th retry starts up to 8·2^attempt (at most 1024) addresses further,
/// at random, within `subnet`. The first run sees the cursor as it is (next-fit).
fn spread(c: IpAddr, subnet: &IpNet, attempt: u32) -> IpAddr {
    if attempt == 0 {
        return c;
    }
    let width = 8u128 << attempt.min(7);
    let skip = u128::from(crate::store::random()) % width;
    let cand = match c {
        IpAddr::V4(v) => IpAddr::V4((u32::from(v).saturating_add(skip as u32)).into()),
        IpAddr::V6(v) => IpAddr::V6(u128::from(v).saturating_add(skip).into()),
    };
    if subnet.contains(&cand) {
        cand
    } else {
        c
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// One transaction's view of the cluster.
pub(crate) struct EtcdTx<'t, 'c> {
    kv: &'t KvTx<'c>,
    /// The host this store serves (`EtcdStore::with_node`).
    node: Option<&'t str>,
}

impl<'t, 'c> EtcdTx<'t, 'c> {
    pub(crate) fn new(kv: &'t KvTx<'c>, node: Option<&'t str>) -> Self {
        EtcdTx { kv, node }
    }

    fn unreadable(kind: &str, id: &str, e: serde_json::Error) -> Error {
        Error::Store(format!(
            "etcd: reading {kind} {id}: stored record is unreadable: {e}"
        ))
    }

    fn lenient<T>(r: Result<T>) -> Option<T> {
        r.map_err(|e| tracing::warn!("{e}; left out (`lanyard gc` reports it)"))
            .ok()
    }

    /// Exact id, then exact name, then unique id prefix: the (id, json) found.
    fn lookup(&self, k: &Kind, key: &str) -> Result<Option<(String, String)>> {
        if is_full_id(key) {
            if let Some(json) = self.kv.get(&format!("{}{key}", k.by_id))? {
                return Ok(Some((key.to_string(), json)));
            }
        }
        if !key.is_empty() && !key.contains(SEP) {
            if let Some(id) = self.kv.get(&format!("{}{key}", k.by_name))? {
                if let Some(json) = self.kv.get(&format!("{}{id}", k.by_id))? {
                    return Ok(Some((id, json)));
                }
            }
        }
        if key.is_empty() {
            return Ok(None);
        }
        let start = format!("{}{key}", k.by_id);
        let mut hits = self.kv.range(&start, &prefix_end(&start), 2)?;
        match hits.len() {
            0 => Ok(None),
            1 => Ok(hits
                .pop()
                .map(|(id, json)| (id[k.by_id.len()..].to_string(), json))),
            _ => Err(Error::Conflict(format!(
                "{} id prefix {key:?} is ambiguous: it matches {} and {} (and maybe more); \
                 give more digits or the name",
                k.kind,
                short(&hits[0].0[k.by_id.len()..]),
                short(&hits[1].0[k.by_id.len()..]),
            ))),
        }
    }

    /// Records (scope, key) as held by `owner`.
    fn hold(&self, scope: &str, key: &str, owner: &str) -> Result<()> {
        let hk = hold_key(scope, key);
        self.kv.put(&hk, owner);
        self.kv
            .put(&format!("rev/{owner}{SEP}{scope}{SEP}{key}"), "");
        Ok(())
    }

    /// Drops what `owner` holds in the scopes `which` accepts.
    fn release(&self, owner: &str, which: impl Fn(&str) -> bool) -> Result<()> {
        let prefix = format!("rev/{owner}{SEP}");
        for (rk, _) in self.kv.list(&prefix)? {
            let rest = &rk[prefix.len()..];
            let Some((scope, key)) = rest.split_once(SEP) else {
                continue;
            };
            if !which(scope) {
                continue;
            }
            let hk = hold_key(scope, key);
            // Taken over by another owner meanwhile (a take that replaced it): theirs.
            if self.kv.get(&hk)?.as_deref() == Some(owner) {
                self.kv.delete(&hk);
            }
            self.kv.delete(&rk);
        }
        Ok(())
    }

    fn endpoint_by_id(&self, id: &str) -> Result<Option<Endpoint>> {
        self.kv
            .get(&format!("ep/{id}"))?
            .map(|json| {
                serde_json::from_str(&json).map_err(|e| Self::unreadable("endpoint", id, e))
            })
            .transpose()
    }
}

impl Tx for EtcdTx<'_, '_> {
    fn networks(&self) -> Result<Vec<Network>> {
        let mut v: Vec<Network> = self
            .kv
            .list("net/")?
            .into_iter()
            .filter_map(|(k, json)| {
                Self::lenient(
                    serde_json::from_str(&json)
                        .map_err(|e| Self::unreadable("network", &k[4..], e)),
                )
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    fn network(&self, name_or_id: &str) -> Result<Option<Network>> {
        self.lookup(&NETWORKS, name_or_id)?
            .map(|(id, json)| {
                serde_json::from_str(&json).map_err(|e| Self::unreadable("network", &id, e))
            })
            .transpose()
    }

    fn put_network(&mut self, n: &Network) -> Result<()> {
        let name = n.name.as_str();
        let holder = self.kv.get(&format!("netname/{name}"))?;
        if holder.is_some_and(|id| id != n.id) {
            return Err(Error::Conflict(format!("network {name} already exists")));
        }
        if let Some(old) = self.kv.get(&format!("net/{}", n.id))? {
            if let Ok(old) = serde_json::from_str::<Network>(&old) {
                if old.name != n.name {
                    self.kv.delete(&format!("netname/{}", old.name.as_str()));
                }
            }
        }
        let json = serde_json::to_string(n)
            .map_err(|e| Error::Store(format!("etcd: writing network {}: {e}", n.id)))?;
        self.kv.put(&format!("net/{}", n.id), &json);
        self.kv.put(&format!("netname/{name}"), &n.id);
        Ok(())
    }

    fn delete_network(&mut self, id: &str) -> Result<()> {
        if let Some(json) = self.kv.get(&format!("net/{id}"))? {
            if let Ok(n) = serde_json::from_str::<Network>(&json) {
                let nk = format!("netname/{}", n.name.as_str());
                if self.kv.get(&nk)?.as_deref() == Some(id) {
                    self.kv.delete(&nk);
                }
            }
            self.kv.delete(&format!("net/{id}"));
        }
        // Its addresses (with their owners' reverse entries) and its cursors.
        for (hk, owner) in self.kv.list(&hold_key(id, ""))? {
            let key = &hk[hold_key(id, "").len()..];
            self.kv.delete(&hk);
            self.kv.delete(&format!("rev/{owner}{SEP}{id}{SEP}{key}"));
        }
        for (ck, _) in self.kv.list(&format!("cursor/{id}{SEP}"))? {
            self.kv.delete(&ck);
        }
        Ok(())
    }

    fn endpoints(&self) -> Result<Vec<Endpoint>> {
        Ok(self
            .kv
            .list("ep/")?
            .into_iter()
            .filter_map(|(k, json)| {
                Self::lenient(
                    serde_json::from_str(&json)
                        .map_err(|e| Self::unreadable("endpoint", &k[3..], e)),
                )
            })
            .collect())
    }

    fn endpoint(&self, name_or_id: &str) -> Result<Option<Endpoint>> {
        self.lookup(&ENDPOINTS, name_or_id)?
            .map(|(id, json)| {
                serde_json::from_str(&json).map_err(|e| Self::unreadable("endpoint", &id, e))
            })
            .transpose()
    }

    fn put_endpoint(&mut self, e: &Endpoint) -> Result<()> {
        let name = e.name.as_ref().map(|n| n.as_str());
        if let Some(name) = name {
            let holder = self.kv.get(&format!("epname/{name}"))?;
            if holder.is_some_and(|id| id != e.id) {
                return Err(Error::Conflict(format!(
                    "endpoint name {name} is already in use"
                )));
            }
        }
        if let Some(old) = self.kv.get(&format!("ep/{}", e.id))? {
            let old_name = serde_json::from_str::<serde_json::Value>(&old)
                .ok()
                .and_then(|v| v.get("name")?.as_str().map(str::to_string));
            if let Some(old_name) = old_name.filter(|o| Some(o.as_str()) != name) {
                self.kv.delete(&format!("epname/{old_name}"));
            }
        }
        let mut unique = vec![];
        if let Some(o) = &e.owner {
            unique.push((o.scope().holding_scope(), o.key(), "owner"));
        }
        if let Some(m) = &e.mac {
            unique.push((mac_scope(&e.network_id), m.to_string(), "MAC"));
        }
        for (scope, key, kind) in unique {
            match self.kv.get(&hold_key(&scope, &key))? {
                Some(holder) if holder == e.id => {}
                Some(holder)
                    if matches!(e.state, EndpointState::Pending | EndpointState::Allocated) =>
                {
                    return Err(Error::Conflict(format!(
                        "{kind} {key} is already held by endpoint {}",
                        short(&holder)
                    )));
                }
                Some(_) => {}
                None => self.hold(&scope, &key, &e.id)?,
            }
        }
        let json = serde_json::to_string(e)
            .map_err(|x| Error::Store(format!("etcd: writing endpoint {}: {x}", e.id)))?;
        self.kv.put(&format!("ep/{}", e.id), &json);
        if let Some(name) = name {
            self.kv.put(&format!("epname/{name}"), &e.id);
        }
        if e.in_netns() {
            let scope = netns_scope(e.netns_inode);
            let id = e.id.clone();
            // Entries for another namespace (left by an earlier put) go.
            self.release(&e.id, |s| s.starts_with("netns/") && s != scope)?;
            self.hold(&scope, &id, &id)
        } else {
            self.release(&e.id, |s| s.starts_with("netns/"))
        }
    }

    fn delete_endpoint(&mut self, id: &str) -> Result<()> {
        if let Some(json) = self.kv.get(&format!("ep/{id}"))? {
            let name = serde_json::from_str::<serde_json::Value>(&json)
                .ok()
                .and_then(|v| v.get("name")?.as_str().map(str::to_string));
            if let Some(name) = name {
                let nk = format!("epname/{name}");
                if self.kv.get(&nk)?.as_deref() == Some(id) {
                    self.kv.delete(&nk);
                }
            }
            self.kv.delete(&format!("ep/{id}"));
        }
        self.release(id, |_| true)
    }

    fn endpoints_in_netns(&self, netns_inode: (u64, u64)) -> Result<Vec<Endpoint>> {
        let mut eps = vec![];
        for (_, id) in self.kv.list(&hold_key(&netns_scope(netns_inode), ""))? {
            let Some(e) = Self::lenient(self.endpoint_by_id(&id)).flatten() else {
                continue;
            };
            // A namespace's (device, inode) names it on one host only: another
            // host's namespace may have the same pair.
            let here = match (self.node, e.node.as_deref()) {
                (Some(me), Some(theirs)) => me == theirs,
                _ => true,
            };
            if e.netns_inode == netns_inode && here {
                eps.push(e);
            }
        }
        Ok(eps)
    }

    fn endpoint_by_owner(&self, owner: &Owner) -> Result<Option<Endpoint>> {
        let hk = hold_key(&owner.scope().holding_scope(), &owner.key());
        let Some(id) = self.kv.get(&hk)? else {
            return Ok(None);
        };
        Ok(self
            .endpoint_by_id(&id)?
            .filter(|e| e.owner.as_ref() == Some(owner)))
    }

    fn owned(&self, scope: &OwnerScope) -> Result<Vec<(String, String)>> {
        let prefix = hold_key(&scope.holding_scope(), "");
        Ok(self
            .kv
            .list(&prefix)?
            .into_iter()
            .map(|(k, owner)| (k[prefix.len()..].to_string(), owner))
            .collect())
    }

    fn mac_holder(&self, network_id: &str, mac: &MacAddr) -> Result<Option<String>> {
        self.kv
            .get(&hold_key(&mac_scope(network_id), &mac.to_string()))
    }

    fn address_owner(&self, network_id: &str, addr: IpAddr) -> Result<Option<String>> {
        self.kv.get(&hold_key(network_id, &addr.to_string()))
    }

    fn first_free_address(
        &self,
        network_id: &str,
        candidates: &mut dyn Iterator<Item = IpAddr>,
    ) -> Result<Option<IpAddr>> {
        // Only the free address found is compared at commit (kv.rs). The first few
        // candidates one read each (after a fresh cursor the first is free); past
        // them, the network's holdings in one uncompared range read, not one read
        // per held address.
        for addr in (&mut *candidates).take(PROBES_ONE_BY_ONE) {
            let key = hold_key(network_id, &addr.to_string());
            if self.kv.get_if_absent(&key)?.is_none() {
                return Ok(Some(addr));
            }
        }
        let prefix = hold_key(network_id, "");
        let held: HashSet<String> = self
            .kv
            .range_hint(&prefix, &prefix_end(&prefix))?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for addr in candidates {
            let key = hold_key(network_id, &addr.to_string());
            if !held.contains(&key) && self.kv.get_if_absent(&key)?.is_none() {
                return Ok(Some(addr));
            }
        }
        Ok(None)
    }

    fn addresses(&self, network_id: &str) -> Result<Vec<(IpAddr, String)>> {
        let prefix = hold_key(network_id, "");
        let mut v: Vec<(IpAddr, String)> = self
            .kv
            .list(&prefix)?
            .into_iter()
            .filter_map(|(k, o)| Some((k[prefix.len()..].parse().ok()?, o)))
            .collect();
        v.sort();
        Ok(v)
    }

    fn take_address(&mut self, network_id: &str, addr: IpAddr, owner: &str) -> Result<()> {
        self.hold(network_id, &addr.to_string(), owner)
    }

    fn release_addresses(&mut self, owner: &str) -> Result<()> {
        self.release(owner, |s| {
            !s.starts_with("netns/") && !s.starts_with("owner/") && !s.starts_with("mac/")
        })
    }

    fn port_holder(&self, m: &PortMapping) -> Result<Option<String>> {
        let prefix = hold_key(&port_scope(m), "");
        let want = m.host_ip.map(|a| a.to_string()).unwrap_or_default();
        Ok(self
            .kv
            .list(&prefix)?
            .into_iter()
            .find(|(k, _)| {
                let ip = &k[prefix.len()..];
                want.is_empty() || ip.is_empty() || ip == want
            })
            .map(|(_, owner)| owner))
    }

    fn take_port(&mut self, m: &PortMapping, owner: &str) -> Result<()> {
        let ip = m.host_ip.map(|a| a.to_string()).unwrap_or_default();
        self.hold(&port_scope(m), &ip, owner)
    }

    fn address_count(&self, network_id: &str) -> Result<u64> {
        Ok(self.kv.list(&hold_key(network_id, ""))?.len() as u64)
    }

    fn cursor(&self, network_id: &str, subnet: &IpNet) -> Result<Option<IpAddr>> {
        let Some(s) = self
            .kv
            .get_hint(&format!("cursor/{network_id}{SEP}{subnet}"))?
        else {
            return Ok(None);
        };
        let c: IpAddr = s.parse().map_err(|_| {
            Error::Store(format!(
                "etcd: the allocation cursor of {subnet} in network {network_id} holds \
                 {s:?}, not an IP address"
            ))
        })?;
        Ok(Some(spread(c, subnet, self.kv.attempt)))
    }

    fn set_cursor(&mut self, network_id: &str, subnet: &IpNet, addr: IpAddr) -> Result<()> {
        self.kv.put(
            &format!("cursor/{network_id}{SEP}{subnet}"),
            &addr.to_string(),
        );
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.kv.get(&format!("meta/{key}"))
    }

    fn set_meta(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        match value {
            Some(v) => self.kv.put(&format!("meta/{key}"), v),
            None => self.kv.delete(&format!("meta/{key}")),
        }
        Ok(())
    }

    fn unreadable(&self) -> Result<Vec<Unreadable>> {
        let mut bad = vec![];
        for (k, json) in self.kv.list("net/")? {
            if let Err(e) = serde_json::from_str::<Network>(&json) {
                bad.push(Unreadable {
                    kind: "network",
                    id: k[4..].to_string(),
                    network_id: None,
                    why: e.to_string(),
                });
            }
        }
        for (k, json) in self.kv.list("ep/")? {
            if let Err(e) = serde_json::from_str::<Endpoint>(&json) {
                let network_id = serde_json::from_str::<serde_json::Value>(&json)
                    .ok()
                    .and_then(|v| v.get("network_id")?.as_str().map(str::to_string));
                bad.push(Unreadable {
                    kind: "endpoint",
                    id: k[3..].to_string(),
                    network_id,
                    why: e.to_string(),
                });
            }
        }
        Ok(bad)
    }

    fn forget_unreadable_endpoint(&mut self, key: &str) -> Result<Option<String>> {
        let Some((id, json)) = self.lookup(&ENDPOINTS, key)? else {
            return Ok(None);
        };
        if serde_json::from_str::<Endpoint>(&json).is_ok() {
            return Ok(None);
        }
        self.delete_endpoint(&id)?;
        Ok(Some(id))
    }
}
