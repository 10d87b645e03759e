//! The command line without a kernel: generated man page and completions, usage
//! errors with exit code 2. No root needed.

use std::process::Command;

fn lanyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        .env("LANYARD_STATE_DIR", "/nonexistent/lanyard-cli-test")
        .output()
        .expect("run lanyard")
}

#[test]
fn man_page_is_generated_from_the_command_definitions() {
    let out = lanyard(&["man"]);
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH lanyard"),
        "{man}"
    );
    for sub in [
        "network", "attach", "detach", "run", "restore", "gc", "daemon",
    ] {
        assert!(man.contains(sub), "man page lacks {sub}");
    }
}

#[test]
fn completions_cover_the_subcommands_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = lanyard(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("attach") && text.contains("network"),
            "{shell}: {text}"
        );
    }
}

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    let out = lanyard(&["network", "create"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME"));
    let out = lanyard(&["run", "--network", "lan"]);
    assert_eq!(out.status.code(), Some(2), "run without a command");
    let out = lanyard(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Subcommands are built lazily (clap's `defer`); the doc comment of an argument
/// struct would then replace the subcommand's own description. Each `--help` must
/// start with the description written on the subcommand.
#[test]
fn each_subcommand_help_starts_with_its_own_description() {
    for (sub, about) in [
        (&["attach"][..], "Attach a network namespace to a network"),
        (&["detach"], "Detach an endpoint"),
        (&["run"], "Run a command in a fresh network namespace"),
        (&["restore"], "Rebuild bridges, shims, routes and endpoints"),
        (&["gc"], "Forget endpoints whose namespace is gone"),
        (&["daemon"], "Keep lanyard's nftables tables in place"),
        (&["network", "create"], "Create a network"),
        (&["endpoint", "ls"], "List endpoints"),
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = lanyard(&args);
        assert!(out.status.success(), "{sub:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.starts_with(about), "{sub:?} --help begins: {help}");
    }
}

/// `lanyard` ignores SIGPIPE (Rust's start-up does): a reader that went away is an
/// error on write, not death by a signal (the daemon writes sockets whose peers may
/// hang up).
#[test]
fn a_closed_pipe_is_an_error_not_a_signal() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .arg("man")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run lanyard");
    drop(child.stdout.take()); // the reader hangs up before lanyard writes
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), None, "{status:?}");
}

/// A reader that hangs up on a listing (`lanyard network ls --json | head -0`) ends
/// the call with an error status, never a panic.
#[test]
fn a_closed_pipe_on_a_listing_ends_quietly_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["--state-dir"])
        .arg(dir.path().join("state"))
        .args(["--run-dir"])
        .arg(dir.path().join("run"))
        .args(["info", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run lanyard");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "{:?}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
}
