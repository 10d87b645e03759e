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
