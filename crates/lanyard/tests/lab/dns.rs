//! Name resolution: `lanyard daemon`'s responder on 127.0.0.11:53 inside endpoints'
//! namespaces, asked by a small hickory-proto client from inside them (UDP, then TCP
//! when the answer comes back truncated, as a stub resolver does). Upstream: Debian's
//! dnsmasq in the lab's LAN namespace, reached through a host resolv.conf that names
//! only systemd-resolved's stub (127.0.0.53).

use crate::harness::{addr_of, exit, lab, Bg, Lab, Ns};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// How long a name may take to follow an attach or detach (the daemon hears of it
/// after the verb returns).
const SETTLE: Duration = Duration::from_secs(5);
const RESOLVER: &str = "127.0.0.11:53";

/// What one query got: the answer's code and its records as text.
#[derive(Debug, PartialEq, Eq)]
struct Got {
    code: ResponseCode,
    records: Vec<String>,
    /// It came over TCP after a truncated UDP answer.
    tcp: bool,
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(hickory_proto::op::Query::query(
        Name::from_ascii(name).unwrap(),
        t,
    ));
    m.to_vec().unwrap()
}

/// Asks the responder in `ns` for `name`, as a stub resolver would (no EDNS: answers
/// over 512 bytes come truncated, then it asks again over TCP).
fn ask(ns: &Ns, name: &str, t: RecordType) -> Got {
    try_ask(ns, name, t, Duration::from_secs(6))
        .unwrap_or_else(|| panic!("no answer for {name} in {}", ns.name()))
}

/// [`ask`], or `None` when no UDP answer comes within `wait` (no responder yet).
fn try_ask(ns: &Ns, name: &str, t: RecordType, wait: Duration) -> Option<Got> {
    let q = query(name, t);
    let server: SocketAddr = RESOLVER.parse().unwrap();
    let sock = lanyard_kernel::netns::within(&ns.path(), || UdpSocket::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(&q, server).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    let mut m = Message::from_vec(&buf[..n]).unwrap();
    let mut tcp = false;
    if m.metadata.truncation {
        tcp = true;
        let mut s = lanyard_kernel::netns::within(&ns.path(), || {
            TcpStream::connect_timeout(&server, Duration::from_secs(3))
        })
        .unwrap()
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&q);
        s.write_all(&out).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut body).unwrap();
        m = Message::from_vec(&body).unwrap();
    }
    Some(Got {
        code: m.metadata.response_code,
        records: m.answers.iter().map(|r| r.data.to_string()).collect(),
        tcp,
    })
}

