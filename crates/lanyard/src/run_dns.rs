//! `lanyard run`'s name files: the resolv.conf and /etc/hosts the command sees
//! (bind-mounted over /etc/resolv.conf and /etc/hosts in a mount namespace of its
//! own), and the flags that shape them, as `docker run` has them: `--dns`,
//! `--dns-search`, `--hostname`, `--add-host`.
//!
//! With `lanyard daemon` up, resolv.conf names its responder (127.0.0.11, in the
//! command's namespace), which answers the names of the endpoints on the same
//! networks and forwards the rest; `--dns` servers are left for the daemon in
//! `RUN_DIR/dns/DEV:INO` (the namespace's identity) and become that namespace's
//! upstreams. Without a daemon, resolv.conf names the upstreams directly (`--dns`,
//! else the host's real ones, never a loopback stub) and other endpoints' names do
//! not resolve (said on stderr).

use crate::cli::RunArgs;
use crate::daemon::dns_upstream;
use lanyard_core::dnsname::DnsName;
use lanyard_core::model::Endpoint;
use lanyard_core::{Error, Result};
use std::ffi::CString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The responder's address in every namespace.
pub const RESPONDER: &str = "127.0.0.11";
/// The host's resolver list.
const HOST_RESOLV: &str = "/etc/resolv.conf";
/// systemd-resolved's list of real upstreams.
const RESOLVED: &str = "/run/systemd/resolve/resolv.conf";

/// The checked name flags of one `lanyard run`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NameOpts {
    /// `--dns`.
    pub servers: Vec<IpAddr>,
    /// `--dns-search`.
    pub search: Vec<DnsName>,
    /// `--hostname`.
    pub hostname: Option<DnsName>,
    /// `--add-host NAME:IP`.
    pub hosts: Vec<(DnsName, IpAddr)>,
}

impl NameOpts {
    /// Checks the flags (nothing changed on error).
    pub fn parse(args: &RunArgs) -> Result<NameOpts> {
        let servers = args
            .dns
            .iter()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| Error::invalid("--dns", s, "not an IP address"))
            })
            .collect::<Result<_>>()?;
        let search = args
            .dns_search
            .iter()
            .map(|s| DnsName::parse_for("--dns-search", s))
            .collect::<Result<_>>()?;
        let hostname = args
            .hostname
            .as_deref()
            .map(|h| {
                let n = DnsName::parse_for("--hostname", h)?;
                if n.as_str().len() > 64 {
                    return Err(Error::invalid("--hostname", h, "is longer than 64 bytes"));
                }
                Ok(n)
            })
            .transpose()?;
        let hosts = args
            .add_host
            .iter()
            .map(|s| {
                let (name, ip) = s
                    .split_once('=')
                    .or_else(|| s.split_once(':'))
                    .ok_or_else(|| Error::invalid("--add-host", s, "use NAME:IP"))?;
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                let ip = ip.parse().map_err(|_| {
                    Error::invalid("--add-host", s, format!("{ip:?} is not an IP address"))
                })?;
                Ok((DnsName::parse_for("--add-host", name)?, ip))
            })
            .collect::<Result<_>>()?;
        Ok(NameOpts {
            servers,
            search,
            hostname,
            hosts,
        })
    }

    /// Any name flag was given.
    pub fn any(&self) -> bool {
        *self != NameOpts::default()
    }
}

/// The `search`/`domain` domains of resolv.conf text (the last such line wins).
pub fn search_of(text: &str) -> Vec<String> {
    let mut out = vec![];
    for l in text.lines() {
        let mut w = l.split_whitespace();
        if let Some("search" | "domain") = w.next() {
            out = w.map(str::to_string).collect();
        }
    }
    out
}

/// resolv.conf text.
pub fn resolv_conf(servers: &[IpAddr], search: &[String], via_daemon: bool) -> String {
    let mut s = String::from("# written by lanyard run\n");
    if via_daemon {
        s += &format!("nameserver {RESPONDER}\n");
    } else {
        for a in servers {
            s += &format!("nameserver {a}\n");
        }
    }
    if !search.is_empty() {
        s += &format!("search {}\n", search.join(" "));
    }
    if via_daemon {
        // As Docker's: a name with a dot is asked as it is first.
        s += "options ndots:0\n";
    }
    s
}

