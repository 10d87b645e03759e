//! Who an endpoint belongs to, in the caller's own words, and the requests of the
//! split endpoint lifecycle (allocate → plug → unplug → release).
//!
//! A front end names its endpoints by its own keys: CNI by (network, container ID,
//! ifname), Docker by libnetwork's (network ID, endpoint ID); the CLI by the
//! endpoint's `--name` (no [`Owner`] needed). The store indexes an owner as one
//! `holdings` row (scope [`Owner::scope`], key [`Owner::key`]), so a look-up by owner
//! is one primary-key read and the attachments of one scope (CNI's GC with its valid
//! set, Docker's endpoints of one network) are one range read: no scan of every
//! endpoint.

use crate::model::MacAddr;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The longest owner part accepted (CNI container IDs are free-form; Docker's are 64
/// hex digits).
const MAX_PART: usize = 256;

/// The caller's key of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Owner {
    /// A CNI attachment, keyed as the spec keys it.
    Cni {
        /// The CNI network name (`name` of the conflist).
        network: String,
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
    },
    /// A Docker endpoint: libnetwork's ids.
    Docker {
        /// Docker's network id.
        network_id: String,
        /// Docker's endpoint id.
        endpoint_id: String,
    },
}

/// The endpoints of one caller's collection: one CNI network, or one Docker network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OwnerScope {
    /// Every CNI attachment of one CNI network.
    Cni {
        /// The CNI network name.
        network: String,
    },
    /// Every endpoint of one Docker network.
    Docker {
        /// Docker's network id.
        network_id: String,
    },
}

fn check_part(field: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(Error::invalid(field, v, "is empty"));
    }
    if v.len() > MAX_PART {
        return Err(Error::invalid(
            field,
            format!("{}…", v.chars().take(32).collect::<String>()),
            format!("is longer than {MAX_PART} bytes"),
        ));
    }
    if v.chars().any(|c| c == '/' || c.is_control()) {
        return Err(Error::invalid(
            field,
            v,
            "may not hold '/' or control characters",
        ));
    }
    Ok(())
}

impl Owner {
    /// Checks every part (non-empty, at most 256 bytes, no '/' or control
    /// characters), naming the caller's field on error.
    pub fn validate(&self) -> Result<()> {
        match self {
            Owner::Cni {
                network,
                container_id,
                ifname,
            } => {
                check_part("network name", network)?;
                check_part("CNI_CONTAINERID", container_id)?;
                check_part("CNI_IFNAME", ifname)
            }
            Owner::Docker {
                network_id,
                endpoint_id,
            } => {
                check_part("NetworkID", network_id)?;
                check_part("EndpointID", endpoint_id)
            }
        }
    }

    /// The collection this owner belongs to.
    pub fn scope(&self) -> OwnerScope {
        match self {
            Owner::Cni { network, .. } => OwnerScope::Cni {
                network: network.clone(),
            },
            Owner::Docker { network_id, .. } => OwnerScope::Docker {
                network_id: network_id.clone(),
            },
        }
    }

    /// The owner's key within its scope: `CONTAINER/IFNAME` or the endpoint id.
    pub fn key(&self) -> String {
        match self {
            Owner::Cni {
                container_id,
                ifname,
                ..
            } => format!("{container_id}/{ifname}"),
            Owner::Docker { endpoint_id, .. } => endpoint_id.clone(),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Cni {
                network,
                container_id,
                ifname,
            } => write!(f, "cni {network} {container_id} {ifname}"),
            Owner::Docker {
                network_id,
                endpoint_id,
            } => write!(f, "docker {network_id} {endpoint_id}"),
        }
    }
}

impl OwnerScope {
    /// The `holdings.scope` of this collection: `owner/cni/NETWORK` or
    /// `owner/docker/NETWORK_ID` (never a network id, never `netns/…` or `port/…`).
    pub fn holding_scope(&self) -> String {
        match self {
            OwnerScope::Cni { network } => format!("owner/cni/{network}"),
            OwnerScope::Docker { network_id } => format!("owner/docker/{network_id}"),
        }
    }
}

