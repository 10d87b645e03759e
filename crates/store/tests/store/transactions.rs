//! Transactions: a failed write leaves nothing, a read is one snapshot, nesting is
//! refused, and SqliteStore tells the same story as the reference MemStore.

use crate::common::*;
use ipnet::IpNet;
use lanyard_core::ipam;
use lanyard_core::model::Network;
use lanyard_core::store::mem::MemStore;
use lanyard_core::store::Store;
use lanyard_core::{Error, Result};
use lanyard_store::SqliteStore;

#[test]
fn a_failed_write_leaves_nothing_behind() {
    let (_tmp, s) = open_new();
    let lan = network("lan", &hex_id(1, 1), "192.0.2.0/24");
    let keep = endpoint(&hex_id(3, 3), Some("keep"), &lan, vec![]);
    s.write(&mut |tx| {
        tx.put_network(&lan)?;
        tx.put_endpoint(&keep)?;
        tx.take_address(&lan.id, ip("192.0.2.50"), &keep.id)?;
        tx.set_meta("k", Some("v"))
    })
    .unwrap();
    let before = snapshot(&s, &lan);

    let e = s
        .write(&mut |tx| -> Result<()> {
            tx.put_network(&network("other", &hex_id(2, 2), "10.0.0.0/8"))?;
            let mut changed = lan.clone();
            changed.internal = true;
            tx.put_network(&changed)?;
            tx.put_endpoint(&endpoint(&hex_id(4, 4), Some("new"), &lan, vec![]))?;
            allocate(tx, &lan.id, &lan.subnets[0], "new")?;
            tx.delete_endpoint(&keep.id)?;
            tx.set_meta("k", None)?;
            tx.set_meta("k2", Some("v2"))?;
            tx.set_cursor(&lan.id, &lan.subnets[0].subnet, ip("192.0.2.200"))?;
            tx.delete_network(&lan.id)?;
            Err(Error::Conflict("port 80 is already published".into()))
        })
        .unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(m) if m == "port 80 is already published"),
        "the closure's error comes back as is: {e:?}"
    );
    assert_eq!(snapshot(&s, &lan), before);
    // And the store is usable afterwards.
    s.write(&mut |tx| tx.set_meta("after", Some("yes")))
        .unwrap();
}

fn snapshot(s: &SqliteStore, lan: &Network) -> String {
    s.read(&mut |tx| {
        Ok(format!(
            "{:?} {:?} {} {:?} {:?} {:?} {:?}",
            tx.networks()?,
            tx.endpoints()?,
            tx.address_count(&lan.id)?,
            tx.address_owner(&lan.id, ip("192.0.2.50"))?,
            tx.cursor(&lan.id, &lan.subnets[0].subnet)?,
            tx.meta("k")?,
            tx.meta("k2")?,
        ))
    })
    .unwrap()
}

#[test]
fn a_read_sees_one_snapshot_while_another_process_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let reader = SqliteStore::open(tmp.path()).unwrap();
    let writer = SqliteStore::open(tmp.path()).unwrap();
    writer
        .write(&mut |tx| tx.set_meta("k", Some("old")))
        .unwrap();
    let seen = reader
        .read(&mut |tx| {
            let first = tx.meta("k")?;
            // A writer is not blocked by an open reader (WAL)...
            writer.write(&mut |w| w.set_meta("k", Some("new")))?;
            // ...and the reader keeps its snapshot.
            Ok((first, tx.meta("k")?))
        })
        .unwrap();
    assert_eq!(seen, (Some("old".into()), Some("old".into())));
    assert_eq!(
        reader.read(&mut |tx| tx.meta("k")).unwrap().as_deref(),
        Some("new")
    );
}

#[test]
fn a_write_inside_a_write_on_the_same_store_is_refused_not_deadlocked() {
    let (_tmp, s) = open_new();
    let e = s
        .write(&mut |tx| {
            tx.set_meta("outer", Some("1"))?;
            s.write(&mut |t| t.set_meta("inner", Some("1")))
        })
        .unwrap_err();
    assert_eq!(kind(&e), "Store");
    assert!(e.to_string().contains("inside another"), "{e}");
    assert_eq!(s.read(&mut |tx| tx.meta("outer")).unwrap(), None);
}

