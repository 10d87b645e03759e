//! A throwaway network namespace for the etcd contract tests, so that no etcd and
//! no client socket of theirs lives in the namespace the tests were started in
//! (the lab rules: only `lyt-` namespaces the test makes and removes).
//!
//! [`LabNs::new`] makes `lyt-<pid>t<n>-etcd` (the lab harness's naming, so its
//! `cleanup_stale` removes one left by a killed test process) with `lo` up;
//! [`LabNs::run`] runs a closure on a thread that entered it (setns), so every
//! process it spawns (etcd) and every socket it opens (the client) are in there.
//! Dropping the value kills what still runs inside and deletes the namespace, also
//! when the closure panicked.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Set (to anything but `0`) by `scripts/test`: a namespace that cannot be made is
/// a failure, not a skip.
const REQUIRED_ENV: &str = "LANYARD_LAB_REQUIRED";

static NEXT: AtomicU32 = AtomicU32::new(1);

/// One `lyt-` network namespace; deleted on drop.
pub struct LabNs {
    name: String,
    path: PathBuf,
}

impl LabNs {
    /// Makes the namespace for `test`, `lo` up. `None` (printed) where this process
    /// cannot (not root); with `LANYARD_LAB_REQUIRED` set that panics instead.
    pub fn new(test: &str) -> Option<LabNs> {
        if !rustix::process::geteuid().is_root() {
            let why = "needs root (network namespaces)";
            let required = std::env::var(REQUIRED_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
            assert!(!required, "{test}: {why} ({REQUIRED_ENV} is set)");
            eprintln!("skipped {test}: {why}");
            return None;
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("lyt-{}t{n}-etcd", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = LabNs {
            path: Path::new("/run/netns").join(&name),
            name,
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        Some(ns)
    }

    /// Runs `f` on a thread inside the namespace; its panic is this thread's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                let file = std::fs::File::open(&self.path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", self.path.display()));
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("setns {}: {e}", self.name));
                f()
            });
            t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for LabNs {
    fn drop(&mut self) {
        // Whatever still runs in it (an etcd whose owner panicked before its Drop).
        if let Ok(ino) = std::fs::metadata(&self.path).map(|m| m.ino()) {
            for pid in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Some(pid) = pid.file_name().to_str().and_then(|p| p.parse().ok()) else {
                    continue;
                };
                let inside =
                    std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == ino);
                if inside && pid != std::process::id() as i32 {
                    if let Some(p) = rustix::process::Pid::from_raw(pid) {
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    }
                }
            }
        }
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok && !std::thread::panicking() {
            panic!("ip netns del {} failed", self.name);
        }
    }
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (apt-get install iproute2)"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
