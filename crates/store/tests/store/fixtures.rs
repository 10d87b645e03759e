//! Upgrades: a store written by each released schema version, made by the lanyard of
//! that version (`tests/fixtures/make.sh`: real `network create` and `attach` calls
//! in a throwaway lab), opens with today's code, is migrated, and keeps every
//! network and endpoint that lanyard listed (`vN.networks.json`, `vN.endpoints.json`).

use crate::common::*;
use lanyard_core::store::Store;
use lanyard_store::{SqliteStore, DB_FILE, SCHEMA_VERSION};
use serde_json::Value;
use std::path::PathBuf;

/// Fields of a network that every version wrote and today's must read back alike.
const NETWORK_FIELDS: &[&str] = &[
    "id",
    "name",
    "driver",
    "parent",
    "bridge",
    "subnets",
    "internal",
    "ipv6",
    "mtu",
    "host_access",
    "labels",
    "options",
    "created",
];

/// Fields of an endpoint that every version wrote and today's must read back alike.
const ENDPOINT_FIELDS: &[&str] = &[
    "id",
    "name",
    "network_id",
    "network",
    "netns",
    "netns_inode",
    "ifname",
    "host_ifname",
    "mac",
    "addresses",
    "gateways",
    "ports",
    "state",
    "created",
];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn listing(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `new`'s fields named in `fields` equal `old`'s (a field the old one lacks is null).
fn same(what: &str, old: &Value, new: &Value, fields: &[&str]) {
    for f in fields {
        assert_eq!(
            old.get(f).unwrap_or(&Value::Null),
            new.get(f).unwrap_or(&Value::Null),
            "{what} {}: field {f}",
            old["id"]
        );
    }
}

#[test]
fn a_store_from_every_released_schema_version_opens_and_keeps_every_network_and_endpoint() {
    for v in 1..=SCHEMA_VERSION {
        let db = fixture(&format!("v{v}.db"));
        assert!(
            db.exists(),
            "no fixture store for schema version {v}: make one with tests/fixtures/make.sh {v} BIN"
        );
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(&db, tmp.path().join(DB_FILE)).unwrap();
        assert_eq!(
            count(&raw(tmp.path()), "PRAGMA user_version"),
            v as i64,
            "v{v}.db"
        );

        let s = SqliteStore::open(tmp.path()).unwrap();
        assert_eq!(
            count(&raw(tmp.path()), "PRAGMA user_version"),
            SCHEMA_VERSION as i64
        );
        let nets = s.read(&mut |tx| tx.networks()).unwrap();
        let eps = s.read(&mut |tx| tx.endpoints()).unwrap();
        let old_nets = listing(&format!("v{v}.networks.json"));
        let old_eps = listing(&format!("v{v}.endpoints.json"));
        assert_eq!(nets.len(), old_nets.len(), "v{v}: networks");
        assert_eq!(eps.len(), old_eps.len(), "v{v}: endpoints");
        assert!(!old_eps.is_empty());

        for old in &old_nets {
            let new = nets
                .iter()
                .find(|n| n.id == old["id"])
                .unwrap_or_else(|| panic!("v{v}: network {} lost", old["id"]));
            same(
                &format!("v{v} network"),
                old,
                &serde_json::to_value(new).unwrap(),
                NETWORK_FIELDS,
            );
        }
        for old in &old_eps {
            let id = old["id"].as_str().unwrap();
            let new = eps
                .iter()
                .find(|e| e.id == id)
                .unwrap_or_else(|| panic!("v{v}: endpoint {id} lost"));
            same(
                &format!("v{v} endpoint"),
                old,
                &serde_json::to_value(new).unwrap(),
                ENDPOINT_FIELDS,
            );
            // Found by name and id, its addresses and its namespace held by it.
            let key = old["name"].as_str().unwrap_or(id);
            assert_eq!(
                s.read(&mut |tx| tx.endpoint(key)).unwrap().map(|e| e.id),
                Some(id.to_string()),
                "v{v}: endpoint {key}"
            );
            for a in &new.addresses {
                assert_eq!(
                    s.read(&mut |tx| tx.address_owner(&new.network_id, a.addr()))
                        .unwrap(),
                    Some(id.to_string()),
                    "v{v}: address {a} of {id}"
                );
            }
            assert!(
                s.read(&mut |tx| tx.endpoints_in_netns(new.netns_inode))
                    .unwrap()
                    .iter()
                    .any(|e| e.id == id),
                "v{v}: {id} not found by its namespace"
            );
            assert!(new.route_metric.is_some(), "v{v}: {id} has no route metric");
        }
        // Published ports held by their endpoint.
        let web = eps
            .iter()
            .find(|e| e.name.as_ref().is_some_and(|n| n.as_str() == "web"))
            .unwrap();
        for m in &web.ports {
            assert_eq!(
                s.read(&mut |tx| tx.port_holder(m)).unwrap(),
                Some(web.id.clone()),
                "v{v}: port {m:?}"
            );
        }
        // Opening the migrated file again changes nothing.
        drop(s);
        let again = SqliteStore::open(tmp.path()).unwrap();
        assert_eq!(
            again.read(&mut |tx| tx.endpoints()).unwrap(),
            eps,
            "v{v}: reopened"
        );
    }
}
