//! IPAM benchmark through [`SqliteStore`]: the time of one `ipam::allocate`, each in
//! its own write transaction as the engine does it, in an empty /16 and in a /16
//! where 60,000 addresses are already taken (two database files, runs interleaved).
//! Prints medians and their ratio and exits 1 if the ratio exceeds 2.0: allocation
//! must not get slower as a network fills. Also times `SqliteStore::open` on an
//! existing database, the fixed cost of every CLI call.
//!
//! ```text
//! cargo run --release -p lanyard-store --example bench_ipam [-- ITERATIONS]
//! ```

use lanyard_core::ipam;
use lanyard_core::model::{Network, NetworkRequest};
use lanyard_core::store::Store;
use lanyard_store::SqliteStore;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Addresses already held in the "full" network.
const TAKEN: u32 = 60_000;
/// Largest acceptable median(full) / median(empty).
const MAX_RATIO: f64 = 2.0;
/// Untimed allocations first, per case.
const WARMUP: usize = 200;
/// Free addresses in the full /16 (65,534 hosts - gateway - TAKEN): more
/// allocations than this would wrap around and walk the taken block.
const FREE: usize = 65_534 - 1 - TAKEN as usize;
/// Opens timed per case.
const OPENS: usize = 300;

/// A 64-hex-digit id, like the engine's.
fn id(n: u64) -> String {
    let mut x = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    (0..4)
        .map(|_| {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

fn setup(dir: &Path, name: &str, seed: u64) -> (SqliteStore, Network) {
    let s = SqliteStore::open(dir).expect("open");
    let n = NetworkRequest {
        name: name.into(),
        subnets: vec!["10.0.0.0/16".into()],
        ..Default::default()
    }
    .validate(id(seed), 0)
    .expect("network");
    s.write(&mut |tx| tx.put_network(&n)).expect("put network");
    (s, n)
}

/// Takes TAKEN addresses from 10.0.0.2 on, in one transaction, and leaves the cursor
/// where allocating them one by one would have left it.
fn fill(s: &SqliteStore, n: &Network) -> Duration {
    let t = Instant::now();
    let first = u32::from(Ipv4Addr::new(10, 0, 0, 2));
    s.write(&mut |tx| {
        for k in 0..TAKEN {
            let addr = IpAddr::V4(Ipv4Addr::from(first + k));
            tx.take_address(&n.id, addr, &id(1_000_000 + k as u64))?;
        }
        let last = IpAddr::V4(Ipv4Addr::from(first + TAKEN - 1));
        tx.set_cursor(&n.id, &n.subnets[0].subnet, last)
    })
    .expect("fill");
    t.elapsed()
}

/// One timed allocation; the address is given back afterwards, untimed, so the
/// network keeps exactly its number of taken addresses.
fn allocate_once(s: &SqliteStore, n: &Network, owner: &str) -> Duration {
    let t = Instant::now();
    s.write(&mut |tx| ipam::allocate(tx, &n.id, &n.subnets[0], owner))
        .expect("allocate");
    let d = t.elapsed();
    s.write(&mut |tx| tx.release_addresses(owner))
        .expect("release");
    d
}

struct Stats {
    median: Duration,
    p90: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

fn show(label: &str, s: &Stats) {
    println!(
        "  {label:<34} median {:>9.1?}   p90 {:>9.1?}   p99 {:>9.1?}",
        s.median, s.p90, s.p99
    );
}

fn main() -> ExitCode {
    let iterations: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 2_000,
        Some(Ok(n)) if n > 0 && n + WARMUP < FREE => n,
        Some(_) => {
            eprintln!("usage: bench_ipam [ITERATIONS], 1 to {}", FREE - WARMUP - 1);
            return ExitCode::from(2);
        }
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let (empty, empty_net) = setup(&tmp.path().join("empty"), "empty", 1);
    let (full, full_net) = setup(&tmp.path().join("full"), "full", 2);
    let fill_time = fill(&full, &full_net);
    println!("filled {TAKEN} addresses of 10.0.0.0/16 in one transaction in {fill_time:.1?}");

    for i in 0..WARMUP {
        allocate_once(&empty, &empty_net, &id(i as u64));
        allocate_once(&full, &full_net, &id(i as u64));
    }
    let (mut e, mut f) = (
        Vec::with_capacity(iterations),
        Vec::with_capacity(iterations),
    );
    for i in 0..iterations {
        let owner = id(10_000_000 + i as u64);
        // Alternate which case goes first, so neither always follows the other.
        if i % 2 == 0 {
            e.push(allocate_once(&empty, &empty_net, &owner));
            f.push(allocate_once(&full, &full_net, &owner));
        } else {
            f.push(allocate_once(&full, &full_net, &owner));
            e.push(allocate_once(&empty, &empty_net, &owner));
        }
    }
    let held = full
        .read(&mut |tx| tx.address_count(&full_net.id))
        .expect("count");
    assert_eq!(
        held, TAKEN as u64,
        "the full network keeps its {TAKEN} addresses"
    );
    let (e, f) = (stats(e), stats(f));
    let ratio = f.median.as_secs_f64() / e.median.as_secs_f64();
    println!("ipam::allocate, one write transaction each, {iterations} interleaved runs per case:");
    show("empty /16", &e);
    show(&format!("/16 with {TAKEN} taken"), &f);
    println!("  ratio of medians (full / empty)    {ratio:.2} (limit {MAX_RATIO})");

    // A CLI call: open (no other connection, so SQLite recreates the WAL and shm
    // files), allocate, close (the last connection checkpoints and syncs).
    let cli = tmp.path().join("cli");
    drop(setup(&cli, "cli", 3));
    let (mut open, mut alloc, mut close, mut call) = (vec![], vec![], vec![], vec![]);
    for i in 0..OPENS {
        let t0 = Instant::now();
        let s = SqliteStore::open(&cli).expect("open");
        let t1 = Instant::now();
        s.write(&mut |tx| {
            let n = tx.network("cli")?.expect("cli network");
            ipam::allocate(tx, &n.id, &n.subnets[0], &id(i as u64))
        })
        .expect("allocate");
        let t2 = Instant::now();
        drop(s);
        let t3 = Instant::now();
        open.push(t1 - t0);
        alloc.push(t2 - t1);
        close.push(t3 - t2);
        call.push(t3 - t0);
    }
    // open while another connection (the benchmark's) keeps the database open.
    let mut shared = Vec::new();
    for _ in 0..OPENS {
        let t = Instant::now();
        let s = SqliteStore::open(&tmp.path().join("full")).expect("open");
        shared.push(t.elapsed());
        drop(s);
    }
    println!("SqliteStore::open on an existing database, {OPENS} times each:");
    show("open, no other connection", &stats(open));
    show("open, another connection open", &stats(shared));
    println!("a CLI call, {OPENS} times (open, allocate, close):");
    show("lookup + allocate, first write", &stats(alloc));
    show("close (checkpoint + fsync)", &stats(close));
    show("whole call", &stats(call));

    if ratio > MAX_RATIO {
        eprintln!("FAIL: allocating in a /16 with {TAKEN} taken is {ratio:.2}x slower than in an empty one (limit {MAX_RATIO})");
        return ExitCode::FAILURE;
    }
    println!("ok");
    ExitCode::SUCCESS
}
