//! The one narrow interface every kernel effect goes through ([`Kernel`]), the views
//! it returns, and [`fake::FakeKernel`], a recording implementation for unit tests.

use crate::lease::{DhcpWho, Extended, Lease};
use crate::model::MacAddr;
use crate::name::IfName;
use crate::op::{Netns, Op};
use crate::{Error, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// A link as observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// `IFLA_INFO_KIND` (bridge, veth, macvlan, …), None for physical links.
    pub kind: Option<String>,
    /// Hardware address.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Carrier / operational state up (IFF_LOWER_UP).
    pub lower_up: bool,
    /// IFLA_LINK: the parent's ifindex (macvlan, vlan); for a veth its peer's index,
    /// which may be in another namespace.
    pub parent: Option<u32>,
    /// IFLA_MASTER: the bridge this link is enslaved to.
    pub master: Option<u32>,
}

/// An address as observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrInfo {
    /// ifindex of the link holding it.
    pub index: u32,
    /// Address with prefix length.
    pub addr: IpNet,
    /// IPv6 duplicate address detection failed: another host on the link holds it
    /// (`dadfailed` in `ip addr`).
    #[serde(default)]
    pub dad_failed: bool,
}

/// A route as observed (main table only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// Destination (0.0.0.0/0 for default).
    pub dst: IpNet,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output ifindex.
    pub oif: Option<u32>,
    /// Preferred source.
    pub src: Option<IpAddr>,
    /// RTPROT_* (2 = kernel: connected routes).
    pub protocol: u8,
}

/// What a namespace looks like, as far as lanyard cares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Links.
    pub links: Vec<LinkInfo>,
    /// Addresses.
    pub addresses: Vec<AddrInfo>,
    /// Main-table unicast routes.
    pub routes: Vec<RouteInfo>,
}

impl View {
    /// Link by name.
    pub fn link(&self, name: &str) -> Option<&LinkInfo> {
        self.links.iter().find(|l| l.name == name)
    }
    /// Link by index.
    pub fn link_by_index(&self, index: u32) -> Option<&LinkInfo> {
        self.links.iter().find(|l| l.index == index)
    }
    /// This view cut down to the links called `names`, their addresses, no routes:
    /// what [`Kernel::view_links`] returns.
    pub fn only_links(mut self, names: &[IfName]) -> View {
        self.links
            .retain(|l| names.iter().any(|n| n.as_str() == l.name));
        let links = &self.links;
        self.addresses
            .retain(|a| links.iter().any(|l| l.index == a.index));
        self.routes.clear();
        self
    }
    /// Addresses on the named link.
    pub fn addresses_of(&self, name: &str) -> Vec<IpNet> {
        match self.link(name) {
            Some(l) => self
                .addresses
                .iter()
                .filter(|a| a.index == l.index)
                .map(|a| a.addr)
                .collect(),
            None => vec![],
        }
    }
}

/// Identity of a network namespace: (st_dev, st_ino) of its nsfs file.
pub type NsId = (u64, u64);

