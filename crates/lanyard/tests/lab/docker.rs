//! Docker's remote plugin protocol as `lanyard daemon` serves it on its plugin
//! socket (`--docker-socket`, here in the lab's run directory), and a real dockerd
//! 20.10 using lanyard as its network and IPAM driver.
//!
//! dockerd runs in the lab's host namespace and in a private mount namespace (its
//! sandbox namespaces are bind mounts there); the lanyard daemon serving it runs in
//! that same mount namespace, as both do in the host's one on a real machine.

use crate::harness::{addr, lab, Bg, Lab};
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
    let _daemon = lab.daemon(&[]);
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

/// dockerd killed between RequestAddress and CreateEndpoint (the plugin calls sent
/// by hand, no dockerd needed): the reservation holds the address until `gc` finds
/// it older than the bound (`LANYARD_RESERVATION_MAX_AGE`), then it is free.
#[test]
fn a_reservation_never_claimed_is_freed_by_gc() {
    let lab = lab!();
    let _daemon = lab.daemon(&[]);
    let sock = lab.run_dir().join("docker-plugin.sock");
    let call = |path: &str, body: serde_json::Value| -> serde_json::Value {
        let (status, out) = post(&sock, path, &body.to_string());
        assert!(status.contains("200"), "{path}: {status} {out}");
        serde_json::from_str(&out).unwrap()
    };
    let id = "5a".repeat(32);
    let pool = call(
        "/IpamDriver.RequestPool",
        serde_json::json!({"Pool": addr::LAN_V4, "SubPool": "192.0.2.128/25", "V6": false}),
    );
    let pool_id = pool["PoolID"].as_str().unwrap();
    call(
        "/IpamDriver.RequestAddress",
        serde_json::json!({"PoolID": pool_id, "Address": addr::ROUTER_V4,
            "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    );
    call(
        "/NetworkDriver.CreateNetwork",
        serde_json::json!({"NetworkID": id,
            "Options": {"com.docker.network.generic": {"parent": "eth0"}},
            "IPv4Data": [{"AddressSpace": "LanyardLocal", "Pool": addr::LAN_V4,
                          "Gateway": format!("{}/24", addr::ROUTER_V4)}]}),
    );
    let got = call(
        "/IpamDriver.RequestAddress",
        serde_json::json!({"PoolID": pool_id, "Address": ""}),
    );
    let reserved = got["Address"].as_str().unwrap().split('/').next().unwrap();
    // dockerd dies here. The address stays held, also across a gc...
    let net = format!("docker-{}", &id[..12]);
    let c1 = lab.netns("c1");
    let path = c1.path();
    let attach = [
        "attach",
        &net,
        "--netns",
        path.to_str().unwrap(),
        "--ip",
        reserved,
    ];
    let err = lab.lanyard_fails(&attach, crate::harness::exit::CONFLICT);
    assert!(err.contains("in use"), "{err}");
    lab.lanyard_ok(&["gc"]);
    lab.lanyard_fails(&attach, crate::harness::exit::CONFLICT);
    // ...until it is older than the bound: doctor names it, gc frees it.
    let mut doctor = lab.lanyard_command(&["doctor"]);
    doctor.env("LANYARD_RESERVATION_MAX_AGE", "0");
    let out = doctor.output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said} {out:?}");
    assert!(
        said.contains("reservation") && said.contains(reserved),
        "{said}"
    );
    let mut gc = lab.lanyard_command(&["gc"]);
    gc.env("LANYARD_RESERVATION_MAX_AGE", "0");
    let out = gc.output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said} {out:?}");
    assert!(
        said.contains(reserved) && said.contains("reservation"),
        "{said}"
    );
    let ep = lab.attach(&net, &c1, &["--ip", reserved]);
    assert_eq!(crate::harness::addr_of(&ep, false), reserved);
    lab.lanyard_ok(&["detach", ep["id"].as_str().unwrap()]);
    call(
        "/NetworkDriver.DeleteNetwork",
        serde_json::json!({"NetworkID": id}),
    );
}

/// A dockerd 20.10 in the lab's host namespace and a private mount namespace
/// (where `/run/docker/plugins/lanyard.sock` points at the lab's plugin socket);
/// stopped on drop, also when the test fails.
pub(crate) struct Dockerd {
    child: std::process::Child,
    pub(crate) sock: std::path::PathBuf,
}

impl Dockerd {
    pub(crate) fn start(lab: &Lab) -> Dockerd {
        let t = lab.dir().join("dk");
        std::fs::create_dir_all(&t).unwrap();
        let plug = lab.run_dir().join("docker-plugin.sock");
        let script = format!(
            "mkdir -p /run/docker/plugins && mount -t tmpfs tmpfs /run/docker/plugins && \
             ln -s {plug} /run/docker/plugins/lanyard.sock && \
             exec nsenter --net={net} dockerd --data-root {t}/data --exec-root {t}/x \
             -H unix://{t}/docker.sock --pidfile {t}/pid --bridge=none --iptables=false \
             --ip6tables=false --shutdown-timeout 1",
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

    /// `lanyard daemon` in dockerd's mount namespace (and the lab's host namespace),
    /// up and serving.
    pub(crate) fn lanyard_daemon(&self, lab: &Lab) -> Bg {
        let inner = lab.lanyard_command(&["daemon", "--interval", "60", "--gc-interval", "0"]);
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.child.id()))
            .arg("--")
            .arg(inner.get_program())
            .args(inner.get_args());
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.stdin(std::process::Stdio::null());
        let mut d = Bg::spawn(cmd, "lanyard daemon (in dockerd's mount namespace)");
        assert!(
            d.wait_for_stdout("watching nftables", Duration::from_secs(10)),
            "daemon did not start: {}",
            d.stderr()
        );
        d
    }

    /// `docker network create -d lanyard --ipam-driver lanyard` NAME on the lab's LAN
    /// (192.0.2.0/24, the router as gateway, addresses from 192.0.2.128/25, parent
    /// eth0) with EXTRA flags, which must succeed.
    pub(crate) fn lan_network(&self, name: &str, extra: &[&str]) {
        let mut args = vec![
            "network",
            "create",
            "-d",
            "lanyard",
            "--ipam-driver",
            "lanyard",
            "--subnet",
            addr::LAN_V4,
            "--gateway",
            addr::ROUTER_V4,
            "--ip-range",
            "192.0.2.128/25",
            "-o",
            "parent=eth0",
        ];
        args.extend_from_slice(extra);
        args.push(name);
        self.ok(&args);
    }

    /// `docker import`s an image `bb` holding only busybox-static.
    pub(crate) fn busybox_image(&self, lab: &Lab) {
        let root = lab.dir().join("bbroot");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("/bin/busybox (apt-get install busybox-static)");
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                "tar -C \"$1\" -c . | docker -H \"$2\" import - bb",
                "sh",
            ])
            .arg(&root)
            .arg(format!("unix://{}", self.sock.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "docker import: {out:?}");
    }

    /// Stops dockerd (and its containers) and starts it again on the same data.
    fn restart(&mut self, lab: &Lab) {
        self.stop();
        // The old value's drop finds its dockerd gone already.
        *self = Dockerd::start(lab);
    }

    /// Runs `docker`, which must succeed: its stdout, trimmed.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        match self.docker(args) {
            Ok(s) => s.trim().to_string(),
            Err(e) => panic!("docker {}: {e}", args.join(" ")),
        }
    }

    /// `docker inspect -f FORMAT NAME`.
    pub(crate) fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", "-f", format, name])
    }

    /// Runs `docker` against this dockerd: stdout, or stderr on failure.
    pub(crate) fn docker(&self, args: &[&str]) -> Result<String, String> {
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
        self.stop();
    }
}

