//! The command line, defined once with clap: parsing, `--help`, the man page and
//! shell completions all come from here. Flag names follow `docker network create`.

use clap::{Args, Parser, Subcommand};
use lanyard_core::model::AttachRequest;
use lanyard_core::Error;
use std::path::PathBuf;

/// `lanyard --version`: the package version and the git commit it was built from
/// ("unknown" outside a git checkout; crates/lanyard/build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LANYARD_GIT_COMMIT"),
    ")"
);

/// Container networks on your real LAN.
#[derive(Debug, Parser)]
#[command(name = "lanyard", version = VERSION, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The options of every subcommand (`cli.state_dir` reads through [`Deref`]).
    #[command(flatten)]
    pub globals: Globals,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl std::ops::Deref for Cli {
    type Target = Globals;

    fn deref(&self) -> &Globals {
        &self.globals
    }
}

/// The options every subcommand takes, before or after its name.
#[derive(Debug, Clone, Args)]
pub struct Globals {
    /// Where the state database lives.
    #[arg(
        long,
        global = true,
        env = "LANYARD_STATE_DIR",
        default_value = "/var/lib/lanyard",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
    /// Runtime files (locks, sockets).
    #[arg(
        long,
        global = true,
        env = "LANYARD_RUN_DIR",
        default_value = "/run/lanyard",
        value_name = "DIR"
    )]
    pub run_dir: PathBuf,
    /// This host's name in a store several hosts share: every endpoint it records
    /// carries it, and `gc`/`restore` touch only this host's (default: the
    /// contents of /etc/machine-id, which a host rename does not change).
    #[arg(long, global = true, env = "LANYARD_NODE", value_name = "NAME")]
    pub node: Option<String>,
    /// The store: `sqlite` (in --state-dir) or `etcd://HOST:PORT[,HOST:PORT…]`, shared
    /// by several hosts on one LAN (default: the config file's `store`, else sqlite).
    #[arg(long, global = true, env = "LANYARD_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Configuration file (default address pools).
    #[arg(long, global = true, env = "LANYARD_CONFIG", default_value = lanyard_core::config::DEFAULT_PATH, value_name = "FILE")]
    pub config: PathBuf,
}

/// `attach` and `detach` alone, with the same options: what container engines and
/// scripts run most. clap copies the global options into every subcommand of a
/// command before parsing (120 KB of heap for [`Cli`]'s ~25), so
/// these two are parsed with a command holding only them (an attach client: 189
/// page faults -> 145, 1.61 -> 1.31 ms of CPU), and everything else
/// (and every error, `--help`, `--version`) by [`Cli`]. Its grammar is a subset of
/// [`Cli`]'s: what it accepts means the same there (unit test).
#[derive(Debug, Parser)]
#[command(name = "lanyard", version = VERSION)]
struct Hot {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: HotCommand,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // one per process, moved once into Command
enum HotCommand {
    Attach(AttachArgs),
    Detach(DetachArgs),
}

impl Cli {
    /// `args` parsed as `attach` or `detach`, if they are one of those and valid;
    /// `None`: parse them with [`Cli`] (which words every error).
    pub fn parse_hot<I, T>(args: I) -> Option<Cli>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        if !args.iter().skip(1).any(|a| a == "attach" || a == "detach") {
            return None;
        }
        let hot = Hot::try_parse_from(args).ok()?;
        Some(Cli {
            globals: hot.globals,
            command: match hot.command {
                HotCommand::Attach(a) => Command::Attach(a),
                HotCommand::Detach(d) => Command::Detach(d),
            },
        })
    }
}

