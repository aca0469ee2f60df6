//! `LoopShared`: what one loop's executor and the work in flight on it share — the asyncio loop, the
//! limits an exchange reads, the live-task table shutdown waits on, and how a handler's failure or return
//! value becomes a response.
//!
//! Above `task` (it tracks `RequestTask`s; a task sees it only as a `TaskLoop`), below the exchanges
//! (`native`, `asgi`) and the executor that create it.
//!
//! Invariants: the live-task table is touched only by this loop's thread, and no Python object is
//! dropped while its lock is held.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::intern;
use pyo3::prelude::*;
use tokio::sync::Notify;

use super::hooks::Hooks;
use super::response::{to_response, OnLoop};
use super::sync_pool::Offloaded;
use super::task::{RequestTask, TaskLoop};
use crate::exchange::{HttpResponse, Latch};

/// What a loop's executor and its in-flight `RequestTask`s share.
pub(super) struct LoopShared {
    pub(super) event_loop: Py<PyAny>,
    pub(super) cancelled_error_type: Py<PyAny>,
    /// Tells the driver to look at the asyncio loop again (work was scheduled outside `_run_once`).
    pub(super) wake: Arc<Notify>,
    pub(super) uuid_class: Py<PyAny>,
    /// `--max-body-size`, for request bodies read as they stream in (ASGI).
    pub(super) max_body_size: u64,
    /// `--ws-max-size`: the largest WebSocket message a client may send.
    pub(super) max_websocket_message: usize,
    /// `--ws-max-queue`: client messages queued for the app before the server stops reading the socket.
    pub(super) websocket_max_queue: usize,
    /// `--send-timeout`: no write progress to a client for this long closes its connection.
    pub(super) send_timeout: Duration,
    /// `--ws-ping-interval` (None: off) and `--ws-ping-timeout`.
    pub(super) websocket_ping: (Option<Duration>, Duration),
    pub(super) response_class: Py<PyAny>,
    pub(super) on_error: Py<PyAny>,
    /// What the runtime calls back into (logger, background tasks, streaming).
    pub(super) hooks: Hooks,
    /// The native app's `_exception_response(error)`: a response for handled exception types, or None.
    pub(super) exception_responder: Option<Py<PyAny>>,
    /// Request tasks that suspended and have not finished, so shutdown can wait for them and cancel
    /// the rest before the lifespan shutdown. Touched only by this loop's thread (an uncontended lock,
    /// once when a task first suspends and once when it finishes; never on the synchronous fast path).
    pub(super) live_tasks: Mutex<HashMap<usize, Py<RequestTask>>>,
    /// Notified when `live_tasks` becomes empty.
    pub(super) no_live_tasks: Notify,
    /// `def` calls this loop sent to the sync pool that have not ended: shutdown waits for them too.
    pub(super) offloaded: Arc<Offloaded>,
    /// Set when the loop stops accepting: open WebSockets close with 1001 (going away).
    pub(super) closing: Latch,
}

impl LoopShared {
    /// Remembers `task` until it finishes, if it is still running (it suspended).
    pub(super) fn track(&self, task: &Bound<'_, RequestTask>) {
        if task.get().mark_tracked() {
            self.live_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(task.as_ptr() as usize, task.clone().unbind());
        }
    }

    /// A tracked task finished.
    pub(super) fn untrack(&self, task: &Bound<'_, RequestTask>) {
        let mut live = self.live_tasks.lock().unwrap_or_else(|p| p.into_inner());
        let removed = live.remove(&(task.as_ptr() as usize));
        if live.is_empty() {
            self.no_live_tasks.notify_waiters();
        }
        // Released after the lock: no Python object is dropped while a Rust lock is held.
        drop(live);
        drop(removed);
    }

    pub(super) fn live_tasks(&self, py: Python<'_>) -> Vec<Py<RequestTask>> {
        self.live_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|task| task.clone_ref(py))
            .collect()
    }

    pub(super) async fn idle(&self) {
        loop {
            let emptied = self.no_live_tasks.notified();
            let returned = self.offloaded.none.notified();
            if self
                .live_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
                && self.offloaded.is_empty()
            {
                return;
            }
            tokio::select! {
                _ = emptied => {}
                _ = returned => {}
            }
        }
    }

    /// A new asyncio future on this loop (for awaits that Rust resolves later).
    pub(super) fn create_future<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.event_loop
            .bind(py)
            .call_method0(intern!(py, "create_future"))
    }

    /// A native handler raised: the app's exception handlers (HTTPException, `@exception_handler`) may
    /// turn it into a response; anything else is a logged 500.
    pub(super) fn handler_failed(&self, py: Python<'_>, err: &PyErr, name: &str) -> HttpResponse {
        if let Some(responder) = &self.exception_responder {
            match responder.call1(py, (err.value(py),)) {
                Ok(response) if !response.is_none(py) => {
                    return self.respond(py, response.bind(py), 200, name);
                }
                Ok(_) => {}
                Err(handler_err) => return self.fail(py, &handler_err, name),
            }
        }
        self.fail(py, err, name)
    }

    /// The handler's return value as a response; a value that cannot be sent becomes a logged 500.
    pub(super) fn respond(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        status_code: u16,
        name: &str,
    ) -> HttpResponse {
        match to_response(
            value,
            status_code,
            self.response_class.bind(py),
            Some(OnLoop {
                wake: &self.wake,
                hooks: &self.hooks,
            }),
        ) {
            Ok(response) => response,
            Err(err) => self.fail(py, &err, name),
        }
    }

    /// Logs a handler failure with its traceback (through `percore`'s logger) and answers 500.
    pub(super) fn fail(&self, py: Python<'_>, err: &PyErr, name: &str) -> HttpResponse {
        if let Err(log_err) = self.on_error.call1(py, (name, err.value(py))) {
            log_err.print(py);
        }
        HttpResponse::internal_error()
    }
}

impl TaskLoop for LoopShared {
    fn event_loop(&self) -> &Py<PyAny> {
        &self.event_loop
    }

    fn cancelled_error_type(&self) -> &Py<PyAny> {
        &self.cancelled_error_type
    }

    fn untrack(&self, task: &Bound<'_, RequestTask>) {
        LoopShared::untrack(self, task)
    }

    fn respond(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        status_code: u16,
        name: &str,
    ) -> HttpResponse {
        LoopShared::respond(self, py, value, status_code, name)
    }

    fn handler_failed(&self, py: Python<'_>, err: &PyErr, name: &str) -> HttpResponse {
        LoopShared::handler_failed(self, py, err, name)
    }
}
