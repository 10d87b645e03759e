//! lanyard's nftables firewall in a lab, with real packets checked where they arrive:
//! socat servers answer every connection with `peer=<the address they saw>`, so a
//! test knows both that a packet got through and what source address it carried.
//! Egress masquerade and `-o snat_source`, published ports (LAN, host, hairpin, peer
//! endpoint; ranges, UDP, IPv6, a fixed host address) with the client address kept,
//! `--internal`, isolation between bridge networks, a LAN that routes to a bridge
//! network reaching only published ports, anti-spoofing (IPv4, ARP, IPv6 neighbour
//! advertisements, link-local sources), the uplink still taking router advertisements
//! once IPv6 forwarding is on, `restore` after `nft flush ruleset`, Docker-style iptables-nft rules left alone, and
//! `lanyard daemon` rebuilding the tables after a flush or a firewall reload.

use crate::harness::{addr, addr_of, exit, lab, Bg, Lab, Ns};
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long a server may take to start listening, and a rebuild to show.
const SETTLE: Duration = Duration::from_secs(5);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// socat's spelling of `addr:port` (IPv6 in brackets).
fn sock(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// Waits until something in `ns` listens on `port` (TCP or UDP).
fn wait_listening(ns: &Ns, port: u16, udp: bool) {
    let flags = if udp { "-Hlun" } else { "-Hltn" };
    let end = Instant::now() + SETTLE;
    let suffix = format!(":{port}");
    while Instant::now() < end {
        let out = ns.ok(&["ss", flags]);
        let listening = out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .any(|local| local.ends_with(&suffix));
        if listening {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "[{}] nothing listens on port {port} after {SETTLE:?}",
        ns.name()
    );
}

/// TCP servers on `port` in `ns`, IPv4 and IPv6, answering `peer=<client>`.
pub(crate) fn serve_tcp(ns: &Ns, port: u16) -> Vec<Bg> {
    let v4 = ns.spawn(&[
        "socat",
        &format!("TCP4-LISTEN:{port},fork,reuseaddr"),
        "SYSTEM:echo peer=$SOCAT_PEERADDR",
    ]);
    let v6 = ns.spawn(&[
        "socat",
        &format!("TCP6-LISTEN:{port},ipv6only=1,fork,reuseaddr"),
        "SYSTEM:echo peer=$SOCAT_PEERADDR",
    ]);
    wait_listening(ns, port, false);
    vec![v4, v6]
}

/// A UDP server on `port` in `ns` answering each datagram with `peer=<client>`.
fn serve_udp(ns: &Ns, port: u16) -> Bg {
    let s = ns.spawn(&[
        "socat",
        &format!("UDP4-RECVFROM:{port},fork"),
        "SYSTEM:echo peer=$SOCAT_PEERADDR",
    ]);
    wait_listening(ns, port, true);
    s
}

/// The address in a `peer=…` answer (socat writes IPv6 in brackets, expanded).
fn parse_peer(out: &str) -> Option<IpAddr> {
    let p = out.lines().find_map(|l| l.trim().strip_prefix("peer="))?;
    p.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// Connects from `from` to `addr:port` over TCP; the client address the server saw,
/// or None if the connection failed (refused, no answer within 2 s).
pub(crate) fn tcp_peer(from: &Ns, addr: &str, port: u16) -> Option<IpAddr> {
    let out = from.exec(&[
        "socat",
        "-T2",
        "-",
        &format!("TCP:{},connect-timeout=2", sock(addr, port)),
    ]);
    parse_peer(&String::from_utf8_lossy(&out.stdout))
}

/// Sends a UDP datagram from `from` to `addr:port` (up to three, UDP being lossy);
/// the client address the server saw, or None without an answer.
fn udp_peer(from: &Ns, addr: &str, port: u16) -> Option<IpAddr> {
    (0..3).find_map(|_| {
        let out = from.exec(&[
            "sh",
            "-c",
            "echo hello | socat -T3 -t3 - \"UDP4:$1\"",
            "sh",
            &sock(addr, port),
        ]);
        parse_peer(&String::from_utf8_lossy(&out.stdout))
    })
}

/// `br` (as [`dual_stack_bridge`]) with `c1` on it publishing 8080 to a TCP server
/// on its port 80: the namespace and the server.
fn web_published_on_8080(lab: &Lab) -> (Ns, Vec<Bg>) {
    dual_stack_bridge(lab, "br");
    let c1 = lab.netns("c1");
    lab.attach("br", &c1, &["-p", "8080:80"]);
    let web = serve_tcp(&c1, 80);
    (c1, web)
}

/// `br`: a bridge network, 203.0.113.0/24 and 2001:db8:5::/64.
fn dual_stack_bridge(lab: &Lab, name: &str) {
    lab.lanyard_ok(&[
        "network",
        "create",
        name,
        "--subnet",
        "203.0.113.0/24",
        "--ipv6",
        "--subnet",
        "2001:db8:5::/64",
    ]);
}

/// Packets dropped so far by lanyard's bridge table (sum of its counters).
fn bridge_drops(lab: &Lab) -> u64 {
    let out = lab
        .host()
        .ok(&["nft", "list", "table", "bridge", "lanyard"]);
    out.lines()
        .filter_map(|l| l.split("counter packets ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// What nft shows of a table without counters (`nft -s`), for before/after checks.
fn table_text(ns: &Ns, family: &str, name: &str) -> String {
    ns.ok(&["nft", "-s", "list", "table", family, name])
}

#[test]
fn bridge_egress_is_masqueraded_to_the_hosts_address() {
    let lab = lab!();
    dual_stack_bridge(&lab, "br");
    let _router = serve_tcp(&lab.lan(), 9000);
    let c1 = lab.netns("c1");
    lab.attach("br", &c1, &[]);
    assert_eq!(
        tcp_peer(&c1, addr::ROUTER_V4, 9000),
        Some(ip(addr::HOST_V4)),
        "the router saw the endpoint's IPv4 connection come from the host"
    );
    assert_eq!(
        tcp_peer(&c1, addr::ROUTER_V6, 9000),
        Some(ip(addr::HOST_V6)),
        "the router saw the endpoint's IPv6 connection come from the host"
    );
}

#[test]
fn snat_source_makes_each_network_leave_with_its_chosen_address() {
    let lab = lab!();
    // The uplink has two addresses; masquerade would always pick the first.
    lab.host()
        .ip(&["addr", "add", "192.0.2.3/24", "dev", "eth0"]);
    for (net, subnet, src) in [
        ("a", "10.89.1.0/24", "192.0.2.3"),
        ("b", "10.89.2.0/24", "192.0.2.2"),
    ] {
        lab.lanyard_ok(&[
            "network",
            "create",
            net,
            "--subnet",
            subnet,
            "-o",
            &format!("snat_source={src}"),
        ]);
    }
    let _router = serve_tcp(&lab.lan(), 9000);
    let (ca, cb) = (lab.netns("ca"), lab.netns("cb"));
    lab.attach("a", &ca, &[]);
    lab.attach("b", &cb, &[]);
    for _ in 0..3 {
        assert_eq!(
            tcp_peer(&ca, addr::ROUTER_V4, 9000),
            Some(ip("192.0.2.3")),
            "network a"
        );
        assert_eq!(
            tcp_peer(&cb, addr::ROUTER_V4, 9000),
            Some(ip("192.0.2.2")),
            "network b"
        );
    }
}

#[test]
fn a_published_port_is_reached_from_the_lan_the_host_itself_and_endpoints_with_the_client_address_kept(
) {
    let lab = lab!();
    dual_stack_bridge(&lab, "br");
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let e1 = lab.attach(
        "br",
        &c1,
        &[
            "-p",
            "8080:80",
            "-p",
            "9000-9001:7000-7001",
            "-p",
            "5353:53/udp",
            "-p",
            "192.0.2.2:8443:443",
        ],
    );
    lab.attach("br", &c2, &[]);
    let _servers: Vec<Bg> = [80, 7000, 7001, 443]
        .into_iter()
        .flat_map(|p| serve_tcp(&c1, p))
        .chain([serve_udp(&c1, 53)])
        .collect();
    let (lan, host) = (lab.lan(), lab.host());
    let router = Some(ip(addr::ROUTER_V4));
    // From the LAN: the server sees the router's own address, no proxy in between.
    assert_eq!(tcp_peer(&lan, addr::HOST_V4, 8080), router, "LAN -> 8080");
    assert_eq!(tcp_peer(&lan, addr::HOST_V4, 9000), router, "LAN -> 9000");
    assert_eq!(tcp_peer(&lan, addr::HOST_V4, 9001), router, "LAN -> 9001");
    assert_eq!(
        udp_peer(&lan, addr::HOST_V4, 5353),
        router,
        "LAN -> 5353/udp"
    );
    assert_eq!(
        tcp_peer(&lan, addr::HOST_V4, 8443),
        router,
        "LAN -> 192.0.2.2:8443"
    );
    assert_eq!(
        tcp_peer(&lan, addr::HOST_V6, 8080),
        Some(ip(addr::ROUTER_V6)),
        "LAN -> [2001:db8:1::2]:8080"
    );
    // A mapping bound to 192.0.2.2 is not published on the host's other addresses.
    assert_eq!(
        tcp_peer(&host, "203.0.113.1", 8443),
        None,
        "8443 on the gateway"
    );
    assert_eq!(tcp_peer(&lan, addr::HOST_V6, 8443), None, "8443 over IPv6");
    // From the host itself, through its LAN address and through loopback.
    assert_eq!(
        tcp_peer(&host, addr::HOST_V4, 8080),
        Some(ip(addr::HOST_V4)),
        "host -> 192.0.2.2:8080"
    );
    assert!(
        tcp_peer(&host, "127.0.0.1", 8080).is_some(),
        "host -> 127.0.0.1:8080"
    );
    assert!(
        tcp_peer(&host, addr::HOST_V6, 8080).is_some(),
        "host -> [2001:db8:1::2]:8080"
    );
    // Hairpin: the endpoint reaches its own published port through the host.
    let veth = e1["host_ifname"].as_str().unwrap();
    let port = &host.ip_json(&["-d", "link", "show", "dev", veth])[0];
    assert_eq!(
        port["linkinfo"]["info_slave_data"]["hairpin"], true,
        "{port}"
    );
    assert!(
        tcp_peer(&c1, addr::HOST_V4, 8080).is_some(),
        "c1 -> its own port via 192.0.2.2:8080"
    );
    assert!(
        tcp_peer(&c1, addr::HOST_V6, 8080).is_some(),
        "c1 -> its own port via [2001:db8:1::2]:8080"
    );
    // Another endpoint of the same network.
    assert!(tcp_peer(&c2, addr::HOST_V4, 8080).is_some(), "c2 -> 8080");
    assert!(tcp_peer(&c2, addr::HOST_V4, 9001).is_some(), "c2 -> 9001");
    assert!(
        udp_peer(&c2, addr::HOST_V4, 5353).is_some(),
        "c2 -> 5353/udp"
    );
    // Nothing but the published ports is forwarded.
    assert_eq!(
        tcp_peer(&lan, addr::HOST_V4, 80),
        None,
        "LAN -> unpublished 80"
    );
    assert_eq!(addr_of(&e1, false), "203.0.113.2");
}

#[test]
fn a_lan_host_that_routes_to_a_bridge_network_reaches_only_its_published_ports() {
    let lab = lab!();
    dual_stack_bridge(&lab, "br");
    let c1 = lab.netns("c1");
    let e1 = lab.attach("br", &c1, &["-p", "8080:80"]);
    let _servers: Vec<Bg> = [80, 81]
        .into_iter()
        .flat_map(|p| serve_tcp(&c1, p))
        .collect();
    let (lan, host) = (lab.lan(), lab.host());
    // The router learns the bridge subnets via the host, as a static route would.
    lan.ip(&["route", "add", "203.0.113.0/24", "via", addr::HOST_V4]);
    lan.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:5::/64",
        "via",
        addr::HOST_V6,
    ]);
    for v6 in [false, true] {
        let (ep, host_addr, router) = if v6 {
            (addr_of(&e1, true), addr::HOST_V6, addr::ROUTER_V6)
        } else {
            (addr_of(&e1, false), addr::HOST_V4, addr::ROUTER_V4)
        };
        assert_eq!(tcp_peer(&lan, &ep, 81), None, "LAN -> {ep}:81, unpublished");
        assert_eq!(
            tcp_peer(&lan, &ep, 80),
            None,
            "LAN -> {ep}:80, not through the published port"
        );
        assert!(!lan.ping(&ep), "LAN pinged {ep}");
        assert_eq!(
            tcp_peer(&lan, host_addr, 8080),
            Some(ip(router)),
            "LAN -> {host_addr}:8080, published"
        );
        // The host itself reaches its endpoints directly; the endpoint reaches the LAN.
        assert!(tcp_peer(&host, &ep, 81).is_some(), "host -> {ep}:81");
        assert!(c1.ping(router), "{ep} -> {router}");
    }
}

#[test]
fn the_same_host_port_twice_is_refused_and_a_published_port_goes_with_its_endpoint() {
    let lab = lab!();
    dual_stack_bridge(&lab, "br");
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    lab.attach("br", &c1, &["--name", "web", "-p", "8080:80"]);
    let _s1 = serve_tcp(&c1, 80);
    let _s2 = serve_tcp(&c2, 80);
    let lan = lab.lan();
    assert_eq!(
        tcp_peer(&lan, addr::HOST_V4, 8080),
        Some(ip(addr::ROUTER_V4))
    );
    let path = c2.path();
    let err = lab.lanyard_fails(
        &[
            "attach",
            "br",
            "--netns",
            path.to_str().unwrap(),
            "-p",
            "8080:80",
        ],
        exit::CONFLICT,
    );
    assert!(
        err.contains("8080") && err.contains("already published") && err.contains("web"),
        "{err}"
    );
    // Also when one of them names a host address.
    lab.lanyard_fails(
        &[
            "attach",
            "br",
            "--netns",
            path.to_str().unwrap(),
            "-p",
            "192.0.2.2:8080:80",
        ],
        exit::CONFLICT,
    );
    assert_eq!(
        c2.links(),
        ["lo".to_string()].into(),
        "a refused attach left a link"
    );
    lab.lanyard_ok(&["detach", "web"]);
    assert_eq!(
        tcp_peer(&lan, addr::HOST_V4, 8080),
        None,
        "8080 still answers after its endpoint was detached"
    );
    assert_eq!(tcp_peer(&lan, addr::HOST_V6, 8080), None);
    // The port is free again: c2 takes it.
    lab.attach("br", &c2, &["-p", "8080:80"]);
    assert_eq!(
        tcp_peer(&lan, addr::HOST_V4, 8080),
        Some(ip(addr::ROUTER_V4))
    );
}

#[test]
fn an_internal_network_keeps_its_traffic_in_and_refuses_published_ports() {
    let lab = lab!();
    lab.lanyard_ok(&[
        "network",
        "create",
        "sealed",
        "--internal",
        "--subnet",
        "10.89.3.0/24",
    ]);
    let _router = serve_tcp(&lab.lan(), 9000);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    lab.attach("sealed", &c1, &[]);
    let e2 = lab.attach("sealed", &c2, &[]);
    assert_eq!(tcp_peer(&c1, addr::ROUTER_V4, 9000), None, "c1 -> router");
    assert!(!c1.ping(addr::ROUTER_V4), "c1 pinged the router");
    assert!(
        c1.ping(&addr_of(&e2, false)),
        "endpoints of one internal network reach each other"
    );
    let c3 = lab.netns("c3");
    let path = c3.path();
    let err = lab.lanyard_fails(
        &[
            "attach",
            "sealed",
            "--netns",
            path.to_str().unwrap(),
            "-p",
            "8080:80",
        ],
        exit::USAGE,
    );
    assert!(err.contains("internal"), "{err}");
    assert_eq!(c3.links(), ["lo".to_string()].into());
}

#[test]
fn endpoints_of_two_bridge_networks_cannot_reach_each_other_unless_attached_to_both() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "a", "--subnet", "10.89.1.0/24"]);
    lab.lanyard_ok(&["network", "create", "b", "--subnet", "10.89.2.0/24"]);
    let (ca, cb, both) = (lab.netns("ca"), lab.netns("cb"), lab.netns("both"));
    let a = addr_of(&lab.attach("a", &ca, &[]), false);
    let b = addr_of(&lab.attach("b", &cb, &[]), false);
    let both_a = addr_of(&lab.attach("a", &both, &[]), false);
    let both_b = addr_of(&lab.attach("b", &both, &[]), false);
    let _sa = serve_tcp(&ca, 80);
    let _sb = serve_tcp(&cb, 80);
    assert_eq!(tcp_peer(&ca, &b, 80), None, "a -> b");
    assert_eq!(tcp_peer(&cb, &a, 80), None, "b -> a");
    assert!(!ca.ping(&b) && !cb.ping(&a), "a and b pinged each other");
    // The namespace on both reaches both, directly on each bridge.
    assert_eq!(tcp_peer(&both, &a, 80), Some(ip(&both_a)), "both -> a");
    assert_eq!(tcp_peer(&both, &b, 80), Some(ip(&both_b)), "both -> b");
    // Isolation is not a general block: both still reach the LAN.
    assert!(ca.ping(addr::ROUTER_V4) && cb.ping(addr::ROUTER_V4));
}

#[test]
fn frames_with_a_spoofed_source_address_or_mac_are_dropped_at_the_bridge() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let a1 = addr_of(&lab.attach("br", &c1, &[]), false);
    lab.attach("br", &c2, &[]);
    let _router = serve_tcp(&lab.lan(), 9000);
    assert!(
        c2.ping(addr::ROUTER_V4) && c2.ping(&a1),
        "c2 before spoofing"
    );
    // A second address inside the namespace: packets from it never get out.
    c2.ip(&["addr", "add", "203.0.113.77/24", "dev", "eth0"]);
    let before = bridge_drops(&lab);
    for to in [addr::ROUTER_V4, a1.as_str()] {
        let out = c2.exec(&["ping", "-n", "-c1", "-W1", "-I", "203.0.113.77", to]);
        assert!(
            !out.status.success(),
            "ping from 203.0.113.77 to {to} answered"
        );
    }
    let out = c2.exec(&[
        "socat",
        "-T2",
        "-",
        "TCP:192.0.2.1:9000,bind=203.0.113.77,connect-timeout=2",
    ]);
    assert!(
        parse_peer(&String::from_utf8_lossy(&out.stdout)).is_none(),
        "the router answered a connection from a spoofed address"
    );
    let after_ip = bridge_drops(&lab);
    assert!(
        after_ip > before,
        "no drops counted ({before} -> {after_ip})"
    );
    assert_eq!(
        tcp_peer(&c2, addr::ROUTER_V4, 9000),
        Some(ip(addr::HOST_V4)),
        "c2's own address still works"
    );
    c2.ip(&["addr", "del", "203.0.113.77/24", "dev", "eth0"]);
    // Another MAC: everything from it is dropped.
    let mac = c2.ip_json(&["link", "show", "eth0"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    c2.ip(&["link", "set", "eth0", "address", "02:42:cb:00:71:99"]);
    assert!(!c2.ping(addr::ROUTER_V4), "c2 with a foreign MAC -> router");
    assert!(!c2.ping(&a1), "c2 with a foreign MAC -> c1");
    assert_eq!(tcp_peer(&c2, addr::ROUTER_V4, 9000), None);
    assert!(bridge_drops(&lab) > after_ip, "no MAC drops counted");
    // The other endpoint is unaffected; c2 works again with its own MAC.
    assert!(c1.ping(addr::ROUTER_V4), "c1 -> router");
    c2.ip(&["link", "set", "eth0", "address", &mac]);
    assert!(
        c2.ping_within(addr::ROUTER_V4, SETTLE),
        "c2 with its MAC back -> router"
    );
}

/// The MAC of `dev` in `ns`.
fn mac_of(ns: &Ns, dev: &str) -> String {
    ns.ip_json(&["link", "show", dev])[0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The link-local address the kernel derives from `mac` (modified EUI-64).
fn eui64_link_local(mac: &str) -> String {
    let m: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let o = [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 2,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ];
    Ipv6Addr::from(o).to_string()
}

/// What the host's neighbour cache says `addr` is on: its MAC, if it has one.
fn neighbour_mac(host: &Ns, addr: &str) -> Option<String> {
    let n = host.ip_json(&["-6", "neigh", "show", addr]);
    n.as_array()?.first()?["lladdr"]
        .as_str()
        .map(str::to_string)
}

/// Sends one ICMPv6 message `msg` (type first, checksum left 0: the kernel fills it)
/// from inside `ns` out of `dev`, from `src` to `dst`, with hop limit 255 as NDP
/// demands. Link-local and multicast addresses are scoped to `dev`.
fn send_icmpv6(ns: &Ns, dev: &str, src: &str, dst: &str, msg: &[u8]) -> std::io::Result<()> {
    let (src, dst): (Ipv6Addr, Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    let path = ns.path();
    let last = std::io::Error::last_os_error;
    let check = |r: libc::c_int| if r < 0 { Err(last()) } else { Ok(r) };
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let nsf = std::fs::File::open(&path)?;
            // SAFETY: `nsf` is an open nsfs file; only this thread changes namespace.
            check(unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) })?;
            let cdev = std::ffi::CString::new(dev).unwrap();
            // SAFETY: `cdev` is a NUL-terminated string alive for the call.
            let index = unsafe { libc::if_nametoindex(cdev.as_ptr()) };
            let scoped = |a: Ipv6Addr| {
                let local = a.segments()[0] & 0xffc0 == 0xfe80 || a.is_multicast();
                libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: 0,
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.octets(),
                    },
                    sin6_scope_id: if local { index } else { 0 },
                }
            };
            // SAFETY: plain socket(2); the fd is owned right away.
            let fd = check(unsafe {
                libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)
            })?;
            // SAFETY: `fd` is a fresh socket nothing else owns.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            let hops: libc::c_int = 255;
            let (s, d) = (scoped(src), scoped(dst));
            let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            let hl = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let h = &hops as *const libc::c_int as *const libc::c_void;
            for opt in [libc::IPV6_UNICAST_HOPS, libc::IPV6_MULTICAST_HOPS] {
                // SAFETY: `h` points to a live c_int of `hl` bytes.
                check(unsafe {
                    libc::setsockopt(sock.as_raw_fd(), libc::IPPROTO_IPV6, opt, h, hl)
                })?;
            }
            // SAFETY: `s` is a live sockaddr_in6 of `len` bytes.
            check(unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    &s as *const _ as *const libc::sockaddr,
                    len,
                )
            })?;
            // SAFETY: `msg` and `d` are live for the call, of the lengths given.
            let sent = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    msg.as_ptr() as *const libc::c_void,
                    msg.len(),
                    0,
                    &d as *const _ as *const libc::sockaddr,
                    len,
                )
            };
            if sent != msg.len() as isize {
                return Err(last());
            }
            Ok(())
        })
        .join()
        .unwrap()
    })
}

