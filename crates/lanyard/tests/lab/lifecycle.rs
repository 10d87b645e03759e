//! The split endpoint lifecycle from the CLI on a real kernel: `endpoint create`
//! (allocated, no link), `plug`, `unplug` (the address stays held), `plug` elsewhere,
//! `check` against the kernel, `rm`; and `publish`/`unpublish` on a live endpoint.

use crate::firewall::{serve_tcp, tcp_peer};
use crate::harness::{addr, addr_of, lab, Lab};

fn macvlan_lan(lab: &Lab) {
    lab.lanyard_ok(&[
        "network",
        "create",
        "lan",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0",
        "--subnet",
        addr::LAN_V4,
        "--gateway",
        addr::ROUTER_V4,
        "--ip-range",
        "192.0.2.128/25",
    ]);
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
    assert!(lab.lan().ping(&a), "router -> plugged endpoint");
    assert!(lab.host().ping(&a), "host -> plugged endpoint");
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
    assert!(lab.lan().ping(&a), "router -> the same address, now in c2");

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
