//! IPAM as a sequence of operations on one small subnet (an IPv4 /24 to /30 or an
//! IPv6 /120 to /126, with an ip-range, a gateway and aux addresses picked by the
//! input): allocate for an owner, reserve an address (`--ip`), release an owner.
//! After every step: no address is held twice, none is reserved (network, broadcast,
//! gateway, aux) or outside the ip-range, and an allocation fails only when no free
//! address is left.
#![no_main]

use lanyard_core::ipam::{allocate_excluding, reserve, reserved_reason};
use lanyard_core::model::SubnetConfig;
use lanyard_core::store::mem::MemStore;
use lanyard_core::store::Store;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const NET: &str = "net0";

/// The `i`-th address of the subnet at `base`.
fn nth(v6: bool, i: u8) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = data.iter().copied();
    let mut next = || b.next();
    let (Some(shape), Some(range), Some(gw), Some(aux)) = (next(), next(), next(), next()) else {
        return;
    };
    let v6 = shape & 0x80 != 0;
    let len: u8 = if v6 {
        120 + (shape % 7)
    } else {
        24 + (shape % 7)
    };
    let subnet = format!("{}/{len}", nth(v6, 0))
        .parse()
        .unwrap_or_else(|_| unreachable!());
    let host_bits = if v6 { 128 - len } else { 32 - len };
    let size = 1u16 << host_bits;
    let in_subnet = |x: u8| (u16::from(x) % size) as u8;
    let ip_range = (range & 1 == 1).then(|| {
        let rlen = len + (range >> 1) % (host_bits + 1);
        format!("{}/{rlen}", nth(v6, in_subnet(range)))
            .parse::<ipnet::IpNet>()
            .map(|n| n.trunc())
            .unwrap_or_else(|_| unreachable!())
    });
    let sc = SubnetConfig {
        subnet,
        gateway: (gw & 1 == 1).then(|| nth(v6, in_subnet(gw >> 1))),
        ip_range,
        aux_addresses: (0..aux % 4)
            .map(|k| {
                (
                    format!("aux{k}"),
                    nth(v6, in_subnet(aux.wrapping_mul(k + 3))),
                )
            })
            .collect(),
    };
    let store = MemStore::default();
    // Who holds what, as this test believes it.
    let mut held: BTreeMap<IpAddr, String> = BTreeMap::new();
    while let (Some(op), Some(arg)) = (next(), next()) {
        let owner = format!("ep{}", arg % 8);
        match op % 3 {
            0 => {
                let r = store.write(&mut |tx| allocate_excluding(tx, NET, &sc, &owner, &[]));
                match r {
                    Ok(a) => {
                        assert!(reserved_reason(&sc, a).is_none(), "{a} handed out");
                        if let Some(r) = sc.ip_range {
                            assert!(r.contains(&a), "{a} outside ip-range {r}");
                        }
                        assert!(held.insert(a, owner).is_none(), "{a} handed out twice");
                    }
                    Err(_) => {
                        let free = (0..size)
                            .map(|i| nth(v6, i as u8))
                            .filter(|a| reserved_reason(&sc, *a).is_none())
                            .filter(|a| sc.ip_range.is_none_or(|r| r.contains(a)))
                            .any(|a| !held.contains_key(&a));
                        assert!(!free, "allocation failed with a free address left");
                    }
                }
            }
            1 => {
                let a = nth(v6, in_subnet(arg));
                let r = store.write(&mut |tx| reserve(tx, NET, &sc, "--ip", a, &owner));
                match r {
                    Ok(()) => {
                        assert!(reserved_reason(&sc, a).is_none(), "{a} reserved");
                        assert!(held.insert(a, owner).is_none(), "{a} reserved twice");
                    }
                    Err(_) => assert!(
                        held.contains_key(&a) || reserved_reason(&sc, a).is_some(),
                        "--ip {a} refused though free"
                    ),
                }
            }
            _ => {
                let r = store.write(&mut |tx| tx.release_addresses(&owner));
                assert!(r.is_ok(), "release failed");
                held.retain(|_, o| *o != owner);
            }
        }
    }
});
