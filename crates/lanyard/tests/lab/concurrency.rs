//! Many lanyard processes at once on one store and one kernel, as the front ends
//! bring them (the daemon's gc while the CLI creates, CNI's parallel ADDs), and
//! the host's own interfaces, which lanyard never takes over or removes.

use crate::harness::{exit, lab, Lab};
use std::process::{Child, Stdio};

/// Starts `lanyard ARGS` in the lab host, output captured.
fn start(lab: &Lab, args: &[String]) -> (String, Child) {
    let mut c = lab.lanyard_command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    (args.join(" "), c.spawn().expect("spawn lanyard"))
}

/// Waits for every child; each must succeed.
fn all_succeed(children: Vec<(String, Child)>) {
    for (what, child) in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "lanyard {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn gc_beside_network_creates_and_attaches_never_removes_a_live_bridge_or_endpoint() {
    let lab = lab!();
    let host = lab.host();
    lab.lanyard_ok(&["network", "create", "base", "--subnet", "10.60.0.0/24"]);
    let containers: Vec<_> = (0..8).map(|i| lab.netns(&format!("c{i}"))).collect();
    // Three rounds of: 8 network creates, 8 attaches and 8 gcs, all at once.
    for round in 0..3 {
        let mut children = vec![];
        for (i, c) in containers.iter().enumerate() {
            let name = format!("r{round}n{i}");
            let subnet = format!("10.{}.{}.0/24", 61 + round, i);
            children.push(start(
                &lab,
                &s(&["network", "create", &name, "--subnet", &subnet]),
            ));
            children.push(start(&lab, &s(&["gc"])));
            let ns = c.path();
            let ns = ns.to_str().unwrap();
            children.push(start(&lab, &s(&["attach", "base", "--netns", ns])));
        }
        all_succeed(children);
        // Every network's bridge is there, every endpoint's link is in its namespace.
        let links = host.links();
        for n in lab.lanyard_json(&["network", "ls"]).as_array().unwrap() {
            let br = n["bridge"].as_str().unwrap();
            assert!(
                links.contains(br),
                "round {round}: bridge {br} of {} is gone",
                n["name"]
            );
        }
        let eps = lab.lanyard_json(&["endpoint", "ls"]);
        assert_eq!(eps.as_array().unwrap().len(), 8, "round {round}");
        for c in &containers {
            assert!(
                c.links().contains("eth0"),
                "round {round}: {} lost eth0",
                c.name()
            );
        }
        all_succeed(
            containers
                .iter()
                .map(|c| {
                    let p = c.path();
                    start(
                        &lab,
                        &s(&["detach", "base", "--netns", p.to_str().unwrap()]),
                    )
                })
                .collect(),
        );
    }
    let bridges = host
        .links()
        .into_iter()
        .filter(|l| l.starts_with("lyb-"))
        .count();
    assert_eq!(bridges, 1 + 3 * 8);
}

#[test]
fn a_bridge_name_that_is_a_host_interface_is_refused_and_the_interface_untouched() {
    let lab = lab!();
    let host = lab.host();
    // The host's own addresses by interface, without flags or lifetimes (DAD
    // finishing meanwhile changes those, not what the host has).
    let addrs = || -> Vec<String> {
        let v = host.ip_json(&["addr", "show"]);
        let mut out: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|l| {
                let ifname = l["ifname"].as_str().unwrap_or("").to_string();
                l["addr_info"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    // The kernel's own link-local comes and goes with the link.
                    .filter(|a| a["scope"] != "link")
                    .map(move |a| format!("{ifname} {}/{}", a["local"], a["prefixlen"]))
            })
            .collect();
        out.sort();
        out
    };
    let before = addrs();
    for taken in ["eth0", "lo"] {
        let err = lab.lanyard_fails(
            &[
                "network",
                "create",
                "x",
                "--subnet",
                "203.0.113.0/24",
                "-o",
                &format!("bridge_name={taken}"),
            ],
            exit::USAGE,
        );
        assert!(err.contains("bridge_name"), "{err}");
    }
    lab.lanyard_ok(&[
        "network",
        "create",
        "a",
        "--subnet",
        "203.0.113.0/24",
        "-o",
        "bridge_name=br-a",
    ]);
    let err = lab.lanyard_fails(
        &[
            "network",
            "create",
            "b",
            "--subnet",
            "198.51.100.0/24",
            "-o",
            "bridge_name=br-a",
        ],
        exit::CONFLICT,
    );
    assert!(err.contains("network a"), "{err}");
    assert!(
        host.links().contains("br-a"),
        "a refused create deleted another network's bridge"
    );
    lab.lanyard_ok(&["network", "rm", "a"]);
    assert_eq!(addrs(), before, "the host's addresses changed");
    assert!(host.links().contains("eth0"));
}

