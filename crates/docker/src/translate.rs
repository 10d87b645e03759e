//! Docker's words into lanyard's: a `CreateNetwork` into a [`NetworkRequest`], pool
//! ids, addresses with lengths, `-p` bindings into `-p` specs. Each refusal names
//! Docker's field and why; the engine decides everything else (conflicts, overlaps).

use crate::wire::{CreateNetwork, IpamData, PortBinding};
use ipnet::IpNet;
use lanyard_core::netreq::NetworkRequest;
use lanyard_core::{Error, Result};
use serde_json::{Map, Value};
use std::net::IpAddr;

/// The `-o` key that picks lanyard's driver (`macvlan`, `ipvlan`, `bridge`); without
/// it a network with `parent` is macvlan, one without is a bridge.
pub const TYPE_OPTION: &str = "type";

/// The label that records Docker's network id on the lanyard network.
pub const ID_LABEL: &str = "lanyard.docker.network-id";

/// Docker's key for the `-o` options inside `CreateNetwork`'s options.
const GENERIC: &str = "com.docker.network.generic";
const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
const INTERNAL: &str = "com.docker.network.internal";
/// Docker's key for the `-p` bindings.
pub const PORTMAP: &str = "com.docker.network.portmap";
/// `RequestAddress`'s option key and value when Docker asks for a gateway.
pub const ADDRESS_TYPE: &str = "RequestAddressType";
/// See [`ADDRESS_TYPE`].
pub const GATEWAY_TYPE: &str = "com.docker.network.gateway";

const POOL_PREFIX: &str = "lanyard:";

/// The lanyard network's name for Docker's network `id`: `docker-` and the id's
/// first 12 digits (dockerd does not tell drivers its own name for a network).
pub fn network_name(id: &str) -> Result<String> {
    if id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(
            "NetworkID",
            id,
            "is not a Docker network id (hex digits, at least 12)",
        ));
    }
    Ok(format!("docker-{}", &id[..12]))
}

/// A Docker endpoint or network id part: non-empty hex.
pub fn check_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(field, id, "is not a Docker id (hex digits)"));
    }
    Ok(())
}

/// An address as Docker writes it, with or without a length (`192.0.2.5/24`).
pub fn address(field: &str, s: &str) -> Result<IpAddr> {
    let bare = s.split_once('/').map_or(s, |(a, _)| a);
    bare.parse()
        .map_err(|_| Error::invalid(field, s, "is not an IP address"))
}

/// A subnet as Docker writes it (`--subnet`, `--ip-range`).
pub fn subnet(field: &str, s: &str) -> Result<IpNet> {
    let n: IpNet = s
        .parse()
        .map_err(|_| Error::invalid(field, s, "is not a subnet (ADDRESS/LENGTH)"))?;
    if n.trunc() != n {
        return Err(Error::invalid(
            field,
            s,
            format!("has host bits set; the subnet is {}", n.trunc()),
        ));
    }
    Ok(n)
}

/// The pool id handed to dockerd: the pool and the `--ip-range` inside it, so every
/// later call carries them back (lanyard keeps no state per pool).
pub fn pool_id(pool: IpNet, range: Option<IpNet>) -> String {
    match range {
        Some(r) => format!("{POOL_PREFIX}{pool}@{r}"),
        None => format!("{POOL_PREFIX}{pool}"),
    }
}

/// The pool and range a [`pool_id`] names.
pub fn parse_pool_id(id: &str) -> Result<(IpNet, Option<IpNet>)> {
    let bad = || Error::invalid("PoolID", id, "is not a pool id lanyard gave");
    let rest = id.strip_prefix(POOL_PREFIX).ok_or_else(bad)?;
    let (pool, range) = match rest.split_once('@') {
        Some((p, r)) => (p, Some(r)),
        None => (rest, None),
    };
    let pool: IpNet = pool.parse().map_err(|_| bad())?;
    let range = range
        .map(|r| r.parse::<IpNet>().map_err(|_| bad()))
        .transpose()?;
    Ok((pool, range))
}

/// `RequestPool`'s pool and range checked: the range inside the pool, same family.
pub fn requested_pool(
    pool: &str,
    sub_pool: &str,
    v6: bool,
) -> Result<(Option<IpNet>, Option<IpNet>)> {
    let pool = (!pool.is_empty())
        .then(|| subnet("--subnet", pool))
        .transpose()?;
    let range = (!sub_pool.is_empty())
        .then(|| subnet("--ip-range", sub_pool))
        .transpose()?;
    if let Some(p) = pool {
        if p.addr().is_ipv6() != v6 {
            return Err(Error::invalid(
                "--subnet",
                p,
                format!("is not an IPv{} subnet", if v6 { 6 } else { 4 }),
            ));
        }
    }
    match (pool, range) {
        (None, Some(r)) => Err(Error::invalid(
            "--ip-range",
            r,
            "needs the --subnet it is part of",
        )),
        (Some(p), Some(r)) if !p.contains(&r) => Err(Error::invalid(
            "--ip-range",
            r,
            format!("is not inside --subnet {p}"),
        )),
        other => Ok(other),
    }
}

