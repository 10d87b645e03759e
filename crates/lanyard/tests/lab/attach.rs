//! The attach engine in a lab: endpoints on macvlan and bridge networks, host access
//! to macvlan endpoints, live attach/detach, `lanyard run`, rollback on a real
//! kernel at every step, restore after a simulated reboot, gc.

use crate::harness::{addr, addr_of, exit, lab, Lab};
use std::time::Duration;

/// `lan`: macvlan on eth0 in the host's LAN (v4 from .128/25, and v6); `lan2`: macvlan
/// on the same parent in the LAN's second subnet.
fn two_macvlan_networks(lab: &Lab) {
    lab.lan_network(
        "lan",
        "macvlan",
        &[
            "--ipv6",
            "--subnet",
            addr::LAN_V6,
            "--gateway",
            addr::ROUTER_V6,
        ],
    );
    lab.lanyard_ok(&[
        "network",
        "create",
        "lan2",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0",
        "--subnet",
        addr::LAN2_V4,
        "--gateway",
        addr::ROUTER2_V4,
    ]);
}

fn endpoint_count(lab: &Lab) -> usize {
    lab.lanyard_json(&["endpoint", "ls"])
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn host_router_and_endpoints_of_two_macvlan_networks_on_one_parent_all_reach_each_other() {
    let lab = lab!(
        "host_router_and_endpoints_of_two_macvlan_networks_on_one_parent_all_reach_each_other"
    );
    two_macvlan_networks(&lab);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let e1 = lab.attach("lan", &c1, &[]);
    let e2 = lab.attach("lan2", &c2, &[]);
    let (a1, a1v6, a2) = (addr_of(&e1, false), addr_of(&e1, true), addr_of(&e2, false));
    assert!(a1.starts_with("192.0.2.1") && a1 != addr::HOST_V4, "{a1}");
    assert_ne!(a1v6, addr::HOST_V6, "the host's own address was handed out");
    let (host, lan) = (lab.host(), lab.lan());
    for a in [&a1, &a1v6, &a2] {
        assert!(host.ping(a), "host -> {a}");
        assert!(lan.ping(a), "router -> {a}");
    }
    assert!(
        c1.ping(addr::HOST_V4) && c1.ping(addr::HOST_V6),
        "c1 -> host"
    );
    assert!(c2.ping(addr::HOST_V4), "c2 (other subnet) -> host");
    assert!(c1.ping(&a2) && c2.ping(&a1), "endpoints reach each other");
}

#[test]
fn detach_is_idempotent_frees_the_name_address_and_host_route_at_once() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    let c1 = lab.netns("c1");
    let e = lab.attach("lan", &c1, &["--name", "web", "--ip", "192.0.2.200"]);
    assert_eq!(addr_of(&e, false), "192.0.2.200");
    assert!(lab.host().ip(&["route"]).contains("192.0.2.200"));
    lab.lanyard_ok(&["detach", "web"]);
    lab.lanyard_ok(&["detach", "web"]);
    assert!(
        !c1.links().contains("eth0"),
        "eth0 still in the namespace: {:?}",
        c1.links()
    );
    assert!(!lab.host().ip(&["route"]).contains("192.0.2.200"));
    // Same name, same address, same ifname, right away.
    let again = lab.attach("lan", &c1, &["--name", "web", "--ip", "192.0.2.200"]);
    assert_eq!(again["ifname"], "eth0");
    assert!(lab.host().ping("192.0.2.200"));
    let path = c1.path();
    lab.lanyard_ok(&["detach", "lan", "--netns", path.to_str().unwrap()]);
    assert_eq!(endpoint_count(&lab), 0);
    // The retired links (tombstones, lyx-…) are deleted by the worker each detach
    // left behind, after lanyard itself exited.
    tombstones_go(&c1);
}

