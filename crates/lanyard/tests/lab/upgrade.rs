//! Upgrades: a running `lanyard daemon` whose store a newer lanyard migrated stops
//! (failure status: systemd's `Restart=on-failure` starts the new binary) instead of
//! failing every check and delegated verb until someone restarts it. (The package's
//! postinst restarts it too: scripts/deb-test.)

use crate::harness::lab;
use std::time::Duration;

#[test]
fn a_running_daemon_stops_when_a_newer_lanyard_migrated_its_store() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let daemon = lab.daemon(&["--interval", "1", "--gc-interval", "0"]);
    // What a newer lanyard's first call does to the store.
    let newer = lanyard_store::SCHEMA_VERSION + 1;
    let out = std::process::Command::new("sqlite3")
        .arg(lab.state_dir().join("state.db"))
        .arg(format!("PRAGMA user_version = {newer};"))
        .output()
        .expect("run sqlite3");
    assert!(out.status.success(), "{out:?}");
    // Within a few periodic checks (1 s apart).
    let out = daemon.finish(Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "has schema version {newer}, newer than this lanyard's"
        )),
        "{stderr}"
    );
    assert!(
        !lab.run_dir().join("daemon.sock").exists(),
        "socket left behind"
    );
}
