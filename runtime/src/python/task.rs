//! `RequestTask`: drives one request's coroutine on its loop thread, with the parts of the
//! `asyncio.Task` protocol that handlers and libraries rely on.
//!
//! Why not `asyncio.Task`: on 3.13t a Task per request cost ~10 µs and two loops gave only 1.1× of one
//! (its `_enter_task`/`_leave_task` write one process-global dict; alone, that dict made two threads
//! slower than one). A coroutine that finishes without
//! suspending is stepped here directly (`PyIter_Send`, ~0.5 µs) and never touches shared state. One that
//! suspends waits on its future through `add_done_callback` and is resumed by the loop, exactly like a
//! Task: cancellation (`cancel`/`cancelling`/`uncancel`, so `asyncio.timeout` and TaskGroup work),
//! contextvars (every request runs in its own copied Context), and `asyncio.current_task()` (percore's
//! patched version consults `CURRENT` first) all behave as under asyncio.
//!
//! Invariants: a task is stepped only on its loop's thread; the state lock is never held while Python
//! code runs — no call into Python, and no Python object dropped (a `__del__`, a future's "exception
//! never retrieved" hook) while it is held: the coroutine, a callback's `__eq__` or a finalizer may call
//! back into the task (`cancel()`, `done()`), and a re-entered `std::sync::Mutex` deadlocks the loop;
//! the reply is sent exactly once. A task that suspended holds its request's `InFlight` guard until
//! its coroutine finishes.
//!
//! Over 500 lines: the `asyncio.Task` protocol percore implements is that long; it is one type.

use std::cell::RefCell;
use std::sync::Mutex;

use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use tokio::sync::oneshot;

use crate::exchange::HttpResponse;
use crate::routing::InFlight;