/// Top-level commands. `defer`: a subcommand's arguments are built only when it is
/// the one invoked (building the whole tree was ~5% of a short call).
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Attach a network namespace to a network (like `docker network connect`).
    Attach(AttachArgs),
    /// Detach an endpoint (like `docker network disconnect`); idempotent.
    Detach(DetachArgs),
    /// Inspect endpoints.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Run a command in a fresh network namespace attached to networks.
    Run(RunArgs),
    /// Rebuild bridges, shims, routes and endpoints from the store (at boot).
    Restore(JsonFlag),
    /// Forget endpoints whose namespace is gone; remove leftovers of crashes.
    Gc(GcArgs),
    /// Find what stops networks from working (host access, parents, routes, firewall,
    /// forwarding, gone namespaces, duplicate LAN addresses) and say how to fix each;
    /// exit 1 if anything was found. Changes nothing.
    Doctor(JsonFlag),
    /// Keep lanyard's nftables tables in place: rebuild them from the store when a
    /// flush or firewall reload drops them; gc now and then. Foreground; SIGTERM stops.
    Daemon(DaemonArgs),
    /// Show version, paths in use, the store, kernel features found and front ends
    /// in place. Changes nothing.
    Info(JsonFlag),
    /// Print shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page lanyard(8) (roff) to stdout, or write it and one page per
    /// subcommand (lanyard-network-create(8), …) into a directory.
    Man {
        /// Write every page into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

// `--json`: a plain comment, not a doc comment, which clap would take as the
// subcommand's about text in place of the variant's (subcommands are deferred).
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

// `gc`'s flags (a plain comment: a doc comment here would replace the
// subcommand's own description in `--help`).
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Take the store as this host's own from now on, after it was replaced or lost
    /// (gc and restore refuse such a store until then).
    #[arg(long)]
    pub adopt_store: bool,
    /// Free the endpoints and addresses of another host, dead, in a shared store
    /// (refused while that host's lanyard daemon holds its lease).
    #[arg(long, value_name = "NODE")]
    pub host: Option<String>,
}

// `daemon`: a plain comment, not a doc comment, which clap would take as the
// subcommand's about text in place of the variant's (subcommands are deferred).
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Check lanyard's nftables tables this often even when no event came (seconds).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub interval: u64,
    /// Run `gc` this often (seconds; 0: never).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub gc_interval: u64,
    /// After an nftables change is heard, wait this long for the rest of it (ms).
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub debounce_ms: u64,
    /// Serve Docker's remote network and IPAM plugin protocol on this unix socket.
    #[arg(long, env = "LANYARD_DOCKER_SOCKET", default_value = crate::docker::DEFAULT_SOCKET, value_name = "PATH")]
    pub docker_socket: std::path::PathBuf,
    /// Do not answer DNS on 127.0.0.11 in endpoints' namespaces.
    #[arg(long)]
    pub no_dns: bool,
    /// The host's resolver list, read for the upstreams DNS queries go to.
    #[arg(long, default_value = "/etc/resolv.conf", value_name = "FILE")]
    pub resolv_conf: PathBuf,
    /// Read instead when --resolv-conf names only a loopback stub (127.0.0.53).
    #[arg(
        long,
        default_value = "/run/systemd/resolve/resolv.conf",
        value_name = "FILE"
    )]
    pub resolved_conf: PathBuf,
}

/// `lanyard network …` (deferred like [`Command`]).
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum NetworkCmd {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show networks in detail.
    Inspect {
        /// Network names or ids.
        #[arg(required = true)]
        networks: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove networks (refused while endpoints are attached).
    #[command(alias = "remove")]
    Rm {
        /// Network names or ids.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove every network without endpoints.
    Prune {
        /// Accepted for Docker compatibility; lanyard never prompts.
        #[arg(short, long)]
        force: bool,
    },
}

// `network create` (a plain comment: see `EndpointOpts`).
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Network name.
    pub name: String,
    /// bridge, macvlan, ipvlan, host or none.
    #[arg(short = 'd', long, default_value = "bridge")]
    pub driver: String,
    /// Subnet in CIDR form (repeatable; IPv4 and IPv6).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Vec<String>,
    /// Gateway for the subnet that contains it (repeatable).
    #[arg(long, value_name = "IP")]
    pub gateway: Vec<String>,
    /// Hand out addresses only from this range (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub ip_range: Vec<String>,
    /// Reserve an address: NAME=IP (repeatable).
    #[arg(long, value_name = "NAME=IP")]
    pub aux_address: Vec<String>,
    /// No traffic leaves the network.
    #[arg(long)]
    pub internal: bool,
    /// Enable IPv6.
    #[arg(long)]
    pub ipv6: bool,
    /// Label KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Driver option KEY=VALUE: parent, macvlan_mode, ipvlan_mode, mtu, host_access, snat_source, bridge_name.
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
    pub opt: Vec<String>,
    /// Who hands out addresses: default (lanyard, from the subnets) or dhcp (the
    /// LAN's DHCP server, per endpoint; macvlan and ipvlan).
    #[arg(long, value_name = "DRIVER")]
    pub ipam_driver: Option<String>,
}

// Where the namespace is (a plain comment: see `EndpointOpts`).
#[derive(Debug, Args)]
#[group(required = false, multiple = false)]
pub struct NetnsArgs {
    /// Namespace path (/run/netns/NAME, /proc/PID/ns/net).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// The namespace of this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
}

impl NetnsArgs {
    /// The namespace path, if one was given.
    pub fn path(&self) -> Option<PathBuf> {
        self.netns
            .clone()
            .or_else(|| self.pid.map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))))
    }

    /// `e` in the words the user chose: with `--pid P`, an error about the
    /// `--netns /proc/P/ns/net` it stands for names `--pid P`.
    pub fn blame(&self, e: Error) -> Error {
        match (self.pid, e) {
            (Some(p), Error::Invalid { field, reason, .. }) if field == "--netns" => {
                Error::invalid("--pid", p, format!("/proc/{p}/ns/net: {reason}"))
            }
            (_, e) => e,
        }
    }
}