fn flag(options: &Map<String, Value>, key: &str) -> bool {
    match options.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

fn pools(data: &[IpamData], family: &str, req: &mut NetworkRequest) -> Result<()> {
    for d in data {
        if d.pool.is_empty() {
            continue;
        }
        req.subnets
            .push(subnet(&format!("{family} Pool"), &d.pool)?.to_string());
        if !d.gateway.is_empty() {
            req.gateways
                .push(address("--gateway", &d.gateway)?.to_string());
        }
        for (name, a) in &d.aux_addresses {
            req.aux_addresses
                .push(format!("{name}={}", address("--aux-address", a)?));
        }
    }
    Ok(())
}

/// The lanyard network for Docker's `CreateNetwork`, with `ranges` (the
/// `--ip-range`s of its pools, from the pool ids IPAM gave out, if known).
pub fn network_request(c: &CreateNetwork, ranges: &[IpNet]) -> Result<NetworkRequest> {
    let name = network_name(&c.network_id)?;
    let mut req = NetworkRequest {
        name,
        ipv6: flag(&c.options, ENABLE_IPV6),
        internal: flag(&c.options, INTERNAL),
        labels: vec![format!("{ID_LABEL}={}", c.network_id)],
        ..Default::default()
    };
    let mut has_parent = false;
    if let Some(generic) = c.options.get(GENERIC) {
        let Value::Object(generic) = generic else {
            return Err(Error::invalid(
                "--opt",
                generic,
                "options must be KEY=VALUE strings",
            ));
        };
        for (k, v) in generic {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(Error::invalid(
                        "--opt",
                        format!("{k}={other}"),
                        "the value must be a string",
                    ))
                }
            };
            if k == TYPE_OPTION {
                req.driver = Some(v);
                continue;
            }
            has_parent |= k == "parent";
            req.options.push(format!("{k}={v}"));
        }
    }
    if req.driver.is_none() {
        req.driver = Some(if has_parent { "macvlan" } else { "bridge" }.into());
    }
    pools(&c.ipv4, "IPv4Data", &mut req)?;
    pools(&c.ipv6, "IPv6Data", &mut req)?;
    req.ip_ranges = ranges.iter().map(|r| r.to_string()).collect();
    Ok(req)
}

/// The `-p` specs (`[HOSTIP:]HOSTPORT[-END]:PORT/PROTO`) of Docker's port bindings
/// under [`PORTMAP`] in `options`; none if absent.
pub fn port_specs(options: &Map<String, Value>) -> Result<Vec<String>> {
    let Some(raw) = options.get(PORTMAP) else {
        return Ok(vec![]);
    };
    if raw.is_null() {
        return Ok(vec![]);
    }
    let bindings: Vec<PortBinding> = serde_json::from_value(raw.clone())
        .map_err(|e| Error::invalid("-p", raw, format!("is not a list of port bindings: {e}")))?;
    bindings.iter().map(port_spec).collect()
}

