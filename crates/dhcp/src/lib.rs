//! lanyard's DHCPv4 client, pure: no sockets, no clock of its own, unit-tested
//! without root. The sockets that carry its messages live in
//! `lanyard_kernel::dhcp` (a packet socket on the endpoint's interface inside its
//! namespace); the engine and `lanyard daemon` drive it.
//!
//! - [`msg`]: who asks ([`msg::Client`]: ClientID derived from the endpoint, not the
//!   MAC; hostname), the requests (DISCOVER, REQUEST in each state, RELEASE) and the
//!   server's answers, through dhcproto;
//! - [`lease`]: a lease's fields and its timeline (bound → renewing at T1 →
//!   rebinding at T2 → expired);
//! - [`exchange`]: the conversations (discover/offer/request/ack with NAK restart,
//!   INIT-REBOOT, renew, rebind, release) over any [`exchange::Transport`], bounded
//!   by a [`exchange::Timing`];
//! - [`frame`]: the IPv4/UDP and ARP packets a packet socket sends and receives.

pub mod exchange;
pub mod frame;
pub mod lease;
pub mod msg;

pub use exchange::{Dest, DhcpError, Timing, Transport};
pub use lease::{Lease, Phase};
pub use msg::Client;
