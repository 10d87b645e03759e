//! [`Netlink`]: the real [`Kernel`], in-process rtnetlink with one socket per
//! namespace, opened once and reused for every op.

use crate::error::NlError;
use crate::netns::{self, NsHandle};
use crate::socket::NlSocket;
use crate::{addr, link, reap, route, sysctl, view};
use lanyard_core::kernel::{Kernel, NsId, View};
use lanyard_core::name::IfName;
use lanyard_core::op::{Netns, Op};
use lanyard_core::{Error, Result};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// The kernel, spoken to over rtnetlink from this process.
///
/// [`Netns::Host`] is the network namespace of the thread that called
/// [`Netlink::new`]; its socket is opened there and then. A [`Netns::Path`] is opened
/// on first use and kept (the open namespace file and, once needed, a socket inside
/// it); before each use the path is checked (one `stat`) still to name the same
/// namespace, so a recreated `/run/netns/NAME` is picked up. Ops that delete
/// (`DeleteLink`, `RetireLink`, `DelAddress`, `DelRoute`) succeed when their namespace
/// is gone: whatever they would delete went with it.
///
/// Synchronous, no subprocesses, no dumps on the attach path: a link is found by name
/// with one `RTM_GETLINK`.
#[derive(Debug)]
pub struct Netlink {
    /// The namespace `new` ran in.
    pub(crate) host: NsHandle,
    /// The thread that ran `new`, which is in `host` without visiting it.
    host_tid: rustix::thread::Pid,
    /// Namespaces by path.
    paths: HashMap<PathBuf, NsHandle>,
    /// libnftables context, made on the first nft op.
    nft: Option<crate::nft::Nft>,
    /// Set by [`Netlink::exits_soon`]: the reaper's worker is forked once, not twice.
    pub(crate) exits_soon: bool,
    /// Set by [`Netlink::hand_off_to`]: the daemon's socket, tried before forking.
    pub(crate) handoff: Option<PathBuf>,
    /// Set by [`Netlink::hand_off_in_process`]: the daemon's own reaper thread.
    pub(crate) local_reaper: Option<crate::handoff::LocalReaper>,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace, which
    /// becomes [`Netns::Host`].
    pub fn new() -> Result<Netlink> {
        let host = NsHandle::current().map_err(|e| io_error("open netlink socket", e))?;
        Ok(Netlink {
            host,
            host_tid: netns::gettid(),
            paths: HashMap::new(),
            nft: None,
            exits_soon: false,
            handoff: None,
            local_reaper: None,
        })
    }

    /// Tombstones go to `lanyard daemon` through its socket at `path`
    /// ([`crate::handoff`]) when it is up: no fork on detach. When the socket is
    /// missing, stale or full, the reaper forks its worker as without this.
    pub fn hand_off_to(&mut self, path: PathBuf) {
        self.handoff = Some(path);
    }

    /// Tombstones go to `reaper`, the reaper thread of the daemon this runs in (its
    /// engine thread), before the socket or a fork is tried.
    pub fn hand_off_in_process(&mut self, reaper: crate::handoff::LocalReaper) {
        self.local_reaper = Some(reaper);
    }

    /// Tells the reaper that this process exits right after its one verb (a CLI
    /// call): its worker is then a direct child that nobody waits for — when this
    /// process exits, init adopts and reaps it — instead of a grandchild behind a
    /// child that is forked and waited for. One fork and one wait less on every
    /// detach. A long-running process (the daemon, `lanyard run`) must not set it,
    /// or every detach would leave it a zombie.
    pub fn exits_soon(&mut self) {
        self.exits_soon = true;
    }

    /// Deletes `links` (tombstones) right away, in this thread: for `gc`, which has
    /// nobody waiting. Keeps going past failures and reports them all.
    pub fn reap_now(&mut self, links: Vec<(Netns, IfName)>) -> Result<()> {
        let errors: Vec<Error> = links
            .into_iter()
            .filter_map(|(netns, name)| self.apply(&Op::DeleteLink { netns, name }).err())
            .collect();
        join_errors(errors)
    }

    /// The libnftables context of the host namespace, made on first use (in the
    /// thread that made this `Netlink`, so in the host namespace).
    fn nft(&mut self) -> Result<&mut crate::nft::Nft> {
        if self.nft.is_none() {
            self.nft = Some(crate::nft::Nft::new()?);
        }
        Ok(self
            .nft
            .as_mut()
            .unwrap_or_else(|| unreachable!("just set")))
    }

