//! Podman (Debian's 4.3) runs containers on lanyard networks through its CNI
//! backend: `network_backend = "cni"` in a temp containers.conf whose plugin dirs
//! hold `lanyard` and whose config dir holds a lanyard conflist, a temp `--root`
//! and `--runroot`, an image imported from the busybox-static binary. Podman runs
//! in the lab host namespace, as the host's runtime would; the container
//! namespaces are its own (`/run/netns/netns-…`), removed by `podman rm`.

use crate::harness::{lab, lanyard_bin, try_run_with_input, Lab};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The image every test runs: busybox-static's binary and nothing else.
const IMAGE: &str = "localhost/lanyard-busybox";

/// A podman with its own storage, config and CNI dirs under the lab's temp dir.
struct Podman<'a> {
    lab: &'a Lab,
    dir: PathBuf,
}

impl<'a> Podman<'a> {
    /// Sets podman up for `lab` and imports the image. A missing podman, runc or
    /// busybox-static fails the test, naming the package.
    fn new(lab: &'a Lab) -> Self {
        for (tool, package) in [
            ("/usr/bin/podman", "podman"),
            ("/usr/sbin/runc", "runc"),
            ("/bin/busybox", "busybox-static"),
        ] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install {package} (scripts/test installs it)"
            );
        }
        let dir = lab.dir().join("podman");
        for sub in [
            "bin",
            "net.d",
            "root",
            "runroot",
            "tmp",
            "rootfs/bin",
            "rootfs/tmp",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for name in ["lanyard", "lanyard-ipam"] {
            std::os::unix::fs::symlink(lanyard_bin(), dir.join("bin").join(name)).unwrap();
        }
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\n\
                 cni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{}\"\n",
                dir.join("bin").display(),
                dir.join("net.d").display()
            ),
        )
        .unwrap();
        let rootfs = dir.join("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "ip", "mkdir", "httpd", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = dir.join("image.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .unwrap();
        assert!(out.status.success(), "tar: {out:?}");
        let p = Podman { lab, dir };
        p.ok(&["import", tar.to_str().unwrap(), IMAGE]);
        p
    }

    /// `podman GLOBAL-FLAGS ARGS` in the lab host. runc, not Debian's default crun:
    /// crun 1.8 refuses a host whose cgroup v2 hierarchy has controllers beside v1
    /// ones (hybrid mode), as CI machines may have.
    fn command(&self, args: &[&str]) -> Command {
        let d = |s: &str| self.dir.join(s).to_str().unwrap().to_string();
        let mut all: Vec<String> = vec![
            "podman".into(),
            "--root".into(),
            d("root"),
            "--runroot".into(),
            d("runroot"),
            "--tmpdir".into(),
            d("tmp"),
            "--storage-driver".into(),
            "vfs".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "none".into(),
            "--runtime".into(),
            "runc".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut cmd = self.lab.host().command(&refs);
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        cmd
    }

    /// Runs podman, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_both(args).0
    }

    /// Runs podman, which must succeed; its stdout and stderr.
    fn ok_both(&self, args: &[&str]) -> (String, String) {
        let what = format!("podman {}", args.join(" "));
        let out = try_run_with_input(self.command(args), b"", &what, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("$ {what}  # {}\n{stdout}{stderr}", out.status);
        assert!(out.status.success(), "{what} failed: {stderr}");
        (stdout, stderr)
    }

    /// `podman run -d --name NAME --network NET EXTRA… IMAGE CMD…`.
    fn run(&self, name: &str, net: &str, extra: &[&str], cmd: &[&str]) {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            net,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        self.ok(&args);
    }

    /// A conflist naming lanyard network `net` as CNI network `name`.
    fn conflist(&self, name: &str, net: &str) {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [{
                "type": "lanyard",
                "network": net,
                "stateDir": self.lab.state_dir(),
                "runDir": self.lab.run_dir(),
                "capabilities": {"portMappings": true, "ips": true, "mac": true}
            }]
        });
        std::fs::write(
            self.dir.join("net.d").join(format!("{name}.conflist")),
            serde_json::to_string_pretty(&conf).unwrap(),
        )
        .unwrap();
    }

    /// The container's address on `net` and its namespace, as podman reports them.
    fn address(&self, name: &str, net: &str) -> (String, String) {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        let ns = v[0]["NetworkSettings"]["SandboxKey"]
            .as_str()
            .unwrap()
            .to_string();
        let ip = v[0]["NetworkSettings"]["Networks"][net]["IPAddress"]
            .as_str()
            .unwrap_or_else(|| panic!("no address on {net}: {v}"))
            .to_string();
        (ip, ns)
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        // Every container goes (CNI DEL, its namespace with it) before the lab does.
        let _ = self.command(&["rm", "-af", "-t", "0"]).output();
    }
}

