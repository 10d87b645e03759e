//! DNS names for endpoints (`--name` as a DNS name, `--alias`): RFC 1123 host names.
//! Labels of 1 to 63 bytes of letters, digits and `-` (not at either end of a label),
//! at most 253 bytes in all; compared without regard to ASCII case.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A host name an endpoint answers to in DNS, stored in lowercase.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsName(String);

impl DnsName {
    /// Checks `s` as the value of `field` (e.g. `--alias`); a trailing dot is dropped.
    pub fn parse_for(field: &str, s: &str) -> Result<Self> {
        let name = s.strip_suffix('.').unwrap_or(s);
        if name.is_empty() {
            return Err(Error::invalid(field, s, "must not be empty"));
        }
        if name.len() > 253 {
            return Err(Error::invalid(field, s, "is longer than 253 bytes"));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(Error::invalid(field, s, "has an empty label ('..')"));
            }
            if label.len() > 63 {
                return Err(Error::invalid(
                    field,
                    s,
                    format!("label {label:?} is longer than 63 bytes"),
                ));
            }
            if let Some(bad) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(Error::invalid(
                    field,
                    s,
                    format!("character {bad:?} is not allowed; use letters, digits, '-'"),
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(Error::invalid(
                    field,
                    s,
                    format!("label {label:?} must not start or end with '-'"),
                ));
            }
        }
        Ok(DnsName(name.to_ascii_lowercase()))
    }
    /// Checks `s` as an alias (`--alias`).
    pub fn alias(s: &str) -> Result<Self> {
        Self::parse_for("--alias", s)
    }
    /// The name as text (lowercase, no trailing dot).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks an endpoint name (`--name`, already a valid [`crate::name::EndpointName`])
/// as a DNS name: no empty label, none over 63 bytes, none starting or ending with
/// `-`. `_` stays allowed (Docker's and Compose's container names use it; the
/// responder answers such names as they are).
pub fn check_endpoint_name(s: &str) -> Result<()> {
    for label in s.strip_suffix('.').unwrap_or(s).split('.') {
        if label.is_empty() {
            return Err(Error::invalid("--name", s, "has an empty DNS label ('..')"));
        }
        if label.len() > 63 {
            return Err(Error::invalid(
                "--name",
                s,
                format!("DNS label {label:?} is longer than 63 bytes"),
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(Error::invalid(
                "--name",
                s,
                format!("DNS label {label:?} must not start or end with '-'"),
            ));
        }
    }
    Ok(())
}

/// Checks `--alias` values: each a host name, none given twice.
pub fn parse_aliases(raw: &[String]) -> Result<Vec<DnsName>> {
    let mut out: Vec<DnsName> = Vec::with_capacity(raw.len());
    for a in raw {
        let n = DnsName::alias(a)?;
        if out.contains(&n) {
            return Err(Error::invalid("--alias", a, "is given twice"));
        }
        out.push(n);
    }
    Ok(out)
}

/// The network option naming its DNS servers: `-o dns=IP[,IP…]`, where the daemon's
/// responder forwards its endpoints' other questions.
pub const DNS_OPTION: &str = "dns";

/// The servers of a network's `-o dns=` value, in order.
pub fn network_servers(v: &str) -> Result<Vec<std::net::IpAddr>> {
    v.split(',')
        .map(|a| {
            a.trim()
                .parse()
                .map_err(|_| Error::invalid("-o dns", v, format!("{a:?} is not an IP address")))
        })
        .collect()
}

impl TryFrom<String> for DnsName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse_for("dns name", &s)
    }
}

impl From<DnsName> for String {
    fn from(n: DnsName) -> String {
        n.0
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_host_names_lowercased() {
        assert_eq!(DnsName::alias("Web-1.Lan.").unwrap().as_str(), "web-1.lan");
        assert_eq!(DnsName::alias("db").unwrap().as_str(), "db");
    }

    #[test]
    fn refuses_bad_names_naming_the_field() {
        let long_label = "a".repeat(64);
        let long_name = vec!["a".repeat(63); 5].join(".");
        for bad in [
            "",
            "a..b",
            "under_score",
            "-x",
            "x-",
            "sp ace",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            let e = DnsName::alias(bad).unwrap_err().to_string();
            assert!(e.contains("--alias"), "{bad:?}: {e}");
        }
        assert!(DnsName::alias(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn endpoint_names_are_checked_label_by_label() {
        for ok in ["web", "my_app_1", "web.1", &"a".repeat(63)] {
            assert!(check_endpoint_name(ok).is_ok(), "{ok}");
        }
        for bad in ["a..b", "-a.b", "a.b-", &"a".repeat(64)] {
            let e = check_endpoint_name(bad).unwrap_err().to_string();
            assert!(e.contains("--name"), "{bad}: {e}");
        }
        assert!(parse_aliases(&["a".into(), "A.".into()]).is_err());
        assert_eq!(network_servers("192.0.2.1, 2001:db8::1").unwrap().len(), 2);
        assert!(network_servers("192.0.2.1,x")
            .unwrap_err()
            .to_string()
            .contains("-o dns"));
        assert_eq!(parse_aliases(&["Db".into()]).unwrap()[0].as_str(), "db");
    }
}
