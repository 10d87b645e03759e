//! Tests that need kernel features the development host lacks (ipvlan, 8021q). They
//! are named `vm_<feature>_…`; `scripts/test` runs them in a VM with a stock Debian
//! kernel (`scripts/vm-test`), the rest on the host. On a kernel without the feature
//! they fail loudly (`Lab::require_kernel`), never skip.

use crate::harness::{addr, addr_of, exit, lab, Lab, Ns};

#[test]
fn vm_ipvlan_l2_endpoints_the_lan_and_the_host_reach_each_other() {
    let lab = lab!();
    lab.require_kernel("ipvlan");
    lab.lan_network("iv", "ipvlan", &[]);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let (a1, a2) = (
        addr_of(&lab.attach("iv", &c1, &[]), false),
        addr_of(&lab.attach("iv", &c2, &[]), false),
    );
    assert!(
        lab.lan().ping(&a1) && lab.lan().ping(&a2),
        "router -> ipvlan endpoints"
    );
    assert!(c1.ping(&a2) && c2.ping(&a1), "endpoints reach each other");
    assert!(c1.ping(addr::ROUTER_V4), "endpoint -> router");
    // Host access through the ipvlan shim.
    assert!(lab.host().ping(&a1), "host -> ipvlan endpoint");
    assert!(c1.ping(addr::HOST_V4), "ipvlan endpoint -> host");
    // ipvlan endpoints share the parent's MAC.
    let mac = |ns: &Ns, dev: &str| {
        ns.ip_json(&["link", "show", dev])[0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(mac(&c1, "eth0"), mac(&lab.host(), "eth0"));
}

/// ipvlan in a layer-3 mode: a routed subnet behind the host (the router has a route
/// to it via the host), no ARP for endpoint addresses.
fn l3_lab(name: &str, mode: &str) -> Option<(Lab, Ns, Ns, String, String)> {
    let lab = Lab::new(name)?;
    lab.require_kernel("ipvlan");
    lab.lanyard_ok(&[
        "network",
        "create",
        "iv",
        "-d",
        "ipvlan",
        "-o",
        "parent=eth0",
        "-o",
        &format!("ipvlan_mode={mode}"),
        "--subnet",
        "203.0.113.0/24",
    ]);
    lab.lan()
        .ip(&["route", "add", "203.0.113.0/24", "via", addr::HOST_V4]);
    lab.host().sysctl("net.ipv4.ip_forward", "1");
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let (a1, a2) = (
        addr_of(&lab.attach("iv", &c1, &[]), false),
        addr_of(&lab.attach("iv", &c2, &[]), false),
    );
    Some((lab, c1, c2, a1, a2))
}

#[test]
fn vm_ipvlan_l3_routes_a_subnet_behind_the_host() {
    let Some((lab, c1, c2, a1, a2)) = l3_lab("vm_ipvlan_l3_routes_a_subnet_behind_the_host", "l3")
    else {
        return;
    };
    assert!(
        c1.ping(&a2) && c2.ping(&a1),
        "l3 endpoints reach each other"
    );
    assert!(
        c1.ping(addr::ROUTER_V4),
        "l3 endpoint -> router (routed by the host)"
    );
    assert!(lab.lan().ping(&a1), "router -> l3 endpoint via the host");
    let route = c1.ip(&["route", "show", "default"]);
    assert!(
        route.contains("dev eth0") && !route.contains("via"),
        "l3 default is a device route: {route}"
    );
}

#[test]
fn vm_ipvlan_l3s_traffic_passes_the_hosts_netfilter_and_conntrack() {
    let Some((lab, c1, _c2, a1, _a2)) = l3_lab(
        "vm_ipvlan_l3s_traffic_passes_the_hosts_netfilter_and_conntrack",
        "l3s",
    ) else {
        return;
    };
    // Count new conntrack flows to the endpoint in the host's input hook: with l3s,
    // traffic to ipvlan endpoints traverses the host's netfilter (l3mdev).
    let host = lab.host();
    host.ok(&["nft", "add table ip lytest"]);
    host.ok(&[
        "nft",
        "add chain ip lytest in { type filter hook input priority 0; }",
    ]);
    host.ok(&[
        "nft",
        &format!("add rule ip lytest in ip daddr {a1} ct state new counter"),
    ]);
    assert!(lab.lan().ping(&a1), "router -> l3s endpoint");
    assert!(c1.ping(addr::ROUTER_V4), "l3s endpoint -> router");
    let rules = host.ok(&["nft", "list chain ip lytest in"]);
    assert!(
        !rules.contains("packets 0 "),
        "no conntrack/netfilter on the l3s path: {rules}"
    );
}

#[test]
fn vm_vlan_parent_eth0_10_is_made_on_first_use_and_removed_with_its_last_network() {
    let lab = lab!();
    lab.require_kernel("vlan");
    // The LAN side of VLAN 10: its own subnet on the router.
    let lan = lab.lan();
    lan.ip(&[
        "link", "add", "link", "lan0", "name", "lan0.10", "type", "vlan", "id", "10",
    ]);
    lan.ip(&["link", "set", "lan0.10", "up"]);
    lan.ip(&["addr", "add", "203.0.113.1/24", "dev", "lan0.10"]);
    lab.lanyard_ok(&[
        "network",
        "create",
        "v10",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0.10",
        "--subnet",
        "203.0.113.0/25",
        "-o",
        "host_access=off",
    ]);
    lab.lanyard_ok(&[
        "network",
        "create",
        "v10b",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0.10",
        "--subnet",
        "203.0.113.128/25",
        "--gateway",
        "203.0.113.129",
        "-o",
        "host_access=off",
    ]);
    let host = lab.host();
    let link = &host.ip_json(&["-d", "link", "show", "eth0.10"])[0];
    assert_eq!(link["linkinfo"]["info_kind"], "vlan");
    assert_eq!(link["linkinfo"]["info_data"]["id"], 10);
    let c1 = lab.netns("c1");
    let a1 = addr_of(&lab.attach("v10", &c1, &[]), false);
    assert!(
        c1.ping("203.0.113.1"),
        "endpoint on VLAN 10 -> router's VLAN 10 address"
    );
    assert!(lan.ping(&a1));
    lab.lanyard_ok(&["detach", "v10", "--netns", c1.path().to_str().unwrap()]);
    lab.lanyard_ok(&["network", "rm", "v10"]);
    assert!(
        host.links().contains("eth0.10"),
        "VLAN removed while another network uses it"
    );
    lab.lanyard_ok(&["network", "rm", "v10b"]);
    assert!(
        !host.links().contains("eth0.10"),
        "VLAN left behind after its last network"
    );
}

#[test]
fn vm_ipvlan_a_second_mode_on_one_parent_is_refused_and_the_first_keeps_working() {
    let lab = lab!();
    lab.require_kernel("ipvlan");
    lab.lan_network("l2", "ipvlan", &[]);
    let c1 = lab.netns("c1");
    let a1 = addr_of(&lab.attach("l2", &c1, &[]), false);
    let err = lab.lanyard_fails(
        &[
            "network",
            "create",
            "l3",
            "-d",
            "ipvlan",
            "-o",
            "parent=eth0",
            "-o",
            "ipvlan_mode=l3",
            "--subnet",
            "203.0.113.0/24",
        ],
        exit::CONFLICT,
    );
    assert!(err.contains("ipvlan_mode") && err.contains("l2"), "{err}");
    // An l3 attach would have switched the parent; the l2 endpoint still talks L2.
    assert!(
        lab.lan().ping(&a1),
        "router -> l2 endpoint after the refused create"
    );
    let err = lab.lanyard_fails(
        &[
            "network",
            "create",
            "mv",
            "-d",
            "macvlan",
            "-o",
            "parent=eth0",
            "--subnet",
            "198.51.100.0/24",
        ],
        exit::CONFLICT,
    );
    assert!(err.contains("macvlan and ipvlan"), "{err}");
}

#[test]
fn vm_vlan_network_rm_keeps_a_vlan_link_the_administrator_made() {
    let lab = lab!();
    lab.require_kernel("vlan");
    let host = lab.host();
    host.ip(&[
        "link", "add", "link", "eth0", "name", "eth0.20", "type", "vlan", "id", "20",
    ]);
    lab.lanyard_ok(&[
        "network",
        "create",
        "v20",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0.20",
        "--subnet",
        "198.51.100.0/24",
    ]);
    lab.lanyard_ok(&["network", "rm", "v20"]);
    assert!(
        host.links().contains("eth0.20"),
        "network rm removed the administrator's eth0.20"
    );
}
