//! lanyard as a CNI plugin, run the way libcni runs plugins: a conflist, the
//! protocol's environment, the request config on stdin, `CNI_PATH` lookup, each
//! plugin's result as the next one's `prevResult`, the final result cached for
//! CHECK and DEL, DEL in reverse order. Debian's reference plugins (`tuning`,
//! `portmap`, `macvlan` from containernetworking-plugins, /usr/lib/cni) run beside
//! lanyard, all in the lab host namespace as a runtime would run them.

use crate::harness::{lab, lanyard_bin, try_run_with_input, Lab, Ns};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where Debian installs the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// One attachment: (container ID, namespace, ifname) and the runtime's capability
/// arguments (`portMappings`, `ips`, `mac`), given to plugins that declare them.
pub struct Att<'a> {
    /// `CNI_CONTAINERID`.
    pub id: &'a str,
    /// `CNI_NETNS`.
    pub ns: &'a Ns,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// Capability arguments.
    pub caps: Value,
}

impl<'a> Att<'a> {
    /// `eth0` of `ns`, no capability arguments.
    pub fn new(id: &'a str, ns: &'a Ns) -> Self {
        Att {
            id,
            ns,
            ifname: "eth0",
            caps: json!({}),
        }
    }
}

/// A runtime in miniature: a conflist and libcni's execution rules.
pub struct Runtime<'a> {
    lab: &'a Lab,
    /// The network configuration list.
    pub conflist: Value,
    bin_dir: PathBuf,
    cache: Mutex<HashMap<(String, String), Value>>,
}

