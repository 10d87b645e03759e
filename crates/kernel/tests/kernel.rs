//! The netlink kernel against the real kernel, each test in namespaces of its own
//! (see `lab`). Run as root; otherwise each test says why it skipped.

mod lab;

use ipnet::IpNet;
use lab::{in_fresh_netns, ip_json, name, tombstones_left, veth, SideNetns};
use lanyard_core::kernel::{tombstone_name, Kernel};
use lanyard_core::model::{IpvlanMode, MacAddr, MacvlanMode};
use lanyard_core::op::{Netns, Op, RouteSpec};
use lanyard_core::Error;
use lanyard_kernel::Netlink;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MAC: MacAddr = MacAddr([0x02, 0x42, 0xc0, 0x00, 0x02, 0x0a]);

fn net(s: &str) -> IpNet {
    s.parse().expect("test prefix")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// A veth pair `a`/`b` in the host namespace, `a` up: a parent for macvlans.
fn parent_pair(k: &mut Netlink, a: &str, b: &str) {
    k.apply(&veth(a, b, Netns::Host)).expect("parent veth pair");
}

fn macvlan(netns: Netns, n: &str, parent: &str, mac: Option<MacAddr>) -> Op {
    Op::CreateMacvlan {
        netns,
        name: name(n),
        parent: name(parent),
        mode: MacvlanMode::Bridge,
        mac,
        mtu: Some(1400),
    }
}

/// `ip addr add A dev LINK nodad` in `netns`.
fn address(netns: Netns, link: &str, a: &str) -> Op {
    Op::AddAddress {
        netns,
        link: name(link),
        addr: net(a),
        nodad: true,
    }
}

fn route(dst: &str, via: Option<&str>, dev: Option<&str>) -> RouteSpec {
    RouteSpec {
        dst: net(dst),
        via: via.map(ip),
        dev: dev.map(name),
        src: None,
        metric: None,
    }
}

/// Polls `cond` for up to 5 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn veth_peer_is_born_in_the_container_up_and_host_side_enslaved() {
    in_fresh_netns("veth", || {
        let side = SideNetns::new();
        let mut k = Netlink::new().unwrap();
        k.apply(&Op::CreateBridge {
            name: name("lyb0"),
            mtu: Some(1400),
        })
        .unwrap();
        k.apply(&Op::CreateVeth {
            host: name("lyv0"),
            peer: name("eth0"),
            peer_netns: side.netns(),
            mtu: Some(1400),
            master: Some(name("lyb0")),
            peer_mac: Some(MAC),
            host_mac: None,
        })
        .unwrap();
        k.apply(&Op::SetUp {
            netns: side.netns(),
            name: name("eth0"),
        })
        .unwrap();

        let host = k.view(&Netns::Host).unwrap();
        let br = host.link("lyb0").expect("bridge");
        assert_eq!(
            (br.kind.as_deref(), br.up, br.mtu),
            (Some("bridge"), true, 1400)
        );
        let v = host.link("lyv0").expect("host side");
        assert_eq!((v.kind.as_deref(), v.up, v.mtu), (Some("veth"), true, 1400));
        assert_eq!(v.master, Some(br.index));
        assert!(
            host.link("eth0").is_none(),
            "peer must not appear in the host"
        );

        let c = k.view(&side.netns()).unwrap();
        let e = c.link("eth0").expect("peer in the container");
        assert_eq!(
            (e.kind.as_deref(), e.mac, e.mtu, e.up),
            (Some("veth"), Some(MAC), 1400, true)
        );

        let j = side.ip_json("link show eth0");
        assert_eq!(j[0]["address"], "02:42:c0:00:02:0a");
        assert!(j[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        let j = ip_json("link show lyv0");
        assert_eq!(j[0]["master"], "lyb0");
    });
}

#[test]
fn macvlan_is_born_in_the_container_with_fixed_mac_and_mtu_and_up() {
    in_fresh_netns("macvlan", || {
        let side = SideNetns::new();
        let mut k = Netlink::new().unwrap();
        parent_pair(&mut k, "lyp0", "lyp1");
        k.apply(&macvlan(side.netns(), "eth0", "lyp0", Some(MAC)))
            .unwrap();

        assert!(k.view(&Netns::Host).unwrap().link("eth0").is_none());
        let c = k.view(&side.netns()).unwrap();
        let e = c.link("eth0").expect("macvlan in the container");
        assert_eq!(
            (e.kind.as_deref(), e.mac, e.mtu, e.up),
            (Some("macvlan"), Some(MAC), 1400, true)
        );

        let j = side.ip_json("-d link show eth0");
        assert_eq!(j[0]["linkinfo"]["info_kind"], "macvlan");
        assert_eq!(j[0]["linkinfo"]["info_data"]["mode"], "bridge");
        assert_eq!(j[0]["mtu"], 1400);
    });
}

#[test]
fn missing_parent_is_reported_as_interface_not_found() {
    in_fresh_netns("missing parent", || {
        let side = SideNetns::new();
        let mut k = Netlink::new().unwrap();
        match k.apply(&macvlan(side.netns(), "eth0", "nope0", None)) {
            Err(Error::NotFound { kind, name }) => {
                assert_eq!((kind, name.as_str()), ("interface", "nope0"))
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    });
}

#[test]
fn ipvlan_and_vlan_on_a_kernel_without_them_are_unsupported() {
    in_fresh_netns("unsupported", || {
        let mut k = Netlink::new().unwrap();
        parent_pair(&mut k, "lyp0", "lyp1");
        let ipvlan = Op::CreateIpvlan {
            netns: Netns::Host,
            name: name("ipv0"),
            parent: name("lyp0"),
            mode: IpvlanMode::L2,
            mtu: None,
        };
        match k.apply(&ipvlan) {
            Err(Error::Unsupported(s)) => {
                assert_eq!(
                    s,
                    "kernel has no ipvlan support (module ipvlan not available)"
                )
            }
            // A kernel with ipvlan must have made one.
            Ok(()) => assert_eq!(
                k.view(&Netns::Host)
                    .unwrap()
                    .link("ipv0")
                    .unwrap()
                    .kind
                    .as_deref(),
                Some("ipvlan")
            ),
            other => panic!("unexpected {other:?}"),
        }
        let vlan = Op::CreateVlan {
            name: name("lyp0.10"),
            parent: name("lyp0"),
            id: 10,
        };
        match k.apply(&vlan) {
            Err(Error::Unsupported(s)) => {
                assert_eq!(
                    s,
                    "kernel has no 802.1Q VLAN support (module 8021q not available)"
                )
            }
            Ok(()) => {
                let v = k.view(&Netns::Host).unwrap();
                let l = v.link("lyp0.10").expect("vlan");
                assert_eq!((l.kind.as_deref(), l.up), (Some("vlan"), true));
            }
            other => panic!("unexpected {other:?}"),
        }
    });
}

#[test]
fn addresses_v4_and_v6_skip_dad_and_adding_twice_is_fine() {
    in_fresh_netns("addresses", || {
        let side = SideNetns::new();
        let mut k = Netlink::new().unwrap();
        parent_pair(&mut k, "lyp0", "lyp1");
        k.apply(&macvlan(side.netns(), "eth0", "lyp0", None))
            .unwrap();
        let ns = side.netns();
        for a in [
            "192.0.2.10/24",
            "198.51.100.7/32",
            "2001:db8::10/64",
            "2001:db8::11/128",
        ] {
            let op = address(ns.clone(), "eth0", a);
            k.apply(&op).unwrap();
            k.apply(&op).expect("second add is a no-op");
        }
        let mut got = k.view(&ns).unwrap().addresses_of("eth0");
        got.retain(|a| !matches!(a, IpNet::V6(v) if v.addr().segments()[0] == 0xfe80));
        got.sort();
        let mut want = vec![
            net("192.0.2.10/24"),
            net("198.51.100.7/32"),
            net("2001:db8::10/64"),
            net("2001:db8::11/128"),
        ];
        want.sort();
        assert_eq!(got, want);

        let j = side.ip_json("addr show eth0");
        let infos = j[0]["addr_info"].as_array().unwrap();
        let find = |a: &str| {
            infos
                .iter()
                .find(|i| i["local"] == a)
                .unwrap_or_else(|| panic!("{a} missing"))
        };
        assert_eq!(find("192.0.2.10")["broadcast"], "192.0.2.255");
        assert!(
            find("2001:db8::10").get("tentative").is_none(),
            "nodad: no DAD, not tentative"
        );
        assert_eq!(find("2001:db8::11")["noprefixroute"], true);
        assert_eq!(find("198.51.100.7")["noprefixroute"], true);

        for a in ["192.0.2.10/24", "2001:db8::10/64"] {
            let op = Op::DelAddress {
                netns: ns.clone(),
                link: name("eth0"),
                addr: net(a),
            };
            k.apply(&op).unwrap();
            k.apply(&op).expect("deleting a missing address is fine");
        }
        let left = k.view(&ns).unwrap().addresses_of("eth0");
        assert!(!left.contains(&net("192.0.2.10/24")) && !left.contains(&net("2001:db8::10/64")));
        k.apply(&Op::DelAddress {
            netns: ns.clone(),
            link: name("gone0"),
            addr: net("192.0.2.10/24"),
        })
        .expect("address on a missing link is already gone");
        match k.apply(&address(ns, "gone0", "192.0.2.10/24")) {
            Err(Error::NotFound {
                kind: "interface", ..
            }) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
    });
}

#[test]
fn routes_replace_and_delete_are_idempotent() {
    in_fresh_netns("routes", || {
        let side = SideNetns::new();
        let ns = side.netns();
        let mut k = Netlink::new().unwrap();
        parent_pair(&mut k, "lyp0", "lyp1");
        k.apply(&macvlan(ns.clone(), "eth0", "lyp0", None)).unwrap();
        for a in ["192.0.2.10/24", "2001:db8::10/64"] {
            k.apply(&address(ns.clone(), "eth0", a)).unwrap();
        }
        let default = route("0.0.0.0/0", Some("192.0.2.1"), Some("eth0"));
        let onlink = route("203.0.113.0/24", None, Some("eth0"));
        let mut sourced = route("198.51.100.0/24", Some("192.0.2.1"), None);
        sourced.src = Some(ip("192.0.2.10"));
        sourced.metric = Some(50);
        let v6 = route("2001:db8:1::/48", Some("2001:db8::1"), Some("eth0"));
        for r in [&default, &onlink, &sourced, &v6] {
            let op = Op::AddRoute {
                netns: ns.clone(),
                route: r.clone(),
            };
            k.apply(&op).unwrap();
            k.apply(&op).expect("replace is idempotent");
        }
        let v = k.view(&ns).unwrap();
        let eth0 = v.link("eth0").unwrap().index;
        let find = |dst: &str| {
            v.routes
                .iter()
                .find(|r| r.dst == net(dst))
                .unwrap_or_else(|| panic!("no route {dst}: {:?}", v.routes))
        };
        let d = find("0.0.0.0/0");
        assert_eq!(
            (d.gateway, d.oif, d.protocol),
            (Some(ip("192.0.2.1")), Some(eth0), 4)
        );
        assert_eq!(find("203.0.113.0/24").gateway, None);
        assert_eq!(find("198.51.100.0/24").src, Some(ip("192.0.2.10")));
        assert_eq!(find("2001:db8:1::/48").gateway, Some(ip("2001:db8::1")));
        assert_eq!(
            find("192.0.2.0/24").protocol,
            2,
            "the connected route is the kernel's"
        );

        let j = side.ip_json("route show 203.0.113.0/24");
        assert_eq!(
            (&j[0]["scope"], &j[0]["protocol"]),
            (&"link".into(), &"static".into())
        );
        let j = side.ip_json("route show 198.51.100.0/24");
        assert_eq!(j[0]["metric"], 50);

        for r in [&default, &onlink, &sourced, &v6] {
            let op = Op::DelRoute {
                netns: ns.clone(),
                route: r.clone(),
            };
            k.apply(&op).unwrap();
            k.apply(&op).expect("deleting a missing route is fine");
        }
        let left = k.view(&ns).unwrap().routes;
        for dst in [
            "0.0.0.0/0",
            "203.0.113.0/24",
            "198.51.100.0/24",
            "2001:db8:1::/48",
        ] {
            assert!(left.iter().all(|r| r.dst != net(dst)), "{dst} still there");
        }
        k.apply(&Op::DelRoute {
            netns: ns,
            route: route("203.0.113.0/24", None, Some("gone0")),
        })
        .expect("a route through a missing device is already gone");
    });
}

#[test]
fn sysctls_land_in_the_namespace_they_name() {
    in_fresh_netns("sysctl", || {
        let side = SideNetns::new();
        let mut k = Netlink::new().unwrap();
        k.apply(&veth("lyv0", "ly.0", side.netns())).unwrap();
        let set = |netns: Netns, key: &str, value: &str| Op::SetSysctl {
            netns,
            key: key.into(),
            value: value.into(),
        };
        k.apply(&set(side.netns(), "net.ipv4.ip_forward", "1"))
            .unwrap();
        k.apply(&set(side.netns(), "net.ipv4.conf.ly.0.forwarding", "0"))
            .unwrap();
        k.apply(&set(side.netns(), "net.ipv4.conf.ly.0.rp_filter", "2"))
            .unwrap();
        assert_eq!(side.cat("/proc/sys/net/ipv4/ip_forward"), "1");
        assert_eq!(side.cat("/proc/sys/net/ipv4/conf/ly.0/rp_filter"), "2");
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .unwrap()
                .trim(),
            "0",
            "host untouched"
        );

        k.apply(&set(Netns::Host, "net.ipv4.conf.lyv0.rp_filter", "2"))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/conf/lyv0/rp_filter")
                .unwrap()
                .trim(),
            "2"
        );

        match k.apply(&set(side.netns(), "net.ipv4.conf.nope0.forwarding", "1")) {
            Err(Error::NotFound { kind: "sysctl", .. }) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(matches!(
            k.apply(&set(side.netns(), "kernel.hostname", "x")),
            Err(Error::Invalid { .. })
        ));

        // From another thread (in a namespace of its own), Host still means the
        // namespace Netlink::new ran in.
        let host_file = "/proc/sys/net/ipv4/conf/lyv0/forwarding";
        let before = std::fs::read_to_string(host_file).unwrap();
        assert_eq!(before.trim(), "0");
        std::thread::spawn(move || {
            // SAFETY: affects only this thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            k.apply(&set(Netns::Host, "net.ipv4.conf.lyv0.forwarding", "1"))
                .unwrap();
        })
        .join()
        .unwrap();
        assert_eq!(std::fs::read_to_string(host_file).unwrap().trim(), "1");
    });
}

#[test]
fn retire_frees_the_name_addresses_and_mac_at_once_and_reap_deletes_the_tombstone() {
    in_fresh_netns("retire", || {
        let side = SideNetns::new();
        let ns = side.netns();
        let mut k = Netlink::new().unwrap();
        parent_pair(&mut k, "lyp0", "lyp1");
        let attach = |k: &mut Netlink| {
            k.apply(&macvlan(ns.clone(), "eth0", "lyp0", Some(MAC)))
                .unwrap();
            for a in ["192.0.2.20/24", "2001:db8::20/64"] {
                k.apply(&address(ns.clone(), "eth0", a)).unwrap();
            }
        };
        let retire = |k: &mut Netlink, nonce: u32| {
            let tomb = tombstone_name(nonce);
            k.apply(&Op::RetireLink {
                netns: ns.clone(),
                name: name("eth0"),
                tombstone: tomb.clone(),
                addresses: vec![net("192.0.2.20/24"), net("2001:db8::20/64")],
            })
            .unwrap();
            let v = k.view(&ns).unwrap();
            assert!(v.link("eth0").is_none(), "name is free");
            let t = v.link(tomb.as_str()).expect("tombstone");
            let left: Vec<IpNet> = v
                .addresses
                .iter()
                .filter(|a| a.index == t.index)
                .map(|a| a.addr)
                .collect();
            // The endpoint's addresses are free at once; its link-local one goes
            // with the tombstone.
            assert!(
                left.iter()
                    .all(|a| matches!(a.addr(), IpAddr::V6(v) if v.segments()[0] == 0xfe80)),
                "{left:?}"
            );
            tomb
        };
        attach(&mut k);
        let first = retire(&mut k, 1);
        // Same name, same MAC, same addresses at once: the first tombstone still owns
        // the MAC on the parent, so the create deletes it and goes on.
        attach(&mut k);
        assert!(
            k.view(&ns).unwrap().link(first.as_str()).is_none(),
            "tombstone holding the MAC was deleted"
        );
        let second = retire(&mut k, 2);
        k.apply(&Op::RetireLink {
            netns: ns.clone(),
            name: name("nope0"),
            tombstone: tombstone_name(3),
            addresses: vec![net("192.0.2.20/24")],
        })
        .expect("retiring a missing link is fine");

        attach(&mut k);
        k.reap(vec![(ns.clone(), second.clone())]).unwrap();
        eventually("tombstone deleted by the reaper", || {
            k.view(&ns).unwrap().link(second.as_str()).is_none()
        });
        assert!(
            k.view(&ns).unwrap().link("eth0").is_some(),
            "the new link is untouched"
        );
        assert_no_zombie_children();
    });
}

#[test]
fn a_mac_held_by_a_live_endpoint_is_a_conflict() {
    in_fresh_netns("mac conflict", || {
        let side = SideNetns::new();
        let mut k = Netlink::new().unwrap();
        parent_pair(&mut k, "lyp0", "lyp1");
        k.apply(&macvlan(side.netns(), "eth0", "lyp0", Some(MAC)))
            .unwrap();
        match k.apply(&macvlan(side.netns(), "eth1", "lyp0", Some(MAC))) {
            Err(Error::Conflict(msg)) => assert!(msg.contains("02:42:c0:00:02:0a"), "{msg}"),
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert!(k.view(&side.netns()).unwrap().link("eth1").is_none());
    });
}

/// No child of this process is a zombie (the reaper's intermediate child was reaped).
fn assert_no_zombie_children() {
    let me = std::process::id().to_string();
    let own_comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split(' ').collect();
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if fields.get(1) == Some(&me.as_str()) && fields[0] == "Z" && comm == own_comm {
            panic!("zombie child {}", entry.path().display());
        }
    }
}

#[test]
fn the_reaper_does_not_hold_the_callers_output_open() {
    in_fresh_netns("reaper fds", || {
        let mut k = Netlink::new().unwrap();
        // Enough tombstones that the worker is busy for a long while (each delete
        // waits for RCU grace periods) and deletes the last one just before it exits.
        const N: u32 = 20;
        let mut tombs = Vec::new();
        for i in 0..N {
            let t = tombstone_name(0x200 + i);
            parent_pair(&mut k, t.as_str(), &format!("lyq{i}"));
            tombs.push((Netns::Host, t));
        }
        // A pipe like a CNI runtime's stdout: EOF must come when we close our end, not
        // when the worker finishes. Close-on-exec keeps it from other tests' `ip`
        // children (tests run in parallel); the reaper forks without exec, so that
        // flag does not hide a worker that kept it.
        let mut fds = [0; 2];
        // SAFETY: valid out-array for two fds.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        k.reap(tombs.clone()).unwrap();
        // SAFETY: our own fds; read into a valid buffer.
        unsafe { libc::close(fds[1]) };
        let mut b = [0u8; 1];
        // Blocks until no process holds the write end any more: no time limit.
        let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
        unsafe { libc::close(fds[0]) };
        assert_eq!(n, 0, "EOF");
        // The worker exits only after its last delete. Had it held the pipe, EOF would
        // have come after that, with no tombstone left.
        let still_there = tombstones_left(&mut k);
        assert!(
            still_there > 0,
            "EOF came only once all {N} tombstones were deleted: the worker holds the pipe"
        );
        eventually("all deleted", || tombstones_left(&mut k) == 0);
        assert_no_zombie_children();
    });
}

#[test]
fn reap_now_and_delete_link_are_idempotent() {
    in_fresh_netns("reap_now", || {
        let mut k = Netlink::new().unwrap();
        parent_pair(&mut k, "lyx-00000003", "lyp1");
        k.reap_now(vec![
            (Netns::Host, tombstone_name(3)),
            (Netns::Host, tombstone_name(4)),
        ])
        .unwrap();
        let v = k.view(&Netns::Host).unwrap();
        assert!(v.link("lyx-00000003").is_none() && v.link("lyp1").is_none());
        k.apply(&Op::DeleteLink {
            netns: Netns::Host,
            name: name("lyp1"),
        })
        .expect("missing link");
    });
}

#[test]
fn a_gone_namespace_is_not_found_for_adds_and_fine_for_deletes() {
    in_fresh_netns("gone", || {
        let mut k = Netlink::new().unwrap();
        let side = SideNetns::new();
        let path = side.path.clone();
        let id = k.netns_id(&path).unwrap();
        let st = std::fs::metadata(&path).unwrap();
        assert_eq!(
            id,
            (
                std::os::unix::fs::MetadataExt::dev(&st),
                std::os::unix::fs::MetadataExt::ino(&st)
            )
        );
        assert_ne!(
            id,
            k.netns_id(&PathBuf::from("/proc/thread-self/ns/net"))
                .unwrap()
        );
        drop(side);
        let gone = Netns::Path(path.clone());
        assert!(matches!(
            k.netns_id(&path),
            Err(Error::NotFound {
                kind: "namespace",
                ..
            })
        ));
        k.apply(&Op::DeleteLink {
            netns: gone.clone(),
            name: name("eth0"),
        })
        .unwrap();
        k.apply(&Op::RetireLink {
            netns: gone.clone(),
            name: name("eth0"),
            tombstone: tombstone_name(5),
            addresses: vec![net("192.0.2.20/24")],
        })
        .unwrap();
        k.apply(&Op::DelRoute {
            netns: gone.clone(),
            route: route("0.0.0.0/0", Some("192.0.2.1"), None),
        })
        .unwrap();
        match k.apply(&Op::SetUp {
            netns: gone,
            name: name("eth0"),
        }) {
            Err(Error::NotFound {
                kind: "namespace", ..
            }) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
    });
}

#[test]
fn view_of_a_fresh_namespace_shows_loopback_only() {
    in_fresh_netns("view", || {
        let mut k = Netlink::new().unwrap();
        let v = k.view(&Netns::Host).unwrap();
        assert_eq!(v.links.len(), 1);
        let lo = &v.links[0];
        assert_eq!(
            (lo.name.as_str(), lo.kind.as_deref(), lo.mac, lo.up),
            ("lo", None, None, false)
        );
        k.apply(&Op::SetUp {
            netns: Netns::Host,
            name: name("lo"),
        })
        .unwrap();
        let v = k.view(&Netns::Host).unwrap();
        assert!(v.links[0].up);
        assert!(v.addresses.iter().any(|a| a.addr == net("127.0.0.1/8")));
        assert!(
            v.routes.is_empty(),
            "loopback routes live in the local table: {:?}",
            v.routes
        );
    });
}

/// The hot path, over and over in one namespace: one macvlan endpoint attach (create
/// in the container, two addresses, default route) and its detach (retire, tombstone
/// handed to the reaper), each attach right after the previous detach. Its cost is
/// measured by `examples/kernel_cycle.rs`, not here.
#[test]
fn a_macvlan_endpoint_is_attached_and_detached_again_and_again() {
    in_fresh_netns("cycle", || {
        let side = SideNetns::new();
        let ns = side.netns();
        let mut k = Netlink::new().unwrap();
        parent_pair(&mut k, "lyp0", "lyp1");
        const N: u32 = 10;
        let mut tombs = Vec::new();
        for i in 0..N {
            let mac = MacAddr([0x02, 0x42, 0xc0, 0x00, 0x02, i as u8]);
            k.apply(&macvlan(ns.clone(), "eth0", "lyp0", Some(mac)))
                .unwrap();
            for a in ["192.0.2.30/24", "2001:db8::30/64"] {
                k.apply(&address(ns.clone(), "eth0", a)).unwrap();
            }
            k.apply(&Op::AddRoute {
                netns: ns.clone(),
                route: route("0.0.0.0/0", Some("192.0.2.1"), Some("eth0")),
            })
            .unwrap();
            let v = k.view(&ns).unwrap();
            assert_eq!(v.link("eth0").and_then(|l| l.mac), Some(mac), "cycle {i}");
            assert!(v.addresses_of("eth0").contains(&net("192.0.2.30/24")));
            assert!(v.routes.iter().any(|r| r.dst.prefix_len() == 0));
            let tomb = tombstone_name(0x100 + i);
            k.apply(&Op::RetireLink {
                netns: ns.clone(),
                name: name("eth0"),
                tombstone: tomb.clone(),
                addresses: vec![net("192.0.2.30/24"), net("2001:db8::30/64")],
            })
            .unwrap();
            k.reap(vec![(ns.clone(), tomb.clone())]).unwrap();
            tombs.push(tomb);
        }
        eventually("all tombstones reaped", || {
            let v = k.view(&ns).unwrap();
            tombs.iter().all(|t| v.link(t.as_str()).is_none())
        });
        assert_eq!(k.view(&ns).unwrap().links.len(), 1, "only lo is left");
        assert_no_zombie_children();
    });
}

#[test]
fn view_links_shows_the_named_links_and_their_addresses_only() {
    in_fresh_netns("view_links", || {
        let mut k = Netlink::new().unwrap();
        parent_pair(&mut k, "lyp0", "lyp1");
        parent_pair(&mut k, "lyo0", "lyo1");
        for (link, a) in [
            ("lyp0", "192.0.2.2/24"),
            ("lyp0", "2001:db8::2/64"),
            ("lyo0", "198.51.100.2/24"),
        ] {
            k.apply(&address(Netns::Host, link, a)).unwrap();
        }
        let names = [name("lyp0"), name("nope0"), name("lyp0")];
        let part = k.view_links(&Netns::Host, &names).unwrap();
        let full = k.view(&Netns::Host).unwrap();
        assert!(!full.routes.is_empty());
        assert_eq!(part, full.only_links(&names), "same as the full view, cut");
        assert_eq!(part.links.len(), 1);
        assert_eq!(part.links[0].name, "lyp0");
        assert_eq!(part.links[0].kind.as_deref(), Some("veth"));
        let mut got = part.addresses_of("lyp0");
        got.retain(|a| !matches!(a, IpNet::V6(v) if v.addr().segments()[0] == 0xfe80));
        got.sort();
        assert_eq!(got, vec![net("192.0.2.2/24"), net("2001:db8::2/64")]);
        assert!(part.routes.is_empty());
        assert_eq!(
            k.view_links(&Netns::Host, &[]).unwrap(),
            lanyard_core::kernel::View::default()
        );
    });
}

/// Ops look a link's index up once and remember it; a retire, delete or create in
/// that namespace makes them look again, so nothing lands on the wrong link.
#[test]
fn remembered_link_indexes_never_outlive_a_change_of_the_link() {
    in_fresh_netns("indexes", || {
        let side = SideNetns::new();
        let ns = side.netns();
        let mut k = Netlink::new().unwrap();
        parent_pair(&mut k, "lyp0", "lyp1");
        let add = |k: &mut Netlink, a: &str| k.apply(&address(ns.clone(), "eth0", a));
        k.apply(&macvlan(ns.clone(), "eth0", "lyp0", None)).unwrap();
        add(&mut k, "192.0.2.20/24").unwrap();
        k.apply(&Op::RetireLink {
            netns: ns.clone(),
            name: name("eth0"),
            tombstone: tombstone_name(7),
            addresses: vec![net("192.0.2.20/24")],
        })
        .unwrap();
        // The index remembered for eth0 is the tombstone's now.
        let err = add(&mut k, "192.0.2.21/24").unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        k.apply(&macvlan(ns.clone(), "eth0", "lyp0", None)).unwrap();
        add(&mut k, "192.0.2.22/24").unwrap();
        k.apply(&Op::DeleteLink {
            netns: ns.clone(),
            name: name("eth0"),
        })
        .unwrap();
        let err = add(&mut k, "192.0.2.23/24").unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");

        let v = k.view(&ns).unwrap();
        let tomb = v.link(tombstone_name(7).as_str()).expect("tombstone");
        let on = |index: u32| -> Vec<String> {
            v.addresses
                .iter()
                .filter(|a| a.index == index)
                .map(|a| a.addr.to_string())
                .collect()
        };
        assert_eq!(
            on(tomb.index),
            Vec::<String>::new(),
            "nothing on the tombstone"
        );
        assert!(v.link("eth0").is_none());
    });
}
