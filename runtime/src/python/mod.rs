//! The one PyO3 bridge: every `#[pyclass]`, `#[pyfunction]` and Python conversion lives under here.
//! The module declares itself free-threading safe (`gil_used = false`), so importing it on 3.13t keeps
//! the GIL disabled.

// The layers, bottom to top: docs/architecture.md; scripts/rust-layers.py checks them.
mod asgi;
mod awaitable;
mod convert;
mod driver;
mod errors;
mod event_loop;
mod executor;
mod factory;
mod ffi;
mod forms;
mod hooks;
mod loop_state;
mod native;
mod params;
mod request;
mod response;
mod serialize;
mod server;
mod sync_pool;
mod task;
mod transport;

use pyo3::prelude::*;

use errors::{ConfigurationError, PercoreError, StartupError};

/// The RequestTask being stepped on this thread (for `loop`, when given), else None.
#[pyfunction]
#[pyo3(signature = (event_loop=None))]
fn current_request_task(
    py: Python<'_>,
    event_loop: Option<&Bound<'_, PyAny>>,
) -> Option<Py<task::RequestTask>> {
    task::current(py, event_loop)
}

/// Serialises a value exactly as a handler's return value would be (JSON bytes).
#[pyfunction]
fn dumps<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    Ok(pyo3::types::PyBytes::new(py, &serialize::to_json(value)?))
}

/// The CPU ids in this process's affinity mask.
#[pyfunction]
fn available_cores() -> Vec<usize> {
    crate::config::available_cores()
}

/// How many CPUs this process may use (what `--loops auto` runs: the affinity mask capped by the cgroup
/// CPU quota) and why, as the banner says it. `affinity`: the mask's size when the caller knows it better
/// than this thread's own mask (a pinned loop thread's is one CPU).
#[pyfunction]
#[pyo3(signature = (affinity=None))]
fn cpu_budget(affinity: Option<usize>) -> (usize, String) {
    let affinity = affinity.unwrap_or_else(|| crate::config::available_cores().len());
    let budget = crate::cpu_budget::CpuBudget::detect(affinity);
    (budget.cpus(), budget.to_string())
}

#[pymodule(gil_used = false)]
fn _runtime(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Defined once here, read by cli.py, the supervisor and percore.server.
    let policies = crate::config::RoutingPolicy::ALL.map(|policy| policy.name());
    m.add("ROUTING_POLICIES", pyo3::types::PyTuple::new(py, policies)?)?;
    m.add(
        "DEFAULT_SHUTDOWN_TIMEOUT",
        crate::config::DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64(),
    )?;
    m.add_class::<server::Server>()?;
    m.add_class::<server::UnixSocket>()?;
    m.add_class::<server::TcpListeners>()?;
    m.add_class::<request::Request>()?;
    m.add_class::<task::RequestTask>()?;
    m.add_class::<awaitable::Ready>()?;
    m.add_class::<awaitable::Done>()?;
    m.add_class::<response::ChunkSender>()?;
    m.add_class::<event_loop::Reactor>()?;
    m.add_class::<event_loop::Handle>()?;
    m.add_class::<event_loop::TimerHandle>()?;
    m.add_class::<transport::SocketIo>()?;
    m.add_function(wrap_pyfunction!(transport::socket_read_ready, m)?)?;
    m.add_function(wrap_pyfunction!(transport::socket_write, m)?)?;
    m.add_function(wrap_pyfunction!(transport::socket_flush, m)?)?;
    m.add_function(wrap_pyfunction!(current_request_task, m)?)?;
    m.add_function(wrap_pyfunction!(dumps, m)?)?;
    m.add_function(wrap_pyfunction!(available_cores, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_budget, m)?)?;
    m.add("PercoreError", py.get_type::<PercoreError>())?;
    m.add("ConfigurationError", py.get_type::<ConfigurationError>())?;
    m.add("StartupError", py.get_type::<StartupError>())?;
    Ok(())
}