impl<'a> Runtime<'a> {
    /// A runtime for `conflist`; `CNI_PATH` is a directory holding `lanyard` and
    /// `lanyard-ipam` (links to the binary under test), then the reference plugins.
    pub fn new(lab: &'a Lab, conflist: Value) -> Self {
        let bin_dir = lab.dir().join("cni-bin");
        if !bin_dir.exists() {
            std::fs::create_dir(&bin_dir).unwrap();
            for name in ["lanyard", "lanyard-ipam"] {
                std::os::unix::fs::symlink(lanyard_bin(), bin_dir.join(name)).unwrap();
            }
        }
        assert!(
            Path::new(REFERENCE_PLUGINS).join("tuning").exists(),
            "the reference CNI plugins are missing from {REFERENCE_PLUGINS}: \
             apt-get install containernetworking-plugins (scripts/test does)"
        );
        Runtime {
            lab,
            conflist,
            bin_dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cni_path(&self) -> String {
        format!("{}:{REFERENCE_PLUGINS}", self.bin_dir.display())
    }

    fn find(&self, kind: &str) -> PathBuf {
        for dir in [self.bin_dir.as_path(), Path::new(REFERENCE_PLUGINS)] {
            let p = dir.join(kind);
            if p.exists() {
                return p;
            }
        }
        panic!("plugin {kind:?} not found in CNI_PATH {}", self.cni_path())
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The request config of one plugin (spec section 3): the plugin object with
    /// `cniVersion` and `name`, `runtimeConfig` from the capabilities it declares,
    /// `prevResult`, and no `capabilities`.
    fn request(&self, plugin: &Value, caps: &Value, prev: Option<&Value>) -> Value {
        let mut req = plugin.clone();
        let obj = req.as_object_mut().unwrap();
        obj.insert("cniVersion".into(), self.conflist["cniVersion"].clone());
        obj.insert("name".into(), self.conflist["name"].clone());
        let declared = obj.remove("capabilities").unwrap_or(json!({}));
        let mut rc = serde_json::Map::new();
        for (k, on) in declared.as_object().into_iter().flatten() {
            if on == true {
                if let Some(v) = caps.get(k) {
                    rc.insert(k.clone(), v.clone());
                }
            }
        }
        if !rc.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(rc));
        }
        if let Some(p) = prev {
            obj.insert("prevResult".into(), p.clone());
        }
        req
    }

    /// The command that runs plugin `kind` in the lab host with the protocol's
    /// environment (not started).
    pub fn command(&self, kind: &str, verb: &str, att: Option<&Att>) -> Command {
        let mut cmd = self
            .lab
            .host()
            .command(&[self.find(kind).to_str().unwrap()]);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", verb)
            .env("CNI_PATH", self.cni_path())
            .env("LANYARD_STATE_DIR", self.lab.state_dir())
            .env("LANYARD_RUN_DIR", self.lab.run_dir())
            .env("LANYARD_CONFIG", self.lab.config_path());
        if let Some(a) = att {
            cmd.env("CNI_CONTAINERID", a.id)
                .env("CNI_NETNS", a.ns.path())
                .env("CNI_IFNAME", a.ifname);
        }
        cmd
    }

    /// Runs one plugin: its parsed stdout on success (None if empty), its error
    /// object otherwise (a plugin that printed no JSON fails the test).
    pub fn exec(
        &self,
        kind: &str,
        verb: &str,
        att: Option<&Att>,
        stdin: &[u8],
    ) -> Result<Option<Value>, Value> {
        let what = format!("{kind} {verb}");
        let out = try_run_with_input(
            self.command(kind, verb, att),
            stdin,
            &what,
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "$ CNI_COMMAND={verb} {kind}  # {}\n{stdout}{stderr}",
            out.status
        );
        let parsed = if stdout.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str::<Value>(&stdout).unwrap_or_else(|e| {
                panic!("{what}: stdout is not JSON ({e}): {stdout:?}; stderr: {stderr}")
            }))
        };
        if out.status.success() {
            Ok(parsed)
        } else {
            Err(parsed.unwrap_or_else(|| {
                panic!(
                    "{what} failed ({}) with no error object; stderr: {stderr}",
                    out.status
                )
            }))
        }
    }

    /// ADD: every plugin in order, each given the previous one's result; the final
    /// result is cached.
    pub fn add(&self, att: &Att) -> Result<Value, Value> {
        let mut prev: Option<Value> = None;
        for p in self.plugins() {
            let req = self.request(&p, &att.caps, prev.as_ref());
            let kind = p["type"].as_str().unwrap();
            let out = self.exec(kind, "ADD", Some(att), req.to_string().as_bytes())?;
            prev = Some(out.unwrap_or_else(|| panic!("{kind} ADD printed no result")));
        }
        let result = prev.unwrap();
        self.cache
            .lock()
            .unwrap()
            .insert((att.id.into(), att.ifname.into()), result.clone());
        Ok(result)
    }

    /// DEL: every plugin in reverse order, each given the cached ADD result (if
    /// any); the cache entry goes when all succeeded.
    pub fn del(&self, att: &Att) -> Result<(), Value> {
        let key = (att.id.to_string(), att.ifname.to_string());
        let cached = self.cache.lock().unwrap().get(&key).cloned();
        for p in self.plugins().iter().rev() {
            let req = self.request(p, &att.caps, cached.as_ref());
            self.exec(
                p["type"].as_str().unwrap(),
                "DEL",
                Some(att),
                req.to_string().as_bytes(),
            )?;
        }
        self.cache.lock().unwrap().remove(&key);
        Ok(())
    }

    /// CHECK: every plugin in order with the cached ADD result, but those of
    /// `skip`'s types.
    pub fn check_but(&self, att: &Att, skip: &[&str]) -> Result<(), Value> {
        let key = (att.id.to_string(), att.ifname.to_string());
        let cached = self.cache.lock().unwrap().get(&key).cloned();
        assert!(cached.is_some(), "CHECK without a cached ADD result");
        for p in self.plugins() {
            if skip.contains(&p["type"].as_str().unwrap_or("")) {
                continue;
            }
            let req = self.request(&p, &att.caps, cached.as_ref());
            self.exec(
                p["type"].as_str().unwrap(),
                "CHECK",
                Some(att),
                req.to_string().as_bytes(),
            )?;
        }
        Ok(())
    }

    /// GC: every plugin, with the valid attachments; every error is collected.
    pub fn gc(&self, valid: &[(&str, &str)]) -> Vec<Value> {
        let valid: Vec<Value> = valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        let mut errors = vec![];
        for p in self.plugins() {
            let mut req = self.request(&p, &json!({}), None);
            req["cni.dev/valid-attachments"] = Value::Array(valid.clone());
            if let Err(e) = self.exec(
                p["type"].as_str().unwrap(),
                "GC",
                None,
                req.to_string().as_bytes(),
            ) {
                errors.push(e);
            }
        }
        errors
    }

    /// STATUS of the first plugin.
    pub fn status(&self) -> Result<(), Value> {
        let p = &self.plugins()[0];
        let req = self.request(p, &json!({}), None);
        self.exec(
            p["type"].as_str().unwrap(),
            "STATUS",
            None,
            req.to_string().as_bytes(),
        )
        .map(|_| ())
    }

    /// Starts the first plugin's ADD for `att` without waiting (stdin written and
    /// closed): for many at once.
    pub fn spawn(&self, verb: &str, att: &Att) -> Child {
        let p = &self.plugins()[0];
        let req = self.request(p, &att.caps, None);
        let mut cmd = self.command(p["type"].as_str().unwrap(), verb, Some(att));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn plugin");
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(req.to_string().as_bytes()).unwrap();
        drop(stdin);
        child
    }
}

