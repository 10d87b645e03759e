//! Kernel tests of lanyard's nftables layer: [`Nft`] (libnftables in-process) applying
//! the scripts of [`lanyard_core::firewall`], and real traffic through a lab of
//! namespaces checking that each rule catches the packets it is meant to.
//!
//! Every test runs in network namespaces it creates itself: a thread that
//! `unshare(CLONE_NEWNET)`s (gone with the thread), or `lyt-fw-*` namespaces deleted by
//! a Drop guard, also on panic. Nothing here touches the caller's namespace. Needs root.

use lanyard_core::firewall::{
    element_ops, mapping_elements, ruleset, teardown, BridgePort, Change, FirewallInput,
};
use lanyard_core::model::{MacAddr, PortMapping};
use lanyard_core::name::IfName;
use lanyard_core::testing::{bridge_net, bridge_port};
use lanyard_core::Error;
use lanyard_kernel::nft::Nft;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- namespaces

/// Inode of the calling thread's network namespace.
fn my_netns() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat own netns")
        .ino()
}

/// Runs `f` in a thread inside a fresh, anonymous network namespace (freed when the
/// thread ends). Panics before running `f` if the namespace could not be entered.
fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let before = my_netns();
            // SAFETY: unshare takes no pointers; it moves only this thread.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "unshare(CLONE_NEWNET) needs root"
            );
            assert_ne!(
                my_netns(),
                before,
                "still in the caller's namespace; refusing to touch it"
            );
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Moves the calling thread into the named namespace, checking it got there.
fn enter(name: &str) {
    let path = format!("/run/netns/{name}");
    let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: `f` is an open nsfs file for the duration of the call.
    assert_eq!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns {name}"
    );
    assert_eq!(
        my_netns(),
        f.metadata().unwrap().ino(),
        "setns {name} did not take"
    );
}

/// Runs `f` in a thread inside the named namespace.
fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(name);
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A named namespace `lyt-fw-<random>-<tag>`, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(run: &str, tag: &str) -> Self {
        let name = format!("lyt-fw-{run}-{tag}");
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip")
            .success();
        assert!(ok, "ip netns add {name}");
        let ns = Netns { name };
        ns.ip("link set lo up");
        // No duplicate address detection: addresses work the moment they are added.
        for conf in ["all", "default"] {
            ns.sysctl(&format!("net.ipv6.conf.{conf}.accept_dad"), "0");
        }
        ns
    }

    /// `ip -n NAME ARGS`; always scoped to this namespace.
    fn ip(&self, args: &str) {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args.split_whitespace())
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip -n {} {args}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        in_netns(&self.name, || {
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}"))
        });
    }

    fn nft(&self, script: &str) -> Result<String, Error> {
        in_netns(&self.name, || Nft::new()?.run(script))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_id() -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{:06x}", h.finish() & 0xff_ffff)
}

// ---------------------------------------------------------------- sample input

fn ifname(s: &str) -> IfName {
    IfName::new(s).unwrap()
}
fn mac(s: &str) -> MacAddr {
    MacAddr::parse_for("mac", s).unwrap()
}
fn publish(spec: &str) -> PortMapping {
    PortMapping::parse_spec(spec).unwrap().remove(0)
}
fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}
/// What the lab wires: net `a` (dual stack, two endpoints, published ports), net `b`
/// (SNAT to a fixed address, one endpoint with a published port), net `i` (internal).
fn lab_input() -> FirewallInput {
    FirewallInput {
        networks: vec![
            bridge_net(
                "a",
                "lyb-a",
                &["10.88.1.0/24", "2001:db8:a::/64"],
                false,
                None,
            ),
            bridge_net(
                "b",
                "lyb-b",
                &["10.88.2.0/24"],
                false,
                Some("198.51.100.10"),
            ),
            bridge_net("i", "lyb-i", &["10.88.3.0/24"], true, None),
        ],
        endpoints: vec![
            bridge_port(
                "lyv-a1",
                "02:00:0a:58:01:02",
                &["10.88.1.2", "2001:db8:a::2"],
                &["8080:80"],
            ),
            bridge_port(
                "lyv-a2",
                "02:00:0a:58:01:03",
                &["10.88.1.3"],
                &["198.51.100.1:9090:80"],
            ),
            bridge_port("lyv-b1", "02:00:0a:58:02:02", &["10.88.2.2"], &["8081:80"]),
            bridge_port("lyv-i1", "02:00:0a:58:03:02", &["10.88.3.2"], &[]),
        ],
    }
}

