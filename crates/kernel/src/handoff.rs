//! `daemon.sock`: the control socket of `lanyard daemon`, and its small versioned
//! protocol.
//!
//! A Unix `SOCK_SEQPACKET` socket in the run directory (mode 0600: root only), so
//! every message is one packet, a connection has a peer whose credentials the kernel
//! vouches for, and a full backlog is an immediate error. Every message is
//! `lanyard/VERSION`, a verb and its fields, each followed by a NUL; a receiver
//! answers a version it does not speak with `error` (or drops it), so there is no
//! separate hello round trip on the hot path. Verbs ([`Message`]):
//!
//! - `reap NAME…`: tombstones (`lyx-…`) to delete, with the namespaces they live in
//!   as file descriptors (`SCM_RIGHTS`, in the same order). Descriptors, not paths:
//!   the daemon deletes in exactly the namespace the sender saw, even if its path is
//!   gone or reused meanwhile.
//! - `endpoint added|removed NETWORK ENDPOINT_ID`: a best-effort notice after an
//!   attach or detach, so services (DNS, DHCP) learn of endpoints at once.
//! - `subscribe`: the daemon answers `subscribed`, then sends every endpoint notice
//!   on that connection.
//! - `status`: the daemon answers `status` with its pid, protocol version and
//!   counters.
//! - `verb JSON`: a CLI call hands the daemon its whole verb (attach, detach), so it
//!   opens no store and no netlink sockets of its own; the daemon answers `verb-ok
//!   JSON` or `verb-err CODE MESSAGE` (the CLI's exit code and message). Code `-1`
//!   means "not here" (the caller runs in another network namespace): the caller runs
//!   the verb itself.
//!
//! **Who may receive a namespace.** Before sending anything the sender checks
//! ([`Client::connect`]) that the run directory is owned by root (its own user) and
//! writable by nobody else, that the socket file is owned by the same, and, after
//! connecting, that the process listening (`SO_PEERCRED` of the connection) runs as
//! that user: an unprivileged user who bound `daemon.sock` first never receives a
//! container's namespace.
//!
//! The sender never waits: a missing socket, a dead daemon (a stale socket file:
//! `ECONNREFUSED`), a full backlog or queue, or a failed check is an error the caller
//! answers by forking its own worker (the `reap` module).

use lanyard_core::kernel::is_tombstone;
use rustix::fs::{Mode, Stat};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

/// The socket's file name in the run directory.
pub const SOCKET: &str = "daemon.sock";

/// The verbs-only socket beside it: the same protocol, one `verb` per connection,
/// served by the daemon's engine thread itself (no event loop in between). Clients
/// try it first and fall back to [`SOCKET`] (a daemon from before it).
pub const VERB_SOCKET: &str = "verbs.sock";

/// The protocol version this build speaks.
pub const VERSION: u32 = 2;

/// First field of every message: what it is and the protocol's version.
const MAGIC: &str = "lanyard/2";

/// At most this many tombstones per message (the kernel's limit on descriptors in
/// one message is 253).
pub const MAX_BATCH: usize = 64;

/// Largest message: a verb's JSON (an endpoint with its published ports), well above
/// the magic, a verb and `MAX_BATCH` names of at most 15 bytes.
pub const MAX_LEN: usize = 65536;

/// Connections the daemon's listener queues before senders get `EAGAIN`.
const BACKLOG: i32 = 256;

/// What an endpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Attached.
    Added,
    /// Detached.
    Removed,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
        }
    }
}

/// One message on the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Tombstones to delete (their namespaces travel as descriptors).
    Reap(Vec<String>),
    /// An endpoint was attached or detached.
    Endpoint {
        /// Added or removed.
        change: Change,
        /// Its network's name.
        network: String,
        /// Its id.
        id: String,
    },
    /// Send me every endpoint notice from now on.
    Subscribe,
    /// The answer to [`Message::Subscribe`].
    Subscribed,
    /// Tell me how you are.
    Status,
    /// The answer to [`Message::Status`]: `key=value` fields.
    StatusIs(Vec<String>),
    /// A message the receiver could not take, and why.
    Error(String),
    /// A CLI verb for the daemon to run (JSON, the binary's own format).
    Verb(String),
    /// The verb's outcome (JSON).
    VerbOk(String),
    /// The verb failed: the CLI's exit code and message (`-1`: run it yourself).
    VerbErr(i32, String),
}

