//! The split endpoint lifecycle from the CLI on a real kernel: `endpoint create`
//! (allocated, no link), `plug`, `unplug` (the address stays held), `plug` elsewhere,
//! `check` against the kernel, `rm`; and `publish`/`unpublish` on a live endpoint.

use crate::firewall::{serve_tcp, tcp_peer};
use crate::harness::{addr, addr_of, lab, Lab};
use std::time::Duration;

/// How long a first packet may take while neighbours are resolved (a wait, not a
/// timing check).
const SETTLE: Duration = Duration::from_secs(3);

fn macvlan_lan(lab: &Lab) {
    lab.lan_network("lan", "macvlan", &[]);
}

fn state_of(lab: &Lab, id: &str) -> String {
    lab.lanyard_json(&["endpoint", "inspect", id, "--json"])["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn an_allocated_endpoint_keeps_its_address_and_mac_across_unplug_and_plug_elsewhere() {
    let lab = lab!();
    macvlan_lan(&lab);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let ep = lab.lanyard_json(&["endpoint", "create", "lan", "--json"]);
    let id = ep["id"].as_str().unwrap().to_string();
    let a = addr_of(&ep, false);
    let mac = ep["mac"].as_str().unwrap().to_string();
    assert_eq!(state_of(&lab, &id), "allocated");
    assert!(
        !lab.lan().ping(&a),
        "nothing answers for an allocated address"
    );
    // Another endpoint never gets the allocated address.
    let other = lab.attach("lan", &lab.netns("c3"), &[]);
    assert_ne!(addr_of(&other, false), a);

    lab.lanyard_ok(&[
        "endpoint",
        "plug",
        &id,
        "--netns",
        &c1.path().to_string_lossy(),
    ]);
    assert_eq!(state_of(&lab, &id), "active");
    assert!(
        lab.lan().ping_within(&a, SETTLE),
        "router -> plugged endpoint"
    );
    assert!(
        lab.host().ping_within(&a, SETTLE),
        "host -> plugged endpoint"
    );
    lab.lanyard_ok(&["endpoint", "check", &id]);

    lab.lanyard_ok(&["endpoint", "unplug", &id]);
    assert_eq!(state_of(&lab, &id), "allocated");
    assert!(!c1.links().contains("eth0"), "the link left c1");
    lab.lanyard_ok(&[
        "endpoint",
        "plug",
        &id,
        "--netns",
        &c2.path().to_string_lossy(),
    ]);
    let inside = c2.ip_json(&["link", "show", "eth0"]);
    assert_eq!(
        inside[0]["address"].as_str(),
        Some(mac.as_str()),
        "same MAC"
    );
    assert!(
        lab.lan().ping_within(&a, SETTLE),
        "router -> the same address, now in c2"
    );

    // `check` sees what the kernel lost.
    c2.ip(&["addr", "del", &format!("{a}/24"), "dev", "eth0"]);
    let out = lab.lanyard(&["endpoint", "check", &id]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&a), "{said}");

    lab.lanyard_ok(&["endpoint", "rm", &id]);
    lab.lanyard_ok(&["endpoint", "rm", &id]);
    assert!(!c2.links().contains("eth0"));
    let left = lab.lanyard_json(&["endpoint", "ls"]);
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    // The address is free again: asked for by name, it is given.
    lab.attach("lan", &c1, &["--ip", &a]);
}

#[test]
fn ports_published_and_unpublished_on_a_live_bridge_endpoint_open_and_close_at_once() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let c1 = lab.netns("c1");
    let ep = lab.attach("br", &c1, &[]);
    let id = ep["id"].as_str().unwrap();
    let _servers = serve_tcp(&c1, 80);
    let lan = lab.lan();
    assert_eq!(
        tcp_peer(&lan, addr::HOST_V4, 8080),
        None,
        "not published yet"
    );
    lab.lanyard_ok(&["endpoint", "publish", id, "-p", "8080:80"]);
    assert_eq!(
        tcp_peer(&lan, addr::HOST_V4, 8080),
        Some(addr::ROUTER_V4.parse().unwrap()),
        "published live, with the client's own address"
    );
    // Another endpoint cannot take the same host port.
    let c2 = lab.netns("c2");
    let ep2 = lab.attach("br", &c2, &[]);
    lab.lanyard_fails(
        &[
            "endpoint",
            "publish",
            ep2["id"].as_str().unwrap(),
            "-p",
            "8080:80",
        ],
        3,
    );
    lab.lanyard_ok(&["endpoint", "unpublish", id]);
    assert_eq!(tcp_peer(&lan, addr::HOST_V4, 8080), None, "closed again");
    assert!(lan.ping(addr::HOST_V4));
}

