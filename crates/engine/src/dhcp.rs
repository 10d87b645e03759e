//! Endpoints of DHCP networks (`--ipam-driver dhcp`): the attach takes its address,
//! gateway and classless routes from the LAN's server once the link is in the
//! namespace (`bind_lease`); the detach releases the lease; `lanyard
//! daemon` keeps every lease alive ([`Engine::maintain_leases`]: renew at T1, rebind
//! at T2, start over on NAK or expiry) and, when it starts, and `restore`, ask for
//! each stored address again (INIT-REBOOT). Networks with lanyard's own IPAM never
//! come here: nothing of this is on their path.

use crate::lock::Mode;
use crate::Engine;
use ipnet::IpNet;
use lanyard_core::apply::apply_all;
use lanyard_core::kernel::{Kernel, View};
use lanyard_core::lease::{DhcpWho, Extended, Lease, Phase};
use lanyard_core::model::{Endpoint, EndpointState, IpamDriver, Network};
use lanyard_core::op::{Netns, Op, RouteSpec};
use lanyard_core::plan;
use lanyard_core::store::Store;
use lanyard_core::{Error, Result};
use std::net::IpAddr;

pub use lanyard_core::lease::{parse_timeout, DEFAULT_TIMEOUT, TIMEOUT_OPTION};

/// Who asks for `ep`'s lease, and how long it waits.
pub(crate) fn who(net: &Network, ep: &Endpoint) -> DhcpWho {
    let timeout = net
        .options
        .get(TIMEOUT_OPTION)
        .and_then(|t| parse_timeout(t).ok())
        .unwrap_or(DEFAULT_TIMEOUT);
    DhcpWho {
        netns: ep.netns.clone(),
        ifname: ep.ifname.clone(),
        endpoint_id: ep.id.clone(),
        hostname: ep.name.as_ref().map(|n| n.to_string()),
        timeout,
        // About one message a second, at least two.
        tries: (timeout.as_secs() as u32).clamp(2, 8),
    }
}

/// On a DHCP network with `--ipv6`, IPv6 comes from the LAN's router
/// advertisements (SLAAC, as the kernel does it in the namespace). So that interface
/// ids are stable per endpoint and never derived from a MAC the endpoint shares (ipvlan:
/// the parent's), the namespace's defaults, which a new link copies, get RFC 7217
/// stable-privacy ids (`addr_gen_mode` 2) with a secret derived from the endpoint id.
/// None for any other network.
pub(crate) fn slaac_ops(net: &Network, ep: &Endpoint) -> Vec<Op> {
    if net.ipam != IpamDriver::Dhcp || !net.ipv6 {
        return vec![];
    }
    let ns = Netns::Path(ep.netns.clone());
    let set = |key: &str, value: String| Op::SetSysctl {
        netns: ns.clone(),
        key: key.into(),
        value,
    };
    vec![
        set(
            "net.ipv6.conf.default.stable_secret",
            stable_secret(&ep.id).to_string(),
        ),
        set("net.ipv6.conf.default.addr_gen_mode", "2".into()),
    ]
}

/// The RFC 7217 secret of an endpoint: 128 bits of its id (64 hex digits, random).
fn stable_secret(id: &str) -> std::net::Ipv6Addr {
    let hex: String = id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(32)
        .collect();
    let n = u128::from_str_radix(&format!("{hex:0<32}"), 16).unwrap_or(0);
    std::net::Ipv6Addr::from(n)
}

/// The kernel steps that put `lease` on `ep` (whose record already carries it):
/// its address, default route, classless routes and host-access routes.
fn lease_ops(net: &Network, ep: &Endpoint, host: &View, lease: &Lease) -> Result<Vec<Op>> {
    let mut ops: Vec<Op> = plan::endpoint_ops(net, ep, host)?
        .into_iter()
        .filter(|o| matches!(o, Op::AddAddress { .. } | Op::AddRoute { .. }))
        .collect();
    ops.extend(lease_routes(ep, lease));
    Ok(ops)
}

