//! The Docker plugin socket outside the protocol: socket activation, as
//! `lanyard.socket` does it at boot (`systemd-socket-activate`, systemd's own tool,
//! the same protocol, binds the socket, waits for the first client, then starts
//! `lanyard daemon` with it), and `lanyard doctor` when networks made through Docker
//! exist but nothing answers on the socket.

use crate::harness::{lab, lanyard_bin};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// POSTs `body` to `path` on the plugin socket `sock`; the answer's body, parsed.
fn post(sock: &Path, path: &str, body: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {out:?}"))
}

#[test]
fn the_first_docker_call_starts_the_daemon_on_the_socket_systemd_bound() {
    let lab = lab!();
    std::fs::create_dir_all(lab.run_dir()).unwrap();
    let sock = lab.run_dir().join("docker-plugin.sock");
    let (state, run, config) = (lab.state_dir(), lab.run_dir(), lab.config_path());
    let args = [
        "systemd-socket-activate",
        "-l",
        sock.to_str().unwrap(),
        "-E",
        "RUST_BACKTRACE=1",
        "--",
        lanyard_bin(),
        "--state-dir",
        state.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "daemon",
        "--interval",
        "60",
        "--gc-interval",
        "0",
        "--docker-socket",
        sock.to_str().unwrap(),
    ];
    let mut daemon = lab.host().spawn(&args);
    // The socket is there (systemd's) before any lanyard process runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let inode = std::fs::metadata(&sock).unwrap().ino();
    assert!(
        !daemon.stdout().contains("lanyard daemon"),
        "started before any call"
    );

    // dockerd's handshake: the connection waits in the socket's queue while the
    // daemon starts, then gets its answer.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(
        out.starts_with("HTTP/1.1 200")
            && out.contains(r#""Implements":["NetworkDriver","IpamDriver"]"#),
        "answer {out:?}\ndaemon stdout: {}\nstderr: {}",
        daemon.stdout(),
        daemon.stderr()
    );
    assert!(
        daemon.wait_for_stdout("watching nftables", Duration::from_secs(5)),
        "{}",
        daemon.stderr()
    );
    // The daemon served systemd's socket: never removed, re-bound or re-moded.
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.ino(), inode, "the daemon replaced systemd's socket");
    // And it keeps serving it.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /NetworkDriver.GetCapabilities HTTP/1.1\r\nHost: plugin\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.contains(r#""Scope":"local""#), "{out:?}");
}

#[test]
fn doctor_finds_docker_networks_without_a_plugin_socket_that_answers() {
    let lab = lab!();
    let sock = lab.run_dir().join("docker-plugin.sock");
    let mut daemon = lab.lanyard_spawn(&["daemon", "--interval", "60", "--gc-interval", "0"]);
    assert!(
        daemon.wait_for_stdout("watching nftables", Duration::from_secs(10)),
        "{}",
        daemon.stderr()
    );
    // A network made through Docker, by dockerd's own two calls.
    let pool = post(
        &sock,
        "/IpamDriver.RequestPool",
        r#"{"AddressSpace":"LanyardLocal","Pool":"10.97.0.0/24","SubPool":"","Options":{},"V6":false}"#,
    );
    assert!(pool["PoolID"].is_string(), "{pool}");
    let id = "d4add59f77915cfd348033d1d9832ebcd810b45737f8675182a1a52e116243a4";
    let made = post(
        &sock,
        "/NetworkDriver.CreateNetwork",
        &format!(
            r#"{{"NetworkID":"{id}","Options":{{"com.docker.network.generic":{{"type":"bridge"}}}},"IPv4Data":[{{"AddressSpace":"LanyardLocal","Gateway":"10.97.0.1/24","Pool":"10.97.0.0/24"}}],"IPv6Data":[]}}"#
        ),
    );
    assert_eq!(made, serde_json::json!({}), "CreateNetwork");
    let docker_findings = || -> Vec<serde_json::Value> {
        let out = lab.lanyard(&["doctor", "--json"]);
        let all: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("doctor --json: {e}"));
        all.as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == "docker-plugin")
            .cloned()
            .collect()
    };
    assert!(docker_findings().is_empty(), "the plugin answers");

    // The daemon killed: its socket file stays, and nothing answers on it.
    daemon.kill();
    assert!(sock.exists());
    let found = docker_findings();
    assert_eq!(found.len(), 1, "{found:?}");
    let problem = found[0]["problem"].as_str().unwrap();
    assert!(
        problem.contains("stale") && problem.contains(&format!("docker-{}", &id[..12])),
        "{problem}"
    );
    std::fs::remove_file(&sock).unwrap();
    let found = docker_findings();
    assert!(
        found[0]["problem"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{found:?}"
    );
}
