//! [`SqliteTx`]: each [`Tx`] method as SQL on a connection that is inside a
//! transaction. Behaves like the reference [`lanyard_core::store::mem::MemStore`]:
//! same conflicts, same orderings, same "delete of a missing thing is a no-op".

use crate::txn::{is_busy, store_error};
use ipnet::IpNet;
use lanyard_core::model::{Endpoint, EndpointState, MacAddr, Network, PortMapping};
use lanyard_core::owner::{Owner, OwnerScope};
use lanyard_core::store::{is_full_id, Tx, Unreadable};
use lanyard_core::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::cell::Cell;
use std::net::IpAddr;
use std::path::Path;

/// The SQL of one object table (`networks`, `endpoints`): both have `id`, `name`, `json`.
struct Table {
    kind: &'static str,
    by_name: &'static str,
    by_id: &'static str,
    /// The first two ids at or after a prefix: every id with that prefix sorts in one
    /// run starting there, so two rows tell none / one / ambiguous apart.
    from_prefix: &'static str,
}

const NETWORKS: Table = Table {
    kind: "network",
    by_name: "SELECT json FROM networks WHERE name = ?1",
    by_id: "SELECT json FROM networks WHERE id = ?1",
    from_prefix: "SELECT id, json FROM networks WHERE id >= ?1 ORDER BY id LIMIT 2",
};

/// Records (scope, key) as held by an owner; the one statement for addresses, ports
/// and namespace index entries, so a transaction prepares it once. A row that
/// already says so is left alone: no page written (an attach's second
/// `put_endpoint` re-records its namespace entry).
const HOLD: &str = "INSERT INTO holdings (scope, key, owner) VALUES (?1, ?2, ?3)
     ON CONFLICT (scope, key) DO UPDATE SET owner = excluded.owner
     WHERE owner IS NOT excluded.owner";

const ENDPOINTS: Table = Table {
    kind: "endpoint",
    by_name: "SELECT json FROM endpoints WHERE name = ?1",
    by_id: "SELECT json FROM endpoints WHERE id = ?1",
    from_prefix: "SELECT id, json FROM endpoints WHERE id >= ?1 ORDER BY id LIMIT 2",
};

/// One transaction's view of the database. Created by [`crate::SqliteStore`] after
/// `BEGIN`; never outlives the transaction.
pub(crate) struct SqliteTx<'c> {
    conn: &'c Connection,
    path: &'c Path,
    /// Set when a statement failed because the database was busy, so the caller may
    /// run the whole transaction again.
    busy: &'c Cell<bool>,
}

impl<'c> SqliteTx<'c> {
    pub(crate) fn new(conn: &'c Connection, path: &'c Path, busy: &'c Cell<bool>) -> Self {
        SqliteTx { conn, path, busy }
    }

    /// Maps a SQLite error to `Error::Store` with context, noting busy ones.
    fn fail(&self, what: impl FnOnce() -> String, e: rusqlite::Error) -> Error {
        if is_busy(&e) {
            self.busy.set(true);
        }
        store_error(self.path, &what(), e)
    }

    fn unreadable(&self, kind: &str, id: &str, e: serde_json::Error) -> Error {
        store_error(
            self.path,
            &format!("reading {kind} {id}"),
            format!("stored record is unreadable: {e}"),
        )
    }

    fn network_from(&self, (id, json): &(String, String)) -> Result<Network> {
        serde_json::from_str(json).map_err(|e| self.unreadable("network", id, e))
    }

    fn endpoint_from(&self, (id, json): &(String, String)) -> Result<Endpoint> {
        serde_json::from_str(json).map_err(|e| self.unreadable("endpoint", id, e))
    }

    /// `r`, or `None` with a warning: one damaged row must not hide the others
    /// from a listing ([`Tx::unreadable`] names it).
    fn lenient<T>(r: Result<T>) -> Option<T> {
        r.map_err(|e| tracing::warn!("{e}; left out (`lanyard gc` reports it)"))
            .ok()
    }

    fn encoded(&self, kind: &str, id: &str, v: serde_json::Result<String>) -> Result<String> {
        v.map_err(|e| store_error(self.path, &format!("writing {kind} {id}"), e))
    }