// Per-endpoint options shared by `attach` and `run`: a plain comment, not a doc
// comment, which clap would take as the about text of both (subcommands are deferred).
#[derive(Debug, Args, Clone, Default)]
pub struct EndpointOpts {
    /// IPv4 address (else the next free one).
    #[arg(long, value_name = "IP")]
    pub ip: Option<String>,
    /// IPv6 address (else the next free one).
    #[arg(long, value_name = "IP")]
    pub ip6: Option<String>,
    /// MAC address.
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// Endpoint name (unique; `--network container:NAME` finds it).
    #[arg(long)]
    pub name: Option<String>,
    /// Publish a port: `[HOSTIP:]HOSTPORT[-END]:PORT[-END][/tcp|/udp]` (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Set net.ipv4.ip_unprivileged_port_start in the namespace (0 lets any user bind port 80).
    #[arg(long, value_name = "N")]
    pub unprivileged_port_start: Option<u16>,
    /// A subnet behind the endpoint (a VPN server's clients): the host routes it to
    /// the endpoint (repeatable, IPv4 or IPv6).
    #[arg(long = "route", value_name = "CIDR")]
    pub routes: Vec<String>,
    /// Another name the endpoint answers to in the daemon's DNS on its network
    /// (repeatable).
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
}

impl EndpointOpts {
    /// The engine's request for allocating an endpoint of `network`.
    pub fn allocation(&self, network: &str) -> lanyard_core::owner::AllocateRequest {
        lanyard_core::owner::AllocateRequest {
            network: network.to_string(),
            owner: None,
            name: self.name.clone(),
            ip: self.ip.clone(),
            ip6: self.ip6.clone(),
            mac: self.mac.clone(),
            publish: self.publish.clone(),
            aliases: self.aliases.clone(),
        }
    }

    /// The engine's request for attaching `netns` to `network` with these options.
    pub fn request(&self, network: &str, netns: PathBuf, ifname: Option<String>) -> AttachRequest {
        AttachRequest {
            network: network.to_string(),
            netns,
            ifname,
            ip: self.ip.clone(),
            ip6: self.ip6.clone(),
            mac: self.mac.clone(),
            name: self.name.clone(),
            publish: self.publish.clone(),
            unprivileged_port_start: self.unprivileged_port_start,
            owner: None,
            routes: self.routes.clone(),
            aliases: self.aliases.clone(),
        }
    }
}

// `attach`: a plain comment, not a doc comment, which clap would take as the
// subcommand's about text in place of the variant's (subcommands are deferred).
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Network name or id.
    pub network: String,
    /// Which namespace.
    #[command(flatten)]
    pub ns: NetnsArgs,
    /// Interface name in the namespace (default: next free ethN).
    #[arg(long)]
    pub ifname: Option<String>,
    /// Endpoint options.
    #[command(flatten)]
    pub opts: EndpointOpts,
    /// Print the endpoint as JSON.
    #[arg(long)]
    pub json: bool,
}

// `detach`: a plain comment, not a doc comment, which clap would take as the
// subcommand's about text in place of the variant's (subcommands are deferred).
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Endpoint name or id; or, with --netns/--pid, the network.
    pub target: String,
    /// Which namespace (then TARGET is the network).
    #[command(flatten)]
    pub ns: NetnsArgs,
}

