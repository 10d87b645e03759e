//! [`KvTx`]: one optimistic transaction over etcd's keys. Every read is taken at
//! one revision (the first read's), so a transaction sees a consistent snapshot;
//! writes are buffered (and seen by later reads of the same transaction) and sent
//! at the end as one etcd `Txn` whose compares say "nothing I read has changed":
//!
//! - a key read: its `mod_revision` is still the one read (0: still absent);
//! - a key range read: no key in it has a `mod_revision` above the snapshot
//!   (catches keys created or changed in it), and the deletions in it are caught
//!   either by a compare on every key that was there (small ranges) or by the
//!   range's generation key, which every delete in it bumps (the large ones:
//!   networks, endpoints, a network's addresses, a caller's owners: [`gen_dir`]).
//!
//! If any compare fails, nothing is written and the store runs the whole
//! transaction again. Hint reads ([`KvTx::get_hint`], [`KvTx::range_hint`]) are not
//! compared: the allocation cursor is only where a search starts, and the addresses
//! a search passes over as held need no guard (one freed since was safely passed
//! over); the free address it takes is compared ([`KvTx::get_if_absent`]). So one
//! allocation adds one compare, however many held addresses it passes (etcd allows
//! [`MAX_TXN_OPS`] in all).

use crate::seen::{Record, Seen};
use crate::store::{Conn, REQUEST_TIMEOUT};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use lanyard_core::{Error, Result};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

/// The largest number of compares or operations one etcd `Txn` may carry
/// (etcd's `--max-txn-ops`, 128 by default).
pub(crate) const MAX_TXN_OPS: usize = 128;

/// Keys per read of [`KvTx::range_hint`] (a network's holdings may be many
/// thousand: one answer stays far below gRPC's message size limit).
const HINT_PAGE: i64 = 1000;

/// The generation key's directory of `key`, if deletions in its range are counted
/// there instead of compared key by key: the ranges that may hold many keys.
pub(crate) fn gen_dir(key: &str) -> Option<&str> {
    for dir in ["net/", "ep/"] {
        if key.starts_with(dir) {
            return Some(dir);
        }
    }
    let rest = key.strip_prefix("hold/")?;
    if rest.starts_with("netns/") || rest.starts_with("port/") {
        return None;
    }
    let sep = rest.find(crate::tx::SEP)?;
    Some(&key[..5 + sep + 1])
}

/// One read for the commit's compares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Read {
    /// A key's `mod_revision` as read (0: absent).
    Key(i64),
    /// A range `[key, end)`: no key in it may be newer than the snapshot.
    Range(String),
}

#[derive(Default)]
struct State {
    /// The snapshot revision, from the first read.
    rev: Option<i64>,
    /// Reads to compare at commit, by key (a range by its start, with its end).
    reads: BTreeMap<String, Vec<Read>>,
    /// Buffered writes: `Some(value)` puts, `None` deletes.
    writes: BTreeMap<String, Option<String>>,
    /// When observing: the networks and endpoints read, by key, with their
    /// `mod_revision`, and whether all of them were listed.
    seen: BTreeMap<String, (i64, String)>,
    listed_networks: bool,
    listed_endpoints: bool,
}

/// The keys a [`Seen`] reports: `net/ID` and `ep/ID`.
const OBSERVED: [&str; 2] = ["net/", "ep/"];

impl State {
    /// What this transaction saw of networks and endpoints; what it writes counts
    /// at revision `written_at`.
    fn seen(&self, written_at: i64) -> Seen {
        let mut out = Seen {
            snapshot: self.rev.unwrap_or(0),
            all_networks: self.listed_networks,
            all_endpoints: self.listed_endpoints,
            ..Seen::default()
        };
        let read = self
            .seen
            .iter()
            .filter(|(k, _)| !self.writes.contains_key(*k))
            .map(|(k, (r, v))| (k, *r, Some(v.clone())));
        let written = self.writes.iter().map(|(k, w)| (k, written_at, w.clone()));
        for (key, revision, json) in read.chain(written) {
            let (list, id) = if let Some(id) = key.strip_prefix("net/") {
                (&mut out.networks, id)
            } else if let Some(id) = key.strip_prefix("ep/") {
                (&mut out.endpoints, id)
            } else {
                continue;
            };
            list.push(Record {
                id: id.to_string(),
                revision,
                json,
            });
        }
        out
    }
}

