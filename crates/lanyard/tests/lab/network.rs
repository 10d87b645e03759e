//! `lanyard network …` in a lab: create, ls, inspect, rm, prune; pool choice;
//! conflict checks against host routes and other networks; bad input refused with
//! the field named and nothing changed; many processes at once.

use crate::harness::{exit, lab, Lab};

fn names(lab: &Lab) -> Vec<String> {
    let v = lab.lanyard_json(&["network", "ls"]);
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[test]
fn macvlan_network_round_trips_through_create_ls_and_inspect() {
    let lab = lab!();
    lab.lanyard_ok(&[
        "network",
        "create",
        "lan",
        "-d",
        "macvlan",
        "--subnet",
        "192.0.2.0/24",
        "--gateway",
        "192.0.2.1",
        "--ip-range",
        "192.0.2.128/25",
        "--aux-address",
        "printer=192.0.2.3",
        "--ipv6",
        "--subnet",
        "2001:db8:1::/64",
        "--label",
        "site=lab",
        "-o",
        "parent=eth0",
        "-o",
        "mtu=1400",
    ]);
    let v = lab.lanyard_json(&["network", "inspect", "lan"]);
    let n = &v[0];
    assert_eq!(n["driver"], "macvlan");
    assert_eq!(n["parent"], "eth0");
    assert_eq!(n["macvlan_mode"], "bridge");
    assert_eq!(n["host_access"], true);
    assert_eq!(n["mtu"], 1400);
    assert_eq!(n["labels"]["site"], "lab");
    assert_eq!(n["subnets"][0]["ip_range"], "192.0.2.128/25");
    assert_eq!(n["subnets"][0]["aux_addresses"]["printer"], "192.0.2.3");
    assert_eq!(n["subnets"][1]["gateway"], "2001:db8:1::1");
    let table = lab.lanyard_ok(&["network", "ls"]);
    assert!(
        table.starts_with("NETWORK ID") && table.contains("lan") && table.contains("macvlan"),
        "{table}"
    );
    let text = lab.lanyard_ok(&["network", "inspect", "lan"]);
    assert!(
        text.contains("ip-range 192.0.2.128/25") && text.contains("Host access: on"),
        "{text}"
    );
}

#[test]
fn bad_input_names_the_field_and_changes_nothing() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "taken", "--subnet", "203.0.113.0/24"]);
    let before = lab.lanyard_json(&["network", "ls"]);
    let cases: &[(&[&str], i32, &str)] = &[
        (&["n1", "--subnet", "192.0.2.0/33"], exit::USAGE, "--subnet"),
        (
            &["n1", "--subnet", "10.1.0.0/24", "--gateway", "10.2.0.1"],
            exit::USAGE,
            "--gateway",
        ),
        (
            &["n1", "--subnet", "10.1.0.0/24", "--ip-range", "10.2.0.0/25"],
            exit::USAGE,
            "--ip-range",
        ),
        (
            &[
                "n1",
                "--subnet",
                "10.1.0.0/24",
                "--aux-address",
                "x=10.2.0.9",
            ],
            exit::USAGE,
            "--aux-address",
        ),
        (
            &["taken", "--subnet", "10.1.0.0/24"],
            exit::CONFLICT,
            "already exists",
        ),
        (&["n1", "-d", "overlay"], exit::USAGE, "--driver"),
        (&["n1", "-o", "colour=blue"], exit::USAGE, "colour"),
        (
            &["n1", "-d", "macvlan", "--subnet", "192.0.2.0/24"],
            exit::USAGE,
            "parent",
        ),
        (
            &[
                "n1",
                "-d",
                "macvlan",
                "-o",
                "parent=eth9",
                "--subnet",
                "192.0.2.0/24",
            ],
            exit::USAGE,
            "eth9",
        ),
        (
            &[
                "n1",
                "-d",
                "macvlan",
                "-o",
                "parent=averyveryverylongname",
                "--subnet",
                "192.0.2.0/24",
            ],
            exit::USAGE,
            "at most 15",
        ),
        (
            &[
                "n1",
                "-d",
                "macvlan",
                "-o",
                "parent=eth/0",
                "--subnet",
                "192.0.2.0/24",
            ],
            exit::USAGE,
            "'/'",
        ),
        (
            &[
                "n1",
                "-d",
                "macvlan",
                "-o",
                "parent=eth 0",
                "--subnet",
                "192.0.2.0/24",
            ],
            exit::USAGE,
            "' '",
        ),
        (&["bad name"], exit::USAGE, "network name"),
    ];
    for (args, code, needle) in cases {
        let mut full = vec!["network", "create"];
        full.extend_from_slice(args);
        let err = lab.lanyard_fails(&full, *code);
        assert!(
            err.contains(needle),
            "{args:?}: stderr lacks {needle:?}: {err}"
        );
    }
    assert_eq!(
        lab.lanyard_json(&["network", "ls"]),
        before,
        "bad input changed the store"
    );
    assert_eq!(
        lab.host()
            .links()
            .iter()
            .filter(|l| l.starts_with("ly"))
            .count(),
        1,
        "only the first bridge"
    );
}

