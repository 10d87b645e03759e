//! Docker's remote plugin protocol: `lanyard daemon` answers dockerd as a
//! NetworkDriver and an IpamDriver (HTTP/1.1 + JSON on a unix socket, by default
//! [`DEFAULT_SOCKET`]). The crate `lanyard-docker` parses each request and
//! translates Docker's words; [`handle`] does the engine calls on the daemon's
//! engine thread; [`serve`] is the listener, which systemd may bind and pass
//! ([`activation`]).
//!
//! Field names follow moby libnetwork's `drivers/remote/api` and `ipams/remote/api`.
//! Every refusal is `{"Err": "…"}`, which `docker` prints as it is.

pub mod activation;
pub mod handle;
pub mod serve;

/// Where dockerd looks for the plugin named `lanyard`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/lanyard.sock";
