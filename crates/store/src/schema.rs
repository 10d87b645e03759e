//! The tables of `state.db` and how an older file is brought up to date.
//!
//! `PRAGMA user_version` holds the number of [`MIGRATIONS`] applied. Opening a file
//! at [`SCHEMA_VERSION`] costs one read of that number; an older file (including an
//! empty, just-created one) gets the missing steps in one `BEGIN IMMEDIATE`
//! transaction, so concurrent openers apply them exactly once; a newer file is
//! refused, since this build cannot know what the newer schema means.
//!
//! To change the schema, append a step; never edit one that has shipped.
//!
//! Objects are stored as JSON (`json` columns) next to the columns that queries
//! need (ids, unique names). Addresses are in canonical text form (`192.0.2.7`,
//! `2001:db8::7`), subnets as normalised CIDR text.
//!
//! `holdings` is what endpoints hold, each row (scope, key) -> owner (an endpoint
//! id): IP addresses (scope: the network's id, 64 hex digits; key: the address),
//! published host ports (scope `port/tcp/8080`; key: the host address, '' for all)
//! an index of each namespace's endpoints (scope `netns/ST_DEV:ST_INO`; key: the
//! endpoint's id), each network's MACs (scope `mac/NETWORK_ID`; key: the MAC) and the
//! callers' keys (scope `owner/cni/NETWORK` or `owner/docker/NETWORK_ID`; key:
//! `CONTAINER/IFNAME` or Docker's endpoint id), written by `put_endpoint`. Deleting an endpoint deletes all its
//! rows (one indexed delete by owner). An etcd store keeps the same rows as keys.

use crate::txn::{self, store_error, Backoff, Kind};
use lanyard_core::Result;
use rusqlite::Connection;
use std::path::Path;

/// Ordered schema steps: `MIGRATIONS[i]` takes a file from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE networks (
         id   TEXT NOT NULL PRIMARY KEY,
         name TEXT NOT NULL UNIQUE,
         json TEXT NOT NULL
     );
     CREATE TABLE endpoints (
         id         TEXT NOT NULL PRIMARY KEY,
         name       TEXT UNIQUE,
         network_id TEXT NOT NULL,
         json       TEXT NOT NULL
     );
     CREATE TABLE addresses (
         network_id TEXT NOT NULL,
         addr       TEXT NOT NULL,
         owner      TEXT NOT NULL,
         PRIMARY KEY (network_id, addr)
     ) WITHOUT ROWID;
     CREATE INDEX addresses_by_owner ON addresses (owner);
     CREATE TABLE cursors (
         network_id TEXT NOT NULL,
         subnet     TEXT NOT NULL,
         addr       TEXT NOT NULL,
         PRIMARY KEY (network_id, subnet)
     ) WITHOUT ROWID;
     CREATE TABLE meta (
         key   TEXT NOT NULL PRIMARY KEY,
         value TEXT NOT NULL
     ) WITHOUT ROWID;",
    // 2: fewer b-trees for a write to touch and for every open to parse. Networks and
    // endpoints keyed by their id alone (no rowid table beside a separate id index),
    // and an endpoint's name indexed only when it has one. An attach (two
    // transactions) writes 5 pages instead of 8, a detach 3 instead of 5: each a WAL
    // frame that every later open reads back until the next checkpoint.
    "CREATE TABLE networks_v2 (
         id   TEXT NOT NULL PRIMARY KEY,
         name TEXT NOT NULL UNIQUE,
         json TEXT NOT NULL
     ) WITHOUT ROWID;
     INSERT INTO networks_v2 (id, name, json) SELECT id, name, json FROM networks;
     DROP TABLE networks;
     ALTER TABLE networks_v2 RENAME TO networks;
     CREATE TABLE endpoints_v2 (
         id         TEXT NOT NULL PRIMARY KEY,
         name       TEXT,
         network_id TEXT NOT NULL,
         json       TEXT NOT NULL
     ) WITHOUT ROWID;
     INSERT INTO endpoints_v2 (id, name, network_id, json)
         SELECT id, name, network_id, json FROM endpoints;
     DROP TABLE endpoints;
     ALTER TABLE endpoints_v2 RENAME TO endpoints;
     CREATE UNIQUE INDEX endpoints_by_name ON endpoints (name) WHERE name IS NOT NULL;",
    // 3: what attach and detach look up, without reading every endpoint. The
    // table of addresses becomes the table of what endpoints hold, (scope, key) ->
    // owner: IP addresses as before (scope: the network's id), published host ports
    // (scope `port/PROTO/PORT`, key: the host address or '' for all), and an index
    // of each namespace's endpoints (scope `netns/ST_DEV:ST_INO`, key: the endpoint's
    // id). No new table or index: every open parses the same 8 schema objects.
    "ALTER TABLE addresses RENAME TO holdings;
     ALTER TABLE holdings RENAME COLUMN network_id TO scope;
     ALTER TABLE holdings RENAME COLUMN addr TO key;
     DROP INDEX addresses_by_owner;
     CREATE INDEX holdings_by_owner ON holdings (owner);
     INSERT OR IGNORE INTO holdings (scope, key, owner)
         SELECT 'netns/' || json_extract(json, '$.netns_inode[0]') || ':'
                    || json_extract(json, '$.netns_inode[1]'),
                id, id
         FROM endpoints;
     INSERT OR IGNORE INTO holdings (scope, key, owner)
         SELECT 'port/' || json_extract(p.value, '$.proto') || '/'
                    || json_extract(p.value, '$.host_port'),
                coalesce(json_extract(p.value, '$.host_ip'), ''), e.id
         FROM endpoints AS e, json_each(e.json, '$.ports') AS p;",
    // 4: every endpoint stores its default-route metric. A record from before gets
    // the one `restore` gave it then: 100 + the number of endpoints of its namespace
    // attached earlier (ties broken by id, so no two get the same).
    "UPDATE endpoints SET json = json_set(json, '$.route_metric', 100 + (
         SELECT count(*) FROM endpoints AS o
         WHERE json_extract(o.json, '$.netns_inode') = json_extract(endpoints.json, '$.netns_inode')
           AND (json_extract(o.json, '$.created') < json_extract(endpoints.json, '$.created')
                OR (json_extract(o.json, '$.created') = json_extract(endpoints.json, '$.created')
                    AND o.id < endpoints.id))))
     WHERE json_extract(json, '$.route_metric') IS NULL;",
    // 5: an endpoint's MAC is held in its network (`mac/NETWORK_ID`, the MAC as key),
    // so a second endpoint with the same MAC on one network is refused; owners
    // (`owner/cni/NETWORK`, `owner/docker/NETWORK_ID`) are new and none exist yet.
    "INSERT OR IGNORE INTO holdings (scope, key, owner)
         SELECT 'mac/' || network_id, json_extract(json, '$.mac'), id FROM endpoints
         WHERE json_extract(json, '$.mac') IS NOT NULL;",
];

