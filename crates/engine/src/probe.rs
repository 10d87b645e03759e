//! The duplicate-address probe of macvlan and ipvlan networks (`-o arp_probe=MS`,
//! RFC 5227): before an IPv4 address goes into use on the LAN, one ARP probe from
//! the parent, and up to MS milliseconds for another host to answer for it. A
//! `--ip` held by another host is refused, naming its MAC; an allocated one is
//! skipped. Off by default (see ARCHITECTURE.md, "Addresses from the LAN"): a
//! network without the option never comes here.

use crate::Engine;
use lanyard_core::kernel::Kernel;
use lanyard_core::lease::{parse_arp_probe, ARP_PROBE_OPTION};
use lanyard_core::model::{Endpoint, Network};
use lanyard_core::store::Store;
use lanyard_core::{Error, Result};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// How long `net`'s attaches wait for an ARP answer, if they probe at all.
pub(crate) fn wait_of(net: &Network) -> Option<Duration> {
    let raw = net.options.get(ARP_PROBE_OPTION)?;
    parse_arp_probe(raw).ok().filter(|w| !w.is_zero())
}

/// At most this many allocated addresses are skipped in one attach.
const MAX_SKIPPED: usize = 8;

impl<S: Store, K: Kernel> Engine<S, K> {
    /// The MAC of another LAN host that holds `addr`, if one answers the probe. A
    /// probe that cannot be sent (no parent link yet) is logged and counts as no
    /// answer: the probe protects, it never blocks an attach.
    fn holder(&mut self, net: &Network, addr: Ipv4Addr, wait: Duration) -> Option<String> {
        let parent = net.parent.as_ref()?;
        match self.kernel.arp_probe(parent, addr, wait) {
            Ok(m) => m.map(|m| m.to_string()),
            Err(e) => {
                tracing::warn!("network {}: {e}; attaching without the probe", net.name);
                None
            }
        }
    }

    /// `--ip addr` refused if another LAN host answers for it.
    pub(crate) fn refuse_if_held(
        &mut self,
        net: &Network,
        addr: Ipv4Addr,
        wait: Duration,
    ) -> Result<()> {
        match self.holder(net, addr, wait) {
            Some(mac) => Err(Error::Conflict(format!(
                "address {addr} is in use on the LAN of network {} by the host with MAC \
                 {mac} (it answered an ARP probe); pick another --ip",
                net.name
            ))),
            None => Ok(()),
        }
    }

    /// Whether `ep`'s allocated IPv4 address is held by another LAN host: then its
    /// record is deleted (nothing else was done yet) and the address added to
    /// `exclude`, so the next allocation skips it.
    pub(crate) fn held_by_other(
        &mut self,
        net: &Network,
        ep: &Endpoint,
        wait: Duration,
        exclude: &mut Vec<IpAddr>,
        skipped: &mut usize,
    ) -> Result<bool> {
        let Some(IpAddr::V4(addr)) = ep.addresses.iter().map(|a| a.addr()).find(IpAddr::is_ipv4)
        else {
            return Ok(false);
        };
        let Some(mac) = self.holder(net, addr, wait) else {
            return Ok(false);
        };
        self.store.write(&mut |tx| tx.delete_endpoint(&ep.id))?;
        exclude.push(IpAddr::V4(addr));
        *skipped += 1;
        if *skipped > MAX_SKIPPED {
            return Err(Error::Conflict(format!(
                "network {}: {MAX_SKIPPED} addresses in a row are held by other LAN hosts; \
                 the LAN's DHCP range probably overlaps the network's --ip-range",
                net.name
            )));
        }
        tracing::warn!(
            "network {}: skipped {addr}, held by the host with MAC {mac}",
            net.name
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use crate::endpoint::tests::engine;
    use lanyard_core::kernel::fake::FakeKernel;
    use lanyard_core::model::{AttachRequest, MacAddr};
    use lanyard_core::store::mem::MemStore;
    use lanyard_core::testing::NetworkBuilder;
    use lanyard_core::ErrorKind;

    const ROUTER: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xfe]);

    type E = crate::Engine<MemStore, FakeKernel>;

    /// A host with eth0 on 192.0.2.0/24 and namespaces c1, c2; no network.
    fn host() -> E {
        let mut k = FakeKernel::with_eth0(&["192.0.2.2/24"]);
        k.namespaces.push(("/run/netns/c1".into(), (1, 10)));
        k.namespaces.push(("/run/netns/c2".into(), (1, 11)));
        crate::Engine::new(MemStore::default(), k, Default::default())
    }

    /// `probed`: macvlan on eth0 in `subnet` whose range is `range`, `-o arp_probe=probe`.
    fn probing(e: &mut E, subnet: &str, range: &str, probe: &str) {
        let probed = NetworkBuilder::new("probed")
            .driver("macvlan")
            .options(&["parent=eth0", &format!("arp_probe={probe}")])
            .subnet(subnet)
            .ip_range(range);
        e.create_network(&probed.request()).unwrap();
    }

    fn req(ip: Option<&str>) -> AttachRequest {
        AttachRequest {
            network: "probed".into(),
            netns: "/run/netns/c1".into(),
            ip: ip.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn a_static_address_another_lan_host_holds_is_refused_naming_its_mac() {
        let mut e = host();
        probing(&mut e, "192.0.2.0/24", "192.0.2.76/31", "200");
        e.kernel
            .arp_holders
            .push(("192.0.2.77".parse().unwrap(), ROUTER));
        let err = e.attach(&req(Some("192.0.2.77"))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(err.to_string().contains("02:00:00:00:00:fe"), "{err}");
        assert!(e.endpoints().unwrap().is_empty(), "nothing recorded");
        assert!(e
            .kernel
            .applied
            .iter()
            .all(|o| !o.to_string().contains("192.0.2.77")));
    }

    #[test]
    fn an_allocated_address_another_lan_host_holds_is_skipped() {
        let mut e = host();
        probing(&mut e, "192.0.2.0/24", "192.0.2.76/31", "200");
        e.kernel
            .arp_holders
            .push(("192.0.2.76".parse().unwrap(), ROUTER));
        let ep = e.attach(&req(None)).unwrap();
        assert_eq!(ep.addresses[0].to_string(), "192.0.2.77/24");
        assert_eq!(e.endpoints().unwrap().len(), 1);
        let all: Vec<String> = e.kernel.arp_probes.iter().map(|a| a.to_string()).collect();
        assert_eq!(all, ["192.0.2.76", "192.0.2.77"]);
    }

    #[test]
    fn without_the_option_or_with_zero_no_probe_is_sent() {
        let mut e = engine();
        e.attach(&AttachRequest {
            network: "lan".into(),
            netns: "/run/netns/c1".into(),
            ..Default::default()
        })
        .unwrap();
        probing(&mut e, "198.51.100.0/24", "198.51.100.0/25", "0");
        e.attach(&AttachRequest {
            netns: "/run/netns/c2".into(),
            ..req(None)
        })
        .unwrap();
        assert!(e.kernel.arp_probes.is_empty());
        assert!(
            e.create_network(&NetworkBuilder::new("b").option("arp_probe=200").request())
                .is_err(),
            "bridge networks do not probe"
        );
    }
}
