//! DHCP networks (`--ipam-driver dhcp`) against Debian's dnsmasq in the lab's LAN
//! namespace: leases taken by the CLI with no daemon, distinct per endpoint,
//! released on detach, renewed by `lanyard daemon`, asked for again after a daemon
//! restart and `restore`; no server → a clean failure.

use crate::harness::{addr_of, exit, lab, Bg, Lab};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// dnsmasq serving the lab's LAN (`lan0` in the router namespace): addresses
/// .100-.150, leases of `lease` (dnsmasq's minimum is 2 minutes), router .1.
struct Dnsmasq {
    _bg: Bg,
    leases: PathBuf,
}

fn dnsmasq(lab: &Lab, lease: &str) -> Dnsmasq {
    dnsmasq_with(lab, lease, &[])
}

fn dnsmasq_with(lab: &Lab, lease: &str, extra: &[&str]) -> Dnsmasq {
    dnsmasq_range(lab, "192.0.2.100,192.0.2.150", lease, extra)
}

/// dnsmasq on the LAN handing out `range` ("FIRST,LAST"), authoritative: a request
/// for an address outside it gets a NAK. Its lease file is the lab's, whichever
/// dnsmasq ran before.
fn dnsmasq_range(lab: &Lab, range: &str, lease: &str, extra: &[&str]) -> Dnsmasq {
    let leases = lab.dir().join("dnsmasq.leases");
    let pid = lab.dir().join("dnsmasq.pid");
    let _ = std::fs::remove_file(&pid);
    let range = format!("--dhcp-range={range},255.255.255.0,{lease}");
    let leasefile = format!("--dhcp-leasefile={}", leases.display());
    let pidfile = format!("--pid-file={}", pid.display());
    let mut args = vec![
        "dnsmasq",
        "--keep-in-foreground",
        "--log-facility=-",
        "--conf-file=/dev/null",
        "--port=0",
        "--user=root",
        "--interface=lan0",
        "--bind-interfaces",
        &range,
        "--dhcp-option=option:router,192.0.2.1",
        "--dhcp-option=option:dns-server,192.0.2.53",
        "--dhcp-option=option:domain-name,lan.example",
        "--dhcp-authoritative",
        "--log-dhcp",
        &leasefile,
        &pidfile,
    ];
    args.extend_from_slice(extra);
    let bg = lab.lan().spawn(&args);
    bg.wait_for_file(&pid, "dnsmasq");
    Dnsmasq { _bg: bg, leases }
}

impl Dnsmasq {
    /// The lease file's lines (`EXPIRY MAC IP HOSTNAME CLIENTID`).
    fn leases(&self) -> String {
        std::fs::read_to_string(&self.leases).unwrap_or_default()
    }

