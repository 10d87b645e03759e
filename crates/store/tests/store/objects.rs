//! Networks, endpoints, addresses, cursors and meta: each Tx method round-trips,
//! lookups go name, id, unique prefix, and names are unique.

use crate::common::*;
use lanyard_core::model::EndpointState;
use lanyard_core::store::Store;
use lanyard_core::Error;
use lanyard_store::{SqliteStore, DB_FILE};

#[test]
fn networks_survive_a_reopen_sorted_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let lan = network("lan", &hex_id(1, 1), "192.0.2.0/24");
    let dmz = network("dmz", &hex_id(2, 2), "198.51.100.0/24");
    {
        let s = SqliteStore::open(tmp.path()).unwrap();
        s.write(&mut |tx| {
            tx.put_network(&lan)?;
            tx.put_network(&dmz)
        })
        .unwrap();
    }
    let s = SqliteStore::open(tmp.path()).unwrap();
    assert_eq!(s.path(), tmp.path().join("state.db"));
    let all = s.read(&mut |tx| tx.networks()).unwrap();
    assert_eq!(all, vec![dmz.clone(), lan.clone()]);
    assert_eq!(s.read(&mut |tx| tx.network("lan")).unwrap(), Some(lan));
}

#[test]
fn a_second_network_named_lan_is_a_conflict_but_updating_lan_is_not() {
    let (_tmp, s) = open_new();
    let lan = network("lan", &hex_id(1, 1), "192.0.2.0/24");
    s.write(&mut |tx| tx.put_network(&lan)).unwrap();

    let e = s
        .write(&mut |tx| tx.put_network(&network("lan", &hex_id(9, 9), "10.1.0.0/16")))
        .unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(m) if m == "network lan already exists"),
        "{e:?}"
    );

    let mut changed = lan.clone();
    changed.mtu = Some(1400);
    changed.name = lanyard_core::name::NetworkName::new("lan2").unwrap();
    s.write(&mut |tx| tx.put_network(&changed)).unwrap();
    let all = s.read(&mut |tx| tx.networks()).unwrap();
    assert_eq!(all, vec![changed]);
    // The old name is free again.
    s.write(&mut |tx| tx.put_network(&network("lan", &hex_id(9, 9), "10.1.0.0/16")))
        .unwrap();
}

#[test]
fn networks_are_found_by_name_then_id_then_unique_id_prefix() {
    let (_tmp, s) = open_new();
    let a = network(
        "alpha",
        "aa11000000000000000000000000000000000000000000000000000000000000",
        "10.1.0.0/24",
    );
    let b = network(
        "beta",
        "aa22000000000000000000000000000000000000000000000000000000000000",
        "10.2.0.0/24",
    );
    // A network whose *name* looks like a prefix of the others' ids.
    let c = network(
        "aa1",
        "cc33000000000000000000000000000000000000000000000000000000000000",
        "10.3.0.0/24",
    );
    s.write(&mut |tx| {
        tx.put_network(&a)?;
        tx.put_network(&b)?;
        tx.put_network(&c)
    })
    .unwrap();
    let find = |k: &str| {
        s.read(&mut |tx| tx.network(k))
            .map(|n| n.map(|n| n.name.to_string()))
    };
    assert_eq!(find("alpha").unwrap().as_deref(), Some("alpha"));
    assert_eq!(find(&b.id).unwrap().as_deref(), Some("beta"));
    assert_eq!(find("aa2").unwrap().as_deref(), Some("beta"));
    assert_eq!(
        find("aa1").unwrap().as_deref(),
        Some("aa1"),
        "an exact name beats an id prefix"
    );
    assert_eq!(find("cc").unwrap().as_deref(), Some("aa1"));
    // A network named with alpha's full id: that id still means alpha.
    let d = network(&a.id, &hex_id(9, 9), "10.4.0.0/24");
    s.write(&mut |tx| tx.put_network(&d)).unwrap();
    assert_eq!(
        find(&a.id).unwrap().as_deref(),
        Some("alpha"),
        "a full id is never shadowed by a name"
    );
    assert_eq!(find("dd").unwrap(), None);
    assert_eq!(find("").unwrap(), None);
    assert_eq!(find("b").unwrap(), None, "names are not matched by prefix");
    let e = find("aa").unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(m) if m.contains("ambiguous") && m.contains("\"aa\"")),
        "{e:?}"
    );
}

