//! Firewall glue: lanyard's nftables tables follow the store. A bridge network
//! created or removed rebuilds the whole ruleset in one transaction; an endpoint
//! coming or going changes only its own set elements (anti-spoofing guard, published
//! ports), so the cost does not grow with the number of mappings. If the tables are
//! missing (after `nft flush ruleset`, a firewall reload, a reboot) an element change
//! falls back to a full rebuild from the store.

use crate::lock::Mode;
use crate::Engine;
use lanyard_core::firewall::{self, BridgeNet, BridgePort, Change, Element, FirewallInput};
use lanyard_core::kernel::Kernel;
use lanyard_core::model::{Driver, Endpoint, EndpointState, MacAddr, Network};
use lanyard_core::op::Op;
use lanyard_core::store::Store;
use lanyard_core::{Error, Result};

/// The firewall's view of one bridge endpoint, if it has one.
fn port_of(net: &Network, ep: &Endpoint) -> Result<Option<BridgePort>> {
    if net.driver != Driver::Bridge {
        return Ok(None);
    }
    let mac = ep.mac.ok_or_else(|| {
        Error::Other(format!(
            "bridge endpoint {} has no MAC recorded",
            ep.display_name()
        ))
    })?;
    BridgePort::from_endpoint(ep, mac).map(Some)
}

/// Everything the ruleset renders, from the store's networks and endpoints.
pub(crate) fn input(nets: &[Network], eps: &[Endpoint]) -> Result<FirewallInput> {
    let mut fw = FirewallInput::default();
    // The host's own bridge is not lanyard's to NAT or filter at L3; its endpoints'
    // ports still get their anti-spoofing guard.
    for n in nets
        .iter()
        .filter(|n| n.driver == Driver::Bridge && !n.bridge_external)
    {
        fw.networks.push(BridgeNet::from_network(n)?);
    }
    // An endpoint only allocated has no link yet: its guard and ports go in at plug.
    for e in eps.iter().filter(|e| e.state != EndpointState::Allocated) {
        if let Some(n) = nets.iter().find(|n| n.id == e.network_id) {
            fw.endpoints.extend(port_of(n, e)?);
        }
    }
    Ok(fw)
}

/// A MAC for a bridge endpoint that asked for none, known before the link exists so
/// the anti-spoofing guard can be in place first: Docker's scheme, 02:42 and the
/// IPv4 address; else 02 and bytes of the endpoint id.
pub(crate) fn default_mac(ep_id: &str, v4: Option<std::net::Ipv4Addr>) -> MacAddr {
    match v4 {
        Some(a) => {
            let o = a.octets();
            MacAddr([0x02, 0x42, o[0], o[1], o[2], o[3]])
        }
        None => {
            let mut b = [0x02u8, 0, 0, 0, 0, 0];
            for (i, byte) in b.iter_mut().enumerate().skip(1) {
                *byte = u8::from_str_radix(ep_id.get(2 * i..2 * i + 2).unwrap_or("00"), 16)
                    .unwrap_or(0);
            }
            MacAddr(b)
        }
    }
}

/// Did nft fail because a table or set the script names does not exist (lanyard's
/// tables flushed)? nft says so as ENOENT: "No such file or directory".
fn names_something_missing(e: &Error) -> bool {
    const ENOENT: i32 = 2;
    matches!(e, Error::Kernel { reason, errno, .. }
        if *errno == Some(ENOENT) || reason.contains("No such file or directory"))
}

impl<S: Store, K: Kernel> Engine<S, K> {
    /// Rebuilds lanyard's nftables tables from the store in one transaction; removes
    /// them when no bridge network is left. Other tables are never touched.
    pub fn rebuild_firewall(&mut self) -> Result<()> {
        let _lock = self.lock(Mode::Exclusive)?;
        let (nets, eps) = self
            .store
            .read(&mut |tx| Ok((tx.networks()?, tx.endpoints()?)))?;
        let script = if nets.iter().any(|n| n.driver == Driver::Bridge) {
            let fw = input(&nets, &eps)?;
            fw.validate()?;
            firewall::ruleset(&fw)
        } else {
            firewall::teardown()
        };
        self.kernel.apply(&Op::Nft { script, undo: None })
    }

    /// Adds one endpoint's elements; returns the op that takes them out again.
    pub(crate) fn firewall_add(&mut self, net: &Network, ep: &Endpoint) -> Result<Option<Op>> {
        let Some(port) = port_of(net, ep)? else {
            return Ok(None);
        };
        let elements: Vec<Element> = port.elements();
        let op = Op::Nft {
            script: firewall::element_ops(Change::Add, &elements),
            undo: Some(firewall::element_ops(Change::Remove, &elements)),
        };
        if let Err(first) = self.kernel.apply(&op) {
            // Only for tables gone (flushed, reloaded): the store already holds this
            // endpoint, so a full rebuild puts everything back, this endpoint included.
            // Any other failure is the attach's, and rolls it back.
            if !names_something_missing(&first) {
                return Err(first);
            }
            if let Err(e) = self.rebuild_firewall() {
                return Err(Error::Other(format!(
                    "{first}; rebuilding lanyard's nftables tables also failed: {e}"
                )));
            }
        }
        Ok(op.inverse())
    }