/// Asks until `ok` holds for the answer or [`SETTLE`] passes; the last answer.
fn ask_until(ns: &Ns, name: &str, t: RecordType, ok: impl Fn(&Got) -> bool) -> Got {
    let end = Instant::now() + SETTLE;
    loop {
        let g = try_ask(ns, name, t, Duration::from_millis(500));
        match g {
            Some(g) if ok(&g) => return g,
            _ if Instant::now() > end => return g.unwrap_or_else(|| ask(ns, name, t)),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// dnsmasq answering DNS on the LAN router's address: `far.example` and a TXT record
/// too big for a plain UDP answer; nothing forwarded further.
fn upstream(lab: &Lab) -> Bg {
    let pid = lab.dir().join("dns-dnsmasq.pid");
    let pidfile = format!("--pid-file={}", pid.display());
    let chunk = "x".repeat(200);
    let txt = format!("--txt-record=big.example,{chunk},{chunk},{chunk}");
    let bg = lab.lan().spawn(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--log-facility=-",
        "--conf-file=/dev/null",
        "--user=root",
        "--listen-address=192.0.2.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--local=/example/",
        "--host-record=far.example,192.0.2.77",
        &txt,
        &pidfile,
    ]);
    bg.wait_for_file(&pid, "dnsmasq");
    bg
}

/// The daemon, its host resolv.conf naming only a loopback stub (its real list in
/// systemd-resolved's file names dnsmasq).
fn daemon(lab: &Lab) -> Bg {
    let stub = lab.dir().join("resolv.conf");
    let real = lab.dir().join("resolved.conf");
    std::fs::write(&stub, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
    std::fs::write(&real, "nameserver 192.0.2.1\n").unwrap();
    lab.daemon(&[
        "--gc-interval",
        "0",
        "--resolv-conf",
        stub.to_str().unwrap(),
        "--resolved-conf",
        real.to_str().unwrap(),
    ])
}

fn a<'a>(records: &'a [&'a str]) -> impl Fn(&Got) -> bool + 'a {
    move |g: &Got| g.code == ResponseCode::NoError && g.records == records
}

#[test]
fn endpoints_resolve_each_other_by_name_and_alias_until_detached_and_the_rest_is_forwarded() {
    let lab = lab!();
    let _dnsmasq = upstream(&lab);
    lab.lan_network("lan", "macvlan", &[]);
    let _d = daemon(&lab);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let web = addr_of(
        &lab.attach("lan", &c1, &["--name", "web", "--alias", "www"]),
        false,
    );
    let db = addr_of(&lab.attach("lan", &c2, &["--name", "db"]), false);
    let w = [web.as_str()];
    let got = ask_until(&c2, "web", RecordType::A, a(&w));
    assert!(a(&w)(&got), "web from db: {got:?}");
    let got = ask(&c2, "WWW.", RecordType::A);
    assert!(a(&w)(&got), "alias www from db: {got:?}");
    let got = ask_until(&c1, "db", RecordType::A, a(&[db.as_str()]));
    assert!(a(&[db.as_str()])(&got), "db from web: {got:?}");
    let rev: Vec<&str> = web.split('.').rev().collect();
    let got = ask(
        &c2,
        &format!("{}.in-addr.arpa.", rev.join(".")),
        RecordType::PTR,
    );
    assert_eq!(got.records, ["web."], "{got:?}");
    // Other names: forwarded to dnsmasq (the host's resolv.conf names only
    // 127.0.0.53; the real list is systemd-resolved's), and back.
    let got = ask(&c1, "far.example", RecordType::A);
    assert!(a(&["192.0.2.77"])(&got), "forwarded: {got:?}");
    assert_eq!(
        ask(&c1, "nowhere.example", RecordType::A).code,
        ResponseCode::NXDomain
    );
    // A big answer: truncated over UDP, whole over TCP (forwarded both ways).
    let got = ask(&c1, "big.example", RecordType::TXT);
    assert!(got.tcp && got.code == ResponseCode::NoError, "{got:?}");
    assert!(got.records.concat().len() >= 600, "{got:?}");
    // A CNI container on the network: its result names the responder, which
    // answers in its namespace too.
    let rt = crate::cni::Runtime::new(
        &lab,
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "lan",
            "plugins": [{"type": "lanyard", "network": "lan"}]
        }),
    );
    let c3 = lab.netns("c3");
    let result = rt
        .add(&crate::cni::Att::new("dns-ctr", &c3))
        .unwrap_or_else(|e| panic!("ADD: {e}"));
    assert_eq!(
        result["dns"]["nameservers"],
        serde_json::json!(["127.0.0.11"]),
        "{result}"
    );
    let got = ask_until(&c3, "web", RecordType::A, a(&w));
    assert!(a(&w)(&got), "web from a CNI container: {got:?}");
    // Detach: the name goes at once (then asked upstream, which refuses it).
    lab.lanyard_ok(&["detach", "web"]);
    let gone = |g: &Got| g.code != ResponseCode::NoError && g.records.is_empty();
    let got = ask_until(&c2, "web", RecordType::A, gone);
    assert!(gone(&got), "web after detach: {got:?}");
    assert!(gone(&ask(&c2, "www", RecordType::A)));
}

#[test]
fn bad_names_and_a_taken_name_are_refused_at_attach() {
    let lab = lab!();
    lab.lan_network("lan", "macvlan", &[]);
    let (c1, c2) = (lab.netns("c1"), lab.netns("c2"));
    let long = "a".repeat(64);
    let path = c1.path();
    let p = path.to_str().unwrap();
    for (flag, bad) in [
        ("--name", long.as_str()),
        ("--name", "a..b"),
        ("--alias", "un_der"),
        ("--alias", "x-"),
    ] {
        let err = lab.lanyard_fails(&["attach", "lan", "--netns", p, flag, bad], exit::USAGE);
        assert!(
            err.contains(flag) && err.contains(bad),
            "{flag} {bad}: {err}"
        );
    }
    assert!(lab.lanyard_ok(&["endpoint", "ls"]).lines().count() <= 1);
    lab.attach("lan", &c1, &["--name", "web"]);
    let path2 = c2.path();
    let err = lab.lanyard_fails(
        &[
            "attach",
            "lan",
            "--netns",
            path2.to_str().unwrap(),
            "--name",
            "web",
        ],
        exit::CONFLICT,
    );
    assert!(err.contains("web"), "{err}");
}

/// `lanyard run`'s stdout for `sh -c SCRIPT`, which must succeed.
fn run_sh(lab: &Lab, flags: &[&str], script: &str) -> String {
    let mut args = vec!["run", "--network", "lan"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    lab.lanyard_ok(&args)
}

#[test]
fn run_gets_a_resolv_conf_naming_the_responder_its_own_hosts_file_and_host_name() {
    let lab = lab!();
    let _dnsmasq = upstream(&lab);
    lab.lan_network("lan", "macvlan", &[]);
    let _d = daemon(&lab);
    let c1 = lab.netns("c1");
    let db = addr_of(&lab.attach("lan", &c1, &["--name", "db"]), false);
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let out = run_sh(
        &lab,
        &[
            "--name",
            "app",
            "--dns-search",
            "example",
            "--add-host",
            "extra:203.0.113.9",
        ],
        "cat /etc/resolv.conf /etc/hosts; hostname; getent hosts db far extra",
    );
    assert!(out.contains("nameserver 127.0.0.11\n"), "{out}");
    assert!(out.contains("search example\n"), "{out}");
    assert!(out.lines().any(|l| l == "app"), "hostname: {out}");
    assert!(out.contains(&db) && out.contains(" db\n"), "db: {out}");
    // `far` through the search domain, forwarded to dnsmasq.
    assert!(
        out.contains("192.0.2.77") && out.contains("far.example"),
        "far: {out}"
    );
    assert!(
        out.contains("203.0.113.9") && out.contains("extra"),
        "extra: {out}"
    );
    // The host's own files are untouched.
    assert_eq!(
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        host_resolv
    );
    assert!(!std::fs::read_to_string("/etc/hosts")
        .unwrap_or_default()
        .contains("extra"));
}

#[test]
fn run_without_a_daemon_names_the_given_servers_and_refuses_bad_flags() {
    let lab = lab!();
    let _dnsmasq = upstream(&lab);
    lab.lan_network("lan", "macvlan", &[]);
    let out = run_sh(
        &lab,
        &["--dns", "192.0.2.1", "--hostname", "box"],
        "cat /etc/resolv.conf; hostname; getent hosts far.example",
    );
    assert!(
        out.contains("nameserver 192.0.2.1\n") && !out.contains("127.0.0.11"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l == "box") && out.contains("192.0.2.77"),
        "{out}"
    );
    for (flag, bad) in [("--dns", "x"), ("--hostname", "a_b"), ("--add-host", "h")] {
        let err = lab.lanyard_fails(
            &["run", "--network", "lan", flag, bad, "--", "true"],
            exit::USAGE,
        );
        assert!(err.contains(flag), "{flag} {bad}: {err}");
    }
}

#[test]
fn a_networks_dns_option_is_where_its_endpoints_other_questions_go() {
    let lab = lab!();
    let _dnsmasq = upstream(&lab);
    // The host's own upstream answers nothing; the network names dnsmasq.
    lab.lan_network("lan", "macvlan", &["-o", "dns=192.0.2.1"]);
    let stub = lab.dir().join("resolv.conf");
    std::fs::write(&stub, "nameserver 192.0.2.99\n").unwrap();
    let _d = lab.daemon(&[
        "--gc-interval",
        "0",
        "--resolv-conf",
        stub.to_str().unwrap(),
        "--resolved-conf",
        stub.to_str().unwrap(),
    ]);
    let c1 = lab.netns("c1");
    lab.attach("lan", &c1, &["--name", "web"]);
    let far = ["192.0.2.77"];
    let got = ask_until(&c1, "far.example", RecordType::A, a(&far));
    assert!(a(&far)(&got), "through the network's server: {got:?}");
    let err = lab.lanyard_fails(
        &[
            "network",
            "create",
            "bad",
            "-d",
            "macvlan",
            "-o",
            "parent=eth0",
            "-o",
            "dns=nope",
        ],
        exit::USAGE,
    );
    assert!(err.contains("-o dns"), "{err}");
}