/// The payload of `m`: the magic, the verb, its fields, each followed by a NUL.
pub fn encode(m: &Message) -> Vec<u8> {
    let code_text;
    let mut fields: Vec<&str> = vec![MAGIC];
    match m {
        Message::Reap(names) => {
            fields.push("reap");
            fields.extend(names.iter().map(String::as_str));
        }
        Message::Endpoint {
            change,
            network,
            id,
        } => fields.extend(["endpoint", change.as_str(), network, id]),
        Message::Subscribe => fields.push("subscribe"),
        Message::Subscribed => fields.push("subscribed"),
        Message::Status => fields.push("status"),
        Message::StatusIs(kv) => {
            fields.push("status-is");
            fields.extend(kv.iter().map(String::as_str));
        }
        Message::Error(why) => fields.extend(["error", why]),
        Message::Verb(json) => fields.extend(["verb", json]),
        Message::VerbOk(json) => fields.extend(["verb-ok", json]),
        Message::VerbErr(code, why) => {
            code_text = code.to_string();
            fields.extend(["verb-err", &code_text, why]);
        }
    }
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 1).sum());
    for f in fields {
        out.extend_from_slice(f.as_bytes());
        out.push(0);
    }
    out
}

/// The message in a payload, or why it is not one.
pub fn decode(payload: &[u8]) -> Result<Message, String> {
    if payload.last() != Some(&0) {
        return Err("truncated message".into());
    }
    let fields: Vec<String> = payload[..payload.len() - 1]
        .split(|&b| b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let Some((magic, rest)) = fields.split_first() else {
        return Err("empty message".into());
    };
    match magic.strip_prefix("lanyard/") {
        Some(v) if v == VERSION.to_string() => {}
        Some(v) => {
            return Err(format!(
                "protocol version {v:?} unsupported (this is {VERSION})"
            ))
        }
        None => return Err("not a lanyard control message".into()),
    }
    let (verb, args) = rest.split_first().ok_or("no verb")?;
    let m = match (verb.as_str(), args) {
        ("reap", names) => {
            if let Some(bad) = names.iter().find(|n| !is_tombstone(n) || n.len() > 15) {
                return Err(format!("{bad:?} is not a tombstone name"));
            }
            if names.is_empty() || names.len() > MAX_BATCH {
                return Err(format!("1 to {MAX_BATCH} tombstones per message"));
            }
            Message::Reap(names.to_vec())
        }
        ("endpoint", [change, network, id]) => Message::Endpoint {
            change: match change.as_str() {
                "added" => Change::Added,
                "removed" => Change::Removed,
                other => return Err(format!("endpoint change {other:?} unknown")),
            },
            network: network.clone(),
            id: id.clone(),
        },
        ("subscribe", []) => Message::Subscribe,
        ("subscribed", []) => Message::Subscribed,
        ("status", []) => Message::Status,
        ("status-is", kv) => Message::StatusIs(kv.to_vec()),
        ("error", [why]) => Message::Error(why.clone()),
        ("verb", [json]) => Message::Verb(json.clone()),
        ("verb-ok", [json]) => Message::VerbOk(json.clone()),
        ("verb-err", [code, why]) => Message::VerbErr(
            code.parse()
                .map_err(|_| format!("verb-err code {code:?} is not a number"))?,
            why.clone(),
        ),
        (verb, _) => return Err(format!("verb {verb:?} unknown or with wrong fields")),
    };
    Ok(m)
}

fn seqpacket(flags: SocketFlags) -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | flags,
        None,
    )?)
}

fn addr(path: &Path) -> io::Result<SocketAddrUnix> {
    SocketAddrUnix::new(path).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path {}: {e}", path.display()),
        )
    })
}

fn denied(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why)
}

/// Is `st` owned by `uid` and writable by nobody else (no group or other write)?
fn private_to(st: &Stat, uid: u32) -> bool {
    st.st_uid == uid && st.st_mode & 0o022 == 0
}

