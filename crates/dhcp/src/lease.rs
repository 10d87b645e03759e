//! The lease in a server's DHCPACK. The [`Lease`] itself (fields, phases, times)
//! is the model's (`lanyard_core::lease`), since the store keeps it with the
//! endpoint; here it is read from the message.

use dhcproto::v4::{DhcpOption, Message, OptionCode};
use lanyard_core::lease::times;
pub use lanyard_core::lease::{Lease, Phase, INFINITE};

/// The lease in a DHCPACK received at `now`, or none without an address, a
/// server id or a lease time.
pub fn from_ack(m: &Message, now: u64) -> Option<Lease> {
    let o = m.opts();
    let server = match o.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => return None,
    };
    let lease_secs = match o.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => return None,
    };
    let address = m.yiaddr();
    if address.is_unspecified() {
        return None;
    }
    let prefix_len = match o.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => ipnet::ipv4_mask_to_prefix(*mask).ok()?,
        _ => 32,
    };
    let t1 = match o.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(t)) => Some(*t),
        _ => None,
    };
    let t2 = match o.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(t)) => Some(*t),
        _ => None,
    };
    let (t1_secs, t2_secs) = times(lease_secs, t1, t2);
    Some(Lease {
        address,
        prefix_len,
        router: match o.get(OptionCode::Router) {
            Some(DhcpOption::Router(r)) => r.first().copied(),
            _ => None,
        },
        dns: match o.get(OptionCode::DomainNameServer) {
            Some(DhcpOption::DomainNameServer(d)) => d.clone(),
            _ => vec![],
        },
        domain: match o.get(OptionCode::DomainName) {
            Some(DhcpOption::DomainName(d)) => Some(d.clone()),
            _ => None,
        },
        routes: match o.get(OptionCode::ClasslessStaticRoute) {
            Some(DhcpOption::ClasslessStaticRoute(r)) => r.clone(),
            _ => vec![],
        },
        server,
        lease_secs,
        t1_secs,
        t2_secs,
        acquired_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{MessageType, Opcode};
    use std::net::Ipv4Addr;

    fn ack(extra: Vec<DhcpOption>) -> Message {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(1, z, "192.0.2.50".parse().unwrap(), z, z, &[2; 6]);
        m.set_opcode(Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(MessageType::Ack));
        o.insert(DhcpOption::ServerIdentifier("192.0.2.1".parse().unwrap()));
        o.insert(DhcpOption::AddressLeaseTime(3600));
        o.insert(DhcpOption::SubnetMask("255.255.255.0".parse().unwrap()));
        for e in extra {
            o.insert(e);
        }
        m
    }

    #[test]
    fn every_lease_field_is_read() {
        let m = ack(vec![
            DhcpOption::Router(vec!["192.0.2.1".parse().unwrap()]),
            DhcpOption::DomainNameServer(vec!["192.0.2.53".parse().unwrap()]),
            DhcpOption::DomainName("lan.example".into()),
            DhcpOption::Renewal(100),
            DhcpOption::Rebinding(200),
            DhcpOption::ClasslessStaticRoute(vec![
                ("0.0.0.0/0".parse().unwrap(), "192.0.2.254".parse().unwrap()),
                (
                    "198.51.100.0/24".parse().unwrap(),
                    "192.0.2.9".parse().unwrap(),
                ),
            ]),
        ]);
        let l = from_ack(&m, 5000).unwrap();
        assert_eq!(l.net().to_string(), "192.0.2.50/24");
        assert_eq!(l.router, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(l.dns, vec!["192.0.2.53".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(l.domain.as_deref(), Some("lan.example"));
        assert_eq!((l.lease_secs, l.t1_secs, l.t2_secs), (3600, 100, 200));
        assert_eq!(l.acquired_at, 5000);
        assert_eq!(
            l.gateway(),
            Some("192.0.2.254".parse().unwrap()),
            "option 121 wins over option 3 (RFC 3442)"
        );
        assert_eq!(l.static_routes().count(), 1);
        let back: Lease = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn defaults_and_bad_times_are_put_in_order() {
        let l = from_ack(&ack(vec![]), 0).unwrap();
        assert_eq!((l.t1_secs, l.t2_secs), (1800, 3150));
        assert_eq!(l.gateway(), None);
        let l = from_ack(&ack(vec![DhcpOption::Renewal(4000)]), 0).unwrap();
        assert_eq!((l.t1_secs, l.t2_secs), (1800, 3150), "T1 past T2 ignored");
    }

    #[test]
    fn an_ack_without_address_server_or_time_is_no_lease() {
        let mut m = ack(vec![]);
        m.opts_mut().remove(OptionCode::AddressLeaseTime);
        assert_eq!(from_ack(&m, 0), None);
        let mut m = ack(vec![]);
        m.opts_mut().remove(OptionCode::ServerIdentifier);
        assert_eq!(from_ack(&m, 0), None);
        let mut m = ack(vec![]);
        m.set_yiaddr(Ipv4Addr::UNSPECIFIED);
        assert_eq!(from_ack(&m, 0), None);
    }
}