    fn wait_until(&self, what: &str, within: Duration, cond: impl Fn(&str) -> bool) {
        let end = Instant::now() + within;
        while !cond(&self.leases()) {
            assert!(Instant::now() < end, "{what}; leases:\n{}", self.leases());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The host's uplink moved into its own bridge br0, and `ext`, a DHCP network on
/// that bridge (`bridge_external`); returns the host.
fn ext_on_br0(lab: &Lab) -> crate::harness::Ns {
    let host = lab.host();
    crate::recipes::uplink_in_br0(&host);
    lab.lanyard_ok(&[
        "network",
        "create",
        "ext",
        "-o",
        "bridge=br0",
        "-o",
        "bridge_external=true",
        "--ipam-driver",
        "dhcp",
    ]);
    host
}

fn dhcp_network(lab: &Lab, extra: &[&str]) {
    let mut args = vec![
        "network",
        "create",
        "dlan",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0",
        "--ipam-driver",
        "dhcp",
    ];
    args.extend_from_slice(extra);
    lab.lanyard_ok(&args);
}

#[test]
fn an_attach_takes_its_address_from_the_lan_server_and_the_detach_releases_it() {
    let lab = lab!();
    let server = dnsmasq(&lab, "2m");
    dhcp_network(&lab, &[]);
    let c1 = lab.netns("c1");
    let ep = lab.attach("dlan", &c1, &["--name", "web"]);
    let ip = addr_of(&ep, false);
    let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!((100..=150).contains(&last), "{ep}");
    assert_eq!(ep["gateways"][0], "192.0.2.1", "{ep}");
    assert_eq!(ep["lease"]["dns"][0], "192.0.2.53", "{ep}");
    assert_eq!(ep["lease"]["domain"], "lan.example", "{ep}");
    let leases = server.leases();
    assert!(
        leases.contains(&format!(" {ip} web ")),
        "hostname sent: {leases}"
    );
    // The lease is in the store, and the container reaches the LAN by it.
    let stored = lab.lanyard_json(&["endpoint", "inspect", "web"]);
    assert_eq!(stored["lease"]["address"], ip.as_str());
    assert!(c1.ping("192.0.2.1"));
    let routes = c1.ip(&["route", "show", "default"]);
    assert!(routes.contains("via 192.0.2.1"), "{routes}");

    // A second endpoint (another ClientID) gets another address.
    let c2 = lab.netns("c2");
    let p2 = c2.path();
    let out = lab.lanyard(&["attach", "dlan", "--netns", p2.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("no lanyard daemon is running"), "{note}");
    let ep2: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(addr_of(&ep2, false), ip);

    lab.lanyard_ok(&["detach", "web"]);
    server.wait_until("lease released on detach", Duration::from_secs(5), |l| {
        !l.contains(&format!(" {ip} "))
    });
}

#[test]
fn with_no_server_an_attach_fails_after_the_timeout_and_leaves_nothing() {
    let lab = lab!();
    dhcp_network(&lab, &["-o", "dhcp_timeout=0.5"]);
    let c1 = lab.netns("c1");
    let path = c1.path();
    let start = Instant::now();
    let err = lab.lanyard_fails(
        &["attach", "dlan", "--netns", path.to_str().unwrap()],
        exit::ERROR,
    );
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert!(err.contains("no DHCP server answered within 0.5s"), "{err}");
    assert!(err.contains("nothing was attached"), "{err}");
    let links = c1.links();
    assert!(!links.contains("eth0"), "link left behind: {links:?}");
    assert_eq!(lab.lanyard_json(&["endpoint", "ls"]), serde_json::json!([]));
}

#[test]
fn address_options_do_not_go_with_dhcp() {
    let lab = lab!();
    let err = lab.lanyard_fails(
        &[
            "network",
            "create",
            "dlan",
            "-d",
            "macvlan",
            "-o",
            "parent=eth0",
            "--ipam-driver",
            "dhcp",
            "--subnet",
            "192.0.2.0/24",
        ],
        exit::USAGE,
    );
    assert!(err.contains("--subnet"), "{err}");
    let err = lab.lanyard_fails(
        &["network", "create", "b", "--ipam-driver", "dhcp"],
        exit::USAGE,
    );
    assert!(err.contains("bridge_external=true"), "{err}");
}

#[test]
fn the_daemon_renews_leases_and_asks_for_the_same_address_after_a_restart_and_restore() {
    let lab = lab!();
    // T1 5 s, T2 8 s of a 2-minute lease: a renewal within the test.
    let server = dnsmasq_with(
        &lab,
        "2m",
        &["--dhcp-option=option:T1,5", "--dhcp-option=option:T2,8"],
    );
    dhcp_network(&lab, &[]);
    let c1 = lab.netns("c1");
    let ep = lab.attach("dlan", &c1, &["--name", "web"]);
    let ip = addr_of(&ep, false);
    assert_eq!(ep["lease"]["t1_secs"], 5, "{ep}");
    let expiry = |l: &str| -> Option<u64> {
        l.lines()
            .find(|x| x.split_whitespace().nth(2) == Some(ip.as_str()))
            .and_then(|x| x.split_whitespace().next()?.parse().ok())
    };
    let first = expiry(&server.leases()).expect("lease in dnsmasq's file");
    let args = ["daemon", "--interval", "60", "--gc-interval", "0"];
    let mut daemon = lab.lanyard_spawn(&args);
    // Started: every stored lease asked for again (INIT-REBOOT), same address.
    assert!(
        daemon.wait_for_stdout("lease confirmed (INIT-REBOOT)", Duration::from_secs(15)),
        "{}\n{}",
        daemon.stdout(),
        daemon.stderr()
    );
    assert!(
        daemon.wait_for_stdout(&format!("lease of {ip} renewed"), Duration::from_secs(20)),
        "no renewal: {}\n{}",
        daemon.stdout(),
        daemon.stderr()
    );
    server.wait_until("renewal extends the lease", Duration::from_secs(5), |l| {
        expiry(l).is_some_and(|e| e > first)
    });
    let stored = lab.lanyard_json(&["endpoint", "inspect", "web"]);
    assert!(stored["lease"]["acquired_at"].as_u64() > ep["lease"]["acquired_at"].as_u64());

    // A restarted daemon asks for the same address again.
    daemon.kill();
    let mut again = lab.lanyard_spawn(&args);
    assert!(
        again.wait_for_stdout(
            "endpoint web: lease confirmed (INIT-REBOOT)",
            Duration::from_secs(15)
        ),
        "{}\n{}",
        again.stdout(),
        again.stderr()
    );
    again.kill();
    // So does restore.
    let out = lab.lanyard_ok(&["restore"]);
    assert!(
        out.contains("endpoint web: lease confirmed (INIT-REBOOT)"),
        "{out}"
    );
    let stored = lab.lanyard_json(&["endpoint", "inspect", "web"]);
    assert_eq!(stored["lease"]["address"], ip.as_str());
    assert!(c1.ping("192.0.2.1"));
}

#[test]
fn classless_routes_come_with_the_lease_and_come_back_with_restore() {
    let lab = lab!();
    let _server = dnsmasq_with(
        &lab,
        "2m",
        &["--dhcp-option=option:classless-static-route,198.51.100.0/24,192.0.2.1,0.0.0.0/0,192.0.2.1"],
    );
    dhcp_network(&lab, &[]);
    let c1 = lab.netns("c1");
    let ep = lab.attach("dlan", &c1, &["--name", "web"]);
    let ip = addr_of(&ep, false);
    let routes = c1.ip(&["route", "show"]);
    assert!(routes.contains("198.51.100.0/24 via 192.0.2.1"), "{routes}");
    // The link is lost (as after a reboot that kept the namespace's path but not its
    // links): restore brings back address, default route and the option-121 route.
    c1.ip(&["link", "del", "eth0"]);
    lab.lanyard_ok(&["restore"]);
    let routes = c1.ip(&["route", "show"]);
    assert!(
        routes.contains("198.51.100.0/24 via 192.0.2.1"),
        "option 121 route after restore: {routes}"
    );
    assert!(routes.contains("default via 192.0.2.1"), "{routes}");
    let addrs = c1.ip(&["-4", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("{ip}/24")), "{addrs}");
    assert!(c1.ping("192.0.2.1"));
}

#[test]
fn a_bridge_network_onto_the_lans_own_bridge_takes_leases_from_the_lan_server() {
    let lab = lab!();
    let server = dnsmasq(&lab, "2m");
    let host = ext_on_br0(&lab);
    let c1 = lab.netns("c1");
    let ep = lab.attach("ext", &c1, &["--name", "web"]);
    let ip = addr_of(&ep, false);
    let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!((100..=150).contains(&last), "{ep}");
    assert!(
        server.leases().contains(&format!(" {ip} web ")),
        "{}",
        server.leases()
    );
    assert!(c1.ping_within("192.0.2.1", Duration::from_secs(3)));
    assert!(
        host.ping_within(&ip, Duration::from_secs(3)),
        "host -> endpoint"
    );
    lab.lanyard_ok(&["detach", "web"]);
    server.wait_until("lease released on detach", Duration::from_secs(5), |l| {
        !l.contains(&format!(" {ip} "))
    });
}

/// The LAN's server moves an endpoint to another address (a new range: INIT-REBOOT
/// gets a NAK) while a daemon starts (it asks for every lease again and moves the
/// address: the run-dir lock shared) and `restore`s run beside it (each asks too,
/// and rebuilds the firewall: exclusive). Whoever moves it, the endpoint ends with
/// the new address alone: on its link, in its record and in the bridge's
/// anti-spoofing set. (crates/engine/tests/interleave.rs forces the interleavings.)
#[test]
fn an_address_moved_by_the_server_while_a_daemon_starts_and_restores_run_ends_guarded_alone() {
    let lab = lab!();
    let server = dnsmasq(&lab, "2m");
    let host = ext_on_br0(&lab);
    let c1 = lab.netns("c1");
    let ep = lab.attach("ext", &c1, &["--name", "web"]);
    let old = addr_of(&ep, false);
    drop(server);
    let _server = dnsmasq_range(&lab, "192.0.2.200,192.0.2.210", "2m", &[]);

    let args = ["daemon", "--interval", "60", "--gc-interval", "0"];
    let (mut daemon, restores) = std::thread::scope(|s| {
        let restores = s.spawn(|| {
            (0..8)
                .map(|_| lab.lanyard_ok(&["restore"]))
                .collect::<Vec<String>>()
        });
        let mut daemon = lab.lanyard_spawn(&args);
        // The daemon's own ask, whatever it found (moved, or confirmed after a
        // restore moved it).
        assert!(
            daemon.wait_for_stdout("endpoint web: ", Duration::from_secs(20)),
            "{}\n{}",
            daemon.stdout(),
            daemon.stderr()
        );
        (daemon, restores.join().expect("restores"))
    });
    daemon.kill();
    let said = format!("{}\n{}", daemon.stdout(), restores.join("\n"));
    assert!(
        said.contains(&format!("address changed from {old} to 192.0.2.2")),
        "nobody moved it: {said}"
    );

    let stored = lab.lanyard_json(&["endpoint", "inspect", "web"]);
    let new = stored["lease"]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(new.starts_with("192.0.2.2") && new != old, "{stored}");
    let addrs = c1.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("{new}/24")), "{addrs}");
    assert!(
        !addrs.contains(&format!("{old}/")),
        "the old address stayed: {addrs}"
    );
    let guard = host.ok(&["nft", "list", "set", "bridge", "lanyard", "addr4"]);
    assert!(guard.contains(&new), "new address unguarded: {guard}");
    assert!(
        !guard.contains(&format!("{old} ")) && !guard.contains(&format!("{old},")),
        "the old address still passes the anti-spoofing guard: {guard}"
    );
    assert!(c1.ping_within("192.0.2.1", Duration::from_secs(3)));
}

/// The CNI front end on a DHCP network: ADD returns the lease's address and gateway,
/// CHECK finds them, DEL releases the lease (a runtime's view: conflist, libcni's
/// rules, lanyard before the reference `tuning`).
#[test]
fn a_cni_add_on_a_dhcp_network_returns_the_lease_and_del_releases_it() {
    use crate::cni::{Att, Runtime};
    let lab = lab!();
    let server = dnsmasq(&lab, "2m");
    dhcp_network(&lab, &[]);
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "dlan",
        "plugins": [
            {"type": "lanyard", "network": "dlan"},
            {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}}
        ]
    });
    let rt = Runtime::new(&lab, conflist);
    let c1 = lab.netns("c1");
    let att = Att::new("dhcp-ctr", &c1);
    let result = rt.add(&att).unwrap_or_else(|e| panic!("ADD: {e}"));
    let ip = result["ips"][0]["address"].as_str().unwrap_or_default();
    let ip = ip.split('/').next().unwrap().to_string();
    let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!((100..=150).contains(&last), "{result}");
    assert_eq!(result["ips"][0]["gateway"], "192.0.2.1", "{result}");
    assert!(
        server.leases().contains(&format!(" {ip} ")),
        "{}",
        server.leases()
    );
    assert!(c1.ping("192.0.2.1"));
    rt.check_but(&att, &[])
        .unwrap_or_else(|e| panic!("CHECK: {e}"));
    rt.del(&att).unwrap_or_else(|e| panic!("DEL: {e}"));
    server.wait_until("lease released on DEL", Duration::from_secs(5), |l| {
        !l.contains(&format!(" {ip} "))
    });
}

