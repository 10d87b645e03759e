//! Capabilities for `lanyard run`, as `docker run` gives them: Docker's default set
//! unless told otherwise, `--cap-add`/`--cap-drop` (names with or without `CAP_`, any
//! case, `ALL`), `--privileged` for every capability. With `--user`, the kept
//! capabilities stay effective across the user switch and the exec (ambient), so a
//! non-root service keeps NET_BIND_SERVICE or NET_ADMIN.
//!
//! The set is computed here, before the fork; the child only applies it with
//! [`apply`], which makes system calls (through rustix) and no allocation.

use lanyard_core::{Error, Result};
use rustix::thread::{CapabilitySet, CapabilitySets};

/// Docker's default capabilities (moby's `DefaultCapabilities`).
pub fn docker_default() -> CapabilitySet {
    CapabilitySet::CHOWN
        | CapabilitySet::DAC_OVERRIDE
        | CapabilitySet::FSETID
        | CapabilitySet::FOWNER
        | CapabilitySet::MKNOD
        | CapabilitySet::NET_RAW
        | CapabilitySet::SETGID
        | CapabilitySet::SETUID
        | CapabilitySet::SETFCAP
        | CapabilitySet::SETPCAP
        | CapabilitySet::NET_BIND_SERVICE
        | CapabilitySet::SYS_CHROOT
        | CapabilitySet::KILL
        | CapabilitySet::AUDIT_WRITE
}

/// Every capability this build knows by name.
fn known() -> CapabilitySet {
    CapabilitySet::all()
        .iter_names()
        .fold(CapabilitySet::empty(), |all, (_, cap)| all | cap)
}

/// One capability by name: `NET_ADMIN`, `CAP_NET_ADMIN`, `net_admin`; `ALL` is all.
fn parse_one(field: &str, name: &str) -> Result<CapabilitySet> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare == "ALL" {
        return Ok(known());
    }
    CapabilitySet::from_name(bare).ok_or_else(|| {
        Error::invalid(
            field,
            name,
            "is not a capability name (e.g. NET_ADMIN, NET_BIND_SERVICE, SYS_NICE, ALL)",
        )
    })
}

/// [`compute`] within what this process holds (`held`, its permitted set): a
/// capability this process lacks cannot be given; asked for by name, that is an
/// error; within `--privileged`, the default set or `ALL`, it is left out.
pub fn compute_within(
    held: CapabilitySet,
    privileged: bool,
    add: &[String],
    drop: &[String],
) -> Result<CapabilitySet> {
    let keep = compute(privileged, add, drop)?;
    for name in add {
        let cap = parse_one("--cap-add", name)?;
        if cap != known() && !held.contains(cap) {
            return Err(Error::invalid(
                "--cap-add",
                name,
                "lanyard itself does not hold this capability, so it cannot give it",
            ));
        }
    }
    Ok(keep & held)
}

/// What a non-root `--user` keeps effective across the exec (ambient): the
/// capabilities named by `--cap-add` (as Docker, the default set is not effective
/// for a non-root user; what was added for it is).
pub fn ambient(keep: CapabilitySet, add: &[String]) -> CapabilitySet {
    add.iter()
        .filter_map(|n| parse_one("--cap-add", n).ok())
        .fold(CapabilitySet::empty(), |a, c| a | c)
        & keep
}

/// The capabilities the command keeps: all with `privileged`, else Docker's default
/// less `drop` plus `add` (a drop of ALL empties the set first, as in Docker).
pub fn compute(privileged: bool, add: &[String], drop: &[String]) -> Result<CapabilitySet> {
    let adds = add
        .iter()
        .map(|n| parse_one("--cap-add", n))
        .collect::<Result<Vec<_>>>()?;
    let drops = drop
        .iter()
        .map(|n| parse_one("--cap-drop", n))
        .collect::<Result<Vec<_>>>()?;
    if privileged {
        return Ok(known());
    }
    let mut keep = docker_default();
    for d in drops {
        keep.remove(d);
    }
    for a in adds {
        keep.insert(a);
    }
    Ok(keep)
}

