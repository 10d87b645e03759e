//! DHCP and ARP on one interface inside an endpoint's namespace: the sockets under
//! `lanyard_dhcp`'s pure client.
//!
//! A packet socket (`AF_PACKET`, `SOCK_DGRAM`, bound to the interface's index, so it
//! sees that interface only) carries what must leave before the interface has an
//! address: broadcasts from 0.0.0.0, built as IPv4+UDP by `lanyard_dhcp::frame`; it
//! also receives every answer, broadcast or unicast, on macvlan and ipvlan alike.
//! Once an address is leased, unicasts to the server (renewal, release) go through a
//! UDP socket bound to that address (the kernel resolves the server's MAC). Sockets
//! are opened inside the namespace ([`crate::netns::within`]) and stay there.

use crate::netns;
use lanyard_core::lease::{DhcpWho, Extended, Lease};
use lanyard_core::{Error, Result};
use lanyard_dhcp::frame::{Arp, Udp4, CLIENT_PORT, SERVER_PORT};
use lanyard_dhcp::{exchange, Client, Dest, DhcpError, Timing, Transport};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::addr::{SocketAddrArg, SocketAddrLen, SocketAddrOpaque};
use rustix::net::{AddressFamily, Protocol, RecvFlags, SendFlags, SocketFlags, SocketType};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `struct sockaddr_ll` (packet(7)).
#[derive(Clone, Copy)]
struct LinkAddr(libc::sockaddr_ll);

impl LinkAddr {
    fn new(ifindex: u32, protocol: u16, mac: [u8; 6]) -> LinkAddr {
        // SAFETY: sockaddr_ll is plain integers and bytes; all zero is a valid value.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = protocol.to_be();
        a.sll_ifindex = ifindex as i32;
        a.sll_halen = 6;
        a.sll_addr[..6].copy_from_slice(&mac);
        LinkAddr(a)
    }
}

// SAFETY: the pointer and length passed to `f` describe `self.0`, a complete
// `sockaddr_ll` that lives as long as `self`, which outlives the call.
unsafe impl SocketAddrArg for LinkAddr {
    unsafe fn with_sockaddr<R>(
        &self,
        f: impl FnOnce(*const SocketAddrOpaque, SocketAddrLen) -> R,
    ) -> R {
        f(
            (&self.0 as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as _,
        )
    }
}

const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// A packet socket on `ifname` in the current thread's namespace for EtherType
/// `ethertype`; returns it with the interface's index and MAC.
fn packet_socket(ifname: &str, ethertype: u16) -> io::Result<(OwnedFd, u32, [u8; 6])> {
    // Protocol 0 receives nothing until the bind names the interface and EtherType:
    // no packet of another interface slips in between.
    let fd = rustix::net::socket_with(
        AddressFamily::PACKET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let ifindex = rustix::net::netdevice::name_to_index(&fd, ifname)?;
    rustix::net::bind(&fd, &LinkAddr::new(ifindex, ethertype, [0; 6]))?;
    // SAFETY: sockaddr_ll is plain data (zero is valid); getsockname writes at most
    // `len` bytes into it and the fd is open for the whole call.
    let mac = unsafe {
        let mut a: libc::sockaddr_ll = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        if libc::getsockname(
            fd.as_raw_fd(),
            (&mut a as *mut libc::sockaddr_ll).cast(),
            &mut len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let mut m = [0u8; 6];
        m.copy_from_slice(&a.sll_addr[..6]);
        m
    };
    Ok((fd, ifindex, mac))
}

/// Waits until `fd` is readable or `deadline`; false at the deadline.
fn readable(fd: &OwnedFd, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ts = Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// DHCP on one interface of a namespace.
#[derive(Debug)]
pub struct DhcpSocket {
    packet: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
    src: Ipv4Addr,
    unicast: Option<OwnedFd>,
}

impl DhcpSocket {
    /// Opens DHCP on interface `ifname` of the namespace at `netns`, sending from
    /// `src` (0.0.0.0 before a lease; the leased address to renew or release).
    pub fn open(netns: &Path, ifname: &str, src: Ipv4Addr) -> io::Result<DhcpSocket> {
        netns::within(netns, || -> io::Result<DhcpSocket> {
            let (packet, ifindex, mac) = packet_socket(ifname, libc::ETH_P_IP as u16)?;
            let unicast = if src.is_unspecified() {
                None
            } else {
                // Best effort: without it, unicasts go out in a broadcast frame.
                udp_socket(src).ok()
            };
            Ok(DhcpSocket {
                packet,
                ifindex,
                mac,
                src,
                unicast,
            })
        })?
    }

    /// The interface's MAC (`chaddr`).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn send_frame(&self, dst: Ipv4Addr, msg: &[u8]) -> io::Result<()> {
        let p = Udp4 {
            src: self.src,
            dst,
            sport: CLIENT_PORT,
            dport: SERVER_PORT,
            payload: msg,
        }
        .encode();
        let to = LinkAddr::new(self.ifindex, libc::ETH_P_IP as u16, BROADCAST_MAC);
        rustix::net::sendto(&self.packet, &p, SendFlags::empty(), &to)?;
        Ok(())
    }
}

fn udp_socket(src: Ipv4Addr) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(Protocol::from_raw(
            rustix::net::RawProtocol::new(libc::IPPROTO_UDP as u32)
                .ok_or(io::ErrorKind::InvalidInput)?,
        )),
    )?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &SocketAddrV4::new(src, CLIENT_PORT))?;
    Ok(fd)
}

