//! `network create` as any front end hands it to the engine: the input's lines become
//! the request's fields (`name`, `driver`, then `s=`, `g=`, `r=`, `a=`, `o=`, `l=`,
//! `i=` lines and `internal`/`ipv6` flags). `validate` must answer without a panic,
//! and a network it accepts must hold together: each gateway and ip-range inside its
//! subnet, no subnet twice.
#![no_main]

use lanyard_core::netreq::NetworkRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let mut req = NetworkRequest {
        name: lines.next().unwrap_or_default().to_string(),
        driver: lines.next().filter(|d| !d.is_empty()).map(str::to_string),
        ..NetworkRequest::default()
    };
    for line in lines {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let v = value.to_string();
        match key {
            "s" => req.subnets.push(v),
            "g" => req.gateways.push(v),
            "r" => req.ip_ranges.push(v),
            "a" => req.aux_addresses.push(v),
            "o" => req.options.push(v),
            "l" => req.labels.push(v),
            "i" => req.ipam_driver = Some(v),
            "internal" => req.internal = true,
            "ipv6" => req.ipv6 = true,
            _ => {}
        }
    }
    let Ok(net) = req.validate("0123456789ab".into(), 0) else {
        return;
    };
    for (i, sc) in net.subnets.iter().enumerate() {
        if let Some(g) = sc.gateway {
            assert!(sc.subnet.contains(&g), "gateway {g} outside {}", sc.subnet);
        }
        if let Some(r) = sc.ip_range {
            assert!(sc.subnet.contains(&r), "ip-range {r} outside {}", sc.subnet);
        }
        for (_, a) in &sc.aux_addresses {
            assert!(
                sc.subnet.contains(a),
                "aux address {a} outside {}",
                sc.subnet
            );
        }
        assert!(
            net.subnets[..i].iter().all(|o| o.subnet != sc.subnet),
            "subnet {} twice",
            sc.subnet
        );
    }
});