    /// Adds or removes the elements of `ports` of a wired bridge endpoint (its guard
    /// stays as it is).
    pub(crate) fn firewall_ports(
        &mut self,
        net: &Network,
        ep: &Endpoint,
        ports: &[lanyard_core::model::PortMapping],
        change: Change,
    ) -> Result<()> {
        let only = Endpoint {
            ports: ports.to_vec(),
            ..ep.clone()
        };
        let Some(port) = port_of(net, &only)? else {
            return Ok(());
        };
        let script = firewall::element_ops(change, &port.port_elements());
        match self.kernel.apply(&Op::Nft { script, undo: None }) {
            Err(e) if change == Change::Add && names_something_missing(&e) => {
                // The tables are gone: the store already holds the ports.
                self.rebuild_firewall()
            }
            other => other,
        }
    }

    /// Takes one endpoint's elements out (best effort: the tables may be gone).
    pub(crate) fn firewall_remove(&mut self, net: &Network, ep: &Endpoint) {
        if let Ok(Some(port)) = port_of(net, ep) {
            let script = firewall::element_ops(Change::Remove, &port.elements());
            if self.kernel.apply(&Op::Nft { script, undo: None }).is_err() {
                tracing::warn!("could not remove the firewall elements of endpoint {}; `lanyard restore` rebuilds them", ep.display_name());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Engine;
    use lanyard_core::kernel::fake::FakeKernel;
    use lanyard_core::kernel::{Kernel, NsId, View};
    use lanyard_core::model::AttachRequest;
    use lanyard_core::op::{Netns, Op};
    use lanyard_core::store::mem::MemStore;
    use lanyard_core::testing::NetworkBuilder;
    use lanyard_core::{Error, Result};
    use std::path::Path;

    /// The fake kernel, whose next `add element` fails with `reason`.
    struct ElementFails {
        inner: FakeKernel,
        reason: Option<&'static str>,
    }

    impl Kernel for ElementFails {
        fn view(&mut self, netns: &Netns) -> Result<View> {
            self.inner.view(netns)
        }
        fn netns_id(&mut self, path: &Path) -> Result<NsId> {
            self.inner.netns_id(path)
        }
        fn apply(&mut self, op: &Op) -> Result<()> {
            if let Op::Nft { script, .. } = op {
                if script.starts_with("add element") {
                    if let Some(reason) = self.reason.take() {
                        return Err(Error::kernel("nft add element …", reason, None));
                    }
                }
            }
            self.inner.apply(op)
        }
    }

    fn engine(reason: &'static str) -> Engine<MemStore, ElementFails> {
        let mut k = FakeKernel::with_eth0(&["192.0.2.2/24"]);
        k.namespaces.push(("/run/netns/c1".into(), (1, 10)));
        let mut e = Engine::new(
            MemStore::default(),
            ElementFails {
                inner: k,
                reason: None,
            },
            Default::default(),
        );
        let br = NetworkBuilder::new("br").subnet("203.0.113.0/24");
        e.create_network(&br.request()).unwrap();
        e.kernel.reason = Some(reason);
        e
    }

    fn attach(e: &mut Engine<MemStore, ElementFails>) -> Result<()> {
        e.attach(&AttachRequest {
            network: "br".into(),
            netns: "/run/netns/c1".into(),
            publish: vec!["8080:80".into()],
            ..Default::default()
        })
        .map(drop)
    }

    fn rebuilds(e: &Engine<MemStore, ElementFails>) -> usize {
        e.kernel
            .inner
            .applied
            .iter()
            .filter(|o| matches!(o, Op::Nft { script, .. } if script.starts_with("table inet lanyard\n")))
            .count()
    }

    #[test]
    fn an_element_change_on_flushed_tables_falls_back_to_a_full_rebuild() {
        let mut e = engine("line 1:18-24: Error: No such file or directory");
        let before = rebuilds(&e);
        attach(&mut e).unwrap();
        assert_eq!(rebuilds(&e), before + 1);
        assert_eq!(e.endpoints().unwrap().len(), 1);
    }

    #[test]
    fn any_other_element_failure_fails_the_attach_and_rebuilds_nothing() {
        let mut e = engine("injected failure");
        let before = rebuilds(&e);
        let err = attach(&mut e).unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        assert_eq!(rebuilds(&e), before);
        assert!(e.endpoints().unwrap().is_empty());
    }
}