    /// One optional string column of one optional row.
    fn get_opt(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        what: impl Fn() -> String,
    ) -> Result<Option<String>> {
        let mut st = self
            .conn
            .prepare_cached(sql)
            .map_err(|e| self.fail(&what, e))?;
        st.query_row(p, |r| r.get(0))
            .optional()
            .map_err(|e| self.fail(&what, e))
    }

    /// Runs one statement that returns no rows.
    fn exec(&self, sql: &str, p: impl rusqlite::Params, what: impl Fn() -> String) -> Result<()> {
        let mut st = self
            .conn
            .prepare_cached(sql)
            .map_err(|e| self.fail(&what, e))?;
        st.execute(p).map(drop).map_err(|e| self.fail(&what, e))
    }

    /// All rows of `sql` as (id, json).
    fn rows(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        what: impl Fn() -> String,
    ) -> Result<Vec<(String, String)>> {
        let mut st = self
            .conn
            .prepare_cached(sql)
            .map_err(|e| self.fail(&what, e))?;
        let rows = st
            .query_map(p, |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.fail(&what, e))?;
        rows.map(|row| row.map_err(|e| self.fail(&what, e)))
            .collect()
    }

    /// Exact id, then exact name, then unique id prefix: the (id, json) row found.
    /// A full id always means its own object, whatever another one is named.
    fn lookup(&self, t: &Table, key: &str) -> Result<Option<(String, String)>> {
        let what = || format!("looking up {} {key:?}", t.kind);
        let exact: &[&str] = if is_full_id(key) {
            &[t.by_id, t.by_name]
        } else {
            &[t.by_name] // ids are 64 hex digits: no id is equal to it
        };
        for &sql in exact {
            if let Some(json) = self.get_opt(sql, [key], what)? {
                return Ok(Some((key.to_string(), json)));
            }
        }
        if key.is_empty() {
            return Ok(None);
        }
        let mut hits = self.rows(t.from_prefix, [key], what)?;
        hits.retain(|(id, _)| id.starts_with(key));
        match hits.len() {
            0 => Ok(None),
            1 => Ok(hits.pop()),
            _ => Err(Error::Conflict(format!(
                "{} id prefix {key:?} is ambiguous: it matches {} and {} (and maybe more); \
                 give more digits or the name",
                t.kind,
                short(&hits[0].0),
                short(&hits[1].0),
            ))),
        }
    }
}

/// The `holdings.scope` under which the endpoints in one namespace are indexed:
/// `netns/ST_DEV:ST_INO`, each endpoint's id as `key` and `owner`.
fn netns_scope((dev, ino): (u64, u64)) -> String {
    format!("netns/{dev}:{ino}")
}

/// The `holdings.scope` under which a published host port is held:
/// `port/tcp/8080` (never a network id, which is 64 hex digits).
fn port_scope(m: &PortMapping) -> String {
    format!("port/{}/{}", m.proto.as_str(), m.host_port)
}

/// A published port's host address in `holdings.key`: canonical text, or '' for
/// all addresses.
fn host_ip_key(m: &PortMapping) -> String {
    m.host_ip.map(|a| a.to_string()).unwrap_or_default()
}

/// The `holdings.scope` under which the MACs of one network's endpoints are held:
/// `mac/NETWORK_ID`, the MAC as `key`.
fn mac_scope(network_id: &str) -> String {
    format!("mac/{network_id}")
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn parse_addr(s: &str) -> std::result::Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("stored address {s:?} is not an IP address"))
}

