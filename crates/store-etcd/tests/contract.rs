//! The `Store`/`Tx` contract, run against every store: the reference `MemStore`,
//! the SQLite store, and the etcd store on a real etcd (one member started by the
//! test with a temp data dir, stopped after, also on failure). The etcd and its
//! clients run in a `lyt-` network namespace the test makes and removes
//! ([`labns`]); nothing touches the namespace the tests were started in. Each case
//! is a generic function over `Store`.

#[path = "contract/labns.rs"]
mod labns;

use lanyard_core::model::{Endpoint, EndpointState, MacAddr, Network, PortMapping};
use lanyard_core::owner::Owner;
use lanyard_core::store::{mem::MemStore, Store, Tx};
use lanyard_core::testing::{EndpointBuilder, NetworkBuilder};
use lanyard_core::{Error, Result};
use lanyard_store::SqliteStore;
use lanyard_store_etcd::EtcdStore;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use labns::LabNs;

fn id(c: char) -> String {
    c.to_string().repeat(64)
}

fn net(name: &str, idc: char) -> Network {
    NetworkBuilder::new(name)
        .id(id(idc))
        .subnet("198.51.100.0/24")
        .build()
}

fn ep(n: &Network, eid: &str, name: Option<&str>, ns: (u64, u64)) -> Endpoint {
    EndpointBuilder::new(n.name.as_str())
        .id(eid)
        .name(name)
        .network_id(n.id.clone())
        .netns("/proc/1/ns/net", ns)
        .state(EndpointState::Pending)
        .build()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn w<S: Store, T>(s: &S, mut f: impl FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
    s.write(&mut |tx| f(tx))
}

fn r<S: Store, T>(s: &S, mut f: impl FnMut(&dyn Tx) -> Result<T>) -> T {
    s.read(&mut |tx| f(tx)).unwrap()
}

/// Networks: found by id, name and unique prefix; names unique; a rename frees
/// the old name; delete drops the network's addresses and cursors.
fn networks_by_id_name_and_prefix<S: Store>(s: &S) {
    let a = net("alpha", 'a');
    let mut b = net("beta", 'b');
    w(s, |tx| {
        tx.put_network(&a)?;
        tx.put_network(&b)
    })
    .unwrap();
    assert_eq!(r(s, |tx| tx.network("alpha")).unwrap().id, a.id);
    assert_eq!(r(s, |tx| tx.network(&b.id)).unwrap().name.as_str(), "beta");
    assert_eq!(r(s, |tx| tx.network("bbb")).unwrap().id, b.id);
    assert!(r(s, |tx| tx.network("c")).is_none());
    let names: Vec<String> = r(s, |tx| tx.networks())
        .iter()
        .map(|n| n.name.to_string())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    let clash = net("alpha", 'c');
    assert!(matches!(
        w(s, |tx| tx.put_network(&clash)),
        Err(Error::Conflict(_))
    ));
    b.name = "gamma".parse().unwrap();
    w(s, |tx| tx.put_network(&b)).unwrap();
    assert!(r(s, |tx| tx.network("beta")).is_none());
    let reuse = net("beta", 'd');
    w(s, |tx| tx.put_network(&reuse)).unwrap();
    let sub = "198.51.100.0/24".parse().unwrap();
    w(s, |tx| {
        tx.take_address(&a.id, ip("198.51.100.2"), "e1")?;
        tx.set_cursor(&a.id, &sub, ip("198.51.100.2"))
    })
    .unwrap();
    assert_eq!(r(s, |tx| tx.address_count(&a.id)), 1);
    w(s, |tx| tx.delete_network(&a.id)).unwrap();
    assert!(r(s, |tx| tx.network("alpha")).is_none());
    assert_eq!(r(s, |tx| tx.address_count(&a.id)), 0);
    assert_eq!(r(s, |tx| tx.cursor(&a.id, &sub)), None);
    assert_eq!(r(s, |tx| tx.address_owner(&a.id, ip("198.51.100.2"))), None);
}

/// Endpoints: names, owners and MACs held by one endpoint each; the namespace
/// index follows the endpoint; delete releases everything it held.
fn endpoints_hold_names_owners_macs_and_namespaces<S: Store>(s: &S) {
    let n = net("lan", 'a');
    let mut e1 = ep(&n, &format!("12{}", "0".repeat(62)), Some("web"), (1, 2));
    let e2 = ep(&n, &format!("13{}", "0".repeat(62)), Some("db"), (1, 2));
    e1.mac = Some(MacAddr([2, 0, 0, 0, 0, 1]));
    e1.owner = Some(Owner::Cni {
        network: "k8s".into(),
        container_id: "c1".into(),
        ifname: "eth0".into(),
    });
    w(s, |tx| {
        tx.put_network(&n)?;
        tx.put_endpoint(&e1)?;
        tx.put_endpoint(&e2)
    })
    .unwrap();
    assert_eq!(r(s, |tx| tx.endpoint("web")).unwrap().id, e1.id);
    assert_eq!(r(s, |tx| tx.endpoint("13")).unwrap().id, e2.id);
    assert!(matches!(
        s.read(&mut |tx| tx.endpoint("1")),
        Err(Error::Conflict(_))
    ));
    assert_eq!(r(s, |tx| tx.endpoints_in_netns((1, 2))).len(), 2);
    assert_eq!(
        r(s, |tx| tx.endpoint_by_owner(e1.owner.as_ref().unwrap()))
            .unwrap()
            .id,
        e1.id
    );
    let scope = e1.owner.as_ref().unwrap().scope();
    assert_eq!(
        r(s, |tx| tx.owned(&scope)),
        [("c1/eth0".to_string(), e1.id.clone())]
    );
    assert_eq!(
        r(s, |tx| tx.mac_holder(&n.id, e1.mac.as_ref().unwrap())),
        Some(e1.id.clone())
    );
    // Same name, same owner, same MAC: each refused, and nothing written.
    let mut dup = ep(&n, &id('f'), Some("web"), (3, 3));
    assert!(matches!(
        w(s, |tx| tx.put_endpoint(&dup)),
        Err(Error::Conflict(_))
    ));
    dup.name = None;
    dup.owner = e1.owner.clone();
    assert!(matches!(
        w(s, |tx| tx.put_endpoint(&dup)),
        Err(Error::Conflict(_))
    ));
    dup.owner = None;
    dup.mac = e1.mac;
    assert!(matches!(
        w(s, |tx| tx.put_endpoint(&dup)),
        Err(Error::Conflict(_))
    ));
    assert!(r(s, |tx| tx.endpoint(&dup.id)).is_none());
    // Leaving the namespace leaves its index; a rename frees the old name.
    e1.netns_inode = (0, 0);
    e1.name = Some("web2".parse().unwrap());
    e1.state = EndpointState::Active;
    w(s, |tx| tx.put_endpoint(&e1)).unwrap();
    assert_eq!(r(s, |tx| tx.endpoints_in_netns((1, 2))).len(), 1);
    assert!(r(s, |tx| tx.endpoint("web")).is_none());
    w(s, |tx| {
        tx.take_address(&n.id, ip("198.51.100.7"), &e1.id)?;
        tx.take_port(&PortMapping::parse_spec("8080:80").unwrap()[0], &e1.id)
    })
    .unwrap();
    w(s, |tx| tx.delete_endpoint(&e1.id)).unwrap();
    assert!(r(s, |tx| tx.endpoint("web2")).is_none());
    assert!(r(s, |tx| tx.endpoint_by_owner(e1.owner.as_ref().unwrap())).is_none());
    assert!(r(s, |tx| tx.owned(&scope)).is_empty());
    assert_eq!(
        r(s, |tx| tx.mac_holder(&n.id, e1.mac.as_ref().unwrap())),
        None
    );
    assert_eq!(r(s, |tx| tx.address_owner(&n.id, ip("198.51.100.7"))), None);
    let p = PortMapping::parse_spec("8080:80").unwrap()[0];
    assert_eq!(r(s, |tx| tx.port_holder(&p)), None);
    assert_eq!(r(s, |tx| tx.endpoints()).len(), 1);
}

/// Addresses (one network's listed by address), ports, cursors and meta; release
/// keeps owner, MAC and namespace.
fn addresses_ports_cursor_and_meta<S: Store>(s: &S) {
    let n = net("lan", 'a');
    let sub = "198.51.100.0/24".parse().unwrap();
    w(s, |tx| {
        tx.put_network(&n)?;
        tx.take_address(&n.id, ip("198.51.100.2"), "e1")?;
        tx.take_address(&n.id, ip("198.51.100.3"), "e2")?;
        tx.set_cursor(&n.id, &sub, ip("198.51.100.3"))?;
        tx.take_port(
            &PortMapping::parse_spec("127.0.0.1:80:80").unwrap()[0],
            "e1",
        )?;
        tx.set_meta("k", Some("v"))
    })
    .unwrap();
    assert_eq!(
        r(s, |tx| tx.address_owner(&n.id, ip("198.51.100.2"))).as_deref(),
        Some("e1")
    );
    assert_eq!(r(s, |tx| tx.address_count(&n.id)), 2);
    let held = |s: &S| r(s, |tx| tx.addresses(&n.id));
    assert_eq!(
        held(s),
        [
            (ip("198.51.100.2"), "e1".to_string()),
            (ip("198.51.100.3"), "e2".to_string())
        ],
        "by address, the port held beside them not among them"
    );
    assert_eq!(r(s, |tx| tx.cursor(&n.id, &sub)), Some(ip("198.51.100.3")));
    assert_eq!(r(s, |tx| tx.meta("k")).as_deref(), Some("v"));
    let all = PortMapping::parse_spec("80:80").unwrap()[0];
    let other = PortMapping::parse_spec("127.0.0.2:80:80").unwrap()[0];
    let udp = PortMapping::parse_spec("80:80/udp").unwrap()[0];
    assert_eq!(r(s, |tx| tx.port_holder(&all)).as_deref(), Some("e1"));
    assert_eq!(r(s, |tx| tx.port_holder(&other)), None);
    assert_eq!(r(s, |tx| tx.port_holder(&udp)), None);
    w(s, |tx| {
        tx.release_addresses("e1")?;
        tx.set_meta("k", None)
    })
    .unwrap();
    assert_eq!(r(s, |tx| tx.address_owner(&n.id, ip("198.51.100.2"))), None);
    assert_eq!(r(s, |tx| tx.address_count(&n.id)), 1);
    assert_eq!(held(s), [(ip("198.51.100.3"), "e2".to_string())]);
    assert_eq!(r(s, |tx| tx.port_holder(&all)), None);
    assert_eq!(r(s, |tx| tx.meta("k")), None);
}

/// A write whose closure fails leaves nothing; a write sees its own writes.
fn failed_write_leaves_nothing<S: Store>(s: &S) {
    let n = net("lan", 'a');
    let e = w(s, |tx| -> Result<()> {
        tx.put_network(&n)?;
        tx.take_address(&n.id, ip("198.51.100.9"), "e1")?;
        assert_eq!(tx.network("lan")?.unwrap().id, n.id);
        assert_eq!(tx.address_count(&n.id)?, 1);
        Err(Error::Conflict("no".into()))
    });
    assert!(e.is_err());
    assert!(r(s, |tx| tx.networks()).is_empty());
    assert_eq!(r(s, |tx| tx.address_owner(&n.id, ip("198.51.100.9"))), None);
}

/// `threads` writers, each on its own store handle, take `each` addresses by
/// next-fit (read the cursor, find the first free address after it, take it):
/// every address distinct, none lost.
fn concurrent_writers_never_share_an_address<S: Store + Send>(
    open: &(dyn Fn() -> S + Sync),
    threads: usize,
    each: usize,
) {
    let n = net("lan", 'a');
    let sub: ipnet::IpNet = "10.9.0.0/16".parse().unwrap();
    open().write(&mut |tx| tx.put_network(&n)).unwrap();
    std::thread::scope(|sc| {
        for t in 0..threads {
            let (n, open) = (&n, open);
            sc.spawn(move || {
                let s = open();
                for i in 0..each {
                    let owner = format!("t{t}-{i}");
                    s.write(&mut |tx| {
                        let start = tx.cursor(&n.id, &sub)?.unwrap_or(ip("10.9.0.0"));
                        let mut a = u32::from(match start {
                            IpAddr::V4(v) => v,
                            IpAddr::V6(_) => unreachable!(),
                        });
                        loop {
                            a += 1;
                            let addr = IpAddr::V4(a.into());
                            if tx.address_owner(&n.id, addr)?.is_none() {
                                tx.take_address(&n.id, addr, &owner)?;
                                return tx.set_cursor(&n.id, &sub, addr);
                            }
                        }
                    })
                    .unwrap();
                }
            });
        }
    });
    let s = open();
    assert_eq!(
        r(&s, |tx| tx.address_count(&n.id)),
        (threads * each) as u64,
        "every allocation holds its own address"
    );
}

/// An allocation that passes over `taken` held addresses (its cursor stale: the
/// others' attaches took them meanwhile), on a host with `endpoints` endpoints,
/// commits, and takes the first free address after them: one transaction's reads
/// stay within what one etcd `Txn` may compare (`--max-txn-ops`, 128), however many
/// addresses or endpoints there are.
fn allocation_past_many_taken_addresses_commits<S: Store>(s: &S, taken: u32, endpoints: u32) {
    let n = NetworkBuilder::new("big")
        .id(id('b'))
        .subnet("10.9.0.0/16")
        .build();
    let sc = n.subnets[0].clone();
    w(s, |tx| tx.put_network(&n)).unwrap();
    // 10.9.0.1 is the gateway: 10.9.0.2 on are taken, in small transactions.
    let addr = |i: u32| IpAddr::V4((u32::from(std::net::Ipv4Addr::new(10, 9, 0, 2)) + i).into());
    for chunk in (0..taken).collect::<Vec<_>>().chunks(40) {
        w(s, |tx| {
            for &i in chunk {
                tx.take_address(&n.id, addr(i), &format!("other{i}"))?;
            }
            Ok(())
        })
        .unwrap();
    }
    for chunk in (0..endpoints).collect::<Vec<_>>().chunks(30) {
        w(s, |tx| {
            for &i in chunk {
                let mut e = ep(&n, &format!("{i:064x}"), None, (7, u64::from(i)));
                e.node = Some("a".into());
                tx.put_endpoint(&e)?;
            }
            Ok(())
        })
        .unwrap();
    }
    let mut mine = ep(&n, &id('f'), Some("mine"), (8, 1));
    mine.node = Some("a".into());
    let got = w(s, |tx| {
        let a = lanyard_core::ipam::allocate(tx, &n.id, &sc, &mine.id)?;
        tx.put_endpoint(&mine)?;
        Ok(a)
    })
    .unwrap();
    assert_eq!(
        got,
        addr(taken),
        "the first free address after the taken ones"
    );
    assert_eq!(
        r(s, |tx| tx.address_owner(&n.id, got)).as_deref(),
        Some(mine.id.as_str())
    );
}

/// Two hosts on one etcd store: a namespace's (device, inode) names it on one host
/// only, so each host finds its own endpoint there, never the other's.
fn namespaces_are_each_hosts_own(url: &str) {
    let n = net("lan", 'a');
    let a = EtcdStore::open(url).unwrap().with_node(Some("a"));
    let b = EtcdStore::open(url).unwrap().with_node(Some("b"));
    let mut ea = ep(&n, &id('1'), None, (4, 9));
    ea.node = Some("a".into());
    let mut eb = ep(&n, &id('2'), None, (4, 9));
    eb.node = Some("b".into());
    w(&a, |tx| {
        tx.put_network(&n)?;
        tx.put_endpoint(&ea)
    })
    .unwrap();
    w(&b, |tx| tx.put_endpoint(&eb)).unwrap();
    let ids = |s: &EtcdStore| -> Vec<String> {
        r(s, |tx| tx.endpoints_in_netns((4, 9)))
            .into_iter()
            .map(|e| e.id)
            .collect()
    };
    assert_eq!(ids(&a), [ea.id.clone()]);
    assert_eq!(ids(&b), [eb.id.clone()]);
}

/// Runs every sequential case on a fresh store from `fresh`.
fn contract<S: Store>(mut fresh: impl FnMut() -> S) {
    networks_by_id_name_and_prefix(&fresh());
    endpoints_hold_names_owners_macs_and_namespaces(&fresh());
    addresses_ports_cursor_and_meta(&fresh());
    failed_write_leaves_nothing(&fresh());
    allocation_past_many_taken_addresses_commits(&fresh(), 300, 300);
}

#[test]
fn mem_store_keeps_the_contract() {
    contract(MemStore::default);
}

#[test]
fn sqlite_store_keeps_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let mut i = 0;
    contract(|| {
        i += 1;
        SqliteStore::open(&tmp.path().join(i.to_string())).unwrap()
    });
    let dir = tmp.path().join("conc");
    concurrent_writers_never_share_an_address(&|| SqliteStore::open(&dir).unwrap(), 4, 25);
}

