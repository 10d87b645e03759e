//! docker-compose (Debian's, 1.29) on a lanyard network: a compose file that uses an
//! external network made with `docker network create -d lanyard` and gives its
//! service a fixed `ipv4_address`, against the lab's real dockerd
//! ([`crate::docker::Dockerd`]).

use crate::docker::{lanyard_addresses, Dockerd};
use crate::harness::lab;

/// The service's fixed address: in the network's subnet, outside its `--ip-range`
/// (where Docker's docs put fixed addresses, away from the dynamic ones).
const FIXED: &str = "192.0.2.77";

const COMPOSE: &str = r#"version: "3.7"
services:
  web:
    image: bb
    command: ["/bin/busybox", "sleep", "600"]
    networks:
      lan:
        ipv4_address: 192.0.2.77
networks:
  lan:
    external: true
"#;

/// Runs `docker-compose -p lyt ARGS` in `dir` against `d`: stdout, or a panic with
/// what it printed.
fn compose(d: &Dockerd, dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("docker-compose")
        .current_dir(dir)
        .env("DOCKER_HOST", format!("unix://{}", d.sock.display()))
        .args(["--no-ansi", "-p", "lyt"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("docker-compose (apt-get install docker-compose)");
    assert!(
        out.status.success(),
        "docker-compose {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn compose_brings_a_service_up_on_its_fixed_address_and_down_frees_it() {
    let lab = lab!();
    let d = Dockerd::start(&lab);
    let _daemon = d.lanyard_daemon(&lab);
    d.busybox_image(&lab);
    d.lan_network("lan", &[]);
    let dir = lab.dir().join("compose");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("docker-compose.yml"), COMPOSE).unwrap();

    compose(&d, &dir, &["up", "-d"]);
    let id = compose(&d, &dir, &["ps", "-q", "web"]);
    assert!(!id.is_empty(), "no container for web");
    let ip = d.inspect(&id, "{{.NetworkSettings.Networks.lan.IPAddress}}");
    assert_eq!(ip, FIXED, "the service's address");
    assert!(
        lanyard_addresses(&lab)
            .iter()
            .any(|a| a.starts_with(&format!("{FIXED}/"))),
        "lanyard does not list {FIXED}: {:?}",
        lanyard_addresses(&lab)
    );
    assert!(lab.lan().ping(FIXED), "LAN router -> {FIXED}");
    assert!(lab.host().ping(FIXED), "host -> {FIXED}");

    compose(&d, &dir, &["down"]);
    let left = lanyard_addresses(&lab);
    assert!(left.is_empty(), "docker-compose down left {left:?}");
    // The external network stays, and the address is free for the next taker.
    d.ok(&["network", "inspect", "lan"]);
    d.ok(&[
        "run",
        "--rm",
        "--network",
        "lan",
        "--ip",
        FIXED,
        "bb",
        "/bin/busybox",
        "true",
    ]);
}
