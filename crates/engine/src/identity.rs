//! Which store this host has been using: a store that was replaced, emptied, lost or
//! set back to an older state while lanyard's links live on must not be taken as the
//! truth by the verbs that delete what the store does not know (`gc`, `restore`,
//! `network rm`) or hand out what it does not know is taken (`network create`).
//!
//! Every store carries a random id (`meta` key `store_id`, set on first use) and a
//! generation (`meta` key `generation`) that each of those verbs raises by one. The
//! run dir keeps the id and the generation the host last saw (`RUN_DIR/store-id`:
//! `ID GENERATION`); the state dir keeps the id alone (`STATE_DIR/store-id`, beside
//! `state.db`). A store whose id differs from a marker's, or that has none while a
//! marker exists (a truncated `state.db` or a deleted state dir comes back as a fresh,
//! empty store), or whose generation is below the run dir's (an older copy put back,
//! or a WAL SQLite dropped as garbled: the commits since are gone), stops those verbs
//! with what happened and how to recover: put the right `state.db` back, or accept
//! this store with `lanyard gc --adopt-store`.
//!
//! The run dir lives in tmpfs: after a reboot nothing of the old store can be alive
//! in the kernel (namespaces and links do not survive one), and the state dir's marker
//! alone still tells a truncated or replaced `state.db` (the networks would be lost
//! silently otherwise). A state dir removed whole before a reboot leaves no trace, and
//! a store set back by commits that raised no generation (attaches and detaches since
//! the last gc, restore or create) is not told apart: attach and detach check nothing
//! here, to stay fast.

use crate::{new_id, Engine};
use lanyard_core::kernel::Kernel;
use lanyard_core::store::Store;
use lanyard_core::{Error, Result};
use std::path::{Path, PathBuf};

/// `meta` key of the store's id.
const META_KEY: &str = "store_id";
/// `meta` key of the store's generation.
const GENERATION_KEY: &str = "generation";
/// The markers' name in the run dir and in the state dir.
pub const MARKER: &str = "store-id";

/// What a marker says: the store's id and, in the run dir's, its generation.
struct Seen {
    path: PathBuf,
    id: String,
    generation: Option<u64>,
}

impl<S: Store, K: Kernel> Engine<S, K> {
    /// The run dir's marker, then the state dir's.
    fn markers(&self) -> Vec<PathBuf> {
        let run = self.locks.dir().map(|d| d.join(MARKER));
        let state = self.state_dir.as_ref().map(|d| d.join(MARKER));
        run.into_iter().chain(state).collect()
    }

    /// The store's id (given one if it has none yet) and its generation, raised by
    /// one, in one transaction that first checks them against what the markers
    /// saw: a refused store is left as it was (its generation must not creep up to
    /// the marker's by refused calls).
    fn advance(&mut self, seen: &[Seen]) -> Result<(String, u64)> {
        let fresh = new_id();
        self.store.write(&mut |tx| {
            let (id, new) = match tx.meta(META_KEY)? {
                Some(id) => (id, false),
                None => {
                    tx.set_meta(META_KEY, Some(&fresh))?;
                    (fresh.clone(), true)
                }
            };
            let generation = tx
                .meta(GENERATION_KEY)?
                .and_then(|g| g.parse::<u64>().ok())
                .unwrap_or(0);
            for s in seen {
                check(s, &id, new, generation)?;
            }
            tx.set_meta(GENERATION_KEY, Some(&(generation + 1).to_string()))?;
            Ok((id, generation + 1))
        })
    }

    /// Refuses to go on with a store that is not the one this host used, or one set
    /// back (see the module doc); records the store as the host's.
    pub(crate) fn check_store(&mut self) -> Result<()> {
        if self.locks.dir().is_none() && self.state_dir.is_none() {
            return Ok(());
        }
        let mut seen = vec![];
        for m in self.markers() {
            seen.extend(read_marker(&m)?);
        }
        let (id, generation) = self.advance(&seen)?;
        self.write_markers(&id, generation)
    }

    /// `gc --adopt-store`: this store is the host's from now on.
    pub fn adopt_store(&mut self) -> Result<()> {
        if self.locks.dir().is_none() && self.state_dir.is_none() {
            return Ok(());
        }
        let (id, generation) = self.advance(&[])?;
        self.write_markers(&id, generation)
    }

    /// The run dir's marker gets the generation, the state dir's the id alone (only
    /// written when it changes: no write to the state dir on every gc).
    fn write_markers(&self, id: &str, generation: u64) -> Result<()> {
        if let Some(d) = self.locks.dir() {
            write_marker(&d.join(MARKER), &format!("{id} {generation}"))?;
        }
        if let Some(d) = &self.state_dir {
            let m = d.join(MARKER);
            if read_marker(&m)?.is_none_or(|s| s.id != id) {
                write_marker(&m, id)?;
            }
        }
        Ok(())
    }
}

/// Whether the store (`id`, `new` when it got its id just now, at `generation`) is
/// the one marker `s` saw.
fn check(s: &Seen, id: &str, new: bool, generation: u64) -> Result<()> {
    if s.id != id {
        return Err(Error::Conflict(format!(
            "the store is not the one this host has been using (its id is {}, the host's {} in {}): {}. \
             gc and restore would take live links and endpoints for leftovers. Put the old state.db back, \
             or accept this store with `lanyard gc --adopt-store`",
            short(id),
            short(&s.id),
            s.path.display(),
            if new {
                "it is new or empty (a truncated state.db or a removed state dir?)"
            } else {
                "it was replaced"
            }
        )));
    }
    if let Some(known) = s.generation.filter(|g| *g > generation) {
        return Err(Error::Conflict(format!(
            "the store went back to an older state (generation {generation}, the host has seen {known} in {}): \
             an older state.db was put back, or SQLite dropped a garbled WAL. What was recorded since is \
             gone while it may be live: gc and restore would take it for leftovers. Put the newer state.db \
             back, or accept this store with `lanyard gc --adopt-store`",
            s.path.display(),
        )));
    }
    Ok(())
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// A marker's content, `None` when there is none.
fn read_marker(path: &Path) -> Result<Option<Seen>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut words = text.split_whitespace();
            Ok(Some(Seen {
                path: path.to_path_buf(),
                id: words.next().unwrap_or_default().to_string(),
                generation: words.next().and_then(|g| g.parse().ok()),
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Other(format!("{}: {e}", path.display()))),
    }
}

/// Replaces `path` with `text` at once (a new file, renamed over it).
fn write_marker(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::Other(format!("{}: {e}", path.display())))
}
