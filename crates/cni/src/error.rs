//! lanyard's errors as CNI error objects: each [`ErrorKind`] to its spec code, and the
//! engine's field names (the CLI's flags) to the CNI configuration's or the
//! environment's, so a runtime's user reads the name of what they wrote.

use crate::result::CniError;
use lanyard_core::{Error, ErrorKind};

/// Incompatible CNI version.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// Container unknown (CHECK of an attachment that does not exist).
pub const UNKNOWN_CONTAINER: u32 = 3;
/// Invalid environment variables; the message names them.
pub const INVALID_ENV: u32 = 4;
/// Failed to decode the configuration.
pub const DECODE: u32 = 6;
/// Invalid network configuration; the message names the field.
pub const INVALID_CONFIG: u32 = 7;
/// A transient condition: try again later.
pub const TRY_AGAIN: u32 = 11;
/// STATUS: the plugin cannot serve ADD.
pub const NOT_AVAILABLE: u32 = 50;
/// lanyard's own: the request clashes with existing state (address, port, name).
pub const CONFLICT: u32 = 100;
/// lanyard's own: the kernel lacks a feature the network needs.
pub const UNSUPPORTED: u32 = 101;
/// lanyard's own: the CHECK found the attachment not as recorded.
pub const CHECK_FAILED: u32 = 102;
/// Anything else (a kernel step, the store), as the reference plugins number it.
pub const INTERNAL: u32 = 999;

/// The environment variables the CNI front end reads; an error naming one is code 4.
const ENV_FIELDS: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

/// The CNI name of a field an engine error names (the CLI's flag).
pub fn cni_field(field: &str) -> String {
    let mapped = match field {
        "--netns" => "CNI_NETNS",
        "--ifname" => "CNI_IFNAME",
        "--ip" | "--ip6" => "runtimeConfig.ips",
        "--mac" => "runtimeConfig.mac",
        "--publish" => "runtimeConfig.portMappings",
        "--driver" => "driver",
        "-o parent" => "master",
        "-o macvlan_mode" | "-o ipvlan_mode" => "mode",
        "-o mtu" => "mtu",
        "-o bridge_name" => "bridge",
        "--subnet" => "ipam.subnet",
        "--gateway" => "ipam.gateway",
        "--ip-range" => "ipam.rangeStart",
        "network name" => "network",
        other => other,
    };
    mapped.to_string()
}

/// `e` as a CNI error in `version`.
pub fn to_cni(e: &Error, version: &str) -> CniError {
    let (code, msg) = match e {
        Error::Invalid { field, value, .. } => {
            let field = cni_field(field);
            if ENV_FIELDS.contains(&field.as_str()) {
                (INVALID_ENV, format!("invalid {field} {value:?}"))
            } else if field == "stdin" {
                (DECODE, "cannot decode the configuration on stdin".into())
            } else {
                (INVALID_CONFIG, format!("invalid {field} {value:?}"))
            }
        }
        _ => match e.kind() {
            ErrorKind::TryAgain => (TRY_AGAIN, "try again later".into()),
            ErrorKind::Conflict => (CONFLICT, "conflict".into()),
            ErrorKind::NotFound => (INVALID_CONFIG, e.to_string()),
            ErrorKind::Unsupported => (UNSUPPORTED, "not supported by this kernel".into()),
            ErrorKind::Invalid | ErrorKind::Internal => (INTERNAL, "lanyard failed".into()),
        },
    };
    let details = match e {
        Error::Invalid { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    CniError {
        cni_version: version.to_string(),
        code,
        msg,
        details,
    }
}

/// An error of the plugin's own making (not from the engine).
pub fn plain(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError {
        cni_version: String::new(),
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_get_spec_codes_and_cni_field_names() {
        let e = to_cni(
            &Error::invalid("-o parent", "eth9", "no such interface"),
            "1.0.0",
        );
        assert_eq!((e.code, e.msg.as_str()), (7, "invalid master \"eth9\""));
        assert_eq!(e.details, "no such interface");
        let e = to_cni(&Error::invalid("--netns", "/x", "gone"), "1.0.0");
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS"));
        let e = to_cni(&Error::TryAgain("busy".into()), "1.1.0");
        assert_eq!((e.code, e.details.as_str()), (11, "busy"));
        assert_eq!(
            to_cni(&Error::not_found("network", "x"), "1.0.0").code,
            INVALID_CONFIG
        );
        assert_eq!(to_cni(&Error::Store("s".into()), "1.0.0").code, INTERNAL);
        assert_eq!(to_cni(&Error::invalid("stdin", "", "eof"), "1.0.0").code, 6);
    }
}
