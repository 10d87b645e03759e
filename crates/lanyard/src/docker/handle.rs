//! One parsed Docker call against the engine, on the daemon's engine thread: the
//! translation of each NetworkDriver and IpamDriver call into engine verbs. The
//! engine decides everything (conflicts, addresses, links); this only maps names.
//!
//! - A Docker network is the lanyard network `docker-<first 12 digits of its id>`,
//!   labelled with the whole id; its endpoints are owned by (network id, endpoint id).
//! - IPAM keeps no state per pool: the pool id carries the pool and its `--ip-range`.
//!   `RequestAddress` on a lanyard network reserves the address in the store (the
//!   endpoint's allocation takes the reservation over); before the network exists
//!   (gateway, aux addresses) the asked address is given back as it is.
//! - `Join` plugs the endpoint straight into the sandbox's namespace when that is
//!   already a namespace (`docker network connect` on a running container), with
//!   its addresses and routes; for a container being started (its namespace does
//!   not exist yet) the link waits on the host under a temporary name and dockerd
//!   moves it in. Either way it names the gateway, so dockerd treats the endpoint as
//!   the container's way out (published ports).

use ipnet::IpNet;
use lanyard_core::kernel::Kernel;
use lanyard_core::model::{first_host, Network};
use lanyard_core::owner::{AllocateRequest, EndpointRef, Owner, PlugTarget};
use lanyard_core::store::Store;
use lanyard_core::{Error, Result};
use lanyard_docker::translate::{self, ADDRESS_TYPE, GATEWAY_TYPE, ID_LABEL};
use lanyard_docker::wire;
use lanyard_docker::{Call, Reply};
use lanyard_engine::Engine;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::IpAddr;

/// What the handler remembers between calls: the `--ip-range` of each pool handed
/// out, for the `CreateNetwork` that follows its `RequestPool` (dockerd does not
/// pass the range to the network driver).
#[derive(Default)]
pub struct State {
    ranges: HashMap<IpNet, IpNet>,
}

/// Answers `call` (one that [`Call::fixed`] does not answer).
pub fn answer<S: Store, K: Kernel>(
    engine: &mut Engine<S, K>,
    state: &mut State,
    call: Call,
) -> Reply {
    let name = call.name();
    match dispatch(engine, state, call) {
        Ok(v) => Reply::ok(v),
        Err(e) => {
            tracing::info!("docker: {name}: {e}");
            Reply::err(400, format!("lanyard: {e}"))
        }
    }
}

fn dispatch<S: Store, K: Kernel>(
    engine: &mut Engine<S, K>,
    state: &mut State,
    call: Call,
) -> Result<Value> {
    match call {
        Call::CreateNetwork(c) => create_network(engine, state, &c),
        Call::DeleteNetwork(n) => delete_network(engine, &n.network_id),
        Call::CreateEndpoint(c) => create_endpoint(engine, &c),
        Call::EndpointOperInfo(e) => {
            let ep = engine.find_endpoint(&owner_ref(&e)?)?;
            Ok(json!({ "Value": ep.map(|ep| json!({
                "id": ep.id,
                "addresses": ep.addresses,
                "mac": ep.mac.map(|m| m.to_string()),
            })).unwrap_or_else(|| json!({})) }))
        }
        Call::DeleteEndpoint(e) => {
            engine.release(&owner_ref(&e)?)?;
            Ok(json!({}))
        }
        Call::Join(j) => join(engine, &j),
        Call::Leave(e) => {
            engine.unplug(&owner_ref(&e)?)?;
            Ok(json!({}))
        }
        Call::ProgramExternalConnectivity(x) => {
            let specs = translate::port_specs(&x.options)?;
            if !specs.is_empty() {
                engine.publish(&owner_ref(&x.endpoint)?, &specs)?;
            }
            Ok(json!({}))
        }
        Call::RevokeExternalConnectivity(e) => {
            let r = owner_ref(&e)?;
            if engine.find_endpoint(&r)?.is_some() {
                engine.unpublish(&r, &[])?;
            }
            Ok(json!({}))
        }
        Call::RequestPool(p) => request_pool(engine, state, &p),
        Call::RequestAddress(a) => request_address(engine, &a),
        Call::ReleaseAddress(a) => {
            let (pool, _) = translate::parse_pool_id(&a.pool_id)?;
            let addr = translate::address("Address", &a.address)?;
            if let Some(net) = network_of_pool(engine, pool)? {
                engine.free_reserved(&net.id, addr)?;
            }
            Ok(json!({}))
        }
        other => Ok(other.fixed().map(|r| r.body).unwrap_or_else(|| json!({}))),
    }
}

