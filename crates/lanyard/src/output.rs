//! How the CLI prints things: aligned tables and detail views for people, JSON
//! (`--json`) for programs.

use lanyard_core::model::{Endpoint, Network};
use lanyard_core::{Error, Result};
use lanyard_engine::NetworkSummary;
use serde::Serialize;

/// `println!` for the CLI's results: a reader that went away (`lanyard ls | head`) ends
/// the call quietly with status 1 instead of a panic (lanyard ignores SIGPIPE, so a
/// write to a closed pipe is an error, not death); any other write error is said on
/// stderr, status 1.
macro_rules! out {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use out;

/// Writes one line to stdout ([`out!`]).
pub fn line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|()| o.write_all(b"\n")) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = writeln!(std::io::stderr(), "lanyard: writing the output: {e}");
        }
        std::process::exit(1);
    }
}

/// Prints `v` as pretty JSON.
pub fn json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
    out!("{s}");
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
        out!("{}", s.join("   ").trim_end());
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
    out!("Name:        {}", n.name);
    out!("Id:          {}", n.id);
    out!("Driver:      {}", n.driver);
    if let Some(p) = &n.parent {
        out!("Parent:      {p}");
    }
    if let Some(m) = n.macvlan_mode {
        out!("Mode:        macvlan {}", format!("{m:?}").to_lowercase());
    }
    if let Some(m) = n.ipvlan_mode {
        out!("Mode:        ipvlan {}", format!("{m:?}").to_lowercase());
    }
    if let Some(b) = &n.bridge {
        out!("Bridge:      {b}");
    }
    for sc in &n.subnets {
        let mut l = format!("Subnet:      {}", sc.subnet);
        if let Some(g) = sc.gateway {
            l.push_str(&format!("  gateway {g}"));
        }
        if let Some(r) = sc.ip_range {
            l.push_str(&format!("  ip-range {r}"));
        }
        for (k, a) in &sc.aux_addresses {
            l.push_str(&format!("  aux {k}={a}"));
        }
        out!("{l}");
    }
    out!("Internal:    {}", n.internal);
    out!("IPv6:        {}", n.ipv6);
    out!("Host access: {}", if n.host_access { "on" } else { "off" });
    if let Some(m) = n.mtu {
        out!("MTU:         {m}");
    }
    if let Some(s) = n.snat_source {
        out!("SNAT source: {s}");
    }
    for (k, v) in &n.labels {
        out!("Label:       {k}={v}");
    }
    out!("Endpoints:   {}", s.endpoints);
    out!();
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
    out!("Id:        {}", e.id);
    if let Some(n) = &e.name {
        out!("Name:      {n}");
    }
    out!("Network:   {}", e.network);
    if e.in_netns() {
        out!("Netns:     {}", e.netns.display());
        out!("Interface: {}", e.ifname);
    }
    if let Some(h) = &e.host_link {
        out!("Host link: {h} (plugged host-side)");
    }
    if let Some(o) = &e.owner {
        out!("Owner:     {o}");
    }
    if let Some(n) = &e.node {
        out!("Node:      {n}");
    }
    if let Some(h) = &e.host_ifname {
        out!("Host side: {h}");
    }
    if let Some(m) = e.mac {
        out!("MAC:       {m}");
    }
    for a in &e.addresses {
        out!("Address:   {a}");
    }
    for g in &e.gateways {
        out!("Gateway:   {g}");
    }
    for p in &e.ports {
        out!("Publish:   {p}");
    }
    out!("State:     {}", format!("{:?}", e.state).to_lowercase());
}
