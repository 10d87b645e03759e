//! Which store this host has been using: a store that was replaced, emptied or lost
//! while lanyard's links live on must not be taken as the truth by the verbs that
//! delete what the store does not know (`gc`, `restore`).
//!
//! Every store carries a random id (`meta` key `store_id`, set on first use); the
//! run dir keeps the id of the store this host used (`RUN_DIR/store-id`, written on
//! first use). A store whose id differs from the marker, or that has none while the
//! marker exists (a truncated `state.db` or a deleted state dir comes back as a
//! fresh, empty store), stops `gc`, `restore` and `network create` with what happened
//! and how to recover: put the old `state.db` back, or accept the new store with
//! `lanyard gc --adopt-store`. The run dir lives in tmpfs, so after a reboot the
//! first verb simply adopts whatever store there is, when nothing of the old one can
//! be alive in the kernel (namespaces and links do not survive a reboot).

use crate::{new_id, Engine};
use lanyard_core::kernel::Kernel;
use lanyard_core::store::Store;
use lanyard_core::{Error, Result};
use std::path::PathBuf;

/// `meta` key of the store's id.
const META_KEY: &str = "store_id";
/// The marker's name in the run dir.
pub const MARKER: &str = "store-id";

impl<S: Store, K: Kernel> Engine<S, K> {
    fn marker(&self) -> Option<PathBuf> {
        self.locks.dir().map(|d| d.join(MARKER))
    }

    /// The store's id, given one if it has none yet.
    fn store_id(&mut self) -> Result<(String, bool)> {
        if let Some(id) = self.store.read(&mut |tx| tx.meta(META_KEY))? {
            return Ok((id, false));
        }
        let fresh = new_id();
        let id = self.store.write(&mut |tx| match tx.meta(META_KEY)? {
            Some(id) => Ok(id),
            None => {
                tx.set_meta(META_KEY, Some(&fresh))?;
                Ok(fresh.clone())
            }
        })?;
        Ok((id, true))
    }

    /// Refuses to go on with a store that is not the one this host used (see the
    /// module doc); records the store as the host's on first use.
    pub(crate) fn check_store(&mut self) -> Result<()> {
        let Some(marker) = self.marker() else {
            return Ok(());
        };
        let (id, new) = self.store_id()?;
        match std::fs::read_to_string(&marker) {
            Ok(known) if known.trim() == id => Ok(()),
            Ok(known) => Err(Error::Conflict(format!(
                "the store is not the one this host has been using (its id is {}, the host's {} in {}): {}. \
                 gc and restore would take live links and endpoints for leftovers. Put the old state.db back, \
                 or accept this store with `lanyard gc --adopt-store`",
                &id[..12],
                &known.trim()[..12.min(known.trim().len())],
                marker.display(),
                if new {
                    "it is new or empty (a truncated state.db or a removed state dir?)"
                } else {
                    "it was replaced"
                }
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.write_marker(&marker, &id),
            Err(e) => Err(Error::Other(format!("{}: {e}", marker.display()))),
        }
    }

    /// `gc --adopt-store`: this store is the host's from now on.
    pub fn adopt_store(&mut self) -> Result<()> {
        let Some(marker) = self.marker() else {
            return Ok(());
        };
        let (id, _) = self.store_id()?;
        self.write_marker(&marker, &id)
    }

    fn write_marker(&self, marker: &std::path::Path, id: &str) -> Result<()> {
        let tmp = marker.with_extension("tmp");
        std::fs::write(&tmp, id)
            .and_then(|()| std::fs::rename(&tmp, marker))
            .map_err(|e| Error::Other(format!("{}: {e}", marker.display())))
    }
}