#[test]
fn endpoints_round_trip_and_names_are_unique() {
    let (_tmp, s) = open_new();
    let lan = network("lan", &hex_id(1, 1), "192.0.2.0/24");
    let web = endpoint(&hex_id(7, 2), Some("web"), &lan, vec![net("192.0.2.2/24")]);
    let anon1 = endpoint(&hex_id(7, 1), None, &lan, vec![net("192.0.2.3/24")]);
    let anon2 = endpoint(&hex_id(8, 1), None, &lan, vec![]);
    s.write(&mut |tx| {
        tx.put_network(&lan)?;
        tx.put_endpoint(&web)?;
        tx.put_endpoint(&anon1)?;
        tx.put_endpoint(&anon2)
    })
    .unwrap();
    assert_eq!(
        s.read(&mut |tx| tx.endpoints()).unwrap(),
        vec![anon1.clone(), web.clone(), anon2.clone()]
    );
    assert_eq!(
        s.read(&mut |tx| tx.endpoint("web")).unwrap(),
        Some(web.clone())
    );
    assert_eq!(
        s.read(&mut |tx| tx.endpoint(&anon2.id)).unwrap(),
        Some(anon2.clone())
    );
    assert_eq!(
        s.read(&mut |tx| tx.endpoint(&anon2.id[..16])).unwrap(),
        Some(anon2.clone())
    );
    let e = s
        .read(&mut |tx| tx.endpoint(&hex_id(7, 0)[..16]))
        .unwrap_err();
    assert_eq!(kind(&e), "Conflict");

    let thief = endpoint(&hex_id(9, 9), Some("web"), &lan, vec![]);
    let e = s.write(&mut |tx| tx.put_endpoint(&thief)).unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(m) if m == "endpoint name web is already in use"),
        "{e:?}"
    );

    let mut pending = web.clone();
    pending.state = lanyard_core::model::EndpointState::Pending;
    s.write(&mut |tx| tx.put_endpoint(&pending)).unwrap();
    assert_eq!(s.read(&mut |tx| tx.endpoint("web")).unwrap(), Some(pending));
}

#[test]
fn detaching_an_endpoint_releases_its_addresses_and_only_its() {
    let (_tmp, s) = open_new();
    let lan = network("lan", &hex_id(1, 1), "192.0.2.0/24");
    let sc = lan.subnets[0].clone();
    let (a, b) = (hex_id(5, 1), hex_id(5, 2));
    let got = s
        .write(&mut |tx| {
            tx.put_network(&lan)?;
            let x = allocate(tx, &lan.id, &sc, &a)?;
            let y = allocate(tx, &lan.id, &sc, &b)?;
            tx.put_endpoint(&endpoint(&a, None, &lan, vec![]))?;
            tx.put_endpoint(&endpoint(&b, None, &lan, vec![]))?;
            Ok((x, y))
        })
        .unwrap();
    assert_eq!(got, (ip("192.0.2.2"), ip("192.0.2.3")));
    assert_eq!(
        s.read(&mut |tx| tx.address_owner(&lan.id, ip("192.0.2.2")))
            .unwrap(),
        Some(a.clone())
    );
    assert_eq!(s.read(&mut |tx| tx.address_count(&lan.id)).unwrap(), 2);

    s.write(&mut |tx| tx.delete_endpoint(&a)).unwrap();
    assert_eq!(s.read(&mut |tx| tx.endpoint(&a)).unwrap(), None);
    assert_eq!(
        s.read(&mut |tx| tx.address_owner(&lan.id, ip("192.0.2.2")))
            .unwrap(),
        None
    );
    assert_eq!(
        s.read(&mut |tx| tx.address_owner(&lan.id, ip("192.0.2.3")))
            .unwrap(),
        Some(b.clone())
    );
    assert_eq!(s.read(&mut |tx| tx.address_count(&lan.id)).unwrap(), 1);

    // release_addresses alone keeps the endpoint record.
    s.write(&mut |tx| tx.release_addresses(&b)).unwrap();
    assert_eq!(s.read(&mut |tx| tx.address_count(&lan.id)).unwrap(), 0);
    assert!(s.read(&mut |tx| tx.endpoint(&b)).unwrap().is_some());
    // Deleting what is not there is not an error.
    s.write(&mut |tx| tx.delete_endpoint(&a)).unwrap();
}

#[test]
fn removing_a_network_drops_its_addresses_and_cursor_but_not_other_networks() {
    let (_tmp, s) = open_new();
    let lan = network("lan", &hex_id(1, 1), "192.0.2.0/24");
    let dmz = network("dmz", &hex_id(2, 2), "192.0.2.0/24");
    for n in [&lan, &dmz] {
        s.write(&mut |tx| {
            tx.put_network(n)?;
            allocate(tx, &n.id, &n.subnets[0], "owner")
        })
        .unwrap();
    }
    let sub = lan.subnets[0].subnet;
    s.write(&mut |tx| tx.delete_network(&lan.id)).unwrap();
    s.read(&mut |tx| {
        assert_eq!(tx.network("lan")?, None);
        assert_eq!(tx.address_count(&lan.id)?, 0);
        assert_eq!(tx.cursor(&lan.id, &sub)?, None);
        assert_eq!(tx.address_count(&dmz.id)?, 1);
        assert_eq!(tx.cursor(&dmz.id, &sub)?, Some(ip("192.0.2.2")));
        Ok(())
    })
    .unwrap();
    s.write(&mut |tx| tx.delete_network(&lan.id)).unwrap();
}

