//! Awaitables that are already complete (`Ready`, `Done`) and the one check made on asyncio futures
//! (`future_is_done`): what `receive`/`send`/`ChunkSender.send` return when they need not wait, so an app
//! that never blocks is stepped to completion without touching the asyncio loop.
//!
//! A leaf of the bridge: it imports only `ffi`.

use pyo3::exceptions::PyStopIteration;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::ffi::PerThreadObject;

/// An awaitable that is already complete: `await Ready(v)` evaluates to `v` without suspending.
#[pyclass(frozen, module = "percore._runtime")]
pub(super) struct Ready {
    value: Py<PyAny>,
}

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Err(PyStopIteration::new_err((self.value.clone_ref(py),)))
    }

    #[pyo3(signature = (_value=None))]
    fn send(&self, py: Python<'_>, _value: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        self.__next__(py)
    }

    #[pyo3(signature = (error, *_rest))]
    fn throw(&self, error: Bound<'_, PyAny>, _rest: Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        Err(PyErr::from_value(error))
    }

    fn close(&self) {}
}

/// Whether an asyncio future is done (a failing check counts as done: never resolve it twice).
pub(super) fn future_is_done(future: &Bound<'_, PyAny>) -> bool {
    future
        .call_method0(intern!(future.py(), "done"))
        .and_then(|d| d.is_truthy())
        .unwrap_or(true)
}

/// `await Done()` evaluates to `None` without suspending, like `Ready(None)` but cheaper: `__next__`
/// ends the iteration without raising `StopIteration` (CPython takes a bare end of iteration as
/// `None`), and each loop thread reuses one instance. Every `await send(...)` of an ASGI app ends
/// here, twice per response; allocating a `Ready` and raising through `StopIteration` cost ~1.5k
/// instructions per await (callgrind, Starlette `/json`).
#[pyclass(frozen, module = "percore._runtime")]
pub(super) struct Done;

#[pymethods]
impl Done {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self) -> Option<Py<PyAny>> {
        None
    }

    /// Called from Python (`awaitable.send(None)`), the end must be a real `StopIteration`.
    #[pyo3(signature = (_value=None))]
    fn send(&self, _value: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        Err(PyStopIteration::new_err(()))
    }

    #[pyo3(signature = (error, *_rest))]
    fn throw(&self, error: Bound<'_, PyAny>, _rest: Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        Err(PyErr::from_value(error))
    }

    fn close(&self) {}
}

thread_local! {
    /// This thread's `Done`. One per thread, not per process: on 3.13t an object shared by every loop
    /// would have its reference count written by all of them on every await. Leaked on purpose (one
    /// small object per loop thread, see `PerThreadObject`).
    static DONE: PerThreadObject = const { PerThreadObject::new() };
}

/// The completed awaitable for `None`: this thread's `Done`.
pub(super) fn done(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    DONE.with(|done| done.get_or_create(py, || Ok(Bound::new(py, Done)?.into_any())))
}

/// The completed awaitable for `value` (`Done` for `None`).
pub(super) fn ready<'py>(py: Python<'py>, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if value.is_none() {
        return done(py);
    }
    Ok(Bound::new(
        py,
        Ready {
            value: value.unbind(),
        },
    )?
    .into_any())
}