/// Every kernel effect lanyard has goes through here.
pub trait Kernel {
    /// Links, addresses and main-table routes of `netns`.
    fn view(&mut self, netns: &Netns) -> Result<View>;
    /// The links of `netns` called `names` (those that exist) with their addresses,
    /// and no routes: what planning an endpoint looks at (see
    /// [`crate::plan::host_links`]), at a cost that does not grow with the number of
    /// links and routes the namespace has. Default: [`Kernel::view`], filtered.
    fn view_links(&mut self, netns: &Netns, names: &[IfName]) -> Result<View> {
        Ok(self.view(netns)?.only_links(names))
    }
    /// Identity of the namespace at `path`; `Error::NotFound` if it is gone.
    fn netns_id(&mut self, path: &Path) -> Result<NsId>;
    /// Whether `path` is a *network* namespace (not a regular file, not another
    /// kind of namespace): what attach asks of `--netns` before it records anything.
    /// Default: yes.
    fn is_net_namespace(&mut self, _path: &Path) -> Result<bool> {
        Ok(true)
    }
    /// Applies one step. Idempotent where the op says so (deletes of missing things).
    fn apply(&mut self, op: &Op) -> Result<()>;
    /// Deletes `links` (tombstones left by [`Op::RetireLink`]) off the caller's path:
    /// the netlink implementation hands them to a detached background child, so the
    /// caller does not wait for the kernel's slow unregister. Best effort; `gc`
    /// sweeps leftovers (`lyx-*` in the host namespace). Default: delete inline.
    fn reap(&mut self, links: Vec<(Netns, IfName)>) -> Result<()> {
        for (netns, name) in links {
            self.apply(&Op::DeleteLink { netns, name })?;
        }
        Ok(())
    }
    /// Gets a DHCP lease for `who` (INIT-REBOOT for `previous`, else discovery),
    /// within its timeout. Only DHCP networks call it. Default: unsupported.
    fn dhcp_acquire(&mut self, who: &DhcpWho, previous: Option<Ipv4Addr>) -> Result<Lease> {
        let _ = (who, previous);
        Err(Error::Unsupported(
            "DHCP is not available with this kernel".into(),
        ))
    }
    /// Renews (`rebinding` false) or rebinds `lease`. Default: unsupported.
    fn dhcp_extend(&mut self, who: &DhcpWho, lease: &Lease, rebinding: bool) -> Result<Extended> {
        let _ = (who, lease, rebinding);
        Err(Error::Unsupported(
            "DHCP is not available with this kernel".into(),
        ))
    }
    /// Sends DHCPRELEASE for `lease` (no answer comes). Default: nothing.
    fn dhcp_release(&mut self, who: &DhcpWho, lease: &Lease) -> Result<()> {
        let _ = (who, lease);
        Ok(())
    }
    /// The end of one caller's call on a kernel kept for the next (the daemon's):
    /// lets go of what belongs to that call, such as handles on the namespaces it
    /// named (kept, one would keep a deleted container's namespace alive). Default:
    /// nothing.
    fn end_of_call(&mut self) {}
    /// RFC 5227 probe: one ARP probe for `addr` from `parent` (in the host
    /// namespace), up to `wait` for an answer; the MAC of the host that holds it.
    /// Default: nobody answers.
    fn arp_probe(
        &mut self,
        parent: &IfName,
        addr: Ipv4Addr,
        wait: std::time::Duration,
    ) -> Result<Option<MacAddr>> {
        let _ = (parent, addr, wait);
        Ok(None)
    }
}

impl<K: Kernel + ?Sized> Kernel for Box<K> {
    fn view(&mut self, netns: &Netns) -> Result<View> {
        (**self).view(netns)
    }
    fn view_links(&mut self, netns: &Netns, names: &[IfName]) -> Result<View> {
        (**self).view_links(netns, names)
    }
    fn netns_id(&mut self, path: &Path) -> Result<NsId> {
        (**self).netns_id(path)
    }
    fn is_net_namespace(&mut self, path: &Path) -> Result<bool> {
        (**self).is_net_namespace(path)
    }
    fn apply(&mut self, op: &Op) -> Result<()> {
        (**self).apply(op)
    }
    fn reap(&mut self, links: Vec<(Netns, IfName)>) -> Result<()> {
        (**self).reap(links)
    }
    fn end_of_call(&mut self) {
        (**self).end_of_call()
    }
    fn dhcp_acquire(&mut self, who: &DhcpWho, previous: Option<Ipv4Addr>) -> Result<Lease> {
        (**self).dhcp_acquire(who, previous)
    }
    fn dhcp_extend(&mut self, who: &DhcpWho, lease: &Lease, rebinding: bool) -> Result<Extended> {
        (**self).dhcp_extend(who, lease, rebinding)
    }
    fn arp_probe(
        &mut self,
        parent: &IfName,
        addr: Ipv4Addr,
        wait: std::time::Duration,
    ) -> Result<Option<MacAddr>> {
        (**self).arp_probe(parent, addr, wait)
    }
    fn dhcp_release(&mut self, who: &DhcpWho, lease: &Lease) -> Result<()> {
        (**self).dhcp_release(who, lease)
    }
}

/// Fault injection for tests of rollback on a real kernel: the `at`-th apply
/// (0-based) fails before it reaches the kernel. The binary wraps its kernel in
/// this when `LANYARD_FAIL_AT=N` is set (a test hook; documented in the README).
pub struct FailAt<K> {
    /// The real kernel.
    pub inner: K,
    /// Which apply fails.
    pub at: usize,
    /// Instead of failing, call this (it never returns: the binary kills itself with
    /// SIGKILL there, for the crash suite's `LANYARD_KILL_AT=N`). With it, handing
    /// tombstones to the reaper counts as a step as well.
    pub kill: Option<fn() -> !>,
    calls: usize,
}

