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

use crate::Lanyard;
use ipnet::IpNet;
use lanyard_core::model::{first_host, Network};
use lanyard_core::owner::{AllocateRequest, EndpointRef, Owner, PlugTarget};
use lanyard_core::{Error, Result};
use lanyard_docker::translate::{self, ADDRESS_TYPE, GATEWAY_TYPE, ID_LABEL};
use lanyard_docker::wire;
use lanyard_docker::{Call, Reply};
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
pub fn answer(engine: &mut Lanyard, state: &mut State, call: Call) -> Reply {
    let name = call.name();
    match dispatch(engine, state, call) {
        Ok(v) => Reply::ok(v),
        Err(e) => {
            tracing::info!("docker: {name}: {e}");
            Reply::err(400, format!("lanyard: {e}"))
        }
    }
}

fn dispatch(engine: &mut Lanyard, state: &mut State, call: Call) -> Result<Value> {
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
fn docker_network(engine: &Lanyard, id: &str) -> Result<Option<Network>> {
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
fn network_of_pool(engine: &Lanyard, pool: IpNet) -> Result<Option<Network>> {
    let mut found: Vec<Network> = engine
        .networks()?
        .into_iter()
        .map(|s| s.network)
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

fn create_network(engine: &mut Lanyard, state: &State, c: &wire::CreateNetwork) -> Result<Value> {
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

fn delete_network(engine: &mut Lanyard, id: &str) -> Result<Value> {
    if let Some(net) = docker_network(engine, id)? {
        engine.remove_network(&net.id)?;
    }
    Ok(json!({}))
}

fn create_endpoint(engine: &mut Lanyard, c: &wire::CreateEndpoint) -> Result<Value> {
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

fn join(engine: &mut Lanyard, j: &wire::Join) -> Result<Value> {
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

fn request_pool(engine: &mut Lanyard, state: &mut State, p: &wire::RequestPool) -> Result<Value> {
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

fn request_address(engine: &mut Lanyard, a: &wire::RequestAddress) -> Result<Value> {
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