#[test]
fn a_namespace_keeps_every_default_route_when_a_network_leaves_in_between() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let c1 = lab.netns("c1");
    let path = c1.path();
    lab.attach("lan", &c1, &[]);
    lab.attach("lan2", &c1, &[]);
    lab.lanyard_ok(&["detach", "lan", "--netns", path.to_str().unwrap()]);
    lab.attach("br", &c1, &[]);
    // Each endpoint its own metric: the bridge's default did not replace lan2's.
    let routes = c1.ip(&["-4", "route", "show", "default"]);
    assert_eq!(routes.lines().count(), 2, "{routes}");
    assert!(
        routes.contains(addr::ROUTER2_V4) && routes.contains("203.0.113.1"),
        "{routes}"
    );
}

#[test]
fn attaching_the_namespace_lanyard_runs_in_is_refused_and_the_host_keeps_its_routes() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    let host = lab.host();
    // Each link's addresses, without its operstate: a new shim's goes from UNKNOWN
    // to UP on its own, late under emulation.
    let addrs = || -> Vec<String> {
        host.ip(&["-br", "addr"])
            .lines()
            .map(|l| {
                let mut f = l.split_whitespace();
                let name = f.next().unwrap_or_default().to_string();
                f.skip(1).fold(name, |acc, a| acc + " " + a)
            })
            .collect()
    };
    let routes = host.ip(&["route"]);
    let before = addrs();
    let err = lab.lanyard_fails(&["attach", "lan", "--netns", "/proc/self/ns/net"], 2);
    assert!(err.contains("--netns"), "{err}");
    // The same namespace by a path any process understands (lanyard runs in the
    // lab host namespace).
    let err = lab.lanyard_fails(
        &["attach", "lan", "--netns", host.path().to_str().unwrap()],
        2,
    );
    assert!(err.contains("the namespace lanyard runs in"), "{err}");
    assert_eq!(host.ip(&["route"]), routes);
    assert_eq!(addrs(), before);
    assert_eq!(endpoint_count(&lab), 0);
}

#[test]
fn a_failed_detach_never_lets_the_next_attach_take_an_address_a_link_still_holds() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let (p1, p2) = (c1.path(), c2.path());
    let v4 = |ns: &crate::harness::Ns| ns.ip(&["-4", "-o", "addr", "show"]);
    let mut failed = 0;
    for step in 0..6 {
        let held = addr_of(&lab.attach("lan", &c1, &["--ip", "192.0.2.200"]), false);
        let mut cmd = lab.lanyard_command(&["detach", "lan", "--netns", p1.to_str().unwrap()]);
        cmd.env("LANYARD_FAIL_AT", step.to_string());
        let out = cmd.output().expect("run lanyard");
        if !out.status.success() {
            failed += 1;
            // Whatever c1 still holds, the next attach is not given it.
            let next = addr_of(&lab.attach("lan", &c2, &[]), false);
            assert!(
                next != held || !v4(&c1).contains(&format!(" {held}/")),
                "step {step}: {next} handed out while c1 still has it: {}",
                v4(&c1)
            );
            lab.lanyard_ok(&["detach", "lan", "--netns", p2.to_str().unwrap()]);
            lab.lanyard_ok(&["gc"]);
        }
        assert_eq!(
            endpoint_count(&lab),
            0,
            "step {step}: gc finished the detach"
        );
        assert!(!v4(&c1).contains("192.0.2.200"), "step {step}: {}", v4(&c1));
    }
    assert!(failed > 0, "no step failed: LANYARD_FAIL_AT had no effect");
}

#[test]
fn gc_deletes_tombstones_a_reaper_missed_inside_endpoint_namespaces() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    let c1 = lab.netns("c1");
    lab.attach("lan", &c1, &[]);
    // What a detach killed before its reaper ran leaves behind.
    c1.ip_batch(&["link add lyx-0badf00d type veth peer name lyx-0badf00e"]);
    lab.lanyard_ok(&["gc"]);
    let left: Vec<String> = c1
        .links()
        .into_iter()
        .filter(|l| l.starts_with("lyx-"))
        .collect();
    assert!(left.is_empty(), "tombstones left in c1: {left:?}");
    assert!(c1.links().contains("eth0"), "the endpoint itself stays");
}

