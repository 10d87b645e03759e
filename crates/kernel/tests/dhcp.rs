//! DHCP and ARP over the real kernel: Debian's dnsmasq serves a veth in the test's
//! own namespace (the "LAN"); the client's end is in a side namespace (the
//! "container"), where `DhcpSocket` and `arp_probe` open their packet sockets.

#[allow(dead_code)] // each test file uses part of it
mod lab;

use lab::{in_fresh_netns, name, veth, SideNetns};
use lanyard_core::kernel::Kernel;
use lanyard_core::op::{Netns, Op};
use lanyard_dhcp::exchange::{acquire, extend, release, Extended};
use lanyard_dhcp::{Client, Timing};
use lanyard_kernel::dhcp::{arp_probe, DhcpSocket};
use lanyard_kernel::Netlink;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// dnsmasq on `srv0` of the calling thread's namespace, killed on drop.
struct Dnsmasq {
    child: Child,
    dir: tempfile::TempDir,
}

impl Dnsmasq {
    fn start() -> Option<Dnsmasq> {
        let dir = tempfile::tempdir().unwrap();
        let leases = dir.path().join("leases");
        let child = Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--interface=srv0",
                "--bind-interfaces",
                "--dhcp-range=192.0.2.100,192.0.2.150,255.255.255.0,2m",
                "--dhcp-option=option:router,192.0.2.1",
                "--dhcp-authoritative",
                "--no-ping",
            ])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(child) => Some(Dnsmasq { child, dir }),
            Err(e) => {
                assert!(
                    std::env::var("LANYARD_LAB_REQUIRED").is_err(),
                    "dnsmasq: {e}"
                );
                eprintln!("skipped: no dnsmasq ({e})");
                None
            }
        }
    }

    fn leases(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("leases")).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The LAN (`srv0`, 192.0.2.1/24, in the calling thread's namespace) wired to
/// `cli0` in a fresh side namespace, both up.
fn lan() -> SideNetns {
    let side = SideNetns::new();
    let mut k = Netlink::new().unwrap();
    k.apply(&veth("srv0", "cli0", side.netns())).unwrap();
    k.apply(&Op::SetUp {
        netns: Netns::Host,
        name: name("srv0"),
    })
    .unwrap();
    sh(&["ip", "addr", "add", "192.0.2.1/24", "dev", "srv0"]);
    let net = format!("--net={}", side.path.display());
    sh(&["nsenter", &net, "ip", "link", "set", "cli0", "up"]);
    // A frame sent before the pair has carrier is dropped: wait for it (a busy
    // machine may take a while), so the first probe or DISCOVER is not lost.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("nsenter")
            .args([net.as_str(), "ip", "-br", "link", "show", "cli0"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(" UP ") {
            break;
        }
        assert!(Instant::now() < end, "cli0 got no carrier");
        std::thread::sleep(Duration::from_millis(10));
    }
    side
}

fn timing() -> Timing {
    Timing {
        timeout: Duration::from_secs(4),
        tries: 4,
    }
}

#[test]
fn a_lease_from_dnsmasq_over_a_packet_socket_renewed_and_released() {
    in_fresh_netns("dhcp", || {
        let side = lan();
        let Some(server) = Dnsmasq::start() else {
            return;
        };
        let mut sock = DhcpSocket::open(&side.path, "cli0", Ipv4Addr::UNSPECIFIED).unwrap();
        let c = Client::new("endpoint-1", Some("web"), sock.mac());
        let l = acquire(&mut sock, &c, timing(), None, 7, 100).unwrap();
        assert!(l.address.octets()[3] >= 100, "{l:?}");
        assert_eq!(
            (l.prefix_len, l.gateway(), l.server),
            (24, Some(SERVER), SERVER)
        );
        assert_eq!(l.lease_secs, 120);
        let before = server.leases();
        assert!(before.contains(&l.address.to_string()), "{before}");
        assert!(before.contains(" web "), "hostname sent: {before}");

        // A second endpoint on the same interface (one MAC) gets another address.
        let c2 = Client::new("endpoint-2", None, sock.mac());
        let l2 = acquire(&mut sock, &c2, timing(), None, 9, 100).unwrap();
        assert_ne!(l2.address, l.address);

        // With the address on the interface: renew by unicast, then release.
        let net = format!("--net={}", side.path.display());
        sh(&[
            "nsenter",
            &net,
            "ip",
            "addr",
            "add",
            &l.net().to_string(),
            "dev",
            "cli0",
        ]);
        let mut bound = DhcpSocket::open(&side.path, "cli0", l.address).unwrap();
        match extend(&mut bound, &c, &l, false, timing(), 11, 160).unwrap() {
            Extended::Ack(n) => assert_eq!((n.address, n.acquired_at), (l.address, 160)),
            other => panic!("renewal: {other:?}"),
        }
        match extend(&mut bound, &c, &l, true, timing(), 12, 170).unwrap() {
            Extended::Ack(n) => assert_eq!(n.address, l.address),
            other => panic!("rebinding: {other:?}"),
        }
        // INIT-REBOOT asks for the same address and gets it.
        let again = acquire(&mut sock, &c, timing(), Some(l.address), 13, 180).unwrap();
        assert_eq!(again.address, l.address);
        release(&mut bound, &c, &l, 14).unwrap();
        let end = Instant::now() + Duration::from_secs(3);
        while server.leases().contains(&format!(" {} ", l.address)) {
            assert!(Instant::now() < end, "not released: {}", server.leases());
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

#[test]
fn no_server_fails_after_the_timeout() {
    in_fresh_netns("dhcp-none", || {
        let side = lan();
        let mut sock = DhcpSocket::open(&side.path, "cli0", Ipv4Addr::UNSPECIFIED).unwrap();
        let c = Client::new("endpoint-1", None, sock.mac());
        let t = Timing {
            timeout: Duration::from_millis(300),
            tries: 3,
        };
        let start = Instant::now();
        let e = acquire(&mut sock, &c, t, None, 1, 0).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(e.to_string().starts_with("no DHCP server answered"), "{e}");
    });
}

#[test]
fn an_arp_probe_names_the_holder_and_finds_a_free_address_free() {
    in_fresh_netns("arp", || {
        let side = lan();
        let held = arp_probe(&side.path, "cli0", SERVER, Duration::from_millis(200)).unwrap();
        let mut k = Netlink::new().unwrap();
        let srv = k
            .view(&Netns::Host)
            .unwrap()
            .links
            .into_iter()
            .find(|l| l.name.as_str() == "srv0")
            .unwrap();
        assert_eq!(held.map(lanyard_core::model::MacAddr), srv.mac);
        let start = Instant::now();
        let free = arp_probe(
            &side.path,
            "cli0",
            Ipv4Addr::new(192, 0, 2, 99),
            Duration::from_millis(100),
        )
        .unwrap();
        assert_eq!(free, None);
        assert!(start.elapsed() >= Duration::from_millis(100));
    });
}
