//! The nftables watch task: reads [`NftWatch`] announcements on the event loop
//! ([`AsyncFd`]) and tells the checker when lanyard's tables may have lost something.
//!
//! A deletion in `inet lanyard` or `bridge lanyard` (a flush, a firewall reload,
//! `nft delete …`), or lost events (queue overflow), asks for a check. A set
//! *element* deleted there by a process that is not lanyard (`nft delete element …`)
//! asks for a rebuild even when the tables' shape is right, since the shape check never
//! reads elements: the rebuild puts the store's elements back (lanyard's own detaches
//! delete elements too, and are told apart by the process the kernel names for the
//! generation). Changes to other tables (Docker's, firewalld's) are ignored.

use super::Msg;
use lanyard_core::firewall::{FAMILIES, TABLE};
use lanyard_kernel::nftwatch::{self, NftEvent, NftWatch};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedSender;

/// Wait before subscribing again after the socket failed.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// What the announcements of one transaction (up to its `NEWGEN`) said about
/// lanyard's tables.
#[derive(Debug, Default)]
pub struct Listener {
    /// The first deletion of a table, chain, rule, set or object of lanyard's.
    hit: Option<String>,
    /// An element of lanyard's sets was deleted (by whom: at `NEWGEN`).
    element: Option<String>,
}

impl Listener {
    /// Takes `events` in order; returns what to ask of the checker.
    pub fn hear(&mut self, events: &[NftEvent]) -> Vec<Msg> {
        let numbers: Vec<u8> = FAMILIES
            .iter()
            .filter_map(|f| nftwatch::family_number(f))
            .collect();
        let mut out = vec![];
        for e in events {
            match e {
                NftEvent::Lost => out.push(Msg::Arm {
                    why: "nftables events were lost (queue overflow)".into(),
                    force: Some("nftables events were lost".into()),
                }),
                NftEvent::Change { object, family, .. }
                    if numbers.iter().any(|&n| e.may_have_removed_from(n, TABLE)) =>
                {
                    let what = format!(
                        "a {object} of table {} {TABLE} was deleted",
                        nftwatch::family_name(*family)
                    );
                    let slot = if *object == "element" {
                        &mut self.element
                    } else {
                        &mut self.hit
                    };
                    slot.get_or_insert(what);
                }
                NftEvent::NewGeneration { process, pid, .. } => {
                    let by = match (process, pid) {
                        (Some(p), Some(pid)) => format!("{p} (pid {pid})"),
                        (Some(p), None) => p.clone(),
                        _ => "an unknown process".into(),
                    };
                    let ours = process.as_deref().is_some_and(|p| p.starts_with("lanyard"));
                    if let Some(h) = self.hit.take() {
                        out.push(Msg::Arm {
                            why: format!("{h} by {by}"),
                            force: None,
                        });
                    }
                    if let Some(el) = self.element.take().filter(|_| !ours) {
                        let why = format!("{el} by {by}");
                        out.push(Msg::Arm {
                            why: why.clone(),
                            force: Some(why),
                        });
                    }
                }
                NftEvent::Change { .. } => {}
            }
        }
        out
    }
}

/// Runs the watch until the checker is gone: reads `first` (subscribed before the
/// first check), and subscribes again whenever the socket fails; events may have been
/// missed meanwhile, so each later subscription asks for a check.
pub async fn run(first: Option<NftWatch>, tx: UnboundedSender<Msg>) {
    let mut next = first;
    loop {
        let initial = next.is_some();
        let watch = match next.take().map(Ok).unwrap_or_else(NftWatch::open) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(
                    "daemon: cannot subscribe to nftables events ({e}); checking every interval only, retrying"
                );
                tokio::time::sleep(RESUBSCRIBE).await;
                continue;
            }
        };
        // SAFETY: the watch owns its socket and never replaces or closes it while the
        // AsyncFd holds it.
        let fd = match unsafe { AsyncFd::register(watch) } {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("daemon: cannot poll the nftables event socket ({e}); retrying");
                tokio::time::sleep(RESUBSCRIBE).await;
                continue;
            }
        };
        if !initial {
            let subscribed = Msg::Arm {
                why: "subscribed to nftables events".into(),
                force: None,
            };
            if tx.send(subscribed).is_err() {
                return;
            }
        }
        let e = read(fd, &tx).await;
        if tx.is_closed() {
            return;
        }
        tracing::warn!("daemon: reading nftables events failed ({e}); resubscribing");
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

/// Reads announcements until the socket fails (returns why) or the checker is gone.
async fn read(mut fd: AsyncFd<NftWatch>, tx: &UnboundedSender<Msg>) -> std::io::Error {
    let mut listener = Listener::default();
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => return e,
        };
        let events = match guard.try_io(|w| match w.get_mut().read() {
            Ok(ev) if ev.is_empty() => Err(std::io::ErrorKind::WouldBlock.into()),
            other => other,
        }) {
            Ok(Ok(ev)) => ev,
            Ok(Err(e)) => return e,
            Err(_would_block) => continue,
        };
        for m in listener.hear(&events) {
            if tx.send(m).is_err() {
                return std::io::Error::other("the checker is gone");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(object: &'static str, family: u8, table: &str) -> NftEvent {
        NftEvent::Change {
            deleted: true,
            object,
            family,
            table: Some(table.into()),
        }
    }

    fn generation(process: &str) -> NftEvent {
        NftEvent::NewGeneration {
            id: 1,
            pid: Some(42),
            process: Some(process.into()),
        }
    }

    fn forces(m: &[Msg]) -> Vec<bool> {
        m.iter()
            .map(|m| matches!(m, Msg::Arm { force: Some(_), .. }))
            .collect()
    }

    #[test]
    fn an_element_deleted_by_someone_else_forces_a_rebuild_but_not_lanyards_own() {
        let mut l = Listener::default();
        let m = l.hear(&[change("element", 7, "lanyard"), generation("nft")]);
        assert_eq!(forces(&m), [true]);
        let m = l.hear(&[change("element", 1, "lanyard"), generation("lanyard")]);
        assert!(m.is_empty(), "a detach's own deletion: {m:?}");
        let m = l.hear(&[change("element", 1, "docker"), generation("nft")]);
        assert!(m.is_empty(), "another table: {m:?}");
    }

    #[test]
    fn a_flush_asks_for_a_check_naming_who_did_it() {
        let mut l = Listener::default();
        let m = l.hear(&[change("rule", 1, "lanyard"), change("table", 1, "lanyard")]);
        assert!(m.is_empty(), "waits for the generation");
        let m = l.hear(&[generation("nft")]);
        match m.as_slice() {
            [Msg::Arm { why, force: None }] => {
                assert_eq!(
                    why,
                    "a rule of table inet lanyard was deleted by nft (pid 42)"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(forces(&l.hear(&[NftEvent::Lost])), [true]);
    }
}
