//! Stable, bounded fuzzing of the option-value parsers: every committed seed, then a
//! fixed number of deterministic mutations of them (byte flips, inserts, deletes,
//! splices, interesting characters), through `PortMapping::parse_spec`,
//! `MacAddr::parse_for`, `IfName::parse_user` and `NetworkName::parse_for`. Passes when
//! no input panics (an error is a fine answer). No timing; no new dependency.

use lanyard_core::model::{MacAddr, PortMapping};
use lanyard_core::name::{IfName, NetworkName};

/// Mutations per seed.
const ROUNDS: usize = 3000;

/// Seeds: valid values and near misses.
const SEEDS: &[&str] = &[
    "8080:80",
    "127.0.0.1:8080:80/tcp",
    "20000-20008:30000-30008/udp",
    "[2001:db8::1]:53:53/udp",
    "65535:1",
    "0:0",
    "1-65535:1-65535",
    "aa:bb:cc:dd:ee:ff",
    "02-00-00-00-00-01",
    "00:00:00:00:00:00",
    "eth0",
    "lyx-0123456789a",
    "lo",
    "eth%d",
    "all",
    "default",
    "a/b",
    "lan",
    "my-net_1.2",
    "",
    ":",
    "::::",
    "-",
    "/tcp",
    "1:2:3:4",
    "\u{0}",
    "é",
    "99999999999999999999:1",
];

/// Characters that tend to reach edge cases.
const SPICE: &[u8] = b":-/[]%.0123456789aAfFzZ \t\n\0\xff";

/// splitmix64: a small deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `b`.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(b.len() + 1);
                b.insert(i, SPICE[rng.below(SPICE.len())]);
            }
            2 if !b.is_empty() => {
                b.remove(rng.below(b.len()));
            }
            3 => {
                let other = SEEDS[rng.below(SEEDS.len())].as_bytes();
                let i = rng.below(b.len() + 1);
                b.splice(i..i, other.iter().copied());
            }
            _ => {
                let i = rng.below(b.len() + 1);
                let n = rng.below(6);
                b.splice(i..i, std::iter::repeat_n(b'9', n));
            }
        }
    }
}

/// Runs `f` on every seed and `ROUNDS` mutations of each.
fn fuzz(seed: u64, f: impl Fn(&str)) {
    let mut rng = Rng(seed);
    for s in SEEDS {
        f(s);
        let mut b = s.as_bytes().to_vec();
        for _ in 0..ROUNDS {
            mutate(&mut rng, &mut b);
            if b.len() > 200 {
                b = s.as_bytes().to_vec();
            }
            f(&String::from_utf8_lossy(&b));
        }
    }
}

#[test]
fn fuzz_port_mapping_parse_spec() {
    fuzz(1, |s| {
        let _ = PortMapping::parse_spec(s);
    });
}

#[test]
fn fuzz_mac_parse_for() {
    fuzz(2, |s| {
        let _ = MacAddr::parse_for("--mac-address", s);
    });
}

#[test]
fn fuzz_ifname_parse_user() {
    fuzz(3, |s| {
        let _ = IfName::parse_user("--ifname", s);
    });
}

#[test]
fn fuzz_network_name_parse_for() {
    fuzz(4, |s| {
        let _ = NetworkName::parse_for("NAME", s);
    });
}
