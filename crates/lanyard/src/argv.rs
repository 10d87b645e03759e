//! `attach` and `detach` in their plain shapes, read without clap.
//!
//! Container engines, scripts and the benchmark call `lanyard attach NET --netns
//! PATH [--ip A …]` and `lanyard detach NET --netns PATH` far more than anything
//! else, twice a cycle. Building even the two-subcommand clap command for them
//! ([`crate::cli::Cli::parse_hot`]) costs ~0.23 ms of a ~3 ms call in a fresh
//! process (its code and allocations are all cold), so those shapes are read here:
//!
//! - the options of [`Globals`] (anywhere) and of `attach`/`detach`, long ones as
//!   `--name VALUE` or `--name=VALUE`, `-p VALUE`, the flag `--json`, and exactly one
//!   positional argument after the verb;
//! - globals not given come from their environment variables, else their defaults,
//!   as clap's `env`/`default_value` give them.
//!
//! Anything else returns `None` and clap parses the line: other short forms, `--`,
//! an unknown option, a single-valued option given twice, `--netns` with `--pid`, a
//! value that is empty, starts with `-`, is not UTF-8 where clap wants text or not
//! a plain number where it wants one, an environment variable set but empty, help
//! and version. So every error and every help text stay clap's, and what is read
//! here means exactly what clap reads (unit test: each accepted line against
//! [`crate::cli::Cli`]).

use crate::cli::{AttachArgs, Cli, Command, DetachArgs, EndpointOpts, Globals, NetnsArgs};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// Which verb a line names.
#[derive(Clone, Copy, PartialEq)]
enum Verb {
    Attach,
    Detach,
}

/// What the options said so far (`None`: not given).
#[derive(Default)]
struct Seen {
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    node: Option<String>,
    store: Option<String>,
    config: Option<PathBuf>,
    netns: Option<PathBuf>,
    pid: Option<u32>,
    ifname: Option<String>,
    json: bool,
    opts: EndpointOpts,
}

/// `args` (with `argv[0]` first) as `attach` or `detach` in a plain shape, reading
/// unset globals from `env`; `None`: clap's to parse.
pub fn parse(args: &[OsString], env: &dyn Fn(&str) -> Option<OsString>) -> Option<Cli> {
    let mut seen = Seen::default();
    let mut verb = None;
    let mut positional: Option<String> = None;
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let text = arg.to_str()?;
        if !text.starts_with('-') {
            match verb {
                None if text == "attach" => verb = Some(Verb::Attach),
                None if text == "detach" => verb = Some(Verb::Detach),
                None => return None,
                Some(_) if positional.is_none() => positional = Some(text.to_string()),
                Some(_) => return None,
            }
            continue;
        }
        if text == "--json" {
            if verb != Some(Verb::Attach) || seen.json {
                return None;
            }
            seen.json = true;
            continue;
        }
        let (name, inline) = match text.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(OsStr::new(value))),
            _ => (text, None),
        };
        let value = match inline {
            Some(v) => v,
            None => rest.next()?.as_os_str(),
        };
        if value.is_empty() || value.as_encoded_bytes().starts_with(b"-") {
            return None;
        }
        // Globals go anywhere; the verb's own options only after it.
        let set = match name {
            "--state-dir" => once(&mut seen.state_dir, PathBuf::from(value)),
            "--run-dir" => once(&mut seen.run_dir, PathBuf::from(value)),
            "--config" => once(&mut seen.config, PathBuf::from(value)),
            "--node" => once(&mut seen.node, text_of(value)?),
            "--store" => once(&mut seen.store, text_of(value)?),
            _ if verb.is_none() => false,
            "--netns" => once(&mut seen.netns, PathBuf::from(value)),
            "--pid" => once(&mut seen.pid, number(value)?),
            _ if verb == Some(Verb::Detach) => false,
            "--ifname" => once(&mut seen.ifname, text_of(value)?),
            "--ip" => once(&mut seen.opts.ip, text_of(value)?),
            "--ip6" => once(&mut seen.opts.ip6, text_of(value)?),
            "--mac" => once(&mut seen.opts.mac, text_of(value)?),
            "--name" => once(&mut seen.opts.name, text_of(value)?),
            "--unprivileged-port-start" => {
                once(&mut seen.opts.unprivileged_port_start, number(value)?)
            }
            "-p" | "--publish" => push(&mut seen.opts.publish, value)?,
            "--route" => push(&mut seen.opts.routes, value)?,
            "--alias" => push(&mut seen.opts.aliases, value)?,
            _ => false,
        };
        if !set {
            return None;
        }
    }
    let (verb, positional) = (verb?, positional?);
    if seen.netns.is_some() && seen.pid.is_some() {
        return None;
    }
    let globals = Globals {
        state_dir: path_or(seen.state_dir, "LANYARD_STATE_DIR", "/var/lib/lanyard", env)?,
        run_dir: path_or(seen.run_dir, "LANYARD_RUN_DIR", "/run/lanyard", env)?,
        node: text_or(seen.node, "LANYARD_NODE", env)?,
        store: text_or(seen.store, "LANYARD_STORE", env)?,
        config: path_or(
            seen.config,
            "LANYARD_CONFIG",
            lanyard_core::config::DEFAULT_PATH,
            env,
        )?,
    };
    let ns = NetnsArgs {
        netns: seen.netns,
        pid: seen.pid,
    };
    let command = match verb {
        Verb::Attach => Command::Attach(AttachArgs {
            network: positional,
            ns,
            ifname: seen.ifname,
            opts: seen.opts,
            json: seen.json,
        }),
        Verb::Detach => Command::Detach(DetachArgs {
            target: positional,
            ns,
        }),
    };
    Some(Cli { globals, command })
}