/// Sends one unsolicited Neighbour Advertisement from inside `ns`, as an attacker's
/// tool would: from `src` to `dst`, claiming `target` is at `mac` (Override flag,
/// target link-layer address option).
fn send_neighbour_advert(ns: &Ns, src: &str, dst: &str, target: &str, mac: &str) {
    let target: Ipv6Addr = target.parse().unwrap();
    let mut na = vec![136u8, 0, 0, 0, 0x20, 0, 0, 0]; // type, code, checksum, O flag
    na.extend_from_slice(&target.octets());
    na.extend_from_slice(&[2, 1]); // option: target link-layer address, 8 bytes
    na.extend(mac.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()));
    send_icmpv6(ns, "eth0", src, dst, &na).unwrap_or_else(|e| panic!("NA from {src}: {e}"));
}

#[test]
fn an_endpoint_cannot_take_over_anothers_ipv6_address_or_send_from_a_forged_link_local() {
    let lab = lab!();
    dual_stack_bridge(&lab, "br");
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let a = addr_of(&lab.attach("br", &c1, &[]), true);
    let b = addr_of(&lab.attach("br", &c2, &[]), true);
    let (mac_a, mac_b) = (mac_of(&c1, "eth0"), mac_of(&c2, "eth0"));
    let host = lab.host();
    assert!(host.ping_within(&b, SETTLE), "host -> {b}");
    assert_eq!(neighbour_mac(&host, &b), Some(mac_b.clone()), "before");
    // c1 tells the host (its gateway) that c2's address is at c1's MAC.
    for _ in 0..3 {
        send_neighbour_advert(&c1, &a, "2001:db8:5::1", &b, &mac_a);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        neighbour_mac(&host, &b),
        Some(mac_b.clone()),
        "the host's neighbour entry for c2's {b} was taken over by c1 ({mac_a})"
    );
    assert!(host.ping(&b), "host -> {b} after the forged advertisement");
    // An advertisement of c1's own address still passes (the host learns it).
    assert!(host.ping_within(&a, SETTLE), "host -> {a}");
    assert_eq!(neighbour_mac(&host, &a), Some(mac_a.clone()));
    // Link-local: c1's own (EUI-64 of its MAC) works, any other fe80:: source does not.
    let ll_b = eui64_link_local(&mac_b);
    let to_b = format!("{ll_b}%eth0");
    assert!(
        c1.ping_within(&to_b, SETTLE),
        "c1 -> {to_b} from its own link-local"
    );
    c1.ip(&["-6", "addr", "add", "fe80::dead/64", "dev", "eth0", "nodad"]);
    let forged = c1.exec(&["ping", "-n", "-c1", "-W1", "-I", "fe80::dead%eth0", &to_b]);
    // Exit 1: sent, no answer (2 would be a ping that could not even send).
    assert_eq!(
        forged.status.code(),
        Some(1),
        "a ping from the forged link-local fe80::dead: {forged:?}"
    );
}

