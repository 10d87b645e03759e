//! A store that was lost, emptied or replaced while lanyard's links live on: the
//! verbs that delete what the store does not know refuse it, say how to recover, and
//! change nothing.

use crate::harness::{exit, lab, Lab, Ns};

/// A bridge network with one endpoint in `c1`: a live `lyv-` veth on the host.
fn live_endpoint(lab: &Lab) -> (String, Ns) {
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let c1 = lab.netns("c1");
    let ep = lab.attach("br", &c1, &[]);
    (ep["host_ifname"].as_str().unwrap().to_string(), c1)
}

fn refused_and_untouched(lab: &Lab, (veth, c1): &(String, Ns)) {
    let err = lab.lanyard_fails(&["gc"], exit::CONFLICT);
    assert!(err.contains("--adopt-store"), "{err}");
    let err = lab.lanyard_fails(&["restore"], exit::CONFLICT);
    assert!(err.contains("not the one this host"), "{err}");
    assert!(
        lab.host().links().contains(veth),
        "the live veth {veth} was deleted"
    );
    assert!(c1.links().contains("eth0"));
    // Accepting the new store is explicit.
    lab.lanyard_ok(&["gc", "--adopt-store"]);
    lab.lanyard_ok(&["gc"]);
}

#[test]
fn a_truncated_store_stops_gc_and_restore_until_adopted() {
    let lab = lab!();
    let live = live_endpoint(&lab);
    lab.lanyard_ok(&["gc"]); // the host now knows its store
    let db = lab.state_dir().join("state.db");
    for f in ["state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(lab.state_dir().join(f));
    }
    std::fs::File::create(&db).unwrap(); // truncated to 0 bytes
    refused_and_untouched(&lab, &live);
}

#[test]
fn a_removed_state_dir_stops_gc_and_restore_until_adopted() {
    let lab = lab!();
    let live = live_endpoint(&lab);
    lab.lanyard_ok(&["network", "ls"]);
    lab.lanyard_ok(&["gc"]);
    std::fs::remove_dir_all(lab.state_dir()).unwrap();
    refused_and_untouched(&lab, &live);
}