impl Transport for DhcpSocket {
    fn send(&mut self, msg: &[u8], to: Dest) -> io::Result<()> {
        match (to, &self.unicast) {
            (Dest::Server(server), Some(udp)) => {
                rustix::net::sendto(
                    udp,
                    msg,
                    SendFlags::empty(),
                    &SocketAddrV4::new(server, SERVER_PORT),
                )?;
                Ok(())
            }
            (Dest::Server(server), None) => self.send_frame(server, msg),
            (Dest::Broadcast, _) => self.send_frame(Ipv4Addr::BROADCAST, msg),
        }
    }

    fn recv(&mut self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 2048];
        while readable(&self.packet, deadline)? {
            let n = match rustix::net::recv(&self.packet, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((_, n)) => n,
                Err(rustix::io::Errno::AGAIN) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(u) = Udp4::parse(&buf[..n]) {
                if u.sport == SERVER_PORT && u.dport == CLIENT_PORT {
                    return Ok(Some(u.payload.to_vec()));
                }
            }
        }
        Ok(None)
    }
}

/// Probes for `addr` with ARP (RFC 5227) on `ifname` of the namespace at `netns`:
/// one probe, then up to `wait` for any sign that another host holds it. Returns
/// that host's MAC, or none.
pub fn arp_probe(
    netns: &Path,
    ifname: &str,
    addr: Ipv4Addr,
    wait: Duration,
) -> io::Result<Option<[u8; 6]>> {
    let probe = ArpProbe::send(netns, ifname, addr)?;
    probe.wait(Instant::now() + wait)
}

/// An ARP probe sent and not yet waited for: the caller does other work in between
/// and collects the answer with [`ArpProbe::wait`].
#[derive(Debug)]
pub struct ArpProbe {
    fd: OwnedFd,
    mac: [u8; 6],
    addr: Ipv4Addr,
}

impl ArpProbe {
    /// Sends a probe for `addr` from `ifname` in the namespace at `netns`.
    pub fn send(netns: &Path, ifname: &str, addr: Ipv4Addr) -> io::Result<ArpProbe> {
        netns::within(netns, || ArpProbe::send_here(ifname, addr))?
    }

