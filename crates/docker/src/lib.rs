//! Docker's remote plugin protocol, as lanyard serves it: dockerd's NetworkDriver and
//! IpamDriver calls parsed into typed requests ([`Call::parse`]), the calls that need
//! no state answered at once ([`Call::fixed`]), and the translations from Docker's
//! words into lanyard's ([`translate`]). Pure: no socket, no store, no kernel; the
//! daemon's handler (crate `lanyard`, `docker::handle`) does the engine calls.
//!
//! Field names follow moby libnetwork's `drivers/remote/api` and `ipams/remote/api`
//! (read for facts, not copied). Every refusal is an [`Reply::err`]: `{"Err": "…"}`,
//! which `docker` prints as it is; a refusal changes nothing.

pub mod translate;
pub mod wire;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// The media type dockerd expects in answers.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// The IPAM address spaces lanyard reports (it has one of each; names are Docker's).
pub const LOCAL_SPACE: &str = "LanyardLocal";
/// See [`LOCAL_SPACE`].
pub const GLOBAL_SPACE: &str = "LanyardGlobal";

/// Largest request body accepted (dockerd's are a few KiB).
pub const MAX_BODY: usize = 1 << 20;

/// An answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// 200 for success, 400 for a refusal, 404 for an unknown path.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

impl Reply {
    /// A success with `body`.
    pub fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }

    /// A success with an empty object (what most calls answer).
    pub fn empty() -> Reply {
        Reply::ok(json!({}))
    }

    /// A refusal dockerd shows the user as it is.
    pub fn err(status: u16, msg: impl Into<String>) -> Reply {
        Reply {
            status,
            body: json!({ "Err": msg.into() }),
        }
    }
}

/// One request dockerd can send, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `Plugin.Activate`.
    Activate,
    /// `NetworkDriver.GetCapabilities`.
    NetworkCapabilities,
    /// `IpamDriver.GetCapabilities`.
    IpamCapabilities,
    /// `IpamDriver.GetDefaultAddressSpaces`.
    AddressSpaces,
    /// `NetworkDriver.DiscoverNew` / `DiscoverDelete` (nothing to learn: local scope).
    Discover,
    /// `NetworkDriver.AllocateNetwork` / `FreeNetwork` (swarm only; nothing to do).
    SwarmNetwork,
    /// `NetworkDriver.CreateNetwork`.
    CreateNetwork(wire::CreateNetwork),
    /// `NetworkDriver.DeleteNetwork`.
    DeleteNetwork(wire::NetworkRef),
    /// `NetworkDriver.CreateEndpoint`.
    CreateEndpoint(wire::CreateEndpoint),
    /// `NetworkDriver.EndpointOperInfo`.
    EndpointOperInfo(wire::EndpointRef),
    /// `NetworkDriver.DeleteEndpoint`.
    DeleteEndpoint(wire::EndpointRef),
    /// `NetworkDriver.Join`.
    Join(wire::Join),
    /// `NetworkDriver.Leave`.
    Leave(wire::EndpointRef),
    /// `NetworkDriver.ProgramExternalConnectivity`.
    ProgramExternalConnectivity(wire::ExternalConnectivity),
    /// `NetworkDriver.RevokeExternalConnectivity`.
    RevokeExternalConnectivity(wire::EndpointRef),
    /// `IpamDriver.RequestPool`.
    RequestPool(wire::RequestPool),
    /// `IpamDriver.ReleasePool`.
    ReleasePool(wire::ReleasePool),
    /// `IpamDriver.RequestAddress`.
    RequestAddress(wire::RequestAddress),
    /// `IpamDriver.ReleaseAddress`.
    ReleaseAddress(wire::ReleaseAddress),
}

fn body<T: DeserializeOwned>(path: &str, raw: &[u8]) -> Result<T, Reply> {
    // dockerd sends `null` for some calls without arguments; treat it as `{}`.
    let raw: &[u8] = if raw.is_empty() || raw == b"null" {
        b"{}"
    } else {
        raw
    };
    serde_json::from_slice(raw).map_err(|e| {
        Reply::err(
            400,
            format!(
                "lanyard: {}: bad request: {e}",
                path.trim_start_matches('/')
            ),
        )
    })
}

