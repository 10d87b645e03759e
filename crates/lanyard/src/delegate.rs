//! With `lanyard daemon` up, `attach` and `detach` (and the CNI plugin's ADD on a
//! named network and DEL) hand their whole verb to it over
//! `daemon.sock` (`verb` in [`lanyard_kernel::handoff`]): the daemon runs it on its
//! engine thread with the store it keeps open, so the CLI call opens no store (no
//! WAL-index rebuild), makes no netlink sockets and forks no reaper. Same output,
//! same errors, same exit codes as the local path.
//!
//! The CLI runs the verb itself when no daemon answers (no socket, a stale one, a
//! failed ownership check), when the daemon speaks an older protocol, when the
//! daemon runs in another network namespace than the caller (paths and "the host"
//! would mean something else there) or on another state directory, when the daemon
//! cannot read the request (an older daemon that lacks the verb: it ran nothing),
//! and when a test hook (`LANYARD_FAIL_AT`,
//! `LANYARD_KILL_AT`) or `LANYARD_NO_DAEMON=1` asks for the local path. Once the
//! daemon has the verb, its answer is final: a daemon that dies during the verb is
//! an error (the verb may have run; `lanyard gc` finishes what it left).

use crate::cli::Cli;
use lanyard_core::model::{AttachRequest, DetachRequest, Endpoint, Network};
use lanyard_core::{Error, ErrorKind};
use lanyard_kernel::handoff::{self, Client, Message};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest a CLI call waits for the daemon's answer (a DHCP attach waits for the
/// LAN's server).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// Exit code of a `verb-err` that means "run it yourself".
pub const NOT_HERE: i32 = -1;

/// What a CLI call hands over.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// (st_dev, st_ino) of the caller's network namespace.
    pub caller_netns: (u64, u64),
    /// The state directory the caller means; a daemon on another one runs nothing
    /// (absent from callers before it: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// The verb.
    pub verb: Verb,
}

/// A delegated verb.
#[derive(Debug, Serialize, Deserialize)]
pub enum Verb {
    /// `attach`, its namespace path already absolute.
    Attach(Box<AttachRequest>),
    /// `detach`.
    Detach(DetachRequest),
    /// The CNI plugin's ADD on a named network: `attach` with the CNI owner, whose
    /// record a starved earlier try left behind is finished first (as the plugin
    /// does locally); answered with the network too, for the CNI result.
    CniAdd(Box<AttachRequest>),
}

/// A delegated verb's outcome.
#[derive(Debug, Serialize, Deserialize)]
pub enum Outcome {
    /// The endpoint attached.
    Attached(Endpoint),
    /// The endpoint detached, if there was one.
    Detached(Option<Endpoint>),
    /// The CNI ADD's endpoint and its network.
    CniAdded(Endpoint, Box<Network>),
}

/// A delegated verb's failure as it travels (`verb-err CODE JSON`): the message,
/// and for invalid input its parts, so the CLI words it as the local path does.
#[derive(Debug, Serialize, Deserialize)]
struct Failure {
    message: String,
    kind: String,
    invalid: Option<(String, String, String)>,
}

/// A failure the CLI reports: an error rebuilt, or one it prints as it came.
#[derive(Debug)]
pub enum Failed {
    /// Rebuilt (its kind and message as the daemon had them).
    Error(Error),
    /// The exit code and message.
    Raw(i32, String),
}

impl Failed {
    fn from_wire(code: i32, text: &str) -> Failed {
        let Ok(f) = serde_json::from_str::<Failure>(text) else {
            return Failed::Raw(code, text.to_string());
        };
        match (f.kind.as_str(), f.invalid) {
            ("invalid", Some((field, value, reason))) => Failed::Error(Error::Invalid {
                field,
                value,
                reason,
            }),
            ("conflict", _) => Failed::Error(Error::Conflict(f.message)),
            ("try-again", _) => Failed::Error(Error::TryAgain(f.message)),
            ("unsupported", _) => Failed::Error(Error::Unsupported(f.message)),
            _ => Failed::Raw(code, f.message),
        }
    }
}

