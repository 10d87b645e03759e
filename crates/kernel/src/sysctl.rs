//! Sysctls: from a dotted key to its file under `/proc/sys` ([`sysctl_path`]), and
//! writing it inside a namespace.
//!
//! `/proc/sys/net/…` resolves against the network namespace of the thread that opens
//! it, so writing one for another namespace means visiting it for the open.

use crate::netlink::{io_error, Netlink};
use crate::netns::Entered;
use lanyard_core::op::{Netns, Op};
use lanyard_core::{Error, Result};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// The file under `/proc/sys` for `key`.
///
/// A dotted key (`net.ipv4.ip_forward`) has its dots turned into slashes, except in
/// an interface name: in keys of five components or more
/// (`net.ipv4.conf.<ifname>.forwarding`, `net.ipv6.neigh.<ifname>.…`) the first three
/// and the last component are split off and everything between is the interface
/// name, dots and all (`eth0.10`). A key with slashes is taken as the path itself.
/// Empty components and `.`/`..` are refused.
pub fn sysctl_path(key: &str) -> Result<PathBuf> {
    let parts: Vec<String> = if key.contains('/') {
        key.trim_start_matches('/')
            .split('/')
            .map(str::to_string)
            .collect()
    } else {
        let dotted: Vec<&str> = key.split('.').collect();
        let n = dotted.len();
        if n >= 5 {
            vec![
                dotted[0].to_string(),
                dotted[1].to_string(),
                dotted[2].to_string(),
                dotted[3..n - 1].join("."),
                dotted[n - 1].to_string(),
            ]
        } else {
            dotted.iter().map(|s| s.to_string()).collect()
        }
    };
    finish(key, &parts)
}

fn finish(key: &str, parts: &[String]) -> Result<PathBuf> {
    let mut path = PathBuf::from("/proc/sys");
    for p in parts {
        if p.is_empty() || p == "." || p == ".." {
            return Err(Error::invalid(
                "sysctl",
                key,
                "has an empty, '.' or '..' component; write it like net.ipv4.ip_forward",
            ));
        }
        path.push(p);
    }
    Ok(path)
}

/// Writes `value` to the sysctl file at `path` in the calling thread's namespace.
fn write(path: &Path, value: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// `sysctl -w KEY=VALUE` inside `netns`. Only `net.*` keys are per namespace, so
/// other keys are refused for a container namespace.
pub(crate) fn set(nl: &mut Netlink, op: &Op, netns: &Netns, key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key)?;
    if matches!(netns, Netns::Path(_)) && !path.starts_with("/proc/sys/net") {
        return Err(Error::invalid(
            "sysctl",
            key,
            "only net.* sysctls belong to a network namespace; others would change the whole host",
        ));
    }
    let result = if matches!(netns, Netns::Host) && nl.on_host_thread() {
        write(&path, value)
    } else {
        let h = nl.need_ns(netns)?;
        let _inside = Entered::enter(h.fd.as_fd())
            .map_err(|e| io_error(&format!("enter netns {netns}"), e))?;
        write(&path, value)
    };
    result.map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => Error::not_found("sysctl", key.to_string()),
        _ => crate::error::NlError::Io(e).for_op(op),
    })
}

/// [`Op::EnableIpv6Forwarding`]: if `net.ipv6.conf.all.forwarding` is 0, sets
/// `accept_ra` from 1 to 2 on every interface but lanyard's own (`ly?-`), `lo`, `all`
/// and `default`, then turns forwarding on. All in the calling thread's namespace.
fn enable_ipv6_forwarding_here() -> io::Result<()> {
    let conf = Path::new("/proc/sys/net/ipv6/conf");
    if std::fs::read_to_string(conf.join("all/forwarding"))?.trim() != "0" {
        return Ok(());
    }
    for entry in std::fs::read_dir(conf)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let lanyards = name.len() > 3 && name.starts_with("ly") && name.as_bytes()[3] == b'-';
        if lanyards || ["lo", "all", "default"].contains(&name.as_ref()) {
            continue;
        }
        let path = conf.join(name.as_ref()).join("accept_ra");
        // An interface that went away meanwhile has nothing left to keep.
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => match write(&path, "2") {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                _ => {}
            },
            _ => {}
        }
    }
    write(&conf.join("all/forwarding"), "1")
}

/// Applies [`Op::EnableIpv6Forwarding`] inside `netns`.
pub(crate) fn enable_ipv6_forwarding(nl: &mut Netlink, op: &Op, netns: &Netns) -> Result<()> {
    let result = if matches!(netns, Netns::Host) && nl.on_host_thread() {
        enable_ipv6_forwarding_here()
    } else {
        let h = nl.need_ns(netns)?;
        let _inside = Entered::enter(h.fd.as_fd())
            .map_err(|e| io_error(&format!("enter netns {netns}"), e))?;
        enable_ipv6_forwarding_here()
    };
    result.map_err(|e| crate::error::NlError::Io(e).for_op(op))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: &str) -> String {
        sysctl_path(key).unwrap().display().to_string()
    }

    #[test]
    fn plain_keys_map_dots_to_slashes() {
        assert_eq!(p("net.ipv4.ip_forward"), "/proc/sys/net/ipv4/ip_forward");
        assert_eq!(
            p("net.ipv4.conf.all.forwarding"),
            "/proc/sys/net/ipv4/conf/all/forwarding"
        );
    }

    #[test]
    fn interface_names_with_dots_stay_whole() {
        assert_eq!(
            p("net.ipv4.conf.eth0.10.forwarding"),
            "/proc/sys/net/ipv4/conf/eth0.10/forwarding"
        );
        assert_eq!(
            p("net.ipv6.neigh.a.b.c.base_reachable_time_ms"),
            "/proc/sys/net/ipv6/neigh/a.b.c/base_reachable_time_ms"
        );
    }

    #[test]
    fn slashed_keys_are_paths() {
        assert_eq!(
            p("net/ipv4/conf/eth0.10/rp_filter"),
            "/proc/sys/net/ipv4/conf/eth0.10/rp_filter"
        );
    }

    #[test]
    fn escapes_are_refused() {
        assert!(sysctl_path("net.ipv4..x").is_err());
        assert!(sysctl_path("net/../../etc/passwd").is_err());
        assert!(sysctl_path("").is_err());
    }
}