#[test]
fn without_subnet_the_first_pool_subnet_clear_of_host_routes_is_picked() {
    let lab = lab!();
    lab.write_config("[[default-address-pools]]\nbase = \"203.0.113.0/24\"\nsize = 26\n");
    lab.host()
        .ip(&["route", "add", "203.0.113.0/26", "via", "192.0.2.1"]);
    lab.lanyard_ok(&["network", "create", "a"]);
    lab.lanyard_ok(&["network", "create", "b"]);
    let v = lab.lanyard_json(&["network", "inspect", "a", "b"]);
    assert_eq!(v[0]["subnets"][0]["subnet"], "203.0.113.64/26");
    assert_eq!(v[1]["subnets"][0]["subnet"], "203.0.113.128/26");
}

#[test]
fn a_subnet_overlapping_a_host_route_is_refused_naming_the_route() {
    let lab = lab!();
    lab.host()
        .ip(&["route", "add", "203.0.113.0/26", "via", "192.0.2.1"]);
    let err = lab.lanyard_fails(
        &["network", "create", "a", "--subnet", "203.0.113.0/24"],
        exit::CONFLICT,
    );
    assert!(
        err.contains("203.0.113.0/26 via 192.0.2.1 dev eth0"),
        "{err}"
    );
    // A bridge on the host's own LAN is refused; a macvlan on it is the point.
    lab.lanyard_fails(
        &["network", "create", "b", "--subnet", "192.0.2.0/24"],
        exit::CONFLICT,
    );
    lab.lanyard_ok(&[
        "network",
        "create",
        "m",
        "-d",
        "macvlan",
        "--subnet",
        "192.0.2.0/24",
        "-o",
        "parent=eth0",
    ]);
}

#[test]
fn several_macvlan_networks_share_a_parent_but_not_a_subnet() {
    let lab = lab!();
    lab.lanyard_ok(&[
        "network",
        "create",
        "a",
        "-d",
        "macvlan",
        "--subnet",
        "192.0.2.0/24",
        "-o",
        "parent=eth0",
    ]);
    lab.lanyard_ok(&[
        "network",
        "create",
        "b",
        "-d",
        "macvlan",
        "--subnet",
        "198.51.100.0/24",
        "-o",
        "parent=eth0",
    ]);
    let err = lab.lanyard_fails(
        &[
            "network",
            "create",
            "c",
            "-d",
            "macvlan",
            "--subnet",
            "198.51.100.0/25",
            "-o",
            "parent=eth0",
        ],
        exit::CONFLICT,
    );
    assert!(err.contains("network b"), "{err}");
    // One shim serves both.
    let shims: Vec<String> = lab
        .host()
        .links()
        .into_iter()
        .filter(|l| l.starts_with("lys-"))
        .collect();
    assert_eq!(shims.len(), 1, "{shims:?}");
}