/// A conflist: lanyard on network `net`, then the reference `tuning` (a sysctl in
/// the container) and `portmap` (DNAT by iptables on the host).
fn chain(net: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "lan",
        "plugins": [
            {"type": "lanyard", "network": net, "capabilities": {"ips": true, "mac": true}},
            {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

fn endpoints(lab: &Lab) -> Vec<Value> {
    lab.lanyard_json(&["endpoint", "ls"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The sandbox interface's IPv4 address of an ADD result (without prefix).
fn address(result: &Value) -> String {
    let ip = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ip| !ip["address"].as_str().unwrap().contains(':'))
        .unwrap_or_else(|| panic!("no IPv4 address in {result}"));
    ip["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .into()
}

fn code_of(e: &Value) -> u64 {
    e["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("no code in {e}"))
}

#[test]
fn cni_add_chains_before_tuning_and_portmap_repeats_checks_and_deletes_twice() {
    let lab = lab!();
    lab.lan_network(
        "lan",
        "macvlan",
        &[
            "--ipv6",
            "--subnet",
            "2001:db8:1::/64",
            "--gateway",
            "2001:db8:1::1",
        ],
    );
    let rt = Runtime::new(&lab, chain("lan"));
    let c1 = lab.netns("c1");
    let mut att = Att::new("c1-container", &c1);
    att.caps = json!({
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "ips": ["192.0.2.150/24"]
    });
    let r = rt.add(&att).unwrap_or_else(|e| panic!("ADD: {e}"));
    // The result: the interface in the sandbox, its address pointing at it, the
    // default route via the LAN's router.
    assert_eq!(r["cniVersion"], "1.0.0");
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 1, "{r}");
    assert_eq!(ifs[0]["name"], "eth0");
    assert_eq!(ifs[0]["sandbox"], c1.path().to_str().unwrap());
    assert_eq!(r["ips"][0]["address"], "192.0.2.150/24");
    assert_eq!(r["ips"][0]["gateway"], "192.0.2.1");
    assert_eq!(r["ips"][0]["interface"], 0);
    assert!(r["ips"][1]["address"]
        .as_str()
        .unwrap()
        .starts_with("2001:db8:1:"));
    assert!(r["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|rt| rt["dst"] == "0.0.0.0/0" && rt["gw"] == "192.0.2.1"));
    // lanyard wired it, tuning and portmap did their part after it.
    assert!(
        c1.ping("192.0.2.1"),
        "the container reaches the LAN's router"
    );
    assert_eq!(
        c1.ok(&["cat", "/proc/sys/net/core/somaxconn"]).trim(),
        "512",
        "tuning ran with lanyard's result"
    );
    let nat = lab.host().ok(&["iptables", "-t", "nat", "-S"]);
    assert!(
        nat.contains("192.0.2.150:80"),
        "portmap DNATs to lanyard's address:\n{nat}"
    );
    // ADD again: the same result, nothing more held.
    let again = rt.add(&att).unwrap_or_else(|e| panic!("second ADD: {e}"));
    assert_eq!(again["ips"], r["ips"]);
    assert_eq!(again["interfaces"], r["interfaces"]);
    assert_eq!(endpoints(&lab).len(), 1);
    // CHECK passes, then catches an address taken away behind lanyard's back.
    // Not portmap's: Debian's 1.1.1 looks for its IPv6 chain with IPv4 rules and
    // fails every CHECK (containernetworking/plugins#819).
    let check = |att: &Att| rt.check_but(att, &["portmap"]);
    check(&att).unwrap_or_else(|e| panic!("CHECK: {e}"));
    c1.ip(&["addr", "del", "192.0.2.150/24", "dev", "eth0"]);
    let e = check(&att).expect_err("CHECK must see the missing address");
    assert!(
        e["details"].as_str().unwrap().contains("192.0.2.150"),
        "{e}"
    );
    assert!(code_of(&e) >= 100, "{e}");
    // DEL twice: both succeed; the link, the record and portmap's rules are gone.
    rt.del(&att).unwrap_or_else(|e| panic!("DEL: {e}"));
    rt.del(&att).unwrap_or_else(|e| panic!("second DEL: {e}"));
    assert!(!c1.links().contains("eth0"));
    assert!(endpoints(&lab).is_empty());
    let nat = lab.host().ok(&["iptables", "-t", "nat", "-S"]);
    assert!(!nat.contains("192.0.2.150"), "{nat}");
    // DEL of an attachment never added: success.
    rt.del(&Att::new("never-added", &c1))
        .unwrap_or_else(|e| panic!("DEL of nothing: {e}"));
}

#[test]
fn cni_del_succeeds_after_the_namespace_is_gone_and_frees_the_address() {
    let lab = lab!();
    lab.lan_network("lan", "macvlan", &[]);
    let rt = Runtime::new(&lab, chain("lan"));
    let c1 = lab.netns("c1");
    let mut att = Att::new("gone", &c1);
    att.caps = json!({"ips": ["192.0.2.160/24"]});
    rt.add(&att).unwrap_or_else(|e| panic!("ADD: {e}"));
    lab.host().ok(&["true"]);
    std::process::Command::new("ip")
        .args(["netns", "del", c1.name()])
        .status()
        .unwrap();
    rt.del(&att)
        .unwrap_or_else(|e| panic!("DEL with the namespace gone: {e}"));
    assert!(endpoints(&lab).is_empty());
    // The address is free again.
    let c2 = lab.netns("c2");
    let mut att2 = Att::new("next", &c2);
    att2.caps = json!({"ips": ["192.0.2.160/24"]});
    let r = rt
        .add(&att2)
        .unwrap_or_else(|e| panic!("ADD of the freed address: {e}"));
    assert_eq!(address(&r), "192.0.2.160");
    rt.del(&att2).unwrap();
}

#[test]
fn cni_gc_frees_every_attachment_not_in_the_valid_set() {
    let lab = lab!();
    lab.lan_network("lan", "macvlan", &[]);
    let conflist = json!({
        "cniVersion": "1.1.0", "name": "lan",
        "plugins": [{"type": "lanyard", "network": "lan"}]
    });
    let rt = Runtime::new(&lab, conflist);
    let ns: Vec<Ns> = (0..3).map(|i| lab.netns(&format!("c{i}"))).collect();
    let ids = ["c0", "c1", "c2"];
    for (id, n) in ids.iter().zip(&ns) {
        rt.add(&Att::new(id, n))
            .unwrap_or_else(|e| panic!("ADD {id}: {e}"));
    }
    // An endpoint of the CLI on the same lanyard network is not the CNI network's.
    let other = lab.netns("cli");
    lab.attach("lan", &other, &[]);
    assert_eq!(endpoints(&lab).len(), 4);
    let errors = rt.gc(&[("c1", "eth0")]);
    assert!(errors.is_empty(), "{errors:?}");
    let left = endpoints(&lab);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|e| e["owner"]["container_id"] == "c1"));
    assert!(ns[1].links().contains("eth0"));
    for i in [0, 2] {
        assert!(!ns[i].links().contains("eth0"), "c{i} keeps its link");
    }
    assert!(other.links().contains("eth0"), "the CLI's endpoint stays");
}

#[test]
fn cni_bad_input_gets_spec_errors_naming_the_field_and_changes_nothing() {
    let lab = lab!();
    lab.lan_network("lan", "macvlan", &[]);
    let rt = Runtime::new(&lab, chain("lan"));
    let c1 = lab.netns("c1");
    let att = Att::new("c1", &c1);
    let add = |stdin: &str| {
        rt.exec("lanyard", "ADD", Some(&att), stdin.as_bytes())
            .expect_err(stdin)
    };
    let base = r#"{"cniVersion":"1.0.0","name":"lan","type":"lanyard""#;
    let cases = [
        (
            format!("{base},\"network\":\"lan\",\"bogus\":1}}"),
            7,
            "bogus",
        ),
        (format!("{base},\"network\":\"nope\"}}"), 7, "network"),
        (
            format!("{base},\"network\":\"lan\",\"mtu\":\"x\"}}"),
            7,
            "mtu",
        ),
        (
            format!("{base},\"master\":\"eth9\",\"ipam\":{{\"subnet\":\"203.0.113.0/24\"}}}}"),
            7,
            "master",
        ),
        (
            format!("{base},\"network\":\"lan\",\"runtimeConfig\":{{\"ips\":[\"10.9.9.9/8\"]}}}}"),
            7,
            "runtimeConfig.ips",
        ),
        (base.to_string(), 6, "stdin"),
        (
            r#"{"cniVersion":"9.9.9","name":"lan","type":"lanyard","network":"lan"}"#.into(),
            1,
            "cniVersion",
        ),
    ];
    for (stdin, code, field) in &cases {
        let e = add(stdin);
        assert_eq!(code_of(&e), *code, "{stdin}: {e}");
        let text = format!("{} {}", e["msg"], e["details"]);
        assert!(text.contains(field), "{stdin}: error names {field}: {e}");
        assert!(e["cniVersion"].is_string());
    }
    // Missing environment: code 4 naming the variable.
    let req = format!("{base},\"network\":\"lan\"}}");
    let mut cmd = rt.command("lanyard", "ADD", None);
    cmd.env("CNI_CONTAINERID", "c1").env("CNI_IFNAME", "eth0");
    let out = try_run_with_input(cmd, req.as_bytes(), "ADD", Duration::from_secs(30)).unwrap();
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success());
    assert_eq!(code_of(&e), 4, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("CNI_NETNS"), "{e}");
    // Huge stdin: refused, no panic.
    let huge = format!(
        "{base},\"network\":\"lan\",\"x\":\"{}\"}}",
        "a".repeat(3 << 20)
    );
    let e = add(&huge);
    assert!(code_of(&e) == 7 || code_of(&e) == 6, "{e}");
    // Nothing was recorded, no network made, no link in the container.
    assert!(endpoints(&lab).is_empty());
    assert_eq!(
        lab.lanyard_json(&["network", "ls"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(!c1.links().contains("eth0"));
    // VERSION and STATUS.
    let v = rt
        .exec("lanyard", "VERSION", None, br#"{"cniVersion":"1.1.0"}"#)
        .unwrap()
        .unwrap();
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    rt.status().unwrap_or_else(|e| panic!("STATUS: {e}"));
    let missing = Runtime::new(&lab, chain("nope"));
    assert_eq!(code_of(&missing.status().unwrap_err()), 50);
}

#[test]
fn cni_inline_config_makes_the_network_once_and_the_host_reaches_its_containers() {
    let lab = lab!();
    let conflist = json!({
        "cniVersion": "0.4.0", "name": "lan",
        "plugins": [{
            "type": "lanyard", "driver": "macvlan", "master": "eth0", "mode": "bridge",
            "ipam": {"type": "lanyard-ipam", "subnet": "192.0.2.0/24", "gateway": "192.0.2.1",
                     "rangeStart": "192.0.2.128", "rangeEnd": "192.0.2.255"},
            "dns": {"nameservers": ["192.0.2.1"]}
        }]
    });
    let rt = Runtime::new(&lab, conflist);
    let c1 = lab.netns("c1");
    let c2 = lab.netns("c2");
    let r1 = rt
        .add(&Att::new("a", &c1))
        .unwrap_or_else(|e| panic!("ADD: {e}"));
    let r2 = rt
        .add(&Att::new("b", &c2))
        .unwrap_or_else(|e| panic!("ADD: {e}"));
    assert_eq!(r1["cniVersion"], "0.4.0");
    assert_eq!(
        r1["ips"][0]["version"], "4",
        "0.4.0 results carry the family"
    );
    assert_eq!(r1["dns"]["nameservers"], json!(["192.0.2.1"]));
    let nets = lab.lanyard_json(&["network", "ls"]);
    assert_eq!(nets.as_array().unwrap().len(), 1, "{nets}");
    assert_eq!(nets[0]["name"], "lan");
    let (a1, a2) = (address(&r1), address(&r2));
    assert_ne!(a1, a2);
    assert!(
        a1.starts_with("192.0.2.1") || a1.starts_with("192.0.2.2"),
        "{a1}"
    );
    assert!(
        lab.host().ping(&a1),
        "the host reaches its macvlan container"
    );
    assert!(lab.lan().ping(&a2), "the LAN's router reaches it");
    // The same name with another shape: refused, naming the field.
    let other = Runtime::new(
        &lab,
        json!({"cniVersion": "1.0.0", "name": "lan", "plugins": [{
            "type": "lanyard", "driver": "macvlan", "master": "eth0",
            "ipam": {"subnet": "198.51.100.0/24"}}]}),
    );
    let c3 = lab.netns("c3");
    let e = other.add(&Att::new("c", &c3)).unwrap_err();
    assert_eq!(code_of(&e), 7, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("ipam"), "{e}");
    rt.del(&Att::new("a", &c1)).unwrap();
    rt.del(&Att::new("b", &c2)).unwrap();
}

#[test]
fn cni_lanyard_ipam_hands_out_addresses_to_the_reference_macvlan_plugin() {
    let lab = lab!();
    lab.lan_network("lan", "macvlan", &[]);
    let conflist = json!({
        "cniVersion": "1.0.0", "name": "refmv",
        "plugins": [{
            "type": "macvlan", "master": "eth0", "mode": "bridge",
            "ipam": {"type": "lanyard-ipam", "network": "lan"}
        }]
    });
    let rt = Runtime::new(&lab, conflist);
    let c1 = lab.netns("c1");
    let att = Att::new("ref1", &c1);
    let r = rt.add(&att).unwrap_or_else(|e| panic!("ADD: {e}"));
    let a = address(&r);
    assert!(
        a.starts_with("192.0.2.1") || a.starts_with("192.0.2.2"),
        "{r}"
    );
    assert!(c1.ping("192.0.2.1"));
    // lanyard holds it: its own attach gets another.
    let eps = endpoints(&lab);
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0]["state"], "allocated");
    let c2 = lab.netns("c2");
    let mine = lab.attach("lan", &c2, &[]);
    assert_ne!(crate::harness::addr_of(&mine, false), a);
    rt.del(&att).unwrap_or_else(|e| panic!("DEL: {e}"));
    rt.del(&att).unwrap_or_else(|e| panic!("second DEL: {e}"));
    assert_eq!(endpoints(&lab).len(), 1, "the allocation is released");
}

#[test]
fn cni_200_parallel_adds_get_200_addresses_and_200_parallel_dels_leave_nothing() {
    const N: usize = 200;
    let lab = lab!();
    lab.lanyard_ok(&[
        "network",
        "create",
        "lan",
        "-d",
        "macvlan",
        "-o",
        "parent=eth0",
        "--subnet",
        "192.0.2.0/24",
        "--gateway",
        "192.0.2.1",
    ]);
    let conflist = json!({
        "cniVersion": "1.1.0", "name": "lan",
        "plugins": [{"type": "lanyard", "network": "lan"}]
    });
    let rt = Runtime::new(&lab, conflist);
    let ns = lab.netns_many("p", N);
    let ids: Vec<String> = (0..N).map(|i| format!("ctr{i}")).collect();
    let atts: Vec<Att> = ids.iter().zip(&ns).map(|(id, n)| Att::new(id, n)).collect();
    let run_all = |verb: &str| -> Vec<(usize, String)> {
        let children: Vec<Child> = atts.iter().map(|a| rt.spawn(verb, a)).collect();
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut failures = vec![];
        let mut outputs = vec![];
        for (i, c) in children.into_iter().enumerate() {
            let out = c.wait_with_output().unwrap();
            assert!(Instant::now() < deadline, "{verb}s took over 240 s");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                !stdout.contains("locked") && !stderr.contains("locked"),
                "{verb} {i}: {stdout} {stderr}"
            );
            if !out.status.success() {
                failures.push(format!("{verb} {i}: {stdout} {stderr}"));
            }
            outputs.push((i, stdout));
        }
        assert!(
            failures.is_empty(),
            "{} failed: {failures:#?}",
            failures.len()
        );
        outputs
    };
    let added = run_all("ADD");
    let mut addrs: Vec<String> = added
        .iter()
        .map(|(_, o)| address(&serde_json::from_str(o).unwrap()))
        .collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), N, "distinct addresses");
    assert_eq!(endpoints(&lab).len(), N);
    run_all("DEL");
    assert!(endpoints(&lab).is_empty(), "the store is empty");
    // No link left in any container (tombstones are deleted in the background).
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in &ns {
        loop {
            let links = n.links();
            if links.iter().all(|l| l == "lo") {
                break;
            }
            assert!(Instant::now() < deadline, "{} keeps {links:?}", n.name());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The daemon's `verbs=N` counter (verbs it ran for callers).
fn daemon_verbs(lab: &Lab) -> String {
    use lanyard_kernel::handoff::{Client, Message};
    let asker = Client::connect(&lab.run_dir().join("daemon.sock")).unwrap();
    asker.send(&Message::Status, &[]).unwrap();
    match asker.recv(Duration::from_secs(5)).unwrap() {
        Message::StatusIs(kv) => kv
            .into_iter()
            .find(|k| k.starts_with("verbs="))
            .unwrap_or_default(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cni_add_and_del_run_in_the_daemon_when_it_is_up_and_in_the_plugin_when_it_is_gone() {
    let lab = lab!();
    lab.lan_network("lan", "macvlan", &[]);
    let rt = Runtime::new(
        &lab,
        json!({"cniVersion": "1.0.0", "name": "lan", "plugins": [{"type": "lanyard", "network": "lan"}]}),
    );
    let mut daemon = lab.lanyard_spawn(&["daemon", "--interval", "60", "--gc-interval", "0"]);
    assert!(
        daemon.wait_for_stdout("watching nftables", Duration::from_secs(10)),
        "daemon did not start: {}",
        daemon.stderr()
    );
    let c1 = lab.netns("c1");
    let att = Att::new("d1", &c1);
    let r = rt.add(&att).unwrap_or_else(|e| panic!("ADD: {e}"));
    assert_eq!(daemon_verbs(&lab), "verbs=1", "the ADD ran in the daemon");
    assert_eq!(r["interfaces"][0]["sandbox"], c1.path().to_str().unwrap());
    let a = address(&r);
    assert!(c1.ip(&["-o", "addr", "show", "dev", "eth0"]).contains(&a));
    // A repeated ADD, in the daemon: the same result.
    let again = rt.add(&att).unwrap_or_else(|e| panic!("second ADD: {e}"));
    assert_eq!(daemon_verbs(&lab), "verbs=2");
    assert_eq!(again, r);
    // Errors read as the plugin's own: an unknown network is invalid config (7).
    let bad = Runtime::new(
        &lab,
        json!({"cniVersion": "1.0.0", "name": "lan", "plugins": [{"type": "lanyard", "network": "nope"}]}),
    );
    let e = bad.add(&Att::new("d2", &c1)).expect_err("unknown network");
    assert_eq!(code_of(&e), 7, "{e}");
    assert_eq!(daemon_verbs(&lab), "verbs=3");
    rt.del(&att).unwrap_or_else(|e| panic!("DEL: {e}"));
    assert_eq!(daemon_verbs(&lab), "verbs=4", "the DEL ran in the daemon");
    assert!(!c1.links().contains("eth0"));
    assert!(endpoints(&lab).is_empty());
    // The daemon killed (its socket file left): the plugin runs the verbs itself,
    // with the same result.
    let r = rt
        .add(&att)
        .unwrap_or_else(|e| panic!("ADD, daemon up: {e}"));
    daemon.kill();
    let local = rt
        .add(&att)
        .unwrap_or_else(|e| panic!("ADD, daemon gone: {e}"));
    assert_eq!(local, r);
    rt.del(&att)
        .unwrap_or_else(|e| panic!("DEL, daemon gone: {e}"));
    assert!(!c1.links().contains("eth0"));
    assert!(endpoints(&lab).is_empty());
}
