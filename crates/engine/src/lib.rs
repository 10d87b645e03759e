//! lanyard's engine: the one API every front end (CLI, `lanyard run`, the Docker
//! plugin, the CNI plugin) calls. Each verb validates, records its intent in one
//! store transaction, plans kernel ops from desired vs observed state, applies them
//! with rollback, then records the outcome.

mod alloc;
pub mod dhcp;
pub mod doctor;
pub mod drift;
mod endpoint;
mod firewall;
mod identity;
mod lifecycle;
pub mod lock;
mod maintain;
mod network;
mod probe;
mod reserve;

pub use maintain::Report;
pub use network::NetworkSummary;
pub use reserve::{
    reservation_max_age, reservation_owner, RESERVATION_MAX_AGE_ENV, RESERVATION_MAX_AGE_SECS,
};

use lanyard_core::config::Config;
use lanyard_core::kernel::Kernel;
use lanyard_core::store::Store;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// The engine over a store and a kernel.
pub struct Engine<S: Store, K: Kernel> {
    /// Durable state.
    pub store: S,
    /// Kernel effects.
    pub kernel: K,
    /// Configuration (default pools).
    pub config: Config,
    /// The lock shared with other lanyard processes ([`lock`]).
    pub locks: lock::Locks,
    /// This host's name in a store several hosts share ([`Engine::with_node`]).
    pub node: Option<String>,
    /// Where the store lives, for its marker ([`Engine::with_state_dir`]).
    pub state_dir: Option<std::path::PathBuf>,
}

impl<S: Store, K: Kernel> Engine<S, K> {
    /// An engine over `store` and `kernel`.
    pub fn new(store: S, kernel: K, config: Config) -> Self {
        Engine {
            store,
            kernel,
            config,
            locks: lock::Locks::none(),
            node: None,
            state_dir: None,
        }
    }

    /// Names this host: every endpoint it records carries the name, and its `gc` and
    /// `restore` touch only endpoints of this node (and records from before nodes,
    /// which are this host's). The front ends give the config's `node`, else the
    /// host name.
    pub fn with_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    /// Whether `ep` lives on this host (its kernel side is this host's to touch).
    pub fn is_local(&self, ep: &lanyard_core::model::Endpoint) -> bool {
        match (&ep.node, &self.node) {
            (Some(theirs), Some(ours)) => theirs == ours,
            _ => true,
        }
    }

    /// Shares `RUN_DIR/lock` with the other lanyard processes of this host: every
    /// front end that runs beside others sets it (the CLI, the daemon).
    pub fn with_run_dir(mut self, run_dir: &std::path::Path) -> Self {
        self.locks = lock::Locks::in_dir(run_dir);
        self
    }

    /// Keeps a marker of the store's id in `state_dir` (beside a SQLite store's
    /// `state.db`), which outlives a reboot: a store lost or replaced before one is
    /// then told apart too (identity.rs).
    pub fn with_state_dir(mut self, state_dir: &std::path::Path) -> Self {
        self.state_dir = Some(state_dir.to_path_buf());
        self
    }

    /// Takes the cross-process lock in `mode` until the guard drops.
    pub(crate) fn lock(&self, mode: lock::Mode) -> lanyard_core::Result<lock::Guard> {
        self.locks.take(mode)
    }
}

/// 64 random hex digits (ids; not a secret).
pub fn new_id() -> String {
    (0..4)
        .map(|i| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(i);
            h.write_u128(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            h.write_u32(std::process::id());
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// A random 32-bit number (tombstone names).
pub fn nonce() -> u32 {
    new_id()[..8]
        .chars()
        .fold(0u32, |a, c| (a << 4) | c.to_digit(16).unwrap_or(0))
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
