//! `lab`: lanyard's one integration-test binary.
//!
//! Every test builds a throwaway lab of network namespaces with [`harness::Lab`] and
//! drives the real `lanyard` binary inside it. Tests named `vm_<feature>_…` need a
//! kernel feature the host may lack; `scripts/test` runs them in a VM with a stock
//! Debian kernel (`scripts/vm-test`) and all others on the host.

mod attach;
mod cni;
mod compose;
mod concurrency;
mod crash;
mod daemon;
mod dhcp;
mod dns;
mod docker;
mod doctor;
mod etcd;
mod firewall;
mod harness;
mod kernel_vm;
mod lifecycle;
mod messages;
mod network;
mod plugin_socket;
mod podman;
mod recipes;
mod run_caps;
mod smoke;
mod store_safety;
mod upgrade;
