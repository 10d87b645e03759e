//! This host's local copy of a shared (etcd) store: every network and this host's
//! own endpoints, so that the read-only verbs (`network ls/inspect`, `endpoint
//! ls/inspect/check`, `doctor`) still answer while the cluster is unreachable.
//!
//! The copy is one JSON file, `STATE_DIR/etcd-copy.json`, fed by what the etcd
//! transactions of this host's processes saw anyway ([`Seen`]: the records they
//! read or wrote, with etcd's revisions): it costs no extra request to the
//! cluster. Each merge runs under an advisory lock (`etcd-copy.lock`), reads the
//! file, applies the records and, when anything changed, writes a temp file and
//! swaps it in atomically ([`CopyFile::merge`]), so a reader never sees half a copy.
//!
//! Merging is by revision, so processes that race never make the copy go back in
//! time: a record replaces what the copy holds only if its revision is newer; a
//! deletion leaves a tombstone at the deleting revision (an older read of the
//! record, merged later, loses to it); a full listing at revision `s` (every
//! network, or every endpoint) drops what it did not list and was older than `s`,
//! and becomes the floor below which an unknown record is known to be gone. The
//! daemon lists everything now and then ([`crate::store::heartbeat`]), which also
//! brings in what other hosts changed.
//!
//! JSON rather than a second SQLite file: the copy is only ever read whole (into
//! the reference in-memory store, [`MemStore`]), it stays readable with any tool,
//! and its merge needs no schema. Records are kept as etcd's JSON, unparsed
//! (`RawValue`), so a merge only scans the file and moves text; they are parsed
//! when a verb reads the copy. It holds this host's endpoints only.

