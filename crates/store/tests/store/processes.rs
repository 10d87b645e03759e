//! Fifty processes (this test binary, re-run in a child mode) attach, fail, create
//! and remove networks against one database file at once; nothing is lost, nothing
//! is handed out twice, and nothing dangles.

use crate::common::*;
use ipnet::IpNet;
use lanyard_core::store::{Store, Tx};
use lanyard_core::{Error, Result};
use lanyard_store::SqliteStore;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CHILDREN: u64 = 50;
const SHARED_PER_CHILD: u64 = 4;
const SHARED_DETACHED: u64 = 2;
const OWN_PER_CHILD: u64 = 3;

fn attach(tx: &mut dyn Tx, network: &str, id: &str, name: Option<&str>) -> Result<IpAddr> {
    let n = tx
        .network(network)?
        .ok_or_else(|| Error::not_found("network", network))?;
    let addr = allocate(tx, &n.id, &n.subnets[0], id)?;
    let prefix = n.subnets[0].subnet.prefix_len();
    tx.put_endpoint(&endpoint(
        id,
        name,
        &n,
        vec![IpNet::new(addr, prefix).unwrap()],
    ))?;
    Ok(addr)
}

/// One child process: what a burst of CNI calls does to the store.
fn hammer(dir: &Path, i: u64) {
    // Every child races to create the file and apply the schema.
    let s = SqliteStore::open(dir).expect("open");
    // The first child in creates the shared network; the others find it.
    s.write(&mut |tx| {
        if tx.network("shared")?.is_none() {
            tx.put_network(&network("shared", &hex_id(0xffff, i), "10.99.0.0/16"))?;
        }
        Ok(())
    })
    .expect("get or create the shared network");
    // Attach: one transaction per endpoint, as the engine does.
    let mine: Vec<String> = (0..SHARED_PER_CHILD).map(|k| hex_id(i + 1, k)).collect();
    for (k, id) in mine.iter().enumerate() {
        let name = format!("c{i}-{k}");
        s.write(&mut |tx| attach(tx, "shared", id, Some(&name)))
            .expect("attach to shared");
    }
    // An attach that fails after allocating leaves no trace.
    let e = s
        .write(&mut |tx| {
            attach(tx, "shared", &hex_id(0xdead, i), None)?;
            Err::<(), _>(Error::Kernel {
                op: "ip link add".into(),
                reason: "EEXIST".into(),
                errno: None,
            })
        })
        .unwrap_err();
    assert_eq!(kind(&e), "Kernel");
    // A network of its own with three endpoints, in one transaction.
    let own = format!("net-{i}");
    s.write(&mut |tx| {
        tx.put_network(&network(
            &own,
            &hex_id(i + 1, 0xffff_ffff),
            &format!("172.16.{i}.0/24"),
        ))?;
        for k in 0..OWN_PER_CHILD {
            attach(tx, &own, &hex_id(i + 1, 100 + k), None)?;
        }
        Ok(())
    })
    .expect("create own network");
    // Detach two of the shared endpoints.
    for id in &mine[..SHARED_DETACHED as usize] {
        s.write(&mut |tx| tx.delete_endpoint(id)).expect("detach");
    }
    // Remove the own network: its endpoints first.
    s.write(&mut |tx| {
        let n = tx.network(&own)?.expect("own network");
        for e in tx.endpoints()?.into_iter().filter(|e| e.network_id == n.id) {
            tx.delete_endpoint(&e.id)?;
        }
        tx.delete_network(&n.id)
    })
    .expect("remove own network");
    // What is left of this child holds its addresses.
    s.read(&mut |tx| {
        let shared = tx.network("shared")?.unwrap();
        for id in &mine[SHARED_DETACHED as usize..] {
            let e = tx.endpoint(id)?.expect("endpoint kept");
            assert_eq!(
                tx.address_owner(&shared.id, e.addresses[0].addr())?
                    .as_deref(),
                Some(id.as_str())
            );
        }
        Ok(())
    })
    .expect("final read");
}

#[test]
fn fifty_processes_share_one_database_without_losing_a_write() {
    if let Ok(spec) = std::env::var("LANYARD_STORE_CHILD") {
        let (dir, rest) = spec.split_once('|').unwrap();
        let (i, start_at) = rest.split_once('|').unwrap();
        let start_at = Duration::from_millis(start_at.parse().unwrap());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        if let Some(wait) = start_at.checked_sub(now) {
            std::thread::sleep(wait);
        }
        return hammer(Path::new(dir), i.parse().unwrap());
    }

    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("state"); // created by the children
    let exe = std::env::current_exe().unwrap();
    // Start them all at once, after every process has had time to load.
    let start_at =
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_millis(1500);
    let t = Instant::now();
    let children: Vec<_> = (0..CHILDREN)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "processes::fifty_processes_share_one_database_without_losing_a_write",
                    "--test-threads=1",
                    "--nocapture",
                ])
                .env(
                    "LANYARD_STORE_CHILD",
                    format!("{}|{i}|{}", dir.display(), start_at.as_millis()),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut failed = Vec::new();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("1 passed") {
            failed.push(format!(
                "child {i}: {}\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    eprintln!(
        "{CHILDREN} processes done in {:.2?} (including a 1.5 s start delay)",
        t.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} of {CHILDREN} children failed:\n{}",
        failed.len(),
        failed.join("\n")
    );

    let s = SqliteStore::open(&dir).unwrap();
    let kept = CHILDREN * (SHARED_PER_CHILD - SHARED_DETACHED);
    s.read(&mut |tx| {
        let nets = tx.networks()?;
        assert_eq!(
            nets.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["shared"]
        );
        let shared = &nets[0];
        let eps = tx.endpoints()?;
        assert_eq!(eps.len() as u64, kept);
        assert_eq!(tx.address_count(&shared.id)?, kept);
        let mut seen = HashSet::new();
        for e in &eps {
            assert_eq!(e.network_id, shared.id);
            let a = e.addresses[0].addr();
            assert!(seen.insert(a), "{a} handed out twice");
            assert_eq!(
                tx.address_owner(&shared.id, a)?.as_deref(),
                Some(e.id.as_str())
            );
        }
        // Every successful attach moved the cursor by one; the failed ones did not.
        let attached = CHILDREN * SHARED_PER_CHILD;
        let last = IpAddr::from(std::net::Ipv4Addr::from(
            u32::from(std::net::Ipv4Addr::new(10, 99, 0, 1)) + attached as u32,
        ));
        assert_eq!(
            tx.cursor(&shared.id, &shared.subnets[0].subnet)?,
            Some(last)
        );
        Ok(())
    })
    .unwrap();
    let conn = raw(&dir);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM holdings WHERE owner NOT IN (SELECT id FROM endpoints)"
        ),
        0
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM holdings
             WHERE scope NOT IN (SELECT id FROM networks) AND scope NOT LIKE 'netns/%'"
        ),
        0
    );
    // Every endpoint is in its namespace's index, and nothing else is.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM endpoints AS e LEFT JOIN holdings AS h
             ON h.scope LIKE 'netns/%' AND h.key = e.id WHERE h.key IS NULL"
        ),
        0
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM holdings WHERE scope LIKE 'netns/%'
             AND key NOT IN (SELECT id FROM endpoints)"
        ),
        0
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM cursors WHERE network_id NOT IN (SELECT id FROM networks)"
        ),
        0
    );
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}
