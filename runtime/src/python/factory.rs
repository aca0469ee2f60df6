//! `PyExecutorFactory`: what every loop thread of a Python server starts from — the app's hooks and
//! limits — and how it makes the thread's `PyExecutor` (asyncio loop, driver, lifecycle) on that thread.
//! Also the process-level lines it adds to metrics scrapes (Python version, build, GIL state).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::intern;
use pyo3::prelude::*;
use tokio::sync::Notify;

use super::driver::Driver;
use super::errors::BridgeError;
use super::executor::{Endpoint, PyExecutor};
use super::hooks::Hooks;
use super::loop_state::LoopShared;
use super::sync_pool::SyncPool;
use crate::exchange::Latch;
use crate::executor::{ExecutorError, ExecutorErrorKind, ExecutorFactory};
use crate::metrics::{self, ExtraMetrics};

pub(super) struct PyExecutorFactory {
    /// `percore._loop.new_running_loop`: creates this thread's asyncio loop and makes it the running loop.
    pub(super) loop_factory: Py<PyAny>,
    /// Called on each loop thread (its loop running) to make that loop's lifecycle object: async
    /// `startup()` (returning a state dict or None) and `shutdown()`. None: no lifecycle.
    pub(super) lifecycle: Option<Py<PyAny>>,
    pub(super) response_class: Py<PyAny>,
    pub(super) on_error: Py<PyAny>,
    pub(super) hooks: Hooks,
    pub(super) exception_responder: Option<Py<PyAny>>,
    pub(super) max_body_size: u64,
    pub(super) max_websocket_message: usize,
    pub(super) websocket_max_queue: usize,
    pub(super) send_timeout: Duration,
    pub(super) websocket_ping: (Option<Duration>, Duration),
    /// The pool `def` handlers run on, while the server runs one (`python/server.rs` starts and closes it).
    pub(super) sync_pool: Mutex<Option<Arc<SyncPool>>>,
    /// `--sync-threads` (None: `sync_pool::default_threads`).
    pub(super) sync_threads: Option<usize>,
}

impl ExecutorFactory for PyExecutorFactory {
    type Endpoint = Endpoint;
    type Executor = PyExecutor;

    fn run_thread(&self, body: &mut (dyn FnMut() + Send)) {
        // Attach once for the thread's life (creates its thread state), then detach: Python work re-enters
        // with `Python::attach`, which on an existing thread state is a cheap state switch.
        Python::attach(|py| py.detach(body));
    }

    fn create(&self, loop_index: usize) -> Result<PyExecutor, ExecutorError> {
        Python::attach(|py| -> PyResult<PyExecutor> {
            let event_loop = self.loop_factory.call0(py)?;
            let executor = self.build(py, loop_index, event_loop.clone_ref(py));
            if executor.is_err() {
                // Closed on its own thread, never left to the collector (3.13t: "Invalid file descriptor").
                if let Err(err) = event_loop.call_method0(py, intern!(py, "_percore_close")) {
                    err.print(py);
                }
            }
            executor
        })
        .map_err(|err| ExecutorError::new(ExecutorErrorKind::Create, BridgeError::Raised(err)))
    }

    fn extra_metrics(&self) -> Option<ExtraMetrics> {
        let (version, free_threaded) = Python::attach(|py| {
            let version = py.version_info();
            let version = format!("{}.{}.{}", version.major, version.minor, version.patch);
            let free_threaded = py
                .import(intern!(py, "sysconfig"))
                .and_then(|sysconfig| {
                    sysconfig.call_method1(intern!(py, "get_config_var"), ("Py_GIL_DISABLED",))
                })
                .and_then(|flag| flag.is_truthy())
                .unwrap_or(false);
            (version, free_threaded)
        });
        Some(Arc::new(move |out: &mut String| {
            // The GIL can come back at runtime on 3.13t (an extension module that needs it), so it is
            // read at every scrape. `try_attach`: never attach while the interpreter is finalizing.
            let gil_enabled = if free_threaded {
                Python::try_attach(|py| {
                    py.import(intern!(py, "sys"))
                        .and_then(|sys| sys.call_method0(intern!(py, "_is_gil_enabled")))
                        .and_then(|enabled| enabled.extract::<bool>())
                        .ok()
                })
                .flatten()
            } else {
                Some(true)
            };
            metrics::header(
                out,
                "percore_info",
                "gauge",
                "Always 1; the labels say which percore and Python serve.",
            );
            let _ = writeln!(
                out,
                "percore_info{{version=\"{}\",python=\"{version}\",build=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION"),
                if free_threaded {
                    "free-threaded"
                } else {
                    "gil"
                },
            );
            if let Some(enabled) = gil_enabled {
                metrics::header(
                    out,
                    "percore_gil_enabled",
                    "gauge",
                    "1 while the GIL is enabled (always on GIL builds; on 3.13t only if something re-enabled it).",
                );
                let _ = writeln!(out, "percore_gil_enabled {}", u8::from(enabled));
            }
        }))
    }
}

impl PyExecutorFactory {
    fn build(
        &self,
        py: Python<'_>,
        loop_index: usize,
        event_loop: Py<PyAny>,
    ) -> PyResult<PyExecutor> {
        let cancelled_error_type = py.import("asyncio")?.getattr("CancelledError")?.unbind();
        let lifecycle = match &self.lifecycle {
            Some(factory) => Some(factory.call0(py)?).filter(|l| !l.is_none(py)),
            None => None,
        };
        let uuid_class = py.import("uuid")?.getattr("UUID")?.unbind();
        let shared = Arc::new(LoopShared {
            event_loop,
            cancelled_error_type,
            wake: Arc::new(Notify::new()),
            uuid_class,
            max_body_size: self.max_body_size,
            max_websocket_message: self.max_websocket_message,
            websocket_max_queue: self.websocket_max_queue,
            send_timeout: self.send_timeout,
            websocket_ping: self.websocket_ping,
            response_class: self.response_class.clone_ref(py),
            on_error: self.on_error.clone_ref(py),
            hooks: self.hooks.clone_ref(py),
            exception_responder: self.exception_responder.as_ref().map(|r| r.clone_ref(py)),
            live_tasks: Mutex::new(HashMap::new()),
            no_live_tasks: Notify::new(),
            offloaded: Arc::default(),
            closing: Latch::default(),
        });
        let driver = Rc::new(Driver::new(py, Arc::clone(&shared))?);
        let sync_calls = self
            .sync_pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|pool| Rc::new(pool.sender()));
        Ok(PyExecutor::new(
            loop_index, shared, driver, lifecycle, sync_calls,
        ))
    }
}
