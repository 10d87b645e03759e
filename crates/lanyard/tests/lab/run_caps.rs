//! `lanyard run` gives its command capabilities as `docker run` does: Docker's default
//! set, `--cap-add`/`--cap-drop`/`--privileged`, and added ones kept effective for a
//! non-root `--user`.

use crate::harness::{exit, lab, Lab};

/// The `CapEff` mask the command sees.
fn cap_eff(lab: &Lab, extra: &[&str]) -> String {
    let mut args = vec!["run", "--network", "none"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "grep", "CapEff", "/proc/self/status"]);
    let out = lab.lanyard_ok(&args);
    out.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// Whether `ip link set lo mtu 1300` works for the command (needs NET_ADMIN).
fn may_change_mtu(lab: &Lab, extra: &[&str]) -> bool {
    let mut args = vec!["run", "--network", "none"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "ip", "link", "set", "lo", "mtu", "1300"]);
    let out = lab.lanyard(&args);
    match out.status.code() {
        Some(0) => true,
        Some(2) => {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("not permitted"), "{err}");
            false
        }
        other => panic!("{extra:?}: exit {other:?}: {out:?}"),
    }
}

#[test]
fn run_gives_dockers_default_capabilities_and_takes_cap_add_cap_drop_and_privileged() {
    let lab = lab!();
    assert_eq!(
        cap_eff(&lab, &[]),
        "00000000a80425fb",
        "Docker's default set"
    );
    assert!(!may_change_mtu(&lab, &[]), "no NET_ADMIN by default");
    assert!(may_change_mtu(&lab, &["--cap-add", "NET_ADMIN"]));
    assert!(may_change_mtu(&lab, &["--privileged"]));
    assert_eq!(cap_eff(&lab, &["--cap-drop", "ALL"]), "0000000000000000");
    assert_eq!(
        cap_eff(
            &lab,
            &["--cap-drop", "all", "--cap-add", "cap_net_bind_service"]
        ),
        "0000000000000400"
    );
    // A non-root user keeps what was added (ambient), and nothing else.
    let user = ["--user", "65534:65534"];
    assert_eq!(cap_eff(&lab, &user), "0000000000000000");
    assert!(!may_change_mtu(&lab, &user));
    let with = [&user[..], &["--cap-add", "NET_ADMIN", "--cap-drop", "ALL"]].concat();
    assert_eq!(cap_eff(&lab, &with), "0000000000001000");
    assert!(may_change_mtu(&lab, &with), "non-root with NET_ADMIN");
    let err = lab.lanyard_fails(
        &[
            "run",
            "--network",
            "none",
            "--cap-add",
            "NET_ADMN",
            "--",
            "true",
        ],
        exit::USAGE,
    );
    assert!(
        err.contains("--cap-add") && err.contains("NET_ADMN"),
        "{err}"
    );
}
