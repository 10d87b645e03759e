//! Typed names that refuse bad input at the edge: network names, interface names,
//! endpoint names. Every constructor names the field it checks in its error.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A network name: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 bytes (Docker's rule).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NetworkName(String);

/// A Linux interface name: 1 to 15 bytes, no `/`, no whitespace, no `:`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

/// An endpoint (container) name, same alphabet as a network name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EndpointName(String);

fn check_object_name(field: &str, s: &str) -> Result<()> {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return Err(Error::invalid(field, s, "must not be empty"));
    };
    if s.len() > 64 {
        return Err(Error::invalid(field, s, "is longer than 64 bytes"));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(Error::invalid(
            field,
            s,
            "must start with a letter or digit",
        ));
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c))) {
        return Err(Error::invalid(
            field,
            s,
            format!("character {bad:?} is not allowed; use letters, digits, '_', '.', '-'"),
        ));
    }
    Ok(())
}

impl NetworkName {
    /// Checks `s` as the value of `field`.
    pub fn parse_for(field: &str, s: &str) -> Result<Self> {
        check_object_name(field, s)?;
        Ok(NetworkName(s.to_string()))
    }
    /// Checks `s` as a network name.
    pub fn new(s: &str) -> Result<Self> {
        Self::parse_for("network name", s)
    }
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl EndpointName {
    /// Checks `s` as an endpoint name (`--name`).
    pub fn new(s: &str) -> Result<Self> {
        check_object_name("--name", s)?;
        Ok(EndpointName(s.to_string()))
    }
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl IfName {
    /// Longest name the kernel accepts (IFNAMSIZ - 1).
    pub const MAX: usize = 15;

    /// Checks `s` as the value of `field` (e.g. `--ifname`, `-o parent`).
    pub fn parse_for(field: &str, s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::invalid(field, s, "interface name must not be empty"));
        }
        if s.len() > Self::MAX {
            return Err(Error::invalid(
                field,
                s,
                format!(
                    "interface name is {} bytes; Linux allows at most {}",
                    s.len(),
                    Self::MAX
                ),
            ));
        }
        if s == "." || s == ".." {
            return Err(Error::invalid(field, s, "interface name cannot be . or .."));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(Error::invalid(
                field,
                s,
                format!("interface name must not contain {bad:?}"),
            ));
        }
        Ok(IfName(s.to_string()))
    }
    /// Checks `s` as the value of `field` naming an interface lanyard makes or wires
    /// into (`--ifname`, `-o parent`, `-o bridge_name`): besides [`IfName::parse_for`],
    /// not `lo` (no LAN, and never an endpoint's name), not `all` or `default` (the
    /// kernel's sysctl directories of those names would be set instead), and no `%`
    /// (the kernel takes `eth%d` as a pattern and picks the number itself).
    pub fn parse_user(field: &str, s: &str) -> Result<Self> {
        let name = Self::parse_for(field, s)?;
        let why = match s {
            "lo" => Some("is the loopback interface"),
            "all" | "default" => {
                Some("is reserved: net.*.conf.all and .default are the kernel's sysctl defaults")
            }
            _ if s.contains('%') => {
                Some("must not contain %: the kernel would take it as a pattern")
            }
            _ => None,
        };
        match why {
            Some(why) => Err(Error::invalid(field, s, why)),
            None => Ok(name),
        }
    }
    /// Checks `s` as an interface name.
    pub fn new(s: &str) -> Result<Self> {
        Self::parse_for("interface name", s)
    }
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// For `eth0.10`: the VLAN parent and id, when the name has that shape.
    pub fn vlan(&self) -> Option<(IfName, u16)> {
        let (base, id) = self.0.rsplit_once('.')?;
        let id: u16 = id.parse().ok()?;
        if base.is_empty() || !(1..=4094).contains(&id) {
            return None;
        }
        Some((IfName(base.to_string()), id))
    }
}

macro_rules! string_newtype_impls {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $t {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                $t::new(&s)
            }
        }
        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0
            }
        }
        impl std::str::FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                $t::new(s)
            }
        }
    };
}
string_newtype_impls!(NetworkName);
string_newtype_impls!(IfName);
string_newtype_impls!(EndpointName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_name_over_15_bytes_is_refused_with_its_length() {
        let e = IfName::parse_for("--ifname", "abcdefghijklmnop").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--ifname") && msg.contains("16 bytes"),
            "{msg}"
        );
    }

    #[test]
    fn interface_name_with_slash_or_space_is_refused() {
        assert!(IfName::new("eth/0").is_err());
        assert!(IfName::new("eth 0").is_err());
        assert!(IfName::new("eth0").is_ok());
        assert!(IfName::new("123456789012345").is_ok());
    }

    #[test]
    fn vlan_parent_is_recognised() {
        let n = IfName::new("eth0.10").unwrap();
        assert_eq!(n.vlan(), Some((IfName::new("eth0").unwrap(), 10)));
        assert_eq!(IfName::new("eth0.5000").unwrap().vlan(), None);
        assert_eq!(IfName::new("eth0").unwrap().vlan(), None);
    }

    #[test]
    fn network_names_follow_dockers_alphabet() {
        assert!(NetworkName::new("lan-10.v2_x").is_ok());
        assert!(NetworkName::new("-lan").is_err());
        assert!(NetworkName::new("la n").is_err());
        assert!(NetworkName::new("").is_err());
    }
}
