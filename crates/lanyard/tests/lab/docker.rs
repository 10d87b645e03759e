//! Docker's remote plugin protocol as `lanyard daemon` serves it on its plugin
//! socket (`--docker-socket`, here in the lab's run directory).

use crate::harness::lab;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// POSTs `body` to `path` over the plugin socket; the status line and the body.
fn post(sock: &Path, path: &str, body: &str) -> (String, String) {
    let mut s = UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.lines().next().unwrap_or("").to_string();
    (status, body.to_string())
}

#[test]
fn the_plugin_socket_answers_the_handshake_and_refuses_readably() {
    let lab = lab!();
    let mut daemon = lab.lanyard_spawn(&["daemon", "--interval", "60", "--gc-interval", "0"]);
    assert!(
        daemon.wait_for_stdout("watching nftables", Duration::from_secs(5)),
        "daemon did not start: {}",
        daemon.stderr()
    );
    let sock = lab.run_dir().join("docker-plugin.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the plugin socket is root's only");
    let (status, body) = post(&sock, "/Plugin.Activate", "");
    assert!(status.contains("200"), "{status} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"Implements": ["NetworkDriver", "IpamDriver"]})
    );
    let (_, body) = post(&sock, "/NetworkDriver.GetCapabilities", "{}");
    assert!(body.contains(r#""Scope":"local""#), "{body}");
    let (status, body) = post(&sock, "/Plugin.Activate", "{oops");
    assert!(status.contains("400"), "{status}");
    assert!(
        body.contains(r#""Err""#) && body.contains("not JSON"),
        "{body}"
    );
}

/// A dockerd 20.10 in the lab's host namespace and a private mount namespace
/// (where `/run/docker/plugins/lanyard.sock` points at the lab's plugin socket);
/// stopped on drop, also when the test fails.
struct Dockerd {
    child: std::process::Child,
    sock: std::path::PathBuf,
}

impl Dockerd {
    fn start(lab: &crate::harness::Lab) -> Dockerd {
        let t = lab.dir().join("dk");
        std::fs::create_dir_all(&t).unwrap();
        let plug = lab.run_dir().join("docker-plugin.sock");
        let script = format!(
            "mkdir -p /run/docker/plugins && mount -t tmpfs tmpfs /run/docker/plugins && \
             ln -s {plug} /run/docker/plugins/lanyard.sock && \
             exec nsenter --net={net} dockerd --data-root {t}/data --exec-root {t}/x \
             -H unix://{t}/docker.sock --pidfile {t}/pid --bridge=none --iptables=false \
             --ip6tables=false",
            plug = plug.display(),
            net = lab.host().path().display(),
            t = t.display(),
        );
        let log = std::fs::File::create(t.join("log")).unwrap();
        let child = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare dockerd (apt-get install docker.io)");
        let d = Dockerd {
            child,
            sock: t.join("docker.sock"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while d.docker(&["version"]).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "dockerd did not start: {}",
                std::fs::read_to_string(t.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    /// Runs `docker` against this dockerd: stdout, or stderr on failure.
    fn docker(&self, args: &[&str]) -> Result<String, String> {
        let host = format!("unix://{}", self.sock.display());
        let out = std::process::Command::new("docker")
            .arg("-H")
            .arg(&host)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop its containerd; its mounts go with its namespace.
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn docker_network_create_gets_a_readable_error_and_nothing_is_made() {
    let lab = lab!();
    let mut daemon = lab.lanyard_spawn(&["daemon", "--interval", "60", "--gc-interval", "0"]);
    assert!(
        daemon.wait_for_stdout("watching nftables", Duration::from_secs(5)),
        "daemon did not start: {}",
        daemon.stderr()
    );
    let d = Dockerd::start(&lab);
    let err = d
        .docker(&[
            "network",
            "create",
            "-d",
            "lanyard",
            "--ipam-driver",
            "lanyard",
            "x",
        ])
        .unwrap_err();
    assert!(err.contains("IpamDriver.RequestPool: lanyard:"), "{err}");
    let err = d
        .docker(&["network", "create", "-d", "lanyard", "x"])
        .unwrap_err();
    assert!(
        err.contains("NetworkDriver.CreateNetwork: lanyard:"),
        "{err}"
    );
    let names = d
        .docker(&["network", "ls", "--format", "{{.Name}}"])
        .unwrap();
    assert!(!names.contains('x'), "{names}");
    let ls = lab.lanyard_ok(&["network", "ls", "-q"]);
    assert!(ls.trim().is_empty(), "{ls}");
}
