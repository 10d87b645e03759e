//! IPAM benchmark through [`SqliteStore`]: the time of one `ipam::allocate`, each in
//! its own write transaction as the engine does it, in a /16 at several fill levels
//! (empty, 10 %, 50 %, 90 %, 99 % taken from the start of the subnet, and 50 % taken
//! as every other address, where each allocation must probe past a taken one); one
//! database file per level, runs interleaved. Prints medians and their ratio to the
//! empty network and exits 1 if any ratio exceeds 2.0: allocation must not get
//! slower as a network fills. Also times `SqliteStore::open` on an
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

/// Fill levels: (label, addresses taken, every other address instead of a block).
const LEVELS: &[(&str, u32, bool)] = &[
    ("empty", 0, false),
    ("10 % taken", 6_553, false),
    ("50 % taken", 32_767, false),
    ("90 % taken", 58_980, false),
    ("99 % taken", 64_880, false),
    ("50 % taken, every other", 32_767, true),
];
/// Largest acceptable median(level) / median(empty).
const MAX_RATIO: f64 = 2.0;
/// Untimed allocations first, per case.
const WARMUP: usize = 100;
/// Free addresses in the fullest /16 (65,534 hosts - gateway - 64,880): more
/// allocations than this would wrap around and walk the taken block.
const FREE: usize = 65_534 - 1 - 64_880;
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

/// Takes `taken` addresses from 10.0.0.2 on (a block, or every other address), in
/// one transaction.
fn fill(s: &SqliteStore, n: &Network, taken: u32, every_other: bool) -> Duration {
    let t = Instant::now();
    let first = u32::from(Ipv4Addr::new(10, 0, 0, 2));
    s.write(&mut |tx| {
        let mut last = None;
        for k in 0..taken {
            let at = if every_other {
                first + 2 * k
            } else {
                first + k
            };
            let addr = IpAddr::V4(Ipv4Addr::from(at));
            tx.take_address(&n.id, addr, &id(1_000_000 + u64::from(k)))?;
            last = Some(addr);
        }
        // A block: the cursor after it (as after filling it one by one). Every
        // other: the cursor at the start, so each allocation probes past a taken one.
        match (last, every_other) {
            (Some(l), false) => tx.set_cursor(&n.id, &n.subnets[0].subnet, l),
            _ => Ok(()),
        }
    })
    .expect("fill");
    t.elapsed()
}

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
        None => 500,
        Some(Ok(n)) if n > 0 && n + WARMUP < FREE => n,
        Some(_) => {
            eprintln!("usage: bench_ipam [ITERATIONS], 1 to {}", FREE - WARMUP - 1);
            return ExitCode::from(2);
        }
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let cases: Vec<(&str, u32, SqliteStore, Network)> = LEVELS
        .iter()
        .enumerate()
        .map(|(k, &(label, taken, every_other))| {
            let name = format!("level{k}");
            let (s, n) = setup(&tmp.path().join(&name), &name, k as u64 + 1);
            let d = fill(&s, &n, taken, every_other);
            println!(
                "{label}: {taken} addresses of 10.0.0.0/16 taken in one transaction in {d:.1?}"
            );
            (label, taken, s, n)
        })
        .collect();
    for i in 0..WARMUP {
        for (_, _, s, n) in &cases {
            allocate_once(s, n, &id(i as u64));
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(iterations); cases.len()];
    for i in 0..iterations {
        let owner = id(10_000_000 + i as u64);
        // Rotate which case goes first, so none always follows another.
        for j in 0..cases.len() {
            let k = (i + j) % cases.len();
            let (_, _, s, n) = &cases[k];
            times[k].push(allocate_once(s, n, &owner));
        }
    }
    for (_, taken, s, n) in &cases {
        let held = s.read(&mut |tx| tx.address_count(&n.id)).expect("count");
        assert_eq!(
            held,
            u64::from(*taken),
            "a network keeps its {taken} addresses"
        );
    }
    println!("ipam::allocate, one write transaction each, {iterations} interleaved runs per case:");
    let summary: Vec<Stats> = times.into_iter().map(stats).collect();
    let base = summary[0].median.as_secs_f64();
    let mut worst = 0.0f64;
    for ((label, ..), st) in cases.iter().zip(&summary) {
        let ratio = st.median.as_secs_f64() / base;
        worst = worst.max(ratio);
        show(&format!("/16, {label} ({ratio:.2}x empty)"), st);
    }
    println!("  worst ratio of medians to empty    {worst:.2} (limit {MAX_RATIO})");

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
        let s = SqliteStore::open(&tmp.path().join("level0")).expect("open");
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

    if worst > MAX_RATIO {
        eprintln!("FAIL: allocating in a filled /16 is up to {worst:.2}x slower than in an empty one (limit {MAX_RATIO})");
        return ExitCode::FAILURE;
    }
    println!("ok");
    ExitCode::SUCCESS
}
