//! The lab: throwaway network namespaces in which integration tests run the real
//! `lanyard` binary, and which vanish again when the test ends (also on panic).
//!
//! ```text
//!  lyt-<id>-lan (the LAN's router)              lyt-<id>-host (where lanyard runs)
//!  lan0  192.0.2.1/24     2001:db8:1::1/64  <-- veth -->  eth0  192.0.2.2/24  2001:db8:1::2/64
//!        198.51.100.1/24  2001:db8:2::1/64                      default via 192.0.2.1, 2001:db8:1::1
//!  forwarding on                                lyt-<id>-<name>: container namespaces (Lab::netns)
//! ```
//!
//! `<id>` is `<pid>t<n>`: unique per test process and lab, and how [`cleanup_stale`]
//! recognises namespaces left behind by a test process that died. Nothing here touches
//! the namespace the tests are started in; every command runs inside a `lyt-` namespace
//! (`ip -n …` or `nsenter --net=…`).
//!
//! Tests that need a kernel feature the host may lack call [`Lab::require_kernel`] and
//! are named `vm_<feature>_…`: `scripts/test` runs the others on the host
//! (`--skip vm_`) and these in a VM with a stock Debian kernel (`scripts/vm-test`).
//! The VM emulates its CPU when KVM is unusable, where every exec costs tens of
//! milliseconds: the harness batches `ip` commands and finds processes itself.

// Each test module uses a different part of the harness.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Names another lanyard binary to test instead of the one cargo built with the
/// tests (scripts/test sets it to the static release binary that ships).
pub const LANYARD_BIN_ENV: &str = "LANYARD_TEST_BIN";

/// The lanyard binary under test: `$LANYARD_TEST_BIN`, else cargo's build.
pub fn lanyard_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var(LANYARD_BIN_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_lanyard").to_string())
    })
}

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Every name the lab gives a namespace starts with this.
pub const PREFIX: &str = "lyt-";

/// How long one lanyard or `ip` command may take before the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Set (to anything but `0`) by `scripts/test` and the VM: a lab that cannot be built
/// is a failure, not a skip.
pub const REQUIRED_ENV: &str = "LANYARD_LAB_REQUIRED";

/// The lab's fixed addresses.
pub mod addr {
    /// The router's address on the LAN (`lan0` in `lyt-<id>-lan`).
    pub const ROUTER_V4: &str = "192.0.2.1";
    /// The router's IPv6 address on the LAN.
    pub const ROUTER_V6: &str = "2001:db8:1::1";
    /// The host's address (`eth0` in `lyt-<id>-host`).
    pub const HOST_V4: &str = "192.0.2.2";
    /// The host's IPv6 address.
    pub const HOST_V6: &str = "2001:db8:1::2";
    /// The LAN the host is on.
    pub const LAN_V4: &str = "192.0.2.0/24";
    /// The LAN's IPv6 prefix.
    pub const LAN_V6: &str = "2001:db8:1::/64";
    /// The router's address in the LAN's second subnet (same wire, for multi-subnet tests).
    pub const ROUTER2_V4: &str = "198.51.100.1";
    /// The router's IPv6 address in the second subnet.
    pub const ROUTER2_V6: &str = "2001:db8:2::1";
    /// The LAN's second IPv4 subnet (the host has no address in it).
    pub const LAN2_V4: &str = "198.51.100.0/24";
    /// The LAN's second IPv6 prefix.
    pub const LAN2_V6: &str = "2001:db8:2::/64";
}

/// lanyard's documented exit codes.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Any other error.
    pub const ERROR: i32 = 1;
    /// Usage error or invalid input.
    pub const USAGE: i32 = 2;
    /// Conflict (duplicate name, overlapping subnet, address taken).
    pub const CONFLICT: i32 = 3;
    /// Not found.
    pub const NOT_FOUND: i32 = 4;
    /// The running kernel lacks a feature.
    pub const UNSUPPORTED: i32 = 5;
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(1);