impl<K> FailAt<K> {
    /// Wraps `inner`; apply number `at` fails.
    pub fn new(inner: K, at: usize) -> Self {
        FailAt {
            inner,
            at,
            kill: None,
            calls: 0,
        }
    }
}

impl<K: Kernel> Kernel for FailAt<K> {
    fn view(&mut self, netns: &Netns) -> Result<View> {
        self.inner.view(netns)
    }
    fn view_links(&mut self, netns: &Netns, names: &[IfName]) -> Result<View> {
        self.inner.view_links(netns, names)
    }
    fn netns_id(&mut self, path: &Path) -> Result<NsId> {
        self.inner.netns_id(path)
    }
    fn is_net_namespace(&mut self, path: &Path) -> Result<bool> {
        self.inner.is_net_namespace(path)
    }
    fn apply(&mut self, op: &Op) -> Result<()> {
        let n = self.calls;
        self.calls += 1;
        if n == self.at {
            if let Some(kill) = self.kill {
                kill();
            }
            return Err(crate::Error::kernel(
                op.to_string(),
                format!("injected failure at step {n} (LANYARD_FAIL_AT)"),
                None,
            ));
        }
        self.inner.apply(op)
    }
    fn reap(&mut self, links: Vec<(Netns, IfName)>) -> Result<()> {
        // For the crash suite, handing tombstones off is a step too (a kill before
        // it leaves them with nobody to delete them); an injected failure is not:
        // the engine goes on without the reaper by design.
        if let Some(kill) = self.kill {
            let n = self.calls;
            self.calls += 1;
            if n == self.at {
                kill();
            }
        }
        self.inner.reap(links)
    }
    fn end_of_call(&mut self) {
        self.inner.end_of_call()
    }
    fn dhcp_acquire(&mut self, who: &DhcpWho, previous: Option<Ipv4Addr>) -> Result<Lease> {
        self.inner.dhcp_acquire(who, previous)
    }
    fn dhcp_extend(&mut self, who: &DhcpWho, lease: &Lease, rebinding: bool) -> Result<Extended> {
        self.inner.dhcp_extend(who, lease, rebinding)
    }
    fn arp_probe(
        &mut self,
        parent: &IfName,
        addr: Ipv4Addr,
        wait: std::time::Duration,
    ) -> Result<Option<MacAddr>> {
        self.inner.arp_probe(parent, addr, wait)
    }
    fn dhcp_release(&mut self, who: &DhcpWho, lease: &Lease) -> Result<()> {
        self.inner.dhcp_release(who, lease)
    }
}

/// Is `name` a lanyard tombstone (`lyx-…`)?
pub fn is_tombstone(name: &str) -> bool {
    name.starts_with("lyx-")
}

/// A fresh tombstone name from a 32-bit nonce.
pub fn tombstone_name(nonce: u32) -> IfName {
    // "lyx-" + 8 hex = 12 bytes: always a valid name.
    IfName::new(&format!("lyx-{nonce:08x}")).unwrap_or_else(|_| unreachable!("12-byte name"))
}

pub mod fake {
    //! A kernel that records the ops it is given and can be told to fail at step N.

    use super::*;
    use crate::Error;

    /// Records applied ops; fails the `fail_at`-th apply (0-based) if set.
    #[derive(Debug, Default)]
    pub struct FakeKernel {
        /// The view returned for the host namespace.
        pub host: View,
        /// Ops applied so far, in order (failed ones are not recorded).
        pub applied: Vec<Op>,
        /// Fail the apply with this 0-based count.
        pub fail_at: Option<usize>,
        /// Number of apply calls so far.
        pub calls: usize,
        /// Namespace paths that "exist", with their ids.
        pub namespaces: Vec<(std::path::PathBuf, NsId)>,
        /// Number of full [`Kernel::view`] calls (tests of the hot path count them).
        pub full_views: usize,
        /// LAN hosts that answer ARP probes: (address, their MAC).
        pub arp_holders: Vec<(Ipv4Addr, MacAddr)>,
        /// ARP probes sent (address).
        pub arp_probes: Vec<Ipv4Addr>,
        /// The LAN's DHCP server: the leases it gives, in order (none left: no answer).
        pub dhcp_offers: std::collections::VecDeque<Lease>,
        /// What renewals and rebindings get (none left: no answer).
        pub dhcp_extends: std::collections::VecDeque<Extended>,
        /// DHCP conversations held: `acquire ADDR|-`, `renew ADDR`, `rebind ADDR`,
        /// `release ADDR`.
        pub dhcp_log: Vec<String>,
    }

