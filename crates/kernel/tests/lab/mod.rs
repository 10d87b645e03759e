//! Throwaway network namespaces for the kernel tests. Nothing here touches the
//! namespace the test process started in: every test body runs in a thread that
//! `unshare(CLONE_NEWNET)`s first, and "container" namespaces are other threads'
//! namespaces, reachable as `/proc/PID/task/TID/ns/net` while those threads live.

use lanyard_core::kernel::fake::ifname;
use lanyard_core::name::IfName;
use lanyard_core::op::{Netns, Op};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Why these tests cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    None
}

/// Moves the calling thread into a fresh network namespace.
fn unshare_net() -> std::io::Result<()> {
    // SAFETY: affects only the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// Runs `body` in a new thread inside a fresh network namespace (the test's "host").
/// Prints why and returns without running it if that is impossible here (not root,
/// no unshare); a panic in `body` fails the test.
pub fn in_fresh_netns(test: &str, body: impl FnOnce() + Send + 'static) {
    if let Some(why) = cannot_run() {
        eprintln!("{test}: skipped: {why}");
        return;
    }
    let t = std::thread::spawn(move || match unshare_net() {
        Ok(()) => {
            body();
            true
        }
        Err(e) => {
            eprintln!("unshare(CLONE_NEWNET) failed: {e}");
            false
        }
    });
    match t.join() {
        Ok(true) => {}
        Ok(false) => eprintln!("{test}: skipped: cannot create a network namespace"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Another fresh namespace (a "container"), alive while this value is.
pub struct SideNetns {
    /// `/proc/PID/task/TID/ns/net` of the thread holding it.
    pub path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SideNetns {
    /// Creates it.
    pub fn new() -> SideNetns {
        let (path_tx, path_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            unshare_net().expect("unshare for a side namespace");
            let path = format!("/proc/{}/task/{}/ns/net", std::process::id(), gettid());
            path_tx.send(PathBuf::from(path)).expect("send path");
            let _ = stop_rx.recv();
        });
        SideNetns {
            path: path_rx.recv().expect("side namespace path"),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// As an op's namespace.
    pub fn netns(&self) -> Netns {
        Netns::Path(self.path.clone())
    }

    /// `ip -j ARGS` inside it.
    pub fn ip_json(&self, args: &str) -> serde_json::Value {
        let net = format!("--net={}", self.path.display());
        run_json("nsenter", &[&net, "ip", "-j"], args)
    }

    /// `cat FILE` inside it (for /proc/sys/net/…).
    pub fn cat(&self, file: &str) -> String {
        let net = format!("--net={}", self.path.display());
        let out = Command::new("nsenter")
            .args([net.as_str(), "cat", file])
            .output()
            .expect("run nsenter cat");
        assert!(
            out.status.success(),
            "cat {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for SideNetns {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // `join` returns when the thread clears its tid, which the kernel does
        // before it releases the thread's namespaces and its /proc entry: wait
        // until the path is really gone (bounded), so "gone" means gone.
        for _ in 0..5000 {
            if std::fs::metadata(&self.path).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if !std::thread::panicking() {
            panic!(
                "{} still there 5 s after its thread ended",
                self.path.display()
            );
        }
    }
}

/// `ip -j ARGS` in the calling thread's namespace.
pub fn ip_json(args: &str) -> serde_json::Value {
    run_json("ip", &["-j"], args)
}

fn run_json(cmd: &str, pre: &[&str], args: &str) -> serde_json::Value {
    let out = Command::new(cmd)
        .args(pre)
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {pre:?} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ip -j {args}: {e}"))
}

/// An interface name known to be valid.
pub fn name(s: &str) -> IfName {
    ifname(s)
}

/// A plain veth pair (no MTU, master or MAC of its own): `host` in the calling
/// thread's namespace, `peer` in `peer_netns`.
pub fn veth(host: &str, peer: &str, peer_netns: Netns) -> Op {
    Op::CreateVeth {
        host: name(host),
        peer: name(peer),
        peer_netns,
        mtu: None,
        master: None,
        peer_mac: None,
        host_mac: None,
    }
}

/// Tombstones (`lyx-…`) left in the calling thread's namespace.
pub fn tombstones_left(k: &mut lanyard_kernel::Netlink) -> usize {
    use lanyard_core::kernel::Kernel;
    k.view(&Netns::Host)
        .unwrap()
        .links
        .iter()
        .filter(|l| l.name.starts_with("lyx-"))
        .count()
}