/// `let lab = lab!();` in a test: [`Lab::new`] named after the test function, or
/// `return` (the test is skipped, with the reason printed) where no lab can be built.
/// `lab!("name")` names it explicitly.
macro_rules! lab {
    () => {{
        fn here() {}
        // "lab::smoke::some_test::here" -> "smoke::some_test", as libtest names it
        let name = std::any::type_name_of_val(&here).replace("::{{closure}}", "");
        let name = name.strip_suffix("::here").unwrap_or(&name);
        let name = name.strip_prefix("lab::").unwrap_or(name);
        match $crate::harness::Lab::new(name) {
            Some(lab) => lab,
            None => return,
        }
    }};
    ($name:expr) => {
        match $crate::harness::Lab::new($name) {
            Some(lab) => lab,
            None => return,
        }
    };
}
pub(crate) use lab;

/// A lab: the LAN, the host, container namespaces, and a temp dir holding lanyard's
/// state dir, run dir and config file. Dropping it removes all of them.
pub struct Lab {
    test: String,
    id: String,
    namespaces: Mutex<Vec<String>>,
    dir: Option<tempfile::TempDir>,
}

impl Lab {
    /// Builds a lab for `test` (the test's name, for messages). `None` when this machine
    /// cannot have one (not root, no network namespaces); the reason is printed. With
    /// `LANYARD_LAB_REQUIRED` set, as in CI and the VM, that panics instead.
    pub fn new(test: &str) -> Option<Lab> {
        if let Err(why) = lab_available() {
            if required() {
                panic!("{test}: cannot build a lab: {why} ({REQUIRED_ENV} is set)");
            }
            // Straight to stderr: libtest would swallow eprintln! of a passing test.
            let _ = writeln!(std::io::stderr(), "skipped {test}: {why}");
            return None;
        }
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}t{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{id}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("{test}: cannot make a temp dir: {e}"));
        for sub in ["state", "run"] {
            std::fs::create_dir(dir.path().join(sub))
                .unwrap_or_else(|e| panic!("{test}: cannot make {sub} dir: {e}"));
        }
        let lab = Lab {
            test: test.to_string(),
            id,
            namespaces: Mutex::new(Vec::new()),
            dir: Some(dir),
        };
        lab.build(); // panics on failure; Drop then removes what was made
        Some(lab)
    }

    fn build(&self) {
        let lan = self.add_namespace("lan");
        let host = self.add_namespace("host");
        let peer = format!(
            "link add lan0 type veth peer name eth0 netns {}",
            host.name()
        );
        lan.ip_batch(&[
            "link set lo up",
            &peer,
            "link set lan0 up",
            "addr add 192.0.2.1/24 dev lan0",
            "addr add 198.51.100.1/24 dev lan0",
            "addr add 2001:db8:1::1/64 dev lan0 nodad",
            "addr add 2001:db8:2::1/64 dev lan0 nodad",
        ]);
        lan.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ]);
        host.ip_batch(&[
            "link set lo up",
            "link set eth0 up",
            "addr add 192.0.2.2/24 dev eth0",
            "addr add 2001:db8:1::2/64 dev eth0 nodad",
            "route add default via 192.0.2.1",
            "route add default via 2001:db8:1::1",
        ]);
    }

    /// Creates namespace `lyt-<id>-<role>` (lo still down) and records it for Drop.
    fn add_namespace(&self, role: &str) -> Ns {
        let ok = !role.is_empty()
            && role.len() <= 20
            && role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        assert!(ok, "namespace role {role:?}: use 1-20 of a-z, 0-9 and -");
        let ns = Ns {
            name: format!("{PREFIX}{}-{role}", self.id),
        };
        let mut names = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
        assert!(!names.contains(&ns.name), "{} exists in this lab", ns.name);
        must(
            ip(&["netns", "add", &ns.name]),
            &format!("ip netns add {}", ns.name),
        );
        names.push(ns.name.clone());
        ns
    }

    /// This lab's id (`<pid>t<n>`), part of every namespace name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The name of the test the lab was built for.
    pub fn test(&self) -> &str {
        &self.test
    }

    /// The LAN namespace: the router, `lan0`.
    pub fn lan(&self) -> Ns {
        Ns {
            name: format!("{PREFIX}{}-lan", self.id),
        }
    }

    /// The host namespace lanyard runs in: `eth0` is its uplink to the LAN.
    pub fn host(&self) -> Ns {
        Ns {
            name: format!("{PREFIX}{}-host", self.id),
        }
    }

    /// Makes a container namespace `lyt-<id>-<name>` (lo up), removed with the lab.
    pub fn netns(&self, name: &str) -> Ns {
        assert!(!matches!(name, "lan" | "host"), "{name:?} is the lab's own");
        let ns = self.add_namespace(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Makes `n` container namespaces `lyt-<id>-<prefix><i>` with one `ip` process
    /// (lo left down), removed with the lab.
    pub fn netns_many(&self, prefix: &str, n: usize) -> Vec<Ns> {
        let all: Vec<Ns> = (0..n)
            .map(|i| Ns {
                name: format!("{PREFIX}{}-{prefix}{i}", self.id),
            })
            .collect();
        let script: String = all
            .iter()
            .map(|ns| format!("netns add {}\n", ns.name))
            .collect();
        // Registered first: a batch that stops half-way leaves none behind.
        self.namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(all.iter().map(|ns| ns.name.clone()));
        let out = try_run_with_input(
            ip(&["-batch", "-"]),
            script.as_bytes(),
            "ip netns add",
            COMMAND_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "ip netns add: {}", describe(&out));
        all
    }

    /// Names of every namespace this lab made so far.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The lab's temp dir (holds `state/`, `run/`, `config.toml`).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }

    /// lanyard's `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// lanyard's `--run-dir`.
    pub fn run_dir(&self) -> PathBuf {
        self.dir().join("run")
    }

    /// lanyard's `--config`; the file does not exist (lanyard's defaults) until
    /// [`Lab::write_config`].
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("config.toml")
    }

    /// Writes lanyard's config file.
    pub fn write_config(&self, toml: &str) {
        std::fs::write(self.config_path(), toml).unwrap_or_else(|e| panic!("writing config: {e}"));
    }

    /// `nsenter --net=<host> lanyard --state-dir … --run-dir … --config … ARGS`, not yet
    /// started (stdin /dev/null). For cases the helpers below do not cover.
    pub fn lanyard_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.host().command(&[lanyard_bin()]);
        cmd.arg("--state-dir").arg(self.state_dir());
        cmd.arg("--run-dir").arg(self.run_dir());
        cmd.arg("--config").arg(self.config_path());
        cmd.args(args);
        cmd.env("LANYARD_STATE_DIR", self.state_dir())
            .env("LANYARD_RUN_DIR", self.run_dir())
            .env("LANYARD_CONFIG", self.config_path())
            .env(
                "LANYARD_DOCKER_SOCKET",
                self.run_dir().join("docker-plugin.sock"),
            )
            .env("RUST_BACKTRACE", "1");
        cmd
    }

    /// Runs lanyard in the host namespace and returns whatever happened.
    pub fn lanyard(&self, args: &[&str]) -> Output {
        let what = format!("lanyard {}", args.join(" "));
        let out = run(self.lanyard_command(args), &what, COMMAND_TIMEOUT);
        // Shown by libtest when the test fails.
        eprintln!(
            "$ {what}  # exit {}\n{}",
            code(&out.status),
            text(&out.stderr)
        );
        out
    }

    /// Runs lanyard, which must succeed; returns its stdout.
    pub fn lanyard_ok(&self, args: &[&str]) -> String {
        let out = self.lanyard(args);
        if !out.status.success() {
            panic!("lanyard {} failed: {}", args.join(" "), describe(&out));
        }
        text(&out.stdout)
    }

    /// Runs lanyard (adding `--json` unless given), which must succeed; parses stdout.
    pub fn lanyard_json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        if !args.contains(&"--json") {
            args.push("--json");
        }
        let stdout = self.lanyard_ok(&args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "lanyard {}: stdout is not JSON ({e}):\n{stdout}",
                args.join(" ")
            )
        })
    }

    /// Runs lanyard, which must exit with `code` (see [`exit`]); returns its stderr.
    pub fn lanyard_fails(&self, args: &[&str], code: i32) -> String {
        let out = self.lanyard(args);
        if out.status.code() != Some(code) {
            panic!(
                "lanyard {}: wanted exit {code}, got {}",
                args.join(" "),
                describe(&out)
            );
        }
        text(&out.stderr)
    }

    /// Starts lanyard without waiting (e.g. `run --network N -- cmd`); killed on drop.
    pub fn lanyard_spawn(&self, args: &[&str]) -> Bg {
        let what = format!("lanyard {}", args.join(" "));
        Bg::spawn(self.lanyard_command(args), &what)
    }

    /// `lanyard daemon ARGS…` (no ARGS: a check every 60 s, no gc), up and serving:
    /// started, and panics with its stderr unless it says so within 10 s.
    pub fn daemon(&self, args: &[&str]) -> Bg {
        let mut all = vec!["daemon"];
        if args.is_empty() {
            all.extend(["--interval", "60", "--gc-interval", "0"]);
        }
        all.extend_from_slice(args);
        let mut d = self.lanyard_spawn(&all);
        if !d.wait_for_stdout("watching nftables", Duration::from_secs(10)) {
            panic!("lanyard {} did not start: {}", all.join(" "), d.stderr());
        }
        d
    }

    /// `lanyard network create NAME -d DRIVER -o parent=eth0 EXTRA…` on the lab's LAN
    /// (192.0.2.0/24, the router as gateway, addresses from 192.0.2.128/25), which
    /// must succeed: the network most tests start from.
    pub fn lan_network(&self, name: &str, driver: &str, extra: &[&str]) {
        let mut args = vec![
            "network",
            "create",
            name,
            "-d",
            driver,
            "-o",
            "parent=eth0",
            "--subnet",
            addr::LAN_V4,
            "--gateway",
            addr::ROUTER_V4,
            "--ip-range",
            "192.0.2.128/25",
        ];
        args.extend_from_slice(extra);
        self.lanyard_ok(&args);
    }

    /// `lanyard attach NET --netns <ns> --json EXTRA…`, which must succeed; the
    /// endpoint's JSON.
    pub fn attach(&self, net: &str, ns: &Ns, extra: &[&str]) -> serde_json::Value {
        let path = ns.path();
        let path = path
            .to_str()
            .unwrap_or_else(|| panic!("netns path is not UTF-8"));
        let mut args = vec!["attach", net, "--netns", path, "--json"];
        args.extend_from_slice(extra);
        self.lanyard_json(&args)
    }

    /// Panics unless the running kernel can do `feature` (`ipvlan`, `vlan`, `dummy`,
    /// `macvlan`, `bridge`, `nftables`), probed in the lab's host namespace. Tests that
    /// call this are named `vm_<feature>_…` and run in the kernel VM.
    pub fn require_kernel(&self, feature: &str) {
        const DEL: &str = "ip link del lytprobe0";
        let (probe, undo) = match feature {
            "ipvlan" => ("ip link add lytprobe0 link eth0 type ipvlan mode l2", DEL),
            "vlan" => ("ip link add lytprobe0 link eth0 type vlan id 4000", DEL),
            "dummy" => ("ip link add lytprobe0 type dummy", DEL),
            "macvlan" => ("ip link add lytprobe0 link eth0 type macvlan mode bridge", DEL),
            "bridge" => ("ip link add lytprobe0 type bridge", DEL),
            "nftables" => ("nft add table inet lytprobe", "nft delete table inet lytprobe"),
            other => panic!(
                "require_kernel({other:?}): known are ipvlan, vlan, dummy, macvlan, bridge, nftables"
            ),
        };
        if let Some(test) = std::thread::current().name().filter(|n| *n != "main") {
            let fn_name = test.rsplit("::").next().unwrap_or(test);
            assert!(
                fn_name.starts_with("vm_"),
                "{test} needs {feature}: name it vm_{feature}_… so that scripts/vm-test \
                 runs it in the kernel VM"
            );
        }
        let host = self.host();
        let out = host.exec(&probe.split(' ').collect::<Vec<_>>());
        if !out.status.success() {
            panic!(
                "needs {feature}: this test runs in the kernel VM (scripts/vm-test); \
                 kernel {} here said: {}",
                kernel_release(),
                text(&out.stderr).trim()
            );
        }
        host.ok(&undo.split(' ').collect::<Vec<_>>());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|p| p.into_inner()));
        let mut errors = remove_namespaces(&names);
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                errors.push(format!("removing {}: {e}", path.display()));
            }
        }
        if !errors.is_empty() {
            // Never panic in Drop: during a test's panic that would abort the process.
            let _ = writeln!(
                std::io::stderr(),
                "lab {} ({}): cleanup errors:\n  {}",
                self.id,
                self.test,
                errors.join("\n  ")
            );
        }
    }
}