fn to_wire(e: &Error) -> String {
    let kind = match e.kind() {
        ErrorKind::Invalid => "invalid",
        ErrorKind::Conflict => "conflict",
        ErrorKind::NotFound => "not-found",
        ErrorKind::TryAgain => "try-again",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::Internal => "internal",
    };
    let invalid = match e {
        Error::Invalid {
            field,
            value,
            reason,
        } => Some((field.clone(), value.clone(), reason.clone())),
        _ => None,
    };
    serde_json::to_string(&Failure {
        message: e.to_string(),
        kind: kind.into(),
        invalid,
    })
    .unwrap_or_else(|_| e.to_string())
}

/// Identity of the network namespace this process runs in.
pub fn own_netns() -> Option<(u64, u64)> {
    let st = rustix::fs::stat("/proc/self/ns/net").ok()?;
    Some((st.st_dev, st.st_ino))
}

/// Whether this call must run locally (test hooks, an explicit opt-out).
fn local_only() -> bool {
    ["LANYARD_FAIL_AT", "LANYARD_KILL_AT"]
        .iter()
        .any(|k| std::env::var_os(k).is_some())
        || std::env::var("LANYARD_NO_DAEMON").is_ok_and(|v| v == "1")
}

/// What a daemon answers to a request it cannot read (it ran nothing).
const UNREADABLE: &str = "unreadable request";

/// Hands `verb` to the daemon. `None`: no daemon took it, run it locally. `Some`:
/// the daemon's outcome, or the exit code and message of its failure.
pub fn to_daemon(cli: &Cli, verb: Verb) -> Option<Result<Outcome, Failed>> {
    to_daemon_at(&cli.run_dir, None, verb)
}

/// [`to_daemon`] for the daemon whose run directory is `run_dir`, on the store in
/// `state_dir` if given (a daemon on another one runs nothing).
pub fn to_daemon_at(
    run_dir: &Path,
    state_dir: Option<&Path>,
    verb: Verb,
) -> Option<Result<Outcome, Failed>> {
    if local_only() {
        return None;
    }
    // `verbs.sock` first (the daemon's engine thread serves it itself: one thread
    // woken); `daemon.sock` for a daemon from before it.
    let client = Client::connect(&run_dir.join(handoff::VERB_SOCKET))
        .or_else(|_| Client::connect(&run_dir.join(handoff::SOCKET)))
        .ok()?;
    let json = serde_json::to_string(&Request {
        caller_netns: own_netns()?,
        state_dir: state_dir.map(Path::to_path_buf),
        verb,
    })
    .ok()?;
    client.send(&Message::Verb(json), &[]).ok()?;
    let gone = |e: std::io::Error| {
        Some(Err(Failed::Raw(
            1,
            format!(
                "lanyard daemon did not answer ({e}); the call may have run: see \
                 `lanyard endpoint ls`, and `lanyard gc` finishes what it left"
            ),
        )))
    };
    match client.recv(ANSWER_WITHIN) {
        Ok(Message::VerbOk(json)) => match serde_json::from_str(&json) {
            Ok(o) => Some(Ok(o)),
            Err(e) => Some(Err(Failed::Raw(1, format!("lanyard daemon answered {e}")))),
        },
        Ok(Message::VerbErr(NOT_HERE, _)) => None,
        // A daemon from before this verb could not read it, and ran nothing.
        Ok(Message::VerbErr(_, why)) if why.starts_with(UNREADABLE) => None,
        Ok(Message::VerbErr(code, why)) => Some(Err(Failed::from_wire(code, &why))),
        // A daemon from before delegation refuses the verb unrun.
        Ok(Message::Error(_)) => None,
        Ok(other) => Some(Err(Failed::Raw(
            1,
            format!("lanyard daemon answered {other:?}"),
        ))),
        Err(e) => gone(e),
    }
}

/// Whether `a` and `b` name the same directory (the same path, or the same inode).
fn same_dir(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (rustix::fs::stat(a), rustix::fs::stat(b)) {
        (Ok(x), Ok(y)) => (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino),
        _ => false,
    }
}

