//! The bridge's errors: the Python exception classes percore raises (`PercoreError` and its
//! subclasses), `describe` (one line for a Python exception), and `BridgeError`, a Python failure carried
//! through plain Rust (inside an `ExecutorError`) and shown again at the top.
//!
//! A leaf of the bridge: errors turn into Python exceptions here and in `server.rs` only.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    percore,
    PercoreError,
    PyException,
    "Base class of every percore error."
);
create_exception!(
    percore,
    ConfigurationError,
    PercoreError,
    "Invalid server or app configuration."
);
create_exception!(
    percore,
    StartupError,
    PercoreError,
    "The server could not start (e.g. the port is busy)."
);

/// One line describing a Python exception, for errors that cross into plain Rust.
pub(super) fn describe(py: Python<'_>, err: &PyErr) -> String {
    let type_name = err
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    format!("{type_name}: {}", err.value(py))
}

/// A Python failure crossing into plain Rust (an executor that could not be created or started), the
/// exception kept whole. Displayed as `describe` says it, attaching to the interpreter to format it.
#[derive(Debug)]
pub(super) enum BridgeError {
    /// Python raised.
    Raised(PyErr),
    /// A lifecycle hook's coroutine was dropped before it finished.
    NeverFinished(&'static str),
}

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BridgeError::Raised(err) => f.write_str(&Python::attach(|py| describe(py, err))),
            BridgeError::NeverFinished(hook) => write!(f, "{hook} never finished"),
        }
    }
}

impl std::error::Error for BridgeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BridgeError::Raised(err) => Some(err),
            BridgeError::NeverFinished(_) => None,
        }
    }
}
