//! Firewall drift: what lanyard's nftables tables must look like, and the
//! check-then-rebuild step that puts them back when someone else changed them (a
//! `nft flush ruleset`, a firewall reload, `nft delete element …`).
//!
//! The check is cheap and independent of the number of published ports: both tables
//! must exist with every chain (holding the right number of rules) and every named
//! set of [`firewall::ruleset`]; set elements are never read. What reads the kernel's
//! tables is the caller's ([`TableReader`]: `lanyard daemon` reads them over
//! nfnetlink), so this module stays pure and unit-tested. A rebuild is the whole
//! ruleset from the store in one transaction ([`Engine::rebuild_firewall`]); it runs
//! again if the store changed meanwhile (an attach or detach at that moment).

use crate::Engine;
use lanyard_core::firewall::{self, FirewallInput, FAMILIES, TABLE};
use lanyard_core::kernel::Kernel;
use lanyard_core::model::Driver;
use lanyard_core::store::Store;
use lanyard_core::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

/// Rebuilds in a row while the store keeps changing under them.
pub const REBUILD_TRIES: usize = 3;

/// What a table holds, without its set elements: chain name → number of rules, and
/// the names of its named sets and maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// Chain name → rules in it.
    pub chains: BTreeMap<String, usize>,
    /// Named sets and maps.
    pub sets: BTreeSet<String>,
}

impl Shape {
    /// What `self` (expected) has that `observed` lacks or has otherwise, as short
    /// phrases (`chain forward: 3 rules, want 5`, `set dnat4 missing`); empty when they
    /// are the same.
    pub fn differences(&self, observed: &Shape) -> Vec<String> {
        let mut out = Vec::new();
        for (chain, want) in &self.chains {
            match observed.chains.get(chain) {
                None => out.push(format!("chain {chain} missing")),
                Some(n) if n != want => out.push(format!("chain {chain}: {n} rules, want {want}")),
                Some(_) => {}
            }
        }
        for chain in observed.chains.keys() {
            if !self.chains.contains_key(chain) {
                out.push(format!("chain {chain} is not lanyard's"));
            }
        }
        for set in self.sets.difference(&observed.sets) {
            out.push(format!("set {set} missing"));
        }
        for set in observed.sets.difference(&self.sets) {
            out.push(format!("set {set} is not lanyard's"));
        }
        out
    }
}

/// One of lanyard's tables as the ruleset defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// nft family name (`inet`, `bridge`).
    pub family: &'static str,
    /// Its chains and sets.
    pub shape: Shape,
}

