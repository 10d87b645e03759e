//! Handing tombstones to `lanyard daemon` instead of forking a worker.
//!
//! When the daemon runs, it listens on a Unix datagram socket (`daemon.sock` in the
//! run directory, mode 0600: root only). A detaching process sends one datagram per
//! batch: the text `lanyard-reap 1` and the tombstones' names, NUL-separated, with the
//! namespaces they live in passed as file descriptors (`SCM_RIGHTS`, in the same
//! order). Descriptors, not paths: the daemon deletes in exactly the namespace the
//! sender saw, even if its path is gone or reused meanwhile. A queued datagram holds
//! its descriptors, so once `sendmsg` succeeded the daemon gets them; if it dies
//! first, the descriptors close with it and the tombstones stay for `lanyard gc`.
//!
//! The sender never waits: a full queue, a missing socket or a dead daemon (a stale
//! socket file: `ECONNREFUSED`) is an error the caller answers by forking its own
//! worker (the `reap` module). The receiver accepts only tombstone names (`lyx-…`).

use lanyard_core::kernel::is_tombstone;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The socket's file name in the run directory.
pub const SOCKET: &str = "daemon.sock";

/// First field of every datagram: what it is and the format's version.
const MAGIC: &[u8] = b"lanyard-reap 1";

/// At most this many tombstones per datagram (the kernel's limit on descriptors in
/// one message is 253).
pub const MAX_BATCH: usize = 64;

/// Largest datagram: the magic and `MAX_BATCH` names of at most 15 bytes, each
/// followed by a NUL.
const MAX_LEN: usize = MAGIC.len() + 1 + MAX_BATCH * 16;

/// The payload for `names`: `MAGIC`, then each name, each followed by a NUL.
pub fn encode(names: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_LEN);
    out.extend_from_slice(MAGIC);
    out.push(0);
    for n in names {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
    }
    out
}

/// The names in a payload, or why it is not one.
pub fn decode(payload: &[u8]) -> Result<Vec<String>, String> {
    let mut fields = payload.split(|&b| b == 0);
    if fields.next() != Some(MAGIC) {
        return Err("not a lanyard-reap 1 message".into());
    }
    if payload.last() != Some(&0) {
        return Err("truncated message".into());
    }
    let names: Vec<String> = fields
        .filter(|f| !f.is_empty())
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    match names.iter().find(|n| !is_tombstone(n) || n.len() > 15) {
        Some(bad) => Err(format!("{bad:?} is not a tombstone name")),
        None => Ok(names),
    }
}