#[test]
fn the_default_interface_name_is_the_next_eth_free_in_the_namespace() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    let c1 = lab.netns("c1");
    // An eth0 lanyard did not make (another tool's, or the runtime's).
    c1.ip_batch(&["link add eth0 type veth peer name peer0"]);
    let ep = lab.attach("lan", &c1, &[]);
    assert_eq!(ep["ifname"], "eth1", "{ep}");
    assert!(c1.links().contains("eth1"));
}

/// Waits (up to 10 s) until `ns` has no tombstone (`lyx-…`) left.
fn tombstones_go(ns: &crate::harness::Ns) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ns.links().iter().any(|l| l.starts_with("lyx-")) {
        assert!(
            std::time::Instant::now() < deadline,
            "tombstones left: {:?}",
            ns.links()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `detach --netns` of `c1` from `lan`, with the kernel layer's debug log; its stderr.
fn detach_logged(lab: &Lab, c1: &crate::harness::Ns) -> String {
    let path = c1.path();
    let mut cmd = lab.lanyard_command(&["detach", "lan", "--netns", path.to_str().unwrap()]);
    // The CLI's own detach (a daemon up would otherwise run the whole verb itself).
    cmd.env("LANYARD_LOG", "lanyard_kernel=debug")
        .env("LANYARD_NO_DAEMON", "1");
    let out = cmd.output().expect("run lanyard");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "detach failed: {err}");
    err
}

#[test]
fn with_the_daemon_up_detach_hands_its_tombstone_over_and_without_it_forks() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    let c1 = lab.netns("c1");
    let mut daemon = lab.daemon(&[]);
    let err = lab.lanyard_fails(&["daemon"], exit::CONFLICT);
    assert!(err.contains("another lanyard daemon is running"), "{err}");

    lab.attach("lan", &c1, &[]);
    let err = detach_logged(&lab, &c1);
    assert!(err.contains("handed to the daemon"), "{err}");
    tombstones_go(&c1);
    assert!(daemon.is_running(), "daemon died: {}", daemon.stderr());

    // Killed hard, the daemon leaves its socket file: detaches notice and fork.
    daemon.kill();
    assert!(lab.run_dir().join("daemon.sock").exists());
    lab.attach("lan", &c1, &[]);
    let err = detach_logged(&lab, &c1);
    assert!(err.contains("did not take tombstones"), "{err}");
    tombstones_go(&c1);
    // A new daemon takes the stale socket over.
    let _again = lab.daemon(&[]);
}

#[test]
fn bridge_endpoints_reach_each_other_the_gateway_and_the_host() {
    let lab = lab!();
    lab.lanyard_ok(&[
        "network",
        "create",
        "br",
        "--subnet",
        "203.0.113.0/24",
        "--ipv6",
        "--subnet",
        "2001:db8:5::/64",
        "-o",
        "mtu=1400",
    ]);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let e1 = lab.attach("br", &c1, &[]);
    let e2 = lab.attach("br", &c2, &["--mac", "02:42:cb:00:71:0a"]);
    assert!(c1.ping(&addr_of(&e2, false)) && c1.ping(&addr_of(&e2, true)));
    assert!(c2.ping("203.0.113.1") && lab.host().ping(&addr_of(&e1, false)));
    let link = &c2.ip_json(&["link", "show", "eth0"])[0];
    assert_eq!(link["address"], "02:42:cb:00:71:0a");
    assert_eq!(link["mtu"], 1400);
}

