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
    let before = host.ip(&["-o", "addr", "show"]);
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
    assert_eq!(
        host.ip(&["-o", "addr", "show"]),
        before,
        "the host's addresses changed"
    );
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