/// The classless static routes (option 121) of `lease`, inside `ep`'s namespace.
/// `restore` adds them too when it re-creates an endpoint.
pub(crate) fn lease_routes(ep: &Endpoint, lease: &Lease) -> Vec<Op> {
    lease
        .static_routes()
        .map(|(dst, via)| Op::AddRoute {
            netns: Netns::Path(ep.netns.clone()),
            route: RouteSpec {
                dst: IpNet::V4(*dst),
                via: (!via.is_unspecified()).then_some(IpAddr::V4(*via)),
                dev: Some(ep.ifname.clone()),
                src: None,
                metric: ep.route_metric,
            },
        })
        .collect()
}

/// `ep` as it is with `lease`: its address, gateway and the lease itself.
fn with_lease(ep: &Endpoint, lease: Lease) -> Endpoint {
    let mut ep = ep.clone();
    ep.addresses = vec![IpNet::V4(lease.net())];
    ep.gateways = lease.gateway().map(IpAddr::V4).into_iter().collect();
    ep.lease = Some(lease);
    ep
}

impl<S: Store, K: Kernel> Engine<S, K> {
    /// Gets a lease for `ep`, just plugged (link up, no address), and puts it on the
    /// link: returns the endpoint as it is then (not yet stored). On failure nothing
    /// of the lease is left on the link (the caller unplugs it).
    pub(crate) fn bind_lease(
        &mut self,
        net: &Network,
        ep: &Endpoint,
        host: &View,
        previous: Option<std::net::Ipv4Addr>,
    ) -> Result<Endpoint> {
        let who = who(net, ep);
        let lease = self.kernel.dhcp_acquire(&who, previous).map_err(|e| {
            Error::Other(format!(
                "endpoint {} on network {}: {e}; nothing was attached",
                ep.display_name(),
                net.name
            ))
        })?;
        let bound = with_lease(ep, lease.clone());
        let ops = lease_ops(net, &bound, host, &lease)?;
        if let Err(e) = apply_all(&mut self.kernel, &ops) {
            let _ = self.kernel.dhcp_release(&who, &lease);
            return Err(e);
        }
        Ok(bound)
    }

    /// Sends DHCPRELEASE for `ep`'s lease, if it has one and its link is still
    /// there (best effort: the server frees it at the lease's end anyway).
    pub(crate) fn release_lease(&mut self, net: &Network, ep: &Endpoint) {
        if let Some(lease) = &ep.lease {
            if let Err(e) = self.kernel.dhcp_release(&who(net, ep), lease) {
                tracing::warn!("endpoint {}: {e}", ep.display_name());
            }
        }
    }

    /// Keeps the lease of every active DHCP endpoint of this node alive at `now`
    /// (Unix seconds): renews from T1, rebinds from T2, starts over when the server
    /// refuses or the lease ended; with `reboot` (a daemon that starts, `restore`)
    /// asks every one for its address again first (INIT-REBOOT). Returns when the
    /// next lease needs attention (None: no lease) and what was done.
    pub fn maintain_leases(
        &mut self,
        now: u64,
        reboot: bool,
    ) -> Result<(Option<u64>, Vec<String>)> {
        let (networks, endpoints) = self
            .store
            .read(&mut |tx| Ok((tx.networks()?, tx.endpoints()?)))?;
        let mut next: Option<u64> = None;
        let mut done = vec![];
        for ep in endpoints {
            let Some(net) = networks.iter().find(|n| n.id == ep.network_id) else {
                continue;
            };
            if net.ipam != IpamDriver::Dhcp
                || ep.state != EndpointState::Active
                || !ep.in_netns()
                || !self.is_local(&ep)
            {
                continue;
            }
            let Some(lease) = ep.lease.clone() else {
                continue;
            };
            let outcome = if reboot {
                self.rebind_from_scratch(net, &ep, Some(lease.address))
            } else {
                self.tend(net, &ep, &lease, now)
            };
            match outcome {
                Ok(Some((what, ep))) => {
                    done.push(format!("endpoint {}: {what}", ep.display_name()));
                    if let Some(l) = &ep.lease {
                        next = next.min(l.next_due(now)).or(l.next_due(now));
                    }
                }
                Ok(None) => next = next.min(lease.next_due(now)).or(lease.next_due(now)),
                Err(e) => {
                    done.push(format!("endpoint {}: {e}", ep.display_name()));
                    // Try again within a minute.
                    next = Some(next.map_or(now + 60, |n| n.min(now + 60)));
                }
            }
        }
        Ok((next, done))
    }