#[test]
fn attach_and_detach_work_live_while_a_process_runs_inside() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let c1 = lab.netns("c1");
    let mut sleeper = c1.spawn(&["sleep", "600"]);
    lab.attach("lan", &c1, &[]);
    let e = lab.attach("br", &c1, &[]);
    assert_eq!(e["ifname"], "eth1");
    assert!(c1.links().contains("eth1"));
    lab.lanyard_ok(&["detach", "br", "--netns", c1.path().to_str().unwrap()]);
    assert!(!c1.links().contains("eth1") && c1.links().contains("eth0"));
    assert!(sleeper.is_running(), "the process inside was disturbed");
    assert!(
        c1.ping(addr::ROUTER_V4),
        "eth0 still routes after eth1 went"
    );

    // The same namespace by another path (the process's): it is known by its
    // identity, not by the path it was attached by.
    let pid = sleeper.pid().to_string();
    let proc_path = format!("/proc/{pid}/ns/net");
    let err = lab.lanyard_fails(&["attach", "lan", "--pid", &pid], exit::CONFLICT);
    assert!(err.contains("is already on network lan"), "{err}");
    let e = lab.lanyard_json(&["attach", "lan2", "--pid", &pid, "--json"]);
    assert_eq!(e["ifname"], "eth1");
    lab.lanyard_ok(&["detach", "lan2", "--netns", c1.path().to_str().unwrap()]);
    lab.lanyard_ok(&["detach", "lan", "--netns", &proc_path]);
    assert!(!c1.links().contains("eth0") && !c1.links().contains("eth1"));
    assert_eq!(endpoint_count(&lab), 0);
    assert!(sleeper.is_running(), "the process inside was disturbed");
}

#[test]
fn lanyard_run_attaches_a_fresh_namespace_passes_the_exit_status_and_cleans_up() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    let out = lab.lanyard(&[
        "run",
        "--network",
        "lan",
        "--network",
        "lan2",
        "--ip",
        "192.0.2.150",
        "--",
        "ip",
        "-br",
        "addr",
    ]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}");
    assert!(
        s.contains("192.0.2.150/24") && s.contains("eth1") && s.contains("198.51.100."),
        "{s}"
    );
    assert_eq!(
        lab.lanyard(&["run", "--network", "lan", "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    assert_eq!(endpoint_count(&lab), 0, "run left endpoints behind");
    assert!(!lab.host().ip(&["route"]).contains("192.0.2.150"));
    // none: loopback only; host: the host's own links.
    let none = lab.lanyard_ok(&["run", "--network", "none", "--", "ip", "-br", "link"]);
    assert!(none.contains("lo") && !none.contains("eth0"), "{none}");
    // The command starts with default signal dispositions: lanyard ignores SIGPIPE
    // for itself, its command must not inherit that (`yes | head` must end).
    let status = lab.lanyard_ok(&["run", "--network", "none", "--", "cat", "/proc/self/status"]);
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("SigIgn line");
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE ignored: {ignored:x}"
    );
    let host = lab.lanyard_ok(&["run", "--network", "host", "--", "ip", "-br", "link"]);
    assert!(host.contains("eth0"), "{host}");
    lab.lanyard_fails(
        &["run", "--network", "nosuch", "--", "true"],
        exit::NOT_FOUND,
    );
}

#[test]
fn run_with_container_network_joins_a_named_endpoint() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    let web = lab.lanyard_spawn(&[
        "run",
        "--network",
        "lan",
        "--name",
        "web",
        "--ip",
        "192.0.2.140",
        "--",
        "sleep",
        "600",
    ]);
    let ready = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        lab.lanyard_json(&["endpoint", "ls"])
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["state"] == "active"))
    });
    assert!(ready, "web never came up: {}", web.stderr());
    let joined = lab.lanyard_ok(&[
        "run",
        "--network",
        "container:web",
        "--",
        "ip",
        "-br",
        "addr",
    ]);
    assert!(joined.contains("192.0.2.140"), "{joined}");
    assert!(lab.lan().ping("192.0.2.140"));
    // SIGTERM to lanyard run reaches the command; lanyard then cleans up.
    // SAFETY: plain kill of our own child.
    unsafe { libc::kill(web.pid() as i32, libc::SIGTERM) };
    let out = web.finish(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
    assert_eq!(endpoint_count(&lab), 0);
}

