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
