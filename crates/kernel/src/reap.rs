//! Deleting tombstones off the caller's path: `lanyard daemon` if it is up (they are
//! handed to it, [`crate::handoff`]), else a detached grandchild process sends the
//! `RTM_DELLINK`s while the caller goes on (or exits).
//!
//! Deleting a link makes the kernel wait for RCU grace periods and in-flight packets,
//! milliseconds that nobody needs to wait for once the link is renamed and its
//! addresses are gone. The caller forks a child that forks the worker and exits at
//! once; the caller reaps that child (microseconds), and the worker, reparented to
//! init, is reaped there: no zombie, and no wait. A process that exits right after (a
//! CLI call, [`Netlink::exits_soon`]) starts the worker directly and does not wait:
//! init adopts it when the caller exits. There the worker is a `clone(CLONE_VM)` child
//! on a stack of its own, not a fork: a fork copied the caller's page tables and made
//! every page the caller wrote before its exit a copy-on-write fault (0.3-0.5 ms of a
//! detach, measured); the worker shares memory with a caller about to exit and reads
//! only data leaked for it, with all signals blocked.
//!
//! Either way the worker makes only raw syscalls ([`raw`]: no errno, no thread-local
//! storage) on data prepared before it, which is safe even if the caller had other
//! threads, and closes every inherited descriptor except the namespace files it
//! needs, so it holds no pipe (a CNI runtime reading our stdout sees EOF when we
//! exit) and no lock.

use crate::netlink::Netlink;
use crate::socket::encode;
use lanyard_core::name::IfName;
use lanyard_core::op::Netns;
use lanyard_core::Result;
use netlink_packet_core::NLM_F_REQUEST;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// One delete for the worker: the namespace to be in, the request to send there.
struct Job {
    netns_fd: RawFd,
    name: IfName,
    request: Vec<u8>,
}

/// All the worker needs, prepared before it starts: it allocates and looks up nothing.
struct Work {
    jobs: Vec<Job>,
    /// Descriptors to keep open (the namespaces'), sorted.
    keep: Vec<RawFd>,
    /// Where closing one by one stops, on kernels without `close_range` (before 5.9).
    max_fd: RawFd,
}

/// Set (to anything), the worker is forked even where it could share memory: for
/// valgrind, which cannot run a `CLONE_VM` child (`scripts/hot-symbols`).
pub(crate) const FORK_ENV: &str = "LANYARD_REAP_FORK";

/// Size of the stack a `CLONE_VM` worker runs on (it needs a few hundred bytes).
const WORKER_STACK: usize = 64 * 1024;

/// Hands `links` to the daemon if it is up ([`Netlink::hand_off_to`]), else to a
/// detached worker; deletes inline if the process cannot fork.
pub(crate) fn reap(nl: &mut Netlink, links: Vec<(Netns, IfName)>) -> Result<()> {
    let mut jobs = Vec::with_capacity(links.len());
    for (netns, name) in &links {
        // A namespace that is gone took its links with it.
        let Some(h) = nl.ns(netns)? else { continue };
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        jobs.push(Job {
            netns_fd: h.fd.as_raw_fd(),
            name: name.clone(),
            // No ack asked: the kernel has done the delete when sendto returns.
            request: encode(RouteNetlinkMessage::DelLink(m), NLM_F_REQUEST, 1),
        });
    }
    if let Some(path) = nl.handoff.clone() {
        jobs = hand_off(&path, jobs);
    }
    if jobs.is_empty() {
        return Ok(());
    }
    let links: Vec<(Netns, IfName)> = links
        .into_iter()
        .filter(|(_, name)| jobs.iter().any(|j| j.name == *name))
        .collect();
    let mut keep: Vec<RawFd> = jobs.iter().map(|j| j.netns_fd).collect();
    keep.sort_unstable();
    keep.dedup();
    // SAFETY: sysconf has no preconditions.
    let max_fd = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(1024, 1 << 16) as RawFd;
    let work = Work { jobs, keep, max_fd };

    // A caller that exits soon has the worker as its direct child and waits for
    // nothing; otherwise the child forks the worker and exits, and is waited for.
    let direct = nl.exits_soon;
    if direct && raw::SHARED_VM && std::env::var_os(FORK_ENV).is_none() {
        // Leaked on purpose: the worker reads it after the caller has moved on.
        let work: &'static Work = Box::leak(Box::new(work));
        if start_shared(work) {
            return Ok(());
        }
        return fork_worker(nl, links, work, true);
    }
    fork_worker(nl, links, &work, direct)
}