#[test]
fn rm_and_prune_remove_networks_and_their_host_pieces() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "alpha", "--subnet", "203.0.113.0/25"]);
    lab.lanyard_ok(&["network", "create", "bravo", "--subnet", "203.0.113.128/25"]);
    lab.lanyard_ok(&[
        "network",
        "create",
        "mike",
        "-d",
        "macvlan",
        "--subnet",
        "192.0.2.0/24",
        "-o",
        "parent=eth0",
    ]);
    assert_eq!(
        lab.host()
            .links()
            .iter()
            .filter(|l| l.starts_with("ly"))
            .count(),
        3
    );
    lab.lanyard_ok(&["network", "rm", "alpha"]);
    lab.lanyard_fails(&["network", "rm", "alpha"], exit::NOT_FOUND);
    assert_eq!(names(&lab), ["bravo", "mike"]);
    let pruned = lab.lanyard_ok(&["network", "prune", "-f"]);
    assert!(
        pruned.contains("bravo") && pruned.contains("mike"),
        "{pruned}"
    );
    assert!(names(&lab).is_empty());
    assert!(
        !lab.host().links().iter().any(|l| l.starts_with("ly")),
        "{:?}",
        lab.host().links()
    );
}

#[test]
fn fifty_processes_create_and_remove_networks_at_once_without_lock_failures() {
    let lab = lab!();
    // Round 1: 50 creates at once (half with explicit subnets, half from the pool).
    let spawn_all = |cmds: Vec<Vec<String>>| {
        let children: Vec<_> = cmds
            .into_iter()
            .map(|args| {
                let mut c =
                    lab.lanyard_command(&args.iter().map(String::as_str).collect::<Vec<_>>());
                c.stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                (args, c.spawn().expect("spawn lanyard"))
            })
            .collect();
        for (args, child) in children {
            let out = child.wait_with_output().expect("wait");
            assert!(
                out.status.success(),
                "lanyard {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    spawn_all(
        (0..50)
            .map(|i| {
                let name = format!("n{i}");
                if i % 2 == 0 {
                    s(&[
                        "network",
                        "create",
                        &name,
                        "--subnet",
                        &format!("10.{}.0.0/24", 100 + i),
                    ])
                } else {
                    s(&["network", "create", &name])
                }
            })
            .collect(),
    );
    // Round 2: remove the even ones while creating 25 more, all at once.
    let mut round2: Vec<Vec<String>> = (0..50)
        .step_by(2)
        .map(|i| s(&["network", "rm", &format!("n{i}")]))
        .collect();
    round2.extend((50..75).map(|i| s(&["network", "create", &format!("n{i}")])));
    spawn_all(round2);
    let v = lab.lanyard_json(&["network", "ls"]);
    let nets = v.as_array().unwrap();
    assert_eq!(nets.len(), 50);
    let mut subnets: Vec<&str> = nets
        .iter()
        .map(|n| n["subnets"][0]["subnet"].as_str().unwrap())
        .collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 50, "two networks got the same subnet");
    // Store and kernel agree: one bridge per network, none left over.
    let bridges = lab
        .host()
        .links()
        .into_iter()
        .filter(|l| l.starts_with("lyb-"))
        .count();
    assert_eq!(bridges, 50);
}

#[test]
fn a_broken_config_stops_network_create_only() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    lab.write_config("[[default-address-pools]]\nbase = \"203.0.113.0/24\"\nsize = 40\n");
    let err = lab.lanyard_fails(&["network", "create", "x"], exit::ERROR);
    assert!(err.contains("default-address-pools"), "{err}");
    // Nothing else reads the config: listing, attaching and detaching go on.
    lab.lanyard_ok(&["network", "ls"]);
    let c1 = lab.netns("c1");
    lab.attach("br", &c1, &["--name", "web"]);
    lab.lanyard_ok(&["detach", "web"]);
}

#[test]
fn an_mtu_above_the_parents_is_refused_naming_the_parent() {
    let lab = lab!();
    let err = lab.lanyard_fails(
        &[
            "network",
            "create",
            "m",
            "-d",
            "macvlan",
            "-o",
            "parent=eth0",
            "-o",
            "mtu=9000",
            "--subnet",
            "198.51.100.0/24",
        ],
        exit::USAGE,
    );
    assert!(err.contains("-o mtu") && err.contains("eth0"), "{err}");
    assert!(names(&lab).is_empty());
}
