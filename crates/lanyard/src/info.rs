//! `lanyard info`: what this lanyard is and what it would use — version and commit,
//! the paths in use, the store's kind and file, the kernel features it finds and the
//! front ends in place. It only reads: it opens no store (which would create one),
//! loads no module and runs nothing.
//!
//! Kernel features are read from files, never by trying: a module is *loaded*
//! (`/sys/module/NAME/initstate`), *builtin* (`/sys/module/NAME` without
//! `initstate`, named in the running kernel's `modules.builtin`, or one of its
//! functions in `/proc/kallsyms`: a kernel built without modules has neither of the
//! others), *module* (in `modules.dep`: the kernel loads it on first use) or *absent*.

use crate::cli::{Cli, VERSION};
use crate::output::out;
use lanyard_core::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The kernel features lanyard's drivers and firewall need: the module that provides
/// each, and a function of that module (for a kernel built with it inside).
const FEATURES: &[(&str, &str, &str)] = &[
    ("bridge", "bridge", "br_dev_xmit"),
    ("veth", "veth", "veth_newlink"),
    ("macvlan", "macvlan", "macvlan_common_newlink"),
    ("ipvlan", "ipvlan", "ipvlan_link_new"),
    ("vlan", "8021q", "register_vlan_dev"),
    ("nftables", "nf_tables", "nf_tables_newtable"),
    ("nft_nat", "nft_nat", "nft_nat_eval"),
    ("nft_masq", "nft_masq", "nft_masq_eval"),
];

/// Where the Docker daemon looks for the plugin's socket.
const DOCKER_PLUGIN_SOCKET: &str = "/run/docker/plugins/lanyard.sock";

/// Where CNI runtimes look for plugins: Debian's Podman, then CNI's default.
const CNI_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

/// Everything `lanyard info` reports.
#[derive(Debug, Serialize)]
pub struct Info {
    /// Version and git commit.
    pub version: &'static str,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The run directory (locks, sockets).
    pub run_dir: PathBuf,
    /// The configuration file and whether it exists.
    pub config: FileInfo,
    /// The store.
    pub store: StoreInfo,
    /// The running kernel.
    pub kernel: KernelInfo,
    /// The front ends and whether each is in place.
    pub front_ends: BTreeMap<&'static str, FrontEnd>,
}

/// A file lanyard would use.
#[derive(Debug, Serialize)]
pub struct FileInfo {
    /// Its path.
    pub path: PathBuf,
    /// Whether it exists.
    pub exists: bool,
}

/// The store in use.
#[derive(Debug, Serialize)]
pub struct StoreInfo {
    /// `sqlite`, or `etcd` (several hosts).
    pub kind: &'static str,
    /// An etcd store's members (`HOST:PORT,…`), from `--store` or the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<String>,
    /// The database file and whether it exists.
    pub file: FileInfo,
    /// The schema version this build writes (an older file is migrated on first use).
    pub schema_version: u32,
}

/// The running kernel and the features found in it.
#[derive(Debug, Serialize)]
pub struct KernelInfo {
    /// `uname -r`.
    pub release: String,
    /// Feature → loaded | builtin | module | absent.
    pub features: BTreeMap<&'static str, &'static str>,
}

/// One front end.
#[derive(Debug, Serialize)]
pub struct FrontEnd {
    /// Whether it is in place (CLI: always; daemon, Docker: its socket exists; CNI:
    /// the plugin is where a runtime looks).
    pub enabled: bool,
    /// What tells: sockets or plugin paths found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathBuf>,
}

/// Which of `wanted` the kernel's symbol table (`/proc/kallsyms` text) names.
pub fn symbols_in(kallsyms: &str, wanted: &[&str]) -> Vec<String> {
    kallsyms
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| wanted.contains(s))
        .map(str::to_string)
        .collect()
}

/// The state of one module: loaded, builtin, module or absent, read under `sys`
/// (normally /sys) and `modules` (/lib/modules/RELEASE); `in_kernel`: one of its
/// functions is in the kernel's symbol table.
pub fn module_state(sys: &Path, modules: &Path, name: &str, in_kernel: bool) -> &'static str {
    let listed = |file: &str| {
        std::fs::read_to_string(modules.join(file)).is_ok_and(|t| {
            t.lines().any(|l| {
                let path = l.split(':').next().unwrap_or("");
                let base = path.rsplit('/').next().unwrap_or("");
                base.split('.').next() == Some(name) && base.contains(".ko")
            })
        })
    };
    let dir = sys.join("module").join(name);
    if dir.join("initstate").exists() {
        "loaded"
    } else if dir.exists() || in_kernel || listed("modules.builtin") {
        "builtin"
    } else if listed("modules.dep") {
        "module"
    } else {
        "absent"
    }
}

