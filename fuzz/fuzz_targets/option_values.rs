//! Every parser of a CLI option value (and of the config file): the first byte picks
//! the parser, the rest is the value. Any answer is fine but a panic.
#![no_main]

use lanyard_core::config::Config;
use lanyard_core::dnsname::DnsName;
use lanyard_core::lease;
use lanyard_core::model::{parse_cidr, parse_ip, MacAddr, PortMapping};
use lanyard_core::name::{IfName, NetworkName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let s = String::from_utf8_lossy(rest);
    match which % 10 {
        0 => {
            // A mapping that parses must describe ports that exist.
            if let Ok(maps) = PortMapping::parse_spec(&s) {
                assert!(!maps.is_empty(), "{s:?} parsed to no mapping");
            }
        }
        1 => {
            let _ = MacAddr::parse_for("--mac-address", &s);
        }
        2 => {
            // A name that parses is a name the kernel takes: 1-15 bytes.
            if let Ok(n) = IfName::parse_user("--ifname", &s) {
                let len = n.to_string().len();
                assert!((1..=15).contains(&len), "{s:?} gave a {len}-byte ifname");
            }
        }
        3 => {
            let _ = NetworkName::parse_for("NAME", &s);
        }
        4 => {
            let _ = parse_ip("--ip", &s);
        }
        5 => {
            let _ = parse_cidr("--subnet", &s);
        }
        6 => {
            // A DNS name that parses has labels of 1-63 bytes and 253 in all.
            if let Ok(n) = DnsName::parse_for("--alias", &s) {
                let t = n.to_string();
                assert!(t.len() <= 253, "{s:?} gave a {}-byte name", t.len());
                assert!(t.split('.').all(|l| (1..=63).contains(&l.len())), "{t:?}");
            }
        }
        7 => {
            let _ = lease::parse_timeout(&s);
        }
        8 => {
            let _ = lease::parse_arp_probe(&s);
        }
        _ => {
            let _ = Config::parse(&s);
        }
    }
});