/// The daemon's side: runs one delegated request on `engine` (on the engine thread).
/// The answer, and the endpoint notice to pass on to subscribers, if any.
pub fn serve(engine: &mut crate::Lanyard, json: &str) -> (Message, Option<Message>) {
    let req: Request = match serde_json::from_str(json) {
        Ok(r) => r,
        Err(e) => return (Message::VerbErr(1, format!("{UNREADABLE}: {e}")), None),
    };
    if own_netns() != Some(req.caller_netns) {
        let why = "the daemon runs in another network namespace".into();
        return (Message::VerbErr(NOT_HERE, why), None);
    }
    if let (Some(theirs), Some(ours)) = (&req.state_dir, &engine.state_dir) {
        if !same_dir(theirs, ours) {
            let why = "the daemon runs on another state directory".into();
            return (Message::VerbErr(NOT_HERE, why), None);
        }
    }
    let done = match req.verb {
        Verb::Attach(a) => engine.attach(&a).map(Outcome::Attached),
        Verb::Detach(d) => engine.detach(&d).map(Outcome::Detached),
        Verb::CniAdd(a) => {
            crate::cni::add_here(engine, *a).map(|(ep, net)| Outcome::CniAdded(ep, Box::new(net)))
        }
    };
    let notice = |change, ep: &Endpoint| Message::Endpoint {
        change,
        network: ep.network.to_string(),
        id: ep.id.clone(),
    };
    let event = match &done {
        Ok(Outcome::Attached(ep) | Outcome::CniAdded(ep, _)) => {
            Some(notice(handoff::Change::Added, ep))
        }
        Ok(Outcome::Detached(Some(ep))) => Some(notice(handoff::Change::Removed, ep)),
        _ => None,
    };
    let answer = match done {
        Ok(o) => match serde_json::to_string(&o) {
            Ok(json) => Message::VerbOk(json),
            Err(e) => Message::VerbErr(1, e.to_string()),
        },
        Err(e) => Message::VerbErr(e.exit_code(), to_wire(&e)),
    };
    (answer, event)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon at `dir` that answers one verb with `answer`; what it was sent.
    fn fake_daemon(dir: &Path, answer: Message) -> std::thread::JoinHandle<Option<String>> {
        let l = handoff::Listener::bind(&dir.join(handoff::SOCKET)).unwrap();
        std::thread::spawn(move || {
            let conn = loop {
                match l.accept() {
                    Ok(c) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            let mut pfd = [rustix::event::PollFd::new(
                &conn,
                rustix::event::PollFlags::IN,
            )];
            rustix::event::poll(&mut pfd, None).unwrap();
            let got = match handoff::recv_on(conn.as_fd()) {
                Ok(Some((Message::Verb(json), _))) => Some(json),
                _ => None,
            };
            handoff::send_on(conn.as_fd(), &answer, &[]).unwrap();
            got
        })
    }

    fn add() -> Verb {
        Verb::CniAdd(Box::new(AttachRequest {
            network: "lan".into(),
            netns: "/run/netns/c1".into(),
            ..Default::default()
        }))
    }

    use std::os::fd::AsFd;

    #[test]
    fn a_daemon_too_old_for_a_verb_has_the_caller_run_it() {
        let dir = tempfile::tempdir().unwrap();
        // What a daemon from before `CniAdd` answers: it could not read the request.
        let why = format!("{UNREADABLE}: unknown variant `CniAdd` at line 1 column 40");
        let d = fake_daemon(dir.path(), Message::VerbErr(1, why));
        assert!(to_daemon_at(dir.path(), Some(Path::new("/var/lib/x")), add()).is_none());
        let sent = d.join().unwrap().expect("a verb was sent");
        let req: Request = serde_json::from_str(&sent).unwrap();
        assert_eq!(req.state_dir.as_deref(), Some(Path::new("/var/lib/x")));
    }

    #[test]
    fn a_daemon_that_ran_the_verb_and_failed_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let d = fake_daemon(dir.path(), Message::VerbErr(1, "kernel said no".into()));
        match to_daemon_at(dir.path(), None, add()) {
            Some(Err(Failed::Raw(1, m))) => assert_eq!(m, "kernel said no"),
            other => panic!("{other:?}"),
        }
        d.join().unwrap();
    }

    #[test]
    fn no_daemon_has_the_caller_run_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(to_daemon_at(dir.path(), None, add()).is_none());
    }

    #[test]
    fn a_request_from_before_state_dirs_still_reads() {
        let old = r#"{"caller_netns":[1,2],"verb":{"Detach":{"Endpoint":"x"}}}"#;
        let req: Request = serde_json::from_str(old).unwrap();
        assert_eq!(req.state_dir, None);
    }
}