use lanyard_core::model::{Endpoint, Network};
use lanyard_core::store::mem::MemStore;
use lanyard_core::store::{Store, Tx};
use lanyard_core::{Error, Result};
use lanyard_store_etcd::{Record, Seen};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The copy's file in the state dir.
pub const FILE: &str = "etcd-copy.json";
/// The lock every merge holds.
const LOCK: &str = "etcd-copy.lock";
/// The next copy, while it is written (under the lock: one writer at a time).
const TMP: &str = "etcd-copy.json.tmp";
/// The file's format version.
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

    /// Merges what one transaction saw (see the module doc); whether anything
    /// changed. Records that do not parse, and other hosts' endpoints, are skipped.
    pub fn merge(&mut self, seen: &Seen) -> bool {
        let mut changed = false;
        for r in &seen.networks {
            if let Some(rec) = raw(r) {
                changed |= self.networks.apply(&r.id, r.revision, rec);
            }
        }
        for r in &seen.endpoints {
            let Some(rec) = raw(r) else {
                continue;
            };
            let other_host = rec.as_ref().is_some_and(|j| {
                let node = serde_json::from_str::<NodeOf>(j.get())
                    .ok()
                    .and_then(|n| n.node);
                self.node.is_some() && node.is_some() && node != self.node
            });
            if !other_host {
                changed |= self.endpoints.apply(&r.id, r.revision, rec);
            }
        }
        let ids = |rs: &[Record]| -> BTreeSet<String> {
            rs.iter()
                .filter(|r| r.json.is_some())
                .map(|r| r.id.clone())
                .collect()
        };
        if seen.all_networks {
            let ids = ids(&seen.networks);
            let ids = ids.iter().map(String::as_str).collect();
            changed |= self.networks.listed(seen.snapshot, &ids);
        }
        if seen.all_endpoints {
            let ids = ids(&seen.endpoints);
            let ids = ids.iter().map(String::as_str).collect();
            changed |= self.endpoints.listed(seen.snapshot, &ids);
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

/// The one field of an endpoint's JSON a merge looks at.
#[derive(Deserialize)]
struct NodeOf {
    #[serde(default)]
    node: Option<String>,
}

/// A record's JSON as a raw value: `Some(None)` for a deletion, `None` if it is
/// not JSON.
fn raw(r: &Record) -> Option<Option<Box<RawValue>>> {
    match &r.json {
        None => Some(None),
        Some(j) => match RawValue::from_string(j.clone()) {
            Ok(v) => Some(Some(v)),
            Err(e) => {
                tracing::debug!("local copy: record {} left out: {e}", r.id);
                None
            }
        },
    }
}

/// Where this host keeps its copy of one store.
#[derive(Debug, Clone)]
pub struct CopyFile {
    dir: PathBuf,
    store: String,
    node: Option<String>,
}

impl CopyFile {
    /// The copy of `store` (its members and prefix, as one string) for `node`, in
    /// the state dir `dir`.
    pub fn new(dir: &Path, store: &str, node: Option<&str>) -> CopyFile {
        CopyFile {
            dir: dir.to_path_buf(),
            store: store.to_string(),
            node: node.map(str::to_string),
        }
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The copy, if there is one of this store for this node.
    pub fn load(&self) -> Result<Option<Copy>> {
        let text = match std::fs::read(self.path()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error("reading", e)),
        };
        let copy: Copy = serde_json::from_slice(&text).map_err(|e| {
            Error::Other(format!(
                "local copy {}: unreadable: {e}",
                self.path().display()
            ))
        })?;
        Ok(Some(copy).filter(|c| c.is_of(&self.store, self.node.as_deref())))
    }

    /// Merges `seen` into the file (under its lock): written, atomically, only
    /// when something changed or everything was listed (then the copy is known
    /// current: its time moves on). A copy that is unreadable
    /// or of another store or node starts afresh.
    pub fn merge(&self, seen: &Seen) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        let Some(_lock) = self.lock()? else {
            return Ok(());
        };
        let mut copy = self
            .load()
            .unwrap_or(None)
            .unwrap_or_else(|| Copy::new(&self.store, self.node.as_deref()));
        let changed = copy.merge(seen);
        let full = seen.all_networks && seen.all_endpoints;
        if changed || full || copy.updated == 0 {
            copy.updated = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.write(&copy)?;
        }
        Ok(())
    }

    /// Writes `copy` to a temp file beside the copy and swaps the two atomically
    /// (`renameat2(RENAME_EXCHANGE)`, then the old one is unlinked): a plain rename
    /// over an existing file makes ext4 flush the new file's data first
    /// (`auto_da_alloc`), 3-4 ms here against 0.1-0.2 ms for the swap. The first
    /// copy, or a file system without the swap, gets a plain rename. Not fsynced:
    /// a power cut may cost the copy (it then starts afresh), never the store.
    fn write(&self, copy: &Copy) -> Result<()> {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        use rustix::io::Errno;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let (tmp, path) = (self.dir.join(TMP), self.path());
        let json = serde_json::to_vec(copy)
            .map_err(|e| Error::Other(format!("local copy: encoding: {e}")))?;
        // One left by a crash goes first: truncating it would cost the flush too.
        let _ = std::fs::remove_file(&tmp);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&json))
            .and_then(
                |()| match renameat_with(CWD, &tmp, CWD, &path, RenameFlags::EXCHANGE) {
                    Ok(()) => std::fs::remove_file(&tmp),
                    Err(Errno::NOENT | Errno::INVAL | Errno::NOTSUP | Errno::NOSYS) => {
                        std::fs::rename(&tmp, &path)
                    }
                    Err(e) => Err(e.into()),
                },
            );
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.io_error("writing", e)
        })
    }

    /// The merge lock (an exclusive `flock`, dropped with the file); `None` when
    /// this caller may not write the state dir (a user reading a shared store:
    /// root's daemon and verbs keep the copy).
    fn lock(&self) -> Result<Option<std::fs::File>> {
        use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
        use std::os::unix::fs::OpenOptionsExt;
        let f = match std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.dir.join(LOCK))
        {
            Ok(f) => f,
            Err(e) if matches!(e.kind(), PermissionDenied | ReadOnlyFilesystem) => {
                tracing::debug!("local copy not kept: {}", self.io_error("locking", e));
                return Ok(None);
            }
            Err(e) => return Err(self.io_error("locking", e)),
        };
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.io_error("locking", e.into()))?;
        Ok(Some(f))
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> Error {
        Error::Other(format!("local copy {}: {what}: {e}", self.path().display()))
    }
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
mod tests {
    use super::*;
    use lanyard_core::model::NetworkRequest;

    const STORE: &str = "10.0.0.5:2379/lanyard/";