/// The same story told to the reference MemStore and to SqliteStore, observed
/// step by step. Errors are compared by kind (wording may differ).
fn story<S: Store>(s: &S) -> Vec<String> {
    let mut log = Vec::new();
    let mut note = |what: &str, r: Result<String>| {
        log.push(format!(
            "{what}: {}",
            r.unwrap_or_else(|e| format!("Err({})", kind(&e)))
        ));
    };
    let a = network(
        "a",
        "ab10000000000000000000000000000000000000000000000000000000000000",
        "198.51.100.0/29",
    );
    let b = network(
        "b",
        "ab20000000000000000000000000000000000000000000000000000000000000",
        "2001:db8:9::/64",
    );
    let sc = a.subnets[0].clone();
    note(
        "put a b",
        s.write(&mut |tx| {
            tx.put_network(&a)
                .and_then(|()| tx.put_network(&b))
                .map(|()| "ok".into())
        }),
    );
    note(
        "dup",
        s.write(&mut |tx| {
            tx.put_network(&network("a", &hex_id(3, 3), "10.0.0.0/8"))
                .map(|()| "ok".into())
        }),
    );
    for k in ["a", "ab", "ab1", "ab2", &b.id, "zz", ""] {
        note(
            &format!("network {k:?}"),
            s.read(&mut |tx| Ok(format!("{:?}", tx.network(k)?.map(|n| n.name)))),
        );
    }
    // Fill the /29 (hosts .1-.6, .1 is the gateway), run out, free one, wrap around.
    for i in 0..6 {
        let owner = hex_id(10, i);
        note(
            &format!("alloc {i}"),
            s.write(&mut |tx| {
                let addr = allocate(tx, &a.id, &sc, &owner)?;
                tx.put_endpoint(&endpoint(
                    &owner,
                    Some(&format!("c{i}")),
                    &a,
                    vec![IpNet::new(addr, 29).unwrap()],
                ))?;
                Ok(addr.to_string())
            }),
        );
    }
    // A namespace of its own, with published ports; then the lookups by namespace
    // identity and by port.
    let mut pub1 = endpoint(&hex_id(11, 1), Some("pub"), &a, vec![]);
    pub1.netns_inode = (4, 77);
    pub1.ports = ports(&["127.0.0.1:8080-8081:80-81", "53:53/udp"]);
    note(
        "put pub",
        s.write(&mut |tx| {
            tx.put_endpoint(&pub1)?;
            for m in &pub1.ports {
                tx.take_port(m, &pub1.id)?;
            }
            Ok(format!("{}", tx.address_count(&a.id)?))
        }),
    );
    for ns in [(4, 77), (4, 4026532000), (5, 77)] {
        note(
            &format!("in netns {ns:?}"),
            s.read(&mut |tx| {
                let names: Vec<String> = tx
                    .endpoints_in_netns(ns)?
                    .iter()
                    .map(|e| e.display_name())
                    .collect();
                Ok(names.join(","))
            }),
        );
    }
    for spec in [
        "8080:1",
        "127.0.0.1:8081:1",
        "127.0.0.2:8081:1",
        "8082:1",
        "8080:1/udp",
        "53:1/udp",
        "[::1]:53:1/udp",
        "53:1",
    ] {
        let m = port(spec);
        note(
            &format!("port {spec}"),
            s.read(&mut |tx| Ok(format!("{:?}", tx.port_holder(&m)?))),
        );
    }
    // Released with everything the owner holds; the record goes with a delete.
    note(
        "release pub",
        s.write(&mut |tx| {
            tx.release_addresses(&pub1.id)?;
            let m = port("8080:1");
            Ok(format!(
                "{:?} {}",
                tx.port_holder(&m)?,
                tx.endpoints_in_netns((4, 77))?.len()
            ))
        }),
    );
    note(
        "delete pub",
        s.write(&mut |tx| {
            tx.delete_endpoint(&pub1.id)?;
            Ok(format!("{}", tx.endpoints_in_netns((4, 77))?.len()))
        }),
    );
    note(
        "detach c2",
        s.write(&mut |tx| tx.delete_endpoint(&hex_id(10, 2)).map(|()| "ok".into())),
    );
    note(
        "realloc",
        s.write(&mut |tx| allocate(tx, &a.id, &sc, "x").map(|a| a.to_string())),
    );
    note(
        "static taken",
        s.write(&mut |tx| {
            ipam::reserve(tx, &a.id, &sc, "--ip", ip("198.51.100.3"), "y").map(|()| "ok".into())
        }),
    );
    note(
        "v6",
        s.write(&mut |tx| allocate(tx, &b.id, &b.subnets[0], "z").map(|a| a.to_string())),
    );
    note(
        "rolled back",
        s.write(&mut |tx| {
            tx.release_addresses("x")
                .and_then(|()| Err::<String, _>(Error::Other("no".into())))
        }),
    );
    note(
        "counts",
        s.read(&mut |tx| {
            Ok(format!(
                "{} {} {:?} {:?}",
                tx.address_count(&a.id)?,
                tx.address_count(&b.id)?,
                tx.address_owner(&a.id, ip("198.51.100.4"))?,
                tx.cursor(&a.id, &sc.subnet)?
            ))
        }),
    );
    note(
        "endpoint c4",
        s.read(&mut |tx| Ok(format!("{:?}", tx.endpoint("c4")?.map(|e| e.addresses)))),
    );
    note(
        "endpoint prefix",
        s.read(&mut |tx| {
            Ok(format!(
                "{:?}",
                tx.endpoint("000000000000000a")?.map(|e| e.name)
            ))
        }),
    );
    note(
        "delete a",
        s.write(&mut |tx| tx.delete_network(&a.id).map(|()| "ok".into())),
    );
    note(
        "after",
        s.read(&mut |tx| {
            Ok(format!(
                "{:?} {} {:?} {}",
                tx.networks()?
                    .iter()
                    .map(|n| n.name.to_string())
                    .collect::<Vec<_>>(),
                tx.endpoints()?.len(),
                tx.cursor(&a.id, &sc.subnet)?,
                tx.address_count(&a.id)?
            ))
        }),
    );
    log
}