    /// Sends a probe for `addr` from `ifname` in the calling thread's namespace
    /// (from a macvlan's parent, before the endpoint's link exists: the answer comes
    /// to the parent's MAC).
    pub fn send_here(ifname: &str, addr: Ipv4Addr) -> io::Result<ArpProbe> {
        let (fd, ifindex, mac) = packet_socket(ifname, libc::ETH_P_ARP as u16)?;
        let to = LinkAddr::new(ifindex, libc::ETH_P_ARP as u16, BROADCAST_MAC);
        rustix::net::sendto(
            &fd,
            &Arp::probe(mac, addr).encode(),
            SendFlags::empty(),
            &to,
        )?;
        Ok(ArpProbe { fd, mac, addr })
    }

    /// The MAC of a host that answered for the address by `deadline`, or none.
    pub fn wait(&self, deadline: Instant) -> io::Result<Option<[u8; 6]>> {
        let mut buf = [0u8; 128];
        while readable(&self.fd, deadline)? {
            let n = match rustix::net::recv(self.fd.as_fd(), &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((_, n)) => n,
                Err(rustix::io::Errno::AGAIN) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(holder) =
                Arp::parse(&buf[..n]).and_then(|a| a.holder_of(self.addr, self.mac))
            {
                return Ok(Some(holder));
            }
        }
        Ok(None)
    }
}

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A transaction id no other client on the LAN is likely to pick: the clock's
/// nanoseconds mixed with the process id.
fn xid() -> u32 {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let x = n ^ (u64::from(std::process::id()) << 32);
    (x ^ (x >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15) as u32
}

fn timing(who: &DhcpWho) -> Timing {
    Timing {
        timeout: who.timeout,
        tries: who.tries.max(1),
    }
}

fn open(who: &DhcpWho, src: Ipv4Addr) -> Result<(DhcpSocket, Client)> {
    let sock = DhcpSocket::open(&who.netns, who.ifname.as_str(), src).map_err(|e| {
        Error::Other(format!(
            "DHCP on {} in {}: cannot open a packet socket: {e}",
            who.ifname,
            who.netns.display()
        ))
    })?;
    let client = Client::new(&who.endpoint_id, who.hostname.as_deref(), sock.mac());
    Ok((sock, client))
}

fn failed(who: &DhcpWho, e: DhcpError) -> Error {
    Error::Other(format!("DHCP on {}: {e}", who.ifname))
}

/// [`lanyard_core::kernel::Kernel::dhcp_acquire`] for the real kernel.
pub(crate) fn acquire(who: &DhcpWho, previous: Option<Ipv4Addr>) -> Result<Lease> {
    let (mut sock, client) = open(who, Ipv4Addr::UNSPECIFIED)?;
    exchange::acquire(&mut sock, &client, timing(who), previous, xid(), unix_now())
        .map_err(|e| failed(who, e))
}

/// [`lanyard_core::kernel::Kernel::dhcp_extend`] for the real kernel.
pub(crate) fn extend(who: &DhcpWho, lease: &Lease, rebinding: bool) -> Result<Extended> {
    let (mut sock, client) = open(who, lease.address)?;
    exchange::extend(
        &mut sock,
        &client,
        lease,
        rebinding,
        timing(who),
        xid(),
        unix_now(),
    )
    .map_err(|e| failed(who, e))
}

/// [`lanyard_core::kernel::Kernel::dhcp_release`] for the real kernel.
pub(crate) fn release(who: &DhcpWho, lease: &Lease) -> Result<()> {
    let (mut sock, client) = open(who, lease.address)?;
    exchange::release(&mut sock, &client, lease, xid())
        .map_err(|e| Error::Other(format!("DHCPRELEASE on {}: {e}", who.ifname)))
}

/// [`lanyard_core::kernel::Kernel::arp_probe`] for the real kernel: one probe from
/// `parent` in this namespace, up to `wait` for an answer.
pub(crate) fn probe_from_parent(
    parent: &str,
    addr: Ipv4Addr,
    wait: Duration,
) -> Result<Option<[u8; 6]>> {
    let fail = |e: io::Error| Error::Other(format!("ARP probe for {addr} on {parent}: {e}"));
    let probe = ArpProbe::send_here(parent, addr).map_err(fail)?;
    probe.wait(Instant::now() + wait).map_err(fail)
}
