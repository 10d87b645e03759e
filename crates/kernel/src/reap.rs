//! Deleting tombstones off the caller's path: a detached worker process sends the
//! `RTM_DELLINK`s while the caller goes on (or exits).
//!
//! Deleting a link makes the kernel wait for RCU grace periods and in-flight packets,
//! milliseconds that nobody needs to wait for once the link is renamed and flushed.
//! The caller starts an intermediate child that starts the worker and exits at once;
//! the caller reaps the intermediate, and the worker, reparented to init, is reaped
//! there: no zombie, and no wait. The intermediate closes every descriptor except the
//! namespace files the worker needs before it starts the worker, so the worker never
//! holds a pipe (a CNI runtime reading our stdout sees EOF when we exit) or a lock,
//! not even for an instant.
//!
//! Nothing is copied. The intermediate shares the caller's memory while the caller is
//! suspended (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does). On x86-64 and AArch64
//! the worker shares it too (`CLONE_VM`), but only touches a region of its own: the
//! caller maps it, writes the jobs into it and never touches it again; the worker runs
//! on a stack inside it, makes raw syscalls only (no libc: its wrappers write `errno`,
//! in thread-local storage the caller is using), runs with every signal blocked (so no
//! handler of the caller runs in it), and unmaps the region as its last step before it
//! exits. A forked worker would have cost a copy of the caller's page tables and then
//! a page fault for every page the caller writes afterwards: about 0.3 ms of a 3 ms
//! detach here. Elsewhere the worker is forked (a raw `clone` without libc's at-fork
//! handlers, which would take locks in the memory the intermediate shares).

use crate::netlink::Netlink;
use crate::socket::encode;
use lanyard_core::name::IfName;
use lanyard_core::op::Netns;
use lanyard_core::Result;
use netlink_packet_core::NLM_F_REQUEST;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use std::os::fd::{AsRawFd, RawFd};
use std::os::raw::{c_int, c_void};

/// Stack of the intermediate child: it only makes syscalls, in a few small frames.
const STACK: usize = 16 * 1024;
/// Stack of the worker, at the start of its region.
const WORKER_STACK: usize = 64 * 1024;

/// Whether the worker shares the caller's memory (see the module docs).
const SHARED_WORKER: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// Hands `links` to a detached worker; deletes inline if that cannot be started.
pub(crate) fn reap(nl: &mut Netlink, links: Vec<(Netns, IfName)>) -> Result<()> {
    let mut jobs = Vec::with_capacity(links.len());
    for (netns, name) in &links {
        // A namespace that is gone took its links with it.
        let Some(h) = nl.ns(netns)? else { continue };
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        // No ack asked: the kernel has done the delete when sendto returns.
        let request = encode(RouteNetlinkMessage::DelLink(m), NLM_F_REQUEST, 1);
        jobs.push((h.fd.as_raw_fd(), request));
    }
    if jobs.is_empty() {
        return Ok(());
    }
    let mut keep: Vec<RawFd> = jobs.iter().map(|j| j.0).collect();
    keep.sort_unstable();
    keep.dedup();
    let Some(region) = Region::new(&jobs) else {
        return nl.reap_now(links);
    };

    let mut stack = vec![0u8; STACK];
    let args = Args {
        keep: &keep,
        region: region.base,
    };
    // SAFETY: `stack` and `args` outlive the child: with CLONE_VFORK this thread is
    // suspended until the child has exited. The stack top is 16-byte aligned. The
    // child runs with every signal blocked (it shares our handlers' memory); the mask
    // is ours again right after.
    let child = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let top = stack.as_mut_ptr().add(STACK) as usize & !15;
        let pid = libc::clone(
            intermediate,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const Args as *mut c_void,
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        pid
    };
    let mut status = 0;
    // SAFETY: waiting for our own child; EINTR is retried, ECHILD (SIGCHLD ignored by
    // the caller) means the kernel reaped it already.
    let waited = (child > 0).then(|| loop {
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break r;
        }
    });
    drop(stack);
    let started = match waited {
        None => false,
        Some(w) => w != child || (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0),
    };
    if !started {
        // No worker: its region is still ours; delete here after all.
        region.unmap();
        return nl.reap_now(links);
    }
    // The worker owns the region now (a forked one has its own copy of it).
    if !SHARED_WORKER {
        region.unmap();
    }
    Ok(())
}

