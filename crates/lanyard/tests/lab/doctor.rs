//! `lanyard doctor`: each check on a lab broken on purpose, and a healthy lab that
//! has nothing to report.

use crate::harness::{addr, addr_of, lab, Lab};
use std::time::{Duration, Instant};

fn macvlan_lan(lab: &Lab) {
    lab.lan_network("lan", "macvlan", &[]);
}

fn bridge(lab: &Lab) {
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
}

/// `lanyard doctor --json` with `env`: its exit code and the checks it names.
fn doctor(lab: &Lab, env: &[(&str, &str)]) -> (i32, Vec<(String, String)>) {
    let mut cmd = lab.lanyard_command(&["doctor", "--json"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let found = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap().to_string(),
                format!("{} {} {}", f["subject"], f["problem"], f["fix"]),
            )
        })
        .collect();
    (out.status.code().unwrap_or(-1), found)
}

/// Asserts doctor exits 1 and names `check`, with `words` in what it says.
fn finds(lab: &Lab, env: &[(&str, &str)], check: &str, words: &[&str]) {
    let (code, found) = doctor(lab, env);
    let hit = found.iter().find(|(c, _)| c == check);
    let Some((_, said)) = hit else {
        panic!("doctor did not find {check}: {found:#?}");
    };
    assert_eq!(code, 1);
    for w in words {
        assert!(said.contains(w), "{check}: {w:?} not in {said}");
    }
}

#[test]
fn doctor_finds_nothing_wrong_in_a_healthy_lab() {
    let lab = lab!();
    macvlan_lan(&lab);
    bridge(&lab);
    lab.attach("lan", &lab.netns("c1"), &[]);
    lab.attach("br", &lab.netns("c2"), &["-p", "8080:80"]);
    assert_eq!(doctor(&lab, &[]), (0, vec![]));
    assert!(lab.lanyard_ok(&["doctor"]).contains("no problems found"));
}

