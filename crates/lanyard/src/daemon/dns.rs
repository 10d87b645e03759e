//! The DNS responder: `lanyard daemon` answers on 127.0.0.11:53, UDP and TCP, inside
//! every namespace with an active endpoint of this host (as Docker's embedded DNS
//! does), so it works for every driver with no rule and no gateway address. What it
//! answers is [`super::dns_table`]'s; this module owns the sockets and the
//! forwarding.
//!
//! **Sockets.** For each namespace the loop thread steps in
//! ([`lanyard_kernel::netns::within`]: `setns`, two sockets, `setns` back), opens a
//! UDP socket and a TCP listener bound to 127.0.0.11:53 (`IP_FREEBIND`: the bind
//! works before the namespace's loopback is up) and comes back; the sockets stay in
//! that namespace and are served from the loop. They close when the namespace's last
//! endpoint goes.
//!
//! **Learning of endpoints.** Every attach and detach already tells a running daemon
//! (the endpoint notice on `daemon.sock`, sent after the verb, which is the whole
//! cost on the attach path); on a notice the responder reads the store's endpoints
//! on the engine thread and rebuilds its table, so names follow attach and detach
//! within milliseconds. It also reads them every [`RESCAN`] (endpoints of front ends
//! that send no notice).
//!
//! **Forwarding.** Queries for other names go, as they came, to the namespace's
//! upstreams (`lanyard run --dns`, else the network's `-o dns=`, else the DHCP
//! lease's servers, else the host's
//! real ones, never a loopback stub: [`super::dns_upstream`]), over the transport
//! they came by, from the daemon's own namespace; each server gets
//! [`FORWARD_TIMEOUT`], then the next; none answering is SERVFAIL. A UDP answer too
//! big for the asker comes back truncated and the asker asks again over TCP.

use super::dns_table::{servfail, NsKey, Outcome, Querier, Table};
use super::dns_upstream;
use super::worker::Worker;
use lanyard_kernel::handoff::Message;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::JoinHandle;

/// The address the responder answers on in every namespace (Docker's).
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// How long one upstream server gets to answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// The store's endpoints are read at least this often.
pub const RESCAN: Duration = Duration::from_secs(30);
/// A TCP connection with no query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Forwarded queries under way per namespace; more are dropped (the asker retries).
const IN_FLIGHT: usize = 256;
/// Directory in the run dir where `lanyard run --dns` leaves a namespace's servers
/// (one file per namespace, named `DEV:INO`, resolv.conf syntax).
pub const GIVEN_DIR: &str = "dns";

/// Where the responder takes what it needs besides the store.
pub struct Config {
    /// The host's resolv.conf.
    pub resolv: PathBuf,
    /// The real upstreams' list when resolv.conf names only a loopback stub.
    pub resolved: PathBuf,
    /// `RUN_DIR/dns`.
    pub given_dir: PathBuf,
    /// This host's node name.
    pub node: Option<String>,
}

/// The sockets of one namespace, served until dropped.
struct Served {
    netns: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs the responder until the daemon stops: rebuilds the table on every endpoint
/// notice and every [`RESCAN`], and opens or closes namespaces' sockets to match.
pub async fn run(worker: Worker, mut events: broadcast::Receiver<Message>, cfg: Config) {
    let (tables, rx) = watch::channel(Arc::new(Table::default()));
    let mut served: HashMap<NsKey, Served> = HashMap::new();
    let mut events_open = true;
    loop {
        match worker.names().await {
            Ok((eps, nets)) => {
                let host = dns_upstream::host_upstreams(&cfg.resolv, &cfg.resolved);
                let given = read_given(&cfg.given_dir);
                let nets = network_servers(&nets);
                let t = Arc::new(Table::build(
                    &eps,
                    cfg.node.as_deref(),
                    &host,
                    &given,
                    &nets,
                ));
                tables.send_replace(t.clone());
                reconcile(&mut served, &t, &rx);
            }
            Err(e) => tracing::warn!("daemon: dns: reading the endpoints: {e}; trying again"),
        }
        tokio::select! {
            r = events.recv(), if events_open => match r {
                Err(broadcast::error::RecvError::Closed) => events_open = false,
                // A notice, or several missed: either way read the store again, once
                // for every notice already queued.
                _ => while events.try_recv().is_ok() {},
            },
            _ = tokio::time::sleep(RESCAN) => {}
        }
    }
}

/// Opens sockets in namespaces new to the table, closes those of namespaces gone.
fn reconcile(served: &mut HashMap<NsKey, Served>, t: &Table, tables: &watch::Receiver<Arc<Table>>) {
    let want = t.queriers();
    served.retain(|key, s| want.get(key).is_some_and(|q| q.netns == s.netns));
    for (key, q) in want {
        if served.contains_key(key) {
            continue;
        }
        match open(*key, q) {
            Ok((udp, tcp)) => {
                let udp = Arc::new(udp);
                let tasks = vec![
                    tokio::spawn(serve_udp(*key, udp, tables.clone())),
                    tokio::spawn(serve_tcp(*key, tcp, tables.clone())),
                ];
                tracing::debug!("daemon: dns: answering in {}", q.netns.display());
                served.insert(
                    *key,
                    Served {
                        netns: q.netns.clone(),
                        tasks,
                    },
                );
            }
            // Gone meanwhile (gc or the next notice takes it away): quietly.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!("daemon: dns: {} is gone: {e}", q.netns.display())
            }
            // Another path to another namespace now, or the port is taken.
            Err(e) => tracing::warn!(
                "daemon: dns: cannot answer on {RESOLVER}:53 in {}: {e}",
                q.netns.display()
            ),
        }
    }
}

