//! Applying a plan: ops one by one, and on the first failure the inverses of the
//! done ones in reverse order. Rollback keeps going past its own errors and reports
//! them all.

use crate::kernel::Kernel;
use crate::op::Op;
use crate::{Error, Result};

/// Applies `ops` in order. On failure undoes what was done (reverse order) and
/// returns the original error, with any rollback failures appended.
pub fn apply_all(kernel: &mut dyn Kernel, ops: &[Op]) -> Result<()> {
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = kernel.apply(op) {
            return Err(roll_back(kernel, &ops[..i], e));
        }
    }
    Ok(())
}

/// Undoes `done` in reverse after `e`; returns `e`, with any undo failures appended.
fn roll_back<'a>(
    kernel: &mut dyn Kernel,
    done: impl IntoIterator<Item = &'a Op, IntoIter: DoubleEndedIterator>,
    e: Error,
) -> Error {
    let undo: Vec<Op> = done.into_iter().rev().filter_map(Op::inverse).collect();
    let failures = apply_best_effort(kernel, &undo);
    if failures.is_empty() {
        return e;
    }
    let failures: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
    Error::Other(format!(
        "{e}; rollback also failed: {}",
        failures.join("; ")
    ))
}

/// errno of "already exists".
pub const EEXIST: i32 = 17;

/// Like [`apply_all`] for shared pieces (bridge, shim, VLAN parent) that another
/// process may be creating at the same moment: "already exists" counts as done,
/// and such a step is not undone on rollback (it is not ours).
pub fn apply_ensure(kernel: &mut dyn Kernel, ops: &[Op]) -> Result<()> {
    let mut done: Vec<&Op> = vec![];
    for op in ops {
        match kernel.apply(op) {
            Ok(()) => done.push(op),
            Err(Error::Kernel {
                errno: Some(EEXIST),
                ..
            }) => {}
            Err(e) => return Err(roll_back(kernel, done, e)),
        }
    }
    Ok(())
}

/// Applies every op, continuing past failures; returns the failures (teardown).
pub fn apply_best_effort(kernel: &mut dyn Kernel, ops: &[Op]) -> Vec<Error> {
    ops.iter().filter_map(|op| kernel.apply(op).err()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{ifname, FakeKernel};
    use crate::op::{Netns, RouteSpec};

    fn plan() -> Vec<Op> {
        vec![
            Op::CreateBridge {
                name: ifname("lyb-1"),
                mtu: None,
            },
            Op::AddAddress {
                netns: Netns::Host,
                link: ifname("lyb-1"),
                addr: "192.0.2.1/24".parse().unwrap(),
                nodad: true,
            },
            Op::SetUp {
                netns: Netns::Host,
                name: ifname("lyb-1"),
            },
            Op::AddRoute {
                netns: Netns::Host,
                route: RouteSpec {
                    dst: "198.51.100.0/24".parse().unwrap(),
                    via: Some("192.0.2.9".parse().unwrap()),
                    dev: None,
                    src: None,
                    metric: None,
                },
            },
        ]
    }

    #[test]
    fn failure_at_every_step_undoes_the_steps_before_it_in_reverse() {
        let ops = plan();
        for fail in 0..ops.len() {
            let mut k = FakeKernel {
                fail_at: Some(fail),
                ..Default::default()
            };
            assert!(apply_all(&mut k, &ops).is_err());
            let done = &ops[..fail];
            let expected_undo: Vec<Op> = done.iter().rev().filter_map(Op::inverse).collect();
            assert_eq!(&k.applied[..fail], done);
            assert_eq!(&k.applied[fail..], &expected_undo[..], "fail at {fail}");
        }
    }

    #[test]
    fn ensure_takes_already_exists_as_done_and_does_not_undo_it() {
        struct Exists(FakeKernel);
        impl Kernel for Exists {
            fn view(&mut self, n: &Netns) -> Result<crate::kernel::View> {
                self.0.view(n)
            }
            fn netns_id(&mut self, p: &std::path::Path) -> Result<crate::kernel::NsId> {
                self.0.netns_id(p)
            }
            fn apply(&mut self, op: &Op) -> Result<()> {
                if matches!(op, Op::CreateBridge { .. }) {
                    return Err(Error::kernel("create", "File exists", Some(EEXIST)));
                }
                self.0.apply(op)
            }
        }
        let mut k = Exists(FakeKernel {
            fail_at: Some(2),
            ..Default::default()
        });
        assert!(apply_ensure(&mut k, &plan()).is_err());
        // Address added, SetUp failed: only the address is undone, never the bridge.
        assert!(!k
            .0
            .applied
            .iter()
            .any(|o| matches!(o, Op::DeleteLink { .. })));
        assert!(k
            .0
            .applied
            .iter()
            .any(|o| matches!(o, Op::DelAddress { .. })));
    }

    #[test]
    fn success_applies_everything_once() {
        let mut k = FakeKernel::default();
        apply_all(&mut k, &plan()).unwrap();
        assert_eq!(k.applied, plan());
    }
}