impl Tx for SqliteTx<'_> {
    fn networks(&self) -> Result<Vec<Network>> {
        let rows = self.rows("SELECT id, json FROM networks ORDER BY name", [], || {
            "listing networks".into()
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| Self::lenient(self.network_from(r)))
            .collect())
    }

    fn network(&self, name_or_id: &str) -> Result<Option<Network>> {
        self.lookup(&NETWORKS, name_or_id)?
            .map(|r| self.network_from(&r))
            .transpose()
    }

    fn put_network(&mut self, n: &Network) -> Result<()> {
        let what = || format!("saving network {}", n.name);
        let holder = self.get_opt(
            "SELECT id FROM networks WHERE name = ?1",
            [n.name.as_str()],
            what,
        )?;
        if holder.is_some_and(|id| id != n.id) {
            return Err(Error::Conflict(format!(
                "network {} already exists",
                n.name
            )));
        }
        let json = self.encoded("network", &n.id, serde_json::to_string(n))?;
        self.exec(
            "INSERT INTO networks (id, name, json) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, json = excluded.json",
            params![n.id, n.name.as_str(), json],
            what,
        )
    }

    fn delete_network(&mut self, id: &str) -> Result<()> {
        let what = || format!("deleting network {id}");
        self.exec("DELETE FROM networks WHERE id = ?1", [id], what)?;
        self.exec("DELETE FROM holdings WHERE scope = ?1", [id], what)?;
        self.exec("DELETE FROM cursors WHERE network_id = ?1", [id], what)
    }

    fn endpoints(&self) -> Result<Vec<Endpoint>> {
        let rows = self.rows("SELECT id, json FROM endpoints ORDER BY id", [], || {
            "listing endpoints".into()
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| Self::lenient(self.endpoint_from(r)))
            .collect())
    }

    fn endpoint(&self, name_or_id: &str) -> Result<Option<Endpoint>> {
        self.lookup(&ENDPOINTS, name_or_id)?
            .map(|r| self.endpoint_from(&r))
            .transpose()
    }

    fn put_endpoint(&mut self, e: &Endpoint) -> Result<()> {
        let what = || format!("saving endpoint {}", e.display_name());
        let name = e.name.as_ref().map(|n| n.as_str());
        if let Some(name) = name {
            let holder = self.get_opt("SELECT id FROM endpoints WHERE name = ?1", [name], what)?;
            if holder.is_some_and(|id| id != e.id) {
                return Err(Error::Conflict(format!(
                    "endpoint name {name} is already in use"
                )));
            }
        }
        let json = self.encoded("endpoint", &e.id, serde_json::to_string(e))?;
        self.exec(
            "INSERT INTO endpoints (id, name, network_id, json) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE
             SET name = excluded.name, network_id = excluded.network_id, json = excluded.json",
            params![e.id, name, e.network_id, json],
            what,
        )?;
        // Owner and MAC: each held by one endpoint only (the first put of an
        // endpoint writes them; a later put that keeps them writes no page).
        let mut unique = vec![];
        if let Some(o) = &e.owner {
            unique.push((o.scope().holding_scope(), o.key(), "owner"));
        }
        if let Some(m) = &e.mac {
            unique.push((mac_scope(&e.network_id), m.to_string(), "MAC"));
        }
        for (scope, key, kind) in unique {
            let held = self.get_opt(
                "SELECT owner FROM holdings WHERE scope = ?1 AND key = ?2",
                params![scope, key],
                what,
            )?;
            match held {
                Some(holder) if holder == e.id => {}
                // Refused when an endpoint is recorded; an update of one recorded
                // before MACs were held (two that already shared one) keeps going,
                // so it can still be detached.
                Some(holder)
                    if matches!(e.state, EndpointState::Pending | EndpointState::Allocated) =>
                {
                    return Err(Error::Conflict(format!(
                        "{kind} {key} is already held by endpoint {}",
                        short(&holder)
                    )));
                }
                Some(_) => {}
                None => self.exec(HOLD, params![scope, key, e.id], what)?,
            }
        }
        // The endpoint's entry in its namespace's index (gone with the endpoint, or
        // when it leaves the namespace: `unplug`).
        if e.in_netns() {
            self.exec(HOLD, params![netns_scope(e.netns_inode), e.id, e.id], what)
        } else {
            self.exec(
                "DELETE FROM holdings WHERE owner = ?1 AND scope LIKE 'netns/%'",
                [&e.id],
                what,
            )
        }
    }

    fn delete_endpoint(&mut self, id: &str) -> Result<()> {
        let what = || format!("deleting endpoint {id}");
        self.exec("DELETE FROM endpoints WHERE id = ?1", [id], what)?;
        // Its addresses, ports and namespace index entry.
        self.exec("DELETE FROM holdings WHERE owner = ?1", [id], what)
    }

    fn endpoints_in_netns(&self, netns_inode: (u64, u64)) -> Result<Vec<Endpoint>> {
        let scope = netns_scope(netns_inode);
        let what = || format!("looking up the endpoints in {scope}");
        // Two simple statements, not a join: SQLite prepares them for a fraction of
        // the join's cost, and a namespace seldom has more than one endpoint.
        let ids = self.rows(
            "SELECT key, owner FROM holdings WHERE scope = ?1 ORDER BY key",
            [&scope],
            what,
        )?;
        let mut eps = Vec::with_capacity(ids.len());
        for (id, _) in ids {
            let Some(json) = self.get_opt(ENDPOINTS.by_id, [&id], what)? else {
                continue; // cannot happen: a delete removes both in one transaction
            };
            let Some(e) = Self::lenient(self.endpoint_from(&(id, json))) else {
                continue;
            };
            // An entry from an earlier put of the same id with another namespace
            // (the engine never does that) is left over until the delete: skip it.
            if e.netns_inode == netns_inode {
                eps.push(e);
            }
        }
        Ok(eps)
    }

    fn endpoint_by_owner(&self, owner: &Owner) -> Result<Option<Endpoint>> {
        let what = || format!("looking up the endpoint of {owner}");
        let Some(id) = self.get_opt(
            "SELECT owner FROM holdings WHERE scope = ?1 AND key = ?2",
            params![owner.scope().holding_scope(), owner.key()],
            what,
        )?
        else {
            return Ok(None);
        };
        let Some(json) = self.get_opt(ENDPOINTS.by_id, [&id], what)? else {
            return Ok(None);
        };
        let e = self.endpoint_from(&(id, json))?;
        // A row left by an earlier owner of the same id (the engine never changes
        // an endpoint's owner) is not this owner's.
        Ok(e.owner.as_ref().is_some_and(|o| o == owner).then_some(e))
    }

    fn owned(&self, scope: &OwnerScope) -> Result<Vec<(String, String)>> {
        let scope = scope.holding_scope();
        self.rows(
            "SELECT key, owner FROM holdings WHERE scope = ?1 ORDER BY key",
            [&scope],
            || format!("listing the endpoints of {scope}"),
        )
    }

    fn mac_holder(&self, network_id: &str, mac: &MacAddr) -> Result<Option<String>> {
        self.get_opt(
            "SELECT owner FROM holdings WHERE scope = ?1 AND key = ?2",
            params![mac_scope(network_id), mac.to_string()],
            || format!("looking up MAC {mac} in network {network_id}"),
        )
    }

    fn address_owner(&self, network_id: &str, addr: IpAddr) -> Result<Option<String>> {
        self.get_opt(
            "SELECT owner FROM holdings WHERE scope = ?1 AND key = ?2",
            params![network_id, addr.to_string()],
            || format!("looking up address {addr} in network {network_id}"),
        )
    }

    fn addresses(&self, network_id: &str) -> Result<Vec<(IpAddr, String)>> {
        let rows = self.rows(
            "SELECT key, owner FROM holdings WHERE scope = ?1 ORDER BY key",
            [network_id],
            || format!("listing the addresses held in network {network_id}"),
        )?;
        // A network's scope holds only addresses (written by `take_address`).
        let mut v: Vec<(IpAddr, String)> = rows
            .into_iter()
            .filter_map(|(k, o)| Some((k.parse().ok()?, o)))
            .collect();
        v.sort();
        Ok(v)
    }

    fn take_address(&mut self, network_id: &str, addr: IpAddr, owner: &str) -> Result<()> {
        self.exec(HOLD, params![network_id, addr.to_string(), owner], || {
            format!("recording address {addr} in network {network_id}")
        })
    }

    fn release_addresses(&mut self, owner: &str) -> Result<()> {
        // Not the namespace index entry of an endpoint: that goes with the endpoint.
        self.exec(
            "DELETE FROM holdings WHERE owner = ?1 AND scope NOT LIKE 'netns/%'
                 AND scope NOT LIKE 'owner/%' AND scope NOT LIKE 'mac/%'",
            [owner],
            || format!("releasing the addresses and ports of {owner}"),
        )
    }

    fn port_holder(&self, m: &PortMapping) -> Result<Option<String>> {
        self.get_opt(
            "SELECT owner FROM holdings
             WHERE scope = ?1 AND (?2 = '' OR key IN ('', ?2))
             ORDER BY key LIMIT 1",
            params![port_scope(m), host_ip_key(m)],
            || format!("looking up who publishes host port {m}"),
        )
    }

    fn take_port(&mut self, m: &PortMapping, owner: &str) -> Result<()> {
        self.exec(HOLD, params![port_scope(m), host_ip_key(m), owner], || {
            format!("recording host port {m} as published by {owner}")
        })
    }

    fn address_count(&self, network_id: &str) -> Result<u64> {
        let what = || format!("counting addresses in network {network_id}");
        let mut st = self
            .conn
            .prepare_cached("SELECT count(*) FROM holdings WHERE scope = ?1")
            .map_err(|e| self.fail(what, e))?;
        st.query_row([network_id], |r| r.get(0))
            .map_err(|e| self.fail(what, e))
    }

    fn cursor(&self, network_id: &str, subnet: &IpNet) -> Result<Option<IpAddr>> {
        let what = || format!("reading the allocation cursor of {subnet} in network {network_id}");
        let Some(s) = self.get_opt(
            "SELECT addr FROM cursors WHERE network_id = ?1 AND subnet = ?2",
            params![network_id, subnet.to_string()],
            what,
        )?
        else {
            return Ok(None);
        };
        parse_addr(&s)
            .map(Some)
            .map_err(|e| store_error(self.path, &what(), e))
    }

    fn set_cursor(&mut self, network_id: &str, subnet: &IpNet, addr: IpAddr) -> Result<()> {
        self.exec(
            "INSERT INTO cursors (network_id, subnet, addr) VALUES (?1, ?2, ?3)
             ON CONFLICT (network_id, subnet) DO UPDATE SET addr = excluded.addr",
            params![network_id, subnet.to_string(), addr.to_string()],
            || format!("moving the allocation cursor of {subnet} in network {network_id}"),
        )
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.get_opt("SELECT value FROM meta WHERE key = ?1", [key], || {
            format!("reading meta {key:?}")
        })
    }

    fn set_meta(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        let what = || format!("writing meta {key:?}");
        match value {
            Some(v) => self.exec(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, v],
                what,
            ),
            None => self.exec("DELETE FROM meta WHERE key = ?1", [key], what),
        }
    }

    fn unreadable(&self) -> Result<Vec<Unreadable>> {
        let mut bad = vec![];
        let what = || "looking for unreadable records".to_string();
        for (id, json) in self.rows("SELECT id, json FROM networks ORDER BY id", [], what)? {
            if let Err(e) = serde_json::from_str::<Network>(&json) {
                bad.push(Unreadable {
                    kind: "network",
                    id,
                    network_id: None,
                    why: e.to_string(),
                });
            }
        }
        let sql = "SELECT id, network_id || ' ' || json FROM endpoints ORDER BY id";
        for (id, row) in self.rows(sql, [], what)? {
            let (network_id, json) = row.split_once(' ').unwrap_or(("", &row));
            if let Err(e) = serde_json::from_str::<Endpoint>(json) {
                bad.push(Unreadable {
                    kind: "endpoint",
                    id,
                    network_id: Some(network_id.to_string()),
                    why: e.to_string(),
                });
            }
        }
        Ok(bad)
    }

    fn forget_unreadable_endpoint(&mut self, key: &str) -> Result<Option<String>> {
        let Some((found, json)) = self.lookup(&ENDPOINTS, key)? else {
            return Ok(None);
        };
        if serde_json::from_str::<Endpoint>(&json).is_ok() {
            return Ok(None);
        }
        // `lookup` answers with the key itself when it matched exactly (an id or a name).
        let id = self
            .get_opt(
                "SELECT id FROM endpoints WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC",
                [&found],
                || format!("forgetting endpoint {found}"),
            )?
            .unwrap_or(found);
        self.delete_endpoint(&id)?;
        Ok(Some(id))
    }
}