/// The routes of `ns` (`ip -j route`), as `dst via gw dev` strings.
fn routes(ns: &crate::harness::Ns) -> Vec<String> {
    ns.ip_json(&["route"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} via {} dev {}",
                r["dst"].as_str().unwrap_or(""),
                r["gateway"].as_str().unwrap_or("-"),
                r["dev"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn subnets_behind_an_endpoint_are_routed_by_the_host_go_with_detach_and_come_back_with_restore() {
    let lab = lab!();
    macvlan_lan(&lab);
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let (vpn, vpn2, other) = (lab.netns("c1"), lab.netns("c2"), lab.netns("c3"));
    // Each "VPN server" holds an address of its clients' subnet.
    vpn.ip(&["addr", "add", "10.1.1.1/32", "dev", "lo"]);
    vpn2.ip(&["addr", "add", "10.2.2.1/32", "dev", "lo"]);
    let host = lab.host();
    let e1 = lab.attach("lan", &vpn, &["--route", "10.1.1.0/24"]);
    let e2 = lab.attach("br", &vpn2, &["--route", "10.2.2.0/24"]);
    lab.attach("br", &other, &[]);
    let a1 = addr_of(&e1, false);
    let via = format!("10.1.1.0/24 via {a1} dev ");
    assert!(
        routes(&host).iter().any(|r| r.starts_with(&via)),
        "{:?}",
        routes(&host)
    );
    assert!(
        host.ping_within("10.1.1.1", SETTLE),
        "host -> behind the macvlan endpoint (via the shim)"
    );
    assert!(
        host.ping_within("10.2.2.1", SETTLE),
        "host -> behind the bridge endpoint"
    );
    // The VPN endpoint must resolve its peer afresh: its ARP request then carries
    // the routed subnet's address as sender (Linux takes the packet's source).
    vpn2.ip(&["neigh", "flush", "all"]);
    assert!(
        other.ping_within("10.2.2.1", SETTLE),
        "another container -> behind the bridge endpoint"
    );

    // Taken away by hand (a reboot): restore puts it back.
    host.ip(&["route", "del", "10.1.1.0/24"]);
    lab.lanyard_ok(&["restore"]);
    assert!(
        routes(&host).iter().any(|r| r.starts_with(&via)),
        "restored"
    );
    assert!(host.ping_within("10.1.1.1", SETTLE));

    lab.lanyard_ok(&["detach", e1["id"].as_str().unwrap()]);
    lab.lanyard_ok(&["detach", e2["id"].as_str().unwrap()]);
    let left = routes(&host);
    assert!(
        !left
            .iter()
            .any(|r| r.starts_with("10.1.1.0/24") || r.starts_with("10.2.2.0/24")),
        "{left:?}"
    );

    // Overlaps are refused, naming --route; nothing is attached.
    host.ip(&["route", "add", "10.9.0.0/16", "via", addr::ROUTER_V4]);
    let c4 = lab.netns("c4");
    for (r, why) in [
        ("10.9.1.0/24", "overlaps route 10.9.0.0/16"),
        (
            "192.0.2.0/25",
            "overlaps subnet 192.0.2.0/24 of network lan",
        ),
        ("2001:db8:9::/64", "no address of this family"),
        ("bogus", "not a CIDR"),
    ] {
        let err = lab.lanyard_fails(
            &[
                "attach",
                "lan",
                "--netns",
                &c4.path().to_string_lossy(),
                "--route",
                r,
            ],
            crate::harness::exit::USAGE,
        );
        assert!(err.contains("--route") && err.contains(why), "{r}: {err}");
    }
    assert!(!c4.links().contains("eth0"));
}

#[test]
fn a_mac_already_on_the_network_is_refused_and_nothing_is_made() {
    let lab = lab!();
    macvlan_lan(&lab);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let mac = "02:00:5e:10:00:99";
    lab.attach("lan", &c1, &["--mac", mac]);
    let err = lab.lanyard_fails(
        &[
            "attach",
            "lan",
            "--netns",
            &c2.path().to_string_lossy(),
            "--mac",
            mac,
        ],
        crate::harness::exit::CONFLICT,
    );
    assert!(err.contains("--mac") && err.contains(mac), "{err}");
    assert!(!c2.links().contains("eth0"), "no link made");
    let eps = lab.lanyard_json(&["endpoint", "ls"]);
    assert_eq!(eps.as_array().unwrap().len(), 1, "{eps}");
}
