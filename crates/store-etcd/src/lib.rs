//! lanyard's store for several hosts on one LAN: [`EtcdStore`], an etcd
//! implementation of [`lanyard_core::store::Store`].
//!
//! Networks, endpoints, addresses, ports and owners live under one key prefix
//! (`/lanyard/`) of an etcd cluster, so hosts that share a LAN subnet never hand
//! out the same address. Every [`Store::write`](lanyard_core::store::Store::write)
//! is an optimistic transaction: reads at one revision, writes buffered, then one
//! etcd `Txn` that compares the revision of everything read and applies the writes
//! only if none changed; on a conflict the closure runs again (it has no effects
//! outside the transaction, as the trait requires). Each host keeps a key bound to
//! an etcd lease ([`EtcdStore::lease_key`]): while it lives, no other host frees
//! that host's addresses.
//!
//! The client is tokio-based; the store owns a small current-thread runtime made
//! when it is opened, so nothing of it runs for the SQLite store.
//!
//! Modules: `url` parses `etcd://…`, `store` connects and retries, `kv` is the
//! optimistic transaction over keys, `tx` maps each `Tx` method to keys, `seen`
//! reports what a transaction saw of networks and endpoints (for a host's local
//! copy, which the binary keeps).

mod kv;
mod seen;
mod store;
mod tx;
mod url;

pub use seen::{Record, Seen};
pub use store::{EtcdStore, CONFLICT_BUDGET, DIAL_TIMEOUT, REQUEST_TIMEOUT};
pub use url::EtcdUrl;
