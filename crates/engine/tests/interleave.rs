//! Two engines on one SQLite store file and one (simulated) host, with the
//! interleavings that broke lanyard forced: engine A is paused at a chosen kernel
//! step while engine B runs a whole verb, as two processes would. With the
//! cross-process lock (`RUN_DIR/lock`) B waits for A's section instead of slipping
//! into it; the hook gives B a bounded time and then lets A go on.

use lanyard_core::kernel::fake::FakeKernel;
use lanyard_core::kernel::{Kernel, NsId, View};
use lanyard_core::model::{AttachRequest, Network, NetworkRequest};
use lanyard_core::name::IfName;
use lanyard_core::op::{Netns, Op};
use lanyard_core::Result;
use lanyard_engine::Engine;
use lanyard_store::SqliteStore;
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
    fn apply(&mut self, op: &Op) -> Result<()> {
        if let Op::Nft { script, .. } = op {
            self.fire(Pause::Nft);
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
        let mut inner = FakeKernel::default();
        inner.namespaces.push(("/run/netns/c1".into(), (1, 10)));
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
