//! Network namespaces: identity (`(st_dev, st_ino)` of the nsfs file), a handle that
//! holds a namespace open with its netlink socket, and [`Entered`], a guard that moves
//! the calling thread into a namespace and back.
//!
//! Sockets keep the namespace they were opened in, so a thread visits a namespace
//! only to open a socket there (once per namespace and [`crate::Netlink`]) or to write
//! a sysctl; everything else is sent from wherever the thread is.

use crate::socket::NlSocket;
use lanyard_core::kernel::NsId;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The calling thread's own network namespace.
pub(crate) const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Identity of the namespace file at `path` (follows `/proc/…/ns/net` links).
pub(crate) fn id_of(path: &Path) -> io::Result<NsId> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
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
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated string; the fd returned is ours.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setns(fd, CLONE_NEWNET)` for the calling thread.
pub(crate) fn setns(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on an fd; a bad fd gives EBADF.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
        setns(target.as_raw_fd())?;
        Ok(Entered { home })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = setns(self.home.as_raw_fd()) {
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
    // SAFETY: zeroed `stat` is a valid out-buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is a valid pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_dev, st.st_ino))
}

/// The calling thread's id.
pub(crate) fn gettid() -> libc::pid_t {
    // SAFETY: gettid cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}