/// One optimistic transaction (see the module doc). Keys are given without the
/// store's prefix.
pub(crate) struct KvTx<'a> {
    conn: &'a Conn,
    st: RefCell<State>,
    /// How many times this transaction already ran into a conflict.
    pub(crate) attempt: u32,
    /// Whether to note what it sees of networks and endpoints ([`KvTx::seen`]).
    observe: bool,
}

/// How a commit ended.
pub(crate) enum Commit {
    /// Applied at this revision (the snapshot's when nothing was written), with
    /// what was seen when observing.
    Done(Option<Seen>),
    /// Something read has changed since; nothing was written.
    Conflict,
}

impl<'a> KvTx<'a> {
    /// A transaction's `attempt`-th run (0: the first).
    pub(crate) fn new(conn: &'a Conn, attempt: u32, observe: bool) -> Self {
        KvTx {
            conn,
            st: RefCell::new(State::default()),
            attempt,
            observe,
        }
    }

    /// What a read-only transaction saw, when observing.
    pub(crate) fn seen(&self) -> Option<Seen> {
        self.observe.then(|| self.st.borrow().seen(0))
    }

    /// Reads `[start, end)` (a single key when `end` is `None`) at the snapshot.
    fn fetch(
        &self,
        start: &str,
        end: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(String, String, i64)>> {
        let rev = self.st.borrow().rev;
        let mut opts = GetOptions::new();
        if let Some(r) = rev {
            opts = opts.with_revision(r);
        }
        if let Some(e) = end {
            opts = opts.with_range(self.conn.key(e));
        }
        if limit > 0 {
            opts = opts.with_limit(limit);
        }
        let key = self.conn.key(start);
        let resp = self.conn.run("reading", start, |mut kv| {
            let (key, opts) = (key.clone(), opts.clone());
            async move { kv.get(key, Some(opts)).await }
        })?;
        if rev.is_none() {
            let r = resp.header().map(|h| h.revision()).unwrap_or(0);
            self.st.borrow_mut().rev = Some(r);
        }
        let plen = self.conn.prefix.len();
        let got = resp
            .kvs()
            .iter()
            .map(|kv| {
                let k = String::from_utf8_lossy(&kv.key()[plen..]).into_owned();
                let v = String::from_utf8(kv.value().to_vec()).map_err(|_| {
                    Error::Store(format!("etcd: key {k:?} holds a value that is not UTF-8"))
                })?;
                Ok((k, v, kv.mod_revision()))
            })
            .collect::<Result<Vec<_>>>()?;
        if self.observe {
            let mut st = self.st.borrow_mut();
            for (k, v, r) in &got {
                if OBSERVED.iter().any(|p| k.starts_with(p)) {
                    st.seen.insert(k.clone(), (*r, v.clone()));
                }
            }
            if limit == 0 && end == Some(prefix_end(start).as_str()) {
                st.listed_networks |= start == "net/";
                st.listed_endpoints |= start == "ep/";
            }
        }
        Ok(got)
    }

    fn note(&self, key: &str, r: Read) {
        let mut st = self.st.borrow_mut();
        let v = st.reads.entry(key.to_string()).or_default();
        if !v.contains(&r) {
            v.push(r);
        }
    }

    /// The value of `key`; compared at commit.
    pub(crate) fn get(&self, key: &str) -> Result<Option<String>> {
        self.get_inner(key, true)
    }

    /// The value of `key`, not compared at commit: for a hint whose staleness is
    /// harmless (the allocation cursor).
    pub(crate) fn get_hint(&self, key: &str) -> Result<Option<String>> {
        self.get_inner(key, false)
    }

    /// The value of `key`, compared at commit only when absent ("still absent"): for
    /// the allocator's search, which takes the first absent address and passes over
    /// the held ones (see the module doc).
    pub(crate) fn get_if_absent(&self, key: &str) -> Result<Option<String>> {
        let got = self.get_inner(key, false)?;
        if got.is_none() && !self.st.borrow().writes.contains_key(key) {
            self.note(key, Read::Key(0));
        }
        Ok(got)
    }

    fn get_inner(&self, key: &str, compare: bool) -> Result<Option<String>> {
        if let Some(w) = self.st.borrow().writes.get(key) {
            return Ok(w.clone());
        }
        let mut got = self.fetch(key, None, 0)?;
        let (value, rev) = match got.pop() {
            Some((_, v, r)) => (Some(v), r),
            None => (None, 0),
        };
        if compare {
            self.note(key, Read::Key(rev));
        }
        Ok(value)
    }

    /// Every (key, value) in `[start, end)`, by key, not compared at commit: for
    /// the held addresses an allocator's search passes over (see the module doc).
    /// Read in pages of [`HINT_PAGE`] keys, all at the snapshot.
    pub(crate) fn range_hint(&self, start: &str, end: &str) -> Result<Vec<(String, String)>> {
        let mut got = vec![];
        let mut from = start.to_string();
        loop {
            let page = self.fetch(&from, Some(end), HINT_PAGE)?;
            let more = page.len() as i64 == HINT_PAGE;
            got.extend(page);
            match got.last() {
                // The next key after the last one read.
                Some((k, _, _)) if more => from = format!("{k}\0"),
                _ => break,
            }
        }
        Ok(self.with_writes(start, end, got))
    }

    /// Every (key, value) whose key starts with `prefix`, by key; compared at commit.
    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        self.range(prefix, &prefix_end(prefix), 0)
    }

