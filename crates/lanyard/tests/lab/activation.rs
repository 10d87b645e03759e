//! Socket activation of the Docker plugin socket, as `lanyard.socket` does it at
//! boot: `systemd-socket-activate` (systemd's own tool, the same protocol) binds the
//! socket, waits for the first client, then starts `lanyard daemon` with it.

use crate::harness::{lab, lanyard_bin};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

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
