//! The field's hand-made recipes as plain lanyard commands (issue 19), beyond the
//! routed network (firewall.rs), `--route` (lifecycle.rs) and capabilities
//! (run_caps.rs): a bridge network onto the host's own LAN bridge; and the two that
//! already worked and must stay working: a bridge endpoint reaching a macvlan one of
//! the same host, and a macvlan network whose parent is a host bridge.

use crate::harness::{addr, addr_of, exit, lab, Ns};
use std::time::Duration;

/// How long a first packet may take while neighbours are resolved (a slow VM): a
/// wait, not a timing check.
const SETTLE: Duration = Duration::from_secs(3);

/// Everything about `br0` an administrator would notice changing: its settings
/// (timers aside), addresses, the host's routes and its ports (lanyard's own veths
/// aside).
fn bridge_state(host: &Ns) -> String {
    let link = &host.ip_json(&["-d", "link", "show", "br0"])[0];
    let mut info = link["linkinfo"]["info_data"].clone();
    if let Some(m) = info.as_object_mut() {
        m.retain(|k, _| !k.ends_with("_timer"));
    }
    let settings = format!(
        "mtu={} mac={} flags={} {info}",
        link["mtu"], link["address"], link["flags"]
    );
    let addrs: Vec<String> = host.ip_json(&["addr", "show", "dev", "br0"])[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"], a["prefixlen"]))
        .collect();
    // Routes of lanyard's own veths (their link-local prefixes) come and go with them.
    let routes: Vec<String> = host
        .ip(&["route", "show", "table", "all"])
        .lines()
        // IPv6 link-local routes appear when DAD ends (later in a slow VM).
        .filter(|l| !l.contains("lyv-") && !l.contains("fe80"))
        .map(|l| l.replace(" linkdown", ""))
        .collect();
    let ports: Vec<String> = host
        .ip_json(&["link", "show", "master", "br0"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .filter(|n| !n.starts_with("lyv-"))
        .collect();
    format!("{settings}\n{addrs:?}\n{routes:#?}\n{ports:?}")
}

#[test]
fn a_network_on_the_hosts_own_bridge_joins_the_lan_and_leaves_the_bridge_exactly_as_it_was() {
    let lab = lab!();
    let host = lab.host();
    // The administrator's setup: eth0 in br0, the host's address on br0.
    uplink_in_br0(&host);
    let before = bridge_state(&host);
    // Refused: a missing bridge, a NAT option beside it; nothing recorded.
    for (opts, field) in [
        (&["bridge=br9", "bridge_external=true"][..], "-o bridge"),
        (
            &[
                "bridge=br0",
                "bridge_external=true",
                "snat_source=192.0.2.9",
            ][..],
            "-o snat_source",
        ),
        (&["bridge_external=true"][..], "-o bridge_external"),
    ] {
        let mut args = vec!["network", "create", "bad", "--subnet", addr::LAN_V4];
        for o in opts {
            args.extend(["-o", o]);
        }
        let err = lab.lanyard_fails(&args, exit::USAGE);
        assert!(err.contains(field), "{opts:?}: {err}");
    }
    lab.lanyard_ok(&[
        "network",
        "create",
        "ext",
        "-o",
        "bridge=br0",
        "-o",
        "bridge_external=true",
        "--subnet",
        addr::LAN_V4,
        "--gateway",
        addr::ROUTER_V4,
        "--ip-range",
        "192.0.2.128/25",
    ]);
    assert_eq!(bridge_state(&host), before, "create changed br0");
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let e1 = lab.attach("ext", &c1, &[]);
    let e2 = lab.attach("ext", &c2, &[]);
    let (a1, a2) = (addr_of(&e1, false), addr_of(&e2, false));
    assert_ne!(a1, addr::HOST_V4);
    assert_eq!(bridge_state(&host), before, "attach changed br0");
    let lan = lab.lan();
    assert!(
        lan.ping_within(&a1, SETTLE),
        "LAN router -> endpoint, at layer 2"
    );
    assert!(host.ping_within(&a1, SETTLE), "host -> endpoint");
    assert!(
        c1.ping_within(addr::ROUTER_V4, SETTLE)
            && c1.ping_within(addr::HOST_V4, SETTLE)
            && c1.ping_within(&a2, SETTLE)
    );
    // No NAT: the router sees the endpoint's own address (its neighbour entry).
    let neigh = lan.ip(&["neigh", "show", &a1]);
    assert!(neigh.contains(e1["mac"].as_str().unwrap()), "{neigh}");
    lab.lanyard_ok(&["detach", e1["id"].as_str().unwrap()]);
    lab.lanyard_ok(&["detach", e2["id"].as_str().unwrap()]);
    lab.lanyard_ok(&["gc"]);
    lab.lanyard_ok(&["restore"]);
    assert_eq!(bridge_state(&host), before, "detach/gc/restore changed br0");
    lab.lanyard_ok(&["network", "rm", "ext"]);
    assert_eq!(bridge_state(&host), before, "network rm changed br0");
    assert!(host.links().contains("br0"), "br0 is the administrator's");
    assert!(host.ping_within(addr::ROUTER_V4, SETTLE));
}

/// The host's uplink moved into a bridge `br0` that holds the host's address.
pub(crate) fn uplink_in_br0(host: &Ns) {
    host.ip_batch(&[
        // A high locally administered MAC, as a random one may be: lanyard's veths
        // must still never become the bridge's lowest port MAC.
        "link set eth0 address fe:ff:00:00:00:02",
        "link add br0 type bridge",
        "link set br0 up",
        "addr del 192.0.2.2/24 dev eth0",
        "link set eth0 master br0",
        "addr add 192.0.2.2/24 dev br0",
        "route add default via 192.0.2.1",
    ]);
    // The administrator's bridge settles first (carrier, which a slow VM shows late).
    let end = std::time::Instant::now() + SETTLE;
    while !host.ip(&["link", "show", "br0"]).contains("LOWER_UP") {
        assert!(std::time::Instant::now() < end, "br0 got no carrier");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_bridge_endpoint_reaches_a_macvlan_endpoint_of_the_same_host_as_the_hosts_lan_address() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    lab.lan_network("lan", "macvlan", &[]);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    lab.attach("br", &c1, &[]);
    let e2 = lab.attach("lan", &c2, &[]);
    let _server = crate::firewall::serve_tcp(&c2, 81);
    // The MASQUERADE trap, done right: through the shim, with the host's LAN
    // address (not the bridge's 203.0.113.1, which the LAN cannot answer).
    assert_eq!(
        crate::firewall::tcp_peer(&c1, &addr_of(&e2, false), 81),
        Some(addr::HOST_V4.parse().unwrap())
    );
}

#[test]
fn a_macvlan_network_on_a_host_bridge_holding_the_uplink_reaches_the_lan_and_the_host() {
    let lab = lab!();
    let host = lab.host();
    uplink_in_br0(&host);
    lab.lanyard_ok(&[
        "network",
        "create",
        "lan",
        "-d",
        "macvlan",
        "-o",
        "parent=br0",
        "--subnet",
        addr::LAN_V4,
        "--gateway",
        addr::ROUTER_V4,
        "--ip-range",
        "192.0.2.128/25",
    ]);
    let c1 = lab.netns("c1");
    let a1 = addr_of(&lab.attach("lan", &c1, &[]), false);
    assert!(lab.lan().ping_within(&a1, SETTLE), "LAN router -> endpoint");
    assert!(
        host.ping_within(&a1, SETTLE),
        "host -> endpoint (through the shim on br0)"
    );
    assert!(c1.ping_within(addr::HOST_V4, SETTLE) && c1.ping_within(addr::ROUTER_V4, SETTLE));
}