/// `sockaddr_un` for `path`, or an error if it does not fit.
fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path {} is too long", path.display()),
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn datagram_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
    let (addr, addr_len) = sockaddr(path)?;
    let sock = datagram_socket()?;
    let names: Vec<&str> = items.iter().map(|(_, n)| *n).collect();
    let payload = encode(&names);
    let fds: Vec<RawFd> = items.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
    let fds_len = std::mem::size_of_val(fds.as_slice());
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fds_len as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&addr as *const libc::sockaddr_un).cast_mut().cast();
    msg.msg_namelen = addr_len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `control` has room for one header and `fds` (CMSG_SPACE above);
    // CMSG_FIRSTHDR and CMSG_DATA point into it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), fds_len);
    }
    // SAFETY: `msg` is fully initialised and its buffers are alive.
    let n = unsafe {
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The daemon's end: a bound datagram socket.
#[derive(Debug)]
pub struct Receiver {
    sock: OwnedFd,
}

impl Receiver {
    /// Binds `path` (mode 0600). A socket file left by a daemon that is gone is
    /// replaced; one that a live daemon answers on is an `AddrInUse` error.
    pub fn bind(path: &Path) -> io::Result<Receiver> {
        let (addr, addr_len) = sockaddr(path)?;
        let sock = datagram_socket()?;
        let bind = || {
            // SAFETY: `addr` is a valid sockaddr_un of `addr_len` bytes.
            let rc = unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    (&addr as *const libc::sockaddr_un).cast(),
                    addr_len,
                )
            };
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // Only the owner (root) may send: the mask applies to the file bind creates.
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0o177) };
        let mut bound = bind();
        if matches!(&bound, Err(e) if e.kind() == io::ErrorKind::AddrInUse) {
            let probe = datagram_socket()?;
            // SAFETY: as for bind.
            let rc = unsafe {
                libc::connect(
                    probe.as_raw_fd(),
                    (&addr as *const libc::sockaddr_un).cast(),
                    addr_len,
                )
            };
            let refused =
                rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECONNREFUSED);
            if refused {
                let _ = std::fs::remove_file(path);
                bound = bind();
            }
        }
        // SAFETY: restores the mask read above.
        unsafe { libc::umask(old) };
        bound.map(|()| Receiver { sock })
    }

    /// Makes [`Receiver::recv`] return `WouldBlock` instead of waiting, for an event
    /// loop that polls the socket ([`AsRawFd`]).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
        let rc = unsafe {
            let flags = libc::fcntl(self.sock.as_raw_fd(), libc::F_GETFL);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(
                    self.sock.as_raw_fd(),
                    libc::F_SETFL,
                    flags | libc::O_NONBLOCK,
                )
            }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the next datagram; returns its (namespace, name) pairs. A malformed
    /// datagram is an `InvalidData` error (its descriptors are closed).
    pub fn recv(&self) -> io::Result<Vec<(OwnedFd, String)>> {
        let mut payload = vec![0u8; MAX_LEN];
        // SAFETY: CMSG_SPACE only computes a size.
        let space =
            unsafe { libc::CMSG_SPACE((MAX_BATCH * std::mem::size_of::<RawFd>()) as u32) } as usize;
        let mut control = vec![0u8; space];
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        // SAFETY: msghdr is plain data; the buffers outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = loop {
            // SAFETY: `msg` describes writable buffers of the given sizes.
            let n =
                unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        // Own every descriptor first, so each is closed whatever happens next.
        let mut fds = vec![];
        // SAFETY: walking the control buffer the kernel filled, with the CMSG
        // macros; SCM_RIGHTS data is an array of descriptors now owned by us.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg);
                    let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(bad("truncated hand-off datagram".into()));
        }
        let names = decode(&payload[..n]).map_err(bad)?;
        if names.len() != fds.len() {
            return Err(bad(format!(
                "{} names but {} namespaces",
                names.len(),
                fds.len()
            )));
        }
        Ok(fds.into_iter().zip(names).collect())
    }
}

impl AsRawFd for Receiver {
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
    fn a_batch_round_trips() {
        let p = encode(&["lyx-0000abcd", "lyx-12345678"]);
        assert_eq!(decode(&p).unwrap(), ["lyx-0000abcd", "lyx-12345678"]);
    }

    #[test]
    fn anything_but_tombstones_is_refused() {
        assert!(decode(&encode(&["eth0"])).unwrap_err().contains("\"eth0\""));
        assert!(decode(b"hello\0lyx-1\0").is_err(), "wrong magic");
        let mut p = encode(&["lyx-00000001"]);
        p.pop();
        assert!(decode(&p).unwrap_err().contains("truncated"));
        assert!(
            decode(&encode(&["lyx-0123456789abcdef"])).is_err(),
            "too long"
        );
    }

    #[test]
    fn namespaces_travel_with_their_names_and_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        // Nobody listening: the sender learns at once.
        let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&ns);
        assert!(send(&path, &[(fd, "lyx-00000001")]).is_err());
        let rx = Receiver::bind(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second daemon on the same socket is refused while the first is alive.
        assert_eq!(
            Receiver::bind(&path).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        send(&path, &[(fd, "lyx-00000001"), (fd, "lyx-00000002")]).unwrap();
        let got = rx.recv().unwrap();
        let names: Vec<&str> = got.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["lyx-00000001", "lyx-00000002"]);
        let id =
            |f: &OwnedFd| std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        assert_eq!(
            id(&got[0].0),
            std::fs::read_link("/proc/self/ns/net").unwrap()
        );
        // The daemon died (its socket file stays): the next one takes the path over.
        drop(rx);
        assert!(send(&path, &[(fd, "lyx-00000001")]).is_err());
        let _rx = Receiver::bind(&path).unwrap();
    }
}
