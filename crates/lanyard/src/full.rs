//! What only `lanyardd` carries: the daemon and the etcd store.
//!
//! `lanyard` is built without them (no tokio, hyper, DNS server or etcd client in its
//! image): a short CLI call then maps and relocates a third less, which was a fifth
//! of an attach's time in the client (see ARCHITECTURE.md, "Two binaries"). The code
//! of both lives in this library; only `lanyardd`'s `main` ([`crate::main_full`])
//! names it, through [`provide`], so the linker leaves it out of `lanyard`.
//!
//! In `lanyard`, a verb that needs either part ([`get`]) executes `lanyardd` from
//! the same directory as the running binary, with the same arguments (argv\[0\]
//! included: the CNI plugin's names keep working), environment and descriptors.

use crate::cli::{Cli, DaemonArgs};
use crate::store::SharedStore;
use lanyard_core::{Error, Result};
use std::sync::OnceLock;

/// The name of the full binary, next to `lanyard`.
pub const FULL_BIN: &str = "lanyardd";

/// Opens an etcd store: its URL, this host's node name.
pub type OpenShared = fn(&str, Option<&str>) -> Result<Box<dyn SharedStore>>;

/// The parts only the full build has.
#[derive(Clone, Copy)]
pub struct Full {
    /// `lanyard daemon`.
    pub daemon: fn(&Cli, &DaemonArgs) -> Result<i32>,
    /// Opens an etcd store.
    pub etcd: OpenShared,
}

static FULL: OnceLock<Full> = OnceLock::new();

/// What this process already read from stdin (the CNI plugin's configuration),
/// given to `lanyardd` as its stdin.
static STDIN: OnceLock<Vec<u8>> = OnceLock::new();

/// Keeps `read`, the whole of stdin already consumed, for [`get`]'s `lanyardd`.
pub fn replay_stdin(read: &[u8]) {
    if FULL.get().is_none() {
        let _ = STDIN.set(read.to_vec());
    }
}

/// Called once by the full build's `main`.
pub fn provide(full: Full) {
    let _ = FULL.set(full);
}

/// The full build's parts. In `lanyard`, this executes `lanyardd` instead and
/// returns only if that fails (with an error saying where it looked).
pub fn get() -> Result<&'static Full> {
    if let Some(f) = FULL.get() {
        return Ok(f);
    }
    Err(exec())
}

/// Replaces this process with `lanyardd` beside it, same argv and environment.
fn exec() -> Error {
    use std::os::unix::process::CommandExt;
    let here = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return Error::Other(format!("cannot find lanyard's own path: {e}")),
    };
    let full = here.with_file_name(FULL_BIN);
    if let Some(read) = STDIN.get() {
        if let Err(e) = stdin_from(read) {
            return Error::Other(format!("cannot pass stdin on to {}: {e}", full.display()));
        }
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "lanyard".into());
    let e = std::process::Command::new(&full)
        .arg0(arg0)
        .args(args)
        .exec();
    Error::Other(format!(
        "this needs {} (lanyard's daemon and etcd build), which could not run: {e}",
        full.display()
    ))
}

/// Makes fd 0 a fresh in-memory file holding `bytes`, read from its start.
fn stdin_from(bytes: &[u8]) -> std::io::Result<()> {
    use rustix::fs::{memfd_create, MemfdFlags};
    use std::io::{Seek, Write};
    let fd = memfd_create("lanyard-stdin", MemfdFlags::CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    file.rewind()?;
    // dup2 clears close-on-exec on the new descriptor 0.
    rustix::stdio::dup2_stdin(&file)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_full_build_beside_it_the_error_says_where_it_looked() {
        // The unit-test binary (target/*/deps/lanyard_app-HASH) has no `lanyardd`
        // next to it.
        let msg = exec().to_string();
        assert!(
            msg.contains(FULL_BIN) && msg.contains("could not run"),
            "{msg}"
        );
    }
}