/// Starts the worker as a `clone(CLONE_VM)` child with all signals blocked, on a
/// stack of its own (leaked, like `work`). False if it could not be started.
fn start_shared(work: &'static Work) -> bool {
    // SAFETY: a fresh anonymous private mapping; checked below.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            WORKER_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: sigset_t is plain data; the masks are valid for both calls. The child
    // starts with every signal blocked, so no handler of the caller's ever runs on
    // the shared memory. `stack` is WORKER_STACK bytes, its top 16-aligned; the child
    // reads only `work` ('static) and never returns from `shared_worker`.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            shared_worker,
            stack.cast::<u8>().add(WORKER_STACK).cast(),
            libc::CLONE_VM | libc::SIGCHLD,
            (work as *const Work).cast_mut().cast(),
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        pid > 0
    }
}

/// Entry of a `CLONE_VM` worker.
extern "C" fn shared_worker(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the leaked `Work` of `start_shared`; this is a fresh child.
    unsafe { worker(&*arg.cast::<Work>()) }
}

/// Forks the worker (directly, or through a child that is waited for); deletes
/// inline if the process cannot fork.
fn fork_worker(
    nl: &mut Netlink,
    links: Vec<(Netns, IfName)>,
    work: &Work,
    direct: bool,
) -> Result<()> {
    // SAFETY: the child and the grandchild only make raw syscalls on `work`, prepared
    // before the fork, and leave with `_exit`.
    match unsafe { libc::fork() } {
        -1 => nl.reap_now(links),
        0 => unsafe {
            if direct || libc::fork() == 0 {
                worker(work);
            }
            libc::_exit(0)
        },
        _ if direct => Ok(()),
        child => {
            let mut status = 0;
            // SAFETY: waiting for our own child; EINTR is retried, ECHILD (SIGCHLD
            // ignored by the caller) means the kernel reaped it already.
            while unsafe { libc::waitpid(child, &mut status, 0) } < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            Ok(())
        }
    }
}

