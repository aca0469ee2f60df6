//! The Python functions the runtime calls back into, handed in once when the server is built
//! (`_runtime.Server(hooks=...)`, made by `percore/_hooks.py`) rather than imported by name at call
//! time: the contract between the Rust core and percore's Python side, in one place.
//!
//! A leaf of the bridge.

use pyo3::prelude::*;

/// What `percore._hooks.RUNTIME_HOOKS` holds.
#[derive(FromPyObject)]
pub(super) struct Hooks {
    /// The `percore` logger (`logging.Logger`): shutdown problems are logged through it.
    #[pyo3(attribute)]
    pub(super) logger: Py<PyAny>,
    /// `percore.background.run_after_response(work)`: queues a response's `background` on the running
    /// loop, to run after the response is handed to the connection.
    #[pyo3(attribute)]
    pub(super) run_after_response: Py<PyAny>,
    /// `percore.responses._pump(iterator, sender)`: the coroutine that feeds a `StreamingResponse`'s
    /// chunks to its `ChunkSender`.
    #[pyo3(attribute)]
    pub(super) pump: Py<PyAny>,
}

impl Hooks {
    pub(super) fn clone_ref(&self, py: Python<'_>) -> Self {
        Hooks {
            logger: self.logger.clone_ref(py),
            run_after_response: self.run_after_response.clone_ref(py),
            pump: self.pump.clone_ref(py),
        }
    }
}
