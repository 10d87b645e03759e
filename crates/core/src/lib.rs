//! lanyard's pure core: the model (networks, endpoints), validation of user input,
//! IPAM, the planner that turns desired state into kernel [`op::Op`]s, and the two
//! narrow interfaces every effect goes through: [`kernel::Kernel`] and [`store::Store`].
//!
//! Nothing in this crate makes a syscall; it is unit-tested without root.

pub mod apply;
pub mod config;
pub mod dnsname;
pub mod error;
pub mod firewall;
pub mod ipam;
pub mod kernel;
pub mod lease;
pub mod model;
pub mod name;
pub mod netreq;
pub mod op;
pub mod owner;
pub mod plan;
pub mod store;
pub mod subnet;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{Error, ErrorKind, Result};