    /// One lease's step at `now`: what was done and the endpoint after, or nothing.
    fn tend(
        &mut self,
        net: &Network,
        ep: &Endpoint,
        lease: &Lease,
        now: u64,
    ) -> Result<Option<(String, Endpoint)>> {
        let rebinding = match lease.phase(now) {
            Phase::Bound => return Ok(None),
            Phase::Renewing => false,
            Phase::Rebinding => true,
            Phase::Expired => return self.rebind_from_scratch(net, ep, None),
        };
        match self.kernel.dhcp_extend(&who(net, ep), lease, rebinding)? {
            Extended::Ack(l) => {
                // An endpoint gone meanwhile has nothing to keep: reported as renewed.
                let kept = self
                    .store_lease(ep, l.clone(), None)?
                    .unwrap_or_else(|| with_lease(ep, l));
                let what = if rebinding { "rebound" } else { "renewed" };
                Ok(Some((format!("lease of {} {what}", lease.address), kept)))
            }
            Extended::Nak => self.rebind_from_scratch(net, ep, None),
            Extended::NoAnswer => Ok(None),
        }
    }

    /// Asks for a lease anew (INIT-REBOOT for `previous`, else discovery) and, if
    /// the address changed, moves the endpoint to the new one.
    ///
    /// The exchange with the server (seconds, at worst) runs without the run-dir
    /// lock. Moving the address is a read-then-change section like an attach: it
    /// holds the lock shared, so a firewall rebuild or `gc` (exclusive) never reads
    /// the store between the kernel's change and its record, and it works on the
    /// endpoint as stored then: one detached, being detached or moved by another
    /// process meanwhile is left alone (the last is said: "address already
    /// changed"). A detach that slips in before the record is written (it holds the
    /// lock shared too) leaves the record gone or detaching: the new address's
    /// firewall elements, which that detach did not know of, are taken away again.
    pub(crate) fn rebind_from_scratch(
        &mut self,
        net: &Network,
        ep: &Endpoint,
        previous: Option<std::net::Ipv4Addr>,
    ) -> Result<Option<(String, Endpoint)>> {
        let lease = self.kernel.dhcp_acquire(&who(net, ep), previous)?;
        let old = ep.lease.as_ref().map(|l| l.address);
        if old == Some(lease.address) {
            let kept = self
                .store_lease(ep, lease.clone(), None)?
                .unwrap_or_else(|| with_lease(ep, lease));
            return Ok(Some(("lease confirmed (INIT-REBOOT)".into(), kept)));
        }
        let _lock = self.lock(Mode::Shared)?;
        let ep = match self.store.read(&mut |tx| tx.endpoint(&ep.id))? {
            Some(cur) if cur.state != EndpointState::Active => return Ok(None),
            Some(cur) if cur.lease.as_ref().map(|l| l.address) != old => {
                let now = cur.addresses.first().map(|a| a.to_string());
                let what = format!("address already changed to {}", now.unwrap_or_default());
                return Ok(Some((what, cur)));
            }
            Some(cur) => cur,
            None => return Ok(None),
        };
        // Another address: take the old one and its routes off, put the new on.
        let host = self
            .kernel
            .view_links(&Netns::Host, &plan::host_links(net, None))?;
        let ns = Netns::Path(ep.netns.clone());
        let mut ops = vec![];
        for a in &ep.addresses {
            ops.push(Op::DelAddress {
                netns: ns.clone(),
                link: ep.ifname.clone(),
                addr: *a,
            });
        }
        for r in plan::endpoint_host_routes(net, &ep, &host) {
            ops.push(Op::DelRoute {
                netns: Netns::Host,
                route: r,
            });
        }
        for op in &ops {
            if let Err(e) = self.kernel.apply(op) {
                tracing::warn!("endpoint {}: {e}", ep.display_name());
            }
        }
        let moved = with_lease(&ep, lease.clone());
        // A bridge onto the LAN: its anti-spoof guard moves to the new address.
        self.firewall_remove(net, &ep);
        self.firewall_add(net, &moved)?;
        apply_all(&mut self.kernel, &lease_ops(net, &moved, &host, &lease)?)?;
        let from = old.map(|a| a.to_string()).unwrap_or_default();
        let Some(kept) = self.store_lease(&ep, lease, Some(&moved))? else {
            // Detached meanwhile: its detach removed what it knew of, not this.
            self.firewall_remove(net, &moved);
            return Ok(None);
        };
        Ok(Some((
            format!("address changed from {from} to {}", kept.addresses[0]),
            kept,
        )))
    }

