//! The public namespace helpers (`lanyard_kernel::netns`) against the real kernel:
//! work done through them happens in the namespace they name, sockets opened there
//! stay there, and the caller's thread is back home afterwards.

#[allow(dead_code)]
mod lab;

use lab::{in_fresh_netns, name, SideNetns};
use lanyard_core::kernel::Kernel;
use lanyard_core::op::{Netns, Op};
use lanyard_kernel::{netns, Netlink};
use std::net::UdpSocket;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `(st_dev, st_ino)` of a namespace file.
fn id(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).expect("stat namespace");
    (m.dev(), m.ino())
}

fn thread_netns() -> (u64, u64) {
    id(Path::new("/proc/thread-self/ns/net"))
}

/// An address that exists in the side namespace only.
const SIDE_ADDR: &str = "192.0.2.7";

/// A side namespace with `lo` up and [`SIDE_ADDR`] on it. `lo` goes up at home too:
/// a namespace with no local table at all lets any address be bound.
fn side_with_address(k: &mut Netlink) -> SideNetns {
    k.apply(&Op::SetUp {
        netns: Netns::Host,
        name: name("lo"),
    })
    .expect("lo up at home");
    let side = SideNetns::new();
    k.apply(&Op::SetUp {
        netns: side.netns(),
        name: name("lo"),
    })
    .expect("lo up in the side namespace");
    k.apply(&Op::AddAddress {
        netns: side.netns(),
        link: name("lo"),
        addr: format!("{SIDE_ADDR}/32").parse().unwrap(),
        nodad: true,
    })
    .expect("an address in the side namespace");
    side
}

fn bind() -> std::io::Result<UdpSocket> {
    UdpSocket::bind((SIDE_ADDR, 0))
}

#[test]
fn a_socket_opened_within_a_namespace_lives_there_after_the_thread_is_back() {
    in_fresh_netns("netns::within", || {
        let mut k = Netlink::new().unwrap();
        let side = side_with_address(&mut k);
        let home = thread_netns();
        assert!(bind().is_err(), "{SIDE_ADDR} exists at home");
        let (sock, inside) = netns::within(&side.path, || (bind(), thread_netns()))
            .expect("enter the side namespace");
        let sock = sock.expect("bind inside");
        assert_eq!(inside, id(&side.path), "the closure ran inside");
        assert_eq!(thread_netns(), home, "the thread is back home");
        // Used from home, the socket still talks over the side namespace's loopback.
        let to = sock.local_addr().unwrap();
        sock.send_to(b"hi", to).unwrap();
        let mut b = [0u8; 2];
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(sock.recv(&mut b).unwrap(), 2);
        assert_eq!(&b, b"hi");
    });
}

#[test]
fn run_in_runs_on_a_thread_inside_and_leaves_the_caller_where_it_was() {
    in_fresh_netns("netns::run_in", || {
        let mut k = Netlink::new().unwrap();
        let side = side_with_address(&mut k);
        let home = thread_netns();
        let (inside, sock) = netns::run_in(&side.path, || (thread_netns(), bind()))
            .expect("run in the side namespace");
        assert_eq!(inside, id(&side.path));
        assert!(sock.is_ok(), "bind inside: {sock:?}");
        assert_eq!(thread_netns(), home);
    });
}

#[test]
fn a_path_that_is_no_network_namespace_is_an_error_and_nothing_moves() {
    in_fresh_netns("netns errors", || {
        let home = thread_netns();
        let missing = Path::new("/run/netns/lyt-no-such-namespace");
        let e = netns::within(missing, || ()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        assert!(netns::run_in(missing, || ()).is_err());
        // A file that exists but is no namespace: setns refuses it.
        let not_ns = Path::new("/proc/self/status");
        let mut ran = false;
        assert!(netns::within(not_ns, || ran = true).is_err());
        assert!(!ran, "the closure ran though the namespace was not entered");
        assert!(netns::run_in(not_ns, || ()).is_err());
        assert_eq!(thread_netns(), home);
    });
}

/// How many of this process's descriptors are the namespace file `ns` (a handle
/// that keeps it alive after every process in it is gone).
fn descriptors_on(ns: &Path) -> usize {
    let want = std::fs::read_link(ns).expect("readlink namespace");
    std::fs::read_dir("/proc/self/fd")
        .expect("list fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| *l == want)
        .count()
}

#[test]
fn end_of_call_lets_go_of_the_namespaces_the_call_named() {
    in_fresh_netns("netns::end_of_call", || {
        let mut k = Netlink::new().unwrap();
        let side = SideNetns::new();
        k.apply(&Op::SetUp {
            netns: side.netns(),
            name: name("lo"),
        })
        .expect("lo up in the side namespace");
        assert!(descriptors_on(&side.path) >= 1, "the call's handle");
        // The daemon keeps its kernel for the next call: a container's namespace
        // must not be held past the call that named it.
        k.end_of_call();
        assert_eq!(descriptors_on(&side.path), 0);
    });
}
