//! The local copy without root: lines, journal, snapshot, fallback.

use super::file::{COMPACT_AT, FILE, JOURNAL};
use super::*;
use lanyard_core::model::NetworkRequest;
use std::io::Write;

const STORE: &str = "10.0.0.5:2379/lanyard/";

fn net(name: &str, idc: char) -> Network {
    NetworkRequest {
        name: name.into(),
        driver: Some("bridge".into()),
        subnets: vec!["198.51.100.0/24".into()],
        ..Default::default()
    }
    .validate(idc.to_string().repeat(64), 0)
    .unwrap()
}

fn ep(n: &Network, idc: char, node: &str, addr: &str) -> Endpoint {
    serde_json::from_value(serde_json::json!({
        "id": idc.to_string().repeat(64), "name": null, "network_id": n.id,
        "network": n.name, "netns": "/run/netns/c", "netns_inode": [1, idc as u64],
        "ifname": "eth0", "host_ifname": null, "mac": null,
        "addresses": [addr], "gateways": [], "state": "active", "created": 0,
        "node": node
    }))
    .unwrap()
}

fn rec<T: Serialize>(id: &str, revision: i64, v: Option<&T>) -> Record {
    Record {
        id: id.to_string(),
        revision,
        json: v.map(|v| serde_json::to_string(v).unwrap()),
    }
}

fn ids(eps: Vec<Endpoint>) -> Vec<char> {
    eps.iter().map(|e| e.id.chars().next().unwrap()).collect()
}

fn seen_net(n: &Network, rev: i64) -> Seen {
    Seen {
        snapshot: rev,
        networks: vec![rec(&n.id, rev, Some(n))],
        ..Seen::default()
    }
}

fn full(snapshot: i64, networks: Vec<Record>, endpoints: Vec<Record>) -> Seen {
    Seen {
        snapshot,
        all_networks: true,
        all_endpoints: true,
        networks,
        endpoints,
    }
}

#[test]
fn copy_round_trips_through_journal_and_snapshot_and_answers_as_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let f = CopyFile::new(dir.path(), STORE, Some("h1"));
    assert!(f.load().unwrap().is_none(), "no copy yet");
    let n = net("lan", 'n');
    let (mine, theirs) = (
        ep(&n, 'a', "h1", "198.51.100.7/24"),
        ep(&n, 'b', "h2", "198.51.100.8/24"),
    );
    // A transaction's records go to the journal.
    f.merge(&Seen {
        snapshot: 5,
        networks: vec![rec(&n.id, 3, Some(&n))],
        endpoints: vec![
            rec(&mine.id, 5, Some(&mine)),
            rec(&theirs.id, 5, Some(&theirs)),
        ],
        ..Seen::default()
    })
    .unwrap();
    assert!(f.journal().exists() && !f.path().exists());
    let copy = f.load().unwrap().expect("the journal alone is a copy");
    assert_eq!(copy.networks(), std::slice::from_ref(&n));
    assert_eq!(ids(copy.endpoints()), ['a'], "this host's endpoints only");
    // A full listing folds it into the snapshot.
    f.merge(&full(
        9,
        vec![rec(&n.id, 3, Some(&n))],
        vec![rec(&mine.id, 5, Some(&mine))],
    ))
    .unwrap();
    assert!(f.path().exists() && !f.journal().exists());
    let copy = f.load().unwrap().expect("written");
    assert_eq!(ids(copy.endpoints()), ['a']);
    let age = SystemTime::now().duration_since(copy.updated()).unwrap();
    assert!(age < Duration::from_secs(60), "{age:?}");
    // As a store: look-ups by name, the addresses held.
    let store = copy.to_store();
    let (found, holder) = store
        .read(&mut |tx| {
            Ok((
                tx.network("lan")?,
                tx.address_owner(&n.id, "198.51.100.7".parse().unwrap())?,
            ))
        })
        .unwrap();
    assert_eq!(found.as_ref(), Some(&n));
    assert_eq!(holder.as_deref(), Some(mine.id.as_str()));
    // Another store's or another host's copy is not this one, journal included.
    f.merge(&seen_net(&n, 10)).unwrap();
    for other in [
        CopyFile::new(dir.path(), "other:2379/lanyard/", Some("h1")),
        CopyFile::new(dir.path(), STORE, Some("h2")),
    ] {
        assert!(other.load().unwrap().is_none());
    }
}

