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
    for t in ["networks", "endpoints", "holdings", "cursors", "meta"] {
        let n = count(
            &conn,
            &format!("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '{t}'"),
        );
        assert_eq!(n, 1, "table {t}");
    }
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM sqlite_schema WHERE name IN ('holdings_by_owner', 'endpoints_by_name')"
        ),
        2
    );
    // Opening again is a no-op.
    SqliteStore::open(tmp.path()).unwrap();
    assert_eq!(count(&conn, "PRAGMA user_version"), SCHEMA_VERSION as i64);
}

/// What schema version 1 (the first lanyard) wrote: a fixture, not the code's copy.
const V1: &str = "CREATE TABLE networks (id TEXT NOT NULL PRIMARY KEY, name TEXT NOT NULL UNIQUE, json TEXT NOT NULL);
     CREATE TABLE endpoints (id TEXT NOT NULL PRIMARY KEY, name TEXT UNIQUE, network_id TEXT NOT NULL, json TEXT NOT NULL);
     CREATE TABLE addresses (network_id TEXT NOT NULL, addr TEXT NOT NULL, owner TEXT NOT NULL,
                             PRIMARY KEY (network_id, addr)) WITHOUT ROWID;
     CREATE INDEX addresses_by_owner ON addresses (owner);
     CREATE TABLE cursors (network_id TEXT NOT NULL, subnet TEXT NOT NULL, addr TEXT NOT NULL,
                           PRIMARY KEY (network_id, subnet)) WITHOUT ROWID;
     CREATE TABLE meta (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
     PRAGMA user_version = 1;";

#[test]
fn a_version_1_file_is_brought_up_to_date_and_keeps_every_record() {
    let tmp = tempfile::tempdir().unwrap();
    let lan = network("lan", &hex_id(1, 1), "192.0.2.0/24");
    let mut web = endpoint(&hex_id(7, 2), Some("web"), &lan, vec![net("192.0.2.2/24")]);
    web.netns_inode = (4, 77);
    web.ports = ports(&["127.0.0.1:8080:80", "53:53/udp"]);
    let mut anon = endpoint(&hex_id(7, 1), None, &lan, vec![net("192.0.2.3/24")]);
    // Attached to web's namespace after web: its default route has the next metric.
    let mut later = endpoint(&hex_id(7, 3), None, &lan, vec![net("192.0.2.4/24")]);
    later.netns_inode = web.netns_inode;
    later.created = web.created + 1;
    {
        let conn = raw(tmp.path());
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        conn.execute_batch(V1).unwrap();
        conn.execute(
            "INSERT INTO networks VALUES (?1, ?2, ?3)",
            rusqlite::params![
                lan.id,
                lan.name.as_str(),
                serde_json::to_string(&lan).unwrap()
            ],
        )
        .unwrap();
        for e in [&web, &anon, &later] {
            conn.execute(
                "INSERT INTO endpoints VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    e.id,
                    e.name.as_ref().map(|n| n.as_str()),
                    lan.id,
                    serde_json::to_string(e).unwrap()
                ],
            )
            .unwrap();
        }
        conn.execute_batch(&format!(
            "INSERT INTO addresses VALUES ('{0}', '192.0.2.2', '{1}'), ('{0}', '192.0.2.3', '{2}');
             INSERT INTO cursors VALUES ('{0}', '192.0.2.0/24', '192.0.2.3');",
            lan.id, web.id, anon.id
        ))
        .unwrap();
    }

    let s = SqliteStore::open(tmp.path()).unwrap();
    // Step 4 stored the metric each one's default route had.
    web.route_metric = Some(100);
    anon.route_metric = Some(100);
    later.route_metric = Some(101);
    assert_eq!(s.read(&mut |tx| tx.networks()).unwrap(), vec![lan.clone()]);
    assert_eq!(
        s.read(&mut |tx| tx.endpoints()).unwrap(),
        vec![anon.clone(), web.clone(), later.clone()]
    );
    assert_eq!(
        s.read(&mut |tx| tx.endpoint("web")).unwrap(),
        Some(web.clone())
    );
    assert_eq!(
        s.read(&mut |tx| tx.address_owner(&lan.id, ip("192.0.2.3")))
            .unwrap(),
        Some(anon.id.clone())
    );
    let sc = &lan.subnets[0];
    assert_eq!(
        s.read(&mut |tx| tx.cursor(&lan.id, &sc.subnet)).unwrap(),
        Some(ip("192.0.2.3"))
    );

    // Step 3 filled the lookup columns from the stored JSON.
    assert_eq!(
        s.read(&mut |tx| tx.endpoints_in_netns((4, 77))).unwrap(),
        vec![web.clone(), later.clone()]
    );
    assert_eq!(
        s.read(&mut |tx| tx.endpoints_in_netns(anon.netns_inode))
            .unwrap(),
        vec![anon.clone()]
    );
    for (spec, holder) in [
        ("8080:1", Some(web.id.clone())),
        ("127.0.0.2:8080:1", None),
        ("53:1/udp", Some(web.id.clone())),
        ("53:1", None),
    ] {
        let m = port(spec);
        assert_eq!(
            s.read(&mut |tx| tx.port_holder(&m)).unwrap(),
            holder,
            "{spec}"
        );
    }

    // The new layout: no rowid tables beside id indexes, no leftovers.
    let conn = raw(tmp.path());
    assert_eq!(count(&conn, "PRAGMA user_version"), SCHEMA_VERSION as i64);
    for t in ["networks", "endpoints"] {
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [t],
                |r| r.get(0),
            )
            .unwrap();
        assert!(sql.ends_with("WITHOUT ROWID"), "{t}: {sql}");
    }
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '%_v2' OR name LIKE 'addresses%'"
        ),
        0
    );
    // Still 8 schema objects for every open to parse.
    assert_eq!(count(&conn, "SELECT count(*) FROM sqlite_schema"), 8);
    // Names stay unique; any number of endpoints may have none.
    let anon2 = endpoint(&hex_id(8, 1), None, &lan, vec![]);
    s.write(&mut |tx| tx.put_endpoint(&anon2)).unwrap();
    let thief = endpoint(&hex_id(9, 9), Some("web"), &lan, vec![]);
    let e = s.write(&mut |tx| tx.put_endpoint(&thief)).unwrap_err();
    assert_eq!(kind(&e), "Conflict");
    let e = conn
        .execute(
            "INSERT INTO endpoints (id, name, network_id, json) VALUES ('x', 'web', 'n', '{}')",
            [],
        )
        .unwrap_err();
    assert!(e.to_string().contains("UNIQUE"), "{e}");
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
