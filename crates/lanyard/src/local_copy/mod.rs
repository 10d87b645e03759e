//! This host's local copy of a shared (etcd) store: every network and this host's
//! own endpoints, so that the read-only verbs (`network ls/inspect`, `endpoint
//! ls/inspect/check`, `doctor`) still answer while the cluster is unreachable.
//!
//! The copy is fed by what the etcd transactions of this host's processes saw
//! anyway ([`Seen`]: the records they read or wrote, with etcd's revisions): it
//! costs no extra request to the cluster. Each transaction's part ([`Line`]) is
//! appended to a journal, one `O_APPEND` write, so an attach pays a few system
//! calls whatever the copy's size; a full listing (the listing verbs, the daemon
//! every minute) or a journal grown past [`file::COMPACT_AT`] folds the journal into
//! the snapshot, `STATE_DIR/etcd-copy.json`, swapped in atomically ([`file`]).
//!
//! Merging is by revision, so lines applied in any order never take the copy back
//! in time, and applying one twice changes nothing: a record replaces what the
//! copy holds only if its revision is newer; a deletion leaves a tombstone at the
//! deleting revision (an older read of the record loses to it); a full listing at
//! revision `s` (every network, or every endpoint) drops what it did not list and
//! was older than `s`, and becomes the floor below which an unknown record is known
//! to be gone. The daemon's listing also brings in what other hosts changed.
//!
//! JSON rather than a second SQLite file: the copy is only ever read whole (into
//! the reference in-memory store, [`MemStore`]), it stays readable with any tool,
//! and its merge needs no schema. Records are kept as etcd's JSON, unparsed
//! (`RawValue`); they are parsed when a verb reads the copy. It holds this host's
//! endpoints only.

pub mod file;

pub use file::CopyFile;

use lanyard_core::model::{Endpoint, Network};
use lanyard_core::store::mem::MemStore;
use lanyard_core::store::{Store, Tx};
use lanyard_core::{Error, Result};
use lanyard_store_etcd::{Record, Seen};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The snapshot's format version.
const VERSION: u32 = 1;

/// One record (its JSON as etcd holds it, kept unparsed: a merge only moves it)
/// and the etcd revision it is at; no record: deleted at `rev`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    rev: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<Box<RawValue>>,
}

/// The records of one kind (networks or endpoints) and their floor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Records {
    /// The revision of the latest full listing: a record unknown here and older
    /// than it was gone by then.
    floor: i64,
    entries: BTreeMap<String, Entry>,
}

impl Records {
    /// Applies one record (`None`: deleted). Whether it changed anything.
    fn apply(&mut self, id: &str, rev: i64, record: Option<Box<RawValue>>) -> bool {
        match self.entries.get(id) {
            Some(e) if e.rev >= rev => return false,
            None if rev < self.floor => return false,
            _ => {}
        }
        self.entries.insert(id.to_string(), Entry { rev, record });
        true
    }

    /// A full listing at `snapshot` named `listed`: what it did not name and is
    /// older goes, and `snapshot` becomes the floor (tombstones below it go too).
    fn listed(&mut self, snapshot: i64, listed: &BTreeSet<&str>) -> bool {
        if snapshot < self.floor {
            return false;
        }
        let before = (self.floor, self.entries.len());
        self.floor = snapshot;
        self.entries.retain(|id, e| {
            e.rev >= snapshot || (e.record.is_some() && listed.contains(id.as_str()))
        });
        (self.floor, self.entries.len()) != before
    }

    /// The records, parsed; one that does not parse is left out (and logged).
    fn records<T: serde::de::DeserializeOwned>(&self) -> Vec<T> {
        self.entries
            .iter()
            .filter_map(|(id, e)| {
                let raw = e.record.as_ref()?;
                serde_json::from_str(raw.get())
                    .map_err(|err| tracing::warn!("local copy: record {id} left out: {err}"))
                    .ok()
            })
            .collect()
    }
}

/// The copy as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Copy {
    version: u32,
    /// The store it copies (its members and prefix).
    store: String,
    /// The host whose endpoints it keeps (`None`: every endpoint).
    node: Option<String>,
    /// When it last changed or was listed in full (seconds since the epoch).
    updated: u64,
    networks: Records,
    endpoints: Records,
}

impl Copy {
    /// An empty copy of `store` for `node`.
    pub fn new(store: &str, node: Option<&str>) -> Copy {
        Copy {
            version: VERSION,
            store: store.to_string(),
            node: node.map(str::to_string),
            updated: 0,
            networks: Records::default(),
            endpoints: Records::default(),
        }
    }

    /// Whether it copies `store` for `node`.
    fn is_of(&self, store: &str, node: Option<&str>) -> bool {
        self.version == VERSION && self.store == store && self.node.as_deref() == node
    }

    /// Applies one journal line (see the module doc); whether anything changed.
    /// The copy's time moves to the line's when it changed or listed everything.
    pub fn apply(&mut self, line: &Line) -> bool {
        let mut changed = false;
        for Rec(id, rev, json) in &line.networks {
            changed |= self.networks.apply(id, *rev, json.clone());
        }
        for Rec(id, rev, json) in &line.endpoints {
            changed |= self.endpoints.apply(id, *rev, json.clone());
        }
        let ids = |rs: &[Rec]| -> BTreeSet<String> {
            rs.iter()
                .filter(|r| r.2.is_some())
                .map(|r| r.0.clone())
                .collect()
        };
        if line.all_networks {
            let ids = ids(&line.networks);
            let ids = ids.iter().map(String::as_str).collect();
            changed |= self.networks.listed(line.snapshot, &ids);
        }
        if line.all_endpoints {
            let ids = ids(&line.endpoints);
            let ids = ids.iter().map(String::as_str).collect();
            changed |= self.endpoints.listed(line.snapshot, &ids);
        }
        if changed || line.is_full() {
            self.updated = self.updated.max(line.at);
        }
        changed
    }