    /// Records `lease` on `ep` (and, with `moved`, its new addresses); `None` when
    /// the endpoint went away meanwhile, or, with `moved`, is no longer active
    /// (being detached): then nothing is written.
    fn store_lease(
        &mut self,
        ep: &Endpoint,
        lease: Lease,
        moved: Option<&Endpoint>,
    ) -> Result<Option<Endpoint>> {
        let want = moved.cloned().unwrap_or_else(|| {
            let mut e = ep.clone();
            e.lease = Some(lease.clone());
            e
        });
        self.store.write(&mut |tx| {
            let Some(mut cur) = tx.endpoint(&ep.id)? else {
                return Ok(None);
            };
            if moved.is_some() && cur.state != EndpointState::Active {
                return Ok(None);
            }
            cur.lease = want.lease.clone();
            cur.addresses = want.addresses.clone();
            cur.gateways = want.gateways.clone();
            tx.put_endpoint(&cur)?;
            Ok(Some(cur))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::kernel::fake::FakeKernel;
    use lanyard_core::model::{AttachRequest, DetachRequest, NetworkRequest};
    use lanyard_core::store::mem::MemStore;

    type E = Engine<MemStore, FakeKernel>;

    fn lease(addr: &str, at: u64) -> Lease {
        let mut l = Lease::test(addr.parse().unwrap(), "192.0.2.1".parse().unwrap(), 120);
        l.acquired_at = at;
        l
    }

    /// A host on 192.0.2.0/24 with `dlan`, a DHCP macvlan network on eth0.
    fn dhcp_host() -> E {
        let mut k = FakeKernel::with_eth0(&["192.0.2.2/24"]);
        k.namespaces.push(("/run/netns/c1".into(), (1, 10)));
        let mut e = Engine::new(MemStore::default(), k, Default::default());
        e.create_network(&NetworkRequest {
            name: "dlan".into(),
            driver: Some("macvlan".into()),
            options: vec!["parent=eth0".into()],
            ipam_driver: Some("dhcp".into()),
            ..Default::default()
        })
        .unwrap();
        e
    }

    fn attach(e: &mut E) -> Result<Endpoint> {
        e.attach(&AttachRequest {
            network: "dlan".into(),
            netns: "/run/netns/c1".into(),
            name: Some("web".into()),
            ..Default::default()
        })
    }

    fn ops(e: &E) -> Vec<String> {
        e.kernel.applied.iter().map(|o| o.to_string()).collect()
    }

    #[test]
    fn a_dhcp_network_has_no_subnet_and_an_attach_takes_the_lease() {
        let mut e = dhcp_host();
        assert!(
            e.networks().unwrap()[0].network.subnets.is_empty(),
            "no pool subnet"
        );
        let mut l = lease("192.0.2.120", 1000);
        l.routes = vec![
            ("0.0.0.0/0".parse().unwrap(), "192.0.2.254".parse().unwrap()),
            (
                "198.51.100.0/24".parse().unwrap(),
                "192.0.2.9".parse().unwrap(),
            ),
        ];
        e.kernel.dhcp_offers.push_back(l.clone());
        let ep = attach(&mut e).unwrap();
        assert_eq!(ep.state, EndpointState::Active);
        assert_eq!(ep.addresses[0].to_string(), "192.0.2.120/24");
        assert_eq!(ep.gateways, vec!["192.0.2.254".parse::<IpAddr>().unwrap()]);
        assert_eq!(ep.lease.as_ref(), Some(&l));
        assert_eq!(e.endpoint("web").unwrap(), ep, "the lease is stored");
        let ops = ops(&e);
        let link = ops
            .iter()
            .position(|o| o.contains("c1 type macvlan"))
            .unwrap();
        let addr = ops
            .iter()
            .position(|o| o.contains("192.0.2.120/24"))
            .unwrap();
        assert!(
            link < addr,
            "the link first, then the leased address: {ops:#?}"
        );
        assert!(
            ops.iter()
                .any(|o| o.contains("198.51.100.0/24 via 192.0.2.9")),
            "{ops:#?}"
        );
        assert!(
            ops.iter().any(|o| o.contains("0.0.0.0/0 via 192.0.2.254")),
            "{ops:#?}"
        );
        assert_eq!(e.kernel.dhcp_log, ["acquire -"]);

        e.detach(&DetachRequest::Endpoint("web".into())).unwrap();
        assert_eq!(e.kernel.dhcp_log, ["acquire -", "release 192.0.2.120"]);
    }

    #[test]
    fn no_answer_leaves_no_link_and_no_record() {
        let mut e = dhcp_host();
        let err = attach(&mut e).unwrap_err().to_string();
        assert!(err.contains("no DHCP server answered"), "{err}");
        assert!(err.contains("nothing was attached"), "{err}");
        assert!(e.endpoints().unwrap().is_empty());
        let ops = ops(&e);
        assert!(ops.iter().any(|o| o.contains("type macvlan")));
        assert!(
            ops.iter()
                .any(|o| o.contains("lyx-") || o.contains("delete")),
            "the link is retired: {ops:#?}"
        );
    }

    #[test]
    fn leases_are_renewed_at_t1_rebound_at_t2_and_restarted_on_nak() {
        let mut e = dhcp_host();
        e.kernel.dhcp_offers.push_back(lease("192.0.2.120", 1000));
        attach(&mut e).unwrap();
        // T1 60 s, T2 105 s, end 120 s after 1000.
        let (next, done) = e.maintain_leases(1010, false).unwrap();
        assert_eq!((next, done.len()), (Some(1060), 0), "bound: nothing to do");
        e.kernel
            .dhcp_extends
            .push_back(Extended::Ack(lease("192.0.2.120", 1061)));
        let (next, done) = e.maintain_leases(1061, false).unwrap();
        assert_eq!(done, ["endpoint web: lease of 192.0.2.120 renewed"]);
        assert_eq!(next, Some(1121));
        assert_eq!(e.endpoint("web").unwrap().lease.unwrap().acquired_at, 1061);
        // No answer to renewing, then at T2 a rebinding; a NAK starts over.
        let (_, done) = e.maintain_leases(1125, false).unwrap();
        assert!(done.is_empty());
        e.kernel.dhcp_extends.push_back(Extended::Nak);
        e.kernel.dhcp_offers.push_back(lease("192.0.2.130", 1170));
        let (_, done) = e.maintain_leases(1170, false).unwrap();
        assert_eq!(
            done,
            ["endpoint web: address changed from 192.0.2.120 to 192.0.2.130/24"]
        );
        assert_eq!(
            e.kernel.dhcp_log,
            [
                "acquire -",
                "renew 192.0.2.120",
                "renew 192.0.2.120",
                "rebind 192.0.2.120",
                "acquire -"
            ]
        );
        let ep = e.endpoint("web").unwrap();
        assert_eq!(ep.addresses[0].to_string(), "192.0.2.130/24");
        let ops = ops(&e);
        assert!(
            ops.iter().any(|o| o.contains("del 192.0.2.120/24")),
            "{ops:#?}"
        );
    }

    #[test]
    fn a_restart_asks_for_the_stored_address_again() {
        let mut e = dhcp_host();
        e.kernel.dhcp_offers.push_back(lease("192.0.2.120", 1000));
        attach(&mut e).unwrap();
        e.kernel.dhcp_offers.push_back(lease("192.0.2.120", 2000));
        let (_, done) = e.maintain_leases(2000, true).unwrap();
        assert_eq!(done, ["endpoint web: lease confirmed (INIT-REBOOT)"]);
        assert_eq!(e.kernel.dhcp_log, ["acquire -", "acquire 192.0.2.120"]);
        assert_eq!(e.endpoint("web").unwrap().lease.unwrap().acquired_at, 2000);
    }

    #[test]
    fn static_networks_never_talk_dhcp() {
        let mut e = crate::endpoint::tests::engine();
        e.attach(&crate::endpoint::tests::attach("/run/netns/c1"))
            .unwrap();
        let (next, done) = e.maintain_leases(0, true).unwrap();
        assert_eq!((next, done.len()), (None, 0));
        assert!(e.kernel.dhcp_log.is_empty());
    }
}
