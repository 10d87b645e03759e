//! Errors of the netlink layer ([`NlError`]) and their translation into lanyard's
//! [`lanyard_core::Error`], naming the `ip`-like operation that failed.

use lanyard_core::op::Op;
use lanyard_core::Error;
use std::fmt;
use std::io;

/// What went wrong talking to the kernel.
#[derive(Debug)]
pub(crate) enum NlError {
    /// The kernel refused the request: errno and, if it gave one, its extended-ack text.
    Kernel {
        /// Positive errno (`libc::EEXIST`, …).
        errno: i32,
        /// `NLMSGERR_ATTR_MSG`, e.g. "Unknown device type".
        msg: Option<String>,
    },
    /// A syscall failed (socket, send, recv, setns, open).
    Io(io::Error),
    /// The kernel's answer could not be decoded.
    Decode(String),
}

impl NlError {
    /// The errno, if there is one.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { errno, .. } => Some(*errno),
            NlError::Io(e) => e.raw_os_error(),
            NlError::Decode(_) => None,
        }
    }

    /// Is this errno `e`?
    pub(crate) fn is(&self, e: i32) -> bool {
        self.errno() == Some(e)
    }

    /// Into [`Error::Kernel`] for `op`.
    pub(crate) fn for_op(self, op: &Op) -> Error {
        self.for_text(op.to_string())
    }

    /// Into [`Error::Kernel`] for an operation described by `op`.
    pub(crate) fn for_text(self, op: impl Into<String>) -> Error {
        let errno = self.errno();
        Error::kernel(op, self.to_string(), errno)
    }
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NlError::Kernel { errno, msg } => {
                f.write_str(&errno_text(*errno))?;
                if let Some(m) = msg {
                    write!(f, " ({m})")?;
                }
                Ok(())
            }
            NlError::Io(e) => match e.raw_os_error() {
                Some(n) => f.write_str(&errno_text(n)),
                None => write!(f, "{e}"),
            },
            NlError::Decode(s) => write!(f, "undecodable netlink answer: {s}"),
        }
    }
}

impl From<io::Error> for NlError {
    fn from(e: io::Error) -> Self {
        NlError::Io(e)
    }
}

/// `strerror(errno)` without the " (os error N)" tail that `io::Error` adds.
pub(crate) fn errno_text(errno: i32) -> String {
    let s = io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_error_reads_like_ip_does() {
        let e = NlError::Kernel {
            errno: libc::EOPNOTSUPP,
            msg: Some("Unknown device type".into()),
        };
        assert_eq!(
            e.to_string(),
            "Operation not supported (Unknown device type)"
        );
        match e.for_text("ip link add x type ipvlan") {
            Error::Kernel { op, reason, errno } => {
                assert_eq!(op, "ip link add x type ipvlan");
                assert_eq!(reason, "Operation not supported (Unknown device type)");
                assert_eq!(errno, Some(libc::EOPNOTSUPP));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