/// The loop a task runs on, as the task sees it. `loop_state::LoopShared` implements it: a trait so this
/// module sits below the loop's state (which tracks tasks) without an import cycle, dispatched through a
/// vtable rather than a boxed completion per request (no allocation on the hot path).
pub(super) trait TaskLoop: Send + Sync {
    /// The asyncio loop the task's futures must belong to.
    fn event_loop(&self) -> &Py<PyAny>;
    /// `asyncio.CancelledError`, looked up once per loop.
    fn cancelled_error_type(&self) -> &Py<PyAny>;
    /// The task finished: the loop forgets it (it was tracked, `LoopShared::track`).
    fn untrack(&self, task: &Bound<'_, RequestTask>);
    /// A native handler's coroutine returned `value`: the response (a value that cannot be sent is a
    /// logged 500).
    fn respond(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        status_code: u16,
        name: &str,
    ) -> HttpResponse;
    /// A native handler's coroutine raised: the app's exception handlers' response, or a logged 500.
    fn handler_failed(&self, py: Python<'_>, err: &PyErr, name: &str) -> HttpResponse;
}

/// An ASGI connection (HTTP exchange or WebSocket) told that its app's coroutine is over.
pub(super) trait AppConnection: Send + Sync {
    /// `error` is set if the app raised or was cancelled.
    fn app_finished(&self, py: Python<'_>, error: Option<PyErr>);
}

thread_local! {
    /// The RequestTask whose coroutine is being stepped on this thread right now.
    static CURRENT: RefCell<Option<Py<RequestTask>>> = const { RefCell::new(None) };
}

/// The task being stepped on this thread, if it belongs to `event_loop` (or `event_loop` is None).
pub(super) fn current(
    py: Python<'_>,
    event_loop: Option<&Bound<'_, PyAny>>,
) -> Option<Py<RequestTask>> {
    CURRENT.with(|current| {
        let task = current.borrow();
        let task = task.as_ref()?;
        match event_loop {
            Some(l) if !l.is(task.get().shared.event_loop().bind(py)) => None,
            _ => Some(task.clone_ref(py)),
        }
    })
}

enum Outcome {
    Returned(Py<PyAny>),
    Raised(PyErr),
    Cancelled,
}

/// The outcome as kept on the task: Python objects only, so the garbage collector can see them.
enum Stored {
    Pending,
    Returned(Py<PyAny>),
    Raised(Py<PyAny>),
    Cancelled,
}

struct State {
    coroutine: Option<Py<PyAny>>,
    waiter: Option<Py<PyAny>>,
    must_cancel: bool,
    cancel_message: Option<Py<PyAny>>,
    cancels_requested: u32,
    outcome: Stored,
    completion: Option<Completion>,
    done_callbacks: Vec<Py<PyAny>>,
    /// In its loop's live-task table (`LoopShared::track`) until it finishes.
    tracked: bool,
    /// Counts the request against `--max-in-flight` until the coroutine finishes (`hold_in_flight`).
    in_flight: Option<InFlight>,
}

/// What happens when the coroutine finishes.
pub(super) enum Completion {
    /// A native handler: its return value becomes the response.
    Native {
        status_code: u16,
        reply: oneshot::Sender<HttpResponse>,
    },
    /// An ASGI app: the response was (or should have been) sent through `send`; the connection judges.
    Asgi(std::sync::Arc<dyn AppConnection>),
    /// Not a request (lifespan, loop hooks): deliver the result to Rust.
    Detached(oneshot::Sender<PyResult<Py<PyAny>>>),
}

#[pyclass(frozen, weakref, module = "percore", name = "RequestTask")]
pub(super) struct RequestTask {
    state: Mutex<State>,
    context: Py<PyAny>,
    shared: std::sync::Arc<dyn TaskLoop>,
    name: String,
}

use super::ffi::Sent as Step;

fn send(py: Python<'_>, coroutine: &Bound<'_, PyAny>) -> Step {
    super::ffi::send_none(py, coroutine)
}

fn throw(py: Python<'_>, coroutine: &Bound<'_, PyAny>, error: PyErr) -> Step {
    match coroutine.call_method1(intern!(py, "throw"), (error.into_value(py),)) {
        Ok(yielded) => Step::Yielded(yielded.unbind()),
        Err(err) if err.is_instance_of::<PyStopIteration>(py) => {
            let value = err
                .value(py)
                .getattr(intern!(py, "value"))
                .map(Bound::unbind)
                .unwrap_or_else(|_| py.None());
            Step::Returned(value)
        }
        Err(err) => Step::Raised(err),
    }
}

pub(super) use super::ffi::in_context;

impl RequestTask {
    pub(super) fn new(
        py: Python<'_>,
        coroutine: Py<PyAny>,
        shared: std::sync::Arc<dyn TaskLoop>,
        context: Py<PyAny>,
        name: String,
        completion: Completion,
    ) -> PyResult<Bound<'_, RequestTask>> {
        Bound::new(
            py,
            RequestTask {
                state: Mutex::new(State {
                    coroutine: Some(coroutine),
                    waiter: None,
                    must_cancel: false,
                    cancel_message: None,
                    cancels_requested: 0,
                    outcome: Stored::Pending,
                    completion: Some(completion),
                    done_callbacks: Vec::new(),
                    tracked: false,
                    in_flight: None,
                }),
                context,
                shared,
                name,
            },
        )
    }

    /// Marks a still-running task as tracked; false if it already finished (or is tracked).
    pub(super) fn mark_tracked(&self) -> bool {
        let mut state = self.lock();
        if state.coroutine.is_none() || state.tracked {
            return false;
        }
        state.tracked = true;
        true
    }

    /// Keeps `guard` until the coroutine finishes (dropped at once if it already has): the request's
    /// work goes on after its response, or after its client left, and still occupies the loop.
    pub(super) fn hold_in_flight(&self, guard: Option<InFlight>) {
        let mut state = self.lock();
        if state.coroutine.is_some() {
            state.in_flight = guard;
        }
    }

    /// The outcome, copied out so the lock is released before any Python runs.
    fn outcome(&self, py: Python<'_>) -> Stored {
        match &self.lock().outcome {
            Stored::Returned(value) => Stored::Returned(value.clone_ref(py)),
            Stored::Raised(error) => Stored::Raised(error.clone_ref(py)),
            Stored::Cancelled => Stored::Cancelled,
            Stored::Pending => Stored::Pending,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs the coroutine until it suspends or finishes, as `asyncio.Task.__step` does.
    pub(super) fn step(slf: &Bound<'_, Self>, error: Option<PyErr>) {
        let py = slf.py();
        let this = slf.get();
        let (coroutine, old_waiter, cancel) = {
            let mut state = this.lock();
            let Some(coroutine) = state.coroutine.as_ref().map(|c| c.clone_ref(py)) else {
                return;
            };
            let cancel =
                std::mem::take(&mut state.must_cancel).then(|| state.cancel_message.take());
            (coroutine, state.waiter.take(), cancel)
        };
        // Dropped and built outside the lock: both may run Python code.
        drop(old_waiter);
        let error = match cancel {
            Some(message) => Some(cancelled_error(py, message)),
            None => error,
        };
        let previous = CURRENT.with(|c| c.replace(Some(slf.clone().unbind())));
        let context = this.context.bind(py);
        let coroutine = coroutine.bind(py);
        let stepped = in_context(context, || match error {
            None => send(py, coroutine),
            Some(error) => throw(py, coroutine, error),
        });
        CURRENT.with(|c| *c.borrow_mut() = previous);
        match stepped {
            Ok(Step::Returned(value)) => Self::finish(slf, Outcome::Returned(value)),
            Ok(Step::Raised(err)) => {
                if err.is_instance(py, &this.shared.cancelled_error_type().bind(py).clone()) {
                    Self::finish(slf, Outcome::Cancelled)
                } else {
                    Self::finish(slf, Outcome::Raised(err))
                }
            }
            Err(err) => Self::finish(slf, Outcome::Raised(err)),
            Ok(Step::Yielded(yielded)) => {
                if let Err(err) = Self::wait_for(slf, yielded.bind(py)) {
                    Self::schedule_step(slf, Some(err));
                }
            }
        }
    }

    /// What the coroutine yielded: an asyncio future to wait on, or None (a bare `yield`, as in
    /// `asyncio.sleep(0)`) meaning "run me again soon".
    fn wait_for(slf: &Bound<'_, Self>, yielded: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if yielded.is_none() {
            Self::schedule_step(slf, None);
            return Ok(());
        }
        let blocking = match yielded.getattr_opt(intern!(py, "_asyncio_future_blocking"))? {
            Some(flag) => flag,
            None => {
                return Err(PyRuntimeError::new_err(format!(
                    "Task got bad yield: {}",
                    yielded.repr()?
                )))
            }
        };
        if !blocking.is_truthy()? {
            return Err(PyRuntimeError::new_err(
                "yield was used instead of yield from in task",
            ));
        }
        let future_loop = yielded.call_method0(intern!(py, "get_loop"))?;
        if !future_loop.is(this.shared.event_loop().bind(py)) {
            return Err(PyRuntimeError::new_err(format!(
                "Task got Future {} attached to a different loop",
                yielded.repr()?
            )));
        }
        yielded.setattr(intern!(py, "_asyncio_future_blocking"), false)?;
        yielded.call_method1(intern!(py, "add_done_callback"), (slf,))?;
        let (cancel_now, old_waiter) = {
            let mut state = this.lock();
            let old_waiter = state.waiter.replace(yielded.clone().unbind());
            let cancel_now = state
                .must_cancel
                .then(|| state.cancel_message.as_ref().map(|m| m.clone_ref(py)));
            (cancel_now, old_waiter)
        };
        drop(old_waiter);
        if let Some(message) = cancel_now {
            if yielded
                .call_method1(intern!(py, "cancel"), (message,))?
                .is_truthy()?
            {
                this.lock().must_cancel = false;
            }
        }
        Ok(())
    }

    fn schedule_step(slf: &Bound<'_, Self>, error: Option<PyErr>) {
        let py = slf.py();
        let event_loop = slf.get().shared.event_loop().bind(py);
        let scheduled = match error {
            None => event_loop.call_method1(intern!(py, "call_soon"), (slf,)),
            Some(error) => {
                let step_with_error =
                    slf.getattr(intern!(py, "_step_with_error"))
                        .and_then(|step| {
                            event_loop.call_method1(
                                intern!(py, "call_soon"),
                                (step, error.into_value(py)),
                            )
                        });
                step_with_error
            }
        };
        if let Err(err) = scheduled {
            Self::finish(slf, Outcome::Raised(err));
        }
    }

    fn finish(slf: &Bound<'_, Self>, outcome: Outcome) {
        let py = slf.py();
        let this = slf.get();
        let completion = this.lock().completion.take();
        match completion {
            Some(Completion::Native { status_code, reply }) => {
                let response = match &outcome {
                    Outcome::Returned(value) => {
                        this.shared
                            .respond(py, value.bind(py), status_code, &this.name)
                    }
                    Outcome::Raised(err) => this.shared.handler_failed(py, err, &this.name),
                    // Cancelled because its client left (or the server is stopping): nobody to tell.
                    Outcome::Cancelled => HttpResponse::internal_error(),
                };
                let _ = reply.send(response);
            }
            Some(Completion::Asgi(exchange)) => {
                let error = match &outcome {
                    Outcome::Raised(err) => Some(err.clone_ref(py)),
                    Outcome::Cancelled => {
                        Some(PyRuntimeError::new_err("the ASGI app was cancelled"))
                    }
                    _ => None,
                };
                exchange.app_finished(py, error);
            }
            Some(Completion::Detached(reply)) => {
                let result = match &outcome {
                    Outcome::Returned(value) => Ok(value.clone_ref(py)),
                    Outcome::Raised(err) => Err(err.clone_ref(py)),
                    _ => Err(cancelled_error(py, None)),
                };
                let _ = reply.send(result);
            }
            None => {}
        }
        let stored = match outcome {
            Outcome::Returned(value) => Stored::Returned(value),
            Outcome::Raised(err) => Stored::Raised(err.into_value(py).into_any()),
            Outcome::Cancelled => Stored::Cancelled,
        };
        let (callbacks, tracked, released) = {
            let mut state = this.lock();
            let released = (
                state.coroutine.take(),
                state.waiter.take(),
                state.in_flight.take(),
            );
            state.outcome = stored;
            let tracked = std::mem::replace(&mut state.tracked, false);
            (std::mem::take(&mut state.done_callbacks), tracked, released)
        };
        // The coroutine and its waiter are released outside the lock (their finalizers are Python), and
        // with them the request's in-flight count.
        drop(released);
        if tracked {
            this.shared.untrack(slf);
        }
        let event_loop = this.shared.event_loop().bind(py);
        for callback in callbacks {
            if let Err(err) = event_loop.call_method1(intern!(py, "call_soon"), (callback, slf)) {
                err.print(py);
            }
        }
    }
}

fn cancelled_error(py: Python<'_>, message: Option<Py<PyAny>>) -> PyErr {
    let error_type = py
        .import("asyncio")
        .and_then(|asyncio| asyncio.getattr("CancelledError"));
    match error_type {
        Ok(error_type) => {
            let args = match message {
                Some(message) => PyTuple::new(py, [message]),
                None => Ok(PyTuple::empty(py)),
            };
            match args.and_then(|args| error_type.call1(args)) {
                Ok(error) => PyErr::from_value(error),
                Err(err) => err,
            }
        }
        Err(err) => err,
    }
}

#[pymethods]
impl RequestTask {
    /// Wake-up callback: `future.add_done_callback(task)` and `loop.call_soon(task)` both land here.
    #[pyo3(signature = (future=None))]
    fn __call__(slf: &Bound<'_, Self>, future: Option<&Bound<'_, PyAny>>) {
        let py = slf.py();
        let error = match future {
            Some(future) => future.call_method0(intern!(py, "result")).err(),
            None => None,
        };
        Self::step(slf, error);
    }

    fn _step_with_error(slf: &Bound<'_, Self>, error: &Bound<'_, PyAny>) {
        Self::step(slf, Some(PyErr::from_value(error.clone())));
    }

    #[pyo3(signature = (msg=None))]
    pub(super) fn cancel(slf: &Bound<'_, Self>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let waiter = {
            let mut state = this.lock();
            if state.coroutine.is_none() {
                return Ok(false);
            }
            state.cancels_requested += 1;
            state.waiter.as_ref().map(|w| w.clone_ref(py))
        };
        if let Some(waiter) = waiter {
            let message = msg.as_ref().map(|m| m.clone_ref(py));
            if waiter
                .bind(py)
                .call_method1(intern!(py, "cancel"), (message,))?
                .is_truthy()?
            {
                return Ok(true);
            }
        }
        let previous = {
            let mut state = this.lock();
            state.must_cancel = true;
            std::mem::replace(&mut state.cancel_message, msg)
        };
        drop(previous);
        Ok(true)
    }

    fn cancelling(&self) -> u32 {
        self.lock().cancels_requested
    }

    fn uncancel(&self) -> u32 {
        let mut state = self.lock();
        if state.cancels_requested > 0 {
            state.cancels_requested -= 1;
            if state.cancels_requested == 0 {
                state.must_cancel = false;
            }
        }
        state.cancels_requested
    }

    fn done(&self) -> bool {
        !matches!(self.lock().outcome, Stored::Pending)
    }

    fn cancelled(&self) -> bool {
        matches!(self.lock().outcome, Stored::Cancelled)
    }

    fn result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.outcome(py) {
            Stored::Returned(value) => Ok(value),
            Stored::Raised(error) => Err(PyErr::from_value(error.into_bound(py))),
            Stored::Cancelled => Err(cancelled_error(py, None)),
            Stored::Pending => Err(PyRuntimeError::new_err("Result is not set.")),
        }
    }

    fn exception(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self.outcome(py) {
            Stored::Raised(error) => Ok(Some(error)),
            Stored::Returned(_) => Ok(None),
            Stored::Cancelled => Err(cancelled_error(py, None)),
            Stored::Pending => Err(PyRuntimeError::new_err("Exception is not set.")),
        }
    }

    /// Lets the garbage collector see what the task holds: a handler's frames often refer back to its
    /// task (through `asyncio.timeout`, anyio cancel scopes, `current_task()`), and such cycles must be
    /// collectable.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.context)?;
        // A task being stepped is locked only briefly and never during collection of itself; if the lock
        // is busy, skipping one traversal only delays collection.
        if let Ok(state) = self.state.try_lock() {
            visit.call(&state.coroutine)?;
            visit.call(&state.waiter)?;
            visit.call(&state.cancel_message)?;
            for callback in &state.done_callbacks {
                visit.call(callback)?;
            }
            match &state.outcome {
                Stored::Returned(value) | Stored::Raised(value) => visit.call(value)?,
                Stored::Pending | Stored::Cancelled => {}
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        // Taken out under the lock, dropped after it: dropping them may run finalizers.
        let cleared = {
            let mut state = self.lock();
            let outcome = if matches!(state.outcome, Stored::Pending) {
                Stored::Pending
            } else {
                std::mem::replace(&mut state.outcome, Stored::Cancelled)
            };
            (
                state.coroutine.take(),
                state.waiter.take(),
                state.cancel_message.take(),
                std::mem::take(&mut state.done_callbacks),
                outcome,
            )
        };
        drop(cleared);
    }

    #[pyo3(signature = (callback, *, context=None))]
    fn add_done_callback(
        slf: &Bound<'_, Self>,
        callback: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let _ = context;
        let py = slf.py();
        let this = slf.get();
        let finished = {
            let mut state = this.lock();
            if matches!(state.outcome, Stored::Pending) {
                state.done_callbacks.push(callback.clone_ref(py));
                false
            } else {
                true
            }
        };
        if finished {
            this.shared
                .event_loop()
                .bind(py)
                .call_method1(intern!(py, "call_soon"), (callback, slf))?;
        }
        Ok(())
    }

    fn remove_done_callback(&self, py: Python<'_>, callback: &Bound<'_, PyAny>) -> PyResult<usize> {
        // Compared outside the lock: `==` runs the callbacks' `__eq__`, which may call back into this
        // task. Removed by identity afterwards, so callbacks added meanwhile are kept.
        let registered: Vec<Py<PyAny>> = self
            .lock()
            .done_callbacks
            .iter()
            .map(|c| c.clone_ref(py))
            .collect();
        let mut matching = Vec::new();
        for existing in &registered {
            if existing.bind(py).eq(callback)? {
                matching.push(existing.as_ptr());
            }
        }
        if matching.is_empty() {
            return Ok(0);
        }
        let removed: Vec<Py<PyAny>> = {
            let mut state = self.lock();
            let (removed, kept) = std::mem::take(&mut state.done_callbacks)
                .into_iter()
                .partition(|c| matching.contains(&c.as_ptr()));
            state.done_callbacks = kept;
            removed
        };
        let count = removed.len();
        drop(removed);
        Ok(count)
    }

    fn get_coro(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.lock().coroutine.as_ref().map(|c| c.clone_ref(py))
    }

    fn get_loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.shared.event_loop().clone_ref(py)
    }

    // asyncio.Task's private attributes that libraries (anyio's cancel scopes) read directly.

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.shared.event_loop().clone_ref(py)
    }

    #[getter]
    fn _must_cancel(&self) -> bool {
        self.lock().must_cancel
    }

    #[getter]
    fn _fut_waiter(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.lock().waiter.as_ref().map(|w| w.clone_ref(py))
    }

    #[getter]
    fn _coro(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.get_coro(py)
    }

    #[getter]
    fn _cancel_message(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.lock().cancel_message.as_ref().map(|m| m.clone_ref(py))
    }

    #[getter]
    fn _callbacks(&self, py: Python<'_>) -> Vec<(Py<PyAny>, Option<Py<PyAny>>)> {
        self.lock()
            .done_callbacks
            .iter()
            .map(|c| (c.clone_ref(py), None))
            .collect()
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.clone_ref(py)
    }

    fn get_name(&self) -> String {
        self.name.clone()
    }

    fn __repr__(&self) -> String {
        let state = if self.done() { "done" } else { "pending" };
        format!("<RequestTask {state} name={:?}>", self.name)
    }
}
