//! lanyard's kernel layer: [`Netlink`], the real [`lanyard_core::kernel::Kernel`].
//!
//! In-process rtnetlink (no `ip` subprocesses, no async runtime): one `NETLINK_ROUTE`
//! socket per network namespace, opened once; links created directly in their target
//! namespace; tombstones deleted by a detached worker process. System calls go through
//! rustix and nix, libnftables is loaded through libloading. Module map:
//!
//! - `netlink`: the [`Netlink`] type and the dispatch of every [`lanyard_core::op::Op`];
//! - `link`, `addr`, `route`, `sysctl`: one file per kind of kernel object;
//! - `view`: what a namespace looks like, from three dumps, or just a few named links
//!   and their addresses (the hot path);
//! - [`netns`]: namespace identity, handles, visiting a namespace; public:
//!   [`netns::run_in`] and [`netns::within`], to work inside a container's namespace;
//! - `socket`: one netlink socket and its request/answer exchanges;
//! - `wire`: decoding the kernel's answers;
//! - `reap`: the detached tombstone deleter (a forked worker process);
//! - [`handoff`]: tombstones handed to `lanyard daemon` instead, when it is up;
//! - `error`: netlink errors and their translation to [`lanyard_core::Error`];
//! - [`nft`]: nftables in-process through libnftables, loaded on first use;
//! - [`nftwatch`]: nftables change events and table shapes over nfnetlink.
//! - [`dhcp`]: DHCP and ARP probes on an endpoint's interface in its namespace
//!   (packet sockets under `lanyard_dhcp`'s client).

mod addr;
pub mod dhcp;
mod error;
mod link;
mod netlink;
pub mod netns;
mod reap;
mod route;
mod socket;
mod sysctl;
mod view;
mod wire;

pub use netlink::Netlink;
pub mod handoff;
pub use sysctl::sysctl_path;
pub mod nft;
pub mod nftwatch;
