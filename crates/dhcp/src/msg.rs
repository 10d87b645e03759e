//! DHCPv4 messages through dhcproto: the requests a [`Client`] sends in each state
//! (RFC 2131 table 5) and the answers ([`Reply`]) it accepts.
//!
//! Who asks: every endpoint sends a ClientID (option 61) of its own, in the RFC 4361
//! form (type 255, IAID, DUID-UUID) derived from the endpoint's id, never from the
//! MAC: ipvlan endpoints all share their parent's MAC, and a server keyed by MAC
//! would give them one lease. The endpoint's name goes as hostname (option 12).

use crate::lease::Lease;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use std::net::Ipv4Addr;

/// The parameters every request asks for (option 55).
const WANTED: [OptionCode; 7] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::DomainName,
    OptionCode::ClasslessStaticRoute,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

/// The largest DHCP message we take (option 57): an Ethernet frame's worth.
const MAX_MESSAGE: u16 = 1500;

/// One endpoint as a DHCP client: who it says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Option 61, see [`Client::client_id_for`].
    pub client_id: Vec<u8>,
    /// Option 12, if the endpoint has a name that makes a hostname.
    pub hostname: Option<String>,
    /// `chaddr`: the interface's MAC (the parent's on ipvlan; servers key on
    /// the ClientID when there is one).
    pub mac: [u8; 6],
}

impl Client {
    /// A client for the endpoint with id `endpoint_id` (any stable string: the
    /// engine's 64 hex digits), name `name` and interface MAC `mac`.
    pub fn new(endpoint_id: &str, name: Option<&str>, mac: [u8; 6]) -> Client {
        Client {
            client_id: Client::client_id_for(endpoint_id),
            hostname: name.and_then(hostname),
            mac,
        }
    }

    /// The ClientID of an endpoint: RFC 4361's `0xff`, a 4-byte IAID and a DUID-UUID
    /// (type 4), all hashed from `endpoint_id`: stable for the endpoint, distinct
    /// between endpoints, independent of the MAC.
    pub fn client_id_for(endpoint_id: &str) -> Vec<u8> {
        let h = |seed: u64| {
            endpoint_id
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                })
                .to_be_bytes()
        };
        let mut id = vec![0xff];
        id.extend_from_slice(&h(3)[..4]); // IAID
        id.extend_from_slice(&[0, 4]); // DUID-UUID
        id.extend_from_slice(&h(1));
        id.extend_from_slice(&h(2));
        id
    }

    fn base(&self, xid: u32, kind: MessageType, ciaddr: Ipv4Addr, broadcast: bool) -> Message {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(xid, ciaddr, z, z, z, &self.mac);
        m.set_opcode(Opcode::BootRequest);
        if broadcast {
            // We have no address yet: ask the server to broadcast its answer, which
            // a packet socket on any interface kind (ipvlan too) receives.
            m.set_flags(Flags::default().set_broadcast());
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ClientIdentifier(self.client_id.clone()));
        if kind != MessageType::Release {
            o.insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
            o.insert(DhcpOption::MaxMessageSize(MAX_MESSAGE));
            if let Some(h) = &self.hostname {
                o.insert(DhcpOption::Hostname(h.clone()));
            }
        }
        m
    }

    /// DHCPDISCOVER (state INIT).
    pub fn discover(&self, xid: u32) -> Vec<u8> {
        encode(self.base(xid, MessageType::Discover, Ipv4Addr::UNSPECIFIED, true))
    }

    /// DHCPREQUEST in SELECTING: take `offered` from `server`.
    pub fn request_selected(&self, xid: u32, offered: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
        let mut m = self.base(xid, MessageType::Request, Ipv4Addr::UNSPECIFIED, true);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(offered));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        encode(m)
    }

    /// DHCPREQUEST in INIT-REBOOT: ask for `address` again (after a restart).
    pub fn request_reboot(&self, xid: u32, address: Ipv4Addr) -> Vec<u8> {
        let mut m = self.base(xid, MessageType::Request, Ipv4Addr::UNSPECIFIED, true);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(address));
        encode(m)
    }

    /// DHCPREQUEST in RENEWING (unicast to the server) or REBINDING (broadcast):
    /// `ciaddr` is the leased address, no server id, no requested address.
    pub fn request_extend(&self, xid: u32, lease: &Lease) -> Vec<u8> {
        encode(self.base(xid, MessageType::Request, lease.address, false))
    }

    /// DHCPRELEASE of `lease`.
    pub fn release(&self, xid: u32, lease: &Lease) -> Vec<u8> {
        let mut m = self.base(xid, MessageType::Release, lease.address, false);
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(lease.server));
        encode(m)
    }

    /// DHCPDECLINE of `address`, found in use by another host after `server` gave it.
    pub fn decline(&self, xid: u32, address: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
        let mut m = self.base(xid, MessageType::Decline, Ipv4Addr::UNSPECIFIED, false);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(address));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        encode(m)
    }

    /// The server's answer in `bytes`, if it is one to this client's transaction `xid`:
    /// a BOOTREPLY with that xid, our MAC and our ClientID when the server echoes it
    /// (RFC 6842), of a kind a client acts on. `now` (Unix seconds) stamps a lease.
    pub fn reply(&self, bytes: &[u8], xid: u32, now: u64) -> Option<Reply> {
        let m = Message::from_bytes(bytes).ok()?;
        if m.opcode() != Opcode::BootReply || m.xid() != xid || m.chaddr() != self.mac {
            return None;
        }
        if let Some(DhcpOption::ClientIdentifier(id)) = m.opts().get(OptionCode::ClientIdentifier) {
            if *id != self.client_id {
                return None;
            }
        }
        let server = match m.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
            _ => None,
        };
        match m.opts().msg_type()? {
            MessageType::Offer => Some(Reply::Offer {
                address: m.yiaddr(),
                server: server?,
            }),
            MessageType::Ack => crate::lease::from_ack(&m, now).map(Reply::Ack),
            MessageType::Nak => Some(Reply::Nak {
                message: match m.opts().get(OptionCode::Message) {
                    Some(DhcpOption::Message(s)) => s.clone(),
                    _ => String::new(),
                },
            }),
            _ => None,
        }
    }
}

