//! Watching nftables from this process: [`NftWatch`] hears every committed nftables
//! change in its network namespace as it happens, and [`table_shape`] reads what one
//! table holds (its chains with their rule counts, its named sets), cheaply.
//!
//! Both speak nfnetlink (`NETLINK_NETFILTER`) directly, without libnftables. The
//! kernel announces each object a transaction adds or deletes to the multicast group
//! `NFNLGRP_NFTABLES`, then one `NFT_MSG_NEWGEN` when the transaction is committed:
//! `nft flush ruleset` arrives as the deletions of every rule, set, chain and table,
//! then a new generation. Every announcement names its table (attribute 1 of every
//! nftables object: `NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, …), so a
//! watcher can tell a change to its own table from one to somebody else's.
//!
//! [`table_shape`] dumps chains, sets and rules but never set elements, so it costs the
//! same with ten published ports as with ten thousand.
//!
//! Like the rest of this crate, both act in the network namespace of the thread that
//! opens them, and need `CAP_NET_ADMIN` there.

use crate::socket::align4;
use crate::wire;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

/// `NFNLGRP_NFTABLES` (`<linux/netfilter/nfnetlink.h>`): nftables change events.
pub const NFNLGRP_NFTABLES: u32 = 7;
/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nftables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNETLINK_V0`.
const NFNETLINK_V0: u8 = 0;

/// `enum nf_tables_msg_types` (`<linux/netfilter/nf_tables.h>`), the ones used here.
mod msg {
    pub const NEWTABLE: u8 = 0;
    pub const GETTABLE: u8 = 1;
    pub const DELTABLE: u8 = 2;
    pub const NEWCHAIN: u8 = 3;
    pub const GETCHAIN: u8 = 4;
    pub const DELCHAIN: u8 = 5;
    pub const NEWRULE: u8 = 6;
    pub const GETRULE: u8 = 7;
    pub const DELRULE: u8 = 8;
    pub const NEWSET: u8 = 9;
    pub const GETSET: u8 = 10;
    pub const DELSET: u8 = 11;
    pub const DELSETELEM: u8 = 14;
    pub const NEWGEN: u8 = 15;
    pub const DELOBJ: u8 = 20;
    pub const DELFLOWTABLE: u8 = 24;
    /// `NFT_MSG_DESTROYTABLE` … `NFT_MSG_DESTROYFLOWTABLE` (kernel 6.3+): deletions
    /// that do not fail when the object is missing.
    pub const DESTROY_FIRST: u8 = 26;
    pub const DESTROY_LAST: u8 = 32;
}

/// Attribute 1 of tables, chains, rules, sets, element lists, objects and flowtables:
/// the table's name (`NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`,
/// `NFTA_SET_TABLE`, `NFTA_SET_ELEM_LIST_TABLE`, `NFTA_OBJ_TABLE`, …).
const ATTR_TABLE: u16 = 1;
/// `NFTA_CHAIN_NAME`.
const NFTA_CHAIN_NAME: u16 = 3;
/// `NFTA_RULE_CHAIN`.
const NFTA_RULE_CHAIN: u16 = 2;
/// `NFTA_SET_NAME`.
const NFTA_SET_NAME: u16 = 2;
/// `NFTA_GEN_ID`, `NFTA_GEN_PROC_PID`, `NFTA_GEN_PROC_NAME`.
const NFTA_GEN_ID: u16 = 1;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;

/// `struct nlmsghdr` and `struct nfgenmsg`.
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// Netlink control message types.
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Request flags.
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;

/// Receive buffer: the kernel packs several announcements into one datagram of at
/// most a few pages; dump answers are at most 32 KiB plus a page.
const RECV_BUF: usize = 64 * 1024;
/// Socket receive queue asked for, so a burst (a big `flush ruleset`) is not lost.
const RCVBUF_WANTED: libc::c_int = 4 << 20;
/// A dump interrupted by concurrent changes is retried this often.
const DUMP_TRIES: usize = 5;

/// nftables address families (`NFPROTO_*`), by the name nft uses.
pub fn family_number(name: &str) -> Option<u8> {
    Some(match name {
        "inet" => 1,
        "ip" => 2,
        "arp" => 3,
        "netdev" => 5,
        "bridge" => 7,
        "ip6" => 10,
        _ => return None,
    })
}

/// The nft name of an `NFPROTO_*` number, `"?"` if unknown.
pub fn family_name(n: u8) -> &'static str {
    match n {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => "?",
    }
}

/// One announcement heard by [`NftWatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftEvent {
    /// An object was added or deleted, in a transaction not yet announced as committed.
    Change {
        /// Was it a deletion (`NFT_MSG_DEL*`, `NFT_MSG_DESTROY*`)?
        deleted: bool,
        /// What kind of object: `table`, `chain`, `rule`, `set`, `element`, `object`,
        /// `flowtable`.
        object: &'static str,
        /// `NFPROTO_*` of its table.
        family: u8,
        /// Its table's name, when the announcement carried one (it always should).
        table: Option<String>,
    },
    /// A transaction was committed (`NFT_MSG_NEWGEN`): the new generation's id and the
    /// process that made it, when the kernel says.
    NewGeneration {
        /// `NFTA_GEN_ID`.
        id: u32,
        /// `NFTA_GEN_PROC_PID`.
        pid: Option<u32>,
        /// `NFTA_GEN_PROC_NAME`, e.g. `nft`, `iptables-nft`, `lanyard`.
        process: Option<String>,
    },
    /// The socket's queue overflowed (`ENOBUFS`): announcements were lost, so anything
    /// may have changed.
    Lost,
}

