//! Socket activation of the plugin socket: when systemd (`lanyard.socket`, or
//! `systemd-socket-activate`) has bound `--docker-socket` and started the daemon with
//! it (`LISTEN_PID`/`LISTEN_FDS`, descriptors from 3 on), the daemon serves that
//! socket instead of binding its own. dockerd can then connect before the daemon
//! runs, and its first call starts it: no "plugin not found" at boot, whatever the
//! order of the units.
//!
//! Only a listening unix stream socket bound to the `--docker-socket` path is taken;
//! any other descriptor passed is closed with a warning. The passed socket is never
//! removed or re-bound (systemd owns the path and its mode); the daemon's children
//! do not inherit it (close-on-exec), and they ignore the environment, which names
//! the daemon's pid.

use lanyard_core::{Error, Result};
use std::ops::Range;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: i32 = 3;

/// The descriptors passed to process `own_pid`, from the values of `LISTEN_PID` and
/// `LISTEN_FDS`: none unless both are set and the pid is ours (a parent's passed
/// descriptors are not ours). A count that is no number is an error naming it.
pub fn passed_fds(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    own_pid: u32,
) -> Result<Range<i32>> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(FIRST_FD..FIRST_FD);
    };
    if pid.trim().parse::<u32>().ok() != Some(own_pid) {
        return Ok(FIRST_FD..FIRST_FD);
    }
    let n: u16 = fds.trim().parse().map_err(|_| {
        Error::Other(format!(
            "daemon: socket activation: LISTEN_FDS={fds:?} is not a descriptor count"
        ))
    })?;
    Ok(FIRST_FD..FIRST_FD + i32::from(n))
}

/// Whether `a` and `b` name the same socket path (as given, or once resolved, so
/// `/var/run/…` matches `/run/…`).
fn same_path(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// The listening socket bound to `path` that systemd passed to this process, if any
/// (see the module doc); the other passed descriptors are closed.
pub fn take(path: &Path) -> Result<Option<UnixListener>> {
    let fds = passed_fds(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    )?;
    let mut found = None;
    for raw in fds {
        // SAFETY: LISTEN_PID names this process, so by the socket activation
        // protocol descriptors 3..3+LISTEN_FDS were open at exec and are this
        // process's alone; lanyard never closes a descriptor it did not open, and this
        // runs once, so each is owned exactly once here.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let listening = rustix::net::sockopt::socket_type(&fd)
            .is_ok_and(|t| t == rustix::net::SocketType::STREAM)
            && rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false);
        let l = UnixListener::from(fd);
        let bound = l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf));
        match bound {
            Some(p) if listening && found.is_none() && same_path(&p, path) => {
                rustix::io::fcntl_setfd(&l, rustix::io::FdFlags::CLOEXEC).map_err(|e| {
                    Error::Other(format!("daemon: socket activation: fd {raw}: {e}"))
                })?;
                l.set_nonblocking(true).map_err(|e| {
                    Error::Other(format!("daemon: socket activation: fd {raw}: {e}"))
                })?;
                found = Some(l);
            }
            other => tracing::warn!(
                "daemon: socket activation: fd {raw} ({}) is not a listening socket on \
                 --docker-socket {}; closed",
                other.map_or("no unix path".into(), |p| p.display().to_string()),
                path.display()
            ),
        }
    }
    Ok(found)
}

/// The plugin listener: the socket systemd passed for `path`, or else one bound
/// here ([`super::serve::bind`]).
pub fn listener(path: &Path) -> Result<tokio::net::UnixListener> {
    match take(path)? {
        Some(l) => {
            tracing::info!(
                "daemon: docker plugin socket {}: passed by systemd",
                path.display()
            );
            tokio::net::UnixListener::from_std(l).map_err(|e| {
                Error::Other(format!(
                    "daemon: docker plugin socket {}: {e}",
                    path.display()
                ))
            })
        }
        None => super::serve::bind(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_ours_only_when_listen_pid_names_us() {
        assert_eq!(passed_fds(Some("42"), Some("2"), 42).unwrap(), 3..5);
        assert_eq!(passed_fds(Some("42"), Some("0"), 42).unwrap(), 3..3);
        assert!(passed_fds(Some("41"), Some("2"), 42).unwrap().is_empty());
        assert!(passed_fds(None, Some("2"), 42).unwrap().is_empty());
        assert!(passed_fds(Some("42"), None, 42).unwrap().is_empty());
        assert!(passed_fds(Some("x"), Some("2"), 42).unwrap().is_empty());
        let err = passed_fds(Some("42"), Some("two"), 42)
            .unwrap_err()
            .to_string();
        assert!(err.contains("LISTEN_FDS=\"two\""), "{err}");
        assert!(passed_fds(Some("42"), Some("-1"), 42).is_err());
    }

    #[test]
    fn the_same_socket_path_matches_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let _l = UnixListener::bind(real.join("s.sock")).unwrap();
        assert!(same_path(&real.join("s.sock"), &real.join("s.sock")));
        assert!(same_path(
            &dir.path().join("link/s.sock"),
            &real.join("s.sock")
        ));
        assert!(!same_path(&real.join("other.sock"), &real.join("s.sock")));
    }
}