/// Where [`apply`] stopped.
#[derive(Debug, Clone, Copy)]
pub enum Failed {
    /// Dropping from the bounding set.
    Bounding,
    /// Keeping capabilities across the user switch.
    KeepCaps,
    /// Setting the permitted/effective/inheritable sets.
    Capset,
    /// Raising the ambient set.
    Ambient,
}

/// Before the user switch: drops every capability not in `keep` from the bounding
/// set (the kernel's own list may be shorter or longer than this build's: an
/// unknown one is skipped) and, when a user switch follows, keeps the permitted set
/// across it.
///
/// Makes system calls only; safe in a forked child of a single-threaded process.
pub fn before_user_switch(keep: CapabilitySet, switching: bool) -> std::result::Result<(), Failed> {
    for cap in (known() - keep).iter() {
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(_) => return Err(Failed::Bounding),
        }
    }
    if switching {
        rustix::thread::set_keep_capabilities(true).map_err(|_| Failed::KeepCaps)?;
    }
    Ok(())
}

/// After the user switch (or without one): sets permitted, effective and inheritable
/// to `keep`, and raises `ambient` (for a non-root user: [`ambient`]; else empty) so
/// those stay effective across the exec.
///
/// Makes system calls only; safe in a forked child of a single-threaded process.
pub fn apply(keep: CapabilitySet, ambient: CapabilitySet) -> std::result::Result<(), Failed> {
    let sets = CapabilitySets {
        effective: keep,
        permitted: keep,
        inheritable: keep,
    };
    rustix::thread::set_capabilities(None, sets).map_err(|_| Failed::Capset)?;
    {
        for cap in ambient.iter() {
            match rustix::thread::configure_capability_in_ambient_set(cap, true) {
                Ok(()) | Err(rustix::io::Errno::INVAL) => {}
                Err(_) => return Err(Failed::Ambient),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_default_is_dockers_set_with_its_known_mask() {
        // `docker run busybox grep CapEff /proc/self/status`: 00000000a80425fb.
        assert_eq!(compute(false, &[], &[]).unwrap().bits(), 0xa804_25fb);
    }

    #[test]
    fn adds_and_drops_take_any_spelling_and_drop_all_empties_first() {
        let k = compute(false, &s(&["net_admin", "CAP_SYS_NICE"]), &s(&["NET_RAW"])).unwrap();
        assert!(k.contains(CapabilitySet::NET_ADMIN | CapabilitySet::SYS_NICE));
        assert!(!k.contains(CapabilitySet::NET_RAW));
        let only = compute(false, &s(&["NET_BIND_SERVICE"]), &s(&["ALL"])).unwrap();
        assert_eq!(only, CapabilitySet::NET_BIND_SERVICE);
        assert_eq!(compute(true, &[], &[]).unwrap(), known());
    }

    #[test]
    fn what_this_process_lacks_is_left_out_or_refused_when_named() {
        let held = docker_default() | CapabilitySet::NET_ADMIN;
        assert_eq!(compute_within(held, true, &[], &[]).unwrap(), held);
        let err = compute_within(held, false, &s(&["SYS_MODULE"]), &[]).unwrap_err();
        assert!(matches!(err, Error::Invalid { field, .. } if field == "--cap-add"));
        let k = compute_within(held, false, &s(&["NET_ADMIN"]), &[]).unwrap();
        assert!(k.contains(CapabilitySet::NET_ADMIN));
    }

    #[test]
    fn an_unknown_name_is_refused_naming_the_flag_and_the_name() {
        for (add, drop, field) in [
            (s(&["NET_ADMN"]), vec![], "--cap-add"),
            (vec![], s(&["", "x"]), "--cap-drop"),
        ] {
            match compute(false, &add, &drop) {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{add:?} {drop:?}: {other:?}"),
            }
        }
    }
}