impl NftEvent {
    /// Could this event have taken something out of table `name` of `family`? True
    /// for deletions in that table (or naming no table) and for [`NftEvent::Lost`].
    pub fn may_have_removed_from(&self, family: u8, name: &str) -> bool {
        match self {
            NftEvent::Change {
                deleted: true,
                family: f,
                table,
                ..
            } => *f == family && table.as_deref().is_none_or(|t| t == name),
            NftEvent::Lost => true,
            _ => false,
        }
    }
}

/// The kind of object a `NFT_MSG_NEW*`/`DEL*`/`DESTROY*` type is about, and whether it
/// deletes; None for types that are neither (gets, traces, generations).
fn classify(t: u8) -> Option<(&'static str, bool)> {
    Some(match t {
        msg::NEWTABLE => ("table", false),
        msg::DELTABLE => ("table", true),
        msg::NEWCHAIN => ("chain", false),
        msg::DELCHAIN => ("chain", true),
        msg::NEWRULE => ("rule", false),
        msg::DELRULE => ("rule", true),
        msg::NEWSET => ("set", false),
        msg::DELSET => ("set", true),
        12 => ("element", false),
        msg::DELSETELEM => ("element", true),
        18 => ("object", false),
        msg::DELOBJ => ("object", true),
        22 => ("flowtable", false),
        msg::DELFLOWTABLE => ("flowtable", true),
        t if (msg::DESTROY_FIRST..=msg::DESTROY_LAST).contains(&t) => {
            let objects = [
                "table",
                "chain",
                "rule",
                "set",
                "element",
                "object",
                "flowtable",
            ];
            (objects[usize::from(t - msg::DESTROY_FIRST)], true)
        }
        _ => return None,
    })
}

/// Splits a datagram into its netlink messages: (type, flags, seq, payload).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, u16, u32, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        let typ = u16::from_ne_bytes([rest[4], rest[5]]);
        let flags = u16::from_ne_bytes([rest[6], rest[7]]);
        let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let payload = &rest[NLMSG_HDRLEN..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((typ, flags, seq, payload))
    })
}

/// The nftables message type in a netlink type, if it is one.
fn nft_type(typ: u16) -> Option<u8> {
    (typ >> 8 == NFNL_SUBSYS_NFTABLES).then_some((typ & 0xff) as u8)
}

