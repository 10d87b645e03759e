//! Two engines on one SQLite store file and one (simulated) host, with the
//! interleavings that broke lanyard forced: engine A is paused at a chosen kernel
//! step while engine B runs a whole verb, as two processes would. With the
//! cross-process lock (`RUN_DIR/lock`) B waits for A's section instead of slipping
//! into it; the hook gives B a bounded time and then lets A go on.

use lanyard_core::kernel::fake::FakeKernel;
use lanyard_core::kernel::{Kernel, NsId, View};
use lanyard_core::lease::{DhcpWho, Lease};
use lanyard_core::model::{AttachRequest, DetachRequest, Network, NetworkRequest};
use lanyard_core::name::IfName;
use lanyard_core::op::{Netns, Op};
use lanyard_core::Result;
use lanyard_engine::Engine;
use lanyard_store::SqliteStore;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What every engine's kernel shares: the host's links, and the order of the nft
/// scripts applied ("A:…", "B:…").
#[derive(Default)]
struct World {
    host: View,
    nft: Vec<String>,
}

type Hook = Box<dyn FnOnce() + Send>;

/// A fake kernel over the shared world; `hook` runs once, before the first op
/// `pause_at` matches is applied (or the first host view, for `Pause::HostView`).
struct Shared {
    who: &'static str,
    world: Arc<Mutex<World>>,
    inner: FakeKernel,
    pause: Pause,
    hook: Option<Hook>,
}

#[derive(Clone, Copy, PartialEq)]
enum Pause {
    Never,
    HostView,
    Nft,
    /// The first nft script that only adds elements.
    NftAdd,
}

impl Shared {
    fn fire(&mut self, at: Pause) {
        if self.pause == at {
            if let Some(h) = self.hook.take() {
                h();
            }
        }
    }
}

impl Kernel for Shared {
    fn view(&mut self, netns: &Netns) -> Result<View> {
        if *netns == Netns::Host {
            self.fire(Pause::HostView);
            return Ok(self.world.lock().unwrap().host.clone());
        }
        self.inner.view(netns)
    }
    fn netns_id(&mut self, path: &Path) -> Result<NsId> {
        self.inner.netns_id(path)
    }
    fn dhcp_acquire(&mut self, who: &DhcpWho, previous: Option<Ipv4Addr>) -> Result<Lease> {
        self.inner.dhcp_acquire(who, previous)
    }
    fn dhcp_release(&mut self, who: &DhcpWho, lease: &Lease) -> Result<()> {
        self.inner.dhcp_release(who, lease)
    }
    fn apply(&mut self, op: &Op) -> Result<()> {
        if let Op::Nft { script, .. } = op {
            self.fire(Pause::Nft);
            if !script.contains("delete") {
                self.fire(Pause::NftAdd);
            }
            let mut w = self.world.lock().unwrap();
            w.nft.push(format!("{}:{script}", self.who));
        }
        let mut w = self.world.lock().unwrap();
        match op {
            Op::CreateBridge { name, .. } if w.host.link(name.as_str()).is_none() => {
                let mut l = w.host.links[1].clone();
                l.name = name.to_string();
                l.kind = Some("bridge".into());
                l.index = 100 + w.host.links.len() as u32;
                w.host.links.push(l);
            }
            Op::DeleteLink {
                netns: Netns::Host,
                name,
            } => w.host.links.retain(|l| l.name != name.as_str()),
            _ => {}
        }
        drop(w);
        self.inner.apply(op)
    }
}

struct Setup {
    dir: tempfile::TempDir,
    world: Arc<Mutex<World>>,
}

impl Setup {
    fn new() -> Setup {
        let world = World {
            host: FakeKernel::with_eth0(&["192.0.2.2/24"]).host,
            ..Default::default()
        };
        Setup {
            dir: tempfile::tempdir().unwrap(),
            world: Arc::new(Mutex::new(world)),
        }
    }

    fn engine(
        &self,
        who: &'static str,
        pause: Pause,
        hook: Option<Hook>,
    ) -> Engine<SqliteStore, Shared> {
        self.engine_offering(who, pause, hook, vec![])
    }