/// The chains (with rule counts) and named sets of each of lanyard's tables, read
/// from the ruleset the engine renders, so the two never disagree.
pub fn expected_tables() -> Vec<Expected> {
    let script = firewall::ruleset(&FirewallInput::default());
    let mut out: Vec<Expected> = Vec::new();
    let mut chain: Option<String> = None;
    for line in script.lines().map(str::trim) {
        if let Some(fam) = FAMILIES
            .iter()
            .find(|f| line == format!("table {f} {TABLE} {{"))
        {
            out.push(Expected {
                family: fam,
                shape: Shape::default(),
            });
            chain = None;
            continue;
        }
        let Some(table) = out.last_mut() else {
            continue;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["set" | "map", name, "{", ..] => {
                table.shape.sets.insert(name.to_string());
            }
            ["chain", name, "{"] => {
                table.shape.chains.insert(name.to_string(), 0);
                chain = Some(name.to_string());
            }
            ["}"] => chain = None,
            [] | ["type", ..] => {}
            _ => {
                if let Some(c) = &chain {
                    *table.shape.chains.entry(c.clone()).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

/// Reads one of the kernel's nftables tables: `Ok(None)` when it does not exist.
pub trait TableReader {
    /// The shape of table `name` of `family` (an nft family name).
    fn table(&mut self, family: &str, name: &str) -> Result<Option<Shape>>;
}

/// What a drift check found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// No bridge network in the store: nothing to guard.
    Idle,
    /// Both tables complete.
    Fine,
    /// Rebuilt from the store; what was wrong.
    Rebuilt(Vec<String>),
}

/// What is wrong with the kernel's tables compared with `expected`, as phrases naming
/// the table (`table inet lanyard missing`, `table bridge lanyard: set ports missing`).
pub fn compare(expected: &[Expected], reader: &mut dyn TableReader) -> Result<Vec<String>> {
    let mut wrong = vec![];
    for t in expected {
        let table = format!("table {} {TABLE}", t.family);
        match reader.table(t.family, TABLE)? {
            None => wrong.push(format!("{table} missing")),
            Some(seen) => wrong.extend(
                t.shape
                    .differences(&seen)
                    .into_iter()
                    .map(|d| format!("{table}: {d}")),
            ),
        }
    }
    Ok(wrong)
}

impl<S: Store, K: Kernel> Engine<S, K> {
    /// Checks lanyard's tables against `expected`, reading them with `reader`, and
    /// rebuilds them from the store when anything is missing or foreign, or when
    /// `force` names a reason to rebuild anyway (set elements someone else deleted:
    /// the shape cannot show them). Rebuilds again, up to [`REBUILD_TRIES`] times in
    /// all, while the store changed under the rebuild.
    pub fn repair_firewall_drift(
        &mut self,
        expected: &[Expected],
        reader: &mut dyn TableReader,
        force: Option<&str>,
    ) -> Result<Drift> {
        let nets = self.store.read(&mut |tx| tx.networks())?;
        if !nets.iter().any(|n| n.driver == Driver::Bridge) {
            return Ok(Drift::Idle);
        }
        let mut wrong = compare(expected, reader)?;
        if let Some(why) = force {
            wrong.push(why.to_string());
        }
        if wrong.is_empty() {
            return Ok(Drift::Fine);
        }
        for _ in 0..REBUILD_TRIES {
            let before = self.store_fingerprint()?;
            self.rebuild_firewall()?;
            if self.store_fingerprint()? == before {
                break;
            }
        }
        Ok(Drift::Rebuilt(wrong))
    }

    /// A serialisation of the store's networks and endpoints, to notice that it changed.
    fn store_fingerprint(&self) -> Result<String> {
        let (nets, eps) = self
            .store
            .read(&mut |tx| Ok((tx.networks()?, tx.endpoints()?)))?;
        serde_json::to_string(&(nets, eps)).map_err(|e| Error::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_tables_follow_the_ruleset() {
        let t = expected_tables();
        let fams: Vec<&str> = t.iter().map(|e| e.family).collect();
        assert_eq!(fams, ["inet", "bridge"]);
        let inet = &t[0].shape;
        assert_eq!(inet.chains.get("prerouting"), Some(&1));
        assert_eq!(inet.chains.get("published"), Some(&4));
        assert_eq!(inet.chains.get("postrouting"), Some(&7));
        assert_eq!(inet.chains.get("forward"), Some(&8));
        assert!(inet.sets.contains("dnat4_any") && inet.sets.contains("bridges"));
        assert_eq!(inet.sets.len(), 15);
        let bridge = &t[1].shape;
        assert_eq!(bridge.chains.get("prerouting"), Some(&13));
        assert_eq!(bridge.sets.len(), 7);
    }

    #[test]
    fn differences_name_what_is_missing_or_foreign() {
        let want = Shape {
            chains: [("forward".to_string(), 5), ("published".to_string(), 4)].into(),
            sets: ["dnat4".to_string(), "ports".to_string()].into(),
        };
        assert!(want.differences(&want).is_empty());
        let seen = Shape {
            chains: [("forward".to_string(), 0), ("extra".to_string(), 1)].into(),
            sets: ["dnat4".to_string()].into(),
        };
        assert_eq!(
            want.differences(&seen),
            [
                "chain forward: 0 rules, want 5",
                "chain published missing",
                "chain extra is not lanyard's",
                "set ports missing"
            ]
        );
    }

    /// Answers from a fixed map of tables.
    struct Fixed(BTreeMap<String, Shape>);

    impl TableReader for Fixed {
        fn table(&mut self, family: &str, name: &str) -> Result<Option<Shape>> {
            Ok(self.0.get(&format!("{family} {name}")).cloned())
        }
    }

    #[test]
    fn compare_names_the_missing_table_and_a_changed_one() {
        let want = expected_tables();
        let mut inet = want[0].shape.clone();
        inet.sets.remove("bridges");
        let mut r = Fixed([("inet lanyard".to_string(), inet)].into());
        assert_eq!(
            compare(&want, &mut r).unwrap(),
            [
                "table inet lanyard: set bridges missing",
                "table bridge lanyard missing"
            ]
        );
        let mut all = Fixed(
            want.iter()
                .map(|e| (format!("{} lanyard", e.family), e.shape.clone()))
                .collect(),
        );
        assert!(compare(&want, &mut all).unwrap().is_empty());
    }
}