/// `nfgenmsg.nfgen_family` and the attributes after it.
fn nfgen(payload: &[u8]) -> Option<(u8, &[u8])> {
    (payload.len() >= NFGENMSG_LEN).then(|| (payload[0], &payload[NFGENMSG_LEN..]))
}

fn attr_string(attrs: &[u8], kind: u16) -> Option<String> {
    wire::attrs(attrs)
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| wire::string(v))
}

fn attr_be32(attrs: &[u8], kind: u16) -> Option<u32> {
    wire::attrs(attrs)
        .find(|(k, v)| *k == kind && v.len() >= 4)
        .map(|(_, v)| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}

/// Decodes one announcement; None for messages that are not nftables changes.
fn decode_event(typ: u16, payload: &[u8]) -> Option<NftEvent> {
    let t = nft_type(typ)?;
    let (family, attrs) = nfgen(payload)?;
    if t == msg::NEWGEN {
        return Some(NftEvent::NewGeneration {
            id: attr_be32(attrs, NFTA_GEN_ID).unwrap_or(0),
            pid: attr_be32(attrs, NFTA_GEN_PROC_PID),
            process: attr_string(attrs, NFTA_GEN_PROC_NAME),
        });
    }
    let (object, deleted) = classify(t)?;
    Some(NftEvent::Change {
        deleted,
        object,
        family,
        table: attr_string(attrs, ATTR_TABLE),
    })
}

/// A socket subscribed to nftables announcements in the namespace it was opened in.
/// Non-blocking: [`NftWatch::wait`] or the caller's own `poll` on [`AsFd`] says when
/// to call [`NftWatch::read`].
pub struct NftWatch {
    sock: Socket,
    buf: Vec<u8>,
}

impl std::fmt::Debug for NftWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftWatch")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

impl NftWatch {
    /// Subscribes to `NFNLGRP_NFTABLES` in the calling thread's network namespace.
    pub fn open() -> io::Result<NftWatch> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.add_membership(NFNLGRP_NFTABLES)?;
        sock.set_non_blocking(true)?;
        // A big queue, so a burst is not lost; SO_RCVBUFFORCE (root) may exceed
        // rmem_max, plain SO_RCVBUF is capped by it. Either way overflow is reported.
        let fd = sock.as_raw_fd();
        let size = RCVBUF_WANTED;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: setsockopt reads `size` (a c_int) for the given length.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
        Ok(NftWatch {
            sock,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Waits until announcements are ready to [`NftWatch::read`] (true) or `timeout`
    /// passes (false). An interrupting signal counts as "nothing yet".
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(false),
                _ => Err(e),
            };
        }
        Ok(rc > 0)
    }

    /// Every announcement queued now, in order; empty if none. Never blocks.
    pub fn read(&mut self) -> io::Result<Vec<NftEvent>> {
        let mut out = Vec::new();
        loop {
            let mut slice = &mut self.buf[..];
            match self.sock.recv(&mut slice, 0) {
                Ok(n) => {
                    let n = n.min(self.buf.len());
                    out.extend(
                        messages(&self.buf[..n]).filter_map(|(t, _, _, p)| decode_event(t, p)),
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The queue overflowed: say so, and go on reading what is left.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => out.push(NftEvent::Lost),
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsFd for NftWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the socket's fd is open for as long as `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.sock.as_raw_fd()) }
    }
}

impl AsRawFd for NftWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// What a table holds, without its set elements: chain name → number of rules, and
/// the names of its named sets and maps (anonymous `__set…` ones left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableShape {
    /// Chain name → rules in it.
    pub chains: BTreeMap<String, usize>,
    /// Named sets and maps.
    pub sets: BTreeSet<String>,
}

/// One request/answer exchange on a fresh `NETLINK_NETFILTER` socket.
struct Query {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Query {
    fn open() -> io::Result<Query> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        Ok(Query {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Sends nftables request `t` for `family` with `attrs` (type, string) and hands
    /// each answering message's attributes to `on_data`. `Ok(false)` when the kernel
    /// said `ENOENT` (no such table). Dumps interrupted by a concurrent change are
    /// retried.
    fn request(
        &mut self,
        t: u8,
        family: u8,
        dump: bool,
        attrs: &[(u16, &str)],
        on_data: &mut dyn FnMut(&[u8]),
    ) -> io::Result<bool> {
        for _ in 0..DUMP_TRIES {
            match self.request_once(t, family, dump, attrs, on_data)? {
                Answer::Done => return Ok(true),
                Answer::Missing => return Ok(false),
                Answer::Interrupted => continue,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "nftables dump kept being interrupted by concurrent changes",
        ))
    }

    fn request_once(
        &mut self,
        t: u8,
        family: u8,
        dump: bool,
        attrs: &[(u16, &str)],
        on_data: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Answer> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let flags = NLM_F_REQUEST | NLM_F_ACK | if dump { NLM_F_DUMP } else { 0 };
        let mut req = Vec::with_capacity(64);
        req.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
        req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | u16::from(t)).to_ne_bytes());
        req.extend_from_slice(&flags.to_ne_bytes());
        req.extend_from_slice(&seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]);
        for (kind, value) in attrs {
            let len = 4 + value.len() + 1;
            req.extend_from_slice(&(len as u16).to_ne_bytes());
            req.extend_from_slice(&kind.to_ne_bytes());
            req.extend_from_slice(value.as_bytes());
            req.push(0);
            req.resize(align4(req.len()), 0);
        }
        let total = req.len() as u32;
        req[..4].copy_from_slice(&total.to_ne_bytes());
        self.sock.send_to(&req, &SocketAddr::new(0, 0), 0)?;
        let mut interrupted = false;
        loop {
            let n = loop {
                let mut slice = &mut self.buf[..];
                match self.sock.recv(&mut slice, libc::MSG_TRUNC) {
                    Ok(n) if n > RECV_BUF => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("nfnetlink datagram of {n} bytes exceeds the buffer"),
                        ))
                    }
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            for (typ, mflags, mseq, payload) in messages(&self.buf[..n]) {
                if mseq != seq {
                    continue;
                }
                interrupted |= mflags & NLM_F_DUMP_INTR != 0;
                match typ {
                    NLMSG_NOOP => {}
                    NLMSG_ERROR | NLMSG_DONE => {
                        let code = payload
                            .get(..4)
                            .map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                        return match code {
                            0 if interrupted => Ok(Answer::Interrupted),
                            0 => Ok(Answer::Done),
                            c if -c == libc::ENOENT => Ok(Answer::Missing),
                            c => Err(io::Error::from_raw_os_error(-c)),
                        };
                    }
                    _ => {
                        if let Some((_, a)) = nfgen(payload) {
                            on_data(a);
                        }
                    }
                }
            }
        }
    }
}

enum Answer {
    Done,
    Missing,
    Interrupted,
}

/// What table `name` of family `family` (`NFPROTO_*`, see [`family_number`]) holds in
/// the calling thread's namespace, or None if there is no such table. Four small
/// requests (the table, its chains, sets and rules); set elements are never read.
pub fn table_shape(family: u8, name: &str) -> io::Result<Option<TableShape>> {
    let mut q = Query::open()?;
    let mut found = false;
    let exists = q.request(
        msg::GETTABLE,
        family,
        false,
        &[(ATTR_TABLE, name)],
        &mut |_| found = true,
    )?;
    if !exists || !found {
        return Ok(None);
    }
    let mut shape = TableShape::default();
    let mine = |a: &[u8]| attr_string(a, ATTR_TABLE).as_deref() == Some(name);
    q.request(
        msg::GETCHAIN,
        family,
        true,
        &[(ATTR_TABLE, name)],
        &mut |a| {
            if let (true, Some(chain)) = (mine(a), attr_string(a, NFTA_CHAIN_NAME)) {
                shape.chains.entry(chain).or_insert(0);
            }
        },
    )?;
    q.request(msg::GETSET, family, true, &[(ATTR_TABLE, name)], &mut |a| {
        if let (true, Some(set)) = (mine(a), attr_string(a, NFTA_SET_NAME)) {
            if !set.starts_with("__") {
                shape.sets.insert(set);
            }
        }
    })?;
    q.request(
        msg::GETRULE,
        family,
        true,
        &[(ATTR_TABLE, name)],
        &mut |a| {
            if let (true, Some(chain)) = (mine(a), attr_string(a, NFTA_RULE_CHAIN)) {
                *shape.chains.entry(chain).or_insert(0) += 1;
            }
        },
    )?;
    Ok(Some(shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::Nft;
    use std::time::Instant;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        v.resize(align4(v.len()), 0);
        v
    }

    #[test]
    fn a_deleted_chain_names_its_table_and_family() {
        let mut p = vec![1u8, 0, 0, 0];
        p.extend(nla(ATTR_TABLE, b"lanyard\0"));
        p.extend(nla(NFTA_CHAIN_NAME, b"forward\0"));
        let e = decode_event((10 << 8) | u16::from(msg::DELCHAIN), &p).unwrap();
        assert_eq!(
            e,
            NftEvent::Change {
                deleted: true,
                object: "chain",
                family: 1,
                table: Some("lanyard".into())
            }
        );
        assert!(e.may_have_removed_from(1, "lanyard"));
        assert!(!e.may_have_removed_from(7, "lanyard"));
        assert!(!e.may_have_removed_from(1, "filter"));
    }

    #[test]
    fn additions_generations_and_other_subsystems_are_no_removals() {
        let mut p = vec![7u8, 0, 0, 0];
        p.extend(nla(ATTR_TABLE, b"lanyard\0"));
        let added = decode_event((10 << 8) | 12, &p).unwrap();
        assert!(!added.may_have_removed_from(7, "lanyard"));
        let mut g = vec![0u8, 0, 0, 0];
        g.extend(nla(NFTA_GEN_ID, &42u32.to_be_bytes()));
        g.extend(nla(NFTA_GEN_PROC_NAME, b"nft\0"));
        assert_eq!(
            decode_event((10 << 8) | u16::from(msg::NEWGEN), &g),
            Some(NftEvent::NewGeneration {
                id: 42,
                pid: None,
                process: Some("nft".into())
            })
        );
        // Conntrack (subsystem 1) is not nftables.
        assert_eq!(decode_event(1 << 8, &p), None);
        // A destroy (6.3+) is a deletion; one naming no table might be anyone's.
        let d = decode_event((10 << 8) | 26, &[1, 0, 0, 0]).unwrap();
        assert!(d.may_have_removed_from(1, "lanyard"));
        assert!(NftEvent::Lost.may_have_removed_from(7, "lanyard"));
    }

    /// Runs `f` in a thread inside a fresh network namespace (gone with the thread),
    /// or says why it cannot and returns None.
    fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (network namespaces, nftables)");
            return None;
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                let before = std::fs::read_link("/proc/thread-self/ns/net").ok();
                // SAFETY: unshare takes no pointers; it moves only this thread.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    eprintln!("skipped: unshare(CLONE_NEWNET) failed");
                    return None;
                }
                let after = std::fs::read_link("/proc/thread-self/ns/net").ok();
                assert_ne!(before, after, "still in the caller's namespace");
                Some(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Reads announcements until `stop` says so or 5 s pass; returns all of them.
    fn collect(w: &mut NftWatch, stop: impl Fn(&[NftEvent]) -> bool) -> Vec<NftEvent> {
        let end = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while !stop(&seen) && Instant::now() < end {
            if w.wait(Duration::from_millis(100)).unwrap() {
                seen.extend(w.read().unwrap());
            }
        }
        seen
    }

    const TABLE: &str = "table inet lanyard {\n\
        set ports { type ifname; }\n\
        chain forward { type filter hook forward priority filter; policy accept;\n\
        iifname @ports accept\n\
        ip saddr { 192.0.2.1, 192.0.2.2 } drop\n}\n\
        chain published {\n}\n}\n\
        table inet other {\n chain c {\n }\n}\n";

    #[test]
    fn flush_ruleset_is_heard_as_deletions_in_lanyards_table_then_a_generation() {
        in_fresh_netns(|| {
            let mut w = NftWatch::open().expect("subscribe to nftables events");
            let mut nft = Nft::new().expect("libnftables");
            assert_eq!(table_shape(1, "lanyard").unwrap(), None);
            nft.run(TABLE).unwrap();
            let made = collect(&mut w, |s| {
                s.iter()
                    .any(|e| matches!(e, NftEvent::NewGeneration { .. }))
            });
            assert!(
                made.iter().all(|e| !e.may_have_removed_from(1, "lanyard")),
                "{made:?}"
            );
            let shape = table_shape(1, "lanyard").unwrap().expect("table is there");
            assert_eq!(
                shape.chains,
                [("forward".to_string(), 2), ("published".to_string(), 0)].into()
            );
            // The anonymous set of the second rule is not a named set.
            assert_eq!(shape.sets, ["ports".to_string()].into());
            // A change to another table is not one to lanyard's.
            nft.run("delete chain inet other c").unwrap();
            let other = collect(&mut w, |s| {
                s.iter()
                    .any(|e| matches!(e, NftEvent::NewGeneration { .. }))
            });
            assert!(
                other.iter().any(|e| e.may_have_removed_from(1, "other"))
                    && !other.iter().any(|e| e.may_have_removed_from(1, "lanyard")),
                "{other:?}"
            );
            nft.run("flush ruleset").unwrap();
            let flushed = collect(&mut w, |s| {
                s.iter()
                    .any(|e| matches!(e, NftEvent::NewGeneration { .. }))
            });
            assert!(
                flushed
                    .iter()
                    .any(|e| e.may_have_removed_from(1, "lanyard")),
                "{flushed:?}"
            );
            let table_gone = flushed.iter().any(|e| {
                matches!(e, NftEvent::Change { deleted: true, object: "table", table: Some(t), .. } if t == "lanyard")
            });
            assert!(table_gone, "{flushed:?}");
            assert_eq!(table_shape(1, "lanyard").unwrap(), None);
        });
    }

    #[test]
    fn a_flushed_chain_shows_in_the_shape_and_other_namespaces_stay_silent() {
        in_fresh_netns(|| {
            let mut w = NftWatch::open().expect("subscribe");
            let mut nft = Nft::new().expect("libnftables");
            nft.run(TABLE).unwrap();
            let _ = collect(&mut w, |s| {
                s.iter()
                    .any(|e| matches!(e, NftEvent::NewGeneration { .. }))
            });
            // Another fresh namespace's changes are not heard here.
            in_fresh_netns(|| {
                let mut n2 = Nft::new().expect("libnftables");
                n2.run(TABLE).unwrap();
                n2.run("flush ruleset").unwrap();
            });
            assert!(!w.wait(Duration::from_millis(200)).unwrap());
            assert!(w.read().unwrap().is_empty());
            nft.run("flush chain inet lanyard forward").unwrap();
            let seen = collect(&mut w, |s| {
                s.iter()
                    .any(|e| matches!(e, NftEvent::NewGeneration { .. }))
            });
            assert!(
                seen.iter().any(|e| e.may_have_removed_from(1, "lanyard")),
                "{seen:?}"
            );
            let shape = table_shape(1, "lanyard").unwrap().unwrap();
            assert_eq!(shape.chains.get("forward"), Some(&0));
        });
    }
}