    /// [`Setup::engine`] whose DHCP server offers `offers`, one per request.
    fn engine_offering(
        &self,
        who: &'static str,
        pause: Pause,
        hook: Option<Hook>,
        offers: Vec<Lease>,
    ) -> Engine<SqliteStore, Shared> {
        let mut inner = FakeKernel::default();
        inner.namespaces.push(("/run/netns/c1".into(), (1, 10)));
        inner.dhcp_offers = offers.into();
        let kernel = Shared {
            who,
            world: self.world.clone(),
            inner,
            pause,
            hook,
        };
        let store = SqliteStore::open(&self.dir.path().join("state")).unwrap();
        Engine::new(store, kernel, Default::default()).with_run_dir(&self.dir.path().join("run"))
    }

    /// A hook that runs `verb` on a fresh engine B in a thread and waits for it up
    /// to 300 ms: long enough for B to finish if nothing holds it back.
    fn run_b<F>(&self, verb: F) -> (Hook, mpsc::Receiver<()>)
    where
        F: FnOnce(&mut Engine<SqliteStore, Shared>) + Send + 'static,
    {
        let mut b = self.engine("B", Pause::Never, None);
        let (done_tx, done_rx) = mpsc::channel();
        let hook: Hook = Box::new(move || {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                verb(&mut b);
                let _ = tx.send(());
                let _ = done_tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_millis(300));
        });
        (hook, done_rx)
    }
}

fn bridge(name: &str, subnet: &str) -> NetworkRequest {
    NetworkRequest {
        name: name.into(),
        subnets: vec![subnet.into()],
        ..Default::default()
    }
}

fn bridge_of(n: &Network) -> IfName {
    n.bridge.clone().unwrap()
}

#[test]
fn gc_paused_after_reading_the_networks_does_not_remove_a_bridge_created_meanwhile() {
    let s = Setup::new();
    let (hook, b_done) = s.run_b(|b| {
        b.create_network(&bridge("late", "203.0.113.0/24")).unwrap();
    });
    let mut a = s.engine("A", Pause::HostView, Some(hook));
    a.gc().unwrap();
    b_done
        .recv_timeout(Duration::from_secs(10))
        .expect("B's create finished");
    let net = a.network("late").unwrap();
    let links = s.world.lock().unwrap().host.clone();
    assert!(
        links.link(bridge_of(&net).as_str()).is_some(),
        "gc removed the bridge of network late, created while it ran"
    );
}

#[test]
fn a_firewall_rebuild_paused_before_it_applies_keeps_an_endpoint_attached_meanwhile() {
    let s = Setup::new();
    s.engine("A", Pause::Never, None)
        .create_network(&bridge("br", "203.0.113.0/24"))
        .unwrap();
    let (hook, b_done) = s.run_b(|b| {
        b.attach(&AttachRequest {
            network: "br".into(),
            netns: "/run/netns/c1".into(),
            ip: Some("203.0.113.77".into()),
            ..Default::default()
        })
        .unwrap();
    });
    s.world.lock().unwrap().nft.clear();
    let mut a = s.engine("A", Pause::Nft, Some(hook));
    a.rebuild_firewall().unwrap();
    b_done
        .recv_timeout(Duration::from_secs(10))
        .expect("B's attach finished");
    // The last word on the endpoint's elements must include them: either B added
    // them after A's rebuild, or A's rebuild was computed with B's endpoint in it.
    let log = s.world.lock().unwrap().nft.clone();
    let rebuild = log
        .iter()
        .rposition(|l| l.starts_with("A:"))
        .expect("A rebuilt");
    let added_after = log[rebuild + 1..]
        .iter()
        .any(|l| l.starts_with("B:") && l.contains("203.0.113.77"));
    assert!(
        added_after || log[rebuild].contains("203.0.113.77"),
        "the rebuild dropped the elements of an endpoint attached while it ran: {log:#?}"
    );
}

/// A lease of `addr` (192.0.2.0/24, from the router 192.0.2.1) acquired at `at`.
fn lease(addr: &str, at: u64) -> Lease {
    let mut l = Lease::test(addr.parse().unwrap(), Ipv4Addr::new(192, 0, 2, 1), 120);
    l.acquired_at = at;
    l
}

