//! Deleting tombstones off the caller's path: `lanyard daemon` if it is up (they are
//! handed to it, [`crate::handoff`]), else a detached grandchild process sends the
//! `RTM_DELLINK`s while the caller goes on (or exits).
//!
//! Deleting a link makes the kernel wait for RCU grace periods and in-flight packets,
//! milliseconds that nobody needs to wait for once the link is renamed and its addresses are gone.
//! The caller forks a child that forks the worker and exits at once; the caller reaps
//! that child (microseconds), and the worker, reparented to init, is reaped there: no
//! zombie, and no wait. A process that exits right after (a CLI call,
//! [`Netlink::exits_soon`]) forks the worker directly and does not wait: init adopts
//! it when the caller exits. The worker closes every inherited descriptor except the
//! namespace files it needs, so it holds no pipe (a CNI runtime reading our stdout
//! sees EOF when we exit) and no lock. After the fork it makes only raw syscalls on
//! data prepared before it, which is safe even if the caller had other threads.

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

    // A caller that exits soon has the worker as its direct child and waits for
    // nothing; otherwise the child forks the worker and exits, and is waited for.
    let direct = nl.exits_soon;
    // SAFETY: the child and the grandchild only make async-signal-safe syscalls on
    // memory prepared above and leave with `_exit`.
    match unsafe { libc::fork() } {
        -1 => nl.reap_now(links),
        0 => unsafe {
            if direct || libc::fork() == 0 {
                worker(&jobs, &keep);
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

/// The grandchild: detach, close everything but `keep`, send each delete, exit.
///
/// # Safety
/// Only to be called in a freshly forked process; never returns.
unsafe fn worker(jobs: &[Job], keep: &[RawFd]) -> ! {
    // SAFETY (whole body): raw syscalls on valid pointers into memory we own.
    unsafe {
        libc::setsid();
        let mut low: RawFd = 0;
        for &fd in keep {
            if fd > low {
                close_range(low, fd - 1);
            }
            low = fd + 1;
        }
        close_range(low, RawFd::MAX);

        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        for job in jobs {
            if libc::setns(job.netns_fd, libc::CLONE_NEWNET) < 0 {
                continue;
            }
            let s = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if s < 0 {
                continue;
            }
            libc::sendto(
                s,
                job.request.as_ptr().cast(),
                job.request.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            );
            libc::close(s);
        }
        libc::_exit(0)
    }
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