#[test]
fn doctor_finds_broken_host_access_and_a_gone_namespace() {
    let lab = lab!();
    macvlan_lan(&lab);
    let a1 = addr_of(&lab.attach("lan", &lab.netns("c1"), &[]), false);
    let host = lab.host();
    host.ip(&["route", "del", &format!("{a1}/32")]);
    finds(&lab, &[], "host-access", &[&a1, "lanyard restore"]);
    lab.lanyard_ok(&["restore"]);
    assert_eq!(doctor(&lab, &[]).0, 0, "restore repaired it");

    // A namespace held by a process that exits.
    let mut holder = host.spawn(&["unshare", "-n", "sleep", "30"]);
    let pid = holder.pid().to_string();
    let end = Instant::now() + Duration::from_secs(5);
    let own_ns = || {
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    // Still in the test's namespace (nsenter not yet in) or the host's (unshare not yet).
    let test_ns = std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    while own_ns() == host.inode() || own_ns() == test_ns {
        assert!(Instant::now() < end, "unshare -n did not happen");
        std::thread::sleep(Duration::from_millis(10));
    }
    lab.lanyard_ok(&["attach", "lan", "--pid", &pid, "--name", "gone"]);
    holder.kill();
    finds(&lab, &[], "namespace-gone", &["gone", "lanyard gc"]);
    lab.lanyard_ok(&["gc"]);
    assert_eq!(doctor(&lab, &[]).0, 0, "gc repaired it");
}

#[test]
fn doctor_finds_a_parent_without_carrier_and_a_wireless_parent() {
    let lab = lab!();
    macvlan_lan(&lab);
    let sysfs = lab.dir().join("sys");
    std::fs::create_dir_all(sysfs.join("class/net/eth0/wireless")).unwrap();
    let fake = sysfs.to_string_lossy().to_string();
    finds(
        &lab,
        &[("LANYARD_SYSFS", &fake)],
        "wireless-parent",
        &["eth0", "ipvlan"],
    );
    lab.lan().ip(&["link", "set", "lan0", "down"]);
    finds(&lab, &[], "parent-down", &["eth0", "carrier"]);
    lab.host().ip(&["link", "set", "eth0", "down"]);
    finds(
        &lab,
        &[],
        "parent-down",
        &["eth0", "is down", "ip link set eth0 up"],
    );
}

#[test]
fn doctor_finds_a_route_over_a_subnet_a_missing_firewall_and_forwarding_off() {
    let lab = lab!();
    bridge(&lab);
    lab.attach("br", &lab.netns("c1"), &[]);
    let host = lab.host();
    host.ip(&["route", "add", "203.0.113.0/25", "via", addr::ROUTER_V4]);
    finds(
        &lab,
        &[],
        "route-overlap",
        &["203.0.113.0/25", "203.0.113.0/24"],
    );
    host.ip(&["route", "del", "203.0.113.0/25"]);
    host.ok(&["nft", "delete", "table", "inet", "lanyard"]);
    finds(
        &lab,
        &[],
        "firewall",
        &["table inet lanyard missing", "lanyard restore"],
    );
    lab.lanyard_ok(&["restore"]);
    host.sysctl("net.ipv4.ip_forward", "0");
    finds(&lab, &[], "forwarding", &["net.ipv4.ip_forward"]);
    lab.lanyard_ok(&["restore"]);
    assert_eq!(doctor(&lab, &[]).0, 0, "restore repaired both");
}

#[test]
fn doctor_finds_an_endpoint_address_another_lan_host_holds() {
    let lab = lab!();
    macvlan_lan(&lab);
    let a1 = addr_of(&lab.attach("lan", &lab.netns("c1"), &[]), false);
    let lan = lab.lan();
    lan.ip(&["addr", "add", &format!("{a1}/32"), "dev", "lan0"]);
    let router_mac = lan.ip_json(&["link", "show", "lan0"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    finds(&lab, &[], "duplicate-address", &[&a1, &router_mac]);
}

#[test]
fn doctor_says_when_dhcp_networks_have_no_daemon_to_renew_their_leases() {
    let lab = lab!();
    lab.lanyard_ok(&[
        "network",
        "create",
        "dh",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0",
        "--ipam-driver",
        "dhcp",
    ]);
    finds(&lab, &[], "daemon", &["not running"]);
}

/// An IPv6 address another LAN host already holds: the attach does not wait for
/// duplicate address detection (the address is usable at once, `optimistic`), DAD
/// runs behind it, and doctor names the address it failed for. A free address is
/// optimistic at first and passes.
#[test]
fn an_ipv6_address_another_lan_host_holds_is_not_waited_for_and_doctor_reports_it() {
    let lab = lab!();
    lab.lan().ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:1::77/64",
        "dev",
        "lan0",
        "nodad",
    ]);
    lab.lan_network("lan", "macvlan", &["--ipv6", "--subnet", addr::LAN_V6]);
    let c1 = lab.netns("c1");
    lab.attach("lan", &c1, &["--ip6", "2001:db8:1::66"]);
    let fresh = c1.ip(&["-6", "addr", "show", "dev", "eth0", "scope", "global"]);
    assert!(
        fresh.contains("2001:db8:1::66/64") && fresh.contains("optimistic"),
        "a free address is optimistic while DAD runs: {fresh}"
    );
    let c2 = lab.netns("c2");
    lab.attach("lan", &c2, &["--ip6", "2001:db8:1::77", "--name", "dup"]);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let a = c2.ip(&["-6", "addr", "show", "dev", "eth0", "scope", "global"]);
        if a.contains("dadfailed") {
            break;
        }
        assert!(Instant::now() < end, "DAD never failed: {a}");
        std::thread::sleep(Duration::from_millis(100));
    }
    finds(&lab, &[], "duplicate-address", &["dup", "2001:db8:1::77"]);
    // The free address passes DAD (about a second) and stays.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = c1.ip(&["-6", "addr", "show", "dev", "eth0", "scope", "global"]);
        assert!(!ok.contains("dadfailed"), "{ok}");
        if ok.contains("2001:db8:1::66/64") && !ok.contains("tentative") {
            break;
        }
        assert!(Instant::now() < end, "DAD never ended: {ok}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, found) = doctor(&lab, &[]);
    assert_eq!(
        found
            .iter()
            .filter(|(c, _)| c == "duplicate-address")
            .count(),
        1,
        "{found:#?}"
    );
}
