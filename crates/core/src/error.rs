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
    /// Anything else: I/O on state files, configuration.
    #[error("{0}")]
    Other(String),
}

impl Error {
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
    /// 3 conflict, 4 not found, 5 unsupported by this kernel.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid { .. } => 2,
            Error::Conflict(_) => 3,
            Error::NotFound { .. } => 4,
            Error::Unsupported(_) => 5,
            _ => 1,
        }
    }
}
