//! The `KEY=VALUE` lists of `network create`: `-o`/`--opt` (only the keys in
//! [`KNOWN_OPTIONS`]) and `--label` (any key). What each option's value means is
//! parsed in `driver.rs`.

use crate::{Error, Result};
use std::collections::BTreeMap;

/// Options `-o` accepts.
pub const KNOWN_OPTIONS: &[&str] = &[
    "parent",
    "macvlan_mode",
    "ipvlan_mode",
    "mtu",
    "host_access",
    "snat_source",
    "bridge_name",
    "bridge",
    "bridge_external",
    "gateway_mode",
    "com.docker.network.bridge.gateway_mode_ipv4",
    "com.docker.network.bridge.gateway_mode_ipv6",
    "dhcp_timeout",
    "arp_probe",
    "dns",
];

/// Splits `KEY=VALUE` (a non-empty key), naming `field` on error.
pub(super) fn split_kv<'a>(field: &str, s: &'a str) -> Result<(&'a str, &'a str)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => Err(Error::invalid(field, s, "expected KEY=VALUE")),
    }
}

/// `-o k=v` as a map; an unknown key is refused (a later one wins over an earlier).
pub(super) fn parse_options(raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut options = BTreeMap::new();
    for o in raw {
        let (k, v) = split_kv("--opt", o)?;
        if !KNOWN_OPTIONS.contains(&k) {
            return Err(Error::invalid(
                "--opt",
                o,
                format!(
                    "unknown option {k:?}; known options: {}",
                    KNOWN_OPTIONS.join(", ")
                ),
            ));
        }
        options.insert(k.to_string(), v.to_string());
    }
    Ok(options)
}

/// `--label k=v` as a map.
pub(super) fn parse_labels(raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for l in raw {
        let (k, v) = split_kv("--label", l)?;
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netreq::tests::field_of;

    #[test]
    fn bad_options_and_labels_name_their_flag() {
        let cases: &[(&str, &str)] = &[
            ("--opt", "mtu"),
            ("--opt", "=1500"),
            ("--opt", "colour=blue"),
            ("--label", "team"),
            ("--label", "=x"),
        ];
        for (field, v) in cases {
            let raw = vec![v.to_string()];
            let got = if *field == "--opt" {
                parse_options(&raw).map(drop)
            } else {
                parse_labels(&raw).map(drop)
            };
            assert_eq!(field_of(got.unwrap_err()), *field, "{v}");
        }
    }

    #[test]
    fn a_later_option_wins_and_labels_take_any_key() {
        let o = parse_options(&["mtu=1400".into(), "mtu=1500".into()]).unwrap();
        assert_eq!(o["mtu"], "1500");
        let l = parse_labels(&["any.key=a=b".into()]).unwrap();
        assert_eq!(l["any.key"], "a=b");
    }
}