#[test]
fn cursors_and_meta_round_trip() {
    let (_tmp, s) = open_new();
    let v4 = net("192.0.2.0/24");
    let v6 = net("2001:db8:1::/64");
    s.write(&mut |tx| {
        tx.set_cursor("n", &v4, ip("192.0.2.9"))?;
        tx.set_cursor("n", &v4, ip("192.0.2.10"))?;
        tx.set_cursor("n", &v6, ip("2001:db8:1::a"))?;
        tx.set_meta("shim/eth0", Some("ly-1234"))?;
        tx.set_meta("shim/eth0", Some("ly-5678"))?;
        tx.set_meta("gone", Some("x"))?;
        tx.set_meta("gone", None)?;
        tx.set_meta("never", None)
    })
    .unwrap();
    s.read(&mut |tx| {
        assert_eq!(tx.cursor("n", &v4)?, Some(ip("192.0.2.10")));
        assert_eq!(tx.cursor("n", &v6)?, Some(ip("2001:db8:1::a")));
        assert_eq!(tx.cursor("other", &v4)?, None);
        assert_eq!(tx.meta("shim/eth0")?.as_deref(), Some("ly-5678"));
        assert_eq!(tx.meta("gone")?, None);
        Ok(())
    })
    .unwrap();
}

#[test]
fn addresses_are_stored_in_canonical_form() {
    let tmp = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(tmp.path()).unwrap();
    s.write(&mut |tx| {
        tx.take_address("n", ip("2001:DB8:0:0::7"), "a")?;
        tx.take_address("n", ip("192.0.2.7"), "a")
    })
    .unwrap();
    let conn = raw(tmp.path());
    let mut st = conn
        .prepare("SELECT key FROM holdings WHERE scope = 'n' ORDER BY key")
        .unwrap();
    let addrs: Vec<String> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(addrs, ["192.0.2.7", "2001:db8::7"]);
    // Re-taking an address hands it to the new owner, like MemStore.
    s.write(&mut |tx| tx.take_address("n", ip("2001:db8::7"), "b"))
        .unwrap();
    assert_eq!(
        s.read(&mut |tx| tx.address_owner("n", ip("2001:db8::7")))
            .unwrap()
            .as_deref(),
        Some("b")
    );
}

#[test]
fn marking_an_endpoint_active_writes_one_page_and_its_namespace_entry_none() {
    // What an attach's second transaction does: the same endpoint again, now
    // active. Every page written is a WAL frame each later open reads back.
    let (tmp, s) = open_new();
    let lan = network("lan", &hex_id(1, 1), "192.0.2.0/24");
    let mut ep = endpoint(&hex_id(7, 1), None, &lan, vec![net("192.0.2.2/24")]);
    ep.state = EndpointState::Pending;
    s.write(&mut |tx| {
        tx.put_network(&lan)?;
        tx.take_address(&lan.id, ip("192.0.2.2"), &ep.id)?;
        tx.put_endpoint(&ep)
    })
    .unwrap();
    let wal = tmp.path().join("state").join(format!("{DB_FILE}-wal"));
    let before = std::fs::metadata(&wal).unwrap().len();
    ep.state = EndpointState::Active;
    s.write(&mut |tx| tx.put_endpoint(&ep)).unwrap();
    let frame = 24 + 4096; // frame header + page
    assert_eq!(std::fs::metadata(&wal).unwrap().len() - before, frame);
    assert_eq!(
        s.read(&mut |tx| tx.endpoints_in_netns(ep.netns_inode))
            .unwrap(),
        vec![ep.clone()]
    );
}

#[test]
fn a_mac_is_held_once_per_network_but_endpoints_from_before_that_share_one_still_update() {
    let (_tmp, s) = open_new();
    let lan = network("lan", &hex_id(1, 1), "192.0.2.0/24");
    let mac = lanyard_core::model::MacAddr::parse_for("--mac", "02:00:5e:00:00:01").unwrap();
    let with = |n: u64, state| lanyard_core::model::Endpoint {
        mac: Some(mac),
        state,
        ..endpoint(&hex_id(2, n), None, &lan, vec![])
    };
    s.write(&mut |tx| tx.put_network(&lan)).unwrap();
    s.write(&mut |tx| tx.put_endpoint(&with(1, EndpointState::Pending)))
        .unwrap();
    // A new endpoint with the same MAC on the network: refused.
    let err = s
        .write(&mut |tx| tx.put_endpoint(&with(2, EndpointState::Pending)))
        .unwrap_err();
    assert_eq!(kind(&err), "Conflict", "{err}");
    // One already recorded (from before MACs were held) updates, so it can be detached.
    s.write(&mut |tx| tx.put_endpoint(&with(3, EndpointState::Detaching)))
        .unwrap();
    assert_eq!(
        s.read(&mut |tx| tx.mac_holder(&lan.id, &mac)).unwrap(),
        Some(hex_id(2, 1))
    );
}