// ---------------------------------------------------------------- API tests

#[test]
fn ruleset_applies_on_a_bare_host_and_again_over_itself() {
    in_fresh_netns(|| {
        let mut nft = Nft::new().unwrap();
        assert_eq!(nft.list_table().unwrap(), None);
        let script = ruleset(&lab_input());
        nft.run(&script).unwrap();
        let first = nft.list_table().unwrap().expect("tables exist");
        nft.run(&script).unwrap();
        let second = nft.list_table().unwrap().unwrap();
        assert_eq!(first, second, "re-applying must replace, not append");
        assert!(
            first.contains("table inet lanyard {") && first.contains("table bridge lanyard {"),
            "{first}"
        );
        assert!(first.contains("tcp . 8080 : 10.88.1.2 . 80"), "{first}");
        assert!(
            first.contains("\"lyv-a1\" . 02:00:0a:58:01:02 . 10.88.1.2"),
            "{first}"
        );
        nft.run(&teardown()).unwrap();
        assert_eq!(nft.list_table().unwrap(), None);
        nft.run(&teardown()).unwrap();
    });
}

/// What `iptables-nft` leaves behind on a typical host.
const IPTABLES_NFT: &str = r#"table ip filter {
	chain INPUT { type filter hook input priority filter; policy accept;
		iifname "eth9" tcp dport 22 counter accept comment "ssh"; }
	chain FORWARD { type filter hook forward priority filter; policy drop; }
	chain OUTPUT { type filter hook output priority filter; policy accept; }
}
table ip nat {
	chain POSTROUTING { type nat hook postrouting priority srcnat; policy accept;
		oifname "eth9" ip saddr 192.0.2.0/24 counter masquerade; }
}
"#;

#[test]
fn foreign_iptables_nft_tables_are_left_untouched() {
    in_fresh_netns(|| {
        let mut nft = Nft::new().unwrap();
        nft.run(IPTABLES_NFT).unwrap();
        // One table per `list`: nft 1.0.6 fails several in one script.
        let list = |nft: &mut Nft| {
            ["filter", "nat"].map(|t| nft.run(&format!("list table ip {t}")).unwrap())
        };
        let before = list(&mut nft);
        nft.run(&ruleset(&lab_input())).unwrap();
        nft.run(&ruleset(&FirewallInput::default())).unwrap();
        let with_lanyard = nft.run("list ruleset").unwrap();
        assert!(
            with_lanyard.contains("table inet lanyard"),
            "{with_lanyard}"
        );
        nft.run(&teardown()).unwrap();
        assert_eq!(list(&mut nft), before);
        let tables = nft.run("list tables").unwrap();
        assert_eq!(tables, "table ip filter\ntable ip nat\n");
    });
}

#[test]
fn a_port_mapping_is_published_and_withdrawn_as_one_element() {
    in_fresh_netns(|| {
        let mut nft = Nft::new().unwrap();
        nft.run(&ruleset(&lab_input())).unwrap();
        let addrs = ips(&["10.88.1.3"]);
        let m = publish("198.51.100.1:7000:70/udp");
        let add = element_ops(Change::Add, &mapping_elements(&addrs, &m).unwrap());
        assert_eq!(add.lines().count(), 1, "{add}");
        let elem = "198.51.100.1 . udp . 7000 : 10.88.1.3 . 70";

        nft.run(&add).unwrap();
        assert!(nft.list_table().unwrap().unwrap().contains(elem));
        nft.run(&add).unwrap(); // publishing again is fine

        // Another endpoint cannot take the same host port, and cannot remove it either.
        let other = mapping_elements(&ips(&["10.88.1.9"]), &m).unwrap();
        for change in [Change::Add, Change::Remove] {
            let err = nft.run(&element_ops(change, &other)).unwrap_err();
            assert!(
                matches!(err, Error::Kernel { .. }) && err.to_string().contains("File exists"),
                "{err}"
            );
        }
        assert!(nft.list_table().unwrap().unwrap().contains(elem));

        let remove = element_ops(Change::Remove, &mapping_elements(&addrs, &m).unwrap());
        nft.run(&remove).unwrap();
        assert!(!nft.list_table().unwrap().unwrap().contains(elem));
        nft.run(&remove).unwrap(); // withdrawing again is fine
    });
}