#[test]
fn restore_after_nft_flush_ruleset_brings_published_ports_and_masquerade_back() {
    let lab = lab!();
    let (c1, _web) = web_published_on_8080(&lab);
    let _router = serve_tcp(&lab.lan(), 9000);
    let (lan, host) = (lab.lan(), lab.host());
    let works = || {
        tcp_peer(&lan, addr::HOST_V4, 8080) == Some(ip(addr::ROUTER_V4))
            && tcp_peer(&c1, addr::ROUTER_V4, 9000) == Some(ip(addr::HOST_V4))
    };
    assert!(works(), "before the flush");
    host.ok(&["nft", "flush", "ruleset"]);
    assert_eq!(
        tcp_peer(&lan, addr::HOST_V4, 8080),
        None,
        "DNAT after flush"
    );
    assert_eq!(
        tcp_peer(&c1, addr::ROUTER_V4, 9000),
        None,
        "egress without masquerade"
    );
    let report = lab.lanyard_ok(&["restore"]);
    assert!(report.contains("nftables"), "{report}");
    assert!(works(), "after restore");
    assert_eq!(
        tcp_peer(&lan, addr::HOST_V6, 8080),
        Some(ip(addr::ROUTER_V6))
    );
}

/// Docker's iptables-nft rules: a filter FORWARD chain jumping to DOCKER-USER and a
/// nat table with a DOCKER chain and a masquerade, both policy accept. Loaded with
/// iptables-nft where installed, else the same tables with nft.
fn load_docker_rules(host: &Ns) {
    let iptables = host.exec(&["iptables-nft", "--version"]).status.success();
    if iptables {
        for rule in [
            "-t filter -N DOCKER-USER",
            "-t filter -A DOCKER-USER -j RETURN",
            "-t filter -N DOCKER",
            "-t filter -A FORWARD -j DOCKER-USER",
            "-t filter -A FORWARD -o docker0 -j DOCKER",
            "-t nat -N DOCKER",
            "-t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
            "-t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
            "-t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
            "-t nat -A DOCKER -p tcp --dport 9999 -j DNAT --to-destination 172.17.0.2:80",
        ] {
            let mut args = vec!["iptables-nft"];
            args.extend(rule.split(' '));
            host.ok(&args);
        }
    } else {
        // The same shape written with nft, for hosts without iptables-nft.
        let script = r#"
table ip filter {
    chain DOCKER-USER { return; }
    chain DOCKER { }
    chain FORWARD {
        type filter hook forward priority filter; policy accept;
        jump DOCKER-USER
        oifname "docker0" jump DOCKER
    }
}
table ip nat {
    chain DOCKER { tcp dport 9999 dnat to 172.17.0.2:80; }
    chain PREROUTING {
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local jump DOCKER
    }
    chain POSTROUTING {
        type nat hook postrouting priority srcnat; policy accept;
        oifname != "docker0" ip saddr 172.17.0.0/16 masquerade
    }
}
"#;
        host.ok(&["sh", "-c", "printf '%s' \"$1\" | nft -f -", "sh", script]);
    }
}