/// Collects the report for `cli`'s paths.
pub fn collect(cli: &Cli) -> Info {
    let file = |p: PathBuf| FileInfo {
        exists: p.exists(),
        path: p,
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    let modules = Path::new("/lib/modules").join(&release);
    let syms: Vec<&str> = FEATURES.iter().map(|f| f.2).collect();
    let found = symbols_in(
        &std::fs::read_to_string("/proc/kallsyms").unwrap_or_default(),
        &syms,
    );
    let features = FEATURES
        .iter()
        .map(|&(f, m, sym)| {
            let in_kernel = found.iter().any(|s| s == sym);
            (f, module_state(Path::new("/sys"), &modules, m, in_kernel))
        })
        .collect();
    let present = |paths: Vec<PathBuf>| {
        let paths: Vec<PathBuf> = paths.into_iter().filter(|p| p.exists()).collect();
        FrontEnd {
            enabled: !paths.is_empty(),
            paths,
        }
    };
    let mut front_ends = BTreeMap::new();
    front_ends.insert(
        "cli",
        FrontEnd {
            enabled: true,
            paths: vec![],
        },
    );
    front_ends.insert(
        "daemon",
        present(vec![cli.run_dir.join(lanyard_kernel::handoff::SOCKET)]),
    );
    front_ends.insert("docker", present(vec![DOCKER_PLUGIN_SOCKET.into()]));
    front_ends.insert(
        "cni",
        present(
            CNI_DIRS
                .iter()
                .map(|d| Path::new(d).join("lanyard"))
                .collect(),
        ),
    );
    let members = crate::store::etcd_members(cli);
    Info {
        version: VERSION,
        state_dir: cli.state_dir.clone(),
        run_dir: cli.run_dir.clone(),
        config: file(cli.config.clone()),
        store: StoreInfo {
            kind: if members.is_some() { "etcd" } else { "sqlite" },
            members,
            file: file(cli.state_dir.join(lanyard_store::DB_FILE)),
            schema_version: lanyard_store::SCHEMA_VERSION,
        },
        kernel: KernelInfo { release, features },
        front_ends,
    }
}

/// `lanyard info [--json]`.
pub fn run(cli: &Cli, json: bool) -> Result<i32> {
    let info = collect(cli);
    if json {
        crate::output::json(&info)?;
        return Ok(0);
    }
    let yes = |b: bool| if b { "" } else { " (absent)" };
    out!("version:    {}", info.version);
    out!("state dir:  {}", info.state_dir.display());
    out!("run dir:    {}", info.run_dir.display());
    out!(
        "config:     {}{}",
        info.config.path.display(),
        yes(info.config.exists)
    );
    out!(
        "store:      {} {}{} (schema version {})",
        info.store.kind,
        info.store.file.path.display(),
        yes(info.store.file.exists),
        info.store.schema_version
    );
    if let Some(m) = &info.store.members {
        out!("  etcd at   {m} (shared with the other hosts; the file is unused)");
    }
    out!("kernel:     {}", info.kernel.release);
    for (f, s) in &info.kernel.features {
        out!("  {f:<10} {s}");
    }
    out!("front ends:");
    for (name, fe) in &info.front_ends {
        let paths: Vec<String> = fe.paths.iter().map(|p| p.display().to_string()).collect();
        let state = if fe.enabled { "enabled" } else { "not found" };
        out!(
            "  {}",
            format!("{name:<10} {state} {}", paths.join(" ")).trim_end()
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_is_loaded_builtin_loadable_or_absent() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path().join("sys");
        let lib = tmp.path().join("modules");
        std::fs::create_dir_all(sys.join("module/veth")).unwrap();
        std::fs::write(sys.join("module/veth/initstate"), "live\n").unwrap();
        // A builtin with parameters has a /sys/module directory but no initstate.
        std::fs::create_dir_all(sys.join("module/bridge")).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(
            lib.join("modules.builtin"),
            "kernel/net/bridge/bridge.ko\nkernel/drivers/net/macvlan.ko\n",
        )
        .unwrap();
        std::fs::write(
            lib.join("modules.dep"),
            "kernel/drivers/net/veth.ko.xz:\nkernel/net/8021q/8021q.ko.zst: kernel/net/802/garp.ko.zst\nkernel/drivers/net/ipvlan/ipvlan_l3s.ko:\n",
        )
        .unwrap();
        assert_eq!(module_state(&sys, &lib, "veth", false), "loaded");
        assert_eq!(module_state(&sys, &lib, "bridge", false), "builtin");
        assert_eq!(module_state(&sys, &lib, "macvlan", false), "builtin");
        assert_eq!(module_state(&sys, &lib, "8021q", false), "module");
        // Another module's name that starts with it is not it.
        assert_eq!(module_state(&sys, &lib, "ipvlan", false), "absent");
        let none = Path::new("/nonexistent");
        assert_eq!(module_state(none, none, "x", false), "absent");
        // A kernel without modules: only its symbol table tells.
        assert_eq!(module_state(none, none, "nf_tables", true), "builtin");
    }

    #[test]
    fn kernel_symbols_are_matched_whole() {
        let text = "ffffffff81000000 T nf_tables_newtable\n0000000000000000 t veth_newlink\t[veth]\nffffffff81000010 T macvlan_common_newlink_x\n";
        assert_eq!(
            symbols_in(
                text,
                &[
                    "nf_tables_newtable",
                    "veth_newlink",
                    "macvlan_common_newlink"
                ]
            ),
            ["nf_tables_newtable", "veth_newlink"]
        );
    }
}
