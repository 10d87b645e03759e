//! Deleting tombstones off the caller's path: `lanyard daemon` if it is up (they are
//! handed to it, [`crate::handoff`]; a detach the daemon runs itself queues them for
//! its reaper thread directly, [`crate::handoff::LocalReaper`]), else a forked worker process sends the
//! `RTM_DELLINK`s while the caller goes on (or exits).
//!
//! Deleting a link makes the kernel wait for RCU grace periods and in-flight packets,
//! milliseconds that nobody needs to wait for once the link is renamed and its
//! addresses are gone. Without the daemon the caller forks:
//!
//! - a long-running process (`lanyard run`, the daemon's own checks) double-forks: a
//!   child forks the worker and exits at once, the caller waits for that child
//!   (microseconds), and the worker, reparented to init, is reaped there: no zombie;
//! - a process that exits right after its verb (a CLI call, [`Netlink::exits_soon`])
//!   forks the worker once and does not wait for it: when the caller exits, init
//!   adopts and reaps it. One fork and one wait less on every detach.
//!
//! The worker is a plain `fork`: its own copy of memory. Between `fork` and its exit
//! it makes only async-signal-safe system calls (through rustix: no allocation, no
//! lock) on data prepared before the fork, which is sound even if the caller had
//! other threads. It closes every inherited descriptor except the namespace files it
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
use nix::unistd::ForkResult;
use rustix::net::{netlink, AddressFamily, SendFlags, SocketFlags, SocketType};
use rustix::thread::LinkNameSpaceType;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// One delete for the worker: the namespace to be in, the request to send there.
struct Job {
    /// The namespace (a duplicate of the handle's descriptor: the job owns it).
    netns: OwnedFd,
    name: IfName,
    request: Vec<u8>,
}

/// Hands `links` to the daemon if it is up ([`Netlink::hand_off_to`]), else to a
/// forked worker; deletes inline if the process cannot fork.
pub(crate) fn reap(nl: &mut Netlink, links: Vec<(Netns, IfName)>) -> Result<()> {
    let mut jobs = Vec::with_capacity(links.len());
    for (netns, name) in &links {
        // A namespace that is gone took its links with it.
        let Some(h) = nl.ns(netns)? else { continue };
        let Ok(fd) = h.fd.try_clone() else { continue };
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        jobs.push(Job {
            netns: fd,
            name: name.clone(),
            // No ack asked: the kernel has done the delete when sendto returns.
            request: encode(RouteNetlinkMessage::DelLink(m), NLM_F_REQUEST, 1),
        });
    }
    if let Some(local) = nl.local_reaper.clone() {
        jobs = hand_off_local(&local, jobs);
    }
    if let Some(path) = nl.handoff.clone() {
        if !jobs.is_empty() {
            jobs = hand_off(&path, jobs);
        }
    }
    if jobs.is_empty() {
        return Ok(());
    }
    match fork_worker(&jobs, nl.exits_soon) {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::debug!("cannot fork the tombstone reaper ({e}): deleting inline");
            let links = links
                .into_iter()
                .filter(|(_, name)| jobs.iter().any(|j| j.name == *name))
                .collect();
            nl.reap_now(links)
        }
    }
}

/// Forks the worker: directly (`direct`, not waited for) or behind a child that
/// forks it, exits and is waited for.
fn fork_worker(jobs: &[Job], direct: bool) -> io::Result<()> {
    let mut keep: Vec<RawFd> = jobs.iter().map(|j| j.netns.as_raw_fd()).collect();
    keep.sort_unstable();
    keep.dedup();
    // Where closing one by one stops, on kernels without close_range (before 5.9).
    let max_fd = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024)
        .clamp(1024, 1 << 16) as RawFd;
    // SAFETY: the child and the grandchild make only async-signal-safe system calls
    // (`worker`, `exit`) on memory prepared before the fork, allocate nothing and
    // take no lock, so whatever other threads held at the fork does not matter.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            if !direct {
                // SAFETY: as above; this child only forks again and exits.
                match unsafe { nix::unistd::fork() } {
                    Ok(ForkResult::Child) => worker(jobs, &keep, max_fd),
                    _ => exit(),
                }
            }
            worker(jobs, &keep, max_fd)
        }
        ForkResult::Parent { .. } if direct => Ok(()),
        ForkResult::Parent { child } => loop {
            // ECHILD (SIGCHLD ignored by the caller) means the kernel reaped it.
            match nix::sys::wait::waitpid(child, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                _ => return Ok(()),
            }
        },
    }
}

/// Queues `jobs` for the reaper thread of the daemon this runs in; returns those it
/// did not take.
fn hand_off_local(local: &crate::handoff::LocalReaper, jobs: Vec<Job>) -> Vec<Job> {
    let (items, mut rest): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .map(|j| ((j.netns, j.name.to_string()), (j.name, j.request)))
        .unzip();
    // What comes back is the tail of what was given, in order.
    let left = local.take(items);
    let rest = rest.split_off(rest.len() - left.len());
    left.into_iter()
        .zip(rest)
        .map(|((netns, _), (name, request))| Job {
            netns,
            name,
            request,
        })
        .collect()
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
        let items: Vec<(BorrowedFd<'_>, &str)> = batch
            .iter()
            .map(|j| (j.netns.as_fd(), j.name.as_str()))
            .collect();
        match crate::handoff::send(path, &items) {
            Ok(()) => tracing::debug!(
                "{} tombstone(s) handed to the daemon at {}",
                items.len(),
                path.display()
            ),
            Err(e) => {
                tracing::debug!("daemon at {} did not take tombstones: {e}", path.display());
                drop(items);
                left.extend(batch);
            }
        }
    }
    left
}

/// The worker, in a freshly forked process: leaves the caller's session, closes
/// every descriptor but `keep` (sorted), sends each delete in its namespace, exits.
/// Only async-signal-safe system calls; allocates nothing.
fn worker(jobs: &[Job], keep: &[RawFd], max_fd: RawFd) -> ! {
    let _ = rustix::process::setsid();
    let mut low: RawFd = 0;
    for &fd in keep {
        if fd > low {
            close_range(low, fd - 1, max_fd);
        }
        low = fd + 1;
    }
    close_range(low, RawFd::MAX, max_fd);
    let kernel = netlink::SocketAddrNetlink::new(0, 0);
    for job in jobs {
        let inside = rustix::thread::move_into_link_name_space(
            job.netns.as_fd(),
            Some(LinkNameSpaceType::Network),
        );
        if inside.is_err() {
            continue;
        }
        let Ok(sock) = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None, // protocol 0: NETLINK_ROUTE
        ) else {
            continue;
        };
        let _ = rustix::net::sendto(&sock, &job.request, SendFlags::empty(), &kernel);
    }
    exit()
}

/// Ends the forked process at once: no exit handlers, no buffers flushed (they are
/// the caller's).
fn exit() -> ! {
    // SAFETY: `_exit` is async-signal-safe and has no preconditions.
    unsafe { libc::_exit(0) }
}

/// Closes descriptors `low..=high`, with `close_range(2)`, or one by one (up to
/// `max`) on kernels before 5.9. No crate wraps `close_range`; glibc has it only
/// since 2.34, hence the system call.
fn close_range(low: RawFd, high: RawFd, max: RawFd) {
    // SAFETY: only ever called in the forked worker, whose every descriptor outside
    // `keep` is closed on purpose: nothing in it uses them afterwards.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            low as libc::c_uint,
            high as libc::c_uint,
            0 as libc::c_uint,
        )
    } == 0;
    if !done {
        for fd in low..=high.min(max) {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}
