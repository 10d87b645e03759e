//! What a failing verb tells the user: each error once, naming the option the user
//! gave (not the one lanyard turned it into).

use crate::harness::{exit, lab};

/// `--pid P` stands for `/proc/P/ns/net`; an error about that namespace names `--pid`.
#[test]
fn pid_errors_name_pid_not_netns() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    // No such process (above the kernel's largest pid_max).
    let err = lab.lanyard_fails(&["attach", "br", "--pid", "4194305"], exit::USAGE);
    assert!(err.contains("--pid") && err.contains("4194305"), "{err}");
    assert!(!err.contains("--netns"), "{err}");
    // A process in the namespace lanyard runs in: the host is refused.
    let mut sleeper = lab.host().spawn(&["sleep", "60"]);
    let pid = sleeper.pid().to_string();
    let err = lab.lanyard_fails(&["attach", "br", "--pid", &pid], exit::USAGE);
    assert!(err.contains("--pid") && err.contains(&pid), "{err}");
    assert!(!err.contains("--netns"), "{err}");
    sleeper.kill();
    // --netns still names --netns.
    let err = lab.lanyard_fails(&["attach", "br", "--netns", "/nonexistent"], exit::USAGE);
    assert!(err.contains("--netns"), "{err}");
}

/// `network rm` prints each failure once (main printed the first one a second time).
#[test]
fn network_rm_prints_its_error_once() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let err = lab.lanyard_fails(&["network", "rm", "nosuch"], exit::NOT_FOUND);
    assert_eq!(err.matches("nosuch").count(), 1, "{err}");
    let err = lab.lanyard_fails(&["network", "rm", "nosuch", "br", "other"], exit::NOT_FOUND);
    assert_eq!(err.matches("nosuch").count(), 1, "{err}");
    assert_eq!(err.matches("other").count(), 1, "{err}");
    assert!(err.find("nosuch") < err.find("other"), "in order: {err}");
    assert!(lab.lanyard_ok(&["network", "ls", "-q"]).trim().is_empty());
}
