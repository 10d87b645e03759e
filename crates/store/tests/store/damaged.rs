//! One damaged row (a record whose JSON no longer parses) hides no other record from
//! a listing, is named by `unreadable`, and an endpoint's can be forgotten with what
//! it holds.

use crate::common::*;
use lanyard_core::store::{Store, Unreadable};
use lanyard_store::SqliteStore;

#[test]
fn a_damaged_row_is_left_out_of_listings_named_and_forgettable() {
    let tmp = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(tmp.path()).unwrap();
    let lan = network("lan", &hex_id(1, 1), "192.0.2.0/24");
    let dmz = network("dmz", &hex_id(2, 2), "198.51.100.0/24");
    let good = endpoint(
        &hex_id(3, 3),
        Some("good"),
        &lan,
        vec![net("192.0.2.10/24")],
    );
    let bad = endpoint(&hex_id(4, 4), Some("bad"), &lan, vec![net("192.0.2.11/24")]);
    s.write(&mut |tx| {
        tx.put_network(&lan)?;
        tx.put_network(&dmz)?;
        for e in [&good, &bad] {
            tx.put_endpoint(e)?;
            tx.take_address(&lan.id, e.addresses[0].addr(), &e.id)?;
        }
        Ok(())
    })
    .unwrap();
    let conn = raw(tmp.path());
    conn.execute(
        "UPDATE endpoints SET json = '{\"id\":' WHERE id = ?1",
        [&bad.id],
    )
    .unwrap();
    conn.execute("UPDATE networks SET json = '[]' WHERE id = ?1", [&dmz.id])
        .unwrap();

    let (nets, eps, in_ns, bad_rows) = s
        .read(&mut |tx| {
            Ok((
                tx.networks()?,
                tx.endpoints()?,
                tx.endpoints_in_netns(good.netns_inode)?,
                tx.unreadable()?,
            ))
        })
        .unwrap();
    assert_eq!(nets, vec![lan.clone()]);
    assert_eq!(eps, vec![good.clone()]);
    assert_eq!(
        in_ns,
        vec![good.clone()],
        "both share a namespace in the fixture"
    );
    let named: Vec<(&str, &str, Option<&str>)> = bad_rows
        .iter()
        .map(|u: &Unreadable| (u.kind, u.id.as_str(), u.network_id.as_deref()))
        .collect();
    assert_eq!(
        named,
        vec![
            ("network", dmz.id.as_str(), None),
            ("endpoint", bad.id.as_str(), Some(lan.id.as_str())),
        ]
    );

    // A record that reads fine is not forgotten this way; the damaged one is, by
    // name, with its address.
    assert_eq!(
        s.write(&mut |tx| tx.forget_unreadable_endpoint("good"))
            .unwrap(),
        None
    );
    assert_eq!(
        s.write(&mut |tx| tx.forget_unreadable_endpoint("bad"))
            .unwrap(),
        Some(bad.id.clone())
    );
    let (owner, left) = s
        .read(&mut |tx| {
            Ok((
                tx.address_owner(&lan.id, ip("192.0.2.11"))?,
                tx.unreadable()?,
            ))
        })
        .unwrap();
    assert_eq!(owner, None, "its address is free");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(count(&conn, "SELECT count(*) FROM endpoints"), 1);
}