    /// Drops what is kept open for the namespace at `path` (its file and socket), so a
    /// long-running process does not hold dead namespaces alive.
    pub fn forget_netns(&mut self, path: &Path) {
        self.paths.remove(path);
    }

    /// The namespace of `netns`, opened if needed; `None` if its path is gone.
    pub(crate) fn ns(&mut self, netns: &Netns) -> Result<Option<&mut NsHandle>> {
        let path = match netns {
            Netns::Host => return Ok(Some(&mut self.host)),
            Netns::Path(p) => p,
        };
        let id = match netns::id_of(path) {
            Ok(id) => id,
            Err(e) if netns::is_gone(&e) => {
                self.paths.remove(path);
                return Ok(None);
            }
            Err(e) => return Err(io_error(&format!("stat netns {}", path.display()), e)),
        };
        if self.paths.get(path).is_none_or(|h| h.id != id) {
            match NsHandle::open(path) {
                Ok(h) => {
                    self.paths.insert(path.clone(), h);
                }
                Err(e) if netns::is_gone(&e) => return Ok(None),
                Err(e) => return Err(io_error(&format!("open netns {}", path.display()), e)),
            }
        }
        Ok(self.paths.get_mut(path))
    }

    /// Like [`Netlink::ns`], but a gone namespace is [`Error::NotFound`].
    pub(crate) fn need_ns(&mut self, netns: &Netns) -> Result<&mut NsHandle> {
        self.ns(netns)?.ok_or_else(|| gone(netns))
    }

    /// The socket in `netns`; a gone namespace is [`Error::NotFound`].
    pub(crate) fn need_sock(&mut self, netns: &Netns) -> Result<&mut NlSocket> {
        let h = self.need_ns(netns)?;
        socket_of(h, netns)
    }

    /// The socket in `netns`, or `None` if the namespace is gone.
    pub(crate) fn sock(&mut self, netns: &Netns) -> Result<Option<&mut NlSocket>> {
        match self.ns(netns)? {
            Some(h) => socket_of(h, netns).map(Some),
            None => Ok(None),
        }
    }

    /// The host namespace's socket.
    pub(crate) fn host_sock(&mut self) -> Result<&mut NlSocket> {
        socket_of(&mut self.host, &Netns::Host)
    }

    /// Whether the calling thread is the one in the host namespace.
    pub(crate) fn on_host_thread(&self) -> bool {
        netns::gettid() == self.host_tid
    }
}

fn socket_of<'a>(h: &'a mut NsHandle, netns: &Netns) -> Result<&'a mut NlSocket> {
    h.socket()
        .map_err(|e| io_error(&format!("open netlink socket in netns {netns}"), e))
}

impl Kernel for Netlink {
    fn view(&mut self, netns: &Netns) -> Result<View> {
        let sock = self.need_sock(netns)?;
        view::view(sock).map_err(|e| e.for_text(format!("ip -j addr; ip -j route [netns {netns}]")))
    }

    fn view_links(&mut self, netns: &Netns, names: &[IfName]) -> Result<View> {
        let sock = self.need_sock(netns)?;
        view::links(sock, names).map_err(|e| {
            let names: Vec<&str> = names.iter().map(IfName::as_str).collect();
            e.for_text(format!(
                "ip -j addr show {} [netns {netns}]",
                names.join(", ")
            ))
        })
    }

    fn is_net_namespace(&mut self, path: &Path) -> Result<bool> {
        netns::is_net(path).map_err(|e| io_error(&format!("open {}", path.display()), e))
    }

    fn netns_id(&mut self, path: &Path) -> Result<NsId> {
        netns::id_of(path).map_err(|e| {
            if netns::is_gone(&e) {
                Error::not_found("namespace", path.display().to_string())
            } else {
                io_error(&format!("stat {}", path.display()), e)
            }
        })
    }

    fn apply(&mut self, op: &Op) -> Result<()> {
        let done = self.dispatch(op);
        // Whatever happened, names may now mean other links there (or none).
        match op {
            Op::CreateBridge { .. } | Op::CreateVlan { .. } => self.forget_indexes(&Netns::Host),
            Op::CreateVeth { peer_netns, .. } => {
                self.forget_indexes(&Netns::Host);
                self.forget_indexes(peer_netns);
            }
            Op::CreateMacvlan { netns, .. }
            | Op::CreateIpvlan { netns, .. }
            | Op::DeleteLink { netns, .. }
            | Op::RetireLink { netns, .. } => self.forget_indexes(netns),
            _ => {}
        }
        done
    }