#[test]
fn a_non_root_server_binds_port_80_with_unprivileged_port_start() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    // As uid 65534: a server on port 80, and a client that must get through to it
    // (exit 0); if the bind is refused, every connect fails (exit 1).
    const SERVE: &str = "socat -u TCP-LISTEN:80,reuseaddr OPEN:/dev/null & s=$!; trap 'kill $s 2>/dev/null' EXIT; \
        for i in $(seq 25); do socat -u OPEN:/dev/null TCP:127.0.0.1:80 2>/dev/null && exit 0; sleep 0.2; done; exit 1";
    let serve = |extra: &[&str]| {
        let mut args = vec!["run", "--network", "lan", "--user", "65534:65534"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", SERVE]);
        lab.lanyard(&args).status.code()
    };
    assert_eq!(
        serve(&["--unprivileged-port-start", "80"]),
        Some(0),
        "uid 65534 could not bind port 80"
    );
    assert_eq!(
        serve(&[]),
        Some(1),
        "nobody bound port 80 without the sysctl?"
    );
}

#[test]
fn a_failure_at_any_kernel_step_leaves_store_and_kernel_as_before() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let c1 = lab.netns("c1");
    let path = c1.path();
    // The bridge's carrier (shown as "linkdown") settles asynchronously after a port
    // comes and goes; the routes themselves must be the same.
    let routes = || lab.host().ip(&["route"]).replace(" linkdown", "");
    for net in ["lan", "br"] {
        let host_routes = routes();
        let host_links = lab.host().links();
        let mut step = 0;
        loop {
            let mut cmd = lab.lanyard_command(&["attach", net, "--netns", path.to_str().unwrap()]);
            cmd.env("LANYARD_FAIL_AT", step.to_string());
            let out = cmd.output().expect("run lanyard");
            if out.status.success() {
                break; // past the last step: nothing failed
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("injected failure"), "{net} step {step}: {err}");
            assert_eq!(endpoint_count(&lab), 0, "{net} step {step}: store changed");
            assert_eq!(
                c1.links(),
                ["lo".to_string()].into(),
                "{net} step {step}: namespace changed"
            );
            assert_eq!(
                routes(),
                host_routes,
                "{net} step {step}: host routes changed"
            );
            assert_eq!(
                lab.host().links(),
                host_links,
                "{net} step {step}: host links changed"
            );
            step += 1;
        }
        assert!(step >= 4, "{net}: only {step} steps?");
        lab.lanyard_ok(&["detach", net, "--netns", path.to_str().unwrap()]);
    }
    // A multicast MAC is refused before anything happens.
    lab.lanyard_fails(
        &[
            "attach",
            "lan",
            "--netns",
            path.to_str().unwrap(),
            "--mac",
            "01:02:03:04:05:06",
        ],
        exit::USAGE,
    );
    // A parent that vanished after the network was made.
    lab.host()
        .ip(&["link", "add", "p1", "type", "veth", "peer", "name", "p1b"]);
    lab.lanyard_ok(&[
        "network",
        "create",
        "gone",
        "-d",
        "macvlan",
        "-o",
        "parent=p1",
        "--subnet",
        "198.51.100.0/25",
        "-o",
        "host_access=off",
    ]);
    lab.host().ip(&["link", "del", "p1"]);
    let err = lab.lanyard_fails(
        &["attach", "gone", "--netns", path.to_str().unwrap()],
        exit::USAGE,
    );
    assert!(err.contains("p1"), "{err}");
    assert_eq!(endpoint_count(&lab), 0);
    assert_eq!(c1.links(), ["lo".to_string()].into());
}