#[test]
fn endpoint_guard_elements_come_and_go_with_the_endpoint() {
    in_fresh_netns(|| {
        let mut nft = Nft::new().unwrap();
        let mut input = lab_input();
        let late = input.endpoints.pop().unwrap();
        nft.run(&ruleset(&input)).unwrap();
        assert!(!nft.list_table().unwrap().unwrap().contains("lyv-i1"));
        nft.run(&element_ops(Change::Add, &late.elements()))
            .unwrap();
        let listed = nft.list_table().unwrap().unwrap();
        assert!(
            listed.contains("\"lyv-i1\" . 02:00:0a:58:03:02 . 10.88.3.2"),
            "{listed}"
        );
        nft.run(&element_ops(Change::Remove, &late.elements()))
            .unwrap();
        assert!(!nft.list_table().unwrap().unwrap().contains("lyv-i1"));
    });
}

#[test]
fn a_failing_script_changes_nothing() {
    in_fresh_netns(|| {
        let mut nft = Nft::new().unwrap();
        nft.run(&ruleset(&lab_input())).unwrap();
        let before = nft.list_table().unwrap();
        let bad = format!(
            "{}add element inet lanyard no_such_set {{ 1 }}\n",
            ruleset(&FirewallInput::default())
        );
        let err = nft.run(&bad).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("kernel: nft table inet lanyard …: line "),
            "{text}"
        );
        // nft points at the offending command, quoting it.
        let quoted = "Error: No such file or directory\nadd element inet lanyard no_such_set";
        assert!(text.contains(quoted), "{text}");
        assert_eq!(
            nft.list_table().unwrap(),
            before,
            "the old tables must survive a failed replace"
        );

        // A clash deep inside a big ruleset: rejected as a whole, with a short message.
        let mut clash = lab_input();
        let many = (0..2000)
            .map(|i| publish(&format!("{}:80", 20_000 + i)))
            .collect();
        clash.endpoints[1] = BridgePort::new(
            ifname("lyv-a2"),
            mac("02:00:0a:58:01:03"),
            ips(&["10.88.1.3"]),
            many,
        )
        .unwrap();
        clash.endpoints[2] =
            bridge_port("lyv-b1", "02:00:0a:58:02:02", &["10.88.2.2"], &["21000:80"]);
        assert!(clash.validate().is_err());
        let err = nft.run(&ruleset(&clash)).unwrap_err().to_string();
        assert!(
            err.contains("File exists") && err.len() < 600,
            "{} bytes: {err}",
            err.len()
        );
        assert_eq!(nft.list_table().unwrap(), before);

        let err = nft.run("this is not nft").unwrap_err();
        assert!(err.to_string().contains("syntax error"), "{err}");
    });
}

#[test]
fn an_nft_context_works_in_the_namespace_it_was_made_in_from_any_thread() {
    in_fresh_netns(|| {
        let mut nft = Nft::new().unwrap();
        nft.run(&teardown()).unwrap();
        nft.run(&ruleset(&FirewallInput::default())).unwrap();
        // Used from a thread still in another namespace, it keeps acting in this one.
        let mut nft = std::thread::spawn(move || {
            nft.run("add element inet lanyard bridges { \"lyb-x\" }")
                .unwrap();
            nft
        })
        .join()
        .unwrap();
        assert!(nft.list_table().unwrap().unwrap().contains("lyb-x"));
    });
}

// ---------------------------------------------------------------- traffic lab