#[test]
fn gc_leaves_an_administrators_bridges_named_like_lanyards() {
    let lab = lab!();
    let host = lab.host();
    host.ip_batch(&[
        "link add lyx-0000 type bridge",
        "link add lyb-lab type bridge",
    ]);
    lab.lanyard_ok(&["network", "create", "a", "--subnet", "203.0.113.0/24"]);
    lab.lanyard_ok(&["gc"]);
    let links = host.links();
    assert!(
        links.contains("lyx-0000") && links.contains("lyb-lab"),
        "{links:?}"
    );
}

/// Starts `lanyard ARGS` and kills it with SIGKILL after `delay`.
fn kill_after(lab: &Lab, args: &[&str], delay: std::time::Duration) {
    let (_, mut child) = start(lab, &s(args));
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
}

/// With the daemon up, a killed client's verb is the daemon's: it may still be
/// queued or under way after the client died, and finish after the `gc` below.
/// Waits (bounded) until no endpoint is mid-way, as a caller would wait for the
/// daemon to go idle; what stays mid-way is then gc's to clear.
fn settle(lab: &Lab) {
    for _ in 0..100 {
        let eps = lab.lanyard_json(&["endpoint", "ls"]);
        if eps
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["state"] == "active")
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// After `gc`: every endpoint recorded is active with its link and address in its
/// namespace, every namespace without one has no link but lo, no address is held
/// twice, and the host keeps no tombstone or stray veth.
fn whole_or_gone(lab: &Lab, containers: &[crate::harness::Ns]) -> (usize, usize) {
    lab.lanyard_ok(&["gc"]);
    let eps = lab.lanyard_json(&["endpoint", "ls"]);
    let eps = eps.as_array().unwrap();
    let mut addrs: Vec<String> = vec![];
    let mut whole = 0;
    for c in containers {
        let inode = c.inode().unwrap();
        let mine: Vec<_> = eps
            .iter()
            .filter(|e| e["netns_inode"][1].as_u64() == Some(inode))
            .collect();
        let links = c.links();
        match mine.as_slice() {
            [] => assert_eq!(
                links.len(),
                1,
                "{}: no endpoint but links {links:?}",
                c.name()
            ),
            [e] => {
                assert_eq!(e["state"], "active", "{e}");
                assert!(
                    links.contains("eth0"),
                    "{}: endpoint without its link",
                    c.name()
                );
                let a = e["addresses"][0].as_str().unwrap().to_string();
                let shown = c.ip(&["-o", "addr", "show", "dev", "eth0"]);
                assert!(shown.contains(&a), "{}: {a} not on eth0: {shown}", c.name());
                addrs.push(a);
                whole += 1;
            }
            more => panic!("{}: {} endpoints", c.name(), more.len()),
        }
    }
    let n = addrs.len();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), n, "an address held twice");
    let strays: Vec<String> = lab
        .host()
        .links()
        .into_iter()
        .filter(|l| l.starts_with("lyx-") || l.starts_with("lyv-"))
        .collect();
    let live = eps.iter().filter_map(|e| e["host_ifname"].as_str()).count();
    assert_eq!(strays.len(), live, "host links left: {strays:?}");
    (whole, containers.len() - whole)
}

#[test]
fn attaches_and_detaches_killed_at_any_moment_leave_whole_endpoints_or_none_after_gc() {
    kill_sweep(&lab!(), false);
}

#[test]
fn with_the_daemon_up_killed_attaches_and_detaches_leave_whole_endpoints_or_none() {
    kill_sweep(&lab!(), true);
}