    impl Kernel for FakeKernel {
        fn view(&mut self, netns: &Netns) -> Result<View> {
            self.full_views += 1;
            Ok(self.namespace_view(netns))
        }
        fn view_links(&mut self, netns: &Netns, names: &[IfName]) -> Result<View> {
            Ok(self.namespace_view(netns).only_links(names))
        }
        fn netns_id(&mut self, path: &Path) -> Result<NsId> {
            self.namespaces
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, id)| *id)
                .ok_or_else(|| Error::not_found("namespace", path.display().to_string()))
        }
        fn dhcp_acquire(&mut self, _who: &DhcpWho, previous: Option<Ipv4Addr>) -> Result<Lease> {
            let asked = previous.map_or("-".to_string(), |a| a.to_string());
            self.dhcp_log.push(format!("acquire {asked}"));
            self.dhcp_offers
                .pop_front()
                .ok_or_else(|| Error::Other("no DHCP server answered within 4s".into()))
        }
        fn dhcp_extend(
            &mut self,
            _who: &DhcpWho,
            lease: &Lease,
            rebinding: bool,
        ) -> Result<Extended> {
            let verb = if rebinding { "rebind" } else { "renew" };
            self.dhcp_log.push(format!("{verb} {}", lease.address));
            Ok(self.dhcp_extends.pop_front().unwrap_or(Extended::NoAnswer))
        }
        fn dhcp_release(&mut self, _who: &DhcpWho, lease: &Lease) -> Result<()> {
            self.dhcp_log.push(format!("release {}", lease.address));
            Ok(())
        }
        fn arp_probe(
            &mut self,
            _parent: &IfName,
            addr: Ipv4Addr,
            _wait: std::time::Duration,
        ) -> Result<Option<MacAddr>> {
            self.arp_probes.push(addr);
            Ok(self
                .arp_holders
                .iter()
                .find(|(a, _)| *a == addr)
                .map(|(_, m)| *m))
        }
        fn apply(&mut self, op: &Op) -> Result<()> {
            let n = self.calls;
            self.calls += 1;
            if self.fail_at == Some(n) {
                return Err(Error::kernel(op.to_string(), "injected failure", None));
            }
            self.applied.push(op.clone());
            Ok(())
        }
    }

    impl FakeKernel {
        /// What `netns` looks like: the host view, or an empty container.
        fn namespace_view(&self, netns: &Netns) -> View {
            match netns {
                Netns::Host => self.host.clone(),
                Netns::Path(_) => View::default(),
            }
        }

        /// A host with `eth0` (index 2) holding `addrs` and their connected routes.
        pub fn with_eth0(addrs: &[&str]) -> Self {
            let mut k = FakeKernel::default();
            k.host.links.push(LinkInfo {
                index: 1,
                name: "lo".into(),
                kind: None,
                mac: None,
                mtu: 65536,
                up: true,
                lower_up: true,
                parent: None,
                master: None,
            });
            k.host.links.push(LinkInfo {
                index: 2,
                name: "eth0".into(),
                kind: Some("veth".into()),
                mac: Some(MacAddr([2, 0, 0, 0, 0, 2])),
                mtu: 1500,
                up: true,
                lower_up: true,
                parent: None,
                master: None,
            });
            for a in addrs {
                let addr: IpNet = a.parse().unwrap_or_else(|_| panic!("test address {a}"));
                k.host.addresses.push(AddrInfo {
                    index: 2,
                    addr,
                    dad_failed: false,
                });
                k.host.routes.push(RouteInfo {
                    dst: addr.trunc(),
                    gateway: None,
                    oif: Some(2),
                    src: Some(addr.addr()),
                    protocol: 2,
                });
            }
            k
        }
    }

    /// Helper for tests: an interface name that is known valid.
    pub fn ifname(s: &str) -> IfName {
        IfName::new(s).unwrap_or_else(|e| panic!("{e}"))
    }
}
