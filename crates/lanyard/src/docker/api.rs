//! One plugin request in, one JSON answer out: pure, no socket, no engine.
//!
//! Served so far: the handshake (`Plugin.Activate`), both drivers' capabilities,
//! the IPAM address spaces and the no-op discovery calls. Every other call is
//! refused with a readable `{"Err": …}` naming it, so dockerd changes nothing.

use serde::Serialize;
use serde_json::{json, Value};

/// The media type dockerd expects in answers.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// The IPAM address spaces lanyard reports (it has one of each; names are Docker's).
pub const LOCAL_SPACE: &str = "LanyardLocal";
/// See [`LOCAL_SPACE`].
pub const GLOBAL_SPACE: &str = "LanyardGlobal";

/// An answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// 200 for success, 400 for a refusal, 404 for an unknown path.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }

    /// A refusal dockerd shows the user as it is.
    pub fn err(status: u16, msg: impl Into<String>) -> Reply {
        Reply {
            status,
            body: json!({ "Err": msg.into() }),
        }
    }
}

#[derive(Serialize)]
struct Activate {
    #[serde(rename = "Implements")]
    implements: [&'static str; 2],
}

/// Answers the request for `path` with `body` (the raw JSON, possibly empty).
pub fn answer(path: &str, body: &[u8]) -> Reply {
    // Every body that is not empty must be JSON; dockerd always sends an object.
    if !body.is_empty() && serde_json::from_slice::<Value>(body).is_err() {
        return Reply::err(
            400,
            format!("lanyard: {path}: the request body is not JSON"),
        );
    }
    match path {
        "/Plugin.Activate" => Reply::ok(
            serde_json::to_value(Activate {
                implements: ["NetworkDriver", "IpamDriver"],
            })
            .unwrap_or(Value::Null),
        ),
        "/NetworkDriver.GetCapabilities" => Reply::ok(json!({
            "Scope": "local",
            "ConnectivityScope": "local",
        })),
        "/IpamDriver.GetCapabilities" => Reply::ok(json!({ "RequiresMACAddress": false })),
        "/IpamDriver.GetDefaultAddressSpaces" => Reply::ok(json!({
            "LocalDefaultAddressSpace": LOCAL_SPACE,
            "GlobalDefaultAddressSpace": GLOBAL_SPACE,
        })),
        // Nothing to learn from other nodes: lanyard's networks are local.
        "/NetworkDriver.DiscoverNew" | "/NetworkDriver.DiscoverDelete" => Reply::ok(json!({})),
        p if p.starts_with("/NetworkDriver.") || p.starts_with("/IpamDriver.") => Reply::err(
            400,
            format!(
                "lanyard: {} is not served yet by this lanyard daemon",
                p.trim_start_matches('/')
            ),
        ),
        p => Reply::err(404, format!("lanyard: no such plugin call: {p}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activate_names_both_drivers() {
        let r = answer("/Plugin.Activate", b"");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body,
            json!({ "Implements": ["NetworkDriver", "IpamDriver"] })
        );
    }

    #[test]
    fn network_driver_is_local_scope() {
        let r = answer("/NetworkDriver.GetCapabilities", b"{}");
        assert_eq!(r.body["Scope"], "local");
        assert_eq!(r.body["ConnectivityScope"], "local");
    }

    #[test]
    fn ipam_reports_address_spaces() {
        let r = answer("/IpamDriver.GetDefaultAddressSpaces", b"null");
        assert_eq!(r.body["LocalDefaultAddressSpace"], LOCAL_SPACE);
        assert_eq!(r.body["GlobalDefaultAddressSpace"], GLOBAL_SPACE);
    }

    #[test]
    fn discovery_is_a_no_op() {
        let r = answer("/NetworkDriver.DiscoverNew", br#"{"DiscoveryType":1}"#);
        assert_eq!(r, Reply::ok(json!({})));
    }

    #[test]
    fn refusals_are_readable_err_objects() {
        let r = answer("/NetworkDriver.CreateNetwork", br#"{"NetworkID":"x"}"#);
        assert_eq!(r.status, 400);
        assert!(r.body["Err"]
            .as_str()
            .unwrap()
            .contains("NetworkDriver.CreateNetwork"));
        let r = answer("/Nope", b"");
        assert_eq!(r.status, 404);
        let r = answer("/Plugin.Activate", b"{not json");
        assert!(r.body["Err"].as_str().unwrap().contains("not JSON"));
    }
}