    /// When it last changed or was listed in full.
    pub fn updated(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.updated)
    }

    /// The networks it holds.
    pub fn networks(&self) -> Vec<Network> {
        self.networks.records()
    }

    /// The endpoints it holds (this host's).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.endpoints.records()
    }

    /// An in-memory store holding the copy's networks and endpoints (with their
    /// addresses and ports held), for the read-only verbs.
    pub fn to_store(&self) -> MemStore {
        let mem = MemStore::default();
        let (networks, endpoints) = (self.networks(), self.endpoints());
        let filled = mem.write(&mut |tx: &mut dyn Tx| {
            for n in &networks {
                let _ = tx.put_network(n);
            }
            for e in &endpoints {
                // A record the copy holds twice over (a name, an owner) is left out,
                // as a store would refuse it; the rest still answers.
                if tx.put_endpoint(e).is_err() {
                    continue;
                }
                for a in &e.addresses {
                    tx.take_address(&e.network_id, a.addr(), &e.id)?;
                }
                for p in &e.ports {
                    tx.take_port(p, &e.id)?;
                }
            }
            Ok(())
        });
        if let Err(e) = filled {
            tracing::warn!("local copy: {e}");
        }
        mem
    }
}

/// What one transaction saw, this host's part of it: one line of the journal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Line {
    /// The copy it belongs to ([`file::identity`]).
    of: String,
    /// When it was seen (seconds since the epoch).
    at: u64,
    /// The revision its reads were taken at.
    snapshot: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    all_networks: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    all_endpoints: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    networks: Vec<Rec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    endpoints: Vec<Rec>,
}

/// One record in a line: id, revision, JSON (none: deleted).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rec(String, i64, Option<Box<RawValue>>);

fn is_false(b: &bool) -> bool {
    !*b
}

impl Line {
    /// This host's part of `seen` (other hosts' endpoints left out; records that
    /// are not JSON too), for the copy `of`, seen at `at`.
    pub fn of(seen: &Seen, of: &str, node: Option<&str>, at: u64) -> Line {
        let mine = |r: &Rec| {
            let Some(j) = &r.2 else {
                return true;
            };
            let theirs = serde_json::from_str::<NodeOf>(j.get())
                .ok()
                .and_then(|n| n.node);
            node.is_none() || theirs.is_none() || theirs.as_deref() == node
        };
        Line {
            of: of.to_string(),
            at,
            snapshot: seen.snapshot,
            all_networks: seen.all_networks,
            all_endpoints: seen.all_endpoints,
            networks: seen.networks.iter().filter_map(rec).collect(),
            endpoints: seen.endpoints.iter().filter_map(rec).filter(mine).collect(),
        }
    }

    /// Whether it says nothing.
    pub fn is_empty(&self) -> bool {
        !self.all_networks
            && !self.all_endpoints
            && self.networks.is_empty()
            && self.endpoints.is_empty()
    }

    /// Whether it listed every network and every endpoint.
    pub fn is_full(&self) -> bool {
        self.all_networks && self.all_endpoints
    }
}

/// The one field of an endpoint's JSON a merge looks at.
#[derive(Deserialize)]
struct NodeOf {
    #[serde(default)]
    node: Option<String>,
}

/// A record of a [`Seen`] as one of a line; `None` if its JSON is not JSON.
fn rec(r: &Record) -> Option<Rec> {
    let json = match &r.json {
        None => None,
        Some(j) => match RawValue::from_string(j.clone()) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!("local copy: record {} left out: {e}", r.id);
                return None;
            }
        },
    };
    Some(Rec(r.id.clone(), r.revision, json))
}

/// The read-only store the verbs run on while the cluster is unreachable: the
/// copy's records; every write fails with the cluster's error, writing nothing.
#[derive(Debug)]
pub struct Fallback {
    mem: MemStore,
    /// Why the cluster is out of reach (its error's text).
    pub why: String,
    /// When the copy was last changed or listed in full.
    pub taken: SystemTime,
}

impl Fallback {
    /// Answers from `copy`, because of `why`.
    pub fn new(copy: &Copy, why: &str) -> Fallback {
        Fallback {
            mem: copy.to_store(),
            why: why.to_string(),
            taken: copy.updated(),
        }
    }

    /// What the read-only verbs say on stderr, once.
    pub fn notice(&self) -> String {
        format!(
            "etcd unreachable ({}): showing this host's local copy from {}",
            self.why,
            when(self.taken, SystemTime::now())
        )
    }
}

impl Store for Fallback {
    fn read<T>(&self, f: &mut dyn FnMut(&dyn Tx) -> Result<T>) -> Result<T> {
        self.mem.read(f)
    }

    fn write<T>(&self, _: &mut dyn FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        Err(Error::Unreachable(self.why.clone()))
    }
}

/// `at` as a date and how long before `now`: "Sat, 05 Dec 2026 21:20:23 GMT, 42 s ago".
pub fn when(at: SystemTime, now: SystemTime) -> String {
    let ago = now.duration_since(at).unwrap_or_default().as_secs();
    let ago = match ago {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s => format!("{} h ago", s / 3600),
    };
    format!("{}, {ago}", httpdate::fmt_http_date(at))
}

#[cfg(test)]
mod tests;