/// What the intermediate child needs, prepared by the caller.
struct Args<'a> {
    keep: &'a [RawFd],
    /// Base of the worker's [`Region`].
    region: usize,
}

/// The worker's memory: its stack, then the jobs, laid out flat so that it reads them
/// with plain loads: the region length (`usize`), the number of jobs (`u32`), then per
/// job the namespace fd (`i32`), the request length (`u32`) and the request, padded to
/// 4 bytes.
struct Region {
    base: usize,
    len: usize,
}

impl Region {
    /// Maps a region and writes `jobs` into it; `None` if it cannot be mapped.
    fn new(jobs: &[(RawFd, Vec<u8>)]) -> Option<Region> {
        let table: usize = 12 + jobs.iter().map(|(_, r)| 8 + pad4(r.len())).sum::<usize>();
        let len = WORKER_STACK + table;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let base = p as usize;
        let mut at = base + WORKER_STACK;
        let mut put = |bytes: &[u8]| {
            // SAFETY: the writes stay inside the mapping, sized for them above.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, bytes.len()) };
            at += bytes.len();
        };
        put(&len.to_ne_bytes());
        put(&(jobs.len() as u32).to_ne_bytes());
        for (fd, request) in jobs {
            put(&fd.to_ne_bytes());
            put(&(request.len() as u32).to_ne_bytes());
            put(request);
            put(&[0; 3][..pad4(request.len()) - request.len()]);
        }
        Some(Region { base, len })
    }