/// Sets a single-valued option; `false` if it was given already (clap refuses that).
fn once<T>(slot: &mut Option<T>, value: T) -> bool {
    slot.replace(value).is_none()
}

/// Appends to a repeatable option.
fn push(list: &mut Vec<String>, value: &OsStr) -> Option<bool> {
    list.push(text_of(value)?);
    Some(true)
}

fn text_of(value: &OsStr) -> Option<String> {
    value.to_str().map(str::to_string)
}

/// A plain decimal number that fits; anything clap might word otherwise is its own.
fn number<T: std::str::FromStr>(value: &OsStr) -> Option<T> {
    let text = value.to_str()?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A path global: given, else its environment variable (set but empty: clap's to
/// refuse), else its default.
fn path_or(
    given: Option<PathBuf>,
    var: &str,
    default: &str,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<PathBuf> {
    if given.is_some() {
        return given;
    }
    match env(var) {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => Some(PathBuf::from(default)),
    }
}

/// A text global without default: given, else its environment variable. The outer
/// `None` means clap's to parse (set but empty, or not UTF-8).
fn text_or(
    given: Option<String>,
    var: &str,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<Option<String>> {
    if given.is_some() {
        return Some(given);
    }
    match env(var) {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(Some(v.into_string().ok()?)),
        None => Some(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn argv(line: &str) -> Vec<OsString> {
        line.split(' ').map(OsString::from).collect()
    }

    fn real_env(var: &str) -> Option<OsString> {
        std::env::var_os(var)
    }

    #[test]
    fn every_line_read_here_means_what_clap_reads() {
        let same = [
            "lanyard attach lan --netns /run/netns/c1",
            "lanyard attach lan --netns=/run/netns/c1",
            "lanyard --state-dir /s attach lan --pid 7 --ip 192.0.2.9 --ifname eth1 --json",
            "lanyard attach lan --netns /n --run-dir /r --store sqlite -p 8080:80/tcp --mac 02:00:00:00:00:01",
            "lanyard attach --netns /n lan --ip6 2001:db8::7 --name web --alias w1 --alias w2",
            "lanyard attach lan --pid 0012 --publish 53:53/udp -p 80:80 --route 198.51.100.0/24",
            "lanyard attach lan --netns /n --unprivileged-port-start 0 --config /c --node h1",
            "lanyard attach lan",
            "lanyard detach lan --netns /run/netns/c1",
            "lanyard --config /c detach 0123abcd",
            "lanyard detach lan --pid 1 --node h1",
            "lanyard --run-dir=/r detach --netns=/n lan",
        ];
        for line in same {
            let a = argv(line);
            let fast = parse(&a, &real_env).unwrap_or_else(|| panic!("refused: {line}"));
            let clap = Cli::try_parse_from(&a).unwrap();
            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{line}");
        }
    }

    #[test]
    fn everything_else_is_left_to_clap() {
        for line in [
            "lanyard network ls",
            "lanyard attach",
            "lanyard detach",
            "lanyard attach lan --netns /n --bogus x",
            "lanyard attach lan --netns /n extra",
            "lanyard attach lan --netns /n --ip 192.0.2.1 --ip 192.0.2.2",
            "lanyard attach lan --netns /n --pid 1",
            "lanyard attach lan --netns",
            "lanyard attach lan --netns -x",
            "lanyard attach lan --netns= ",
            "lanyard attach lan --pid -1",
            "lanyard attach lan --pid +1",
            "lanyard attach lan --pid 99999999999",
            "lanyard attach lan --unprivileged-port-start 70000",
            "lanyard attach lan --netns /n --json --json",
            "lanyard attach lan -p8080:80",
            "lanyard attach lan -- x",
            "lanyard detach lan --netns /n --json",
            "lanyard detach lan --netns /n --ip 192.0.2.1",
            "lanyard --netns /n attach lan",
            "lanyard attach lan --help",
            "lanyard attach --version",
            "lanyard -h",
            "lanyard run --network attach -- true",
        ] {
            assert!(parse(&argv(line), &real_env).is_none(), "{line}");
        }
    }

    #[test]
    fn globals_not_given_come_from_the_environment_as_with_clap() {
        let env = |var: &str| match var {
            "LANYARD_STATE_DIR" => Some(OsString::from("/env/state")),
            "LANYARD_NODE" => Some(OsString::from("h9")),
            _ => None,
        };
        let cli = parse(&argv("lanyard attach lan --netns /n --node h1"), &env).unwrap();
        assert_eq!(cli.state_dir, PathBuf::from("/env/state"));
        assert_eq!(cli.run_dir, PathBuf::from("/run/lanyard"));
        assert_eq!(
            cli.node.as_deref(),
            Some("h1"),
            "given beats the environment"
        );
        assert_eq!(cli.store, None);
        assert_eq!(
            cli.config,
            PathBuf::from(lanyard_core::config::DEFAULT_PATH)
        );
        // Set but empty: clap refuses an empty path and keeps an empty name, so the
        // line is clap's either way.
        for var in ["LANYARD_RUN_DIR", "LANYARD_STORE"] {
            let empty = |v: &str| (v == var).then(OsString::new);
            assert!(parse(&argv("lanyard detach lan --netns /n"), &empty).is_none());
        }
    }
}