/// How a caller names one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointRef {
    /// Its id, a unique id prefix, or its `--name`.
    Key(String),
    /// The caller's own key.
    Owner(Owner),
}

impl std::fmt::Display for EndpointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointRef::Key(k) => f.write_str(k),
            EndpointRef::Owner(o) => write!(f, "{o}"),
        }
    }
}

/// Raw input of `allocate`: what an endpoint holds before it has a namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AllocateRequest {
    /// Network name or id.
    pub network: String,
    /// The caller's key; a repeat with the same owner returns the same endpoint.
    pub owner: Option<Owner>,
    /// Optional unique name.
    pub name: Option<String>,
    /// A wanted IPv4 address (else the next free one).
    pub ip: Option<String>,
    /// A wanted IPv6 address.
    pub ip6: Option<String>,
    /// A wanted MAC (else one chosen now and stored).
    pub mac: Option<String>,
    /// `-p` specs.
    pub publish: Vec<String>,
    /// `--alias` names (DNS).
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// Where `plug` puts an allocated endpoint's link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlugTarget {
    /// Into a namespace, with addresses, routes and sysctls: what `attach` does.
    Netns {
        /// Namespace path (`/run/netns/NAME`, `/proc/PID/ns/net`, a sandbox key).
        netns: PathBuf,
        /// Interface name inside; default the next free `ethN`.
        ifname: Option<String>,
        /// `net.ipv4.ip_unprivileged_port_start` inside.
        unprivileged_port_start: Option<u16>,
    },
    /// In the host namespace under a temporary name, for a caller that moves and
    /// configures the link itself (Docker's Join): the link only, with the stored
    /// MAC and the network's MTU, and the endpoint's firewall elements.
    Host {
        /// The temporary name (at most 15 bytes).
        name: String,
    },
}

/// What `check` found: each difference between the record and the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Differences, each one sentence; empty means the kernel matches the record.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// No difference found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// An endpoint's MAC as stored in the `holdings` key of its network (`mac/NETWORK_ID`).
pub fn mac_key(mac: &MacAddr) -> String {
    mac.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_parts_are_checked_naming_the_callers_field() {
        let bad = [
            (
                Owner::Cni {
                    network: "n".into(),
                    container_id: "".into(),
                    ifname: "eth0".into(),
                },
                "CNI_CONTAINERID",
            ),
            (
                Owner::Cni {
                    network: "n".into(),
                    container_id: "c".into(),
                    ifname: "a/b".into(),
                },
                "CNI_IFNAME",
            ),
            (
                Owner::Cni {
                    network: "x".repeat(300),
                    container_id: "c".into(),
                    ifname: "eth0".into(),
                },
                "network name",
            ),
            (
                Owner::Docker {
                    network_id: "n".into(),
                    endpoint_id: "e\n".into(),
                },
                "EndpointID",
            ),
        ];
        for (o, field) in bad {
            match o.validate() {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field, "{o:?}"),
                other => panic!("{o:?}: expected Invalid, got {other:?}"),
            }
        }
        let good = Owner::Cni {
            network: "lan".into(),
            container_id: "abc_1.2-3".into(),
            ifname: "eth0".into(),
        };
        good.validate().unwrap();
        assert_eq!(good.key(), "abc_1.2-3/eth0");
        assert_eq!(good.scope().holding_scope(), "owner/cni/lan");
    }

    #[test]
    fn owners_round_trip_through_json_tagged_by_kind() {
        let o = Owner::Docker {
            network_id: "n1".into(),
            endpoint_id: "e1".into(),
        };
        let j = serde_json::to_string(&o).unwrap();
        assert_eq!(
            j,
            r#"{"kind":"docker","network_id":"n1","endpoint_id":"e1"}"#
        );
        assert_eq!(serde_json::from_str::<Owner>(&j).unwrap(), o);
    }
}
