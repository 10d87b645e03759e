//! The CNI 1.1 face of the `lanyard` binary: with `CNI_COMMAND` in the environment,
//! `lanyard` is a CNI plugin (`"type": "lanyard"`), and run as `lanyard-ipam` (a link
//! or copy of the binary by that name, or a config whose `ipam.type` says so under
//! another plugin) it is an IPAM plugin handing out a lanyard network's addresses.
//!
//! Protocol only lives here: the environment and stdin are read ([`Invocation`],
//! [`conf`]), the verb runs on the engine ([`plugin`], [`ipam`]), and the result or
//! error goes to stdout in the caller's `cniVersion` ([`result`], [`error`]).
//! Attachments are the engine's endpoints keyed by
//! [`Owner::Cni`](lanyard_core::owner::Owner) (CNI network name, container ID,
//! ifname), so a repeated ADD returns the same endpoint and DEL finds it whatever
//! became of the namespace.

mod ipam;
mod plugin;

pub use lanyard_cni::{conf, error, result};
pub(crate) use plugin::add_here;

use error::{plain, to_cni, INCOMPATIBLE_VERSION, INVALID_ENV};
use result::{CniError, VersionResult, LATEST, SUPPORTED_VERSIONS};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The environment variable that makes `lanyard` a CNI plugin.
pub const COMMAND_ENV: &str = "CNI_COMMAND";

/// The name under which the binary is lanyard's IPAM plugin.
pub const IPAM_TYPE: &str = "lanyard-ipam";

/// The main plugin's type.
pub const PLUGIN_TYPE: &str = "lanyard";

/// If the process was started as a CNI plugin (`CNI_COMMAND` set, or the name
/// `lanyard-ipam`), runs the verb, prints its result or error and exits; otherwise
/// returns at once (the CLI goes on).
pub fn run_if_plugin() {
    let as_ipam = argv0_is_ipam();
    if std::env::var_os(COMMAND_ENV).is_none() && !as_ipam {
        return;
    }
    crate::log::init(false);
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(conf::MAX_STDIN as u64 + 1)
        .read_to_end(&mut stdin);
    // Should the verb need `lanyardd` (an etcd store), it reads the same input.
    crate::full::replay_stdin(&stdin);
    let outcome = match read {
        Ok(_) => run(&Invocation::from_env(), &stdin, as_ipam),
        Err(e) => Err(plain(5, "cannot read stdin", e.to_string())),
    };
    let mut out = std::io::stdout().lock();
    let code = match outcome {
        Ok(Some(text)) => {
            let _ = writeln!(out, "{text}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(out, "{}", serde_json::to_string(&e).unwrap_or_default());
            1
        }
    };
    let _ = out.flush();
    std::process::exit(code);
}

/// Whether `argv[0]`'s file name is `lanyard-ipam`.
fn argv0_is_ipam() -> bool {
    std::env::args_os()
        .next()
        .as_deref()
        .and_then(|a| Path::new(a).file_name().map(|f| f == IPAM_TYPE))
        .unwrap_or(false)
}

/// A CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Attach.
    Add,
    /// Detach (idempotent).
    Del,
    /// Compare the attachment with its record and the ADD's result.
    Check,
    /// Whether ADD can be served.
    Status,
    /// Release every attachment of the network but the valid ones.
    Gc,
    /// The versions lanyard speaks.
    Version,
}

/// The protocol's environment variables, as given.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: Option<String>,
    /// `LANYARD_STATE_DIR`.
    pub state_dir: Option<PathBuf>,
    /// `LANYARD_RUN_DIR`.
    pub run_dir: Option<PathBuf>,
}

impl Invocation {
    /// Reads the process environment (a value that is not UTF-8 counts as given
    /// but wrong: it is reported by name).
    pub fn from_env() -> Invocation {
        let var = |k: &str| {
            std::env::var_os(k).map(|v| v.into_string().unwrap_or_else(|_| "\u{fffd}".into()))
        };
        Invocation {
            command: var(COMMAND_ENV),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            state_dir: std::env::var_os("LANYARD_STATE_DIR").map(PathBuf::from),
            run_dir: std::env::var_os("LANYARD_RUN_DIR").map(PathBuf::from),
        }
    }

    /// The verb, or an error naming `CNI_COMMAND`.
    pub fn verb(&self) -> Result<Verb, CniError> {
        Ok(match self.command.as_deref() {
            Some("ADD") => Verb::Add,
            Some("DEL") => Verb::Del,
            Some("CHECK") => Verb::Check,
            Some("STATUS") => Verb::Status,
            Some("GC") => Verb::Gc,
            Some("VERSION") => Verb::Version,
            other => {
                return Err(plain(
                    INVALID_ENV,
                    format!("invalid CNI_COMMAND {:?}", other.unwrap_or("")),
                    "CNI_COMMAND must be ADD, DEL, CHECK, STATUS, GC or VERSION",
                ))
            }
        })
    }