/// `UPDATE table SET json = '{' WHERE id = ID` on the lab's state.db: a damaged row.
fn damage_row(lab: &Lab, table: &str, id: &str) {
    let db = lab.state_dir().join("state.db");
    let sql = format!("UPDATE {table} SET json = '{{' WHERE id = '{id}';");
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(&sql)
        .output()
        .expect("run sqlite3");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn one_unreadable_endpoint_row_blocks_no_listing_and_detach_forgets_it() {
    let lab = lab!();
    let (veth1, c1) = live_endpoint(&lab);
    let c2 = lab.netns("c2");
    let ep2 = lab.attach("br", &c2, &[]);
    let (id2, veth2) = (
        ep2["id"].as_str().unwrap().to_string(),
        ep2["host_ifname"].as_str().unwrap().to_string(),
    );
    damage_row(&lab, "endpoints", &id2);

    // Listing skips it and says so.
    let out = lab.lanyard(&["endpoint", "ls", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let eps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 1, "{eps}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&id2),
        "{out:?}"
    );
    lab.lanyard_ok(&["network", "ls"]);
    lab.lanyard_ok(&["network", "create", "other", "--subnet", "198.51.100.0/24"]);
    // gc reports it, keeps going, and takes its veth for no stray.
    let err = lab.lanyard_fails(&["gc"], exit::ERROR);
    assert!(
        err.contains(&id2) && err.contains("lanyard detach"),
        "{err}"
    );
    let links = lab.host().links();
    assert!(
        links.contains(&veth1) && links.contains(&veth2),
        "{links:?}"
    );
    assert!(c2.links().contains("eth0"));
    // Its network cannot be removed from under it.
    let err = lab.lanyard_fails(&["network", "rm", "br"], exit::CONFLICT);
    assert!(err.contains(&id2), "{err}");
    // `detach ID` forgets it; then gc is clean (and takes the veth nobody records).
    lab.lanyard_ok(&["detach", &id2[..12]]);
    lab.lanyard_ok(&["gc"]);
    assert!(!lab.host().links().contains(&veth2));
    assert!(c1.links().contains("eth0"));
    // Its address is free again.
    let addr = ep2["addresses"][0]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    lab.attach("br", &lab.netns("c3"), &["--ip", addr]);
}

/// `sqlite3 DB SQL`, which must succeed.
fn sqlite(db: &std::path::Path, sql: &str) {
    let out = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3");
    assert!(out.status.success(), "{out:?}");
}

/// `state.db` replaced by `copy` (its WAL and shared memory gone).
fn put_back(lab: &Lab, copy: &std::path::Path) {
    let dir = lab.state_dir();
    for f in ["state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    std::fs::copy(copy, dir.join("state.db")).unwrap();
}

#[test]
fn an_older_copy_of_the_store_put_back_stops_gc_restore_create_and_rm_until_adopted() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    lab.lanyard_ok(&["gc"]);
    let copy = lab.dir().join("older.db");
    sqlite(
        &lab.state_dir().join("state.db"),
        &format!("VACUUM INTO '{}'", copy.display()),
    );
    // Since the copy: a live endpoint on br, and a gc that saw it.
    let c1 = lab.netns("c1");
    let veth = lab.attach("br", &c1, &[])["host_ifname"]
        .as_str()
        .unwrap()
        .to_string();
    lab.lanyard_ok(&["gc"]);
    put_back(&lab, &copy);
    let err = lab.lanyard_fails(
        &["network", "create", "x", "--subnet", "10.9.0.0/24"],
        exit::CONFLICT,
    );
    assert!(err.contains("older state"), "{err}");
    let err = lab.lanyard_fails(&["restore"], exit::CONFLICT);
    assert!(err.contains("older state"), "{err}");
    // br has no endpoint in the older copy: rm would take its bridge from c1.
    let err = lab.lanyard_fails(&["network", "rm", "br"], exit::CONFLICT);
    assert!(err.contains("older state"), "{err}");
    // Refused calls do not creep the store's generation up to the host's.
    for _ in 0..3 {
        let err = lab.lanyard_fails(&["gc"], exit::CONFLICT);
        assert!(err.contains("--adopt-store"), "{err}");
    }
    assert!(
        lab.host().links().contains(&veth),
        "the live veth {veth} was deleted"
    );
    assert!(c1.links().contains("eth0"));
    lab.lanyard_ok(&["gc", "--adopt-store"]);
    lab.lanyard_ok(&["network", "create", "x", "--subnet", "10.9.0.0/24"]);
}

#[test]
fn a_store_truncated_before_a_reboot_is_not_adopted_silently() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    lab.lanyard_ok(&["gc"]);
    for f in ["state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(lab.state_dir().join(f));
    }
    std::fs::File::create(lab.state_dir().join("state.db")).unwrap();
    // A reboot: the run dir (tmpfs) starts empty.
    std::fs::remove_dir_all(lab.run_dir()).unwrap();
    std::fs::create_dir(lab.run_dir()).unwrap();
    let err = lab.lanyard_fails(&["gc"], exit::CONFLICT);
    assert!(
        err.contains("--adopt-store") && err.contains("new or empty"),
        "{err}"
    );
    lab.lanyard_fails(
        &["network", "create", "x", "--subnet", "10.9.0.0/24"],
        exit::CONFLICT,
    );
    lab.lanyard_ok(&["gc", "--adopt-store"]);
    lab.lanyard_ok(&["network", "create", "x", "--subnet", "10.9.0.0/24"]);
}

#[test]
fn a_garbled_wal_that_sqlite_drops_stops_gc_until_adopted() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "old", "--subnet", "198.51.100.0/24"]);
    lab.lanyard_ok(&["gc"]);
    // All of it in state.db itself (SQLite does this every 100 pages); what follows
    // is in the WAL alone.
    sqlite(
        &lab.state_dir().join("state.db"),
        "PRAGMA wal_checkpoint(TRUNCATE)",
    );
    let live = live_endpoint(&lab);
    lab.lanyard_ok(&["gc"]);
    let wal = lab.state_dir().join("state.db-wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    assert!(bytes.len() > 32 + 24 + 200, "no WAL to garble");
    // The first frame's page (after the 32-byte WAL header and its 24-byte frame
    // header): its checksum fails, and SQLite's recovery (the shared memory gone, as
    // after a crash) drops it and every frame after it.
    for b in &mut bytes[32 + 24 + 100..32 + 24 + 200] {
        *b ^= 0xff;
    }
    std::fs::write(&wal, bytes).unwrap();
    let _ = std::fs::remove_file(lab.state_dir().join("state.db-shm"));
    let err = lab.lanyard_fails(&["gc"], exit::CONFLICT);
    assert!(
        err.contains("older state") && err.contains("--adopt-store"),
        "{err}"
    );
    let (veth, c1) = &live;
    assert!(
        lab.host().links().contains(veth),
        "the live veth {veth} was deleted"
    );
    assert!(c1.links().contains("eth0"));
}
