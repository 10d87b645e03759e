//! The kernel side of one macvlan endpoint cycle, timed, with the alternatives side by
//! side in the same run:
//!
//! - observing the host: a full [`Kernel::view`] against [`Kernel::view_links`] of the
//!   two links planning needs, on a host with many other links;
//! - attach: create the macvlan in the container, two addresses, a default route;
//! - detach, lanyard's way (retire: rename and delete its addresses; then hand the tombstone to the
//!   reaper) against a plain delete (what the CNI macvlan plugin does).
//!
//! Everything happens in fresh network namespaces of this process's own threads (run
//! as root); nothing else is touched. A benchmark, not a test: it prints medians and
//! p90s and asserts nothing. Cycles are spaced (`GAP_MS`), so a detach's background
//! delete is over before the next cycle starts.
//!
//! `cargo run --release -p lanyard-kernel --example kernel_cycle [-- CYCLES [EXTRA_LINKS [GAP_MS]]]`

use lanyard_core::kernel::{tombstone_name, Kernel};
use lanyard_core::model::{MacAddr, MacvlanMode};
use lanyard_core::name::IfName;
use lanyard_core::op::{Netns, Op, RouteSpec};
use lanyard_kernel::Netlink;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn name(s: &str) -> IfName {
    IfName::new(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Moves the calling thread into a fresh network namespace.
fn unshare_net() {
    // SAFETY: affects only the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
        panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
}

/// A "container": a thread parked in a fresh namespace, `/proc/PID/task/TID/ns/net`.
struct Container {
    path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Container {
    fn new() -> Container {
        let (path_tx, path_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            unshare_net();
            // SAFETY: gettid cannot fail.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            let path = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
            path_tx.send(PathBuf::from(path)).expect("send path");
            let _ = stop_rx.recv();
        });
        Container {
            path: path_rx.recv().expect("container path"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Median and p90 (nearest rank) of `v`, in microseconds.
fn stats(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5).as_secs_f64() * 1e6, at(0.9).as_secs_f64() * 1e6)
}

fn row(what: &str, v: &mut [Duration]) -> f64 {
    let (med, p90) = stats(v);
    println!("  {what:<48} {med:>9.0} {p90:>9.0}");
    med
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn veth(k: &mut Netlink, a: &str, b: &str) {
    k.apply(&Op::CreateVeth {
        host: name(a),
        peer: name(b),
        peer_netns: Netns::Host,
        mtu: None,
        master: None,
        peer_mac: None,
        host_mac: None,
    })
    .expect("veth pair");
}

fn bench(cycles: usize, extra: usize, gap: Duration) {
    let container = Container::new();
    let ns = Netns::Path(container.path.clone());
    let mut k = Netlink::new().expect("netlink");
    veth(&mut k, "lyp0", "lyp1");
    // The host-access shim on the parent, as lanyard makes it.
    let shim = lanyard_core::plan::shim_name(&name("lyp0"));
    k.apply(&Op::CreateMacvlan {
        netns: Netns::Host,
        name: shim.clone(),
        parent: name("lyp0"),
        mode: MacvlanMode::Bridge,
        mac: None,
        mtu: None,
    })
    .expect("shim");
    // A busy host: other links, each with an address and so a route.
    for i in 0..extra {
        let (a, b) = (format!("lyo{i}a"), format!("lyo{i}b"));
        veth(&mut k, &a, &b);
        k.apply(&Op::AddAddress {
            netns: Netns::Host,
            link: name(&a),
            addr: format!("10.{}.{}.1/24", 100 + i / 256, i % 256)
                .parse()
                .expect("address"),
            nodad: true,
        })
        .expect("address");
    }
    let planned = [name("lyp0"), shim];

    let (mut full, mut part) = (vec![], vec![]);
    for _ in 0..cycles {
        full.push(timed(|| k.view(&Netns::Host).expect("view")).1);
        part.push(timed(|| k.view_links(&Netns::Host, &planned).expect("view_links")).1);
    }

    let (mut attach, mut retire, mut handoff, mut lanyard, mut delete) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..cycles {
        let mac = MacAddr([0x02, 0x42, 0xc0, 0x00, (i >> 8) as u8, i as u8]);
        let ops = [
            Op::CreateMacvlan {
                netns: ns.clone(),
                name: name("eth0"),
                parent: name("lyp0"),
                mode: MacvlanMode::Bridge,
                mac: Some(mac),
                mtu: None,
            },
            Op::AddAddress {
                netns: ns.clone(),
                link: name("eth0"),
                addr: "192.0.2.30/24".parse().expect("address"),
                nodad: true,
            },
            Op::AddAddress {
                netns: ns.clone(),
                link: name("eth0"),
                addr: "2001:db8::30/64".parse().expect("address"),
                nodad: true,
            },
            Op::AddRoute {
                netns: ns.clone(),
                route: RouteSpec {
                    dst: "0.0.0.0/0".parse().expect("prefix"),
                    via: Some("192.0.2.1".parse().expect("address")),
                    dev: Some(name("eth0")),
                    src: None,
                    metric: Some(100),
                },
            },
        ];
        attach.push(timed(|| ops.iter().for_each(|op| k.apply(op).expect("attach"))).1);
        // Interleaved: even cycles detach lanyard's way, odd ones by a plain delete.
        if i % 2 == 0 {
            let tomb = tombstone_name(0x1000_0000 + i as u32);
            let retire_op = Op::RetireLink {
                netns: ns.clone(),
                name: name("eth0"),
                tombstone: tomb.clone(),
                addresses: vec![
                    "192.0.2.30/24".parse().expect("address"),
                    "2001:db8::30/64".parse().expect("address"),
                ],
            };
            let r = timed(|| k.apply(&retire_op).expect("retire")).1;
            let h = timed(|| k.reap(vec![(ns.clone(), tomb)]).expect("reap")).1;
            retire.push(r);
            handoff.push(h);
            lanyard.push(r + h);
        } else {
            let del = Op::DeleteLink {
                netns: ns.clone(),
                name: name("eth0"),
            };
            delete.push(timed(|| k.apply(&del).expect("delete")).1);
        }
        std::thread::sleep(gap);
    }

    println!(
        "kernel_cycle: {cycles} cycles, host with {} links, {} ms between cycles; times in us",
        extra * 2 + 3,
        gap.as_millis()
    );
    println!("  {:<48} {:>9} {:>9}", "", "median", "p90");
    let f = row("observe host: full view (links, addrs, routes)", &mut full);
    let p = row("observe host: view_links(parent, shim)", &mut part);
    row("attach: create in netns + 2 addrs + route", &mut attach);
    row("detach, lanyard: retire (rename + del addrs)", &mut retire);
    row("detach, lanyard: hand-off to the reaper", &mut handoff);
    let l = row("detach, lanyard: total", &mut lanyard);
    let d = row("detach, plain delete (as CNI macvlan)", &mut delete);
    println!(
        "  ratios: full view / view_links {:.1}x; plain delete / lanyard detach {:.1}x",
        f / p,
        d / l
    );
    drop(container);
}

fn main() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("kernel_cycle: run as root (it makes network namespaces)");
        std::process::exit(1);
    }
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .map(|s| s.parse().expect("numbers: CYCLES EXTRA_LINKS GAP_MS"))
            .unwrap_or(default)
    };
    let (cycles, extra, gap) = (
        arg(1, 100).clamp(2, 10_000),
        arg(2, 200).min(4000),
        arg(3, 40),
    );
    // The "host" is a fresh namespace too: this thread's.
    std::thread::spawn(move || {
        unshare_net();
        bench(cycles, extra, Duration::from_millis(gap as u64));
    })
    .join()
    .unwrap_or_else(|_| std::process::exit(1));
}
