//! The plugin configuration on stdin, read with serde into [`NetConf`] and checked
//! into what the verbs need ([`Source`], [`Wants`]), with every error naming the CNI field.
//!
//! `"type": "lanyard"` takes either `"network": "NAME"` (a network made with
//! `lanyard network create`) or inline fields in the reference plugins' shape
//! (`driver`, `master`, `mode`, `mtu`, `bridge`, `ipam` with `subnet`/`gateway`/
//! `rangeStart`/`rangeEnd` or host-local's `ranges`), which make the lanyard network
//! (named `network`, else the CNI `name`) on first use and reuse it after.
//! `runtimeConfig` gives `portMappings`, `ips` and `mac` (the capabilities of the
//! same names). Unknown top-level and `ipam` fields are refused (keys starting with
//! `cni.dev/` are the protocol's); unknown `runtimeConfig` keys are ignored, since
//! the runtime fills it from whatever capabilities the administrator declared.

use crate::result::{CniResult, Dns};
use lanyard_core::model::NetworkRequest;
use lanyard_core::name::NetworkName;
use lanyard_core::{Error, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// The plugin configuration as the runtime sends it.
#[derive(Debug, Default, Deserialize)]
pub struct NetConf {
    /// The protocol version in use.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: Option<String>,
    /// The CNI network name.
    #[serde(default)]
    pub name: Option<String>,
    /// The plugin type (`lanyard`, or another plugin delegating to `lanyard-ipam`).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// A lanyard network to use, or to make from the inline fields.
    #[serde(default)]
    pub network: Option<String>,
    /// Inline: `macvlan`, `ipvlan` or `bridge`.
    #[serde(default)]
    pub driver: Option<String>,
    /// Inline: the parent interface (macvlan, ipvlan).
    #[serde(default)]
    pub master: Option<String>,
    /// Inline: macvlan or ipvlan mode.
    #[serde(default)]
    pub mode: Option<String>,
    /// Inline: the MTU of endpoints.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Inline: the bridge's name (bridge).
    #[serde(default)]
    pub bridge: Option<String>,
    /// Addresses: inline ranges, or `lanyard-ipam` with its `network`.
    #[serde(default)]
    pub ipam: Option<IpamConf>,
    /// DNS settings passed on in the result.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// Declared capabilities (the runtime should strip them; accepted if not).
    #[allow(dead_code)] // read to be accepted (and type-checked), not used
    #[serde(default)]
    pub capabilities: Option<BTreeMap<String, bool>>,
    /// The capability arguments.
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<RuntimeConfig>,
    /// Generic arguments (accepted, not used).
    #[allow(dead_code)] // read to be accepted, not used
    #[serde(default)]
    pub args: Option<Value>,
    /// The chain's result so far (ADD), or the ADD's final result (DEL, CHECK).
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// lanyard's state dir (default: `$LANYARD_STATE_DIR`, else /var/lib/lanyard).
    #[serde(rename = "stateDir", default)]
    pub state_dir: Option<PathBuf>,
    /// lanyard's run dir (default: `$LANYARD_RUN_DIR`, else /run/lanyard).
    #[serde(rename = "runDir", default)]
    pub run_dir: Option<PathBuf>,
    /// GC: the attachments still valid.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Everything else: `cni.dev/…` keys pass; any other is refused.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

/// `ipam`: lanyard's own address management.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConf {
    /// `lanyard-ipam` (or absent, in a `lanyard` config).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// `lanyard-ipam`: the lanyard network whose addresses to hand out.
    #[serde(default)]
    pub network: Option<String>,
    /// One subnet (host-local's short form).
    #[serde(default)]
    pub subnet: Option<String>,
    /// Its gateway.
    #[serde(default)]
    pub gateway: Option<String>,
    /// First address handed out.
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<String>,
    /// Last address handed out.
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<String>,
    /// host-local's range sets: one list per family, one range each.
    #[serde(default)]
    pub ranges: Option<Vec<Vec<RangeConf>>>,
    /// Routes: only default routes (lanyard adds one per gateway).
    #[serde(default)]
    pub routes: Option<Vec<RouteConf>>,
    /// `lanyard-ipam`: lanyard's state dir.
    #[serde(rename = "stateDir", default)]
    pub state_dir: Option<PathBuf>,
    /// `lanyard-ipam`: lanyard's run dir.
    #[serde(rename = "runDir", default)]
    pub run_dir: Option<PathBuf>,
}

/// One range of host-local's `ranges`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeConf {
    /// The subnet.
    pub subnet: String,
    /// First address handed out.
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<String>,
    /// Last address handed out.
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<String>,
    /// The gateway.
    #[serde(default)]
    pub gateway: Option<String>,
}