#[test]
fn restore_after_a_simulated_reboot_brings_back_shims_bridges_and_endpoints() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let (c1, c2, c3) = (lab.netns("c1"), lab.netns("c2"), lab.netns("c3"));
    let e1 = lab.attach("lan", &c1, &[]);
    let e2 = lab.attach("br", &c2, &[]);
    lab.attach("lan2", &c3, &[]);
    let (a1, a2) = (addr_of(&e1, false), addr_of(&e2, false));
    // "Reboot": lanyard's host-side links and routes vanish; one container's link too;
    // one container does not come back at all.
    let host = lab.host();
    for l in host.links().into_iter().filter(|l| l.starts_with("ly")) {
        host.ip(&["link", "del", &l]);
    }
    c1.ip(&["link", "del", "eth0"]);
    std::process::Command::new("ip")
        .args(["netns", "del", c3.name()])
        .status()
        .expect("ip netns del");
    assert!(!host.ping(&a1) && !host.ping(&a2));
    let report = lab.lanyard_ok(&["restore"]);
    assert!(report.contains("restored"), "{report}");
    assert!(
        host.ping_within(&a1, Duration::from_secs(3)),
        "host -> restored macvlan endpoint"
    );
    assert!(
        host.ping_within(&a2, Duration::from_secs(3)),
        "host -> restored bridge endpoint"
    );
    assert!(lab.lan().ping(&a1));
    assert_eq!(
        endpoint_count(&lab),
        2,
        "the endpoint whose namespace is gone was not forgotten"
    );
}

#[test]
fn gc_forgets_endpoints_whose_namespace_is_gone_and_frees_the_address() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    let c1 = lab.netns("c1");
    lab.attach("lan", &c1, &["--ip", "192.0.2.222"]);
    std::process::Command::new("ip")
        .args(["netns", "del", c1.name()])
        .status()
        .expect("ip netns del");
    let report = lab.lanyard_ok(&["gc"]);
    assert!(report.contains("namespace is gone"), "{report}");
    assert_eq!(endpoint_count(&lab), 0);
    assert!(!lab.host().ip(&["route"]).contains("192.0.2.222"));
    let c2 = lab.netns("c2");
    lab.attach("lan", &c2, &["--ip", "192.0.2.222"]);
}

#[test]
fn host_access_survives_the_parent_going_down_and_up() {
    let lab = lab!();
    two_macvlan_networks(&lab);
    let c1 = lab.netns("c1");
    let e = lab.attach("lan", &c1, &[]);
    let (v4, v6) = (addr_of(&e, false), addr_of(&e, true));
    let host = lab.host();
    host.ip(&["link", "set", "eth0", "down"]);
    host.ip(&["link", "set", "eth0", "up"]);
    assert!(
        host.ping_within(&v4, Duration::from_secs(5)),
        "host -> {v4} after flap"
    );
    assert!(
        host.ping_within(&v6, Duration::from_secs(5)),
        "host -> {v6} after flap"
    );
    assert!(
        c1.ping_within(addr::HOST_V6, Duration::from_secs(5)),
        "endpoint -> host v6 after flap"
    );
}