#[test]
fn an_address_the_lan_router_holds_is_refused_or_skipped_after_an_arp_probe() {
    let lab = lab!();
    lab.lan()
        .ip(&["addr", "add", "192.0.2.77/24", "dev", "lan0"]);
    lab.lan()
        .ip(&["addr", "add", "192.0.2.76/24", "dev", "lan0"]);
    let router_mac = lab.lan().ip_json(&["link", "show", "lan0"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    lab.lanyard_ok(&[
        "network",
        "create",
        "probed",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0",
        "-o",
        "arp_probe=200",
        "--subnet",
        "192.0.2.0/24",
        "--gateway",
        "192.0.2.1",
        "--ip-range",
        "192.0.2.76/30",
    ]);
    let c1 = lab.netns("c1");
    let path = c1.path();
    let path = path.to_str().unwrap();
    let err = lab.lanyard_fails(
        &["attach", "probed", "--netns", path, "--ip", "192.0.2.77"],
        exit::CONFLICT,
    );
    assert!(err.contains(&router_mac), "names the router's MAC: {err}");
    assert!(!c1.links().contains("eth0"));
    // Allocated: .76 and .77 are the router's, so the first free one is .78.
    let ep = lab.attach("probed", &c1, &[]);
    assert_eq!(addr_of(&ep, false), "192.0.2.78", "{ep}");
    assert!(c1.ping("192.0.2.1"));
}

/// The interface id (last 64 bits) EUI-64 makes of `mac`.
fn eui64(mac: &str) -> String {
    let b: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    format!(
        "{:x}:{:x}:{:x}:{:x}",
        u16::from_be_bytes([b[0] ^ 2, b[1]]),
        u16::from_be_bytes([b[2], 0xff]),
        u16::from_be_bytes([0xfe, b[3]]),
        u16::from_be_bytes([b[4], b[5]])
    )
}

/// The global IPv6 address SLAAC gave `eth0` in `ns`, waiting up to 15 s.
fn slaac_address(ns: &crate::harness::Ns) -> String {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let j = ns.ip_json(&["-6", "addr", "show", "dev", "eth0", "scope", "global"]);
        if let Some(a) = j[0]["addr_info"]
            .as_array()
            .and_then(|a| a.iter().find_map(|x| x["local"].as_str()))
        {
            return a.to_string();
        }
        assert!(Instant::now() < end, "no SLAAC address: {j}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dual_stack_ipv4_from_dhcp_and_ipv6_from_router_advertisements_with_stable_ids() {
    let lab = lab!();
    let _server = dnsmasq_with(
        &lab,
        "2m",
        &["--enable-ra", "--dhcp-range=2001:db8:1::,ra-only,64"],
    );
    dhcp_network(&lab, &["--ipv6"]);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let e1 = lab.attach("dlan", &c1, &[]);
    lab.attach("dlan", &c2, &[]);
    let a1 = slaac_address(&c1);
    let a2 = slaac_address(&c2);
    assert!(a1.starts_with("2001:db8:1:"), "{a1}");
    assert_ne!(a1, a2);
    let mac = e1["mac"].as_str().unwrap();
    assert!(
        !a1.ends_with(&eui64(mac)),
        "{a1} is not derived from the MAC {mac}"
    );
    let mode = c1.ok(&["cat", "/proc/sys/net/ipv6/conf/eth0/addr_gen_mode"]);
    assert_eq!(mode.trim(), "2", "RFC 7217 stable privacy");
    assert!(c1.ping("2001:db8:1::1"));
    assert!(c1.ping("192.0.2.1"));
}

#[test]
fn vm_ipvlan_endpoints_sharing_the_parents_mac_get_distinct_leases() {
    let lab = lab!();
    lab.require_kernel("ipvlan");
    let server = dnsmasq(&lab, "2m");
    lab.lanyard_ok(&[
        "network",
        "create",
        "dlan",
        "-d",
        "ipvlan",
        "-o",
        "parent=eth0",
        "--ipam-driver",
        "dhcp",
    ]);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let a1 = addr_of(&lab.attach("dlan", &c1, &["--name", "one"]), false);
    let a2 = addr_of(&lab.attach("dlan", &c2, &["--name", "two"]), false);
    assert_ne!(a1, a2, "one MAC, two ClientIDs, two leases");
    let leases = server.leases();
    assert!(leases.contains(&format!(" {a1} one ")), "{leases}");
    assert!(leases.contains(&format!(" {a2} two ")), "{leases}");
    assert!(c1.ping("192.0.2.1") && c2.ping("192.0.2.1"));
    lab.lanyard_ok(&["detach", "one"]);
    server.wait_until("released", Duration::from_secs(5), |l| {
        !l.contains(&format!(" {a1} "))
    });
}