#[test]
fn a_failed_compaction_leaves_snapshot_and_journal_and_a_good_one_swaps_in_whole() {
    let dir = tempfile::tempdir().unwrap();
    let f = CopyFile::new(dir.path(), STORE, Some("h1"));
    let (n, m) = (net("lan", 'n'), net("wan", 'm'));
    let listing = |rev, nets: &[&Network]| {
        full(
            rev,
            nets.iter().map(|x| rec(&x.id, rev, Some(*x))).collect(),
            vec![],
        )
    };
    f.merge(&listing(1, &[&n])).unwrap();
    f.merge(&seen_net(&m, 2)).unwrap();
    let (snap, journal) = (
        std::fs::read(f.path()).unwrap(),
        std::fs::read(f.journal()).unwrap(),
    );
    // The temp file cannot be made (a directory holds its name): the compaction
    // fails and both files stay as they were.
    let tmp = dir.path().join(format!("{FILE}.tmp"));
    std::fs::create_dir(&tmp).unwrap();
    assert!(f.merge(&listing(3, &[&n, &m])).is_err());
    assert_eq!(std::fs::read(f.path()).unwrap(), snap);
    assert_eq!(std::fs::read(f.journal()).unwrap(), journal);
    std::fs::remove_dir(&tmp).unwrap();
    // Swapped in whole: the old file (held open) is untouched, the new one whole.
    let old = std::fs::File::open(f.path()).unwrap();
    f.merge(&listing(4, &[&n, &m])).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_ne!(
        old.metadata().unwrap().ino(),
        std::fs::metadata(f.path()).unwrap().ino()
    );
    assert_eq!(f.load().unwrap().unwrap().networks().len(), 2);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, [FILE, "etcd-copy.lock"], "no temp file, no journal");
    // An unreadable snapshot is no copy; the next compaction starts afresh.
    std::fs::write(f.path(), b"{half").unwrap();
    assert!(f.load().is_err());
    f.merge(&listing(5, &[&n])).unwrap();
    assert_eq!(f.load().unwrap().unwrap().networks().len(), 1);
}

