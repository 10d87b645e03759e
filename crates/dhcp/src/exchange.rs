//! The client's conversations with a server, over any [`Transport`], each bounded
//! by a [`Timing`]: [`acquire`] (INIT-REBOOT for a known address, else
//! DISCOVER → OFFER → REQUEST → ACK; a NAK restarts discovery), [`extend`] (renew
//! at T1, rebind at T2), [`release`] and [`decline`].

use crate::lease::Lease;
use crate::msg::{Client, Reply};
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// 255.255.255.255 from 0.0.0.0 (no address yet) or from the leased address.
    Broadcast,
    /// The server that gave the lease (renewal, release).
    Server(Ipv4Addr),
}

/// What carries DHCP messages for one interface.
pub trait Transport {
    /// Sends one DHCP message.
    fn send(&mut self, msg: &[u8], to: Dest) -> io::Result<()>;
    /// The next DHCP message that arrives for the client (UDP port 68) before
    /// `deadline`; `None` once the deadline has passed.
    fn recv(&mut self, deadline: Instant) -> io::Result<Option<Vec<u8>>>;
}

/// How long to wait for a server, and how often to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The whole exchange's bound.
    pub timeout: Duration,
    /// How many times each message is sent within it (evenly spaced).
    pub tries: u32,
}

impl Default for Timing {
    /// 4 s, a message a second.
    fn default() -> Timing {
        Timing {
            timeout: Duration::from_secs(4),
            tries: 4,
        }
    }
}

impl Timing {
    fn per_try(&self) -> Duration {
        self.timeout / self.tries.max(1)
    }
}

/// Why an exchange ended without a lease.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// No server answered in time.
    #[error("no DHCP server answered within {}s ({sent} sent)", waited.as_secs_f32())]
    NoAnswer {
        /// The timeout.
        waited: Duration,
        /// What was asked, e.g. "4 DHCPDISCOVER".
        sent: String,
    },
    /// The server refused (and restarting discovery did not help).
    #[error("the DHCP server refused (DHCPNAK){}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    Nak(String),
    /// The socket failed.
    #[error("DHCP socket: {0}")]
    Io(#[from] io::Error),
}

/// How many NAKs in a row [`acquire`] takes before giving up.
const MAX_NAKS: u32 = 3;

/// Gets a lease. With `previous` (a stored lease's address) it first asks for that
/// address again (INIT-REBOOT, one try's wait); a NAK or no answer falls back to
/// discovery. `xid` is the first transaction id (each new transaction adds one);
/// `now` (Unix seconds) stamps the lease.
pub fn acquire(
    t: &mut dyn Transport,
    c: &Client,
    timing: Timing,
    previous: Option<Ipv4Addr>,
    mut xid: u32,
    now: u64,
) -> Result<Lease, DhcpError> {
    let deadline = Instant::now() + timing.timeout;
    if let Some(addr) = previous {
        let until = (Instant::now() + timing.per_try()).min(deadline);
        let msg = c.request_reboot(xid, addr);
        if let Some(Reply::Ack(l)) = ask(
            t,
            c,
            &msg,
            Dest::Broadcast,
            xid,
            until,
            timing,
            now,
            ack_or_nak,
        )? {
            if l.address == addr {
                return Ok(l);
            }
        }
        xid = xid.wrapping_add(1);
    }
    let mut naks = 0;
    let mut last_nak = String::new();
    while naks < MAX_NAKS {
        let discover = c.discover(xid);
        let offer = ask(
            t,
            c,
            &discover,
            Dest::Broadcast,
            xid,
            deadline,
            timing,
            now,
            |r| matches!(r, Reply::Offer { .. }),
        )?;
        let Some(Reply::Offer { address, server }) = offer else {
            return Err(DhcpError::NoAnswer {
                waited: timing.timeout,
                sent: format!("{} DHCPDISCOVER", timing.tries),
            });
        };
        let request = c.request_selected(xid, address, server);
        match ask(
            t,
            c,
            &request,
            Dest::Broadcast,
            xid,
            deadline,
            timing,
            now,
            ack_or_nak,
        )? {
            Some(Reply::Ack(l)) => return Ok(l),
            Some(Reply::Nak { message }) => {
                naks += 1;
                last_nak = message;
                xid = xid.wrapping_add(1);
            }
            _ => {
                return Err(DhcpError::NoAnswer {
                    waited: timing.timeout,
                    sent: format!("DHCPREQUEST for {address} offered by {server}"),
                })
            }
        }
    }
    Err(DhcpError::Nak(last_nak))
}

pub use lanyard_core::lease::Extended;

/// Renews (`rebinding` false: unicast to the lease's server) or rebinds (broadcast
/// to any server) `lease`.
pub fn extend(
    t: &mut dyn Transport,
    c: &Client,
    lease: &Lease,
    rebinding: bool,
    timing: Timing,
    xid: u32,
    now: u64,
) -> Result<Extended, DhcpError> {
    let deadline = Instant::now() + timing.timeout;
    let to = if rebinding {
        Dest::Broadcast
    } else {
        Dest::Server(lease.server)
    };
    let msg = c.request_extend(xid, lease);
    Ok(
        match ask(t, c, &msg, to, xid, deadline, timing, now, ack_or_nak)? {
            Some(Reply::Ack(l)) if l.address == lease.address => Extended::Ack(l),
            Some(Reply::Ack(_)) | Some(Reply::Nak { .. }) => Extended::Nak,
            _ => Extended::NoAnswer,
        },
    )
}