/// Sends `jobs` to the daemon at `path` in batches; returns those it did not take.
fn hand_off(path: &std::path::Path, jobs: Vec<Job>) -> Vec<Job> {
    if !path.exists() {
        return jobs; // no daemon: the common case, one stat
    }
    let mut left = vec![];
    let mut rest = jobs.into_iter().peekable();
    while rest.peek().is_some() {
        let batch: Vec<Job> = rest.by_ref().take(crate::handoff::MAX_BATCH).collect();
        // SAFETY: the descriptors belong to namespace handles in `nl`, alive for the
        // whole call.
        let items: Vec<(BorrowedFd<'_>, &str)> = batch
            .iter()
            .map(|j| {
                (
                    unsafe { BorrowedFd::borrow_raw(j.netns_fd) },
                    j.name.as_str(),
                )
            })
            .collect();
        match crate::handoff::send(path, &items) {
            Ok(()) => tracing::debug!(
                "{} tombstone(s) handed to the daemon at {}",
                items.len(),
                path.display()
            ),
            Err(e) => {
                tracing::debug!("daemon at {} did not take tombstones: {e}", path.display());
                left.extend(batch);
            }
        }
    }
    left
}

/// The worker: detach, close everything but `work.keep`, send each delete, exit.
/// Raw syscalls only (see [`raw`]): it may share its memory with the caller.
///
/// # Safety
/// Only to be called in a freshly forked or cloned process; never returns.
unsafe fn worker(work: &Work) -> ! {
    use raw::call;
    // SAFETY (whole body): raw syscalls on valid pointers into memory we own.
    unsafe {
        call(libc::SYS_setsid, 0, 0, 0);
        let mut low: RawFd = 0;
        for &fd in &work.keep {
            if fd > low {
                close_range(low, fd - 1, work.max_fd);
            }
            low = fd + 1;
        }
        close_range(low, RawFd::MAX, work.max_fd);

        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let kernel_addr = (&kernel as *const libc::sockaddr_nl) as usize;
        let addr_len = std::mem::size_of::<libc::sockaddr_nl>();
        for job in &work.jobs {
            if call(
                libc::SYS_setns,
                job.netns_fd as usize,
                libc::CLONE_NEWNET as usize,
                0,
            ) < 0
            {
                continue;
            }
            let s = call(
                libc::SYS_socket,
                libc::AF_NETLINK as usize,
                (libc::SOCK_RAW | libc::SOCK_CLOEXEC) as usize,
                libc::NETLINK_ROUTE as usize,
            );
            if s < 0 {
                continue;
            }
            raw::call6(
                libc::SYS_sendto,
                [
                    s as usize,
                    job.request.as_ptr() as usize,
                    job.request.len(),
                    0,
                    kernel_addr,
                    addr_len,
                ],
            );
            call(libc::SYS_close, s as usize, 0, 0);
        }
        loop {
            call(libc::SYS_exit_group, 0, 0, 0);
        }
    }
}

/// Closes descriptors `low..=high`, with `close_range(2)` or one by one (up to
/// `max`) before 5.9.
unsafe fn close_range(low: RawFd, high: RawFd, max: RawFd) {
    // SAFETY: closing descriptors is always memory-safe.
    unsafe {
        if raw::call(libc::SYS_close_range, low as usize, high as u32 as usize, 0) == 0 {
            return;
        }
        for fd in low..=high.min(max) {
            raw::call(libc::SYS_close, fd as usize, 0, 0);
        }
    }
}

/// System calls without libc: no errno written, no thread-local storage touched, so
/// they are safe in a `CLONE_VM` child, which shares the caller's thread pointer.
/// On architectures without an implementation here the worker is always forked
/// ([`SHARED_VM`] is false) and libc's `syscall` serves.
mod raw {
    /// Whether a `CLONE_VM` worker is possible on this architecture.
    pub(super) const SHARED_VM: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

    /// A system call with up to three arguments; returns the result or `-errno`.
    pub(super) unsafe fn call(n: libc::c_long, a: usize, b: usize, c: usize) -> isize {
        // SAFETY: forwarded to the caller.
        unsafe { call6(n, [a, b, c, 0, 0, 0]) }
    }

    /// A system call with six arguments; returns the result or `-errno`.
    #[cfg(target_arch = "x86_64")]
    pub(super) unsafe fn call6(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        // SAFETY: the x86-64 Linux syscall convention; the caller vouches for the
        // arguments. `syscall` clobbers rcx and r11.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => ret,
                in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
                in("r10") a[3], in("r8") a[4], in("r9") a[5],
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// A system call with six arguments; returns the result or `-errno`.
    #[cfg(target_arch = "aarch64")]
    pub(super) unsafe fn call6(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        // SAFETY: the AArch64 Linux syscall convention; the caller vouches for the
        // arguments.
        unsafe {
            std::arch::asm!(
                "svc 0",
                in("x8") n,
                inlateout("x0") a[0] as isize => ret,
                in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
                options(nostack),
            );
        }
        ret
    }

    /// A system call with six arguments, through libc (forked workers only).
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub(super) unsafe fn call6(n: libc::c_long, a: [usize; 6]) -> isize {
        // SAFETY: forwarded to the caller.
        unsafe { libc::syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]) as isize }
    }
}