/// A network namespace of the lab (a name under /run/netns). Cheap to clone; the
/// [`Lab`] owns the namespace itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ns {
    name: String,
}

impl Ns {
    /// `lyt-<id>-<role>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/lyt-<id>-<role>`, what lanyard takes as a container's netns.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// `nsenter --net=<path> -- ARGS`, not yet started (stdin /dev/null; stdout and
    /// stderr as `Command` has them: piped by `output()`, inherited by `spawn()`).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// The namespace's inode number (what `/proc/<pid>/ns/net` of its processes has).
    pub fn inode(&self) -> Option<u64> {
        std::fs::metadata(self.path()).ok().map(|m| m.ino())
    }

    /// Runs ARGS in this namespace and returns whatever happened.
    pub fn exec(&self, args: &[&str]) -> Output {
        let what = format!("[{}] {}", self.name, args.join(" "));
        run(self.command(args), &what, COMMAND_TIMEOUT)
    }

    /// Runs ARGS in this namespace, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        if !out.status.success() {
            panic!(
                "[{}] {} failed: {}",
                self.name,
                args.join(" "),
                describe(&out)
            );
        }
        text(&out.stdout)
    }

    /// `ip -n <ns> ARGS`, which must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut cmd = ip(&["-n", &self.name]);
        cmd.args(args);
        must(cmd, &format!("ip -n {} {}", self.name, args.join(" ")))
    }

    /// `ip -n <ns> -batch -`: one `ip` process for several commands (each without the
    /// leading `ip`); the first that fails fails the test.
    pub fn ip_batch(&self, lines: &[&str]) {
        let what = format!("ip -n {} -batch: {}", self.name, lines.join("; "));
        let input = lines.join("\n") + "\n";
        let cmd = ip(&["-n", &self.name, "-batch", "-"]);
        let out = try_run_with_input(cmd, input.as_bytes(), &what, COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        if !out.status.success() {
            panic!("{what} failed: {}", describe(&out));
        }
    }

    /// `ip -j ARGS` parsed, e.g. `ns.ip_json(&["addr", "show", "dev", "eth0"])`.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let out = self.ip(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ip -j {}: not JSON ({e}): {out}", args.join(" ")))
    }

    /// Names of the links in this namespace.
    pub fn links(&self) -> BTreeSet<String> {
        let v = self.ip_json(&["link", "show"]);
        let list = v.as_array().map(Vec::as_slice).unwrap_or_default();
        list.iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// Sets a sysctl of this namespace (`net.…` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.sysctls(&[(key, value)]);
    }

    /// Sets several sysctls of this namespace with one process.
    pub fn sysctls(&self, settings: &[(&str, &str)]) {
        // sh -c 'printf "%s\n" "$2" > "$1" && …' sh PATH VALUE PATH VALUE …
        let mut script = String::from("set -e");
        let mut args = vec!["sh".to_string()];
        for (i, (key, value)) in settings.iter().enumerate() {
            script += &format!("; printf '%s\\n' \"${}\" > \"${}\"", 2 * i + 2, 2 * i + 1);
            args.push(format!("/proc/sys/{}", key.replace('.', "/")));
            args.push(value.to_string());
        }
        let mut argv = vec!["sh", "-c", &script];
        argv.extend(args.iter().map(String::as_str));
        self.ok(&argv);
    }

    /// One ping (`-c1 -W1`), IPv4 or IPv6: did it get an answer?
    pub fn ping(&self, addr: &str) -> bool {
        self.exec(&["ping", "-n", "-c1", "-W1", addr])
            .status
            .success()
    }

    /// Pings until an answer comes or `within` is over (for paths that need to settle).
    pub fn ping_within(&self, addr: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        loop {
            if self.ping(addr) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
        }
    }

    /// Starts ARGS in this namespace without waiting; killed on drop.
    pub fn spawn(&self, args: &[&str]) -> Bg {
        let what = format!("[{}] {}", self.name, args.join(" "));
        Bg::spawn(self.command(args), &what)
    }
}

