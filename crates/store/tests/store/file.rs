//! The file itself: schema versions (migrate an empty file, refuse a newer one) and
//! private permissions whatever the umask.

use crate::common::*;
use lanyard_core::store::Store;
use lanyard_store::{SqliteStore, DB_FILE, SCHEMA_VERSION};
use std::path::Path;
use std::process::Command;

#[test]
fn an_empty_file_is_migrated_to_the_current_schema_in_wal_mode() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(DB_FILE), b"").unwrap();
    SqliteStore::open(tmp.path()).unwrap();
    let conn = raw(tmp.path());
    assert_eq!(count(&conn, "PRAGMA user_version"), SCHEMA_VERSION as i64);
    let jm: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jm, "wal");
    for t in ["networks", "endpoints", "addresses", "cursors", "meta"] {
        let n = count(
            &conn,
            &format!("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '{t}'"),
        );
        assert_eq!(n, 1, "table {t}");
    }
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM sqlite_schema WHERE name = 'addresses_by_owner'"
        ),
        1
    );
    // Opening again is a no-op.
    SqliteStore::open(tmp.path()).unwrap();
    assert_eq!(count(&conn, "PRAGMA user_version"), SCHEMA_VERSION as i64);
}

#[test]
fn a_file_from_a_newer_lanyard_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    SqliteStore::open(tmp.path()).unwrap();
    let newer = SCHEMA_VERSION + 1;
    raw(tmp.path())
        .pragma_update(None, "user_version", newer)
        .unwrap();
    let e = SqliteStore::open(tmp.path()).unwrap_err();
    let msg = e.to_string();
    assert_eq!(kind(&e), "Store");
    assert!(
        msg.contains(&format!("schema version {newer} is newer")),
        "{msg}"
    );
    assert!(msg.contains("upgrade lanyard"), "{msg}");
    assert!(msg.contains("state.db"), "{msg}");
    assert_eq!(count(&raw(tmp.path()), "PRAGMA user_version"), newer as i64);
}

#[test]
fn state_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("var/lib/lanyard");
    check_private_files(&dir);
}

/// Opens a store in `dir` (which must not exist), writes, and checks every mode.
fn check_private_files(dir: &Path) {
    let s = SqliteStore::open(dir).unwrap();
    s.write(&mut |tx| tx.set_meta("k", Some("v"))).unwrap();
    assert_eq!(mode(dir), 0o700, "state dir");
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
}

#[test]
fn state_files_are_private_even_with_umask_0() {
    if let Ok(dir) = std::env::var("LANYARD_STORE_UMASK_CHILD") {
        return check_private_files(Path::new(&dir));
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let out = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "file::state_files_are_private_even_with_umask_0",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("LANYARD_STORE_UMASK_CHILD", &dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child ran the check"
    );
    assert_eq!(mode(&dir.join("state.db")), 0o600);
}