#[test]
fn sqlite_store_tells_the_same_story_as_mem_store() {
    let (_tmp, s) = open_new();
    let want = story(&MemStore::default());
    let got = story(&s);
    assert_eq!(got, want);
    assert!(want.iter().any(|l| l == "dup: Err(Conflict)"), "{want:#?}");
    assert!(
        want.iter().any(|l| l == "network \"ab\": Err(Conflict)"),
        "{want:#?}"
    );
    assert!(
        want.iter().any(|l| l == "alloc 5: Err(Conflict)"),
        "{want:#?}"
    );
    assert!(
        want.iter().any(|l| l == "realloc: 198.51.100.4"),
        "{want:#?}"
    );
    let pub_id = format!("{:?}", Some(hex_id(11, 1)));
    for (line, ok) in [
        ("in netns (4, 77): pub", true),
        ("in netns (5, 77): ", true),
        ("port 8080:1", true),
        ("port 127.0.0.1:8081:1", true),
        ("port 127.0.0.2:8081:1", false),
        ("port 8082:1", false),
        ("port 8080:1/udp", false),
        ("port [::1]:53:1/udp", true),
        ("port 53:1", false),
    ] {
        let want_line = if line.starts_with("port") {
            format!("{line}: {}", if ok { pub_id.as_str() } else { "None" })
        } else {
            line.to_string()
        };
        assert!(want.contains(&want_line), "{want_line} in {want:#?}");
    }
    assert!(
        want.iter()
            .any(|l| l.starts_with("in netns (4, 4026532000): c0,c1")),
        "{want:#?}"
    );
    for line in ["put pub: 5", "release pub: None 1", "delete pub: 0"] {
        assert!(want.contains(&line.to_string()), "{line} in {want:#?}");
    }
}