/// One route of `ipam.routes`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConf {
    /// Destination.
    pub dst: String,
    /// Next hop.
    #[serde(default)]
    pub gw: Option<String>,
}

/// `runtimeConfig`: the capability arguments lanyard uses.
#[derive(Debug, Default, Deserialize)]
pub struct RuntimeConfig {
    /// `portMappings`.
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Vec<PortMap>,
    /// `ips`: wanted addresses, CIDR or plain.
    #[serde(default)]
    pub ips: Vec<String>,
    /// `mac`: the wanted MAC.
    #[serde(default)]
    pub mac: Option<String>,
    /// Other capabilities: not lanyard's, ignored.
    #[allow(dead_code)] // read to be ignored
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

/// One port mapping.
#[derive(Debug, Default, Deserialize)]
pub struct PortMap {
    /// Host port.
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    /// Container port.
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Only this host address.
    #[serde(rename = "hostIP", default)]
    pub host_ip: Option<String>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, Deserialize)]
pub struct Attachment {
    /// `CNI_CONTAINERID` of its ADD.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME` of its ADD.
    pub ifname: String,
}

/// The longest configuration read from stdin (a large `prevResult` included).
pub const MAX_STDIN: usize = 1 << 20;

/// Parses the configuration; a type error names the field's path.
pub fn parse(bytes: &[u8]) -> Result<NetConf> {
    if bytes.len() > MAX_STDIN {
        return Err(Error::invalid(
            "stdin",
            format!("{} bytes or more", bytes.len()),
            format!("the configuration is longer than {MAX_STDIN} bytes"),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let conf: NetConf = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // Broken JSON has no field to name: the whole input is at fault.
        let whole = e.inner().is_eof() || e.inner().is_syntax() || path == "." || path == "?";
        let field = if whole { "stdin".to_string() } else { path };
        Error::invalid(&field, "", decode_reason(e.inner()))
    })?;
    Ok(conf)
}

/// serde's message, and for input that ends early, that it was cut short.
fn decode_reason(e: &serde_json::Error) -> String {
    if e.is_eof() {
        format!("the JSON ends early (truncated?): {e}")
    } else {
        format!("cannot decode: {e}")
    }
}

/// `name` as given in `field`, checked as a lanyard network name before any store
/// is opened (an empty or malformed name is the config's fault, code 7).
fn network_field(field: &str, name: String) -> Result<String> {
    NetworkName::parse_for(field, &name)?;
    Ok(name)
}

/// Where the addresses and the link come from, as the configuration says.
#[derive(Debug, Clone)]
pub enum Source {
    /// An existing lanyard network.
    Named(String),
    /// A lanyard network made from inline fields (or reused, if one of that name
    /// exists with the same shape).
    Inline(NetworkRequest),
}

/// What the caller wants of its attachment, from `runtimeConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wants {
    /// `--ip`.
    pub ip: Option<String>,
    /// `--ip6`.
    pub ip6: Option<String>,
    /// `--mac`.
    pub mac: Option<String>,
    /// `-p` specs.
    pub publish: Vec<String>,
}