/// A TCP server in a namespace: answers every connection with the peer address it
/// saw, then closes. Stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, flag) = (ns.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            enter(&ns);
            // [::] takes IPv4 too (bindv6only is 0 in a fresh namespace).
            let l = TcpListener::bind(("::", port)).expect("bind");
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.write_all(peer.ip().to_canonical().to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx.recv().expect("server started");
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `192.0.2.1:80`, `[2001:db8::1]:80`, or `[fe80::1%eth0]:80` with the interface
/// looked up in the calling thread's namespace.
fn probe_addr(s: &str) -> SocketAddr {
    let Some((ip, rest)) = s.strip_prefix('[').and_then(|r| r.split_once('%')) else {
        return s.parse().expect("probe address");
    };
    let (dev, port) = rest.split_once("]:").expect("[fe80::1%dev]:port");
    let cdev = std::ffi::CString::new(dev).unwrap();
    // SAFETY: `cdev` is a NUL-terminated string that outlives the call.
    let scope = unsafe { libc::if_nametoindex(cdev.as_ptr()) };
    assert_ne!(scope, 0, "no interface {dev}");
    let addr = std::net::SocketAddrV6::new(ip.parse().unwrap(), port.parse().unwrap(), 0, scope);
    SocketAddr::V6(addr)
}

/// Host `h` with a LAN `l` (198.51.100.0/24, 2001:db8:100::/64) and the three networks
/// of [`lab_input`]; endpoints a1, a2, b1, i1 each in their own namespace.
struct Lab {
    _servers: Vec<Server>,
    h: Netns,
    ns: Vec<Netns>,
}

impl Lab {
    fn new() -> Self {
        let run = run_id();
        let h = Netns::new(&run, "h");
        let ns: Vec<Netns> = ["l", "a1", "a2", "b1", "i1"]
            .iter()
            .map(|t| Netns::new(&run, t))
            .collect();
        let name = |t: &str| format!("lyt-fw-{run}-{t}");
        let lan = &ns[0];

        h.ip(&format!(
            "link add eth0 type veth peer name eth0 netns {}",
            name("l")
        ));
        for a in ["198.51.100.1/24", "198.51.100.10/24"] {
            h.ip(&format!("addr add {a} dev eth0"));
        }
        h.ip("addr add 2001:db8:100::1/64 dev eth0 nodad");
        h.ip("link set eth0 up");
        lan.ip("addr add 198.51.100.2/24 dev eth0");
        lan.ip("addr add 2001:db8:100::2/64 dev eth0 nodad");
        lan.ip("link set eth0 up");
        // The LAN could answer the bridge subnets directly: only NAT and drops decide.
        lan.ip("route add 10.88.0.0/16 via 198.51.100.1");

        h.sysctl("net.ipv4.ip_forward", "1");
        h.sysctl("net.ipv6.conf.all.forwarding", "1");
        for (br, v4, v6) in [
            ("lyb-a", "10.88.1.1/24", Some("2001:db8:a::1/64")),
            ("lyb-b", "10.88.2.1/24", None),
            ("lyb-i", "10.88.3.1/24", None),
        ] {
            h.ip(&format!("link add {br} type bridge"));
            h.ip(&format!("addr add {v4} dev {br}"));
            if let Some(v6) = v6 {
                h.ip(&format!("addr add {v6} dev {br} nodad"));
            }
            h.ip(&format!("link set {br} up"));
        }
        // The host's own connections to 127.0.0.1:PORT may leave through lyb-a.
        h.sysctl("net.ipv4.conf.lyb-a.route_localnet", "1");

        let input = lab_input();
        for (i, (tag, br, gw)) in [
            ("a1", "lyb-a", "10.88.1.1"),
            ("a2", "lyb-a", "10.88.1.1"),
            ("b1", "lyb-b", "10.88.2.1"),
            ("i1", "lyb-i", "10.88.3.1"),
        ]
        .into_iter()
        .enumerate()
        {
            let ep = &input.endpoints[i];
            let c = &ns[i + 1];
            let host = ep.host_ifname();
            h.ip(&format!(
                "link add {host} type veth peer name eth0 netns {}",
                name(tag)
            ));
            h.ip(&format!("link set {host} master {br} up"));
            let m = ep.mac();
            c.ip(&format!("link set eth0 address {m}"));
            for a in ep.addresses() {
                let len = if a.is_ipv4() { 24 } else { 64 };
                c.ip(&format!("addr add {a}/{len} dev eth0 nodad"));
            }
            c.ip("link set eth0 up");
            c.ip(&format!("route add default via {gw}"));
            if tag == "a1" {
                c.ip("-6 route add default via 2001:db8:a::1");
            }
        }
        h.nft(&ruleset(&input)).expect("apply lab ruleset");

        let servers = ["l", "a1", "a2", "b1", "i1"]
            .iter()
            .map(|t| Server::start(&name(t), 80))
            .collect();
        Lab {
            _servers: servers,
            h,
            ns,
        }
    }

    fn ns(&self, tag: &str) -> &str {
        if tag == "h" {
            return &self.h.name;
        }
        let suffix = format!("-{tag}");
        &self
            .ns
            .iter()
            .find(|n| n.name.ends_with(&suffix))
            .expect("known namespace")
            .name
    }

    fn netns(&self, tag: &str) -> &Netns {
        let name = self.ns(tag);
        self.ns
            .iter()
            .find(|n| n.name == name)
            .expect("endpoint namespace")
    }

    /// Connects from each `(namespace, address)` at once; returns the peer address
    /// each server reported, or `None` when nothing answered in time.
    fn connect_all(&self, probes: &[(&str, &str)]) -> Vec<Option<String>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = probes
                .iter()
                .map(|(from, to)| {
                    let ns = self.ns(from).to_string();
                    s.spawn(move || {
                        enter(&ns);
                        let to = probe_addr(to);
                        let mut c =
                            TcpStream::connect_timeout(&to, Duration::from_millis(1500)).ok()?;
                        c.set_read_timeout(Some(Duration::from_millis(1500)))
                            .unwrap();
                        let mut seen = String::new();
                        c.read_to_string(&mut seen).ok()?;
                        Some(seen)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Asserts every probe: `Some(peer)` means the server answered and saw `peer` as
    /// the client; `None` means the connection must not get through.
    fn expect(&self, probes: &[(&str, &str, Option<&str>)]) {
        let pairs: Vec<(&str, &str)> = probes.iter().map(|(f, t, _)| (*f, *t)).collect();
        let got = self.connect_all(&pairs);
        let wrong: Vec<String> = probes
            .iter()
            .zip(&got)
            .filter(|((_, _, want), got)| want.map(str::to_string) != **got)
            .map(|((from, to, want), got)| format!("{from} -> {to}: want {want:?}, got {got:?}"))
            .collect();
        if !wrong.is_empty() {
            let listed = self.h.nft("list ruleset").unwrap_or_default();
            panic!("{}\n--- host ruleset:\n{listed}", wrong.join("\n"));
        }
    }
}

#[test]
fn lan_and_host_reach_published_ports_without_source_nat() {
    let lab = Lab::new();
    lab.expect(&[
        // LAN client to a mapping on all host addresses: DNAT only, source kept.
        ("l", "198.51.100.1:8080", Some("198.51.100.2")),
        ("l", "198.51.100.10:8080", Some("198.51.100.2")),
        ("l", "[2001:db8:100::1]:8080", Some("2001:db8:100::2")),
        // A mapping on one host address answers there only.
        ("l", "198.51.100.1:9090", Some("198.51.100.2")),
        ("l", "198.51.100.10:9090", None),
        // The host itself (output hook), on its LAN address and on loopback.
        ("h", "198.51.100.1:8080", Some("198.51.100.1")),
        ("h", "127.0.0.1:8080", Some("10.88.1.1")),
        // Unpublished ports stay closed.
        ("l", "198.51.100.1:8082", None),
    ]);
}

#[test]
fn endpoints_reach_published_ports_through_the_host_address() {
    let lab = Lab::new();
    lab.expect(&[
        // Hairpin: same bridge, so the source is masqueraded to the gateway.
        ("a2", "198.51.100.1:8080", Some("10.88.1.1")),
        ("a1", "198.51.100.1:9090", Some("10.88.1.1")),
        // Another network's endpoint: a published port is public; routed back, no NAT.
        ("b1", "198.51.100.1:8080", Some("10.88.2.2")),
        ("a1", "198.51.100.1:8081", Some("10.88.1.2")),
        // But not from an internal network.
        ("i1", "198.51.100.1:8080", None),
    ]);
}

#[test]
fn networks_are_isolated_and_internal_ones_reach_nothing_outside() {
    let lab = Lab::new();
    lab.expect(&[
        ("a1", "10.88.1.3:80", Some("10.88.1.2")), // same bridge: fine
        ("a1", "10.88.2.2:80", None),              // a -> b
        ("b1", "10.88.1.2:80", None),              // b -> a
        ("i1", "198.51.100.2:80", None),           // internal -> LAN
        ("i1", "10.88.1.2:80", None),              // internal -> other network
        ("a1", "10.88.3.2:80", None),              // other network -> internal
    ]);
}

#[test]
fn a_lan_host_routing_to_a_bridge_subnet_reaches_only_published_ports() {
    let lab = Lab::new();
    // The LAN routes 10.88.0.0/16 (and here 2001:db8:a::/64) via the host, as a router
    // with a static route would: only published ports may answer, as with Docker 28.
    lab.netns("l")
        .ip("-6 route add 2001:db8:a::/64 via 2001:db8:100::1");
    lab.expect(&[
        ("l", "10.88.1.2:80", None),
        ("l", "10.88.1.3:80", None),
        ("l", "10.88.2.2:80", None),
        ("l", "[2001:db8:a::2]:80", None),
        // Published ports still answer, the client address kept.
        ("l", "198.51.100.1:8080", Some("198.51.100.2")),
        ("l", "[2001:db8:100::1]:8080", Some("2001:db8:100::2")),
        // The host itself still reaches its endpoints directly.
        ("h", "10.88.1.2:80", Some("10.88.1.1")),
        ("h", "[2001:db8:a::2]:80", Some("2001:db8:a::1")),
    ]);
}

#[test]
fn egress_is_masqueraded_or_sent_from_the_snat_source() {
    let lab = Lab::new();
    lab.expect(&[
        ("a1", "198.51.100.2:80", Some("198.51.100.1")),
        ("a1", "[2001:db8:100::2]:80", Some("2001:db8:100::1")),
        ("b1", "198.51.100.2:80", Some("198.51.100.10")),
    ]);
}

/// a1's link-local address, from its MAC (EUI-64).
const A1_LINK_LOCAL: &str = "[fe80::aff:fe58:102%eth0]:80";

#[test]
fn an_endpoint_sending_from_a_foreign_address_is_dropped_at_its_port() {
    let lab = Lab::new();
    lab.expect(&[
        ("a1", "10.88.1.3:80", Some("10.88.1.2")),
        ("a2", A1_LINK_LOCAL, Some("fe80::aff:fe58:103")), // link-local is fine
    ]);
    // a1 claims 10.88.1.99 towards a2: not its address, so neither its IPv4 packets
    // nor its ARP answers for it pass.
    let a1 = lab.netns("a1");
    a1.ip("addr add 10.88.1.99/32 dev eth0");
    a1.ip("route add 10.88.1.3/32 dev eth0 src 10.88.1.99");
    lab.expect(&[
        ("a1", "10.88.1.3:80", None),
        ("a1", "198.51.100.2:80", Some("198.51.100.1")), // its own address still works
    ]);
    assert!(
        drops(&lab, "counter packets") > 0,
        "the final drop counted nothing"
    );
}

#[test]
fn an_endpoint_sending_from_a_foreign_mac_is_dropped_at_its_port() {
    let lab = Lab::new();
    lab.expect(&[("a2", "10.88.1.2:80", Some("10.88.1.3"))]);
    // a2 takes another MAC: nothing it sends passes its port, link-local included.
    lab.netns("a2")
        .ip("link set eth0 address 02:00:0a:58:01:ff");
    lab.expect(&[
        ("a2", "10.88.1.2:80", None),
        ("a2", "198.51.100.2:80", None),
        ("a2", A1_LINK_LOCAL, None),
        ("a1", "10.88.1.3:80", None), // a2's answers are dropped too
    ]);
    assert!(
        drops(&lab, "iifname . ether saddr != @macs") > 0,
        "the MAC check counted nothing"
    );
}

/// Packets counted by the drop rule of the host's bridge chain that starts with `rule`.
fn drops(lab: &Lab, rule: &str) -> u64 {
    let listed = lab.h.nft("list chain bridge lanyard prerouting").unwrap();
    let line = listed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(rule) && l.ends_with(" drop"))
        .unwrap_or_else(|| panic!("no drop rule starting {rule:?}:\n{listed}"));
    let n = line
        .split("counter packets ")
        .nth(1)
        .and_then(|r| r.split(' ').next());
    n.and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {line:?}"))
}

// ---------------------------------------------------------------- measurement

/// Not a check: prints how long adding one DNAT element takes as the map grows.
/// `cargo test -p lanyard-kernel --test nft -- --ignored --nocapture dnat_element_cost`
#[test]
#[ignore]
fn dnat_element_cost_as_the_map_grows() {
    in_fresh_netns(|| {
        let mut nft = Nft::new().unwrap();
        nft.run(&ruleset(&FirewallInput::default())).unwrap();
        let target = ips(&["10.88.1.2"]);
        let mut times = Vec::with_capacity(10_000);
        for i in 0..10_000u32 {
            let m = PortMapping {
                host_ip: Some(IpAddr::from([198, 51, 100, (1 + i / 5000) as u8])),
                host_port: 1024 + (i % 5000) as u16,
                container_port: 80,
                proto: lanyard_core::model::Proto::Tcp,
            };
            let script = element_ops(Change::Add, &mapping_elements(&target, &m).unwrap());
            let t = Instant::now();
            nft.run(&script).unwrap();
            times.push(t.elapsed());
        }
        let avg =
            |r: std::ops::Range<usize>| times[r.clone()].iter().sum::<Duration>() / r.len() as u32;
        println!("add 10th element:      {:?}", times[9]);
        println!("add 10,000th element:  {:?}", times[9_999]);
        println!("mean of elements 1-100:       {:?}", avg(0..100));
        println!("mean of elements 9,901-10,000: {:?}", avg(9_900..10_000));
        let t = Instant::now();
        let m = PortMapping {
            host_ip: Some(IpAddr::from([198, 51, 100, 1])),
            host_port: 1024,
            container_port: 80,
            proto: lanyard_core::model::Proto::Tcp,
        };
        nft.run(&element_ops(
            Change::Remove,
            &mapping_elements(&target, &m).unwrap(),
        ))
        .unwrap();
        println!("remove one of 10,000:  {:?}", t.elapsed());
        let listed = nft.run("list map inet lanyard dnat4").unwrap();
        let t = Instant::now();
        nft.run(&ruleset(&FirewallInput::default())).unwrap();
        println!(
            "replace the 10,000-element table by an empty one: {:?} ({} bytes listed)",
            t.elapsed(),
            listed.len()
        );
        let many: Vec<PortMapping> = (0..10_000u16)
            .map(|i| PortMapping {
                host_ip: None,
                host_port: 20_000 + i,
                container_port: 80,
                proto: lanyard_core::model::Proto::Tcp,
            })
            .collect();
        let mut input = lab_input();
        input.endpoints[0] = BridgePort::new(
            ifname("lyv-a1"),
            mac("02:00:0a:58:01:02"),
            ips(&["10.88.1.2"]),
            many,
        )
        .unwrap();
        let script = ruleset(&input);
        let t = Instant::now();
        nft.run(&script).unwrap();
        println!(
            "full ruleset with 10,000 mappings ({} bytes): {:?}",
            script.len(),
            t.elapsed()
        );
    });
}