/// One socket bound to 127.0.0.11:53 in the calling thread's namespace.
fn bind(kind: SocketType) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        kind,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::sockopt::set_ip_freebind(&fd, true)?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &SocketAddrV4::new(RESOLVER, 53))?;
    if kind == SocketType::STREAM {
        rustix::net::listen(&fd, 128)?;
    }
    Ok(fd)
}

/// Opens the namespace's two sockets (checking that its path still names the
/// namespace the table means) and hands them to the loop.
fn open(key: NsKey, q: &Querier) -> io::Result<(UdpSocket, TcpListener)> {
    let st = rustix::fs::stat(&q.netns)?;
    if (st.st_dev, st.st_ino) != key {
        return Err(io::Error::other("the path names another namespace now"));
    }
    let (udp, tcp) = lanyard_kernel::netns::within(&q.netns, || {
        Ok::<_, io::Error>((bind(SocketType::DGRAM)?, bind(SocketType::STREAM)?))
    })??;
    Ok((
        UdpSocket::from_std(std::net::UdpSocket::from(udp))?,
        TcpListener::from_std(std::net::TcpListener::from(tcp))?,
    ))
}

/// The servers networks name (`-o dns=`), by network id.
fn network_servers(nets: &[lanyard_core::model::Network]) -> HashMap<String, Vec<IpAddr>> {
    nets.iter()
        .filter_map(|n| {
            let v = n.options.get(lanyard_core::dnsname::DNS_OPTION)?;
            Some((
                n.id.clone(),
                lanyard_core::dnsname::network_servers(v).ok()?,
            ))
        })
        .collect()
}

/// The servers `lanyard run --dns` gave namespaces, by identity.
fn read_given(dir: &Path) -> HashMap<NsKey, Vec<IpAddr>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    rd.flatten()
        .filter_map(|f| {
            let name = f.file_name().into_string().ok()?;
            let (d, i) = name.split_once(':')?;
            let key = (d.parse().ok()?, i.parse().ok()?);
            let text = std::fs::read_to_string(f.path()).ok()?;
            Some((key, dns_upstream::parse_nameservers(&text)))
        })
        .collect()
}

/// Serves the namespace's UDP socket.
async fn serve_udp(key: NsKey, sock: Arc<UdpSocket>, tables: watch::Receiver<Arc<Table>>) {
    let limit = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("daemon: dns: udp: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let query = &buf[..n];
        let out = tables.borrow().answer(key, query, true);
        match out {
            Outcome::Reply(b) => {
                let _ = sock.send_to(&b, peer).await;
            }
            Outcome::Forward(ups) => {
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    continue;
                };
                let (query, sock) = (query.to_vec(), sock.clone());
                tokio::spawn(async move {
                    let a = match forward_udp(&query, &ups).await {
                        Some(a) => Some(a),
                        None => servfail(&query),
                    };
                    if let Some(a) = a {
                        let _ = sock.send_to(&a, peer).await;
                    }
                    drop(permit);
                });
            }
            Outcome::Drop => {}
        }
    }
}

/// Serves the namespace's TCP listener.
async fn serve_tcp(key: NsKey, l: TcpListener, tables: watch::Receiver<Arc<Table>>) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                tokio::spawn(tcp_conn(key, s, tables.clone()));
            }
            Err(e) => {
                tracing::debug!("daemon: dns: tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads one length-prefixed DNS message (RFC 1035 4.2.2).
async fn read_msg(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut m).await?;
    Ok(m)
}

/// Writes one length-prefixed DNS message.
async fn write_msg(s: &mut TcpStream, m: &[u8]) -> io::Result<()> {
    let len = u16::try_from(m.len()).map_err(|_| io::Error::other("message too long"))?;
    let mut out = Vec::with_capacity(m.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(m);
    s.write_all(&out).await
}

/// Answers the queries of one TCP connection until it closes or idles.
async fn tcp_conn(key: NsKey, mut s: TcpStream, tables: watch::Receiver<Arc<Table>>) {
    loop {
        let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_msg(&mut s)).await else {
            return;
        };
        let out = tables.borrow().answer(key, &query, false);
        let answer = match out {
            Outcome::Reply(b) => Some(b),
            Outcome::Forward(ups) => match forward_tcp(&query, &ups).await {
                Some(a) => Some(a),
                None => servfail(&query),
            },
            Outcome::Drop => None,
        };
        let Some(a) = answer else { return };
        if write_msg(&mut s, &a).await.is_err() {
            return;
        }
    }
}

/// Asks each server in turn over UDP; the first answer with the query's id.
async fn forward_udp(query: &[u8], ups: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for up in ups {
        let local: SocketAddr = match up {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(sock) = UdpSocket::bind(local).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        let got = tokio::time::timeout(FORWARD_TIMEOUT, async {
            loop {
                let n = sock.recv(&mut buf).await?;
                if buf.get(..2) == Some(id) {
                    return Ok::<_, io::Error>(n);
                }
            }
        })
        .await;
        if let Ok(Ok(n)) = got {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// Asks each server in turn over TCP.
async fn forward_tcp(query: &[u8], ups: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in ups {
        let got = tokio::time::timeout(FORWARD_TIMEOUT, async {
            let mut s = TcpStream::connect(up).await?;
            write_msg(&mut s, query).await?;
            read_msg(&mut s).await
        })
        .await;
        if let Ok(Ok(a)) = got {
            return Some(a);
        }
    }
    None
}