impl NetConf {
    /// The `lanyard` plugin's check that every top-level key is one it knows (keys
    /// starting with `cni.dev/` are the protocol's). Not for `lanyard-ipam`, whose
    /// top level belongs to the plugin that calls it.
    pub fn refuse_unknown(&self) -> Result<()> {
        match self.rest.keys().find(|k| !k.starts_with("cni.dev/")) {
            // An empty key is named as JSON writes it, so the error still names a field.
            Some(k) => Err(Error::invalid(
                if k.is_empty() { "\"\"" } else { k },
                self.rest[k].to_string(),
                "unknown field for the lanyard plugin (see the README's CNI section)",
            )),
            None => Ok(()),
        }
    }

    /// The CNI network name (`name`), checked.
    pub fn network_name(&self) -> Result<String> {
        let name = self.name.clone().unwrap_or_default();
        valid_cni_name(&name)?;
        Ok(name)
    }

    /// Where `type: lanyard` gets its network.
    pub fn source(&self) -> Result<Source> {
        let inline = self.driver.is_some()
            || self.master.is_some()
            || self.mode.is_some()
            || self.mtu.is_some()
            || self.bridge.is_some()
            || self.ipam.as_ref().is_some_and(IpamConf::has_ranges);
        let ipam_network = self.ipam.as_ref().and_then(|i| i.network.clone());
        if let Some(i) = &self.ipam {
            match i.kind.as_deref() {
                None | Some("lanyard-ipam") => {}
                Some(other) => {
                    return Err(Error::invalid(
                        "ipam.type",
                        other,
                        "the lanyard plugin hands out addresses itself: leave ipam.type out \
                         or make it \"lanyard-ipam\"",
                    ))
                }
            }
            i.check_routes()?;
        }
        if !inline {
            return match (self.network.clone(), ipam_network) {
                (Some(n), Some(m)) if *n != m => Err(Error::invalid(
                    "ipam.network",
                    m,
                    format!("differs from network {n:?}; give one"),
                )),
                (Some(n), _) => Ok(Source::Named(network_field("network", n)?)),
                (None, Some(n)) => Ok(Source::Named(network_field("ipam.network", n)?)),
                (None, None) => Err(Error::invalid(
                    "network",
                    "",
                    "give \"network\": a lanyard network's name, or inline \"driver\", \
                     \"master\" and \"ipam\" ranges to make one",
                )),
            };
        }
        let name = match &self.network {
            Some(n) => network_field("network", n.clone())?,
            None => self.network_name()?,
        };
        let driver = self.driver.clone().unwrap_or_else(|| "macvlan".into());
        let mut options = vec![];
        if let Some(m) = &self.master {
            options.push(format!("parent={m}"));
        }
        if let Some(m) = &self.mode {
            let key = match driver.as_str() {
                "macvlan" => "macvlan_mode",
                "ipvlan" => "ipvlan_mode",
                _ => {
                    return Err(Error::invalid(
                        "mode",
                        m,
                        format!("goes with driver macvlan or ipvlan, not {driver}"),
                    ))
                }
            };
            options.push(format!("{key}={m}"));
        }
        if let Some(m) = self.mtu {
            options.push(format!("mtu={m}"));
        }
        if let Some(b) = &self.bridge {
            if driver != "bridge" {
                return Err(Error::invalid(
                    "bridge",
                    b,
                    format!("goes with driver bridge, not {driver}"),
                ));
            }
            options.push(format!("bridge_name={b}"));
        }
        let mut req = NetworkRequest {
            name,
            driver: Some(driver),
            options,
            ..Default::default()
        };
        if let Some(i) = &self.ipam {
            i.ranges_into(&mut req)?;
        }
        req.ipv6 = req.subnets.iter().any(|s| s.contains(':'));
        Ok(Source::Inline(req))
    }