#[test]
fn docker_style_iptables_nft_rules_are_left_alone_and_lanyard_still_works() {
    let lab = lab!();
    let host = lab.host();
    load_docker_rules(&host);
    let snapshot = || {
        (
            table_text(&host, "ip", "filter"),
            table_text(&host, "ip", "nat"),
        )
    };
    let docker = snapshot();
    assert!(
        docker.0.contains("DOCKER-USER") && docker.1.contains("masquerade"),
        "{docker:?}"
    );
    let _router = serve_tcp(&lab.lan(), 9000);
    dual_stack_bridge(&lab, "br");
    assert_eq!(snapshot(), docker, "after network create");
    let c1 = lab.netns("c1");
    lab.attach("br", &c1, &["--name", "web", "-p", "8080:80"]);
    assert_eq!(snapshot(), docker, "after attach");
    let _web = serve_tcp(&c1, 80);
    assert_eq!(
        tcp_peer(&lab.lan(), addr::HOST_V4, 8080),
        Some(ip(addr::ROUTER_V4)),
        "published port beside Docker's rules"
    );
    assert_eq!(
        tcp_peer(&c1, addr::ROUTER_V4, 9000),
        Some(ip(addr::HOST_V4)),
        "masquerade beside Docker's rules"
    );
    lab.lanyard_ok(&["detach", "web"]);
    assert_eq!(snapshot(), docker, "after detach");
    lab.lanyard_ok(&["network", "rm", "br"]);
    assert_eq!(snapshot(), docker, "after network rm");
    let tables = host.ok(&["nft", "list", "tables"]);
    assert!(!tables.contains("lanyard"), "{tables}");
    assert!(
        tables.contains("table ip filter") && tables.contains("table ip nat"),
        "{tables}"
    );
}