#[test]
fn macvlan_private_mode_keeps_endpoints_apart_and_passthru_takes_the_parent() {
    let lab = lab!();
    lab.lanyard_ok(&[
        "network",
        "create",
        "p",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0",
        "-o",
        "macvlan_mode=private",
        "--subnet",
        addr::LAN_V4,
        "--ip-range",
        "192.0.2.128/25",
    ]);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let a1 = addr_of(&lab.attach("p", &c1, &[]), false);
    let a2 = addr_of(&lab.attach("p", &c2, &[]), false);
    assert!(
        lab.lan().ping(&a1) && lab.lan().ping(&a2),
        "the LAN reaches private endpoints"
    );
    assert!(!c1.ping(&a2), "private endpoints reached each other");
    let link = &c1.ip_json(&["-d", "link", "show", "eth0"])[0];
    assert_eq!(link["linkinfo"]["info_data"]["mode"], "private");
    // vepa: created with that mode.
    lab.lanyard_ok(&[
        "network",
        "create",
        "v",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0",
        "-o",
        "macvlan_mode=vepa",
        "--subnet",
        addr::LAN2_V4,
    ]);
    let c3 = lab.netns("c3");
    lab.attach("v", &c3, &[]);
    assert_eq!(
        c3.ip_json(&["-d", "link", "show", "eth0"])[0]["linkinfo"]["info_data"]["mode"],
        "vepa"
    );
    // passthru on a parent of its own.
    lab.host()
        .ip(&["link", "add", "p2", "type", "veth", "peer", "name", "p2b"]);
    lab.lanyard_ok(&[
        "network",
        "create",
        "pt",
        "-d",
        "macvlan",
        "-o",
        "parent=p2",
        "-o",
        "macvlan_mode=passthru",
        "--subnet",
        "203.0.113.0/24",
    ]);
    let c4 = lab.netns("c4");
    lab.attach("pt", &c4, &[]);
    assert_eq!(
        c4.ip_json(&["-d", "link", "show", "eth0"])[0]["linkinfo"]["info_data"]["mode"],
        "passthru"
    );
}

#[test]
fn ipvlan_attach_works_or_says_the_kernel_lacks_it() {
    let lab = lab!();
    lab.lanyard_ok(&[
        "network",
        "create",
        "iv",
        "-d",
        "ipvlan",
        "-o",
        "parent=eth0",
        "--subnet",
        addr::LAN_V4,
        "--ip-range",
        "192.0.2.128/25",
        "-o",
        "host_access=off",
    ]);
    let c1 = lab.netns("c1");
    let out = lab.lanyard(&["attach", "iv", "--netns", c1.path().to_str().unwrap()]);
    let has_ipvlan = std::path::Path::new("/sys/module/ipvlan").exists() || out.status.success();
    if has_ipvlan {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        assert_eq!(out.status.code(), Some(exit::UNSUPPORTED));
        assert!(String::from_utf8_lossy(&out.stderr).contains("kernel has no ipvlan support"));
        assert_eq!(endpoint_count(&lab), 0);
        assert_eq!(c1.links(), ["lo".to_string()].into());
    }
}

#[test]
fn attach_refuses_reserved_interface_names_and_one_port_twice_changing_nothing() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let c1 = lab.netns("c1");
    let p = c1.path();
    let ns = p.to_str().unwrap();
    for name in ["lo", "all", "default", "eth%d"] {
        let err = lab.lanyard_fails(
            &["attach", "br", "--netns", ns, "--ifname", name],
            exit::USAGE,
        );
        assert!(err.contains("--ifname"), "{name}: {err}");
    }
    let err = lab.lanyard_fails(
        &[
            "attach", "br", "--netns", ns, "-p", "8080:80", "-p", "8080:81",
        ],
        exit::USAGE,
    );
    assert!(err.contains("--publish"), "{err}");
    assert_eq!(
        lab.lanyard_json(&["endpoint", "ls"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(c1.links().len(), 1, "only lo in the namespace");
}

#[test]
fn a_netns_path_that_is_not_a_network_namespace_is_refused_naming_netns() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let file = lab.dir().join("not-a-namespace");
    std::fs::write(&file, "x").unwrap();
    for path in [file.to_str().unwrap(), "/proc/1/ns/mnt"] {
        let err = lab.lanyard_fails(&["attach", "br", "--netns", path], exit::USAGE);
        assert!(err.contains("--netns"), "{path}: {err}");
    }
    assert!(lab
        .lanyard_json(&["endpoint", "ls"])
        .as_array()
        .unwrap()
        .is_empty());
}