    /// A required variable, or an error naming it.
    pub fn require(&self, name: &str) -> Result<&str, CniError> {
        let v = match name {
            "CNI_CONTAINERID" => &self.container_id,
            "CNI_NETNS" => &self.netns,
            "CNI_IFNAME" => &self.ifname,
            _ => &None,
        };
        v.as_deref()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| plain(INVALID_ENV, format!("{name} is not set"), ""))
    }
}

/// Runs one invocation: `Ok(Some(json))` to print on success, `Ok(None)` for a
/// success without output, `Err` for the error object.
pub fn run(inv: &Invocation, stdin: &[u8], as_ipam: bool) -> Result<Option<String>, CniError> {
    let verb = inv.verb()?;
    if verb == Verb::Version {
        return Ok(Some(version_answer(stdin)));
    }
    let conf = conf::parse(stdin).map_err(|e| to_cni(&e, LATEST))?;
    let version = conf.cni_version.clone().unwrap_or_default();
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(CniError {
            cni_version: LATEST.into(),
            code: INCOMPATIBLE_VERSION,
            msg: format!("incompatible cniVersion {version:?}"),
            details: format!("lanyard speaks {}", SUPPORTED_VERSIONS.join(", ")),
        });
    }
    let with_version = |mut e: CniError| {
        e.cni_version.clone_from(&version);
        e
    };
    let kind = conf.kind.as_deref().unwrap_or("");
    let ipam_by_conf = kind != PLUGIN_TYPE
        && conf
            .ipam
            .as_ref()
            .is_some_and(|i| i.kind.as_deref() == Some(IPAM_TYPE));
    let out = if as_ipam || ipam_by_conf {
        ipam::run(verb, inv, &conf, &version)
    } else if kind == PLUGIN_TYPE || kind.is_empty() {
        plugin::run(verb, inv, &conf, &version)
    } else {
        Err(plain(
            error::INVALID_CONFIG,
            format!("invalid type {kind:?}"),
            format!("this binary is the {PLUGIN_TYPE} and {IPAM_TYPE} plugins"),
        ))
    };
    out.map_err(with_version)
}

/// VERSION: every version lanyard speaks, answered in the one asked (the newest
/// when the input names none or is not JSON).
fn version_answer(stdin: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Asked {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let asked = serde_json::from_slice::<Asked>(stdin)
        .ok()
        .and_then(|a| a.cni_version)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.into());
    serde_json::to_string(&VersionResult {
        cni_version: asked,
        supported_versions: SUPPORTED_VERSIONS.to_vec(),
    })
    .unwrap_or_default()
}

/// Where lanyard keeps its state and runtime files for this invocation: the
/// config's `stateDir`/`runDir`, else `LANYARD_STATE_DIR`/`LANYARD_RUN_DIR`, else
/// the CLI's defaults.
pub fn dirs(
    inv: &Invocation,
    state: Option<&PathBuf>,
    run: Option<&PathBuf>,
) -> (PathBuf, PathBuf) {
    (
        state
            .or(inv.state_dir.as_ref())
            .cloned()
            .unwrap_or_else(|| "/var/lib/lanyard".into()),
        run.or(inv.run_dir.as_ref())
            .cloned()
            .unwrap_or_else(|| "/run/lanyard".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(cmd: &str) -> Invocation {
        Invocation {
            command: Some(cmd.into()),
            ..Default::default()
        }
    }

    #[test]
    fn version_lists_0_3_0_to_1_1_0_in_the_version_asked() {
        let out = run(&inv("VERSION"), br#"{"cniVersion":"0.4.0"}"#, false)
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let out = run(&inv("VERSION"), b"", false).unwrap().unwrap();
        assert!(out.contains("\"cniVersion\":\"1.1.0\""));
    }

    #[test]
    fn protocol_errors_have_their_spec_codes() {
        let e = run(&inv("FROB"), b"{}", false).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_COMMAND"));
        let e = run(&Invocation::default(), b"{}", false).unwrap_err();
        assert_eq!(e.code, 4);
        let e = run(
            &inv("ADD"),
            br#"{"cniVersion":"2.0.0","name":"n","type":"lanyard"}"#,
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, 1);
        let e = run(&inv("ADD"), br#"{"cniVersion":"1.0.0","name""#, false).unwrap_err();
        assert_eq!(e.code, 6, "{e:?}");
        let e = run(
            &inv("ADD"),
            br#"{"cniVersion":"1.0.0","name":"n","type":"lanyard","mtu":"x"}"#,
            false,
        )
        .unwrap_err();
        assert_eq!((e.code, e.cni_version.as_str()), (7, "1.1.0"));
        assert!(e.msg.contains("mtu"), "{e:?}");
        // ADD without the attachment's variables: code 4 naming the first missing,
        // before any store or kernel is touched.
        let e = run(
            &inv("ADD"),
            br#"{"cniVersion":"1.0.0","name":"n","type":"lanyard","network":"n","stateDir":"/nonexistent/x"}"#,
            false,
        )
        .unwrap_err();
        assert_eq!((e.code, e.cni_version.as_str()), (4, "1.0.0"));
        assert!(e.msg.contains("CNI_CONTAINERID"), "{e:?}");
        let e = run(
            &inv("ADD"),
            br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, 7);
    }
}