/// /etc/hosts text: loopback, the command's own addresses under its host name (and
/// endpoint name), then `--add-host` lines.
pub fn hosts(hostname: &str, eps: &[Endpoint], extra: &[(DnsName, IpAddr)]) -> String {
    let mut s = String::from(
        "# written by lanyard run\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    for e in eps {
        let mut names = vec![hostname.to_string()];
        if let Some(n) = e
            .name
            .as_ref()
            .map(|n| n.to_string())
            .filter(|n| n != hostname)
        {
            names.push(n);
        }
        for a in &e.addresses {
            s += &format!("{}\t{}\n", a.addr(), names.join(" "));
        }
    }
    for (n, a) in extra {
        s += &format!("{a}\t{n}\n");
    }
    s
}

/// The files of one `lanyard run`, in `RUN_DIR/run/PID`, removed on drop (with the
/// servers left for the daemon).
pub struct Files {
    dir: PathBuf,
    /// (source, target) of each bind mount, ready for the child.
    pub mounts: Vec<(CString, CString)>,
    given: Option<PathBuf>,
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Other(format!("{}: contains NUL", p.display())))
}

impl Files {
    /// Makes the directory and empty files (written by [`Files::write`] once the
    /// endpoints exist): resolv.conf when `resolv`, and hosts.
    pub fn prepare(run_dir: &Path, resolv: bool) -> Result<Files> {
        let mut files = vec![("hosts", Path::new("/etc/hosts"))];
        if resolv {
            files.push(("resolv.conf", Path::new("/etc/resolv.conf")));
        }
        Files::prepare_for(run_dir, &files)
    }

    /// [`Files::prepare`] for `files` (name in the directory, file it covers).
    fn prepare_for(run_dir: &Path, files: &[(&str, &Path)]) -> Result<Files> {
        let dir = run_dir.join("run").join(std::process::id().to_string());
        // Private, as the run dir is (the daemon refuses one others can read).
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::Other(format!("creating {}: {e}", dir.display())))?;
        let mut mounts = vec![];
        for (name, target) in files {
            // Nothing to stand in for (a minimal root without the file): the
            // command goes without, as it would without lanyard; a bind mount needs
            // a file to cover, and the host's root is not lanyard's to add to.
            if !target.exists() {
                eprintln!(
                    "lanyard run: {} does not exist here; the command gets none",
                    target.display()
                );
                continue;
            }
            let src = dir.join(name);
            std::fs::write(&src, "")
                .map_err(|e| Error::Other(format!("writing {}: {e}", src.display())))?;
            mounts.push((cstr(&src)?, cstr(target)?));
        }
        Ok(Files {
            dir,
            mounts,
            given: None,
        })
    }

    /// Writes the files for the command attached as `eps` in `netns`; returns the
    /// host name it gets (`--hostname`, else the first endpoint's name or short id;
    /// none with neither: it keeps the host's).
    pub fn write(
        &mut self,
        run_dir: &Path,
        opts: &NameOpts,
        netns: &Path,
        eps: &[Endpoint],
    ) -> Result<Option<String>> {
        let given = opts
            .hostname
            .as_ref()
            .map(|h| h.to_string())
            .or_else(|| {
                eps.first()
                    .and_then(|e| e.name.as_ref())
                    .map(|n| n.to_string())
            })
            .or_else(|| eps.first().map(|e| e.short_id().to_string()));
        let hostname = given.clone().unwrap_or_else(|| "localhost".into());
        let put = |name: &str, text: String| {
            let p = self.dir.join(name);
            std::fs::write(&p, text)
                .map_err(|e| Error::Other(format!("writing {}: {e}", p.display())))
        };
        put("hosts", hosts(&hostname, eps, &opts.hosts))?;
        if self.mounts.len() < 2 {
            return Ok(given);
        }
        let host_text = std::fs::read_to_string(HOST_RESOLV).unwrap_or_default();
        let mut search: Vec<String> = opts.search.iter().map(|s| s.to_string()).collect();
        if search.is_empty() {
            search = eps
                .iter()
                .find_map(|e| e.lease.as_ref()?.domain.clone())
                .map(|d| vec![d])
                .unwrap_or_else(|| search_of(&host_text));
        }
        let daemon = run_dir.join(lanyard_kernel::handoff::SOCKET).exists();
        if daemon && !opts.servers.is_empty() {
            let st = rustix::fs::stat(netns)
                .map_err(|e| Error::Other(format!("{}: {e}", netns.display())))?;
            let dir = run_dir.join(crate::daemon::dns::GIVEN_DIR);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::Other(format!("creating {}: {e}", dir.display())))?;
            let p = dir.join(format!("{}:{}", st.st_dev, st.st_ino));
            let text: String = opts
                .servers
                .iter()
                .map(|a| format!("nameserver {a}\n"))
                .collect();
            std::fs::write(&p, text)
                .map_err(|e| Error::Other(format!("writing {}: {e}", p.display())))?;
            self.given = Some(p);
        }
        let servers = if opts.servers.is_empty() {
            dns_upstream::host_upstreams(Path::new(HOST_RESOLV), Path::new(RESOLVED))
        } else {
            opts.servers.clone()
        };
        if !daemon {
            eprintln!(
                "note: no lanyard daemon is running: the command's resolv.conf names the \
                 upstream servers, and other endpoints' names do not resolve (start `lanyard daemon`)"
            );
        }
        put("resolv.conf", resolv_conf(&servers, &search, daemon))?;
        Ok(given)
    }
}