/// A server's answer a client acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// DHCPOFFER of `address` by `server`.
    Offer {
        /// `yiaddr`.
        address: Ipv4Addr,
        /// Option 54.
        server: Ipv4Addr,
    },
    /// DHCPACK: the lease.
    Ack(Lease),
    /// DHCPNAK, with the server's message (option 56) if any.
    Nak {
        /// Option 56, or empty.
        message: String,
    },
}

fn encode(m: Message) -> Vec<u8> {
    // Encoding our own well-formed message into a Vec cannot fail.
    m.to_vec().unwrap_or_default()
}

/// `name` as a hostname (option 12): letters, digits and hyphens, at most 63 bytes,
/// other characters as hyphens; none if nothing is left.
fn hostname(name: &str) -> Option<String> {
    let h: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let h = h.trim_matches('-').to_string();
    (!h.is_empty()).then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn client() -> Client {
        Client::new("ab12", Some("web_1"), MAC)
    }

    fn decode(b: &[u8]) -> Message {
        Message::from_bytes(b).unwrap()
    }

    #[test]
    fn client_id_is_rfc4361_and_from_the_endpoint_not_the_mac() {
        let a = Client::new("ep-a", None, MAC);
        let b = Client::new("ep-b", None, MAC);
        assert_eq!(a.client_id[0], 0xff);
        assert_eq!(&a.client_id[5..7], &[0, 4]);
        assert_eq!(a.client_id.len(), 1 + 4 + 2 + 16);
        assert_ne!(a.client_id, b.client_id, "one MAC, two endpoints, two ids");
        assert_eq!(
            a.client_id,
            Client::new("ep-a", None, [2, 9, 9, 9, 9, 9]).client_id
        );
    }

    #[test]
    fn hostname_is_sanitised() {
        assert_eq!(hostname("web_1").as_deref(), Some("web-1"));
        assert_eq!(hostname("__"), None);
        assert_eq!(hostname(&"x".repeat(80)).unwrap().len(), 63);
    }

    #[test]
    fn discover_carries_id_hostname_params_and_broadcast_flag() {
        let m = decode(&client().discover(7));
        assert_eq!(m.xid(), 7);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        assert!(m.flags().broadcast());
        assert_eq!(m.chaddr(), MAC);
        assert_eq!(
            m.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("web-1".into()))
        );
        assert_eq!(
            m.opts().get(OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(client().client_id))
        );
        match m.opts().get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(l)) => {
                assert!(l.contains(&OptionCode::ClasslessStaticRoute))
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn requests_in_each_state_follow_rfc2131_table_5() {
        let c = client();
        let a: Ipv4Addr = "192.0.2.50".parse().unwrap();
        let s: Ipv4Addr = "192.0.2.1".parse().unwrap();
        let sel = decode(&c.request_selected(1, a, s));
        assert_eq!(sel.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(sel.opts().get(OptionCode::RequestedIpAddress).is_some());
        assert!(sel.opts().get(OptionCode::ServerIdentifier).is_some());
        let reb = decode(&c.request_reboot(2, a));
        assert!(reb.opts().get(OptionCode::RequestedIpAddress).is_some());
        assert!(reb.opts().get(OptionCode::ServerIdentifier).is_none());
        let lease = Lease::test(a, s, 120);
        let ext = decode(&c.request_extend(3, &lease));
        assert_eq!(ext.ciaddr(), a);
        assert!(ext.opts().get(OptionCode::RequestedIpAddress).is_none());
        assert!(ext.opts().get(OptionCode::ServerIdentifier).is_none());
        let rel = decode(&c.release(4, &lease));
        assert_eq!(rel.opts().msg_type(), Some(MessageType::Release));
        assert_eq!(rel.ciaddr(), a);
        assert!(rel.opts().get(OptionCode::ServerIdentifier).is_some());
        let dec = decode(&c.decline(5, a, s));
        assert_eq!(dec.opts().msg_type(), Some(MessageType::Decline));
    }

    fn answer(kind: MessageType, xid: u32, chaddr: &[u8], id: Option<Vec<u8>>) -> Vec<u8> {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(xid, z, "192.0.2.50".parse().unwrap(), z, z, chaddr);
        m.set_opcode(Opcode::BootReply);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier("192.0.2.1".parse().unwrap()));
        m.opts_mut().insert(DhcpOption::AddressLeaseTime(120));
        m.opts_mut()
            .insert(DhcpOption::SubnetMask("255.255.255.0".parse().unwrap()));
        if let Some(id) = id {
            m.opts_mut().insert(DhcpOption::ClientIdentifier(id));
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn replies_of_other_transactions_or_clients_are_ignored() {
        let c = client();
        let offer = answer(MessageType::Offer, 9, &MAC, None);
        assert!(matches!(c.reply(&offer, 9, 0), Some(Reply::Offer { .. })));
        assert_eq!(c.reply(&offer, 8, 0), None, "other xid");
        let other_mac = answer(MessageType::Offer, 9, &[2, 0, 0, 0, 0, 2], None);
        assert_eq!(c.reply(&other_mac, 9, 0), None, "other chaddr");
        let other_id = answer(MessageType::Offer, 9, &MAC, Some(vec![1, 2, 3]));
        assert_eq!(
            c.reply(&other_id, 9, 0),
            None,
            "another endpoint's id (ipvlan)"
        );
        let ours = answer(MessageType::Ack, 9, &MAC, Some(c.client_id.clone()));
        assert!(matches!(c.reply(&ours, 9, 0), Some(Reply::Ack(_))));
        assert_eq!(c.reply(&c.discover(9), 9, 0), None, "a request is no reply");
        assert_eq!(c.reply(b"garbage", 9, 0), None);
        let nak = answer(MessageType::Nak, 9, &MAC, None);
        assert!(matches!(c.reply(&nak, 9, 0), Some(Reply::Nak { .. })));
    }
}