/// `endpoint …` (deferred like [`Command`]).
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum EndpointCmd {
    /// List endpoints.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one endpoint.
    Inspect {
        /// Endpoint name or id.
        endpoint: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Allocate an endpoint: addresses, MAC and ports held, no link yet (`plug` it).
    Create {
        /// Network name or id.
        network: String,
        #[command(flatten)]
        opts: EndpointOpts,
        /// Print JSON instead of the id.
        #[arg(long)]
        json: bool,
    },
    /// Plug an allocated endpoint into a namespace.
    Plug {
        /// Endpoint name or id.
        endpoint: String,
        #[command(flatten)]
        ns: NetnsArgs,
        /// Interface name inside (default: the next free ethN).
        #[arg(long)]
        ifname: Option<String>,
        /// Print JSON instead of the id.
        #[arg(long)]
        json: bool,
    },
    /// Take an endpoint's link away, keeping its addresses, MAC and ports.
    Unplug {
        /// Endpoint name or id.
        endpoint: String,
    },
    /// Release an endpoint: unplug it if plugged, free what it holds; idempotent.
    #[command(alias = "remove")]
    Rm {
        /// Endpoint name or id.
        endpoint: String,
    },
    /// Publish more ports of an endpoint (bridge networks), live.
    Publish {
        /// Endpoint name or id.
        endpoint: String,
        /// `[HOSTIP:]HOSTPORT[-END]:PORT[-END][/tcp|/udp]` (repeatable).
        #[arg(short = 'p', long = "publish", value_name = "SPEC", required = true)]
        publish: Vec<String>,
    },
    /// Stop publishing ports of an endpoint (all of them without -p).
    Unpublish {
        /// Endpoint name or id.
        endpoint: String,
        /// The specs to stop publishing (repeatable).
        #[arg(short = 'p', long = "publish", value_name = "SPEC")]
        publish: Vec<String>,
    },
    /// Compare an endpoint's link, addresses and routes with its record; exit 1 on a
    /// difference.
    Check {
        /// Endpoint name or id.
        endpoint: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

// `run`: a plain comment, not a doc comment, which clap would take as the
// subcommand's about text in place of the variant's (subcommands are deferred).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Network (repeatable): a network name, host, none, or container:NAME.
    #[arg(long = "network", alias = "net", required = true, value_name = "NET")]
    pub networks: Vec<String>,
    /// Endpoint options (apply to the first network).
    #[command(flatten)]
    pub opts: EndpointOpts,
    /// Run the command as this user (NAME, UID or UID:GID).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Add a capability to Docker's default set (repeatable; NET_ADMIN, ALL, …);
    /// with --user it stays effective.
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability from Docker's default set (repeatable; ALL drops all).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Give the command every capability.
    #[arg(long)]
    pub privileged: bool,
    /// A DNS server for the command (repeatable; forwarded to by the daemon).
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// A DNS search domain (repeatable).
    #[arg(long, value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// The command's host name (default: --name, else the endpoint's short id).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// An /etc/hosts line: NAME:IP (repeatable).
    #[arg(long, value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_and_detach_parse_the_same_with_the_hot_command_as_with_the_whole_cli() {
        use clap::Parser;
        let same = [
            "lanyard attach lan --netns /run/netns/c1",
            "lanyard --state-dir /s attach lan --pid 7 --ip 192.0.2.9 --ifname eth1 --json",
            "lanyard attach lan --netns /n --run-dir /r --store sqlite -p 8080:80/tcp --mac 02:00:00:00:00:01",
            "lanyard detach lan --netns /run/netns/c1",
            "lanyard --config /c detach 0123abcd",
            "lanyard detach lan --pid 1 --node h1",
        ];
        for line in same {
            let argv: Vec<&str> = line.split(' ').collect();
            let hot = Cli::parse_hot(&argv).unwrap_or_else(|| panic!("hot refused: {line}"));
            let full = Cli::try_parse_from(&argv).unwrap();
            assert_eq!(format!("{hot:?}"), format!("{full:?}"), "{line}");
        }
        // Everything else, and every error or help, is the whole CLI's to word.
        for line in [
            "lanyard network ls",
            "lanyard attach",
            "lanyard attach lan --netns /n --bogus",
            "lanyard attach --help",
            "lanyard --version",
            "lanyard run --network attach -- true",
        ] {
            let argv: Vec<&str> = line.split(' ').collect();
            assert!(Cli::parse_hot(&argv).is_none(), "{line}");
        }
    }
}