/// How long `lanyard run` waits for the daemon's responder in the command's
/// namespace before letting the command go (it opens within milliseconds of the
/// endpoint notice; the command's first lookup would fail without it).
const RESPONDER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// With a daemon up, waits until its responder accepts TCP on 127.0.0.11:53 in
/// `netns` (a connect every 5 ms), at most [`RESPONDER_WAIT`]; says so on stderr if
/// it never does.
pub fn await_responder(run_dir: &Path, netns: &Path) {
    if !run_dir.join(lanyard_kernel::handoff::SOCKET).exists() {
        return;
    }
    let to = std::net::SocketAddr::from(([127, 0, 0, 11], 53));
    let end = std::time::Instant::now() + RESPONDER_WAIT;
    while std::time::Instant::now() < end {
        let tried = lanyard_kernel::netns::within(netns, || {
            std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_millis(100))
        });
        if matches!(tried, Ok(Ok(_))) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    eprintln!("note: the lanyard daemon's DNS responder did not answer in the command's namespace");
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(g) = &self.given {
            let _ = std::fs::remove_file(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_the_root_lacks_is_not_covered() {
        let run = tempfile::tempdir().unwrap();
        let etc = tempfile::tempdir().unwrap();
        let hosts = etc.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let missing = etc.path().join("resolv.conf");
        let f = Files::prepare_for(run.path(), &[("hosts", &hosts), ("resolv.conf", &missing)])
            .unwrap();
        let targets: Vec<_> = f.mounts.iter().map(|(_, t)| t.clone()).collect();
        assert_eq!(
            targets,
            [cstr(&hosts).unwrap()],
            "no bind onto a missing file"
        );
    }
    use clap::Parser;

    fn opts(extra: &[&str]) -> Result<NameOpts> {
        let mut argv = vec!["lanyard", "run", "--network", "n"];
        argv.extend_from_slice(extra);
        argv.extend_from_slice(&["--", "true"]);
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        match cli.command {
            crate::cli::Command::Run(r) => NameOpts::parse(&r),
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_are_checked_naming_the_flag() {
        let o = opts(&[
            "--dns",
            "192.0.2.53",
            "--dns-search",
            "Lan.Example",
            "--hostname",
            "box",
            "--add-host",
            "db:192.0.2.9",
            "--add-host",
            "v6=[2001:db8::9]",
        ])
        .unwrap();
        assert_eq!(o.servers, ["192.0.2.53".parse::<IpAddr>().unwrap()]);
        assert_eq!(o.search[0].as_str(), "lan.example");
        assert_eq!(o.hosts[1].1, "2001:db8::9".parse::<IpAddr>().unwrap());
        for (flag, bad) in [
            ("--dns", "nope"),
            ("--dns-search", "a..b"),
            ("--hostname", "bad_name"),
            ("--add-host", "noip"),
            ("--add-host", "db:1.2.3"),
        ] {
            let e = opts(&[flag, bad]).unwrap_err().to_string();
            assert!(e.contains(flag), "{flag} {bad}: {e}");
        }
    }

    #[test]
    fn resolv_conf_names_the_responder_or_the_upstreams() {
        let ups = ["192.0.2.53".parse().unwrap()];
        let s = resolv_conf(&ups, &["lan".into()], true);
        assert!(s.contains("nameserver 127.0.0.11\n") && !s.contains("192.0.2.53"));
        assert!(s.contains("search lan\n") && s.contains("ndots:0"));
        let s = resolv_conf(&ups, &[], false);
        assert!(s.contains("nameserver 192.0.2.53\n") && !s.contains("127.0.0.11"));
        assert_eq!(search_of("search a b\ndomain c\n"), ["c"]);
    }
}
