//! The CNI 1.1 protocol as lanyard speaks it, pure (no store, no kernel): the plugin
//! configuration read from stdin and checked ([`conf`]), the results and the error
//! object written back in the caller's `cniVersion` ([`result`]), and lanyard's
//! errors mapped to the spec's codes ([`error`]). The `lanyard` binary's CNI front end
//! runs the verbs on these; the fuzz target `cni_config` feeds [`conf::parse`].

pub mod conf;
pub mod error;
pub mod result;