impl Call {
    /// Parses the request for `path` with `raw` (the JSON body, possibly empty). An
    /// unknown path or a body that does not fit the call is the refusal to send.
    pub fn parse(path: &str, raw: &[u8]) -> Result<Call, Reply> {
        if !raw.is_empty() && serde_json::from_slice::<Value>(raw).is_err() {
            return Err(Reply::err(
                400,
                format!("lanyard: {path}: the request body is not JSON"),
            ));
        }
        Ok(match path {
            "/Plugin.Activate" => Call::Activate,
            "/NetworkDriver.GetCapabilities" => Call::NetworkCapabilities,
            "/IpamDriver.GetCapabilities" => Call::IpamCapabilities,
            "/IpamDriver.GetDefaultAddressSpaces" => Call::AddressSpaces,
            "/NetworkDriver.DiscoverNew" | "/NetworkDriver.DiscoverDelete" => Call::Discover,
            "/NetworkDriver.AllocateNetwork" | "/NetworkDriver.FreeNetwork" => Call::SwarmNetwork,
            "/NetworkDriver.CreateNetwork" => Call::CreateNetwork(body(path, raw)?),
            "/NetworkDriver.DeleteNetwork" => Call::DeleteNetwork(body(path, raw)?),
            "/NetworkDriver.CreateEndpoint" => Call::CreateEndpoint(body(path, raw)?),
            "/NetworkDriver.EndpointOperInfo" => Call::EndpointOperInfo(body(path, raw)?),
            "/NetworkDriver.DeleteEndpoint" => Call::DeleteEndpoint(body(path, raw)?),
            "/NetworkDriver.Join" => Call::Join(body(path, raw)?),
            "/NetworkDriver.Leave" => Call::Leave(body(path, raw)?),
            "/NetworkDriver.ProgramExternalConnectivity" => {
                Call::ProgramExternalConnectivity(body(path, raw)?)
            }
            "/NetworkDriver.RevokeExternalConnectivity" => {
                Call::RevokeExternalConnectivity(body(path, raw)?)
            }
            "/IpamDriver.RequestPool" => Call::RequestPool(body(path, raw)?),
            "/IpamDriver.ReleasePool" => Call::ReleasePool(body(path, raw)?),
            "/IpamDriver.RequestAddress" => Call::RequestAddress(body(path, raw)?),
            "/IpamDriver.ReleaseAddress" => Call::ReleaseAddress(body(path, raw)?),
            p if p.starts_with("/NetworkDriver.") || p.starts_with("/IpamDriver.") => {
                return Err(Reply::err(
                    400,
                    format!(
                        "lanyard: {} is not a call lanyard serves",
                        p.trim_start_matches('/')
                    ),
                ))
            }
            p => {
                return Err(Reply::err(
                    404,
                    format!("lanyard: no such plugin call: {p}"),
                ))
            }
        })
    }

    /// The answer of a call that needs no state; `None` for the others.
    pub fn fixed(&self) -> Option<Reply> {
        Some(match self {
            Call::Activate => Reply::ok(json!({ "Implements": ["NetworkDriver", "IpamDriver"] })),
            Call::NetworkCapabilities => Reply::ok(json!({
                "Scope": "local",
                "ConnectivityScope": "local",
            })),
            Call::IpamCapabilities => Reply::ok(json!({ "RequiresMACAddress": false })),
            Call::AddressSpaces => Reply::ok(json!({
                "LocalDefaultAddressSpace": LOCAL_SPACE,
                "GlobalDefaultAddressSpace": GLOBAL_SPACE,
            })),
            Call::Discover | Call::SwarmNetwork | Call::ReleasePool(_) => Reply::empty(),
            _ => return None,
        })
    }