fn endpoints(lab: &Lab) -> Vec<Value> {
    lab.lanyard_json(&["endpoint", "ls"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn podman_run_on_a_lanyard_network_gets_a_lan_address_the_router_and_host_reach() {
    let lab = lab!();
    lab.lan_network("lan", "macvlan", &[]);
    let podman = Podman::new(&lab);
    podman.conflist("lan", "lan");
    let nets = podman.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(
        nets.lines().any(|l| l == "lan lanyard"),
        "podman lists the lanyard network: {nets}"
    );
    podman.run("c1", "lan", &[], &["sleep", "300"]);
    let (ip, netns) = podman.address("c1", "lan");
    assert!(
        ip.starts_with("192.0.2.1") || ip.starts_with("192.0.2.2"),
        "{ip}"
    );
    let eps = endpoints(&lab);
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0]["netns"], netns.as_str());
    assert_eq!(eps[0]["owner"]["kind"], "cni");
    assert!(
        lab.lan().ping(&ip),
        "the LAN's router reaches the container"
    );
    assert!(
        lab.host().ping(&ip),
        "the host reaches its macvlan container"
    );
    // podman rm: the CNI DEL frees the address and the namespace goes.
    podman.ok(&["rm", "-f", "-t", "0", "c1"]);
    assert!(endpoints(&lab).is_empty());
    assert!(!Path::new(&netns).exists(), "{netns} is left");
    // The same address is free for the next container.
    podman.run("c2", "lan", &["--ip", &ip], &["sleep", "300"]);
    assert_eq!(podman.address("c2", "lan").0, ip);
    podman.ok(&["rm", "-f", "-t", "0", "c2"]);
    assert!(endpoints(&lab).is_empty());
}

#[test]
fn podman_run_publish_reaches_the_container_with_the_client_address_kept() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "10.77.0.0/24"]);
    let podman = Podman::new(&lab);
    podman.conflist("br", "br");
    podman.run(
        "web",
        "br",
        &["-p", "8080:80"],
        &[
            "sh",
            "-c",
            "mkdir -p /w && echo hello-from-podman > /w/index.html && httpd -f -vv -p 80 -h /w",
        ],
    );
    let (ip, _) = podman.address("web", "br");
    assert!(ip.starts_with("10.77.0."), "{ip}");
    // From the LAN's router to the host's published port; retried while httpd starts.
    let mut body = String::new();
    for _ in 0..50 {
        let out = lab.lan().exec(&[
            "curl",
            "-sS",
            "--max-time",
            "2",
            "http://192.0.2.2:8080/index.html",
        ]);
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        eprintln!("curl: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(body.trim(), "hello-from-podman");
    let (out, err) = podman.ok_both(&["logs", "web"]);
    let log = out + &err;
    assert!(
        log.contains("192.0.2.1]"),
        "the server sees the router's own address: {log}"
    );
    podman.ok(&["rm", "-f", "-t", "0", "web"]);
    assert!(endpoints(&lab).is_empty());
}