#[test]
fn the_journal_skips_torn_and_foreign_lines_and_is_folded_once_it_grows() {
    let dir = tempfile::tempdir().unwrap();
    let f = CopyFile::new(dir.path(), STORE, Some("h1"));
    let (n, m) = (net("lan", 'n'), net("wan", 'm'));
    f.merge(&seen_net(&n, 1)).unwrap();
    // Another store's line, and a line cut short by a crash.
    CopyFile::new(dir.path(), "other:2379/x/", Some("h1"))
        .merge(&seen_net(&m, 2))
        .unwrap();
    let mut j = std::fs::OpenOptions::new()
        .append(true)
        .open(f.journal())
        .unwrap();
    j.write_all(br#"{"of":"x","at":1,"snaps"#).unwrap();
    drop(j);
    let copy = f.load().unwrap().unwrap();
    assert_eq!(copy.networks(), std::slice::from_ref(&n));
    // Grown past the bound (here by filler lines), the next append folds it.
    let filler = vec![b'\n'; COMPACT_AT as usize];
    std::fs::OpenOptions::new()
        .append(true)
        .open(f.journal())
        .unwrap()
        .write_all(&filler)
        .unwrap();
    f.merge(&seen_net(&n, 3)).unwrap();
    assert!(!f.journal().exists(), "folded into the snapshot");
    assert_eq!(
        f.load().unwrap().unwrap().networks(),
        std::slice::from_ref(&n)
    );
    assert!(!dir.path().join(JOURNAL).exists());
}

#[test]
fn copy_never_goes_back_in_time_when_lines_come_out_of_order_or_twice() {
    let n = net("lan", 'n');
    let (a, b) = (
        ep(&n, 'a', "h1", "198.51.100.7/24"),
        ep(&n, 'b', "h1", "198.51.100.8/24"),
    );
    let mut c = Copy::new(STORE, Some("h1"));
    let line = |snapshot, all: bool, records: Vec<Record>| {
        let seen = Seen {
            snapshot,
            all_endpoints: all,
            endpoints: records,
            ..Seen::default()
        };
        Line::of(&seen, "id", Some("h1"), 100)
    };
    // a attached at 5, detached at 8; a read of it at 5 applied late loses; a
    // line applied twice changes nothing.
    let attached = line(5, false, vec![rec(&a.id, 5, Some(&a))]);
    assert!(c.apply(&attached));
    assert!(c.apply(&line(8, false, vec![rec::<Endpoint>(&a.id, 8, None)])));
    assert!(!c.apply(&attached));
    assert_eq!(ids(c.endpoints()), Vec::<char>::new());
    // A full listing at 10 names b only: a's tombstone goes; b stays.
    assert!(c.apply(&line(10, true, vec![rec(&b.id, 9, Some(&b))])));
    assert_eq!(ids(c.endpoints()), ['b']);
    assert_eq!(
        c.endpoints.entries.len(),
        1,
        "tombstones below the floor go"
    );
    // An older listing changes nothing; a record older than the floor that the
    // copy does not know was gone by then.
    assert!(!c.apply(&line(7, true, vec![])));
    assert!(!c.apply(&attached));
    assert_eq!(ids(c.endpoints()), ['b']);
    // A newer listing without b drops it; a later change of b comes back in.
    assert!(c.apply(&line(12, true, vec![])));
    assert_eq!(ids(c.endpoints()), Vec::<char>::new());
    assert!(c.apply(&line(13, false, vec![rec(&b.id, 13, Some(&b))])));
    assert_eq!(ids(c.endpoints()), ['b']);
}

#[test]
fn fallback_reads_the_copy_refuses_every_write_and_says_how_old_it_is() {
    let n = net("lan", 'n');
    let mut c = Copy::new(STORE, Some("h1"));
    c.apply(&Line::of(&seen_net(&n, 4), "id", Some("h1"), 1_700_000_000));
    assert_eq!(c.updated, 1_700_000_000);
    let why = "etcd at 10.0.0.5:2379: connecting: refused (is the cluster up?)";
    let fb = Fallback::new(&c, why);
    assert_eq!(
        fb.read(&mut |tx| tx.networks()).unwrap(),
        std::slice::from_ref(&n)
    );
    let mut ran = false;
    let e = fb
        .write(&mut |tx| {
            ran = true;
            tx.delete_network(&n.id)
        })
        .unwrap_err();
    assert!(matches!(&e, Error::Unreachable(w) if w == why), "{e:?}");
    assert!(!ran, "a write never runs on the copy");
    assert_eq!(fb.read(&mut |tx| tx.networks()).unwrap().len(), 1);
    let note = fb.notice();
    assert!(
        note.starts_with(&format!(
            "etcd unreachable ({why}): showing this host's local copy from "
        )),
        "{note}"
    );
    assert!(note.contains("Tue, 14 Nov 2023 22:13:20 GMT"), "{note}");
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert!(when(at, at + Duration::from_secs(42)).ends_with(", 42 s ago"));
    assert!(when(at, at + Duration::from_secs(600)).ends_with(", 10 min ago"));
    assert!(when(at, at + Duration::from_secs(3 * 3600)).ends_with(", 3 h ago"));
}