    /// The call's name as dockerd's error messages show it (`NetworkDriver.Join`).
    pub fn name(&self) -> &'static str {
        match self {
            Call::Activate => "Plugin.Activate",
            Call::NetworkCapabilities => "NetworkDriver.GetCapabilities",
            Call::IpamCapabilities => "IpamDriver.GetCapabilities",
            Call::AddressSpaces => "IpamDriver.GetDefaultAddressSpaces",
            Call::Discover => "NetworkDriver.Discover",
            Call::SwarmNetwork => "NetworkDriver.AllocateNetwork",
            Call::CreateNetwork(_) => "NetworkDriver.CreateNetwork",
            Call::DeleteNetwork(_) => "NetworkDriver.DeleteNetwork",
            Call::CreateEndpoint(_) => "NetworkDriver.CreateEndpoint",
            Call::EndpointOperInfo(_) => "NetworkDriver.EndpointOperInfo",
            Call::DeleteEndpoint(_) => "NetworkDriver.DeleteEndpoint",
            Call::Join(_) => "NetworkDriver.Join",
            Call::Leave(_) => "NetworkDriver.Leave",
            Call::ProgramExternalConnectivity(_) => "NetworkDriver.ProgramExternalConnectivity",
            Call::RevokeExternalConnectivity(_) => "NetworkDriver.RevokeExternalConnectivity",
            Call::RequestPool(_) => "IpamDriver.RequestPool",
            Call::ReleasePool(_) => "IpamDriver.ReleasePool",
            Call::RequestAddress(_) => "IpamDriver.RequestAddress",
            Call::ReleaseAddress(_) => "IpamDriver.ReleaseAddress",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(path: &str, raw: &[u8]) -> Reply {
        Call::parse(path, raw).unwrap().fixed().unwrap()
    }

    #[test]
    fn activate_names_both_drivers() {
        assert_eq!(
            fixed("/Plugin.Activate", b"").body,
            json!({ "Implements": ["NetworkDriver", "IpamDriver"] })
        );
    }

    #[test]
    fn network_driver_is_local_scope() {
        let r = fixed("/NetworkDriver.GetCapabilities", b"{}");
        assert_eq!(r.body["Scope"], "local");
        assert_eq!(r.body["ConnectivityScope"], "local");
    }

    #[test]
    fn ipam_reports_address_spaces() {
        let r = fixed("/IpamDriver.GetDefaultAddressSpaces", b"null");
        assert_eq!(r.body["LocalDefaultAddressSpace"], LOCAL_SPACE);
        assert_eq!(r.body["GlobalDefaultAddressSpace"], GLOBAL_SPACE);
    }

    #[test]
    fn discovery_is_a_no_op() {
        let r = fixed("/NetworkDriver.DiscoverNew", br#"{"DiscoveryType":1}"#);
        assert_eq!(r, Reply::empty());
    }

    #[test]
    fn calls_with_state_parse_into_their_request() {
        let c = Call::parse(
            "/NetworkDriver.Join",
            br#"{"NetworkID":"n","EndpointID":"e","SandboxKey":"/var/run/docker/netns/x","Options":null}"#,
        )
        .unwrap();
        match &c {
            Call::Join(j) => {
                assert_eq!(j.sandbox_key, "/var/run/docker/netns/x");
                assert_eq!(j.endpoint.endpoint_id, "e");
            }
            other => panic!("{other:?}"),
        }
        assert!(c.fixed().is_none());
        assert_eq!(c.name(), "NetworkDriver.Join");
    }

    #[test]
    fn refusals_are_readable_err_objects() {
        let r = Call::parse("/NetworkDriver.Join", br#"{"NetworkID":5}"#).unwrap_err();
        assert_eq!(r.status, 400);
        let msg = r.body["Err"].as_str().unwrap();
        assert!(msg.contains("NetworkDriver.Join: bad request"), "{msg}");
        let r = Call::parse("/NetworkDriver.Frobnicate", b"{}").unwrap_err();
        assert!(r.body["Err"].as_str().unwrap().contains("Frobnicate"));
        let r = Call::parse("/Nope", b"").unwrap_err();
        assert_eq!(r.status, 404);
        let r = Call::parse("/Plugin.Activate", b"{not json").unwrap_err();
        assert!(r.body["Err"].as_str().unwrap().contains("not JSON"));
    }
}