/// Connects from the LAN to 192.0.2.2:8080 until the server answers or `SETTLE`
/// passes; how long that took, or None.
fn published_port_back_within(lab: &Lab, since: Instant) -> Option<Duration> {
    let lan = lab.lan();
    while since.elapsed() < SETTLE {
        if tcp_peer(&lan, addr::HOST_V4, 8080) == Some(ip(addr::ROUTER_V4)) {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn the_daemon_rebuilds_lanyards_tables_after_a_flush_or_a_firewall_reload() {
    let lab = lab!();
    let (_c1, _web) = web_published_on_8080(&lab);
    let mut daemon = lab.daemon(&["--interval", "60"]);
    let host = lab.host();
    let lan = lab.lan();
    assert_eq!(
        tcp_peer(&lan, addr::HOST_V4, 8080),
        Some(ip(addr::ROUTER_V4))
    );
    // 1. nft flush ruleset.
    let flushed = Instant::now();
    host.ok(&["nft", "flush", "ruleset"]);
    let took = published_port_back_within(&lab, flushed);
    assert!(
        took.is_some(),
        "published port not back within {SETTLE:?} after nft flush ruleset\ndaemon stdout:\n{}\nstderr:\n{}",
        daemon.stdout(),
        daemon.stderr()
    );
    assert!(daemon.wait_for_stdout("rebuilt", SETTLE));
    eprintln!(
        "published port back {:.0} ms after `nft flush ruleset` was started (includes starting nft, ~10 ms poll steps and one connection)\n{}",
        took.unwrap_or_default().as_secs_f64() * 1000.0,
        daemon.stdout()
    );
    // 2. A firewall reload: one transaction that flushes everything and loads the
    // firewall's own table, which must stay.
    let reload = lab.dir().join("reload.nft");
    std::fs::write(
        &reload,
        "flush ruleset\ntable inet firewall {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t}\n}\n",
    )
    .unwrap();
    let reloaded = Instant::now();
    host.ok(&["nft", "-f", reload.to_str().unwrap()]);
    let took = published_port_back_within(&lab, reloaded);
    assert!(
        took.is_some(),
        "published port not back within {SETTLE:?} after a reload\ndaemon stdout:\n{}\nstderr:\n{}",
        daemon.stdout(),
        daemon.stderr()
    );
    eprintln!(
        "published port back {:.0} ms after a firewall reload was started",
        took.unwrap_or_default().as_secs_f64() * 1000.0
    );
    let tables = host.ok(&["nft", "list", "tables"]);
    assert!(tables.contains("table inet firewall"), "{tables}");
    // 3. Only one of lanyard's chains emptied by hand: the check sees it.
    host.ok(&["nft", "flush", "chain", "inet", "lanyard", "prerouting"]);
    let took = published_port_back_within(&lab, Instant::now());
    assert!(took.is_some(), "{}", daemon.stdout());
    // SIGTERM stops it cleanly.
    // SAFETY: plain kill of our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    let out = daemon.finish(SETTLE);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"));
}

#[test]
fn the_daemon_keeps_running_when_the_store_is_unreadable_and_recovers() {
    let lab = lab!();
    let (_c1, _web) = web_published_on_8080(&lab);
    let mut daemon = lab.daemon(&["--interval", "60"]);
    // The state dir vanishes for a while (a store that cannot be opened).
    let state = lab.state_dir();
    let aside = lab.dir().join("state.aside");
    std::fs::rename(&state, &aside).unwrap();
    std::fs::write(&state, "not a directory").unwrap();
    lab.host().ok(&["nft", "flush", "ruleset"]);
    let end = Instant::now() + SETTLE;
    while !daemon.stderr().contains("retrying") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        daemon.stderr().contains("retrying"),
        "no retry logged: {}",
        daemon.stderr()
    );
    assert!(daemon.is_running(), "the daemon exited on a store error");
    std::fs::remove_file(&state).unwrap();
    std::fs::rename(&aside, &state).unwrap();
    let took = published_port_back_within(&lab, Instant::now());
    assert!(
        took.is_some(),
        "not rebuilt once the store was back: {}\n{}",
        daemon.stdout(),
        daemon.stderr()
    );
}

/// Has the lab host a default route learned from a router advertisement?
fn has_ra_default_route(host: &Ns) -> bool {
    host.ok(&["ip", "-6", "route", "show", "default", "proto", "ra"])
        .contains("default")
}

/// The LAN router advertises itself (router lifetime 1800 s, no options) to all nodes,
/// from its link-local address; `false` if the host learned no default route from it.
fn router_advertises(lab: &Lab) -> bool {
    let lan = lab.lan();
    let ll = eui64_link_local(&mac_of(&lan, "lan0"));
    let ra = [134u8, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    let end = Instant::now() + SETTLE;
    // The router's link-local may still be tentative (DAD): binding to it fails.
    while let Err(e) = send_icmpv6(&lan, "lan0", &ll, "ff02::1", &ra) {
        assert!(Instant::now() < end, "RA from {ll}: {e}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        if has_ra_default_route(&lab.host()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn an_ipv6_bridge_network_keeps_the_uplinks_router_advertisements_working() {
    let lab = lab!();
    let host = lab.host();
    let accept_ra = |dev: &str| {
        host.ok(&["cat", &format!("/proc/sys/net/ipv6/conf/{dev}/accept_ra")])
            .trim()
            .to_string()
    };
    assert_eq!(accept_ra("eth0"), "1");
    assert!(router_advertises(&lab), "no RA route before any network");
    host.ok(&["ip", "-6", "route", "flush", "proto", "ra"]);
    // The bridge network turns IPv6 forwarding on; the uplink must keep taking RAs.
    dual_stack_bridge(&lab, "br");
    assert_eq!(
        host.ok(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])
            .trim(),
        "1"
    );
    assert!(
        router_advertises(&lab),
        "the host ignored the router's advertisement once lanyard turned forwarding on"
    );
    assert_eq!(accept_ra("eth0"), "2");
    // lanyard's own bridge never takes RAs from endpoints.
    let links = host.links();
    let br = links
        .iter()
        .find(|l| l.starts_with("lyb-"))
        .expect("a bridge");
    assert_eq!(accept_ra(br), "1", "bridge {br}");
}

#[test]
fn a_routed_network_is_reached_and_left_by_real_addresses_while_a_nat_one_stays_closed() {
    let lab = lab!();
    lab.lanyard_ok(&[
        "network",
        "create",
        "direct",
        "-o",
        "gateway_mode=routed",
        "--subnet",
        "203.0.113.0/24",
        "--ipv6",
        "--subnet",
        "2001:db8:5::/64",
    ]);
    // Docker's spelling, IPv4 only; and an internal routed network.
    lab.lanyard_ok(&["network", "create", "nat", "--subnet", "10.78.0.0/24"]);
    lab.lanyard_ok(&[
        "network",
        "create",
        "closed",
        "--internal",
        "-o",
        "com.docker.network.bridge.gateway_mode_ipv4=routed",
        "--subnet",
        "10.77.0.0/24",
    ]);
    let (c1, c2, c3) = (lab.netns("c1"), lab.netns("c2"), lab.netns("c3"));
    let e1 = lab.attach("direct", &c1, &["-p", "8080:80"]);
    let e2 = lab.attach("nat", &c2, &[]);
    let e3 = lab.attach("closed", &c3, &[]);
    let _servers: Vec<Bg> = [(&c1, 81), (&c1, 80), (&c2, 81), (&c3, 81)]
        .into_iter()
        .flat_map(|(ns, p)| serve_tcp(ns, p))
        .collect();
    let (lan, host) = (lab.lan(), lab.host());
    for net in ["203.0.113.0/24", "10.78.0.0/24", "10.77.0.0/24"] {
        lan.ip(&["route", "add", net, "via", addr::HOST_V4]);
    }
    lan.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:5::/64",
        "via",
        addr::HOST_V6,
    ]);
    let router = ip(addr::ROUTER_V4);
    let (a1, a1v6) = (addr_of(&e1, false), addr_of(&e1, true));
    assert_eq!(
        tcp_peer(&lan, &a1, 81),
        Some(router),
        "LAN -> routed, unpublished"
    );
    // The bridge's own IPv6 addresses may still be in DAD: wait until it forwards.
    assert!(
        lan.ping_within(&a1v6, Duration::from_secs(5)),
        "LAN -> {a1v6}"
    );
    let seen = tcp_peer(&lan, &a1v6, 81);
    assert!(
        seen.is_some_and(|p| p.is_ipv6() && p != ip(addr::HOST_V6)),
        "LAN -> routed over IPv6: the server saw {seen:?}"
    );
    assert_eq!(
        tcp_peer(&lan, addr::HOST_V4, 8080),
        Some(router),
        "published ports still work"
    );
    assert_eq!(
        tcp_peer(&lan, &addr_of(&e2, false), 81),
        None,
        "NAT network: closed"
    );
    assert_eq!(
        tcp_peer(&lan, &addr_of(&e3, false), 81),
        None,
        "internal: isolated"
    );
    assert_eq!(
        tcp_peer(&c2, &a1, 81),
        None,
        "another lanyard bridge: isolated"
    );
    // Leaving: the LAN sees the endpoint's own address, not the host's.
    let _lan_server = serve_tcp(&lan, 9000);
    assert_eq!(
        tcp_peer(&c1, addr::ROUTER_V4, 9000),
        Some(ip(&a1)),
        "no NAT out"
    );
    assert_eq!(
        tcp_peer(&c2, addr::ROUTER_V4, 9000),
        Some(ip(addr::HOST_V4)),
        "the NAT network is masqueraded"
    );
    assert!(host.ping(&a1));
}
