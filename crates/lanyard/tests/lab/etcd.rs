//! Several hosts on one LAN subnet sharing an etcd store (`--store etcd://…`).
//!
//! Where etcd runs: a 3-member cluster inside the lab's LAN namespace
//! (`lyt-<id>-lan`), on a switch bridge `sw0` (10.77.0.1/16) that the simulated
//! hosts reach over veths, as real hosts reach a cluster on their LAN. Loopback of
//! the root namespace would be unreachable from the hosts' namespaces, and one
//! etcd per host namespace would not be a shared cluster. The members are started
//! by the test with temp data dirs and killed when the cluster value drops (also
//! on failure). `scripts/vm-test --all` leaves `etcd::` out: the VM has no etcd.
//!
//! Each simulated host is a lab namespace `lyt-<id>-hN` with `eth0` on the switch,
//! its own state and run dirs, and `--node hN`.

use crate::harness::{exit, lab, lanyard_bin, Bg, Lab, Ns};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Client ports of the three members on 10.77.0.1 (the LAN namespace is the
/// lab's own, so fixed ports are free).
const CLIENT_PORTS: [u16; 3] = [2379, 2479, 2579];
const SWITCH: &str = "10.77.0.1";

/// The 3-member cluster; killed on drop.
struct Cluster {
    members: Vec<Option<Bg>>,
    url: String,
}

impl Cluster {
    fn start(lab: &Lab) -> Cluster {
        switch(lab);
        let url = format!(
            "etcd://{}",
            CLIENT_PORTS
                .iter()
                .map(|p| format!("{SWITCH}:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut c = Cluster {
            members: vec![],
            url,
        };
        c.members = (0..CLIENT_PORTS.len())
            .map(|i| Some(member(lab, i)))
            .collect();
        c.wait_up(lab);
        c
    }

    /// Up when a write through the cluster succeeds.
    fn wait_up(&self, lab: &Lab) {
        let t = Instant::now();
        loop {
            let ok = lab
                .lan()
                .exec(&[
                    "etcdctl",
                    "--endpoints",
                    self.url.trim_start_matches("etcd://"),
                    "put",
                    "/probe",
                    "1",
                ])
                .status
                .success();
            if ok {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "etcd cluster did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every member killed: the cluster is down (its data stays).
    fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Every member started again on its data dir, and the cluster up.
    fn restart(&mut self, lab: &Lab) {
        self.members = (0..CLIENT_PORTS.len())
            .map(|i| Some(member(lab, i)))
            .collect();
        self.wait_up(lab);
    }

    /// How many addresses are held in etcd (keys `hold/NETWORK␟10.77.…`), read with
    /// etcdctl from the LAN namespace.
    fn held_addresses(&self, lab: &Lab) -> usize {
        let eps = self.url.trim_start_matches("etcd://");
        let out = lab.lan().ok(&[
            "etcdctl",
            "--endpoints",
            eps,
            "get",
            "--prefix",
            "--keys-only",
            "/lanyard/hold/",
        ]);
        out.lines().filter(|l| l.contains("\u{1f}10.77.")).count()
    }

    /// Whether `key` exists in the cluster.
    fn has_key(&self, lab: &Lab, key: &str) -> bool {
        let eps = self.url.trim_start_matches("etcd://");
        let out = lab
            .lan()
            .ok(&["etcdctl", "--endpoints", eps, "get", "--keys-only", key]);
        out.lines().any(|l| l == key)
    }

    /// SIGKILL of member `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut m) = self.members[i].take() {
            m.kill();
        }
    }
}

/// Starts member `i` of the cluster in the LAN namespace, on its data dir under
/// the lab's (a restart finds its data there).
fn member(lab: &Lab, i: usize) -> Bg {
    let peers: Vec<String> = CLIENT_PORTS
        .iter()
        .map(|p| format!("http://{SWITCH}:{}", p + 1))
        .collect();
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}={p}"))
        .collect();
    let client = format!("http://{SWITCH}:{}", CLIENT_PORTS[i]);
    let dir = lab.dir().join(format!("etcd{i}"));
    let d = dir.to_str().unwrap();
    let args = [
        "etcd",
        "--name",
        &format!("m{i}"),
        "--data-dir",
        d,
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peers[i],
        "--initial-advertise-peer-urls",
        &peers[i],
        "--initial-cluster",
        &initial.join(","),
        "--initial-cluster-state",
        "new",
        "--unsafe-no-fsync",
        "--max-txn-ops",
        "1024",
    ];
    lab.lan().spawn(&args)
}

/// One simulated host: a namespace on the switch, its own dirs, `--node NAME`.
struct Host {
    name: String,
    ns: Ns,
    dir: PathBuf,
    store: String,
}

impl Host {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = self.ns.command(&[lanyard_bin()]);
        c.arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .args(["--node", &self.name, "--store", &self.store])
            .args(args)
            .env_remove("LANYARD_STORE")
            .env(
                "LANYARD_DOCKER_SOCKET",
                self.dir.join("run").join("docker-plugin.sock"),
            )
            .env("RUST_BACKTRACE", "1");
        c
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run lanyard");
        eprintln!(
            "[{}] $ lanyard {}  # {:?}\n{}",
            self.name,
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn run_fails(&self, args: &[&str], code: i32) {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "[{}] lanyard {args:?}",
            self.name
        );
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "[{}] lanyard {args:?} failed",
            self.name
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("JSON")
    }

    fn spawn_attach(&self, net: &str, ns: &Ns) -> Child {
        let p = ns.path();
        self.command(&["attach", net, "--netns", p.to_str().unwrap(), "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lanyard attach")
    }
}

/// The LAN's switch: bridge `sw0` in the LAN namespace, 10.77.0.1/16 (where the
/// cluster listens).
fn switch(lab: &Lab) {
    lab.lan().ip_batch(&[
        "link add sw0 type bridge",
        "link set sw0 up",
        &format!("addr add {SWITCH}/16 dev sw0"),
    ]);
}

/// `n` hosts on the switch, 10.77.0.1N/16 each.
fn hosts(lab: &Lab, store: &str, n: usize) -> Vec<Host> {
    let lan = lab.lan();
    (1..=n)
        .map(|i| {
            let name = format!("h{i}");
            let ns = lab.netns(&name);
            lan.ip_batch(&[
                &format!("link add p{i} type veth peer name eth0 netns {}", ns.name()),
                &format!("link set p{i} master sw0"),
                &format!("link set p{i} up"),
            ]);
            ns.ip_batch(&[
                "link set eth0 up",
                &format!("addr add 10.77.0.1{i}/16 dev eth0"),
            ]);
            let dir = lab.dir().join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            Host {
                name,
                ns,
                dir,
                store: store.to_string(),
            }
        })
        .collect()
}

/// The shared network: macvlan on each host's eth0, addresses from 10.77.64.0/18.
fn shared_network(h: &Host) {
    h.ok(&[
        "network",
        "create",
        "shared",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0",
        "-o",
        "host_access=false",
        "--subnet",
        "10.77.0.0/16",
        "--gateway",
        SWITCH,
        "--ip-range",
        "10.77.64.0/18",
    ]);
}

/// Waits for every attach; returns the IPv4 address of each that succeeded and
/// the stderr of each that failed.
fn collect(children: Vec<Child>) -> (Vec<String>, Vec<String>) {
    let (mut addrs, mut failed) = (vec![], vec![]);
    for c in children {
        let out = c.wait_with_output().expect("wait");
        if out.status.success() {
            let ep: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            addrs.push(crate::harness::addr_of(&ep, false));
        } else {
            failed.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    (addrs, failed)
}

fn assert_distinct(addrs: &[String]) {
    let set: BTreeSet<&String> = addrs.iter().collect();
    assert_eq!(set.len(), addrs.len(), "duplicate addresses handed out");
}

/// Attaches per host in the concurrency tests (the 200 each: 600 addresses).
const PER_HOST: usize = 200;

#[test]
fn etcd_three_hosts_attach_at_once_and_never_share_an_address_even_when_a_member_dies() {
    let lab = lab!();
    let mut cluster = Cluster::start(&lab);
    let hs = hosts(&lab, &cluster.url, 3);
    shared_network(&hs[0]);
    let containers: Vec<Vec<Ns>> = hs
        .iter()
        .map(|h| lab.netns_many(&format!("{}c", h.name), PER_HOST))
        .collect();
    let t0 = Instant::now();
    // All hosts' attaches at once, interleaved; a member dies a third of the way in.
    let mut children = vec![];
    for i in 0..PER_HOST {
        for (h, cs) in hs.iter().zip(&containers) {
            children.push(h.spawn_attach("shared", &cs[i]));
        }
        if i == PER_HOST / 3 {
            cluster.kill(2);
        }
    }
    let (addrs, failed) = collect(children);
    eprintln!("{} attaches on 3 hosts: {:?}", 3 * PER_HOST, t0.elapsed());
    let reasons: BTreeSet<&str> = failed.iter().filter_map(|f| f.lines().next()).collect();
    assert!(
        failed.is_empty(),
        "{} attaches failed: {reasons:#?}",
        failed.len()
    );
    assert_eq!(addrs.len(), 3 * PER_HOST);
    assert_distinct(&addrs);
    assert_eq!(cluster.held_addresses(&lab), 3 * PER_HOST);
    // Every host sees all of them, each endpoint carrying its host's name.
    let eps = hs[1].json(&["endpoint", "ls", "--json"]);
    let eps = eps.as_array().unwrap();
    assert_eq!(eps.len(), 3 * PER_HOST);
    for h in &hs {
        let mine = eps.iter().filter(|e| e["node"] == h.name.as_str()).count();
        assert_eq!(mine, PER_HOST, "{}", h.name);
    }
}

#[test]
fn etcd_sqlite_store_one_host_attaches_at_once_and_never_shares_an_address() {
    let lab = lab!();
    switch(&lab);
    let hs = hosts(&lab, "sqlite", 1);
    shared_network(&hs[0]);
    let cs = lab.netns_many("c", PER_HOST);
    let children = cs.iter().map(|c| hs[0].spawn_attach("shared", c)).collect();
    let (addrs, failed) = collect(children);
    assert!(
        failed.is_empty(),
        "{} attaches failed, e.g.: {}",
        failed.len(),
        failed[0]
    );
    assert_eq!(addrs.len(), PER_HOST);
    assert_distinct(&addrs);
}

#[test]
fn etcd_attach_killed_mid_way_leaves_no_stranded_address_after_gc() {
    let lab = lab!();
    let cluster = Cluster::start(&lab);
    let hs = hosts(&lab, &cluster.url, 1);
    shared_network(&hs[0]);
    let c = lab.netns("c0");
    let p = c.path();
    let out = hs[0]
        .command(&["attach", "shared", "--netns", p.to_str().unwrap()])
        .env("LANYARD_KILL_AT", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "killed by SIGKILL");
    let eps = hs[0].json(&["endpoint", "ls", "--json"]);
    assert_eq!(
        eps.as_array().unwrap().len(),
        1,
        "the pending record is there"
    );
    assert_eq!(cluster.held_addresses(&lab), 1);
    hs[0].ok(&["gc"]);
    assert_eq!(
        hs[0].json(&["endpoint", "ls", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(
        cluster.held_addresses(&lab),
        0,
        "no address stranded in etcd"
    );
    hs[0].json(&["attach", "shared", "--netns", p.to_str().unwrap(), "--json"]);
}

#[test]
fn etcd_gc_host_frees_a_dead_hosts_addresses_and_never_a_live_ones() {
    let lab = lab!();
    let cluster = Cluster::start(&lab);
    let hs = hosts(&lab, &cluster.url, 3);
    shared_network(&hs[0]);
    for (i, h) in hs.iter().enumerate() {
        let c = lab.netns(&format!("c{i}"));
        let p = c.path();
        h.ok(&["attach", "shared", "--netns", p.to_str().unwrap()]);
    }
    // h2 runs the daemon (its lease: 3 s); h1's daemon sweeps every second.
    let daemon = |h: &Host| {
        let mut c = h.command(&["daemon", "--gc-interval", "1"]);
        c.env("LANYARD_LEASE_TTL", "3");
        Bg::spawn(c, &format!("[{}] lanyard daemon", h.name))
    };
    let mut d2 = daemon(&hs[1]);
    let d1 = daemon(&hs[0]);
    let nodes = |h: &Host| -> Vec<String> {
        let eps = h.json(&["endpoint", "ls", "--json"]);
        let mut v: Vec<String> = eps
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"].as_str().unwrap_or("").to_string())
            .collect();
        v.sort();
        v
    };
    // Live (once its daemon holds the lease): refused, nothing freed.
    let t = Instant::now();
    while !cluster.has_key(&lab, "/lanyard/meta/alive/h2") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "h2 never held its lease"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    hs[0].run_fails(&["gc", "--host", "h2"], exit::CONFLICT);
    std::thread::sleep(Duration::from_secs(4));
    eprintln!("h1 daemon:\n{}\nh2 daemon:\n{}", d1.stderr(), d2.stderr());
    // h2 only attached (its journal); its daemon listed everything into its
    // local copy's snapshot, other hosts' networks included, its own endpoint only.
    let snapshot = std::fs::read_to_string(hs[1].dir.join("state/etcd-copy.json"))
        .expect("h2's daemon refreshed its local copy");
    let copy: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
    assert_eq!(copy["node"], "h2", "{copy}");
    let eps = copy["endpoints"]["entries"].as_object().unwrap();
    assert_eq!(eps.len(), 1, "{copy}");
    assert_eq!(copy["networks"]["entries"].as_object().unwrap().len(), 1);
    assert_eq!(
        nodes(&hs[0]),
        ["h1", "h2", "h3"],
        "a live host keeps its endpoints"
    );
    // h3 never held a lease: only an explicit gc --host frees it.
    let out = hs[0].ok(&["gc", "--host", "h3"]);
    assert!(out.contains("freed 1"), "{out}");
    assert_eq!(nodes(&hs[0]), ["h1", "h2"]);
    // h2 dies: its lease runs out and h1's daemon frees its endpoint.
    d2.kill();
    let t = Instant::now();
    while nodes(&hs[0]) != ["h1"] {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "h2's endpoint was never freed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // This host is refused by name; a bad store URL is named.
    hs[0].run_fails(&["gc", "--host", "h1"], exit::USAGE);
    hs[0].run_fails(&["--store", "etcd://nohost", "endpoint", "ls"], exit::USAGE);
}

#[test]
fn etcd_unreachable_attach_fails_fast_and_writes_nothing() {
    let lab = lab!();
    // No cluster: nothing listens on the switch's ports.
    switch(&lab);
    let hs = hosts(&lab, &format!("etcd://{SWITCH}:2379"), 1);
    let c = lab.netns("c0");
    let p = c.path();
    let out = hs[0].run(&["attach", "shared", "--netns", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(exit::ERROR));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd at 10.77.0.1:2379"), "{err}");
    assert_eq!(
        c.links(),
        BTreeSet::from(["lo".to_string()]),
        "nothing plugged"
    );
    // A listing with no local copy to fall back on: the same clear error.
    let out = hs[0].run(&["endpoint", "ls"]);
    assert_eq!(out.status.code(), Some(exit::ERROR));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd at 10.77.0.1:2379"), "{err}");
    // What needs no store still answers, and names the store.
    let info = hs[0].json(&["info", "--json"]);
    assert_eq!(info["store"]["kind"], "etcd", "{info}");
    assert_eq!(info["store"]["members"], "10.77.0.1:2379", "{info}");
}

/// The stderr line of a read-only verb that answered from the local copy.
const LOCAL_COPY: &str = "showing this host's local copy from";

#[test]
fn etcd_down_reads_answer_from_this_hosts_local_copy_and_writes_fail_changing_nothing() {
    let lab = lab!();
    let mut cluster = Cluster::start(&lab);
    let hs = hosts(&lab, &cluster.url, 1);
    let h = &hs[0];
    shared_network(h);
    let (c0, c1, c2) = (lab.netns("c0"), lab.netns("c1"), lab.netns("c2"));
    let attach = |c: &Ns| {
        let p = c.path();
        h.json(&["attach", "shared", "--netns", p.to_str().unwrap(), "--json"])
    };
    let (ep0, ep1) = (attach(&c0), attach(&c1));
    let id0 = ep0["id"].as_str().unwrap();
    cluster.stop();
    // c1's namespace goes while the cluster is down (doctor is to notice).
    let del = Command::new("ip")
        .args(["netns", "del", c1.name()])
        .status()
        .expect("ip netns del");
    assert!(del.success());

    // Reads answer from the copy, and say so.
    let said = |out: &std::process::Output| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("etcd unreachable (etcd at 10.77.0.1:") && err.contains(LOCAL_COPY),
            "{err}"
        );
    };
    let out = h.run(&["network", "ls"]);
    assert!(out.status.success());
    said(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("shared"), "{table}");
    let out = h.run(&["endpoint", "ls", "--json"]);
    assert!(out.status.success());
    said(&out);
    let eps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<&str> = eps
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![id0, ep1["id"].as_str().unwrap()];
    want.sort();
    assert_eq!(ids, want);
    let one = h.ok(&["endpoint", "inspect", id0, "--json"]);
    assert!(one.contains(&crate::harness::addr_of(&ep0, false)), "{one}");
    // doctor: the kernel-side checks run against the copy (c1's namespace is gone),
    // and the store is named.
    let out = h.run(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(exit::ERROR));
    said(&out);
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks: BTreeSet<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        BTreeSet::from(["namespace-gone", "store"]),
        "{found}"
    );

    // Writes fail fast with the clear error and change nothing.
    // This host's local copy: snapshot and journal.
    let copy = || {
        ["etcd-copy.json", "etcd-copy.journal"]
            .map(|f| std::fs::read(h.dir.join("state").join(f)).ok())
    };
    let before = copy();
    assert!(
        before.iter().any(Option::is_some),
        "attach keeps the local copy"
    );
    let p2 = c2.path();
    let out = h.run(&["attach", "shared", "--netns", p2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(exit::ERROR));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("etcd at 10.77.0.1:") && !err.contains(LOCAL_COPY),
        "{err}"
    );
    assert_eq!(
        c2.links(),
        BTreeSet::from(["lo".to_string()]),
        "nothing plugged"
    );
    h.run_fails(&["detach", id0], exit::ERROR);
    assert!(c0.links().contains("eth0"), "c0 keeps its link");
    assert_eq!(copy(), before, "the copy is as it was");

    // The cluster back: everything as before, nothing half-written; normal again.
    cluster.restart(&lab);
    let out = h.run(&["network", "ls"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains(LOCAL_COPY));
    assert_eq!(cluster.held_addresses(&lab), 2);
    h.ok(&["gc"]);
    attach(&c2);
    let eps = h.json(&["endpoint", "ls", "--json"]);
    assert_eq!(eps.as_array().unwrap().len(), 2, "{eps}");
    assert_eq!(cluster.held_addresses(&lab), 2);
}

#[test]
fn etcd_store_of_the_config_file_is_the_cni_plugins_store_too() {
    let lab = lab!();
    let cluster = Cluster::start(&lab);
    let hs = hosts(&lab, &cluster.url, 1);
    let h = &hs[0];
    shared_network(h);
    // As a container runtime runs the plugin: no --store, no LANYARD_STORE; the
    // host's config file names the cluster.
    let config = h.dir.join("config.toml");
    std::fs::write(&config, format!("store = \"{}\"\n", cluster.url)).unwrap();
    let c = lab.netns("c0");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "shared", "type": "lanyard", "network": "shared"
    });
    let mut cmd = h.ns.command(&[lanyard_bin()]);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "ctr1")
        .env("CNI_NETNS", c.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("LANYARD_STATE_DIR", h.dir.join("state"))
        .env("LANYARD_RUN_DIR", h.dir.join("run"))
        .env("LANYARD_CONFIG", &config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run the CNI plugin");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "CNI ADD: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cluster.held_addresses(&lab),
        1,
        "the address is held in etcd, where the other hosts see it"
    );
}
