//! `lanyard-ipam`: lanyard's address management for other CNI plugins
//! (`"ipam": {"type": "lanyard-ipam", "network": "NAME"}` under, say, the reference
//! `macvlan` or `bridge` plugin). ADD is the engine's `allocate` keyed by the CNI
//! owner (addresses held, no link made: the calling plugin makes its own), DEL is
//! `release`, CHECK finds the allocation, GC is `gc_owned`. The addresses come from
//! the lanyard network `ipam.network` names, so lanyard's attachments and the other
//! plugin's never get the same one.

use super::conf::{NetConf, Source};
use super::error::{plain, to_cni, UNKNOWN_CONTAINER};
use super::plugin::{gc, network_for, open, owner_of, retrying};
use super::result::{self, CniError};
use super::{dirs, Invocation, Verb};
use lanyard_core::owner::{AllocateRequest, EndpointRef};
use lanyard_core::{Error, Result};

/// Runs `verb` as the IPAM plugin.
pub fn run(
    verb: Verb,
    inv: &Invocation,
    conf: &NetConf,
    version: &str,
) -> std::result::Result<Option<String>, CniError> {
    let fail = |e: Error| to_cni(&e, version);
    let name = conf.network_name().map_err(fail)?;
    let ipam = conf.ipam.as_ref();
    let (state, run_dir) = dirs(
        inv,
        ipam.and_then(|i| i.state_dir.as_ref())
            .or(conf.state_dir.as_ref()),
        ipam.and_then(|i| i.run_dir.as_ref())
            .or(conf.run_dir.as_ref()),
    );
    match verb {
        Verb::Add => {
            let owner = owner_of(inv, &name)?;
            let network = lanyard_network(conf).map_err(fail)?;
            let wants = conf.wants(inv.args.as_deref()).map_err(fail)?;
            let dns = conf.dns.clone().unwrap_or_default();
            let mut engine = open(&state, &run_dir).map_err(fail)?;
            let net = network_for(&mut engine, &Source::Named(network)).map_err(fail)?;
            let req = AllocateRequest {
                network: net.id.clone(),
                owner: Some(owner),
                ip: wants.ip,
                ip6: wants.ip6,
                mac: wants.mac,
                ..Default::default()
            };
            let ep = retrying(|| engine.allocate(&req)).map_err(fail)?;
            let r = result::of_allocation(&ep, &dns).in_version(version);
            Ok(Some(serde_json::to_string(&r).unwrap_or_default()))
        }
        Verb::Del => {
            let owner = owner_of(inv, &name)?;
            let mut engine = open(&state, &run_dir).map_err(fail)?;
            retrying(|| engine.release(&EndpointRef::Owner(owner.clone()))).map_err(fail)?;
            Ok(None)
        }
        Verb::Check => {
            let owner = owner_of(inv, &name)?;
            let engine = open(&state, &run_dir).map_err(fail)?;
            match engine
                .find_endpoint(&EndpointRef::Owner(owner.clone()))
                .map_err(fail)?
            {
                Some(_) => Ok(None),
                None => Err(plain(
                    UNKNOWN_CONTAINER,
                    "no such allocation",
                    format!("lanyard-ipam holds no addresses for {owner}"),
                )),
            }
        }
        Verb::Status => {
            let network = lanyard_network(conf).map_err(fail)?;
            let engine = open(&state, &run_dir).map_err(fail)?;
            engine.network(&network).map_err(|e| {
                let mut c = to_cni(&e, version);
                c.code = super::error::NOT_AVAILABLE;
                c
            })?;
            Ok(None)
        }
        Verb::Gc => {
            gc(&state, &run_dir, &name, conf).map_err(fail)?;
            Ok(None)
        }
        Verb::Version => unreachable!("answered before the config is read"),
    }
}

/// The lanyard network `ipam.network` names.
fn lanyard_network(conf: &NetConf) -> Result<String> {
    conf.ipam
        .as_ref()
        .and_then(|i| i.network.clone())
        .ok_or_else(|| {
            Error::invalid(
                "ipam.network",
                "",
                "lanyard-ipam hands out the addresses of a lanyard network: name it",
            )
        })
}