fn port_spec(b: &PortBinding) -> Result<String> {
    let proto = match b.proto {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        p => {
            return Err(Error::invalid(
                "-p",
                format!("{}/{p}", b.port),
                "the protocol is not tcp, udp or sctp",
            ))
        }
    };
    let mut spec = String::new();
    if !b.host_ip.is_empty() {
        let ip = address("-p host address", &b.host_ip)?;
        if !ip.is_unspecified() {
            match ip {
                IpAddr::V4(v) => spec.push_str(&format!("{v}:")),
                IpAddr::V6(v) => spec.push_str(&format!("[{v}]:")),
            }
        }
    }
    if b.host_port != 0 {
        spec.push_str(&b.host_port.to_string());
        if b.host_port_end > b.host_port {
            spec.push_str(&format!("-{}", b.host_port_end));
        }
        spec.push(':');
    }
    spec.push_str(&format!("{}/{proto}", b.port));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NID: &str = "3f2a9c0b1d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

    fn create(v: Value) -> CreateNetwork {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_docker_macvlan_create_becomes_a_lanyard_network_request() {
        let c = create(json!({
            "NetworkID": NID,
            "Options": {
                "com.docker.network.enable_ipv6": false,
                "com.docker.network.generic": {"parent": "eth0", "host_access": "true"}
            },
            "IPv4Data": [{"AddressSpace": "LanyardLocal", "Pool": "192.0.2.0/24",
                          "Gateway": "192.0.2.1/24", "AuxAddresses": {"printer": "192.0.2.3/24"}}],
            "IPv6Data": []
        }));
        let r = network_request(&c, &["192.0.2.128/25".parse().unwrap()]).unwrap();
        assert_eq!(r.name, "docker-3f2a9c0b1d4e");
        assert_eq!(r.driver.as_deref(), Some("macvlan"));
        assert_eq!(r.subnets, ["192.0.2.0/24"]);
        assert_eq!(r.gateways, ["192.0.2.1"]);
        assert_eq!(r.ip_ranges, ["192.0.2.128/25"]);
        assert_eq!(r.aux_addresses, ["printer=192.0.2.3"]);
        assert_eq!(r.options, ["host_access=true", "parent=eth0"]);
        assert_eq!(r.labels, [format!("{ID_LABEL}={NID}")]);
        assert!(!r.ipv6 && !r.internal);
    }

    #[test]
    fn type_picks_the_driver_and_bridge_is_the_default() {
        let c = create(json!({"NetworkID": NID, "Options": {
            "com.docker.network.internal": true,
            "com.docker.network.generic": {"type": "ipvlan", "parent": "wlan0"}}}));
        let r = network_request(&c, &[]).unwrap();
        assert_eq!(r.driver.as_deref(), Some("ipvlan"));
        assert!(r.internal);
        assert_eq!(r.options, ["parent=wlan0"]);
        let c = create(json!({"NetworkID": NID}));
        assert_eq!(
            network_request(&c, &[]).unwrap().driver.as_deref(),
            Some("bridge")
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let err = network_name("xyz").unwrap_err().to_string();
        assert!(err.contains("NetworkID"), "{err}");
        let c = create(json!({"NetworkID": NID, "IPv4Data": [{"Pool": "192.0.2.1/24"}]}));
        let err = network_request(&c, &[]).unwrap_err().to_string();
        assert!(err.contains("host bits"), "{err}");
        let c = create(json!({"NetworkID": NID, "Options": {"com.docker.network.generic": "x"}}));
        assert!(network_request(&c, &[])
            .unwrap_err()
            .to_string()
            .contains("--opt"));
        let err = requested_pool("192.0.2.0/24", "198.51.100.0/25", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--ip-range") && err.contains("not inside"),
            "{err}"
        );
        let err = requested_pool("", "198.51.100.0/25", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs the --subnet"), "{err}");
        let err = requested_pool("2001:db8::/64", "", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an IPv4 subnet"), "{err}");
    }

    #[test]
    fn pool_ids_carry_pool_and_range_both_ways() {
        for (p, r) in [
            ("192.0.2.0/24", Some("192.0.2.128/25")),
            ("2001:db8:1::/64", None),
            ("2001:db8:1::/64", Some("2001:db8:1::/80")),
        ] {
            let p: IpNet = p.parse().unwrap();
            let r: Option<IpNet> = r.map(|r| r.parse().unwrap());
            assert_eq!(parse_pool_id(&pool_id(p, r)).unwrap(), (p, r));
        }
        for bad in [
            "",
            "lanyard:",
            "lanyard:x",
            "other:192.0.2.0/24",
            "lanyard:192.0.2.0/24@z",
        ] {
            let err = parse_pool_id(bad).unwrap_err().to_string();
            assert!(err.contains("PoolID"), "{bad}: {err}");
        }
    }

    #[test]
    fn port_bindings_become_publish_specs() {
        let opts = json!({ PORTMAP: [
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
            {"Proto": 17, "Port": 53, "HostIP": "192.0.2.10", "HostPort": 5353, "HostPortEnd": 0},
            {"Proto": 6, "Port": 443, "HostIP": "::", "HostPort": 8443, "HostPortEnd": 8450},
            {"Proto": 132, "Port": 9, "HostIP": "2001:db8::1", "HostPort": 0}
        ]});
        let specs = port_specs(opts.as_object().unwrap()).unwrap();
        assert_eq!(
            specs,
            [
                "8080:80/tcp",
                "192.0.2.10:5353:53/udp",
                "8443-8450:443/tcp",
                "[2001:db8::1]:9/sctp"
            ]
        );
        let none = json!({ PORTMAP: null });
        assert!(port_specs(none.as_object().unwrap()).unwrap().is_empty());
        let bad = json!({ PORTMAP: [{"Proto": 1, "Port": 1}] });
        let err = port_specs(bad.as_object().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not tcp, udp or sctp"), "{err}");
    }

    #[test]
    fn addresses_are_read_with_or_without_length() {
        assert_eq!(
            address("--ip", "192.0.2.5/24").unwrap().to_string(),
            "192.0.2.5"
        );
        assert_eq!(
            address("--ip", "2001:db8::5").unwrap().to_string(),
            "2001:db8::5"
        );
        assert!(address("--ip", "nope/24")
            .unwrap_err()
            .to_string()
            .contains("--ip"));
    }
}
