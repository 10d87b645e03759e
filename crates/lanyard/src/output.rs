//! How the CLI prints things: aligned tables and detail views for people, JSON
//! (`--json`) for programs.

use lanyard_core::model::{Endpoint, Network};
use lanyard_core::{Error, Result};
use lanyard_engine::NetworkSummary;
use serde::Serialize;

/// Prints `v` as pretty JSON.
pub fn json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// Prints rows with columns padded to the widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("   ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    rows.into_iter().for_each(line);
}

fn subnets(n: &Network) -> String {
    n.subnets
        .iter()
        .map(|s| s.subnet.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `network ls`.
pub fn network_table(nets: &[NetworkSummary]) {
    table(
        &[
            "NETWORK ID",
            "NAME",
            "DRIVER",
            "PARENT",
            "SUBNETS",
            "ENDPOINTS",
        ],
        nets.iter()
            .map(|s| {
                let n = &s.network;
                vec![
                    n.short_id().to_string(),
                    n.name.to_string(),
                    n.driver.to_string(),
                    n.lower_link()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    subnets(n),
                    s.endpoints.to_string(),
                ]
            })
            .collect(),
    );
}

/// `network inspect` without `--json`.
pub fn network_detail(s: &NetworkSummary) {
    let n = &s.network;
    println!("Name:        {}", n.name);
    println!("Id:          {}", n.id);
    println!("Driver:      {}", n.driver);
    if let Some(p) = &n.parent {
        println!("Parent:      {p}");
    }
    if let Some(m) = n.macvlan_mode {
        println!("Mode:        macvlan {}", format!("{m:?}").to_lowercase());
    }
    if let Some(m) = n.ipvlan_mode {
        println!("Mode:        ipvlan {}", format!("{m:?}").to_lowercase());
    }
    if let Some(b) = &n.bridge {
        println!("Bridge:      {b}");
    }
    for sc in &n.subnets {
        print!("Subnet:      {}", sc.subnet);
        if let Some(g) = sc.gateway {
            print!("  gateway {g}");
        }
        if let Some(r) = sc.ip_range {
            print!("  ip-range {r}");
        }
        for (k, a) in &sc.aux_addresses {
            print!("  aux {k}={a}");
        }
        println!();
    }
    println!("Internal:    {}", n.internal);
    println!("IPv6:        {}", n.ipv6);
    println!("Host access: {}", if n.host_access { "on" } else { "off" });
    if let Some(m) = n.mtu {
        println!("MTU:         {m}");
    }
    if let Some(s) = n.snat_source {
        println!("SNAT source: {s}");
    }
    for (k, v) in &n.labels {
        println!("Label:       {k}={v}");
    }
    println!("Endpoints:   {}", s.endpoints);
    println!();
}

/// `endpoint ls`.
pub fn endpoint_table(eps: &[Endpoint]) {
    table(
        &[
            "ENDPOINT ID",
            "NAME",
            "NETWORK",
            "IFNAME",
            "ADDRESSES",
            "NETNS",
            "STATE",
        ],
        eps.iter()
            .map(|e| {
                vec![
                    e.short_id().to_string(),
                    e.name
                        .as_ref()
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "-".into()),
                    e.network.to_string(),
                    match (&e.host_link, e.in_netns()) {
                        (Some(h), _) => h.to_string(),
                        (None, true) => e.ifname.to_string(),
                        (None, false) => "-".into(),
                    },
                    e.addresses
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    if e.in_netns() {
                        e.netns.display().to_string()
                    } else {
                        "-".into()
                    },
                    format!("{:?}", e.state).to_lowercase(),
                ]
            })
            .collect(),
    );
}

/// `endpoint inspect` without `--json`.
pub fn endpoint_detail(e: &Endpoint) {
    println!("Id:        {}", e.id);
    if let Some(n) = &e.name {
        println!("Name:      {n}");
    }
    println!("Network:   {}", e.network);
    if e.in_netns() {
        println!("Netns:     {}", e.netns.display());
        println!("Interface: {}", e.ifname);
    }
    if let Some(h) = &e.host_link {
        println!("Host link: {h} (plugged host-side)");
    }
    if let Some(o) = &e.owner {
        println!("Owner:     {o}");
    }
    if let Some(n) = &e.node {
        println!("Node:      {n}");
    }
    if let Some(h) = &e.host_ifname {
        println!("Host side: {h}");
    }
    if let Some(m) = e.mac {
        println!("MAC:       {m}");
    }
    for a in &e.addresses {
        println!("Address:   {a}");
    }
    for g in &e.gateways {
        println!("Gateway:   {g}");
    }
    for p in &e.ports {
        println!("Publish:   {p}");
    }
    println!("State:     {}", format!("{:?}", e.state).to_lowercase());
}