    /// The caller's wants from `runtimeConfig` (`ips`, `mac`, `portMappings`), else
    /// from `CNI_ARGS` (`IP=ADDR[,ADDR]`, `MAC=…`: what Podman's CNI backend and
    /// host-local's users pass).
    pub fn wants(&self, cni_args: Option<&str>) -> Result<Wants> {
        let mut w = Wants::default();
        let none = RuntimeConfig::default();
        let rc = self.runtime_config.as_ref().unwrap_or(&none);
        let args = parse_cni_args(cni_args.unwrap_or(""))?;
        let (ips, field): (Vec<String>, &str) = if !rc.ips.is_empty() {
            (rc.ips.clone(), "runtimeConfig.ips")
        } else {
            let ips = args
                .get("IP")
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            (ips, "CNI_ARGS")
        };
        for raw in &ips {
            let addr = raw.split_once('/').map(|(a, _)| a).unwrap_or(raw);
            let ip: IpAddr = addr.parse().map_err(|_| {
                Error::invalid(
                    field,
                    raw,
                    "not an address like 192.0.2.10/24 or 2001:db8::10/64",
                )
            })?;
            let slot = if ip.is_ipv4() { &mut w.ip } else { &mut w.ip6 };
            if slot.is_some() {
                return Err(Error::invalid(
                    field,
                    raw,
                    "lanyard gives an attachment one address per family",
                ));
            }
            *slot = Some(ip.to_string());
        }
        w.mac = rc.mac.clone().or_else(|| args.get("MAC").cloned());
        for p in &rc.port_mappings {
            let proto = p.protocol.as_deref().unwrap_or("tcp").to_ascii_lowercase();
            if proto != "tcp" && proto != "udp" {
                return Err(Error::invalid(
                    "runtimeConfig.portMappings.protocol",
                    &proto,
                    "must be tcp or udp",
                ));
            }
            let spec = match p.host_ip.as_deref().filter(|h| !h.is_empty()) {
                None | Some("0.0.0.0") | Some("::") => {
                    format!("{}:{}/{proto}", p.host_port, p.container_port)
                }
                Some(h) if h.contains(':') => {
                    format!("[{h}]:{}:{}/{proto}", p.host_port, p.container_port)
                }
                Some(h) => format!("{h}:{}:{}/{proto}", p.host_port, p.container_port),
            };
            w.publish.push(spec);
        }
        Ok(w)
    }

    /// The `prevResult`, read leniently (any supported version).
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        match &self.prev_result {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| Error::invalid("prevResult", "", format!("cannot decode: {e}"))),
        }
    }
}

impl IpamConf {
    fn has_ranges(&self) -> bool {
        self.subnet.is_some() || self.ranges.is_some()
    }

    /// Only default routes: lanyard routes an endpoint by its gateways.
    fn check_routes(&self) -> Result<()> {
        for r in self.routes.iter().flatten() {
            if r.dst != "0.0.0.0/0" && r.dst != "::/0" {
                return Err(Error::invalid(
                    "ipam.routes.dst",
                    &r.dst,
                    "lanyard adds the default route via each subnet's gateway and no other",
                ));
            }
            if r.gw.is_some() {
                return Err(Error::invalid(
                    "ipam.routes.gw",
                    r.gw.as_deref().unwrap_or_default(),
                    "the default route goes via the subnet's gateway; set ipam gateway instead",
                ));
            }
        }
        Ok(())
    }