/// A background process with its stdout and stderr collected; killed when dropped.
pub struct Bg {
    child: Child,
    what: String,
    stdout: Collector,
    stderr: Collector,
}

impl Bg {
    /// Starts `cmd` with stdout and stderr piped and collected.
    pub fn spawn(mut cmd: Command, what: &str) -> Bg {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = Collector::start(child.stdout.take());
        let stderr = Collector::start(child.stderr.take());
        Bg {
            child,
            what: what.to_string(),
            stdout,
            stderr,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child itself (e.g. to write to a piped stdin set up via `lanyard_command`).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits until stdout contains `needle` (true) or the process ends or `within`
    /// passes (false).
    pub fn wait_for_stdout(&mut self, needle: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        let mut nap = Duration::from_millis(1);
        loop {
            if self.stdout().contains(needle) {
                return true;
            }
            if !self.is_running() || Instant::now() >= end {
                return self.stdout().contains(needle);
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(20));
        }
    }

    /// Waits up to 10 s for `path` to exist (the pid file a server writes once it is
    /// ready); else panics: "`what` did not start" and its stderr.
    pub fn wait_for_file(&self, path: &Path, what: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(
                Instant::now() < end,
                "{what} did not start: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit (at most `within`; then kills it and panics) and returns all
    /// it printed.
    pub fn finish(mut self, within: Duration) -> Output {
        match wait_until(&mut self.child, Instant::now() + within) {
            Some(status) => Output {
                status,
                stdout: self.stdout.finish(),
                stderr: self.stderr.finish(),
            },
            None => {
                self.kill();
                panic!(
                    "{} still running after {within:?}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
        }
    }

    /// Sends SIGKILL (if still running) and reaps it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a pipe in a thread into a shared buffer, so a full pipe never blocks the
/// child and what came so far can be looked at any time.
struct Collector {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Option<Receiver<()>>,
}

impl Collector {
    fn start<R: Read + Send + 'static>(pipe: Option<R>) -> Collector {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let Some(mut pipe) = pipe else {
            return Collector { buf, done: None };
        };
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&buf);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let mut buf = sink.lock().unwrap_or_else(|p| p.into_inner());
                buf.extend_from_slice(&chunk[..n]);
            }
            let _ = tx.send(());
        });
        Collector {
            buf,
            done: Some(rx),
        }
    }

    fn text(&self) -> String {
        text(&self.buf.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Everything, once the pipe closed; after the process ended a grandchild may still
    /// hold it open, so wait only briefly and take what came.
    fn finish(&mut self) -> Vec<u8> {
        if let Some(done) = self.done.take() {
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Waits for `child` until `deadline`; None if it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    let mut nap = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => {}
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(10));
    }
}

/// Runs `cmd` (stdin null) to the end, at most `timeout`; panics if it cannot start or
/// does not finish.
fn run(cmd: Command, what: &str, timeout: Duration) -> Output {
    try_run_with_input(cmd, b"", what, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` with `input` on stdin (none: /dev/null) to the end, at most `timeout`.
pub fn try_run_with_input(
    mut cmd: Command,
    input: &[u8],
    what: &str,
    timeout: Duration,
) -> Result<Output, String> {
    let stdin = if input.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    };
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    if let Some(mut pipe) = child.stdin.take() {
        let input = input.to_vec();
        // A thread, so a child that does not read cannot block us; EPIPE is its business.
        std::thread::spawn(move || pipe.write_all(&input));
    }
    let mut stdout = Collector::start(child.stdout.take());
    let mut stderr = Collector::start(child.stderr.take());
    match wait_until(&mut child, Instant::now() + timeout) {
        Some(status) => Ok(Output {
            status,
            stdout: stdout.finish(),
            stderr: stderr.finish(),
        }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "{what}: no exit after {timeout:?}, killed\nstdout:\n{}\nstderr:\n{}",
                stdout.text(),
                stderr.text()
            ))
        }
    }
}

/// Runs a command that must succeed; returns stdout.
fn must(cmd: Command, what: &str) -> String {
    let out = run(cmd, what, COMMAND_TIMEOUT);
    if !out.status.success() {
        panic!("{what} failed: {}", describe(&out));
    }
    text(&out.stdout)
}

fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn code(status: &ExitStatus) -> String {
    status
        .code()
        .map_or_else(|| format!("{status}"), |c| c.to_string())
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        code(&out.status),
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn required() -> bool {
    std::env::var(REQUIRED_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether labs can be built here, checked once per process; also removes what dead
/// test processes left behind.
fn lab_available() -> Result<(), String> {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    AVAILABLE.get_or_init(probe_lab).clone()
}

fn probe_lab() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "needs root (network namespaces); run as root, e.g. `sudo -E cargo test`".into(),
        );
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("ping", "iputils-ping"),
    ] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Err(format!("needs `{tool}` (apt-get install {package})"));
        }
    }
    cleanup_stale();
    let probe = format!("{PREFIX}{}t0-probe", std::process::id());
    let made = try_run_with_input(
        ip(&["netns", "add", &probe]),
        b"",
        "ip netns add",
        COMMAND_TIMEOUT,
    )?;
    if !made.status.success() {
        let why = text(&made.stderr);
        return Err(format!("cannot create network namespaces: {}", why.trim()));
    }
    match remove_namespaces(&[probe]).pop() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Kills (SIGKILL) every process in one of the namespaces `names` (anything running
/// in a lab namespace is the lab's), then deletes them all, going on past failures.
/// Returns the errors.
fn remove_namespaces(names: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    let names: Vec<&String> = names.iter().filter(|n| n.starts_with(PREFIX)).collect();
    if names.is_empty() {
        return errors;
    }
    let inodes: BTreeSet<u64> = names
        .iter()
        .filter_map(|n| std::fs::metadata(Path::new(NETNS_DIR).join(n)).ok())
        .map(|m| m.ino())
        .collect();
    kill_all_in(&inodes);
    let script: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
    let cmd = ip(&["-force", "-batch", "-"]);
    if let Err(e) = try_run_with_input(cmd, script.as_bytes(), "ip netns del", COMMAND_TIMEOUT) {
        errors.push(e);
    }
    // A process that opened a namespace file just before it went (nsenter between
    // open and setns) still lives in it, nameless: a second pass finds it.
    kill_all_in(&inodes);
    for name in names {
        if Path::new(NETNS_DIR).join(name).exists() {
            errors.push(format!("namespace {name} could not be deleted"));
        }
    }
    errors
}

/// SIGKILLs every process in one of these namespaces (all of them the lab's).
fn kill_all_in(inodes: &BTreeSet<u64>) {
    for pid in pids_in(inodes) {
        // SAFETY: plain syscall; the pid's network namespace is one of the lab's.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Processes whose network namespace has one of these inode numbers (what
/// `ip netns pids` does, without a process per namespace).
fn pids_in(inodes: &BTreeSet<u64>) -> Vec<i32> {
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    proc.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| inodes.contains(&m.ino()))
        })
        .collect()
}

/// The pid in a lab name `lyt-<pid>t<n>-…`, None for names not made by this harness.
fn owner_pid(name: &str) -> Option<u32> {
    let id = name.strip_prefix(PREFIX)?.split('-').next()?;
    let (pid, n) = id.split_once('t')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes namespaces and temp dirs named `lyt-<pid>t<n>-…` whose process `<pid>` is
/// gone (a test run killed before its labs' Drop ran). Others' and live ones stay.
pub fn cleanup_stale() {
    let dead = |name: &str| {
        owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let stale = |dir: &Path| -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| dead(n))
            .collect()
    };
    for e in remove_namespaces(&stale(Path::new(NETNS_DIR))) {
        let _ = writeln!(std::io::stderr(), "cleanup_stale: {e}");
    }
    let tmp = std::env::temp_dir();
    for name in stale(&tmp) {
        let _ = std::fs::remove_dir_all(tmp.join(name));
    }
}

/// The endpoint's first IPv4 (or IPv6) address, without prefix length.
pub fn addr_of(ep: &serde_json::Value, v6: bool) -> String {
    ep["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.split('/').next().map(str::to_string))
        .find(|a| a.contains(':') == v6)
        .unwrap_or_else(|| panic!("no IPv{} address in {ep}", if v6 { 6 } else { 4 }))
}