impl Dockerd {
    fn stop(&mut self) {
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

/// A socat server on TCP `port` in the namespace at `netns`, answering
/// `peer=<client>` (the lab's socat, in the container's namespace), listening.
fn serve_tcp_in(netns: &str, port: u16) -> Bg {
    let cmd = |args: &[&str]| {
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--net={netns}")).arg("--").args(args);
        c.stdin(std::process::Stdio::null());
        c
    };
    let listen = format!("TCP4-LISTEN:{port},fork,reuseaddr");
    let bg = Bg::spawn(
        cmd(&["socat", &listen, "SYSTEM:echo peer=$SOCAT_PEERADDR"]),
        "socat in the container",
    );
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < end {
        let out = cmd(&["ss", "-Hltn"]).output().unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
            return bg;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on {port} in {netns}");
}

/// The lanyard networks' names.
fn lanyard_networks(lab: &Lab) -> Vec<String> {
    lab.lanyard_json(&["network", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The lanyard endpoints' addresses.
pub(crate) fn lanyard_addresses(lab: &Lab) -> Vec<String> {
    lab.lanyard_json(&["endpoint", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

#[test]
fn docker_macvlan_networks_through_lanyard_reach_the_lan_and_the_host() {
    let lab = lab!();
    let d = Dockerd::start(&lab);
    let mut daemon = d.lanyard_daemon(&lab);
    d.busybox_image(&lab);
    let v6 = [
        "--ipv6",
        "--subnet",
        addr::LAN_V6,
        "--gateway",
        addr::ROUTER_V6,
    ];
    d.lan_network("lan", &v6);
    let nid = d.ok(&["network", "inspect", "-f", "{{.Id}}", "lan"]);
    assert_eq!(lanyard_networks(&lab), [format!("docker-{}", &nid[..12])]);
    // One engine decides: the CLI may not overlap Docker's network on its parent.
    let out = lab.lanyard(&[
        "network",
        "create",
        "clash",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0",
        "--subnet",
        "192.0.2.0/25",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("overlap"), "{err}");

    // An address from --ip-range; the LAN router and the host itself reach it.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "ca",
        "--network",
        "lan",
        "bb",
        "/bin/busybox",
        "sleep",
        "600",
    ]);
    let ip_a = d.inspect("ca", "{{.NetworkSettings.Networks.lan.IPAddress}}");
    let last: u8 = ip_a.rsplit('.').next().unwrap().parse().unwrap();
    assert!(ip_a.starts_with("192.0.2.") && last >= 128, "{ip_a}");
    let mac_a = d.inspect("ca", "{{.NetworkSettings.Networks.lan.MacAddress}}");
    assert!(lab.lan().ping(&ip_a), "LAN router -> {ip_a}");
    assert!(
        lab.host().ping(&ip_a),
        "host -> {ip_a} (Docker's own macvlan cannot)"
    );
    let ip6_a = d.inspect("ca", "{{.NetworkSettings.Networks.lan.GlobalIPv6Address}}");
    assert!(ip6_a.starts_with("2001:db8:1::"), "{ip6_a}");
    assert!(lab.lan().ping(&ip6_a), "LAN router -> {ip6_a}");
    let link = d.ok(&[
        "exec",
        "ca",
        "/bin/busybox",
        "ip",
        "-o",
        "link",
        "show",
        "eth0",
    ]);
    assert!(link.contains(&mac_a), "docker inspect says {mac_a}: {link}");
    // doctor finds nothing wrong with an endpoint dockerd moved into its container.
    let out = lab.lanyard(&["doctor"]);
    assert!(
        out.status.success(),
        "doctor: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let routes = d.ok(&["exec", "ca", "/bin/busybox", "ip", "route"]);
    assert!(routes.contains("default via 192.0.2.1"), "{routes}");

    // docker run --ip; a second network on the same parent, connected and
    // disconnected on a running container.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "cb",
        "--network",
        "lan",
        "--ip",
        "192.0.2.200",
        "bb",
        "/bin/busybox",
        "sleep",
        "600",
    ]);
    assert_eq!(
        d.inspect("cb", "{{.NetworkSettings.Networks.lan.IPAddress}}"),
        "192.0.2.200"
    );
    assert!(lab.lan().ping("192.0.2.200"));
    d.ok(&[
        "network",
        "create",
        "-d",
        "lanyard",
        "--ipam-driver",
        "lanyard",
        "--subnet",
        addr::LAN2_V4,
        "--gateway",
        addr::ROUTER2_V4,
        "-o",
        "parent=eth0",
        "lan2",
    ]);
    d.ok(&["network", "connect", "lan2", "ca"]);
    let ip_a2 = d.inspect("ca", "{{.NetworkSettings.Networks.lan2.IPAddress}}");
    assert!(ip_a2.starts_with("198.51.100."), "{ip_a2}");
    assert!(lab.lan().ping(&ip_a2), "LAN router -> {ip_a2}");
    d.ok(&["network", "disconnect", "lan2", "ca"]);
    assert!(!lanyard_addresses(&lab)
        .iter()
        .any(|a| a.starts_with(&ip_a2)));

    // The daemon killed mid-run and started again: nothing lost, Docker goes on.
    daemon.kill();
    let _daemon = d.lanyard_daemon(&lab);
    assert!(lab.lan().ping(&ip_a), "after the daemon's restart");
    d.ok(&[
        "run",
        "--rm",
        "--network",
        "lan",
        "bb",
        "/bin/busybox",
        "true",
    ]);

    // docker rm frees the addresses; docker network rm removes the networks.
    d.ok(&["rm", "-f", "ca", "cb"]);
    let left = lanyard_addresses(&lab);
    assert!(left.is_empty(), "{left:?}");
    d.ok(&["network", "rm", "lan", "lan2"]);
    assert!(lanyard_networks(&lab).is_empty());

    // A bad option: a readable error, and nothing made.
    let err = d
        .docker(&[
            "network",
            "create",
            "-d",
            "lanyard",
            "-o",
            "colour=blue",
            "x",
        ])
        .unwrap_err();
    assert!(
        err.contains("colour") && err.contains("unknown option"),
        "{err}"
    );
    assert!(!d
        .ok(&["network", "ls", "--format", "{{.Name}}"])
        .lines()
        .any(|l| l == "x"));
    assert!(lanyard_networks(&lab).is_empty());
}

#[test]
fn a_published_port_on_a_lanyard_bridge_network_keeps_the_client_address() {
    let lab = lab!();
    let d = Dockerd::start(&lab);
    let _daemon = d.lanyard_daemon(&lab);
    d.busybox_image(&lab);
    d.ok(&[
        "network",
        "create",
        "-d",
        "lanyard",
        "--ipam-driver",
        "lanyard",
        "--subnet",
        "203.0.113.0/24",
        "br",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "br",
        "-p",
        "8080:80",
        "bb",
        "/bin/busybox",
        "sleep",
        "600",
    ]);
    let pid = d.inspect("web", "{{.State.Pid}}");
    let _server = serve_tcp_in(&format!("/proc/{pid}/ns/net"), 80);
    let peer = crate::firewall::tcp_peer(&lab.lan(), addr::HOST_V4, 8080);
    assert_eq!(
        peer.map(|p| p.to_string()).as_deref(),
        Some(addr::ROUTER_V4),
        "the server sees the LAN client's own address"
    );
    d.ok(&["rm", "-f", "web"]);
    assert_eq!(
        crate::firewall::tcp_peer(&lab.lan(), addr::HOST_V4, 8080),
        None
    );
    d.ok(&["network", "rm", "br"]);
}

#[test]
fn parallel_docker_runs_and_a_dockerd_restart_keep_networking() {
    let lab = lab!();
    let mut d = Dockerd::start(&lab);
    let _daemon = d.lanyard_daemon(&lab);
    d.busybox_image(&lab);
    d.lan_network("lan", &[]);
    // dockerd sends these at once; each gets its own address.
    let names: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    std::thread::scope(|s| {
        for n in &names {
            let d = &d;
            s.spawn(move || {
                d.ok(&[
                    "run",
                    "-d",
                    "--name",
                    n,
                    "--network",
                    "lan",
                    "bb",
                    "/bin/busybox",
                    "sleep",
                    "600",
                ])
            });
        }
    });
    let ips: std::collections::BTreeSet<String> = names
        .iter()
        .map(|n| d.inspect(n, "{{.NetworkSettings.Networks.lan.IPAddress}}"))
        .collect();
    assert_eq!(ips.len(), names.len(), "{ips:?}");
    assert_eq!(lanyard_addresses(&lab).len(), names.len());

    // The containers stop (killed: busybox as PID 1 ignores SIGTERM, and dockerd
    // would wait for it), dockerd stops and starts again; a container started again
    // has its network back, and nothing is left of the stopped ones.
    let mut kill = vec!["kill"];
    kill.extend(names.iter().map(String::as_str));
    d.ok(&kill);
    d.restart(&lab);
    d.ok(&["start", "p0"]);
    let ip = d.inspect("p0", "{{.NetworkSettings.Networks.lan.IPAddress}}");
    assert!(
        lab.lan().ping(&ip),
        "LAN router -> {ip} after dockerd's restart"
    );
    assert!(lab.host().ping(&ip), "host -> {ip} after dockerd's restart");
    assert_eq!(
        lanyard_addresses(&lab).len(),
        1,
        "{:?}",
        lanyard_addresses(&lab)
    );
    let mut all = vec!["rm", "-f"];
    all.extend(names.iter().map(String::as_str));
    d.ok(&all);
    d.ok(&["network", "rm", "lan"]);
    assert!(lanyard_networks(&lab).is_empty());
}