    /// The ranges as `network create` input (`--subnet`, `--gateway`, `--ip-range`).
    fn ranges_into(&self, req: &mut NetworkRequest) -> Result<()> {
        let mut all: Vec<(String, RangeConf)> = vec![];
        if let Some(s) = &self.subnet {
            all.push((
                "ipam".into(),
                RangeConf {
                    subnet: s.clone(),
                    range_start: self.range_start.clone(),
                    range_end: self.range_end.clone(),
                    gateway: self.gateway.clone(),
                },
            ));
        } else if let Some(f) = [
            ("ipam.gateway", &self.gateway),
            ("ipam.rangeStart", &self.range_start),
            ("ipam.rangeEnd", &self.range_end),
        ]
        .iter()
        .find(|(_, v)| v.is_some())
        {
            return Err(Error::invalid(
                f.0,
                f.1.as_deref().unwrap_or_default(),
                "goes with ipam.subnet",
            ));
        }
        for (i, set) in self.ranges.iter().flatten().enumerate() {
            match set.as_slice() {
                [one] => all.push((format!("ipam.ranges[{i}][0]"), one.clone())),
                _ => {
                    return Err(Error::invalid(
                        &format!("ipam.ranges[{i}]"),
                        format!("{} ranges", set.len()),
                        "lanyard takes one range per range set",
                    ))
                }
            }
        }
        for (at, r) in all {
            let subnet: ipnet::IpNet = r.subnet.parse().map_err(|_| {
                Error::invalid(
                    &format!("{at}.subnet"),
                    &r.subnet,
                    "not a CIDR like 192.0.2.0/24",
                )
            })?;
            req.subnets.push(r.subnet.clone());
            if let Some(g) = &r.gateway {
                req.gateways.push(g.clone());
            }
            if let Some(range) = ip_range(&at, &subnet, &r)? {
                req.ip_ranges.push(range.to_string());
            }
        }
        Ok(())
    }
}

/// `rangeStart`..`rangeEnd` as the one CIDR block it must be (lanyard's ip-range
/// is a CIDR); none for the whole subnet.
fn ip_range(at: &str, subnet: &ipnet::IpNet, r: &RangeConf) -> Result<Option<ipnet::IpNet>> {
    let parse = |field: &str, v: &Option<String>| -> Result<Option<IpAddr>> {
        v.as_deref()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| Error::invalid(&format!("{at}.{field}"), s, "not an IP address"))
            })
            .transpose()
    };
    let (start, end) = (
        parse("rangeStart", &r.range_start)?,
        parse("rangeEnd", &r.range_end)?,
    );
    if start.is_none() && end.is_none() {
        return Ok(None);
    }
    let start = start.unwrap_or(subnet.network());
    let end = end.unwrap_or(subnet.broadcast());
    let to_u128 = |a: IpAddr| match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    };
    let (s, e) = (to_u128(start), to_u128(end));
    let bits: u32 = if start.is_ipv4() { 32 } else { 128 };
    // A CIDR block is an aligned power-of-two run of addresses.
    let block = |s: u128, e: u128| {
        let size = e.checked_sub(s)?.checked_add(1)?;
        (size.is_power_of_two() && s.is_multiple_of(size)).then_some((s, size))
    };
    // The usable hosts of an IPv4 block (`.129`-`.254` for `.128/25`) count too.
    let hosts = || {
        if !start.is_ipv4() {
            return None;
        }
        block(s.checked_sub(1)?, e.checked_add(1)?)
    };
    let found = if start.is_ipv4() == end.is_ipv4() {
        block(s, e).or_else(hosts)
    } else {
        None
    };
    let Some((s, size)) = found else {
        return Err(Error::invalid(
            &format!("{at}.rangeStart"),
            format!("{start}-{end}"),
            "lanyard hands out a CIDR block: make the range one, e.g. 192.0.2.128-192.0.2.255",
        ));
    };
    let prefix = bits - size.trailing_zeros();
    let net: ipnet::IpNet = match start {
        IpAddr::V4(_) => ipnet::Ipv4Net::new((s as u32).into(), prefix as u8)
            .map(Into::into)
            .map_err(|e| Error::invalid(&format!("{at}.rangeStart"), start, e.to_string()))?,
        IpAddr::V6(_) => ipnet::Ipv6Net::new(s.into(), prefix as u8)
            .map(Into::into)
            .map_err(|e| Error::invalid(&format!("{at}.rangeStart"), start, e.to_string()))?,
    };
    if !subnet.contains(&net) {
        return Err(Error::invalid(
            &format!("{at}.rangeStart"),
            format!("{start}-{end}"),
            format!("is not inside subnet {subnet}"),
        ));
    }
    Ok(Some(net))
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
fn parse_cni_args(raw: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => {
                return Err(Error::invalid(
                    "CNI_ARGS",
                    raw,
                    format!("{pair:?} is not KEY=VALUE"),
                ))
            }
        }
    }
    Ok(out)
}