/// The host's own bridge br0 onto the LAN, network `ext` (DHCP) on it, and c1
/// attached to it with the lease of 192.0.2.120: its anti-spoofing guard holds .120.
fn dhcp_on_the_lans_bridge(s: &Setup) {
    {
        let mut w = s.world.lock().unwrap();
        let mut br0 = w.host.links[1].clone();
        br0.name = "br0".into();
        br0.kind = Some("bridge".into());
        br0.index = 50;
        w.host.links.push(br0);
    }
    let mut a = s.engine_offering("A", Pause::Never, None, vec![lease("192.0.2.120", 1000)]);
    a.create_network(&NetworkRequest {
        name: "ext".into(),
        options: vec!["bridge=br0".into(), "bridge_external=true".into()],
        ipam_driver: Some("dhcp".into()),
        ..Default::default()
    })
    .unwrap();
    a.attach(&AttachRequest {
        network: "ext".into(),
        netns: "/run/netns/c1".into(),
        name: Some("web".into()),
        ..Default::default()
    })
    .unwrap();
}

/// Which of `addrs` lanyard's nft sets hold after the scripts of `log`, in order (a
/// script that deletes the tables starts over from its own elements).
fn guarded<'a>(log: &[String], addrs: &[&'a str]) -> Vec<&'a str> {
    let mut held: Vec<&str> = vec![];
    for script in log {
        if script.contains("delete table") {
            held.clear();
        }
        for line in script.lines() {
            for a in addrs {
                if !line.contains(a) {
                    continue;
                }
                if line.starts_with("add element") && !held.contains(a) {
                    held.push(a);
                } else if line.starts_with("delete element") {
                    held.retain(|h| h != a);
                }
            }
        }
    }
    held.sort_unstable();
    held
}

#[test]
fn a_firewall_rebuild_while_a_dhcp_lease_moves_the_address_guards_the_new_one_only() {
    let s = Setup::new();
    dhcp_on_the_lans_bridge(&s);
    // The daemon (A) restarts: the server gives c1 another address. A is paused as it
    // puts the new address's guard in, the old one's already gone; B rebuilds.
    let (hook, b_done) = s.run_b(|b| b.rebuild_firewall().unwrap());
    let mut a = s.engine_offering(
        "A",
        Pause::NftAdd,
        Some(hook),
        vec![lease("192.0.2.130", 2000)],
    );
    let (_, done) = a.maintain_leases(2000, true).unwrap();
    assert_eq!(
        done,
        ["endpoint web: address changed from 192.0.2.120 to 192.0.2.130/24"]
    );
    b_done
        .recv_timeout(Duration::from_secs(10))
        .expect("B's rebuild finished");
    let log = s.world.lock().unwrap().nft.clone();
    assert_eq!(
        guarded(&log, &["192.0.2.120", "192.0.2.130"]),
        ["192.0.2.130"],
        "a rebuild that read the store while the address moved: {log:#?}"
    );
}

#[test]
fn a_detach_while_a_dhcp_lease_moves_the_address_leaves_no_guard() {
    let s = Setup::new();
    dhcp_on_the_lans_bridge(&s);
    // A is paused as it puts the new address's guard in; B detaches the endpoint,
    // knowing only the old address.
    let (hook, b_done) = s.run_b(|b| {
        b.detach(&DetachRequest::Endpoint("web".into())).unwrap();
    });
    let mut a = s.engine_offering(
        "A",
        Pause::NftAdd,
        Some(hook),
        vec![lease("192.0.2.130", 2000)],
    );
    a.maintain_leases(2000, true).unwrap();
    b_done
        .recv_timeout(Duration::from_secs(10))
        .expect("B's detach finished");
    assert!(a.endpoints().unwrap().is_empty(), "B detached it");
    let log = s.world.lock().unwrap().nft.clone();
    assert_eq!(
        guarded(&log, &["192.0.2.120", "192.0.2.130"]),
        Vec::<&str>::new(),
        "an endpoint detached while its address moved left a guard: {log:#?}"
    );
}