/// Checks that directory `dir` is owned by this process's user and writable by no
/// one else; when running as root, also every directory above it (a directory
/// another user may write lets that user replace what is below). Only root's
/// directories are checked: an unprivileged lanyard (tests) trusts its own.
pub fn check_private_dir(dir: &Path) -> io::Result<()> {
    let uid = rustix::process::geteuid().as_raw();
    if uid != 0 {
        return Ok(());
    }
    let st = rustix::fs::stat(dir)?;
    if !private_to(&st, uid) {
        return Err(denied(format!(
            "{} is owned by uid {} with mode {:o}: it must be root's and writable by no one else (chown root {0}; chmod go-w {0})",
            dir.display(),
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    Ok(())
}

/// A connection to the daemon, checked to be root's (see the module doc).
#[derive(Debug)]
pub struct Client {
    sock: OwnedFd,
}

impl Client {
    /// Connects to the daemon at `path` without waiting, after checking its directory
    /// and socket file, and checks who listens.
    pub fn connect(path: &Path) -> io::Result<Client> {
        let uid = rustix::process::geteuid().as_raw();
        let dir = path.parent().unwrap_or(Path::new("/"));
        let dir_st = rustix::fs::stat(dir)?;
        if !private_to(&dir_st, uid) {
            return Err(denied(format!(
                "{} is not private to uid {uid} (owner {}, mode {:o})",
                dir.display(),
                dir_st.st_uid,
                dir_st.st_mode & 0o7777
            )));
        }
        let st = rustix::fs::lstat(path)?;
        if st.st_uid != uid || st.st_mode & 0o170000 != 0o140000 {
            return Err(denied(format!(
                "{} is not a socket of uid {uid} (owner {}, mode {:o})",
                path.display(),
                st.st_uid,
                st.st_mode
            )));
        }
        let sock = seqpacket(SocketFlags::NONBLOCK)?;
        rustix::net::connect(&sock, &addr(path)?)?;
        let peer = rustix::net::sockopt::socket_peercred(&sock)?;
        if peer.uid.as_raw() != uid {
            return Err(denied(format!(
                "the process listening on {} runs as uid {}, not {uid}",
                path.display(),
                peer.uid.as_raw()
            )));
        }
        Ok(Client { sock })
    }

    /// Sends `m` with `fds` attached, without waiting.
    pub fn send(&self, m: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        send_on(self.sock.as_fd(), m, fds)
    }

    /// Waits for the next message on the connection (blocking up to `timeout`).
    pub fn recv(&self, timeout: std::time::Duration) -> io::Result<Message> {
        let mut pfd = [rustix::event::PollFd::new(
            &self.sock,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec::try_from(timeout).map_err(io::Error::other)?;
        if rustix::event::poll(&mut pfd, Some(&ts))? == 0 {
            return Err(io::ErrorKind::TimedOut.into());
        }
        match recv_on(self.sock.as_fd())? {
            Some((m, _)) => Ok(m),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// Sends `m` and `fds` on a connected socket, without waiting.
pub fn send_on(sock: BorrowedFd<'_>, m: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let payload = encode(m);
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_BATCH))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_BATCH} descriptors per message"),
        ));
    }
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(&payload)],
        &mut control,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one message and its descriptors; `None` at the end of the connection.
/// A malformed message is an `InvalidData` error (its descriptors are closed).
pub fn recv_on(sock: BorrowedFd<'_>) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
    // The next message's length first (a peek with MSG_TRUNC gives the whole
    // length), so the buffer is the message's size: a zeroed MAX_LEN buffer cost a
    // short client 16 page faults, 6% of its run, to receive ~500 bytes.
    let len = loop {
        match rustix::net::recv(sock, &mut [0u8; 0][..], RecvFlags::PEEK | RecvFlags::TRUNC) {
            Err(rustix::io::Errno::INTR) => continue,
            // (bytes copied: none; the message's whole length)
            other => break other?.1,
        }
    };
    // At least one byte, so a longer message than MAX_LEN shows as truncated.
    let mut payload = vec![0u8; len.clamp(1, MAX_LEN)];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_BATCH))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut payload)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    // Own every descriptor first, so each is closed whatever happens next.
    let mut fds = vec![];
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if got.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    if got
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(bad(format!(
            "truncated message ({len} bytes, at most {MAX_LEN}) or control message"
        )));
    }
    let m = decode(&payload[..got.bytes.min(MAX_LEN)]).map_err(bad)?;
    let want = match &m {
        Message::Reap(names) => names.len(),
        _ => 0,
    };
    if fds.len() != want {
        return Err(bad(format!(
            "{want} descriptors expected, {} came",
            fds.len()
        )));
    }
    Ok(Some((m, fds)))
}

