//! The packets below DHCP that a packet socket (`AF_PACKET`, `SOCK_DGRAM`: the
//! kernel adds and strips the Ethernet header) carries: IPv4+UDP around a DHCP
//! message, sent before the interface has an address, and ARP for the
//! duplicate-address probe (RFC 5227).

use std::net::Ipv4Addr;

/// The DHCP client's UDP port.
pub const CLIENT_PORT: u16 = 68;
/// The DHCP server's UDP port.
pub const SERVER_PORT: u16 = 67;

/// One UDP datagram in an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp4<'a> {
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// UDP source port.
    pub sport: u16,
    /// UDP destination port.
    pub dport: u16,
    /// The UDP payload.
    pub payload: &'a [u8],
}

impl Udp4<'_> {
    /// The IPv4 packet (TTL 64, checksums filled in).
    pub fn encode(&self) -> Vec<u8> {
        let udp_len = 8 + self.payload.len();
        let total = 20 + udp_len;
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0x10]); // v4, IHL 5; DSCP low delay as dhclient
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // id, DF, TTL, UDP, csum
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        let c = checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&self.sport.to_be_bytes());
        p.extend_from_slice(&self.dport.to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(self.payload);
        let mut pseudo = 0u32;
        for w in self
            .src
            .octets()
            .chunks(2)
            .chain(self.dst.octets().chunks(2))
        {
            pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        pseudo += 17 + udp_len as u32;
        let c = match checksum(&p[20..], pseudo) {
            0 => 0xffff,
            c => c,
        };
        p[26..28].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The UDP datagram in IPv4 packet `p`, if it is one (unfragmented, lengths
    /// consistent; the header checksum checked, the UDP one left to the sender's NIC
    /// offload, as every packet-socket DHCP client does).
    pub fn parse(p: &[u8]) -> Option<Udp4<'_>> {
        let ihl = usize::from(*p.first()? & 0x0f) * 4;
        if p[0] >> 4 != 4 || ihl < 20 || p.len() < ihl + 8 || p[9] != 17 {
            return None;
        }
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        let frag = u16::from_be_bytes([p[6], p[7]]);
        if total > p.len() || total < ihl + 8 || frag & 0x3fff != 0 || checksum(&p[..ihl], 0) != 0 {
            return None;
        }
        let u = &p[ihl..total];
        let len = usize::from(u16::from_be_bytes([u[4], u[5]]));
        if len < 8 || len > u.len() {
            return None;
        }
        Some(Udp4 {
            src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
            dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
            sport: u16::from_be_bytes([u[0], u[1]]),
            dport: u16::from_be_bytes([u[2], u[3]]),
            payload: &u[8..len],
        })
    }
}

/// The Internet checksum of `data`, starting from the partial sum `sum`.
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for w in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// 1 request, 2 reply.
    pub op: u16,
    /// Sender hardware address.
    pub sender_mac: [u8; 6],
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: [u8; 6],
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl Arp {
    /// An RFC 5227 probe from `mac` for `target`: a request with sender address
    /// 0.0.0.0, so no host's cache learns anything from it.
    pub fn probe(mac: [u8; 6], target: Ipv4Addr) -> Arp {
        Arp {
            op: 1,
            sender_mac: mac,
            sender_ip: Ipv4Addr::UNSPECIFIED,
            target_mac: [0; 6],
            target_ip: target,
        }
    }

    /// The 28 bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = vec![0, 1, 8, 0, 6, 4];
        p.extend_from_slice(&self.op.to_be_bytes());
        p.extend_from_slice(&self.sender_mac);
        p.extend_from_slice(&self.sender_ip.octets());
        p.extend_from_slice(&self.target_mac);
        p.extend_from_slice(&self.target_ip.octets());
        p
    }

    /// The ARP packet in `p`, if it is an Ethernet/IPv4 one.
    pub fn parse(p: &[u8]) -> Option<Arp> {
        if p.len() < 28 || p[..6] != [0, 1, 8, 0, 6, 4] {
            return None;
        }
        let mac = |i: usize| -> [u8; 6] { p[i..i + 6].try_into().unwrap_or([0; 6]) };
        let ip = |i: usize| Ipv4Addr::new(p[i], p[i + 1], p[i + 2], p[i + 3]);
        Some(Arp {
            op: u16::from_be_bytes([p[6], p[7]]),
            sender_mac: mac(8),
            sender_ip: ip(14),
            target_mac: mac(18),
            target_ip: ip(24),
        })
    }

    /// The MAC of the host this packet shows holding `probed` (RFC 5227 §2.1.1:
    /// any ARP packet whose sender address is `probed`, or another host's probe
    /// for it), unless it is `own` (our own probe, looped back).
    pub fn holder_of(&self, probed: Ipv4Addr, own: [u8; 6]) -> Option<[u8; 6]> {
        if self.sender_mac == own {
            return None;
        }
        let holds = self.sender_ip == probed
            || (self.op == 1 && self.sender_ip.is_unspecified() && self.target_ip == probed);
        holds.then_some(self.sender_mac)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(m: [u8; 6]) -> String {
    let s: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
    s.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_round_trips_with_valid_checksums() {
        let u = Udp4 {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::BROADCAST,
            sport: CLIENT_PORT,
            dport: SERVER_PORT,
            payload: b"hello, odd length",
        };
        let p = u.encode();
        assert_eq!(Udp4::parse(&p), Some(u));
        assert_eq!(checksum(&p[..20], 0), 0, "IPv4 header checksum");
        // UDP checksum over the pseudo-header verifies to zero too.
        let mut pseudo = 0u32;
        for w in p[12..20].chunks(2) {
            pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        pseudo += 17 + (p.len() as u32 - 20);
        assert_eq!(checksum(&p[20..], pseudo), 0, "UDP checksum");
    }

    #[test]
    fn non_udp_fragments_and_short_packets_are_refused() {
        let u = Udp4 {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::BROADCAST,
            sport: 67,
            dport: 68,
            payload: b"x",
        };
        let good = u.encode();
        assert!(Udp4::parse(&good[..25]).is_none());
        let mut tcp = good.clone();
        tcp[9] = 6;
        assert!(Udp4::parse(&tcp).is_none());
        let mut frag = good.clone();
        frag[6] = 0x20; // more fragments
        assert!(Udp4::parse(&frag).is_none());
        assert!(Udp4::parse(&[]).is_none());
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 10]); // Ethernet padding after the IP packet
        assert_eq!(Udp4::parse(&padded).unwrap().payload, b"x");
    }

    #[test]
    fn arp_probe_and_who_holds_an_address() {
        let me = [2, 0, 0, 0, 0, 1];
        let router = [2, 0, 0, 0, 0, 0xfe];
        let a = Ipv4Addr::new(192, 0, 2, 77);
        let probe = Arp::probe(me, a);
        assert_eq!(Arp::parse(&probe.encode()), Some(probe));
        assert_eq!(probe.holder_of(a, me), None, "our own probe");
        let reply = Arp {
            op: 2,
            sender_mac: router,
            sender_ip: a,
            target_mac: me,
            target_ip: Ipv4Addr::UNSPECIFIED,
        };
        assert_eq!(reply.holder_of(a, me), Some(router));
        assert_eq!(reply.holder_of(Ipv4Addr::new(192, 0, 2, 78), me), None);
        let other_probe = Arp::probe(router, a);
        assert_eq!(other_probe.holder_of(a, me), Some(router));
        assert!(Arp::parse(&[0; 27]).is_none());
        assert_eq!(mac_string(router), "02:00:00:00:00:fe");
    }
}
