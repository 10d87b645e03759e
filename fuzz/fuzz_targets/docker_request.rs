//! A Docker remote plugin request as dockerd sends it to `lanyard daemon`: the
//! input's first line is the path (`/NetworkDriver.CreateNetwork`), the rest the
//! JSON body. `Call::parse` and every translation the daemon applies to the parsed
//! call must answer without a panic, and what they accept must hold together: a
//! refusal is a `{"Err"}` reply that serializes; a fixed answer is a 200; a
//! `CreateNetwork` Docker's words turn into a lanyard request that `validate`
//! accepts has each gateway and range inside its subnet; a `RequestPool` range lies
//! in its pool; a pool id lanyard hands out parses back to the same pool.
//!
//! The corpus (fuzz/corpus/docker_request) holds the bodies a real dockerd 20.10
//! sent to the lab's plugin (network create with --ip-range, --aux-address, --ipv6,
//! --internal, Docker's own IPAM, a bad -o; run with --ip and -p; connect,
//! disconnect, rm, network rm), captured with a logging proxy on the plugin socket,
//! plus `miss_*` inputs with broken bodies.
#![no_main]

use lanyard_docker::{translate, Call};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (path, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let path = String::from_utf8_lossy(path);
    let call = match Call::parse(&path, body) {
        Ok(c) => c,
        Err(reply) => {
            assert!(reply.status >= 400, "refusal with status {}", reply.status);
            assert!(reply.body.get("Err").is_some(), "refusal without Err");
            serde_json::to_vec(&reply.body).unwrap();
            return;
        }
    };
    let _ = call.name();
    if let Some(reply) = call.fixed() {
        assert_eq!(reply.status, 200, "{}", call.name());
        serde_json::to_vec(&reply.body).unwrap();
    }
    match &call {
        Call::CreateNetwork(c) => {
            let _ = translate::port_specs(&c.options);
            let Ok(req) = translate::network_request(c, &[]) else {
                return;
            };
            let Ok(net) = req.validate("0123456789ab".into(), 0) else {
                return;
            };
            for sc in &net.subnets {
                if let Some(g) = sc.gateway {
                    assert!(sc.subnet.contains(&g), "gateway {g} outside {}", sc.subnet);
                }
                if let Some(r) = sc.ip_range {
                    assert!(sc.subnet.contains(&r), "ip-range {r} outside {}", sc.subnet);
                }
            }
        }
        Call::RequestPool(p) => {
            if let Ok((pool, range)) = translate::requested_pool(&p.pool, &p.sub_pool, p.v6) {
                if let (Some(pool), Some(range)) = (pool, range) {
                    assert!(pool.contains(&range), "{range} outside {pool}");
                }
                if let Some(pool) = pool {
                    let id = translate::pool_id(pool, range);
                    let back = translate::parse_pool_id(&id).expect("own pool id");
                    assert_eq!(back, (pool, range), "pool id {id}");
                }
            }
        }
        Call::ReleasePool(p) => {
            let _ = translate::parse_pool_id(&p.pool_id);
        }
        Call::RequestAddress(a) => {
            let _ = translate::parse_pool_id(&a.pool_id);
            if !a.address.is_empty() {
                let _ = translate::address("Address", &a.address);
            }
        }
        Call::ReleaseAddress(a) => {
            let _ = translate::parse_pool_id(&a.pool_id);
            let _ = translate::address("Address", &a.address);
        }
        Call::CreateEndpoint(e) => {
            let _ = translate::check_id("EndpointID", &e.endpoint.endpoint_id);
            let _ = translate::network_name(&e.endpoint.network_id);
            if let Some(i) = &e.interface {
                let _ = translate::subnet("Address", &i.address);
                let _ = translate::subnet("AddressIPv6", &i.address_ipv6);
            }
            let _ = translate::port_specs(&e.options);
        }
        Call::Join(j) => {
            let _ = translate::check_id("EndpointID", &j.endpoint.endpoint_id);
            let _ = translate::port_specs(&j.options);
        }
        Call::ProgramExternalConnectivity(x) => {
            let _ = translate::port_specs(&x.options);
        }
        Call::DeleteNetwork(n) => {
            let _ = translate::network_name(&n.network_id);
        }
        Call::EndpointOperInfo(e)
        | Call::DeleteEndpoint(e)
        | Call::Leave(e)
        | Call::RevokeExternalConnectivity(e) => {
            let _ = translate::check_id("EndpointID", &e.endpoint_id);
            let _ = translate::network_name(&e.network_id);
        }
        _ => {}
    }
});