/// The schema version this build writes and understands (`PRAGMA user_version`).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

fn refuse_newer(path: &Path, found: u32) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(store_error(
            path,
            "opening",
            format!(
                "schema version {found} is newer than this lanyard understands \
                 (version {SCHEMA_VERSION}); it was written by a newer lanyard: upgrade \
                 lanyard, or use another --state-dir"
            ),
        ));
    }
    Ok(())
}

/// Brings the file behind `conn` to [`SCHEMA_VERSION`], or refuses a newer one.
pub(crate) fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    let mut backoff = Backoff::new();
    let found = txn::retrying(&mut backoff, path, "reading the schema version", || {
        user_version(conn)
    })?;
    if found == SCHEMA_VERSION {
        return Ok(()); // the hot path: nothing else to do
    }
    refuse_newer(path, found)?;

    // WAL mode is stored in the file, so it is set once, here. It cannot change
    // inside a transaction.
    let mode: String = txn::retrying(&mut backoff, path, "switching to WAL mode", || {
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
    })?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(store_error(
            path,
            "switching to WAL mode",
            format!("SQLite kept journal mode {mode:?} (is the file on a filesystem without shared memory?)"),
        ));
    }

    txn::run(conn, path, Kind::Write, |busy| {
        // Another process may have migrated while this one waited for the lock.
        let now = user_version(conn).map_err(|e| {
            busy.set(txn::is_busy(&e));
            store_error(path, "reading the schema version", e)
        })?;
        refuse_newer(path, now)?;
        for (i, step) in MIGRATIONS.iter().enumerate().skip(now as usize) {
            conn.execute_batch(step)
                .map_err(|e| store_error(path, &format!("applying schema step {}", i + 1), e))?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| store_error(path, "recording the schema version", e))
    })
}

/// The schema version of the store in `state_dir` as it is now (WAL included), read
/// without migrating or creating anything; `None` when there is no store yet. A
/// running daemon uses it to notice that a newer lanyard migrated its store.
pub fn file_version(state_dir: &Path) -> Result<Option<u32>> {
    use rusqlite::OpenFlags;
    let path = state_dir.join(crate::DB_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| store_error(&path, "opening", e))?;
    let mut backoff = Backoff::new();
    txn::retrying(&mut backoff, &path, "reading the schema version", || {
        user_version(&conn)
    })
    .map(Some)
}
