//! `lanyard daemon` as a service host: what it repairs that the CLI alone would leave
//! broken (set elements deleted by someone else), and who may receive what its
//! control socket carries (never another user: run directories others may write are
//! refused).

use crate::harness::{addr_of, exit, lab};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// How long a repair may take to show.
const SETTLE: Duration = Duration::from_secs(5);

#[test]
fn the_daemon_puts_back_an_anti_spoofing_element_deleted_by_hand() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let c1 = lab.netns("c1");
    let ep = lab.attach("br", &c1, &[]);
    let c1_addr = addr_of(&ep, false);
    let host = lab.host();
    assert!(host.ping_within(&c1_addr, SETTLE), "no ping before");
    let daemon = lab.daemon(&[]);
    // The endpoint's (port . MAC . IPv4) element, as nft prints it.
    let listing = host.ok(&["nft", "list", "set", "bridge", "lanyard", "addr4"]);
    let element = listing
        .split("elements = {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .map(|e| e.trim().to_string())
        .unwrap_or_else(|| panic!("no element in {listing}"));
    assert!(element.contains(&c1_addr), "{element}");
    host.ok(&[
        "nft",
        "delete",
        "element",
        "bridge",
        "lanyard",
        "addr4",
        &format!("{{ {element} }}"),
    ]);
    assert!(
        host.ping_within(&c1_addr, SETTLE),
        "the endpoint's IPv4 traffic stayed dropped\ndaemon stdout:\n{}\nstderr:\n{}",
        daemon.stdout(),
        daemon.stderr()
    );
    let listing = host.ok(&["nft", "list", "set", "bridge", "lanyard", "addr4"]);
    assert!(listing.contains(&c1_addr), "{listing}");
    assert!(daemon.stdout().contains("element"), "{}", daemon.stdout());
}

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

#[test]
fn the_daemon_refuses_a_run_directory_others_may_write() {
    let lab = lab!();
    std::fs::create_dir_all(lab.run_dir()).unwrap();
    chmod(&lab.run_dir(), 0o777);
    let err = lab.lanyard_fails(&["daemon", "--interval", "60"], exit::USAGE);
    assert!(
        err.contains(lab.run_dir().to_str().unwrap()) && err.contains("writable by no one else"),
        "{err}"
    );
    assert!(!lab.run_dir().join("daemon.sock").exists());
}

#[test]
fn a_detach_never_hands_a_namespace_to_a_socket_another_user_bound() {
    let lab = lab!();
    lab.lan_network("lan", "macvlan", &[]);
    // A run directory anyone may write, reachable by user nobody, and nobody's
    // socket in it before any daemon's.
    chmod(lab.dir(), 0o711);
    std::fs::create_dir_all(lab.run_dir()).unwrap();
    chmod(&lab.run_dir(), 0o1777);
    let sock = lab.run_dir().join("daemon.sock");
    let mut thief = crate::harness::Bg::spawn(
        {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "socat",
                "-u",
            ])
            .arg(format!("UNIX-RECV:{}", sock.display()))
            .arg("STDOUT");
            c
        },
        "socat as nobody",
    );
    let end = Instant::now() + SETTLE;
    while !sock.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        sock.exists(),
        "nobody's socket did not appear: {}",
        thief.stderr()
    );
    let c1 = lab.netns("c1");
    lab.attach("lan", &c1, &[]);
    let path = c1.path();
    let mut cmd = lab.lanyard_command(&["detach", "lan", "--netns", path.to_str().unwrap()]);
    cmd.env("LANYARD_LOG", "lanyard_kernel=debug");
    let out = cmd.output().expect("run lanyard");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "detach failed: {err}");
    assert!(
        !err.contains("handed to the daemon"),
        "a container's namespace went to user nobody's socket: {err}"
    );
    // The detach's own worker deleted the tombstone instead.
    let end = Instant::now() + SETTLE;
    while c1.links().iter().any(|l| l.starts_with("lyx-")) {
        assert!(Instant::now() < end, "tombstones left: {:?}", c1.links());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(thief.is_running());
}