/// A CNI network name: starts alphanumeric, then alphanumerics, `_`, `.`, `-`.
pub fn valid_cni_name(name: &str) -> Result<()> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 253;
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            name,
            "a CNI network name starts with a letter or digit, then letters, digits, '_', '.' \
             or '-'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(j: serde_json::Value) -> Result<NetConf> {
        parse(j.to_string().as_bytes())
    }

    fn field(e: Error) -> String {
        match e {
            Error::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_empty_key_is_refused_by_a_name_the_user_can_read() {
        // Found by the cni_config fuzz target: the field was "", naming nothing.
        let c = conf(serde_json::json!({
            "cniVersion": "1.0.0", "name": "lan", "type": "lanyard", "network": "lan", "": 1
        }))
        .unwrap();
        assert_eq!(field(c.refuse_unknown().unwrap_err()), "\"\"");
    }

    #[test]
    fn an_empty_or_malformed_network_name_is_refused_before_the_store() {
        // Found by the cni_config fuzz target: "network": "" was taken as a name.
        for (j, want) in [
            (
                serde_json::json!({"name": "lan", "type": "lanyard", "network": ""}),
                "network",
            ),
            (
                serde_json::json!({"name": "lan", "type": "lanyard", "ipam": {"network": "a/b"}}),
                "ipam.network",
            ),
            (
                serde_json::json!({"name": "lan", "type": "lanyard", "network": "",
                                   "master": "eth0", "ipam": {"subnet": "192.0.2.0/24"}}),
                "network",
            ),
        ] {
            assert_eq!(field(conf(j).unwrap().source().unwrap_err()), want);
        }
    }

    #[test]
    fn a_named_network_is_used_as_it_is() {
        let c = conf(serde_json::json!({
            "cniVersion": "1.0.0", "name": "lan", "type": "lanyard", "network": "lan0"
        }))
        .unwrap();
        assert!(matches!(c.source().unwrap(), Source::Named(n) if n == "lan0"));
        let c = conf(serde_json::json!({
            "cniVersion": "1.0.0", "name": "lan", "type": "lanyard",
            "ipam": {"type": "lanyard-ipam", "network": "lan0"}
        }))
        .unwrap();
        assert!(matches!(c.source().unwrap(), Source::Named(n) if n == "lan0"));
    }

    #[test]
    fn inline_fields_become_a_network_request() {
        let c = conf(serde_json::json!({
            "cniVersion": "1.0.0", "name": "lan", "type": "lanyard",
            "driver": "macvlan", "master": "eth0", "mode": "bridge", "mtu": 1400,
            "ipam": {"subnet": "192.0.2.0/24", "gateway": "192.0.2.1",
                     "rangeStart": "192.0.2.129", "rangeEnd": "192.0.2.254"}
        }))
        .unwrap();
        let Source::Inline(req) = c.source().unwrap() else {
            panic!("inline")
        };
        assert_eq!(req.name, "lan");
        assert_eq!(req.driver.as_deref(), Some("macvlan"));
        assert_eq!(
            req.options,
            ["parent=eth0", "macvlan_mode=bridge", "mtu=1400"]
        );
        assert_eq!(req.subnets, ["192.0.2.0/24"]);
        assert_eq!(req.gateways, ["192.0.2.1"]);
        assert_eq!(req.ip_ranges, ["192.0.2.128/25"]);
        assert!(!req.ipv6);
        // host-local's range sets, one per family.
        let c = conf(serde_json::json!({
            "cniVersion": "1.0.0", "name": "lan", "type": "lanyard", "master": "eth0",
            "ipam": {"ranges": [[{"subnet": "192.0.2.0/24"}],
                                [{"subnet": "2001:db8:1::/64", "gateway": "2001:db8:1::1"}]]}
        }))
        .unwrap();
        let Source::Inline(req) = c.source().unwrap() else {
            panic!("inline")
        };
        assert_eq!(req.subnets, ["192.0.2.0/24", "2001:db8:1::/64"]);
        assert!(req.ipv6);
        req.validate("0".repeat(64), 0).unwrap();
    }

    #[test]
    fn runtime_config_becomes_wants_and_unknown_capabilities_are_ignored() {
        let c = conf(serde_json::json!({
            "cniVersion": "1.0.0", "name": "lan", "type": "lanyard", "network": "lan",
            "runtimeConfig": {
                "ips": ["192.0.2.10/24", "2001:db8:1::10"],
                "mac": "02:00:00:00:00:01",
                "portMappings": [
                    {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                    {"hostPort": 53, "containerPort": 53, "protocol": "UDP", "hostIP": "192.0.2.2"},
                    {"hostPort": 443, "containerPort": 443, "hostIP": "2001:db8:1::2"}
                ],
                "bandwidth": {"ingressRate": 1}
            }
        }))
        .unwrap();
        let w = c.wants(Some("IgnoreUnknown=1;IP=192.0.2.99")).unwrap();
        assert_eq!(w.ip.as_deref(), Some("192.0.2.10"));
        assert_eq!(w.ip6.as_deref(), Some("2001:db8:1::10"));
        assert_eq!(w.mac.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(
            w.publish,
            [
                "8080:80/tcp",
                "192.0.2.2:53:53/udp",
                "[2001:db8:1::2]:443:443/tcp"
            ]
        );
    }

    #[test]
    fn bad_input_is_an_error_naming_the_field() {
        let cases: Vec<(&str, &str)> = vec![
            (
                r#"{"cniVersion":"1.0.0","name":"a","type":"lanyard","netwrok":"x"}"#,
                "netwrok",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","type":"lanyard","mtu":"big"}"#,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","type":"lanyard","mtu":-1}"#,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","ipam":{"subnet":1}}"#,
                "ipam.subnet",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","ipam":{"dataDir":"/x"}}"#,
                "ipam",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","runtimeConfig":{"portMappings":[{"hostPort":70000,"containerPort":1}]}}"#,
                "runtimeConfig.portMappings[0].hostPort",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","cni.dev/valid-attachments":[{"ifname":"eth0"}]}"#,
                "cni.dev/valid-attachments[0]",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","type":"lanyard""#,
                "stdin",
            ),
            (r#""#, "stdin"),
            (r#"[1,2]"#, "stdin"),
            ("\u{0}\u{ff}", "stdin"),
        ];
        for (input, want) in cases {
            let got = field(
                parse(input.as_bytes())
                    .and_then(|c| c.refuse_unknown())
                    .unwrap_err(),
            );
            assert!(
                got.starts_with(want),
                "{input}: field {got:?}, want {want:?}"
            );
        }
        let huge = vec![b' '; MAX_STDIN + 1];
        assert_eq!(field(parse(&huge).map(|_| ()).unwrap_err()), "stdin");
        let semantic: Vec<(serde_json::Value, &str)> = vec![
            (serde_json::json!({"name": "a"}), "network"),
            (
                serde_json::json!({"name": "a", "ipam": {"type": "host-local", "subnet": "192.0.2.0/24"}}),
                "ipam.type",
            ),
            (
                serde_json::json!({"name": "a", "driver": "bridge", "mode": "l2"}),
                "mode",
            ),
            (
                serde_json::json!({"name": "a", "master": "eth0", "ipam": {"subnet": "x"}}),
                "ipam.subnet",
            ),
            (
                serde_json::json!({"name": "a", "master": "eth0", "ipam": {"subnet": "192.0.2.0/24", "rangeStart": "192.0.2.5", "rangeEnd": "192.0.2.9"}}),
                "ipam.rangeStart",
            ),
            (
                serde_json::json!({"name": "a", "master": "eth0", "ipam": {"subnet": "192.0.2.0/24", "rangeStart": "198.51.100.0"}}),
                "ipam.rangeStart",
            ),
            (
                serde_json::json!({"name": "a", "master": "eth0", "ipam": {"gateway": "192.0.2.1"}}),
                "ipam.gateway",
            ),
            (
                serde_json::json!({"name": "a", "network": "n", "ipam": {"routes": [{"dst": "10.0.0.0/8"}]}}),
                "ipam.routes.dst",
            ),
            (
                serde_json::json!({"name": "a", "network": "n", "ipam": {"network": "m"}}),
                "ipam.network",
            ),
            (serde_json::json!({"name": "-a", "master": "eth0"}), "name"),
        ];
        for (j, want) in semantic {
            let c = conf(j.clone()).unwrap();
            assert_eq!(field(c.source().map(|_| ()).unwrap_err()), want, "{j}");
        }
        let c = conf(serde_json::json!({"name": "a",
            "runtimeConfig": {"ips": ["192.0.2.1", "192.0.2.2"]}}))
        .unwrap();
        assert_eq!(field(c.wants(None).unwrap_err()), "runtimeConfig.ips");
        let c = conf(serde_json::json!({"name": "a",
            "runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 1, "protocol": "sctp"}]}}))
        .unwrap();
        assert_eq!(
            field(c.wants(None).unwrap_err()),
            "runtimeConfig.portMappings.protocol"
        );
    }

    #[test]
    fn cni_args_give_the_address_and_mac_when_runtime_config_does_not() {
        let c = conf(serde_json::json!({"name": "a", "network": "n"})).unwrap();
        let w = c
            .wants(Some(
                "IgnoreUnknown=1;K8S_POD_NAME=c2;IP=192.0.2.128,2001:db8::8;MAC=02:00:00:00:00:02",
            ))
            .unwrap();
        assert_eq!(w.ip.as_deref(), Some("192.0.2.128"));
        assert_eq!(w.ip6.as_deref(), Some("2001:db8::8"));
        assert_eq!(w.mac.as_deref(), Some("02:00:00:00:00:02"));
        assert_eq!(field(c.wants(Some("IP")).unwrap_err()), "CNI_ARGS");
        assert_eq!(field(c.wants(Some("IP=x")).unwrap_err()), "CNI_ARGS");
    }

    #[test]
    fn protocol_keys_and_gc_attachments_are_read() {
        let c = conf(serde_json::json!({
            "cniVersion": "1.1.0", "name": "lan", "type": "lanyard", "network": "lan",
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
            "cni.dev/attachments": []
        }))
        .unwrap();
        let v = c.valid_attachments.unwrap();
        assert_eq!(v[0].container_id, "c1");
    }

    #[test]
    fn no_input_of_bytes_panics_the_parser() {
        // A bounded, deterministic sweep of mutations of a valid config.
        let base = br#"{"cniVersion":"1.0.0","name":"lan","type":"lanyard","driver":"macvlan","master":"eth0","ipam":{"ranges":[[{"subnet":"192.0.2.0/24","rangeStart":"192.0.2.128","rangeEnd":"192.0.2.255"}]]},"runtimeConfig":{"ips":["192.0.2.9/24"],"portMappings":[{"hostPort":1,"containerPort":2}]}}"#;
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..3000 {
            let mut b = base.to_vec();
            for _ in 0..(seed % 4 + 1) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed as usize) % b.len();
                match seed % 3 {
                    0 => b[at] = (seed >> 8) as u8,
                    1 => b.truncate(at),
                    _ => b.insert(at, b"{}[]\":,0-"[(seed >> 16) as usize % 9]),
                }
                if b.is_empty() {
                    break;
                }
            }
            if let Ok(c) = parse(&b) {
                let _ = c.source();
                let _ = c.wants(Some("IP=1;x"));
                let _ = c.prev_result();
                let _ = c.network_name();
            }
        }
    }
}