    /// Unmaps it (when no worker took it).
    fn unmap(self) {
        // SAFETY: our own mapping, which nothing uses any more.
        unsafe { libc::munmap(self.base as *mut c_void, self.len) };
    }
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// The intermediate child, in the caller's memory but with its own copy of the
/// descriptor table: closes every descriptor but `keep`, starts the worker, exits (1
/// if the worker could not be started).
extern "C" fn intermediate(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Args` the caller passed and keeps alive while we run; the
    // region was prepared by the caller and is left to the worker.
    unsafe {
        let a = &*(arg as *const Args);
        close_all_but(a.keep);
        let pid = if SHARED_WORKER {
            // The worker shares our memory and starts on the stack in its region.
            let top = (a.region + WORKER_STACK) & !15;
            libc::clone(
                worker,
                top as *mut c_void,
                libc::CLONE_VM | libc::SIGCHLD,
                a.region as *mut c_void,
            ) as libc::c_long
        } else {
            // `clone(SIGCHLD)` without a new stack is `fork` without libc's at-fork
            // handlers; the worker runs on (a copy of) this stack.
            let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0);
            if pid == 0 {
                worker(a.region as *mut c_void);
            }
            pid
        };
        libc::_exit(i32::from(pid < 0))
    }
}

/// The worker: detaches from the caller's session, sends each delete of the job table
/// in the region at `arg`, unmaps the region (when it shares the caller's memory) and
/// exits. Raw syscalls and plain loads only (see the module docs); never returns.
extern "C" fn worker(arg: *mut c_void) -> c_int {
    let base = arg as usize;
    // SAFETY: the region holds the table `Region::new` wrote, which nobody else
    // writes; every read stays inside it. The syscalls get valid pointers into it or
    // into this stack.
    unsafe {
        let read_u32 = |at: usize| std::ptr::read_unaligned(at as *const u32);
        let table = base + WORKER_STACK;
        let len = std::ptr::read_unaligned(table as *const usize);
        let count = read_u32(table + 8);
        sys::call(libc::SYS_setsid, [0; 6]);
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let mut at = table + 12;
        for _ in 0..count {
            let fd = read_u32(at) as usize;
            let size = read_u32(at + 4) as usize;
            let request = at + 8;
            at = request + pad4(size);
            if sys::call(
                libc::SYS_setns,
                [fd, libc::CLONE_NEWNET as usize, 0, 0, 0, 0],
            ) < 0
            {
                continue;
            }
            let s = sys::call(
                libc::SYS_socket,
                [
                    libc::AF_NETLINK as usize,
                    (libc::SOCK_RAW | libc::SOCK_CLOEXEC) as usize,
                    libc::NETLINK_ROUTE as usize,
                    0,
                    0,
                    0,
                ],
            );
            if s < 0 {
                continue;
            }
            sys::call(
                libc::SYS_sendto,
                [
                    s as usize,
                    request,
                    size,
                    0,
                    &kernel as *const libc::sockaddr_nl as usize,
                    std::mem::size_of::<libc::sockaddr_nl>(),
                ],
            );
            sys::call(libc::SYS_close, [s as usize, 0, 0, 0, 0, 0]);
        }
        if SHARED_WORKER {
            sys::unmap_and_exit(base, len)
        }
        libc::_exit(0)
    }
}

/// Raw system calls for the worker, which must not touch libc's state (see the module
/// docs). Where the worker is forked instead, libc's `syscall` is fine.
mod sys {
    /// `syscall(n, a…)`; a negative result is `-errno`.
    #[cfg(target_arch = "x86_64")]
    pub(super) unsafe fn call(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        // SAFETY: the caller passes valid arguments for `n`; the kernel clobbers only
        // rax, rcx and r11.
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

    /// `syscall(n, a…)`; a negative result is `-errno`.
    #[cfg(target_arch = "aarch64")]
    pub(super) unsafe fn call(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        // SAFETY: the caller passes valid arguments for `n`; the kernel clobbers x0.
        unsafe {
            std::arch::asm!(
                "svc 0",
                in("x8") n as usize,
                inlateout("x0") a[0] => ret,
                in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
                options(nostack),
            );
        }
        ret
    }

    /// `syscall(n, a…)` through libc, for a forked worker.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub(super) unsafe fn call(n: libc::c_long, a: [usize; 6]) -> isize {
        // SAFETY: the caller passes valid arguments for `n`.
        let r = unsafe { libc::syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]) };
        if r < 0 {
            -(std::io::Error::last_os_error().raw_os_error().unwrap_or(1) as isize)
        } else {
            r as isize
        }
    }

    /// `munmap(base, len)` then `exit(0)`, with no memory access in between: the stack
    /// this runs on is in the range unmapped.
    #[cfg(target_arch = "x86_64")]
    pub(super) unsafe fn unmap_and_exit(base: usize, len: usize) -> ! {
        // SAFETY: after munmap only registers are used; rdx survives the syscall.
        unsafe {
            std::arch::asm!(
                "syscall",
                "mov rax, rdx",
                "xor edi, edi",
                "syscall",
                in("rax") libc::SYS_munmap,
                in("rdi") base,
                in("rsi") len,
                in("rdx") libc::SYS_exit,
                options(noreturn, nostack),
            )
        }
    }

    /// `munmap(base, len)` then `exit(0)`, with no memory access in between: the stack
    /// this runs on is in the range unmapped.
    #[cfg(target_arch = "aarch64")]
    pub(super) unsafe fn unmap_and_exit(base: usize, len: usize) -> ! {
        // SAFETY: after munmap only registers are used; x2 survives the syscall.
        unsafe {
            std::arch::asm!(
                "svc 0",
                "mov x8, x2",
                "mov x0, xzr",
                "svc 0",
                in("x8") libc::SYS_munmap,
                in("x0") base,
                in("x1") len,
                in("x2") libc::SYS_exit,
                options(noreturn, nostack),
            )
        }
    }

    /// Never called where the worker is forked (it exits through libc).
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub(super) unsafe fn unmap_and_exit(_: usize, _: usize) -> ! {
        // SAFETY: a forked worker owns its process.
        unsafe { libc::_exit(0) }
    }
}

/// Closes every descriptor except `keep` (sorted, no duplicates).
///
/// # Safety
/// Closing descriptors is memory-safe, but the caller must own the descriptor table
/// (a child that does not share it).
unsafe fn close_all_but(keep: &[RawFd]) {
    let mut low: RawFd = 0;
    for &fd in keep {
        if fd > low {
            // SAFETY: per this function's contract.
            unsafe { close_range(low, fd - 1) };
        }
        low = fd + 1;
    }
    // SAFETY: per this function's contract.
    unsafe { close_range(low, RawFd::MAX) };
}

/// Closes descriptors `low..=high`, with `close_range(2)` or one by one before 5.9.
unsafe fn close_range(low: RawFd, high: RawFd) {
    // SAFETY: closing descriptors is always memory-safe.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            low as libc::c_uint,
            high as libc::c_uint,
            0,
        ) == 0
        {
            return;
        }
        let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 16) as RawFd;
        for fd in low..=high.min(max) {
            libc::close(fd);
        }
    }
}