#[test]
fn a_daemon_killed_with_hand_offs_queued_leaves_no_tombstone_after_its_restart() {
    let lab = lab!();
    lab.lan_network("lan", "macvlan", &[]);
    let cs: Vec<_> = (1..=3).map(|i| lab.netns(&format!("c{i}"))).collect();
    for c in &cs {
        lab.attach("lan", c, &[]);
    }
    let mut daemon = lab.daemon(&[]);
    // Stopped, it takes nothing off its socket: the hand-offs stay queued.
    // SAFETY: plain kill of our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGSTOP) };
    for c in &cs {
        let path = c.path();
        let mut cmd = lab.lanyard_command(&["detach", "lan", "--netns", path.to_str().unwrap()]);
        // The CLI's own detach, handing its tombstone over (a stopped daemon would
        // not answer a delegated verb).
        cmd.env("LANYARD_LOG", "lanyard_kernel=debug")
            .env("LANYARD_NO_DAEMON", "1");
        let out = cmd.output().expect("run lanyard");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "detach failed: {err}");
        assert!(err.contains("handed to the daemon"), "{err}");
    }
    daemon.kill();
    let left = |cs: &[crate::harness::Ns]| -> Vec<String> {
        cs.iter()
            .flat_map(|c| c.links())
            .filter(|l| l.starts_with("lyx-"))
            .collect()
    };
    assert_eq!(left(&cs).len(), 3, "the hand-offs were not queued");
    let again = lab.daemon(&[]);
    let end = Instant::now() + SETTLE;
    while !left(&cs).is_empty() {
        assert!(
            Instant::now() < end,
            "tombstones left after the restart: {:?}\n{}",
            left(&cs),
            again.stdout()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_subscriber_hears_of_every_attach_and_detach_and_status_counts_them() {
    use lanyard_kernel::handoff::{Change, Client, Message};
    let lab = lab!();
    lab.lan_network("lan", "macvlan", &[]);
    let mut daemon = lab.daemon(&[]);
    assert!(
        daemon.stdout().contains("0 endpoints in the store"),
        "{}",
        daemon.stdout()
    );
    let sock = lab.run_dir().join("daemon.sock");
    let sub = Client::connect(&sock).unwrap();
    sub.send(&Message::Subscribe, &[]).unwrap();
    assert_eq!(sub.recv(SETTLE).unwrap(), Message::Subscribed);
    let c1 = lab.netns("c1");
    let ep = lab.attach("lan", &c1, &[]);
    let id = ep["id"].as_str().unwrap().to_string();
    let heard = |change| Message::Endpoint {
        change,
        network: "lan".into(),
        id: id.clone(),
    };
    assert_eq!(sub.recv(SETTLE).unwrap(), heard(Change::Added));
    let path = c1.path();
    lab.lanyard_ok(&["detach", "lan", "--netns", path.to_str().unwrap()]);
    assert_eq!(sub.recv(SETTLE).unwrap(), heard(Change::Removed));
    let asker = Client::connect(&sock).unwrap();
    asker.send(&Message::Status, &[]).unwrap();
    match asker.recv(SETTLE).unwrap() {
        Message::StatusIs(kv) => {
            assert!(kv.contains(&"version=2".to_string()), "{kv:?}");
            // Both ran in the daemon (delegated), which told the subscriber itself.
            assert!(kv.contains(&"verbs=2".to_string()), "{kv:?}");
            assert!(kv.contains(&"subscribers=1".to_string()), "{kv:?}");
        }
        other => panic!("{other:?}"),
    }
    // A delegated verb's error reads and exits as the local one.
    let err = lab.lanyard_fails(&["attach", "lan", "--pid", "999999999"], 2);
    assert!(err.contains("invalid --pid \"999999999\""), "{err}");
    let dup = lab.attach("lan", &c1, &[]);
    let err = lab.lanyard_fails(&["attach", "lan", "--netns", path.to_str().unwrap()], 3);
    assert!(err.contains("already on network lan"), "{err}");
    // The daemon gone (kill -9, its socket file left), the CLI runs verbs itself.
    daemon.kill();
    lab.lanyard_ok(&["detach", dup["id"].as_str().unwrap()]);
    assert!(!c1.links().contains("eth0"));
}

#[test]
fn an_attach_starts_no_thread_and_no_event_loop() {
    let lab = lab!();
    lab.lan_network("lan", "macvlan", &[]);
    let c1 = lab.netns("c1");
    let trace = lab.dir().join("attach.strace");
    let path = c1.path();
    let mut cmd = lab.host().command(&[
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=clone,clone3,fork,vfork,epoll_create1",
        "-o",
    ]);
    cmd.arg(&trace).arg(crate::harness::lanyard_bin());
    cmd.arg("--state-dir").arg(lab.state_dir());
    cmd.arg("--run-dir").arg(lab.run_dir());
    cmd.args(["attach", "lan", "--netns", path.to_str().unwrap()]);
    let out = cmd.output().expect("run strace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(&trace).unwrap();
    assert!(
        calls.trim().is_empty(),
        "an attach started threads, processes or an event loop:\n{calls}"
    );
}

/// Holds one thread (not its process) stopped by ptrace until dropped.
struct Stopped(libc::pid_t);

impl Stopped {
    fn thread(tid: u32) -> Stopped {
        let tid = tid as libc::pid_t;
        // SAFETY: plain ptrace requests on a thread id, no memory passed; the stop is
        // waited for with __WALL (the daemon is our child, traced from this thread).
        unsafe {
            assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0), 0, "seize");
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0);
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
        }
        Stopped(tid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above; the thread is in a ptrace stop.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) };
    }
}

#[test]
fn a_delegated_verb_is_answered_while_the_event_loop_is_stopped() {
    let lab = lab!();
    lab.lan_network("lan", "macvlan", &[]);
    let daemon = lab.daemon(&[]);
    let c1 = lab.netns("c1");
    let path = c1.path();
    let path = path.to_str().unwrap();
    // The event loop runs on the daemon's main thread; its engine thread runs verbs.
    let held = Stopped::thread(daemon.pid());
    let attach = lab.lanyard_spawn(&["attach", "lan", "--netns", path, "--json"]);
    // Not a timing: a daemon that needs its loop for a verb never answers while the
    // loop is stopped (the CLI would wait 120 s).
    let out = attach.finish(Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    assert!(c1.links().contains("eth0"));
    let detach = lab.lanyard_spawn(&["detach", "lan", "--netns", path]);
    assert!(detach.finish(Duration::from_secs(20)).status.success());
    drop(held);
    // The verbs ran in the daemon (not locally), and its loop goes on serving.
    use lanyard_kernel::handoff::{Client, Message};
    let asker = Client::connect(&lab.run_dir().join("daemon.sock")).unwrap();
    asker.send(&Message::Status, &[]).unwrap();
    match asker.recv(SETTLE).unwrap() {
        Message::StatusIs(kv) => assert!(kv.contains(&"verbs=2".to_string()), "{kv:?}"),
        other => panic!("{other:?}"),
    }
    assert!(!c1.links().contains("eth0"));
}
