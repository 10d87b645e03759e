//! `lanyard doctor`: the engine's checks ([`lanyard_engine::doctor`]) with what they
//! read from this host: nftables tables over nfnetlink, sysctls from /proc/sys (this
//! namespace's), whether a link is wireless from sysfs (`LANYARD_SYSFS`, default
//! `/sys`: a test hook, as sysfs shows the namespace it was mounted in), ARP probes
//! sent from the parent links, and whether the daemon answers on its socket; and,
//! here, whether dockerd can reach the plugin for the networks made through Docker
//! ([`docker_plugin`]), and whether an etcd store was out of reach (the checks then
//! ran against this host's local copy).

use crate::cli::Cli;
use crate::daemon::worker::Nfnetlink;
use crate::output::out;
use crate::Lanyard;
use lanyard_core::model::MacAddr;
use lanyard_core::name::IfName;
use lanyard_core::{Error, Result};
use lanyard_engine::doctor::{Finding, Inspect};
use lanyard_engine::drift::{Shape, TableReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Test hook: where sysfs is (`/sys`).
const SYSFS_ENV: &str = "LANYARD_SYSFS";

/// How long doctor waits for ARP answers, all probes together.
const ARP_WAIT: Duration = Duration::from_millis(300);

struct Host {
    sysfs: PathBuf,
    daemon_socket: PathBuf,
}

impl TableReader for Host {
    fn table(&mut self, family: &str, name: &str) -> Result<Option<Shape>> {
        Nfnetlink.table(family, name)
    }
}

impl Inspect for Host {
    fn sysctl(&mut self, key: &str) -> Result<String> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| Error::Other(format!("reading {}: {e}", path.display())))
    }

    fn is_wireless(&mut self, name: &str) -> bool {
        let dev = self.sysfs.join("class/net").join(name);
        dev.join("wireless").exists() || dev.join("phy80211").exists()
    }

    fn arp_holders(&mut self, probes: &[(IfName, Ipv4Addr)]) -> Result<Vec<Option<MacAddr>>> {
        let here = Path::new("/proc/self/ns/net");
        let sent: Vec<_> = probes
            .iter()
            .map(|(link, addr)| lanyard_kernel::dhcp::ArpProbe::send(here, link.as_str(), *addr))
            .collect();
        let deadline = Instant::now() + ARP_WAIT;
        sent.into_iter()
            .zip(probes)
            .map(|(probe, (link, addr))| {
                let probe = probe
                    .map_err(|e| Error::Other(format!("ARP probe for {addr} on {link}: {e}")))?;
                probe
                    .wait(deadline)
                    .map(|m| m.map(MacAddr))
                    .map_err(|e| Error::Other(format!("ARP probe for {addr} on {link}: {e}")))
            })
            .collect()
    }

    fn daemon_running(&mut self) -> bool {
        lanyard_kernel::handoff::Client::connect(&self.daemon_socket).is_ok()
    }
}

/// What is at the Docker plugin socket's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginSocket {
    /// Something accepts connections (the daemon, or systemd's `lanyard.socket`).
    Answers,
    /// A socket file nobody answers on (a daemon killed without cleaning up).
    Stale,
    /// Nothing there.
    Missing,
}

/// The `docker-plugin` check: networks made through Docker (`nets`) need the plugin
/// at `socket`, or dockerd cannot start, stop or connect containers on them.
pub fn docker_plugin(nets: &[String], socket: &Path, state: PluginSocket) -> Option<Finding> {
    let why = match state {
        PluginSocket::Answers => return None,
        PluginSocket::Stale => "is stale: nothing answers on it",
        PluginSocket::Missing => "does not exist",
    };
    Some(Finding {
        check: "docker-plugin",
        subject: format!("docker plugin socket {}", socket.display()),
        problem: format!(
            "{} network(s) made through Docker ({}), but the plugin socket {why}: \
             dockerd cannot run or stop containers on them (plugin \"lanyard\" not found)",
            nets.len(),
            nets.join(", ")
        ),
        fix: "start lanyard daemon (systemctl start lanyard.socket lanyard.service); \
              if it runs with --docker-socket, run doctor with LANYARD_DOCKER_SOCKET set alike"
            .into(),
    })
}

/// Runs the checks and prints them; exit 1 when anything was found.
pub fn run(engine: &mut Lanyard, cli: &Cli, json: bool) -> Result<i32> {
    let mut host = Host {
        sysfs: std::env::var_os(SYSFS_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/sys")),
        daemon_socket: cli.run_dir.join(lanyard_kernel::handoff::SOCKET),
    };
    let mut findings: Vec<Finding> = engine.doctor(&mut host)?;
    let docker_nets: Vec<String> = engine
        .networks()?
        .into_iter()
        .filter(|n| {
            n.network
                .labels
                .contains_key(lanyard_docker::translate::ID_LABEL)
        })
        .map(|n| n.network.name.to_string())
        .collect();
    if !docker_nets.is_empty() {
        let socket = std::env::var_os("LANYARD_DOCKER_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(crate::docker::DEFAULT_SOCKET));
        let state = if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            PluginSocket::Answers
        } else if socket.exists() {
            PluginSocket::Stale
        } else {
            PluginSocket::Missing
        };
        findings.extend(docker_plugin(&docker_nets, &socket, state));
    }
    if let Some(fb) = engine.store.fallback() {
        findings.push(Finding {
            check: "store",
            subject: "etcd".into(),
            problem: format!(
                "{}; the checks above ran against it (this host's endpoints only)",
                fb.notice()
            ),
            fix: "bring the cluster back, or this host's route to it; attach and detach \
                  wait for it"
                .into(),
        });
    }
    if json {
        crate::output::json(&findings)?;
    } else if findings.is_empty() {
        out!("no problems found");
    } else {
        for f in &findings {
            out!("[{}] {}: {}", f.check, f.subject, f.problem);
            out!("    fix: {}", f.fix);
        }
    }
    Ok(if findings.is_empty() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_networks_need_a_plugin_socket_that_answers() {
        let nets = ["docker-0123456789ab".to_string()];
        let sock = Path::new("/run/docker/plugins/lanyard.sock");
        assert_eq!(docker_plugin(&nets, sock, PluginSocket::Answers), None);
        let f = docker_plugin(&nets, sock, PluginSocket::Stale).unwrap();
        assert_eq!(f.check, "docker-plugin");
        assert!(f.problem.contains("docker-0123456789ab") && f.problem.contains("stale"));
        let f = docker_plugin(&nets, sock, PluginSocket::Missing).unwrap();
        assert!(f.problem.contains("does not exist"), "{}", f.problem);
        assert!(f.fix.contains("lanyard.socket"));
    }
}
