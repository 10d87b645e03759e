//! Network namespaces: identity (`(st_dev, st_ino)` of the nsfs file), a handle that
//! holds a namespace open with its netlink socket, `Entered`, a guard that moves
//! the calling thread into a namespace and back, and the public helpers for code that
//! works inside a container's namespace (the DNS responder, DHCP): [`run_in`] runs a
//! closure on a thread of its own inside a namespace, [`within`] on the calling
//! thread for a moment (to open a socket there).
//!
//! Sockets keep the namespace they were opened in, so a thread visits a namespace
//! only to open a socket there (once per namespace and [`crate::Netlink`]) or to write
//! a sysctl; everything else is sent from wherever the thread is.

use crate::socket::NlSocket;
use lanyard_core::kernel::NsId;
use rustix::fs::{Mode, OFlags};
use rustix::thread::{LinkNameSpaceType, Pid};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// The calling thread's own network namespace.
pub(crate) const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Runs `f` on a new thread that has entered the network namespace at `path`
/// (`/run/netns/NAME`, `/proc/PID/ns/net`, an endpoint's recorded path) and returns
/// what `f` returned. The thread ends with `f`: it never goes back, so nothing of
/// the caller's ever runs in the wrong namespace. Sockets `f` opens stay in that
/// namespace whichever thread uses them later; so do files under `/proc/sys/net`.
/// For work that lives in a namespace (a responder loop) or blocks.
///
/// Fails if `path` is not a network namespace or cannot be entered (not root);
/// a panic in `f` is passed on.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// // A UDP socket bound inside a container's namespace, usable from anywhere.
/// let sock = lanyard_kernel::netns::run_in("/run/netns/web".as_ref(), || {
///     std::net::UdpSocket::bind("0.0.0.0:53")
/// })??;
/// # Ok(()) }
/// ```
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let fd = open(path)?;
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("lanyard-netns".into())
            .spawn_scoped(s, move || {
                setns(fd.as_fd())?;
                Ok(f())
            })?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `f` on the calling thread while it is inside the network namespace at
/// `path`, then moves the thread back, and returns what `f` returned: for short,
/// non-blocking work there, above all opening a socket (which stays in that
/// namespace afterwards), at the cost of two `setns` and no thread. `f` must not
/// hand the thread to anything else meanwhile (no `.await`, no callbacks into a
/// scheduler): for that, use [`run_in`]. If the thread cannot go back, the process
/// aborts (going on would change the wrong network).
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let listener = lanyard_kernel::netns::within("/proc/4242/ns/net".as_ref(), || {
///     std::net::TcpListener::bind("127.0.0.1:8080")
/// })??;
/// # Ok(()) }
/// ```
pub fn within<T>(path: &Path, f: impl FnOnce() -> T) -> io::Result<T> {
    let fd = open(path)?;
    let _inside = Entered::enter(fd.as_fd())?;
    Ok(f())
}

/// Identity of the namespace file at `path` (follows `/proc/…/ns/net` links).
pub(crate) fn id_of(path: &Path) -> io::Result<NsId> {
    let st = rustix::fs::stat(path)?;
    Ok((st.st_dev, st.st_ino))
}

/// `ioctl(NS_GET_NSTYPE)`: the kind of namespace an nsfs file is (linux/nsfs.h).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Whether `path` is a network namespace: an nsfs file whose type is
/// `CLONE_NEWNET`. A regular file or another kind of namespace (`/proc/self/ns/mnt`)
/// is not; the ioctl fails with ENOTTY on files that are not nsfs.
pub(crate) fn is_net(path: &Path) -> io::Result<bool> {
    let fd = open(path)?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the open fd, which
    // lives until the end of this function.
    let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTTY | libc::EINVAL) => Ok(false),
            _ => Err(e),
        };
    }
    Ok(kind == libc::CLONE_NEWNET)
}

/// Is this error "the namespace is gone" (the path does not exist any more)?
pub(crate) fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ESRCH)
    )
}

/// Opens `path` read-only, close-on-exec.
pub(crate) fn open(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `setns(fd, CLONE_NEWNET)` for the calling thread.
pub(crate) fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::thread::move_into_link_name_space(
        fd,
        Some(LinkNameSpaceType::Network),
    )?)
}

/// While alive, the calling thread is in another network namespace; dropping it moves
/// the thread back to where it was.
#[derive(Debug)]
#[must_use = "the thread goes back as soon as the guard is dropped"]
pub(crate) struct Entered {
    home: OwnedFd,
}

impl Entered {
    /// Moves the calling thread into the namespace `target`.
    pub(crate) fn enter(target: BorrowedFd<'_>) -> io::Result<Entered> {
        let home = open(Path::new(THREAD_NETNS))?;
        setns(target)?;
        Ok(Entered { home })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = setns(self.home.as_fd()) {
            // Going on in the wrong namespace would change the wrong network.
            eprintln!("lanyard: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}

/// A namespace held open, with its netlink socket once one is needed.
#[derive(Debug)]
pub(crate) struct NsHandle {
    /// Identity, to notice when a path now names another namespace.
    pub(crate) id: NsId,
    /// The open nsfs file (for `IFLA_NET_NS_FD` and `setns`).
    pub(crate) fd: OwnedFd,
    sock: Option<NlSocket>,
}

impl NsHandle {
    /// The calling thread's namespace, with a socket opened right away.
    pub(crate) fn current() -> io::Result<NsHandle> {
        let fd = open(Path::new(THREAD_NETNS))?;
        let id = fd_id(&fd)?;
        Ok(NsHandle {
            id,
            fd,
            sock: Some(NlSocket::open()?),
        })
    }

    /// The namespace at `path`; its socket is opened on first use.
    pub(crate) fn open(path: &Path) -> io::Result<NsHandle> {
        let fd = open(path)?;
        let id = fd_id(&fd)?;
        Ok(NsHandle { id, fd, sock: None })
    }

    /// Forgets the link indexes its socket (if open) remembers.
    pub(crate) fn forget_indexes(&mut self) {
        if let Some(s) = &mut self.sock {
            s.forget_indexes();
        }
    }

    /// The socket in this namespace, opening it (by visiting) if needed.
    pub(crate) fn socket(&mut self) -> io::Result<&mut NlSocket> {
        if self.sock.is_none() {
            let _inside = Entered::enter(self.fd.as_fd())?;
            self.sock = Some(NlSocket::open()?);
        }
        Ok(self
            .sock
            .as_mut()
            .unwrap_or_else(|| unreachable!("opened above")))
    }
}

/// `(st_dev, st_ino)` of an open file.
fn fd_id(fd: &OwnedFd) -> io::Result<NsId> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// The calling thread's id.
pub(crate) fn gettid() -> Pid {
    rustix::thread::gettid()
}