/// Sends DHCPRELEASE for `lease` (no answer comes).
pub fn release(t: &mut dyn Transport, c: &Client, lease: &Lease, xid: u32) -> io::Result<()> {
    t.send(&c.release(xid, lease), Dest::Server(lease.server))
}

/// Sends DHCPDECLINE for `address`, offered by `server` but held by another host.
pub fn decline(
    t: &mut dyn Transport,
    c: &Client,
    address: Ipv4Addr,
    server: Ipv4Addr,
    xid: u32,
) -> io::Result<()> {
    t.send(&c.decline(xid, address, server), Dest::Broadcast)
}

fn ack_or_nak(r: &Reply) -> bool {
    matches!(r, Reply::Ack(_) | Reply::Nak { .. })
}

/// Sends `msg` every `timing.per_try()` until a reply `wanted` arrives or `deadline`.
#[allow(clippy::too_many_arguments)]
fn ask(
    t: &mut dyn Transport,
    c: &Client,
    msg: &[u8],
    to: Dest,
    xid: u32,
    deadline: Instant,
    timing: Timing,
    now: u64,
    wanted: impl Fn(&Reply) -> bool,
) -> Result<Option<Reply>, DhcpError> {
    while Instant::now() < deadline {
        t.send(msg, to)?;
        let until = (Instant::now() + timing.per_try()).min(deadline);
        while let Some(bytes) = t.recv(until)? {
            if let Some(r) = c.reply(&bytes, xid, now) {
                if wanted(&r) {
                    return Ok(Some(r));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
    use dhcproto::{Decodable, Encodable};
    use std::collections::{BTreeMap, VecDeque};

    /// A server in memory: hands out 192.0.2.100 + n by ClientID, NAKs the next
    /// `naks` requests, keeps silent while `silent`, answers INIT-REBOOT for its own
    /// leases only.
    #[derive(Default)]
    struct Server {
        leases: BTreeMap<Vec<u8>, Ipv4Addr>,
        naks: u32,
        silent: bool,
        drop_first: u32,
        queue: VecDeque<Vec<u8>>,
        seen: Vec<(MessageType, Dest)>,
    }

    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    impl Server {
        fn answer(&mut self, m: &Message, kind: MessageType, yiaddr: Ipv4Addr) {
            let z = Ipv4Addr::UNSPECIFIED;
            let mut r = Message::new_with_id(m.xid(), z, yiaddr, z, z, m.chaddr());
            r.set_opcode(Opcode::BootReply);
            let o = r.opts_mut();
            o.insert(DhcpOption::MessageType(kind));
            o.insert(DhcpOption::ServerIdentifier(SERVER));
            o.insert(DhcpOption::AddressLeaseTime(120));
            o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
            o.insert(DhcpOption::Router(vec![SERVER]));
            if let Some(id) = m.opts().get(OptionCode::ClientIdentifier) {
                o.insert(id.clone());
            }
            self.queue.push_back(r.to_vec().unwrap());
        }
    }

    impl Transport for Server {
        fn send(&mut self, msg: &[u8], to: Dest) -> io::Result<()> {
            let m = Message::from_bytes(msg).unwrap();
            let kind = m.opts().msg_type().unwrap();
            self.seen.push((kind, to));
            if self.silent || kind == MessageType::Release {
                return Ok(());
            }
            if self.drop_first > 0 {
                self.drop_first -= 1;
                return Ok(());
            }
            let Some(DhcpOption::ClientIdentifier(id)) =
                m.opts().get(OptionCode::ClientIdentifier).cloned()
            else {
                panic!("no client id")
            };
            let n = self.leases.len() as u8;
            let mine = *self
                .leases
                .entry(id.clone())
                .or_insert(Ipv4Addr::new(192, 0, 2, 100 + n));
            let requested = match m.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
                _ => None,
            };
            match kind {
                MessageType::Discover => self.answer(&m, MessageType::Offer, mine),
                MessageType::Request if self.naks > 0 => {
                    self.naks -= 1;
                    self.answer(&m, MessageType::Nak, Ipv4Addr::UNSPECIFIED)
                }
                MessageType::Request => {
                    let addr = requested.unwrap_or(m.ciaddr());
                    if addr == mine {
                        self.answer(&m, MessageType::Ack, mine)
                    } else {
                        self.answer(&m, MessageType::Nak, Ipv4Addr::UNSPECIFIED)
                    }
                }
                _ => {}
            }
            Ok(())
        }

        fn recv(&mut self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
            if let Some(m) = self.queue.pop_front() {
                return Ok(Some(m));
            }
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            Ok(None)
        }
    }

    fn fast() -> Timing {
        Timing {
            timeout: Duration::from_millis(80),
            tries: 4,
        }
    }

    fn kinds(s: &Server) -> Vec<MessageType> {
        s.seen.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn discover_offer_request_ack() {
        let mut s = Server::default();
        let c = Client::new("ep1", Some("web"), [2, 0, 0, 0, 0, 1]);
        let l = acquire(&mut s, &c, fast(), None, 1, 500).unwrap();
        assert_eq!(l.address, Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(l.gateway(), Some(SERVER));
        assert_eq!(l.acquired_at, 500);
        assert_eq!(kinds(&s), [MessageType::Discover, MessageType::Request]);
    }

    #[test]
    fn two_endpoints_on_one_mac_get_two_leases() {
        let mut s = Server::default();
        let mac = [2, 0, 0, 0, 0, 1];
        let a = acquire(&mut s, &Client::new("a", None, mac), fast(), None, 1, 0).unwrap();
        let b = acquire(&mut s, &Client::new("b", None, mac), fast(), None, 9, 0).unwrap();
        assert_ne!(a.address, b.address);
    }

    #[test]
    fn a_lost_message_is_sent_again() {
        let mut s = Server {
            drop_first: 1,
            ..Server::default()
        };
        let c = Client::new("ep1", None, [2; 6]);
        acquire(&mut s, &c, fast(), None, 1, 0).unwrap();
        assert_eq!(
            kinds(&s),
            [
                MessageType::Discover,
                MessageType::Discover,
                MessageType::Request
            ]
        );
    }

    #[test]
    fn a_nak_restarts_discovery_and_too_many_give_up() {
        let c = Client::new("ep1", None, [2; 6]);
        let mut s = Server {
            naks: 1,
            ..Server::default()
        };
        acquire(&mut s, &c, fast(), None, 1, 0).unwrap();
        assert_eq!(
            kinds(&s),
            [
                MessageType::Discover,
                MessageType::Request,
                MessageType::Discover,
                MessageType::Request
            ]
        );
        let mut s = Server {
            naks: 10,
            ..Server::default()
        };
        assert!(matches!(
            acquire(&mut s, &c, fast(), None, 1, 0),
            Err(DhcpError::Nak(_))
        ));
    }

    #[test]
    fn no_server_fails_after_the_timeout_naming_what_was_sent() {
        let mut s = Server {
            silent: true,
            ..Server::default()
        };
        let c = Client::new("ep1", None, [2; 6]);
        let start = Instant::now();
        let e = acquire(&mut s, &c, fast(), None, 1, 0).unwrap_err();
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(80), "{waited:?}");
        assert!(
            e.to_string()
                .contains("no DHCP server answered within 0.08s (4 DHCPDISCOVER sent)"),
            "{e}"
        );
        assert_eq!(kinds(&s).len(), 4);
    }

    #[test]
    fn init_reboot_asks_for_the_same_address_first() {
        let c = Client::new("ep1", None, [2; 6]);
        let mut s = Server::default();
        let first = acquire(&mut s, &c, fast(), None, 1, 0).unwrap();
        s.seen.clear();
        let again = acquire(&mut s, &c, fast(), Some(first.address), 5, 0).unwrap();
        assert_eq!(again.address, first.address);
        assert_eq!(
            kinds(&s),
            [MessageType::Request],
            "one INIT-REBOOT, no discovery"
        );
        // An address the server does not give this client: NAK, then discovery.
        s.seen.clear();
        let moved = acquire(&mut s, &c, fast(), Some(Ipv4Addr::new(192, 0, 2, 9)), 7, 0).unwrap();
        assert_eq!(moved.address, first.address);
        assert_eq!(
            kinds(&s),
            [
                MessageType::Request,
                MessageType::Discover,
                MessageType::Request
            ]
        );
    }

    #[test]
    fn renew_is_unicast_rebind_broadcast_and_nak_says_start_over() {
        let c = Client::new("ep1", None, [2; 6]);
        let mut s = Server::default();
        let l = acquire(&mut s, &c, fast(), None, 1, 0).unwrap();
        s.seen.clear();
        assert!(
            matches!(extend(&mut s, &c, &l, false, fast(), 3, 60).unwrap(), Extended::Ack(n) if n.acquired_at == 60)
        );
        assert!(matches!(
            extend(&mut s, &c, &l, true, fast(), 4, 60).unwrap(),
            Extended::Ack(_)
        ));
        assert_eq!(s.seen[0].1, Dest::Server(SERVER));
        assert_eq!(s.seen[1].1, Dest::Broadcast);
        s.naks = 1;
        assert_eq!(
            extend(&mut s, &c, &l, false, fast(), 5, 60).unwrap(),
            Extended::Nak
        );
        s.silent = true;
        assert_eq!(
            extend(&mut s, &c, &l, false, fast(), 6, 60).unwrap(),
            Extended::NoAnswer
        );
        release(&mut s, &c, &l, 7).unwrap();
        assert_eq!(
            s.seen.last(),
            Some(&(MessageType::Release, Dest::Server(SERVER)))
        );
    }
}