    /// Hands the deletes to the daemon ([`Netlink::hand_off_to`]) or to a detached
    /// worker process and returns at once: the caller never waits for the kernel's
    /// slow unregister, and no zombie is left. Falls back to deleting inline if the
    /// process cannot fork.
    fn reap(&mut self, links: Vec<(Netns, IfName)>) -> Result<()> {
        reap::reap(self, links)
    }
    fn end_of_call(&mut self) {
        // The host's socket, the nftables context and the hand-off settings stay.
        self.paths.clear();
    }
    fn dhcp_acquire(
        &mut self,
        who: &lanyard_core::lease::DhcpWho,
        previous: Option<std::net::Ipv4Addr>,
    ) -> Result<lanyard_core::lease::Lease> {
        crate::dhcp::acquire(who, previous)
    }
    fn dhcp_extend(
        &mut self,
        who: &lanyard_core::lease::DhcpWho,
        lease: &lanyard_core::lease::Lease,
        rebinding: bool,
    ) -> Result<lanyard_core::lease::Extended> {
        crate::dhcp::extend(who, lease, rebinding)
    }
    fn arp_probe(
        &mut self,
        parent: &IfName,
        addr: std::net::Ipv4Addr,
        wait: std::time::Duration,
    ) -> Result<Option<lanyard_core::model::MacAddr>> {
        Ok(crate::dhcp::probe_from_parent(parent.as_str(), addr, wait)?
            .map(lanyard_core::model::MacAddr))
    }
    fn dhcp_release(
        &mut self,
        who: &lanyard_core::lease::DhcpWho,
        lease: &lanyard_core::lease::Lease,
    ) -> Result<()> {
        crate::dhcp::release(who, lease)
    }
}

impl Netlink {
    /// Forgets the link indexes remembered for `netns` (nothing is opened).
    fn forget_indexes(&mut self, netns: &Netns) {
        match netns {
            Netns::Host => self.host.forget_indexes(),
            Netns::Path(p) => {
                if let Some(h) = self.paths.get_mut(p) {
                    h.forget_indexes();
                }
            }
        }
    }

    /// Applies one op.
    fn dispatch(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::CreateBridge { name, mtu } => link::create_bridge(self, op, name, *mtu),
            Op::CreateVeth {
                host,
                peer,
                peer_netns,
                mtu,
                master,
                peer_mac,
                host_mac,
            } => link::create_veth(
                self,
                op,
                link::Veth {
                    host,
                    peer,
                    peer_netns,
                    mtu: *mtu,
                    master: master.as_ref(),
                    peer_mac: *peer_mac,
                    host_mac: *host_mac,
                },
            ),
            Op::CreateMacvlan {
                netns,
                name,
                parent,
                mode,
                mac,
                mtu,
            } => link::create_macvlan(self, op, netns, name, parent, *mode, *mac, *mtu),
            Op::CreateIpvlan {
                netns,
                name,
                parent,
                mode,
                mtu,
            } => link::create_ipvlan(self, op, netns, name, parent, *mode, *mtu),
            Op::CreateVlan { name, parent, id } => link::create_vlan(self, op, name, parent, *id),
            Op::DeleteLink { netns, name } => link::delete(self, op, netns, name),
            Op::RetireLink {
                netns,
                name,
                tombstone,
                addresses,
            } => link::retire(self, op, netns, name, tombstone, addresses),
            Op::SetUp { netns, name } => link::set_up(self, op, netns, name),
            Op::AddAddress {
                netns,
                link,
                addr,
                nodad,
            } => addr::add(self, op, netns, link, *addr, *nodad),
            Op::DelAddress { netns, link, addr } => addr::del(self, op, netns, link, *addr),
            Op::AddRoute { netns, route } => route::replace(self, op, netns, route),
            Op::DelRoute { netns, route } => route::delete(self, op, netns, route),
            Op::SetSysctl { netns, key, value } => sysctl::set(self, op, netns, key, value),
            Op::EnableIpv6Forwarding { netns } => sysctl::enable_ipv6_forwarding(self, op, netns),
            Op::Nft { script, .. } => self.nft()?.run(script).map(drop),
        }
    }
}

/// [`Error::NotFound`] for a namespace whose path is gone.
pub(crate) fn gone(netns: &Netns) -> Error {
    Error::not_found("namespace", netns.to_string())
}

/// An I/O failure of a step that is not itself an op.
pub(crate) fn io_error(what: &str, e: io::Error) -> Error {
    NlError::Io(e).for_text(what)
}

/// One error as is, several as one [`Error::Other`] listing them all.
pub(crate) fn join_errors(mut errors: Vec<Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Other(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}