/// One etcd member on 127.0.0.1:2379 of the calling thread's network namespace
/// (a [`LabNs`]: the port is free there), temp data dir, killed on drop.
struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the member; call it inside [`LabNs::run`].
fn etcd() -> Etcd {
    let dir = tempfile::Builder::new()
        .prefix("lyt-etcd-")
        .tempdir()
        .unwrap();
    let client = "http://127.0.0.1:2379";
    let peer = "http://127.0.0.1:2380";
    let child = Command::new("etcd")
        .args(["--name", "m0", "--data-dir"])
        .arg(dir.path())
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args([
            "--initial-cluster",
            &format!("m0={peer}"),
            "--unsafe-no-fsync",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (Debian's etcd-server) is installed");
    let e = Etcd {
        child,
        url: "etcd://127.0.0.1:2379".into(),
        _dir: dir,
    };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", 2379)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "etcd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    e
}

/// An observing store reports what each transaction saw of networks and
/// endpoints, with revisions (what a host's local copy is fed with).
fn observing_reports_what_each_transaction_saw(url: &str) {
    let s = EtcdStore::open(url).unwrap().observing();
    let n = net("seen", 's');
    w(&s, |tx| tx.put_network(&n)).unwrap();
    let put = s.take_seen().expect("a write is reported");
    assert_eq!(s.take_seen(), None, "once");
    assert_eq!(put.networks.len(), 1);
    let rev = put.networks[0].revision;
    assert!(rev > 0 && put.networks[0].json.is_some(), "{put:?}");
    assert!(!put.all_networks && put.endpoints.is_empty());
    let e = ep(&n, &id('e'), None, (1, 2));
    w(&s, |tx| tx.put_endpoint(&e)).unwrap();
    let listed = r(&s, |tx| {
        tx.networks()?;
        tx.endpoints()
    });
    assert_eq!(listed.len(), 1);
    let all = s.take_seen().unwrap();
    assert!(all.all_networks && all.all_endpoints, "{all:?}");
    assert_eq!(all.networks[0].revision, rev, "read at its mod_revision");
    assert!(all.snapshot > rev && all.endpoints.len() == 1);
    // A look-up is no full listing; a delete reports the record gone at its commit.
    r(&s, |tx| tx.network("seen"));
    let one = s.take_seen().unwrap();
    assert!(!one.all_networks && one.networks.len() == 1);
    w(&s, |tx| tx.delete_endpoint(&e.id)).unwrap();
    let del = s.take_seen().unwrap();
    let gone = del.endpoints.iter().find(|x| x.id == e.id).unwrap();
    assert!(
        gone.json.is_none() && gone.revision > all.snapshot,
        "{del:?}"
    );
    // Not observing: nothing is kept.
    let quiet = EtcdStore::open(url).unwrap();
    r(&quiet, |tx| tx.networks());
    assert_eq!(quiet.take_seen(), None);
}

#[test]
fn etcd_store_keeps_the_contract() {
    let Some(ns) = LabNs::new("etcd_store_keeps_the_contract") else {
        return;
    };
    ns.run(|| {
        let e = etcd();
        let mut i = 0;
        contract(|| {
            i += 1;
            EtcdStore::open(&format!("{}/case{i}", e.url)).unwrap()
        });
        namespaces_are_each_hosts_own(&format!("{}/hosts", e.url));
        observing_reports_what_each_transaction_saw(&format!("{}/seen", e.url));
        // More holdings than one page of the search's range read (kv.rs).
        let big = EtcdStore::open(&format!("{}/big", e.url)).unwrap();
        allocation_past_many_taken_addresses_commits(&big, 1100, 0);
        let url = format!("{}/conc", e.url);
        concurrent_writers_never_share_an_address(&|| EtcdStore::open(&url).unwrap(), 4, 25);
    });
}

#[test]
fn etcd_unreachable_fails_fast_with_a_clear_error_and_writes_nothing() {
    let Some(ns) = LabNs::new("etcd_unreachable_fails_fast") else {
        return;
    };
    ns.run(|| {
        // Nothing listens in the fresh namespace.
        let t = Instant::now();
        let r = EtcdStore::open("etcd://127.0.0.1:2379")
            .and_then(|s| s.write(&mut |tx| tx.set_meta("k", Some("v"))));
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Unreachable(_)), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("etcd at 127.0.0.1:2379"), "{e}");
        assert!(e.contains("reachable"), "{e}");
        // A bound against hanging, not a speed check: dial and request time out in seconds.
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    });
}