    /// Every (key, value) in `[start, end)`, by key, at most `limit` of them read
    /// from etcd (0: all); compared at commit.
    pub(crate) fn range(
        &self,
        start: &str,
        end: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>> {
        let got = self.fetch(start, Some(end), limit)?;
        self.note(start, Read::Range(end.to_string()));
        let counted = gen_dir(start).filter(|d| end <= prefix_end(d).as_str());
        match counted {
            Some(dir) => {
                let g = format!("gen/{dir}");
                self.get(&g)?;
            }
            None => {
                for (k, _, r) in &got {
                    self.note(k, Read::Key(*r));
                }
            }
        }
        Ok(self.with_writes(start, end, got))
    }

    /// `got`, read from `[start, end)`, as this transaction's writes have left it.
    fn with_writes(
        &self,
        start: &str,
        end: &str,
        got: Vec<(String, String, i64)>,
    ) -> Vec<(String, String)> {
        let mut m: BTreeMap<String, String> = got.into_iter().map(|(k, v, _)| (k, v)).collect();
        for (k, w) in self
            .st
            .borrow()
            .writes
            .range(start.to_string()..end.to_string())
        {
            match w {
                Some(v) => m.insert(k.clone(), v.clone()),
                None => m.remove(k),
            };
        }
        m.into_iter().collect()
    }

    /// Buffers a put of `key`.
    pub(crate) fn put(&self, key: &str, value: &str) {
        self.st
            .borrow_mut()
            .writes
            .insert(key.to_string(), Some(value.to_string()));
    }

    /// Buffers a delete of `key` (and a bump of its range's generation key).
    pub(crate) fn delete(&self, key: &str) {
        let mut st = self.st.borrow_mut();
        st.writes.insert(key.to_string(), None);
        if let Some(dir) = gen_dir(key) {
            st.writes.insert(format!("gen/{dir}"), Some(String::new()));
        }
    }

    /// Sends the buffered writes, if any, guarded by the compares of every read.
    pub(crate) fn commit(self) -> Result<Commit> {
        let st = self.st.into_inner();
        let observe = self.observe;
        let done = |rev: i64| Ok(Commit::Done(observe.then(|| st.seen(rev))));
        let snap = st.rev.unwrap_or(0);
        if st.writes.is_empty() {
            return done(snap);
        }
        let mut cmps = vec![];
        for (k, reads) in &st.reads {
            for r in reads {
                cmps.push(match r {
                    Read::Key(rev) => {
                        Compare::mod_revision(self.conn.key(k), CompareOp::Equal, *rev)
                    }
                    Read::Range(end) => {
                        Compare::mod_revision(self.conn.key(k), CompareOp::Less, snap + 1)
                            .with_range(self.conn.key(end))
                    }
                });
            }
        }
        let ops: Vec<TxnOp> = st
            .writes
            .iter()
            .map(|(k, w)| match w {
                Some(v) => TxnOp::put(self.conn.key(k), v.as_bytes(), None),
                None => TxnOp::delete(self.conn.key(k), None),
            })
            .collect();
        if cmps.len() > MAX_TXN_OPS || ops.len() > MAX_TXN_OPS {
            return Err(Error::Store(format!(
                "etcd: one transaction needs {} compares and {} writes, more than etcd's \
                 default --max-txn-ops ({MAX_TXN_OPS}) allows; start etcd with a larger \
                 --max-txn-ops",
                cmps.len(),
                ops.len()
            )));
        }
        let txn = Txn::new().when(cmps).and_then(ops);
        // A commit whose answer was lost (a member died) may have been applied: before
        // sending it again, look whether the longest value it puts is there, newer
        // than the snapshot. Sent again blindly, an applied commit would fail its
        // compares and its closure would run again (an allocation would take a
        // second address).
        let probe = st
            .writes
            .iter()
            .filter_map(|(k, w)| Some((k, w.as_ref()?)))
            .max_by_key(|(_, v)| v.len());
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut sent = false;
        loop {
            if sent {
                if let Some((k, v)) = probe {
                    let key = self.conn.key(k);
                    let mut kv = self.conn.kv.clone();
                    match self
                        .conn
                        .once(async move { kv.get(key, None).await }, deadline)
                    {
                        Ok(r) => {
                            let applied = r
                                .kvs()
                                .first()
                                .filter(|x| x.value() == v.as_bytes() && x.mod_revision() > snap);
                            if let Some(x) = applied {
                                return done(x.mod_revision());
                            }
                        }
                        Err(why) => {
                            self.conn.pause("committing", "", &why, deadline)?;
                            continue;
                        }
                    }
                }
            }
            let mut kv = self.conn.kv.clone();
            let t = txn.clone();
            sent = true;
            match self.conn.once(async move { kv.txn(t).await }, deadline) {
                Ok(resp) if resp.succeeded() => {
                    return done(resp.header().map_or(snap, |h| h.revision()));
                }
                Ok(_) => return Ok(Commit::Conflict),
                Err(why) => self.conn.pause("committing", "", &why, deadline)?,
            }
        }
    }
}

/// The smallest key above every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> String {
    // Keys here are ASCII; bump the last byte.
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0x7f {
            b.push(last + 1);
            return String::from_utf8(b).unwrap_or_default();
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_ranges_count_deletions_in_a_generation_key() {
        assert_eq!(gen_dir("net/abc"), Some("net/"));
        assert_eq!(gen_dir("ep/"), Some("ep/"));
        assert_eq!(gen_dir("hold/n1\u{1f}192.0.2.5"), Some("hold/n1\u{1f}"));
        assert_eq!(
            gen_dir("hold/owner/cni/x\u{1f}c/eth0"),
            Some("hold/owner/cni/x\u{1f}")
        );
        assert_eq!(gen_dir("hold/netns/1:2\u{1f}e"), None);
        assert_eq!(gen_dir("hold/port/tcp/80\u{1f}"), None);
        assert_eq!(gen_dir("meta/x"), None);
        assert_eq!(prefix_end("ep/"), "ep0");
        assert_eq!(prefix_end("hold/n\u{1f}"), "hold/n ");
    }
}