fn owner_ref(e: &wire::EndpointRef) -> Result<EndpointRef> {
    translate::check_id("NetworkID", &e.network_id)?;
    translate::check_id("EndpointID", &e.endpoint_id)?;
    Ok(EndpointRef::Owner(Owner::Docker {
        network_id: e.network_id.clone(),
        endpoint_id: e.endpoint_id.clone(),
    }))
}

/// The lanyard network of Docker's network `id`, if there is one.
fn docker_network<S: Store, K: Kernel>(engine: &Engine<S, K>, id: &str) -> Result<Option<Network>> {
    let name = translate::network_name(id)?;
    match engine.network(&name) {
        Ok(n) if n.labels.get(ID_LABEL).map(String::as_str) == Some(id) => Ok(Some(n)),
        Ok(n) => Err(Error::Conflict(format!(
            "network {} exists and is not Docker's network {id}",
            n.name
        ))),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The Docker-made lanyard network whose subnet is `pool`, if exactly one.
fn network_of_pool<S: Store, K: Kernel>(
    engine: &Engine<S, K>,
    pool: IpNet,
) -> Result<Option<Network>> {
    // The networks alone: `Engine::networks` also counts every endpoint.
    let mut found: Vec<Network> = engine
        .store
        .read(&mut |tx| tx.networks())?
        .into_iter()
        .filter(|n| n.labels.contains_key(ID_LABEL) && n.subnets.iter().any(|s| s.subnet == pool))
        .collect();
    if found.len() > 1 {
        return Err(Error::Conflict(format!(
            "pool {pool} is the subnet of several Docker networks ({}); lanyard's IPAM \
             cannot tell which one an address is for",
            found
                .iter()
                .map(|n| n.name.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(found.pop())
}

fn create_network<S: Store, K: Kernel>(
    engine: &mut Engine<S, K>,
    state: &State,
    c: &wire::CreateNetwork,
) -> Result<Value> {
    // Asked again (dockerd retrying after a lost answer): it is there.
    if docker_network(engine, &c.network_id)?.is_some() {
        return Ok(json!({}));
    }
    let mut ranges = vec![];
    for d in c.ipv4.iter().chain(&c.ipv6) {
        if let Some(r) = d
            .pool
            .parse::<IpNet>()
            .ok()
            .and_then(|p| state.ranges.get(&p))
        {
            ranges.push(*r);
        }
    }
    let req = translate::network_request(c, &ranges)?;
    engine.create_network(&req)?;
    Ok(json!({}))
}

fn delete_network<S: Store, K: Kernel>(engine: &mut Engine<S, K>, id: &str) -> Result<Value> {
    if let Some(net) = docker_network(engine, id)? {
        engine.remove_network(&net.id)?;
    }
    Ok(json!({}))
}

fn create_endpoint<S: Store, K: Kernel>(
    engine: &mut Engine<S, K>,
    c: &wire::CreateEndpoint,
) -> Result<Value> {
    let r = owner_ref(&c.endpoint)?;
    let Some(net) = docker_network(engine, &c.endpoint.network_id)? else {
        return Err(Error::not_found("network", &c.endpoint.network_id));
    };
    let given = c.interface.clone().unwrap_or_default();
    let bare = |field: &str, s: &str| -> Result<Option<String>> {
        Ok((!s.is_empty())
            .then(|| translate::address(field, s))
            .transpose()?
            .map(|a| a.to_string()))
    };
    let req = AllocateRequest {
        network: net.id.clone(),
        owner: match &r {
            EndpointRef::Owner(o) => Some(o.clone()),
            EndpointRef::Key(_) => None,
        },
        name: None,
        ip: bare("Address", &given.address)?,
        ip6: bare("AddressIPv6", &given.address_ipv6)?,
        mac: (!given.mac_address.is_empty()).then(|| given.mac_address.clone()),
        publish: vec![],
        aliases: vec![],
    };
    let ep = engine.allocate(&req)?;
    // Only what Docker left to the driver goes back: dockerd refuses changes.
    let mut iface = Map::new();
    if given.mac_address.is_empty() {
        if let Some(m) = ep.mac {
            iface.insert("MacAddress".into(), json!(m.to_string()));
        }
    }
    for (v6, key, set) in [
        (false, "Address", &given.address),
        (true, "AddressIPv6", &given.address_ipv6),
    ] {
        if set.is_empty() {
            if let Some(a) = ep.addresses.iter().find(|a| a.addr().is_ipv6() == v6) {
                iface.insert(key.into(), json!(a.to_string()));
            }
        }
    }
    if iface.is_empty() {
        return Ok(json!({}));
    }
    Ok(json!({ "Interface": iface }))
}

/// Set to `move`, Join always leaves the link for dockerd to move (a benchmark knob).
pub const JOIN_ENV: &str = "LANYARD_DOCKER_JOIN";

/// The nsfs magic number: a path that is a network namespace now.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Whether `path` is a live namespace (a bind-mounted nsfs file) at this moment.
// f_type is i64 here and narrower on other architectures.
#[allow(clippy::unnecessary_cast)]
fn is_namespace(path: &str) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == NSFS_MAGIC)
}

/// The temporary host-side name of an endpoint's link that dockerd moves itself.
fn temporary_name(endpoint_id: &str) -> String {
    format!("lyd{}", &endpoint_id[..12.min(endpoint_id.len())])
}

fn join<S: Store, K: Kernel>(engine: &mut Engine<S, K>, j: &wire::Join) -> Result<Value> {
    let r = owner_ref(&j.endpoint)?;
    if j.sandbox_key.is_empty() {
        return Err(Error::invalid("SandboxKey", "", "is empty"));
    }
    // A running container's namespace (`docker network connect`) is there: the
    // link goes straight in, configured, as `attach` does. A container being
    // started has only a placeholder file until its runtime makes the namespace
    // (dockerd binds it later, from runc's prestart hook): the link waits on the
    // host under a temporary name and dockerd moves and configures it.
    // `LANYARD_DOCKER_JOIN=move` always takes the second way (for
    // scripts/bench-docker, which measures both).
    let in_place =
        is_namespace(&j.sandbox_key) && std::env::var_os(JOIN_ENV).is_none_or(|v| v != "move");
    let target = if in_place {
        PlugTarget::Netns {
            netns: j.sandbox_key.clone().into(),
            ifname: None,
            unprivileged_port_start: None,
        }
    } else {
        PlugTarget::Host {
            name: temporary_name(&j.endpoint.endpoint_id),
        }
    };
    let ep = engine.plug(&r, &target)?;
    let net = engine.network(&ep.network_id)?;
    // Naming the gateway makes dockerd treat this endpoint as the container's way
    // out (and call ProgramExternalConnectivity for its published ports). dockerd
    // adds its own default route (metric 0) beside lanyard's.
    let gw = |v6: bool| -> Option<IpAddr> {
        if net.internal {
            return None;
        }
        ep.gateways.iter().copied().find(|g| g.is_ipv6() == v6)
    };
    let mut out = Map::new();
    if let PlugTarget::Host { name } = &target {
        out.insert(
            "InterfaceName".into(),
            json!({ "SrcName": name, "DstPrefix": "eth" }),
        );
    }
    if let Some(g) = gw(false) {
        out.insert("Gateway".into(), json!(g.to_string()));
    }
    if let Some(g) = gw(true) {
        out.insert("GatewayIPv6".into(), json!(g.to_string()));
    }
    out.insert("DisableGatewayService".into(), json!(true));
    Ok(Value::Object(out))
}

fn request_pool<S: Store, K: Kernel>(
    engine: &mut Engine<S, K>,
    state: &mut State,
    p: &wire::RequestPool,
) -> Result<Value> {
    if !p.options.is_empty() {
        return Err(Error::invalid(
            "--ipam-opt",
            p.options
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            "lanyard's IPAM driver takes no options",
        ));
    }
    let (pool, range) = translate::requested_pool(&p.pool, &p.sub_pool, p.v6)?;
    let pool = match pool {
        Some(p) => p,
        None => engine.free_pool(p.v6)?,
    };
    match range {
        Some(r) => state.ranges.insert(pool, r),
        None => state.ranges.remove(&pool),
    };
    Ok(json!({
        "PoolID": translate::pool_id(pool, range),
        "Pool": pool.to_string(),
        "Data": {},
    }))
}

fn request_address<S: Store, K: Kernel>(
    engine: &mut Engine<S, K>,
    a: &wire::RequestAddress,
) -> Result<Value> {
    let (pool, range) = translate::parse_pool_id(&a.pool_id)?;
    let want = (!a.address.is_empty())
        .then(|| translate::address("Address", &a.address))
        .transpose()?;
    if let Some(w) = want.filter(|w| !pool.contains(w)) {
        return Err(Error::invalid(
            "Address",
            w,
            format!("is outside pool {pool}"),
        ));
    }
    let with_len = |addr: IpAddr| -> Result<Value> {
        let n = IpNet::new(addr, pool.prefix_len()).map_err(|e| Error::Other(e.to_string()))?;
        Ok(json!({ "Address": n.to_string(), "Data": {} }))
    };
    if a.options.get(ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_TYPE) {
        let gw = want
            .or_else(|| first_host(&pool))
            .ok_or_else(|| Error::invalid("--subnet", pool, "has no address for a gateway"))?;
        return with_len(gw);
    }
    match network_of_pool(engine, pool)? {
        Some(net) => {
            let n = engine.reserve_address(&net.id, pool, range, want)?;
            Ok(json!({ "Address": n.to_string(), "Data": {} }))
        }
        // Before the network exists: the aux addresses of `docker network create`.
        None => match want {
            Some(w) => with_len(w),
            None => Err(Error::not_found(
                "lanyard network with subnet",
                format!(
                    "{pool} (lanyard's IPAM driver hands out addresses on networks of the \
                     lanyard driver only)"
                ),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::kernel::fake::FakeKernel;
    use lanyard_core::store::mem::MemStore;

    const NID: &str = "3f2a9c0b1d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    const EID: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d";

    struct Dockerd {
        engine: Engine<MemStore, FakeKernel>,
        state: State,
    }

    impl Dockerd {
        fn new() -> Dockerd {
            let k = FakeKernel::with_eth0(&["192.0.2.2/24"]);
            Dockerd {
                engine: Engine::new(MemStore::default(), k, Default::default()),
                state: State::default(),
            }
        }

        /// Sends one call as dockerd would: path and JSON body.
        fn call(&mut self, path: &str, body: Value) -> Reply {
            let call = Call::parse(path, body.to_string().as_bytes()).unwrap();
            match call.fixed() {
                Some(r) => r,
                None => answer(&mut self.engine, &mut self.state, call),
            }
        }

        fn ok(&mut self, path: &str, body: Value) -> Value {
            let r = self.call(path, body);
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            r.body
        }

        fn err(&mut self, path: &str, body: Value) -> String {
            let r = self.call(path, body);
            assert_eq!(r.status, 400, "{path}: {}", r.body);
            r.body["Err"].as_str().unwrap().to_string()
        }
    }

    fn lan_create() -> Value {
        json!({
            "NetworkID": NID,
            "Options": {"com.docker.network.generic": {"parent": "eth0"},
                        "com.docker.network.enable_ipv6": false},
            "IPv4Data": [{"AddressSpace": "LanyardLocal", "Pool": "192.0.2.0/24",
                          "Gateway": "192.0.2.1/24"}],
            "IPv6Data": []
        })
    }

    #[test]
    fn a_container_on_a_docker_macvlan_network_call_by_call() {
        let mut d = Dockerd::new();
        // docker network create --subnet --ip-range --gateway -o parent=eth0
        let pool = d.ok(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "LanyardLocal", "Pool": "192.0.2.0/24",
                   "SubPool": "192.0.2.128/25", "Options": {}, "V6": false}),
        );
        let pool_id = pool["PoolID"].as_str().unwrap().to_string();
        assert_eq!(pool["Pool"], "192.0.2.0/24");
        let gw = d.ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "192.0.2.1",
                   "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
        );
        assert_eq!(gw["Address"], "192.0.2.1/24");
        d.ok("/NetworkDriver.CreateNetwork", lan_create());
        let net = d.engine.network("docker-3f2a9c0b1d4e").unwrap();
        assert_eq!(net.labels[ID_LABEL], NID);
        assert_eq!(
            net.subnets[0].ip_range.map(|r| r.to_string()).as_deref(),
            Some("192.0.2.128/25"),
            "the range IPAM was asked for"
        );
        // A repeated CreateNetwork (an answer lost) finds it.
        d.ok("/NetworkDriver.CreateNetwork", lan_create());

        // docker run: address, endpoint, join.
        let a = d.ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "", "Options": {}}),
        );
        assert_eq!(a["Address"], "192.0.2.128/24");
        let ep = d.ok(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NID, "EndpointID": EID,
                   "Interface": {"Address": "192.0.2.128/24", "AddressIPv6": "", "MacAddress": ""},
                   "Options": {}}),
        );
        assert!(ep["Interface"]["MacAddress"].is_string(), "{ep}");
        assert!(
            ep["Interface"].get("Address").is_none(),
            "Docker chose it: {ep}"
        );
        let join = d.ok(
            "/NetworkDriver.Join",
            json!({"NetworkID": NID, "EndpointID": EID,
                   "SandboxKey": "/nonexistent/docker/netns/0123", "Options": {}}),
        );
        // Not a namespace yet: the link waits on the host for dockerd to move.
        assert_eq!(join["InterfaceName"]["SrcName"], "lyd9e8d7c6b5a4f");
        assert_eq!(join["InterfaceName"]["DstPrefix"], "eth");
        assert_eq!(join["Gateway"], "192.0.2.1");
        let info = d.ok(
            "/NetworkDriver.EndpointOperInfo",
            json!({"NetworkID": NID, "EndpointID": EID}),
        );
        assert!(info["Value"]["id"].is_string(), "{info}");

        // docker rm: leave, delete, release; all again is fine.
        for _ in 0..2 {
            let e = json!({"NetworkID": NID, "EndpointID": EID});
            d.ok("/NetworkDriver.RevokeExternalConnectivity", e.clone());
            d.ok("/NetworkDriver.Leave", e.clone());
            d.ok("/NetworkDriver.DeleteEndpoint", e);
            d.ok(
                "/IpamDriver.ReleaseAddress",
                json!({"PoolID": pool_id, "Address": "192.0.2.128"}),
            );
        }
        assert!(d.engine.endpoints().unwrap().is_empty());
        // The address is free again.
        let again = d.ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "192.0.2.128", "Options": {}}),
        );
        assert_eq!(again["Address"], "192.0.2.128/24");
        d.ok(
            "/IpamDriver.ReleaseAddress",
            json!({"PoolID": pool_id, "Address": "192.0.2.128"}),
        );
        d.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": NID}));
        assert!(d.engine.networks().unwrap().is_empty());
        d.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": NID}));
        d.ok("/IpamDriver.ReleasePool", json!({"PoolID": pool_id}));
    }

    /// `docker network create` with `--ip-range 192.0.2.128/25` and the gateway:
    /// the pool id.
    fn lan_network(d: &mut Dockerd) -> String {
        let pool = d.ok(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "LanyardLocal", "Pool": "192.0.2.0/24",
                   "SubPool": "192.0.2.128/25", "Options": {}, "V6": false}),
        );
        let pool_id = pool["PoolID"].as_str().unwrap().to_string();
        d.ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "192.0.2.1",
                   "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
        );
        d.ok("/NetworkDriver.CreateNetwork", lan_create());
        pool_id
    }

    /// Who holds `addr` on the Docker network now.
    fn holder(d: &Dockerd, addr: &str) -> Option<String> {
        let net = d.engine.network("docker-3f2a9c0b1d4e").unwrap();
        let a: IpAddr = addr.parse().unwrap();
        d.engine
            .store
            .read(&mut |tx| tx.address_owner(&net.id, a))
            .unwrap()
    }

    /// Makes the reservation of `addr` look `secs` older (the store keeps when it
    /// was made in its owner, after an `@`).
    fn age(d: &mut Dockerd, addr: &str, secs: u64) {
        let net = d.engine.network("docker-3f2a9c0b1d4e").unwrap();
        let a: IpAddr = addr.parse().unwrap();
        let owner = holder(d, addr).unwrap();
        let stem = owner.split('@').next().unwrap().to_string();
        let old = format!("{stem}@{}", lanyard_engine::now() - secs);
        d.engine
            .store
            .write(&mut |tx| {
                tx.release_addresses(&owner)?;
                tx.take_address(&net.id, a, &old)
            })
            .unwrap();
    }

    #[test]
    fn a_reservation_dockerd_never_claims_is_freed_by_gc_and_nothing_else() {
        let mut d = Dockerd::new();
        let pool_id = lan_network(&mut d);
        let request = |d: &mut Dockerd| {
            let a = d.ok(
                "/IpamDriver.RequestAddress",
                json!({"PoolID": pool_id, "Address": "", "Options": {}}),
            );
            a["Address"].as_str().unwrap().to_string()
        };
        // dockerd killed after RequestAddress: no CreateEndpoint, no ReleaseAddress.
        assert_eq!(request(&mut d), "192.0.2.128/24");
        // A container that got its endpoint.
        assert_eq!(request(&mut d), "192.0.2.129/24");
        d.ok(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NID, "EndpointID": EID,
                   "Interface": {"Address": "192.0.2.129/24", "AddressIPv6": "", "MacAddress": ""},
                   "Options": {}}),
        );
        // A CreateEndpoint in flight.
        assert_eq!(request(&mut d), "192.0.2.130/24");
        age(&mut d, "192.0.2.128", 11 * 60);
        let report = d.engine.gc().unwrap();
        assert!(
            report.removed.iter().any(|r| r.contains("192.0.2.128")),
            "{:?}",
            report.removed
        );
        assert_eq!(holder(&d, "192.0.2.128"), None, "freed");
        let ep = d.engine.endpoints().unwrap();
        assert_eq!(holder(&d, "192.0.2.129"), Some(ep[0].id.clone()), "claimed");
        assert!(holder(&d, "192.0.2.130").unwrap().starts_with("reserved:"));
        // The gateway is the network's for as long as it lives: never handed out.
        let e = d.err(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "192.0.2.1", "Options": {}}),
        );
        assert!(e.contains("192.0.2.1"), "{e}");
        let gw = d.ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "192.0.2.1",
                   "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
        );
        assert_eq!(gw["Address"], "192.0.2.1/24");
        // The freed address is anyone's again.
        let again = d.ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "192.0.2.128", "Options": {}}),
        );
        assert_eq!(again["Address"], "192.0.2.128/24");
    }

    #[test]
    fn a_repeated_request_for_a_reserved_address_gets_it_again() {
        let mut d = Dockerd::new();
        let pool_id = lan_network(&mut d);
        let ask = json!({"PoolID": pool_id, "Address": "192.0.2.140", "Options": {}});
        // A retry, or `docker start` of a container whose earlier start died
        // between RequestAddress and CreateEndpoint (dockerd killed).
        for _ in 0..2 {
            let a = d.ok("/IpamDriver.RequestAddress", ask.clone());
            assert_eq!(a["Address"], "192.0.2.140/24");
        }
        d.ok(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NID, "EndpointID": EID,
                   "Interface": {"Address": "192.0.2.140/24", "AddressIPv6": "", "MacAddress": ""},
                   "Options": {}}),
        );
        // An endpoint's address is not given twice.
        let e = d.err("/IpamDriver.RequestAddress", ask);
        assert!(e.contains("already in use"), "{e}");
    }

    #[test]
    fn refusals_name_the_field_and_change_nothing() {
        let mut d = Dockerd::new();
        let mut bad = lan_create();
        bad["Options"]["com.docker.network.generic"]["colour"] = json!("blue");
        let e = d.err("/NetworkDriver.CreateNetwork", bad);
        assert!(e.contains("colour") && e.contains("unknown option"), "{e}");
        assert!(d.engine.networks().unwrap().is_empty());
        let e = d.err(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": "lanyard:198.51.100.0/24", "Address": ""}),
        );
        assert!(e.contains("lanyard driver only"), "{e}");
        let e = d.err(
            "/IpamDriver.RequestPool",
            json!({"Pool": "192.0.2.0/24", "Options": {"x": "y"}}),
        );
        assert!(e.contains("--ipam-opt"), "{e}");
        let e = d.err(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NID, "EndpointID": "not hex"}),
        );
        assert!(e.contains("EndpointID"), "{e}");
        let e = d.err(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NID, "EndpointID": EID}),
        );
        assert!(e.contains("not found") || e.contains("no such"), "{e}");
        assert!(d.engine.endpoints().unwrap().is_empty());
    }

    #[test]
    fn a_pool_without_subnet_gets_a_free_one() {
        let mut d = Dockerd::new();
        let p = d.ok("/IpamDriver.RequestPool", json!({"V6": false}));
        let pool: IpNet = p["Pool"].as_str().unwrap().parse().unwrap();
        assert!(
            !pool.contains(&"192.0.2.2".parse::<IpAddr>().unwrap()),
            "{pool}"
        );
        assert_eq!(p["PoolID"], translate::pool_id(pool, None));
    }
}