fn kill_sweep(lab: &Lab, with_daemon: bool) {
    let _daemon = with_daemon.then(|| lab.daemon(&[]));
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let containers: Vec<_> = (0..24).map(|i| lab.netns(&format!("k{i}"))).collect();
    // Kill points spread evenly over how long one attach (and one detach) takes
    // with this binary: from before it starts to just after it is done.
    let probe = lab.netns("probe");
    let pp = probe.path();
    let pp = pp.to_str().unwrap();
    let t0 = std::time::Instant::now();
    lab.lanyard_ok(&["attach", "br", "--netns", pp]);
    let t_attach = t0.elapsed();
    let t0 = std::time::Instant::now();
    lab.lanyard_ok(&["detach", "br", "--netns", pp]);
    let t_detach = t0.elapsed();
    let at = |i: usize, t: std::time::Duration| t * (i as u32) / (containers.len() as u32 - 2);
    for (i, c) in containers.iter().enumerate() {
        let p = c.path();
        let delay = at(i, t_attach);
        kill_after(
            lab,
            &["attach", "br", "--netns", p.to_str().unwrap()],
            delay,
        );
    }
    if with_daemon {
        settle(lab);
    }
    let (kept, gone) = whole_or_gone(lab, &containers);
    eprintln!("killed attaches (daemon: {with_daemon}): {kept} whole, {gone} gone");
    // Every namespace attached, then detaches killed the same way.
    for c in &containers {
        let p = c.path();
        let p = p.to_str().unwrap();
        if c.links().len() == 1 {
            lab.lanyard_ok(&["attach", "br", "--netns", p]);
        }
    }
    for (i, c) in containers.iter().enumerate() {
        let p = c.path();
        let delay = at(i, t_detach);
        kill_after(
            lab,
            &["detach", "br", "--netns", p.to_str().unwrap()],
            delay,
        );
    }
    // A detach's link goes away in the background: give the reaper its moment.
    std::thread::sleep(std::time::Duration::from_millis(300));
    if with_daemon {
        settle(lab);
    }
    let (kept, gone) = whole_or_gone(lab, &containers);
    eprintln!("killed detaches (daemon: {with_daemon}): {kept} whole, {gone} gone");
    // And what is left detaches cleanly.
    for c in &containers {
        let p = c.path();
        lab.lanyard_ok(&["detach", "br", "--netns", p.to_str().unwrap()]);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(whole_or_gone(lab, &containers), (0, containers.len()));
}

#[test]
fn network_creates_and_removes_killed_at_any_moment_leave_whole_networks_or_none_after_gc() {
    let lab = lab!();
    let host = lab.host();
    let t0 = std::time::Instant::now();
    lab.lanyard_ok(&["network", "create", "probe", "--subnet", "10.70.0.0/24"]);
    let t_create = t0.elapsed();
    let t0 = std::time::Instant::now();
    lab.lanyard_ok(&["network", "rm", "probe"]);
    let t_rm = t0.elapsed();
    let n = 16u32;
    for i in 0..n {
        let name = format!("k{i}");
        let subnet = format!("10.71.{i}.0/24");
        kill_after(
            &lab,
            &["network", "create", &name, "--subnet", &subnet],
            t_create * i / (n - 2),
        );
    }
    let check = |what: &str| -> usize {
        lab.lanyard_ok(&["gc"]);
        let nets = lab.lanyard_json(&["network", "ls"]);
        let nets = nets.as_array().unwrap();
        let links = host.links();
        let bridges: Vec<&str> = nets.iter().map(|n| n["bridge"].as_str().unwrap()).collect();
        for b in &bridges {
            assert!(
                links.contains(*b),
                "{what}: network's bridge {b} missing after gc"
            );
        }
        let strays: Vec<&String> = links
            .iter()
            .filter(|l| l.starts_with("lyb-") && !bridges.contains(&l.as_str()))
            .collect();
        assert!(
            strays.is_empty(),
            "{what}: bridges no network records: {strays:?}"
        );
        nets.len()
    };
    let kept = check("killed creates");
    eprintln!(
        "killed network creates: {kept} whole, {} gone",
        n as usize - kept
    );
    for i in 0..n {
        kill_after(
            &lab,
            &["network", "rm", &format!("k{i}")],
            t_rm * i / (n - 2),
        );
    }
    let kept = check("killed removes");
    eprintln!(
        "killed network removes: {kept} kept, {} gone",
        n as usize - kept
    );
}