    fn net(name: &str, idc: char) -> Network {
        NetworkRequest {
            name: name.into(),
            driver: Some("bridge".into()),
            subnets: vec!["198.51.100.0/24".into()],
            ..Default::default()
        }
        .validate(idc.to_string().repeat(64), 0)
        .unwrap()
    }

    fn ep(n: &Network, idc: char, node: &str, addr: &str) -> Endpoint {
        serde_json::from_value(serde_json::json!({
            "id": idc.to_string().repeat(64), "name": null, "network_id": n.id,
            "network": n.name, "netns": "/run/netns/c", "netns_inode": [1, idc as u64],
            "ifname": "eth0", "host_ifname": null, "mac": null,
            "addresses": [addr], "gateways": [], "state": "active", "created": 0,
            "node": node
        }))
        .unwrap()
    }

    fn rec<T: Serialize>(id: &str, revision: i64, v: Option<&T>) -> Record {
        Record {
            id: id.to_string(),
            revision,
            json: v.map(|v| serde_json::to_string(v).unwrap()),
        }
    }

    fn ids(eps: Vec<Endpoint>) -> Vec<char> {
        eps.iter().map(|e| e.id.chars().next().unwrap()).collect()
    }

    #[test]
    fn copy_round_trips_through_its_file_and_answers_as_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let f = CopyFile::new(dir.path(), STORE, Some("h1"));
        assert!(f.load().unwrap().is_none(), "no copy yet");
        let n = net("lan", 'n');
        let (mine, theirs) = (
            ep(&n, 'a', "h1", "198.51.100.7/24"),
            ep(&n, 'b', "h2", "198.51.100.8/24"),
        );
        f.merge(&Seen {
            snapshot: 9,
            all_networks: true,
            all_endpoints: true,
            networks: vec![rec(&n.id, 3, Some(&n))],
            endpoints: vec![
                rec(&mine.id, 5, Some(&mine)),
                rec(&theirs.id, 6, Some(&theirs)),
            ],
        })
        .unwrap();
        let copy = f.load().unwrap().expect("written");
        assert_eq!(copy.networks(), std::slice::from_ref(&n));
        assert_eq!(ids(copy.endpoints()), ['a'], "this host's endpoints only");
        let age = SystemTime::now().duration_since(copy.updated()).unwrap();
        assert!(age < Duration::from_secs(60), "{age:?}");
        // As a store: look-ups by name and id prefix, the addresses held.
        let store = copy.to_store();
        let (found, holder) = store
            .read(&mut |tx| {
                Ok((
                    tx.network("lan")?,
                    tx.address_owner(&n.id, "198.51.100.7".parse().unwrap())?,
                ))
            })
            .unwrap();
        assert_eq!(found.as_ref(), Some(&n));
        assert_eq!(holder.as_deref(), Some(mine.id.as_str()));
        // Another store's or another host's copy is not this one.
        assert!(CopyFile::new(dir.path(), "other:2379/lanyard/", Some("h1"))
            .load()
            .unwrap()
            .is_none());
        assert!(CopyFile::new(dir.path(), STORE, Some("h2"))
            .load()
            .unwrap()
            .is_none());
    }

    #[test]
    fn copy_is_replaced_whole_and_a_failed_write_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = CopyFile::new(dir.path(), STORE, Some("h1"));
        let n = net("lan", 'n');
        let seen = |rev| Seen {
            snapshot: rev,
            networks: vec![rec(&n.id, rev, Some(&n))],
            ..Seen::default()
        };
        f.merge(&seen(1)).unwrap();
        let before = std::fs::read(f.path()).unwrap();
        // The temp file cannot be made (a directory holds its name): the merge
        // fails, the copy stays whole, nothing is left behind.
        let tmp = dir.path().join(TMP);
        std::fs::create_dir(&tmp).unwrap();
        assert!(f.merge(&seen(2)).is_err());
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
        std::fs::remove_dir(&tmp).unwrap();
        // Swapped in whole: the old file (held open) is untouched, the new one whole.
        let old = std::fs::File::open(f.path()).unwrap();
        f.merge(&seen(3)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            old.metadata().unwrap().ino(),
            std::fs::metadata(f.path()).unwrap().ino()
        );
        assert_eq!(f.load().unwrap().unwrap().networks.entries[&n.id].rev, 3);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // An unreadable copy starts afresh on the next merge.
        std::fs::write(f.path(), b"{half").unwrap();
        assert!(f.load().is_err());
        f.merge(&seen(4)).unwrap();
        assert_eq!(f.load().unwrap().unwrap().networks().len(), 1);
    }

    #[test]
    fn copy_never_goes_back_in_time_when_processes_merge_out_of_order() {
        let n = net("lan", 'n');
        let (a, b) = (
            ep(&n, 'a', "h1", "198.51.100.7/24"),
            ep(&n, 'b', "h1", "198.51.100.8/24"),
        );
        let mut c = Copy::new(STORE, Some("h1"));
        let eps = |records: Vec<Record>| Seen {
            snapshot: records.iter().map(|r| r.revision).max().unwrap_or(0),
            endpoints: records,
            ..Seen::default()
        };
        // a attached at 5, detached at 8; a read of it at 5 merged late loses.
        assert!(c.merge(&eps(vec![rec(&a.id, 5, Some(&a))])));
        assert!(c.merge(&eps(vec![rec::<Endpoint>(&a.id, 8, None)])));
        assert!(!c.merge(&eps(vec![rec(&a.id, 5, Some(&a))])));
        assert_eq!(ids(c.endpoints()), Vec::<char>::new());
        // A full listing at 10 names b only: a's tombstone goes; b stays.
        let full = Seen {
            snapshot: 10,
            all_endpoints: true,
            endpoints: vec![rec(&b.id, 9, Some(&b))],
            ..Seen::default()
        };
        assert!(c.merge(&full));
        assert_eq!(ids(c.endpoints()), ['b']);
        assert_eq!(
            c.endpoints.entries.len(),
            1,
            "tombstones below the floor go"
        );
        // An older listing changes nothing; a record older than the floor that the
        // copy does not know was gone by then.
        let stale = Seen {
            snapshot: 7,
            all_endpoints: true,
            ..Seen::default()
        };
        assert!(!c.merge(&stale));
        assert!(!c.merge(&eps(vec![rec(&a.id, 5, Some(&a))])));
        assert_eq!(ids(c.endpoints()), ['b']);
        // A newer listing without b drops it; a later change of b comes back in.
        let empty = Seen {
            snapshot: 12,
            all_endpoints: true,
            ..Seen::default()
        };
        assert!(c.merge(&empty));
        assert_eq!(ids(c.endpoints()), Vec::<char>::new());
        assert!(c.merge(&eps(vec![rec(&b.id, 13, Some(&b))])));
        assert_eq!(ids(c.endpoints()), ['b']);
    }

    #[test]
    fn fallback_reads_the_copy_refuses_every_write_and_says_how_old_it_is() {
        let n = net("lan", 'n');
        let mut c = Copy::new(STORE, Some("h1"));
        c.merge(&Seen {
            snapshot: 4,
            networks: vec![rec(&n.id, 4, Some(&n))],
            ..Seen::default()
        });
        c.updated = 1_700_000_000;
        let why = "etcd at 10.0.0.5:2379: connecting: refused (is the cluster up?)";
        let fb = Fallback::new(&c, why);
        assert_eq!(
            fb.read(&mut |tx| tx.networks()).unwrap(),
            std::slice::from_ref(&n)
        );
        let mut ran = false;
        let e = fb
            .write(&mut |tx| {
                ran = true;
                tx.delete_network(&n.id)
            })
            .unwrap_err();
        assert!(matches!(&e, Error::Unreachable(w) if w == why), "{e:?}");
        assert!(!ran, "a write never runs on the copy");
        assert_eq!(fb.read(&mut |tx| tx.networks()).unwrap().len(), 1);
        let note = fb.notice();
        assert!(
            note.starts_with(&format!(
                "etcd unreachable ({why}): showing this host's local copy from "
            )),
            "{note}"
        );
        assert!(note.contains("Tue, 14 Nov 2023 22:13:20 GMT"), "{note}");
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(when(at, at + Duration::from_secs(42)).ends_with(", 42 s ago"));
        assert!(when(at, at + Duration::from_secs(600)).ends_with(", 10 min ago"));
        assert!(when(at, at + Duration::from_secs(3 * 3600)).ends_with(", 3 h ago"));
    }
}
