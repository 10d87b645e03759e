//! Self-tests of the lab harness: the lab's network works, nothing outlives a lab, and
//! the kernel VM has the links the `vm_` tests rely on.

use crate::harness::{self, addr, lab, NETNS_DIR};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Those of `names` that still exist.
fn existing(names: &[String]) -> Vec<&String> {
    names
        .iter()
        .filter(|n| Path::new(NETNS_DIR).join(n).exists())
        .collect()
}

#[test]
fn router_and_host_ping_each_other_over_v4_and_v6() {
    let lab = lab!();
    let (lan, host) = (lab.lan(), lab.host());
    for a in [
        addr::ROUTER_V4,
        addr::ROUTER_V6,
        addr::ROUTER2_V4,
        addr::ROUTER2_V6,
    ] {
        assert!(host.ping(a), "host cannot ping the router at {a}");
    }
    for a in [addr::HOST_V4, addr::HOST_V6] {
        assert!(lan.ping(a), "router cannot ping the host at {a}");
    }
    assert_eq!(host.links(), ["eth0", "lo"].map(String::from).into());
}

#[test]
fn lab_namespaces_processes_and_temp_dir_are_gone_after_drop() {
    let lab = lab!();
    let c1 = lab.netns("c1");
    // A process the test forgot about: the lab's Drop must still kill it.
    let mut leaked = c1
        .command(&["sleep", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let in_c1 = || {
        let ns = std::fs::metadata(format!("/proc/{}/ns/net", leaked.id()));
        ns.ok().map(|m| m.ino()) == c1.inode()
    };
    let end = Instant::now() + Duration::from_secs(5);
    while !in_c1() {
        assert!(Instant::now() < end, "sleep never entered {}", c1.name());
        std::thread::sleep(Duration::from_millis(5));
    }
    let names = lab.namespaces();
    let dir = lab.dir().to_path_buf();
    assert_eq!(names.len(), 3);
    assert!(existing(&names).len() == 3 && dir.is_dir());
    drop(lab);
    assert!(
        existing(&names).is_empty(),
        "left behind: {:?}",
        existing(&names)
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    let end = Instant::now() + Duration::from_secs(5);
    while leaked.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < end,
            "process in a lab namespace survived the lab"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn lab_is_removed_when_the_test_panics() {
    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = lab!();
        lab.netns("c1");
        names = lab.namespaces();
        panic!("the test fails");
    }));
    if names.is_empty() {
        return; // no lab here (skipped)
    }
    assert!(result.is_err());
    assert!(
        existing(&names).is_empty(),
        "left behind: {:?}",
        existing(&names)
    );
}

#[test]
fn stale_namespaces_of_dead_test_processes_are_removed() {
    let lab = lab!();
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead_pid = child.id();
    child.wait().expect("wait");
    let stale = format!("lyt-{dead_pid}t1-host");
    let status = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .expect("ip netns add");
    assert!(status.success());
    harness::cleanup_stale();
    let survived = Path::new(NETNS_DIR).join(&stale).exists();
    if survived {
        let _ = Command::new("ip").args(["netns", "del", &stale]).status();
    }
    assert!(
        !survived,
        "{stale} of dead process {dead_pid} survived cleanup_stale"
    );
    // Live labs (this one) are left alone.
    assert!(
        existing(&lab.namespaces()).len() == 2,
        "cleanup_stale removed a live lab"
    );
}

#[test]
fn vm_ipvlan_kernel_has_ipvlan() {
    let lab = lab!();
    lab.require_kernel("ipvlan");
    let (host, c1) = (lab.host(), lab.netns("c1"));
    host.ip(&[
        "link", "add", "ipv0", "link", "eth0", "type", "ipvlan", "mode", "l2",
    ]);
    host.ip(&["link", "set", "ipv0", "netns", c1.name()]);
    c1.ip(&["addr", "add", "192.0.2.10/24", "dev", "ipv0"]);
    c1.ip(&["addr", "add", "2001:db8:1::10/64", "dev", "ipv0", "nodad"]);
    c1.ip(&["link", "set", "ipv0", "up"]);
    assert!(
        c1.ping(addr::ROUTER_V4),
        "ipvlan l2 endpoint cannot ping the router"
    );
    assert!(
        c1.ping(addr::ROUTER_V6),
        "ipvlan l2 endpoint cannot ping the router over v6"
    );
}

#[test]
fn vm_vlan_kernel_has_8021q() {
    let lab = lab!();
    lab.require_kernel("vlan");
    let (lan, host) = (lab.lan(), lab.host());
    lan.ip(&[
        "link", "add", "link", "lan0", "name", "lan0.10", "type", "vlan", "id", "10",
    ]);
    lan.ip(&["addr", "add", "203.0.113.1/24", "dev", "lan0.10"]);
    lan.ip(&["link", "set", "lan0.10", "up"]);
    host.ip(&[
        "link", "add", "link", "eth0", "name", "eth0.10", "type", "vlan", "id", "10",
    ]);
    host.ip(&["addr", "add", "203.0.113.2/24", "dev", "eth0.10"]);
    host.ip(&["link", "set", "eth0.10", "up"]);
    assert!(
        host.ping("203.0.113.1"),
        "host cannot ping the router over VLAN 10"
    );
}

#[test]
fn vm_dummy_kernel_has_dummy() {
    let lab = lab!();
    lab.require_kernel("dummy");
    lab.host().ip(&["link", "add", "dummy0", "type", "dummy"]);
    assert!(lab.host().links().contains("dummy0"));
}

#[test]
fn vm_nftables_kernel_has_nat_and_masquerade() {
    let lab = lab!();
    lab.require_kernel("nftables");
    let rules = "table inet lyt {\n\
                 chain lyt_post { type nat hook postrouting priority srcnat; oifname \"eth0\" masquerade; }\n\
                 chain lyt_pre { type nat hook prerouting priority dstnat; tcp dport 8080 dnat ip to 192.0.2.9:80; }\n\
                 chain lyt_fwd { type filter hook forward priority filter; ct state established,related accept; fib daddr type local drop; }\n\
                 }\n";
    let file = lab.dir().join("rules.nft");
    std::fs::write(&file, rules).expect("write rules");
    let host = lab.host();
    host.ok(&["nft", "-f", &file.to_string_lossy()]);
    assert!(host
        .ok(&["nft", "list", "table", "inet", "lyt"])
        .contains("masquerade"));
}