/// Sends `items` (namespace, tombstone name) to the daemon at `path` without
/// waiting; at most [`MAX_BATCH`] items.
pub fn send(path: &Path, items: &[(BorrowedFd<'_>, &str)]) -> io::Result<()> {
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "1 to 64 tombstones per hand-off",
        ));
    }
    let names = items.iter().map(|(_, n)| n.to_string()).collect();
    let fds: Vec<BorrowedFd<'_>> = items.iter().map(|(fd, _)| *fd).collect();
    let client = Client::connect(path)?;
    journal(path, items)?;
    client.send(&Message::Reap(names), &fds)
}

/// The daemon's own reaper, for the detaches the daemon runs itself (delegated
/// verbs): tombstones go to its reaper thread over a channel, journaled first as a
/// hand-off over the socket is, with no connection, no message and no work for the
/// event loop on the way (the loop also sends the answer the caller waits for).
#[derive(Clone, Debug)]
pub struct LocalReaper {
    sock: std::path::PathBuf,
    queue: std::sync::mpsc::Sender<(OwnedFd, String)>,
    counted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl LocalReaper {
    /// A reaper fed through `queue`, journaling beside the socket at `sock`;
    /// `counted` counts the tombstones it took.
    pub fn new(
        sock: std::path::PathBuf,
        queue: std::sync::mpsc::Sender<(OwnedFd, String)>,
        counted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> LocalReaper {
        LocalReaper {
            sock,
            queue,
            counted,
        }
    }

    /// Journals `items` and queues them for the reaper thread. Those it did not take
    /// (the journal cannot be written, or the reaper thread is gone) come back: the
    /// tail of `items`, in order.
    pub fn take(&self, items: Vec<(OwnedFd, String)>) -> Vec<(OwnedFd, String)> {
        let listed: Vec<(BorrowedFd<'_>, &str)> = items
            .iter()
            .map(|(fd, name)| (fd.as_fd(), name.as_str()))
            .collect();
        if journal(&self.sock, &listed).is_err() {
            return items;
        }
        let n = items.len() as u64;
        let mut left = vec![];
        let mut items = items.into_iter();
        for item in items.by_ref() {
            if let Err(std::sync::mpsc::SendError(item)) = self.queue.send(item) {
                left.push(item);
                break;
            }
        }
        left.extend(items);
        self.counted
            .fetch_add(n - left.len() as u64, std::sync::atomic::Ordering::Relaxed);
        left
    }
}

/// The journal's file name in the run directory.
pub const JOURNAL: &str = "reap.journal";

/// Appends `items` to the journal beside the socket at `sock`: one line
/// `DEV:INO NAME` per tombstone, the namespace by its identity. Written by the sender
/// before the hand-off, so a daemon killed with hand-offs still queued finds them at
/// its next start ([`sweep_journal`]). One `O_APPEND` write: lines of concurrent
/// senders never interleave. No fsync: the journal must outlive the daemon, not the
/// machine (a reboot takes the namespaces with it).
fn journal(sock: &Path, items: &[(BorrowedFd<'_>, &str)]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    for (fd, name) in items {
        let st = rustix::fs::fstat(fd)?;
        text.push_str(&format!("{}:{} {name}\n", st.st_dev, st.st_ino));
    }
    let path = sock.with_file_name(JOURNAL);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// The (namespace identity, tombstone name) pairs in journal text; bad lines skipped.
pub fn parse_journal(text: &str) -> Vec<((u64, u64), String)> {
    text.lines()
        .filter_map(|l| {
            let (id, name) = l.split_once(' ')?;
            let (dev, ino) = id.split_once(':')?;
            let name = name.trim();
            is_tombstone(name).then_some(((dev.parse().ok()?, ino.parse().ok()?), name.into()))
        })
        .collect()
}

/// Deletes every tombstone the journal in `run_dir` names whose namespace still
/// exists (found by identity among `/run/netns/*` and every process's
/// `/proc/PID/ns/net`), then removes it. For the daemon's start, once it holds the
/// socket: the journal is first renamed aside, so senders that hand over meanwhile
/// start a new one. Deletes from a thread of its own (which ends in whatever
/// namespace it visited last). Returns what it deleted.
pub fn sweep_journal(run_dir: &Path) -> io::Result<Vec<String>> {
    let path = run_dir.join(format!("{JOURNAL}.sweeping"));
    match std::fs::rename(run_dir.join(JOURNAL), &path) {
        Ok(()) => {}
        // Nothing new; a sweep a killed daemon left unfinished may still be there.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let wanted = parse_journal(&text);
    let mut deleted = vec![];
    if !wanted.is_empty() {
        let found = namespaces_by_identity(wanted.iter().map(|(id, _)| *id).collect());
        deleted = std::thread::scope(|s| {
            s.spawn(|| {
                let mut out = vec![];
                for (id, name) in &wanted {
                    let Some(ns) = found.get(id) else { continue };
                    if delete_in(ns.as_fd(), name).is_ok() {
                        out.push(format!("tombstone {name} in namespace {}:{}", id.0, id.1));
                    }
                }
                out
            })
            .join()
            .unwrap_or_default()
        });
    }
    std::fs::remove_file(&path)?;
    Ok(deleted)
}

/// Open handles on the live namespaces with the identities in `ids`.
fn namespaces_by_identity(
    ids: std::collections::BTreeSet<(u64, u64)>,
) -> std::collections::BTreeMap<(u64, u64), std::fs::File> {
    let mut found = std::collections::BTreeMap::new();
    let mut candidates: Vec<std::path::PathBuf> = vec![];
    for dir in ["/run/netns", "/proc"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if dir == "/proc" {
                if e.file_name().to_string_lossy().parse::<u32>().is_ok() {
                    candidates.push(p.join("ns/net"));
                }
            } else {
                candidates.push(p);
            }
        }
    }
    for p in candidates {
        if found.len() == ids.len() {
            break;
        }
        let Ok(st) = rustix::fs::stat(&p) else {
            continue;
        };
        let id = (st.st_dev, st.st_ino);
        if ids.contains(&id) && !found.contains_key(&id) {
            if let Ok(f) = std::fs::File::open(&p) {
                found.insert(id, f);
            }
        }
    }
    found
}

/// Tells the daemon at `path`, if one runs, that an endpoint came or went; never
/// waits, and a missing daemon is not an error (`Ok(false)`).
pub fn notify(path: &Path, change: Change, network: &str, id: &str) -> io::Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let m = Message::Endpoint {
        change,
        network: network.into(),
        id: id.into(),
    };
    Client::connect(path)?.send(&m, &[])?;
    Ok(true)
}

/// The daemon's end: a listening socket.
#[derive(Debug)]
pub struct Listener {
    sock: OwnedFd,
}

impl Listener {
    /// Binds and listens on `path` (mode 0600; non-blocking, for an event loop). A
    /// socket file left by a daemon that is gone is replaced; one that a live daemon
    /// answers on is an `AddrInUse` error.
    pub fn bind(path: &Path) -> io::Result<Listener> {
        let a = addr(path)?;
        let sock = seqpacket(SocketFlags::NONBLOCK)?;
        // Only the owner (root) may connect: the mask applies to the file bind makes.
        let old = rustix::process::umask(Mode::from_raw_mode(0o177));
        let mut bound = rustix::net::bind(&sock, &a);
        if bound == Err(rustix::io::Errno::ADDRINUSE) {
            let probe = seqpacket(SocketFlags::NONBLOCK)?;
            let live = match rustix::net::connect(&probe, &a) {
                Ok(()) => true,
                // Anything but "nobody listens" (a full backlog, a socket of another
                // type) counts as alive: never take over a path that is in use.
                Err(e) => e != rustix::io::Errno::CONNREFUSED,
            };
            if !live {
                let _ = std::fs::remove_file(path);
                bound = rustix::net::bind(&sock, &a);
            }
        }
        rustix::process::umask(old);
        bound?;
        rustix::net::listen(&sock, BACKLOG)?;
        Ok(Listener { sock })
    }

    /// The next connection, non-blocking (`WouldBlock` when none is waiting).
    pub fn accept(&self) -> io::Result<OwnedFd> {
        Ok(rustix::net::accept_with(
            &self.sock,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        )?)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Deletes link `name` in the namespace `netns`, from the calling thread, which stays
/// in that namespace afterwards (the daemon's reaper thread does nothing else).
pub fn delete_in(netns: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    crate::netns::setns(netns)?;
    let mut sock = crate::socket::NlSocket::open()?;
    let mut m = netlink_packet_route::link::LinkMessage::default();
    m.attributes
        .push(netlink_packet_route::link::LinkAttribute::IfName(
            name.to_string(),
        ));
    sock.ack(netlink_packet_route::RouteNetlinkMessage::DelLink(m), 0)
        .map_err(|e| io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_name_a_namespace_and_a_tombstone() {
        let j = parse_journal("4:4026532000 lyx-0000abcd\nbad\n4:x lyx-1\n4:5 eth0\n");
        assert_eq!(j, [((4, 4026532000), "lyx-0000abcd".to_string())]);
    }

    #[test]
    fn every_message_round_trips() {
        for m in [
            Message::Reap(vec!["lyx-0000abcd".into(), "lyx-12345678".into()]),
            Message::Endpoint {
                change: Change::Added,
                network: "br".into(),
                id: "ab12".into(),
            },
            Message::Subscribe,
            Message::Subscribed,
            Message::Status,
            Message::StatusIs(vec!["pid=1".into(), "version=2".into()]),
            Message::Error("no".into()),
        ] {
            assert_eq!(decode(&encode(&m)).unwrap(), m);
        }
    }

    #[test]
    fn anything_but_tombstones_and_other_versions_are_refused() {
        let reap = |n: &str| encode(&Message::Reap(vec![n.into()]));
        assert!(decode(&reap("eth0")).unwrap_err().contains("\"eth0\""));
        assert!(decode(&reap("lyx-0123456789abcdef")).is_err(), "too long");
        assert!(decode(b"hello\0reap\0lyx-1\0").is_err(), "wrong magic");
        assert!(decode(b"lanyard-reap 1\0lyx-1\0").is_err(), "version 1");
        let err = decode(b"lanyard/3\0status\0").unwrap_err();
        assert!(err.contains("version \"3\" unsupported"), "{err}");
        let mut p = encode(&Message::Status);
        p.pop();
        assert!(decode(&p).unwrap_err().contains("truncated"));
        assert!(decode(b"lanyard/2\0endpoint\0gone\0n\0i\0").is_err());
    }

    #[test]
    fn a_message_is_received_whole_at_any_size_up_to_max_len_and_refused_above() {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let big = |n: usize| Message::VerbErr(1, "x".repeat(n));
        for m in [Message::Status, big(5000), big(MAX_LEN - 64)] {
            send_on(a.as_fd(), &m, &[]).unwrap();
            assert_eq!(recv_on(b.as_fd()).unwrap().unwrap().0, m);
        }
        // Over the limit: an error naming the size, never a cut message.
        send_on(a.as_fd(), &big(MAX_LEN + 10), &[]).unwrap();
        let err = recv_on(b.as_fd()).unwrap_err().to_string();
        assert!(err.contains("truncated message"), "{err}");
        drop(a);
        assert!(recv_on(b.as_fd()).unwrap().is_none(), "end of connection");
    }

    #[test]
    fn namespaces_travel_with_their_names_and_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        // Nobody listening: the sender learns at once.
        let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
        let fd = ns.as_fd();
        assert!(send(&path, &[(fd, "lyx-00000001")]).is_err());
        let l = Listener::bind(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second daemon on the same socket is refused while the first is alive.
        assert_eq!(
            Listener::bind(&path).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        send(&path, &[(fd, "lyx-00000001"), (fd, "lyx-00000002")]).unwrap();
        // (The refused second daemon's probe connected first, and said nothing.)
        let probe = l.accept().unwrap();
        assert!(recv_on(probe.as_fd()).unwrap().is_none());
        let conn = l.accept().unwrap();
        let (m, fds) = recv_on(conn.as_fd()).unwrap().unwrap();
        assert_eq!(
            m,
            Message::Reap(vec!["lyx-00000001".into(), "lyx-00000002".into()])
        );
        let id =
            |f: &OwnedFd| std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        assert_eq!(
            id(&fds[0]),
            std::fs::read_link("/proc/self/ns/net").unwrap()
        );
        assert!(
            recv_on(conn.as_fd()).unwrap().is_none(),
            "end of connection"
        );
        // The daemon died (its socket file stays): the next one takes the path over.
        drop(l);
        assert!(send(&path, &[(fd, "lyx-00000001")]).is_err());
        let _l = Listener::bind(&path).unwrap();
    }

    #[test]
    fn a_socket_in_a_directory_others_may_write_gets_no_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let _l = Listener::bind(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
        let err = send(&path, &[(ns.as_fd(), "lyx-00000001")]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        if rustix::process::geteuid().is_root() {
            assert!(check_private_dir(dir.path()).is_err());
        }
    }
}
