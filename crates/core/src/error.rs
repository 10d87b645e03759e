//! The one error type of lanyard's libraries. The binary alone maps it to exit codes.

use std::fmt;

/// Result with lanyard's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with enough context for the user to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user-supplied value is wrong: names the field, the value and why.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        /// The flag or field, e.g. `--subnet`.
        field: String,
        /// The offending value as given.
        value: String,
        /// Why it is refused, and where possible how to fix it.
        reason: String,
    },
    /// The request clashes with existing state (name taken, subnet overlap, port in use).
    #[error("{0}")]
    Conflict(String),
    /// A named object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// What kind of object: "network", "endpoint", "interface".
        kind: &'static str,
        /// The name that was looked up.
        name: String,
    },
    /// The kernel lacks a feature (e.g. ipvlan).
    #[error("{0}")]
    Unsupported(String),
    /// State changed under the request (another process's transaction landed in
    /// between); the same request may well succeed when run again.
    #[error("{0}")]
    TryAgain(String),
    /// A kernel operation failed.
    #[error("kernel: {op}: {reason}")]
    Kernel {
        /// The operation, in `ip`-like words.
        op: String,
        /// errno text or decoding error.
        reason: String,
        /// Raw errno when known (e.g. `libc::EEXIST`).
        errno: Option<i32>,
    },
    /// The durable store failed.
    #[error("store: {0}")]
    Store(String),
    /// The store could not be reached (a shared store's cluster down or cut off
    /// from this host): the call gave up. Front ends treat it as [`Error::Store`];
    /// read-only CLI verbs may answer from the host's local copy instead.
    #[error("store: {0}")]
    Unreachable(String),
    /// Anything else: I/O on state files, configuration.
    #[error("{0}")]
    Other(String),
}

/// What kind of failure an [`Error`] is: the one thing each front end maps to its
/// protocol (CLI exit code, Docker plugin `Err` text with an HTTP status, CNI error
/// code), so no front end matches message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A field of the request is wrong; nothing was changed.
    Invalid,
    /// The request clashes with existing state.
    Conflict,
    /// What the request names does not exist.
    NotFound,
    /// State changed under the request; running it again may succeed.
    TryAgain,
    /// The running kernel lacks a feature the request needs.
    Unsupported,
    /// Anything else: a kernel step, the store, I/O.
    Internal,
}

impl Error {
    /// The kind of this error, for front ends to map.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid { .. } => ErrorKind::Invalid,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::TryAgain(_) => ErrorKind::TryAgain,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Kernel { .. } | Error::Store(_) | Error::Unreachable(_) | Error::Other(_) => {
                ErrorKind::Internal
            }
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: &str, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
        }
    }

    /// Shorthand for [`Error::Kernel`].
    pub fn kernel(op: impl Into<String>, reason: impl Into<String>, errno: Option<i32>) -> Self {
        Error::Kernel {
            op: op.into(),
            reason: reason.into(),
            errno,
        }
    }

    /// The process exit code documented in the README: 1 error, 2 usage/invalid input,
    /// 3 conflict, 4 not found, 5 unsupported by this kernel, 6 try again.
    pub fn exit_code(&self) -> i32 {
        match self.kind() {
            ErrorKind::Invalid => 2,
            ErrorKind::Conflict => 3,
            ErrorKind::NotFound => 4,
            ErrorKind::Unsupported => 5,
            ErrorKind::TryAgain => 6,
            ErrorKind::Internal => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_exit_code() {
        let errors = [
            Error::invalid("--ip", "x", "bad"),
            Error::Conflict("c".into()),
            Error::not_found("network", "n"),
            Error::Unsupported("u".into()),
            Error::TryAgain("t".into()),
            Error::Store("s".into()),
            Error::Unreachable("u".into()),
        ];
        let codes: Vec<i32> = errors.iter().map(Error::exit_code).collect();
        assert_eq!(codes, [2, 3, 4, 5, 6, 1, 1]);
        assert_eq!(errors[4].kind(), ErrorKind::TryAgain);
    }
}
