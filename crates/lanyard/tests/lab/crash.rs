//! The crash-recovery suite: an attach or a detach killed with SIGKILL just before
//! each of its kernel steps in turn (`LANYARD_KILL_AT=N`; the injected-error twin,
//! `LANYARD_FAIL_AT`, is in attach.rs), then `gc` and `restore`. After each, the
//! endpoint is whole (recorded active, its link and address in the namespace, its
//! host route) or gone without a trace: no link but lo in the namespace, no address
//! held, no host route to it, no lanyard link left on the host, no firewall element
//! of its port.

use crate::harness::{lab, Lab, Ns};
use std::os::unix::process::ExitStatusExt;

fn networks(lab: &Lab) {
    lab.lan_network("lan", "macvlan", &[]);
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
}

/// The fixed address each test endpoint asks for: a leaked holding of it would
/// make the next attach fail.
fn fixed_ip(net: &str) -> &'static str {
    if net == "lan" {
        "192.0.2.200"
    } else {
        "203.0.113.200"
    }
}

/// `lanyard ARGS` killed before kernel step `step`: whether it was killed (false:
/// it ran past its last step and finished).
fn killed_at(lab: &Lab, args: &[&str], step: usize) -> bool {
    let mut cmd = lab.lanyard_command(args);
    cmd.env("LANYARD_KILL_AT", step.to_string());
    let out = cmd.output().expect("run lanyard");
    match out.status.signal() {
        Some(9) => true,
        Some(s) => panic!("{args:?} step {step}: signal {s}"),
        None => {
            assert!(
                out.status.success(),
                "{args:?} step {step}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
    }
}

/// Whole or gone, as the module says; true if whole.
fn whole_or_gone(lab: &Lab, net: &str, c1: &Ns, step: usize) -> bool {
    let eps = lab.lanyard_json(&["endpoint", "ls"]);
    let eps = eps.as_array().unwrap();
    let host = lab.host();
    let host_links = host.links();
    assert!(
        !host_links.iter().any(|l| l.starts_with("lyx-")),
        "{net} step {step}: tombstone left: {host_links:?}"
    );
    let inside = c1.ip(&["-4", "-o", "addr", "show"]);
    let routes = host.ip(&["route"]);
    let ports = host.ok(&["nft", "list", "set", "bridge", "lanyard", "ports"]);
    match eps.as_slice() {
        [] => {
            assert_eq!(
                c1.links(),
                ["lo".to_string()].into(),
                "{net} step {step}: link left"
            );
            assert!(
                !inside.contains("192.0.2.") && !inside.contains("203.0.113."),
                "{net} step {step}: {inside}"
            );
            assert!(
                !routes.lines().any(|l| l.contains(" dev lys-")),
                "{net} step {step}: host route left: {routes}"
            );
            assert!(
                !host_links.iter().any(|l| l.starts_with("lyv-")),
                "{net} step {step}: veth left: {host_links:?}"
            );
            assert!(
                !ports.contains("lyv-"),
                "{net} step {step}: element left: {ports}"
            );
            false
        }
        [ep] => {
            assert_eq!(ep["state"], "active", "{net} step {step}: {ep}");
            let a = ep["addresses"][0]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap();
            assert!(
                inside.contains(&format!(" {a}/")),
                "{net} step {step}: {inside}"
            );
            if net == "lan" {
                assert!(
                    routes.contains(&format!("{a} dev lys-")),
                    "{net} step {step}: {routes}"
                );
            } else {
                let veth = ep["host_ifname"].as_str().unwrap();
                assert!(ports.contains(veth), "{net} step {step}: {ports}");
            }
            true
        }
        more => panic!("{net} step {step}: {} endpoints", more.len()),
    }
}

fn recover(lab: &Lab) {
    lab.lanyard_ok(&["gc"]);
    lab.lanyard_ok(&["restore"]);
}

#[test]
fn an_attach_killed_before_any_kernel_step_is_whole_or_gone_after_gc_and_restore() {
    let lab = lab!();
    networks(&lab);
    let c1 = lab.netns("c1");
    let p = c1.path().to_string_lossy().to_string();
    for net in ["lan", "br"] {
        let mut step = 0;
        let ip = fixed_ip(net);
        while killed_at(&lab, &["attach", net, "--netns", &p, "--ip", ip], step) {
            recover(&lab);
            if whole_or_gone(&lab, net, &c1, step) {
                lab.lanyard_ok(&["detach", net, "--netns", &p]);
            }
            step += 1;
        }
        assert!(step >= 3, "{net}: only {step} kernel steps?");
        recover(&lab);
        assert!(whole_or_gone(&lab, net, &c1, step), "finished attach");
        lab.lanyard_ok(&["detach", net, "--netns", &p]);
    }
}

#[test]
fn a_detach_killed_before_any_kernel_step_is_gone_after_gc_and_restore() {
    let lab = lab!();
    networks(&lab);
    let c1 = lab.netns("c1");
    let p = c1.path().to_string_lossy().to_string();
    for net in ["lan", "br"] {
        let mut step = 0;
        loop {
            lab.lanyard_ok(&["attach", net, "--netns", &p, "--ip", fixed_ip(net)]);
            let killed = killed_at(&lab, &["detach", net, "--netns", &p], step);
            recover(&lab);
            assert!(
                !whole_or_gone(&lab, net, &c1, step),
                "{net} step {step}: a detach, even killed, ends with the endpoint gone after gc"
            );
            if !killed {
                break;
            }
            step += 1;
        }
        assert!(step >= 2, "{net}: only {step} kernel steps?");
    }
}
