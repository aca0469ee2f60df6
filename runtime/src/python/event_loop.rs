//! `Reactor`, `Handle`, `TimerHandle`: the Rust core of `percore.EventLoop` (py/percore/_event_loop.py).
//!
//! The Python class is asyncio's Unix selector loop with its reactor replaced: the ready queue, the timer
//! heap, reader/writer registrations and one whole loop iteration (`run_once`, asyncio's `_run_once`)
//! are here, over the level-triggered epoll poller of `crate::event_loop`. Everything asyncio builds on
//! `call_soon`/`add_reader` (transports, streams, TLS, `sock_*`, servers, subprocesses, signals) stays
//! asyncio's own Python.
//!
//! Invariants:
//! - One iteration runs exactly the callbacks that were ready when it started (after I/O and due timers
//!   are queued), in FIFO order; callbacks they schedule run in the next iteration — asyncio's order.
//! - An iteration that ran I/O callbacks or timers and left callbacks ready is followed at once by one
//!   that does not poll: to asyncio code it is an iteration whose zero-timeout poll found nothing. For
//!   I/O that becomes ready meanwhile, asyncio's loop produces that schedule too; a descriptor that
//!   stays ready (level-triggered, not drained) has its callback run every other iteration instead of
//!   every one while callbacks keep the loop busy. It is where uvloop gets its speed on a database: the
//!   reply (an I/O callback wakes the task) and the next query (the task's step sends it) take one
//!   `epoll_wait`, not two (asyncpg, GIL: `recv` per `epoll_wait` 2.0 -> 4.8 on `/queries?n=20`; CPU
//!   per request -11% there, -21% on `/db`; docs/event-loop.md). Only one: I/O waits for at most one
//!   iteration more than under asyncio's loop.
//!   The order within an iteration stays asyncio's: callbacks queued before the poll run before the
//!   I/O callbacks (CPython's test_sock_accept_racing cancels a `sock_accept` this way; uvloop's order,
//!   I/O first, fails it).
//! - The state lock is never held while Python code can run: no call into Python and no Python object
//!   dropped (a `__del__` may call `call_soon`, and a re-entered `std::sync::Mutex` deadlocks). Objects
//!   taken out under the lock are dropped after it is released.
//! - `call_soon_threadsafe` may run on any thread (and on 3.13t truly in parallel): all shared state is
//!   behind the lock, and it wakes the poller only if the loop is blocked in (or about to block in) it;
//!   the loop decides to block under the same lock, so no wake-up is lost. The wake-up itself is
//!   written under the lock too: `close` closes the poller's descriptors under it (at once, not when
//!   the collector frees the loop), and a descriptor number is reused by the next `open`.
//! - Errors in callbacks go to the loop's exception handler; `SystemExit` and `KeyboardInterrupt`
//!   propagate out of `run_once` and the callbacks not yet run stay queued, as in asyncio.
//! - A descriptor whose last reader/writer is removed leaves the epoll set before the next wait, not at
//!   once (`State::lapsed`): psycopg removes its socket's reader after each reply and adds it back for
//!   the next query in the same callback, and that is then one `epoll_ctl` MOD instead of a DEL and an
//!   ADD (strace, /queries?n=20: 2.0 -> 1.07 `epoll_ctl` per query). Re-adding always MODs (ADD on
//!   ENOENT), so a descriptor closed and its number reused in between is watched correctly. The one
//!   thing this changes: closing a descriptor right after removing its reader, in the same callback,
//!   while a duplicate of it (`dup`, a forked child) stays open leaves it in the set; the kernel then
//!   reports it under a number we no longer watch (and wakes the loop while the duplicate is
//!   readable), as for any epoll user that closes before removing. asyncio's transports close a socket
//!   one iteration after removing its reader, so they never meet this.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pyo3::exceptions::{
    PyKeyError, PyKeyboardInterrupt, PyRuntimeError, PySystemExit, PyTypeError, PyValueError,
};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyInt, PyTuple};

use super::ffi::{copy_context, soon_builtin, Soon};
use crate::event_loop::{monotonic, Event, FdMap, Poller, TimerHeap};

/// asyncio's cap on one wait (`base_events.MAXIMUM_SELECT_TIMEOUT`).
const MAXIMUM_WAIT: f64 = 24.0 * 3600.0;
/// `time.get_clock_info('monotonic').resolution` on Linux: timers this close to now are due.
const CLOCK_RESOLUTION: f64 = 1e-9;
/// Cancelled timers are purged from the heap once they are this many and half of it (asyncio's rule).
const MIN_CANCELLED_TO_PURGE: usize = 100;

/// A scheduled call: `context.run(callback, *args)`.
struct Callback {
    /// `(context, callback, *args)`, built once so that running it is one vectorcall of the unbound
    /// `Context.run` (no bound method object, no argument tuple per run). Dropped by `cancel()`, as
    /// asyncio drops `_callback` and `_args`: a cancelled timer waits in the heap until its deadline or
    /// a purge, and must not keep what it would have called alive until then.
    run_args: Mutex<Option<Py<PyTuple>>>,
    context: Py<PyAny>,
    event_loop: Py<PyAny>,
    cancelled: AtomicBool,
    /// Where it was scheduled from: set by the Python side in debug mode only (asyncio's
    /// `Handle._source_traceback`).
    source_traceback: OnceLock<Py<PyAny>>,
}

/// `contextvars.Context.run`, the unbound method: `run(context, callback, *args)`.
fn context_run(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CONTEXT_RUN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CONTEXT_RUN
        .get_or_try_init(py, || {
            py.import("contextvars")?
                .getattr("Context")?
                .getattr("run")
                .map(Bound::unbind)
        })
        .map(|run| run.bind(py))
}

impl Callback {
    fn new(
        py: Python<'_>,
        event_loop: &Py<PyAny>,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let context = match context {
            Some(context) if !context.is_none(py) => context.into_bound(py),
            _ => copy_context(py)?,
        };
        let mut items = Vec::with_capacity(args.len() + 2);
        items.push(context);
        items.push(callback);
        items.extend(args.iter());
        Ok(Self::from_run_args(event_loop, PyTuple::new(py, items)?))
    }

    /// The call `run_args` = `(context, callback, *args)` says.
    fn from_run_args(event_loop: &Py<PyAny>, run_args: Bound<'_, PyTuple>) -> Self {
        let py = run_args.py();
        let context = run_args
            .get_item(0)
            .map_or_else(|_| py.None(), Bound::unbind);
        Self {
            run_args: Mutex::new(Some(run_args.unbind())),
            context,
            event_loop: event_loop.clone_ref(py),
            cancelled: AtomicBool::new(false),
            source_traceback: OnceLock::new(),
        }
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn run_args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        let run_args = self.run_args.lock().unwrap_or_else(|p| p.into_inner());
        run_args.as_ref().map(|args| args.clone_ref(py))
    }

    /// Marks the call cancelled and drops what it would have called; true if it was not cancelled.
    /// Never call with the reactor's lock held (a finalizer may run): see `cancel_into`.
    fn cancel(&self) -> bool {
        let mut garbage = Garbage::new();
        let first = self.cancel_into(&mut garbage);
        drop(garbage); // after the lock: a finalizer may run here
        first
    }

    /// `cancel`, leaving what it drops in `garbage` (for callers holding the reactor's lock).
    fn cancel_into(&self, garbage: &mut Garbage) -> bool {
        let first = !self.cancelled.swap(true, Ordering::AcqRel);
        let run_args = self
            .run_args
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        garbage.extend(run_args.map(Py::into_any));
        first
    }

    /// Runs the call unless cancelled; reports an exception to the loop's handler.
    fn run(&self, py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.cancelled() {
            return Ok(());
        }
        let Some(run_args) = self.run_args(py) else {
            return Ok(());
        };
        let result = context_run(py)?.call1(run_args.bind(py));
        match result {
            Ok(_) => Ok(()),
            Err(err) if leaves_the_loop(py, &err) => Err(err),
            Err(err) => {
                self.event_loop.bind(py).call_method1(
                    intern!(py, "_percore_callback_error"),
                    (handle, err.value(py)),
                )?;
                Ok(())
            }
        }
    }

    fn context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.clone_ref(py)
    }

    /// The callback, None once cancelled (asyncio's `_callback`).
    fn callback<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.run_args(py)
            .map(|args| args.into_bound(py).get_item(1))
            .transpose()
    }

    /// The arguments, None once cancelled (asyncio's `_args`).
    fn args<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyTuple>> {
        self.run_args(py).map(|args| {
            let args = args.into_bound(py);
            args.get_slice(2, args.len())
        })
    }

    fn repr(&self, py: Python<'_>, kind: &str, extra: &str) -> PyResult<String> {
        let mut info = vec![kind.to_owned()];
        if self.cancelled() {
            info.push("cancelled".into());
        }
        if !extra.is_empty() {
            info.push(extra.into());
        }
        if let Some(callback) = self.callback(py)? {
            let source = py
                .import(intern!(py, "asyncio.format_helpers"))?
                .call_method1(
                    intern!(py, "_format_callback_source"),
                    (callback, self.args(py)),
                )?;
            info.push(source.extract()?);
        }
        Ok(format!("<{}>", info.join(" ")))
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never block in the collector (see Reactor::__traverse__).
        if let Ok(run_args) = self.run_args.try_lock() {
            visit.call(&*run_args)?;
        }
        visit.call(&self.context)?;
        visit.call(&self.event_loop)?;
        visit.call(self.source_traceback.get())
    }

    fn source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.get().map(|tb| tb.clone_ref(py))
    }

    fn set_source_traceback(&self, traceback: Py<PyAny>) -> PyResult<()> {
        self.source_traceback
            .set(traceback)
            .map_err(|_| PyRuntimeError::new_err("the source traceback is already set"))
    }
}

/// asyncio's `Handle` API for a callback queued by `call_soon` or registered by `add_reader`/`add_writer`.
#[pyclass(frozen, module = "percore._runtime")]
pub(super) struct Handle {
    call: Callback,
}

#[pymethods]
impl Handle {
    fn cancel(&self) {
        self.call.cancel();
    }

    fn cancelled(&self) -> bool {
        self.call.cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.call.context(py)
    }

    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().call.run(slf.py(), slf.as_any())
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.call.cancelled()
    }

    #[getter]
    fn _callback<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.call.callback(py)
    }

    #[getter]
    fn _args<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyTuple>> {
        self.call.args(py)
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.call.context(py)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.call.event_loop.clone_ref(py)
    }

    /// Where the call was scheduled from (debug mode only, else None).
    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.call.source_traceback(py)
    }

    fn _set_source_traceback(&self, traceback: Py<PyAny>) -> PyResult<()> {
        self.call.set_source_traceback(traceback)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.call.repr(py, "Handle", "")
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.call.traverse(&visit)
    }
}

/// asyncio's `TimerHandle` API: a callback queued by `call_later`/`call_at`.
#[pyclass(frozen, module = "percore._runtime")]
pub(super) struct TimerHandle {
    call: Callback,
    when: f64,
    /// `OUT_OF_HEAP`, `IN_HEAP`, or `IN_HEAP_COUNTED` (cancelled, and counted in `cancelled_in_heap`):
    /// one atomic, so that a `cancel()` from another thread racing the loop taking the timer out of the
    /// heap either counts it and the loop uncounts it, or neither does (`leave_heap`).
    heap: AtomicU8,
    /// The reactor's count of cancelled timers still in its heap.
    cancelled_in_heap: Arc<AtomicIsize>,
}

const OUT_OF_HEAP: u8 = 0;
const IN_HEAP: u8 = 1;
const IN_HEAP_COUNTED: u8 = 2;

impl TimerHandle {
    /// The reactor took it out of its heap (due, purged, or the loop closed): uncounts it if `cancel`
    /// counted it.
    fn leave_heap(&self) {
        if self.heap.swap(OUT_OF_HEAP, Ordering::AcqRel) == IN_HEAP_COUNTED {
            self.cancelled_in_heap.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[pymethods]
impl TimerHandle {
    fn cancel(&self) {
        if self.call.cancel()
            && self
                .heap
                .compare_exchange(
                    IN_HEAP,
                    IN_HEAP_COUNTED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            self.cancelled_in_heap.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn cancelled(&self) -> bool {
        self.call.cancelled()
    }

    fn when(&self) -> f64 {
        self.when
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.call.context(py)
    }

    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().call.run(slf.py(), slf.as_any())
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.heap.load(Ordering::Acquire) != OUT_OF_HEAP
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.call.cancelled()
    }

    #[getter]
    fn _callback<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.call.callback(py)
    }

    #[getter]
    fn _args<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyTuple>> {
        self.call.args(py)
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.call.context(py)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.call.event_loop.clone_ref(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.call.source_traceback(py)
    }

    fn _set_source_traceback(&self, traceback: Py<PyAny>) -> PyResult<()> {
        self.call.set_source_traceback(traceback)
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        PyFloat::new(py, self.when).hash()
    }

    /// Ordered by deadline, like asyncio's; equal when the deadline, call and state are equal.
    fn __richcmp__(
        &self,
        py: Python<'_>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let other = other.get();
        let result = match op {
            CompareOp::Eq | CompareOp::Ne => {
                let equal = self.when == other.when
                    && self.call.cancelled() == other.call.cancelled()
                    && match (self.call.run_args(py), other.call.run_args(py)) {
                        (Some(a), Some(b)) => a.bind(py).eq(b.bind(py))?,
                        (a, b) => a.is_none() && b.is_none(),
                    };
                equal == matches!(op, CompareOp::Eq)
            }
            op => op.matches(self.when.total_cmp(&other.when)),
        };
        Ok(pyo3::types::PyBool::new(py, result)
            .to_owned()
            .into_any()
            .unbind())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.call
            .repr(py, "TimerHandle", &format!("when={}", self.when))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.call.traverse(&visit)
    }
}

/// How an iteration looks for I/O.
#[derive(Clone, Copy)]
enum Poll {
    /// Waits until I/O, the next timer or a wake-up (zero when callbacks are ready).
    Block,
    /// Looks without waiting (the server's driver: tokio did the waiting).
    Now,
    /// Does not look: the previous iteration just did.
    Skip,
}

enum Ready {
    Soon(Py<Handle>),
    Timer(Py<TimerHandle>),
}

impl Ready {
    /// In debug mode: asyncio's `_run_once` debug branch (`_current_handle`, slow-callback warning).
    fn run_debug(&self, py: Python<'_>, event_loop: &Py<PyAny>) -> PyResult<()> {
        event_loop
            .bind(py)
            .call_method1(intern!(py, "_percore_run_debug"), (self.object(),))?;
        Ok(())
    }

    fn run(&self, py: Python<'_>) -> PyResult<()> {
        match self {
            Ready::Soon(handle) => handle.get().call.run(py, handle.bind(py).as_any()),
            Ready::Timer(timer) => timer.get().call.run(py, timer.bind(py).as_any()),
        }
    }

    fn object(&self) -> &Py<PyAny> {
        match self {
            Ready::Soon(handle) => handle.as_any(),
            Ready::Timer(timer) => timer.as_any(),
        }
    }
}

/// A descriptor's reader and writer callbacks.
#[derive(Default)]
struct Watch {
    reader: Option<Py<Handle>>,
    writer: Option<Py<Handle>>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Ready>,
    /// An empty deque kept to swap with `ready` at the start of an iteration (no allocation).
    spare: VecDeque<Ready>,
    timers: TimerHeap<Py<TimerHandle>>,
    io: FdMap<Watch>,
    events: Vec<Event>,
    /// Descriptors whose last reader/writer went away in this iteration: still in the epoll set until
    /// `flush_lapsed`, before the next wait. See `unwatch_locked`.
    lapsed: Vec<RawFd>,
    stopping: bool,
    /// The loop is blocked in (or has decided to block in) `Poller::wait`.
    sleeping: bool,
    /// An iteration is between deciding to poll and having polled: `close` leaves the poller's
    /// descriptors to that iteration (no descriptor is closed while a wait uses it).
    polling: bool,
    closed: bool,
    /// Called (no arguments) once the running iteration's callbacks are done: the flushes of the
    /// transport writes queued meanwhile. See `after_callbacks`.
    after: Vec<Py<PyAny>>,
}

/// Python objects taken out of the state under its lock, dropped once it is released.
type Garbage = Vec<Py<PyAny>>;

/// The reactor of one `percore.EventLoop`. See the module docs.
#[pyclass(frozen, module = "percore._runtime")]
pub(super) struct Reactor {
    poller: Poller,
    state: Mutex<State>,
    event_loop: Py<PyAny>,
    cancelled_in_heap: Arc<AtomicIsize>,
    /// The loop's debug mode: callbacks then run through `_percore_run_debug` (timed, logged if slow).
    debug: AtomicBool,
    /// `loop._transports.data`: fd -> weak reference to the transport that owns it (asyncio's
    /// `WeakValueDictionary`), for the public `add_reader` & co. (`no_transport`).
    transports: PyOnceLock<Py<PyDict>>,
    /// `thread_token()` of the thread running an iteration's callbacks, 0 otherwise: a transport's
    /// small write made by it now is queued and sent after them (`after_callbacks`,
    /// python/transport.rs); one from another thread (asyncio's transports are not thread-safe, but a
    /// misuse must not leave data unsent) is not.
    in_callbacks: AtomicUsize,
}

/// A number unique to the calling thread among live threads, never 0 (the address of a thread-local).
fn thread_token() -> usize {
    thread_local!(static TOKEN: u8 = const { 0 });
    TOKEN.with(|token| token as *const u8 as usize)
}

/// asyncio's rule for an exception out of a callback: `SystemExit` and `KeyboardInterrupt` leave the
/// loop (`run_once`), anything else goes to the exception handler.
pub(super) fn leaves_the_loop(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

impl Reactor {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held leaves plain data (queues, maps): still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, ready: Ready, wake: bool) -> PyResult<()> {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            drop(ready);
            return Err(closed_error());
        }
        state.ready.push_back(ready);
        if wake && state.sleeping {
            // Under the lock: `close` closes the eventfd under it too.
            self.poller.wake()?;
        }
        Ok(())
    }

    fn soon(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
        threadsafe: bool,
    ) -> PyResult<Py<Handle>> {
        let call = Callback::new(py, &self.event_loop, callback, args, context)?;
        self.soon_handle(py, call, threadsafe)
    }

    fn soon_handle(
        &self,
        py: Python<'_>,
        call: Callback,
        threadsafe: bool,
    ) -> PyResult<Py<Handle>> {
        let handle = Py::new(py, Handle { call })?;
        self.push(Ready::Soon(handle.clone_ref(py)), threadsafe)?;
        Ok(handle)
    }

    /// The Rust side of the loop's `call_soon` builtin (`ffi::soon_builtin`).
    fn soon_builtin_call<'py>(
        reactor: &Bound<'py, PyAny>,
        run_args: Bound<'py, PyTuple>,
        threadsafe: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = reactor.py();
        let reactor = reactor.cast::<Reactor>()?.get();
        let call = Callback::from_run_args(&reactor.event_loop, run_args);
        Ok(reactor
            .soon_handle(py, call, threadsafe)?
            .into_bound(py)
            .into_any())
    }

    fn timer(
        &self,
        py: Python<'_>,
        when: f64,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let call = Callback::new(py, &self.event_loop, callback, args, context)?;
        let timer = Py::new(
            py,
            TimerHandle {
                call,
                when,
                heap: AtomicU8::new(IN_HEAP),
                cancelled_in_heap: self.cancelled_in_heap.clone(),
            },
        )?;
        let entry = timer.clone_ref(py);
        let mut state = self.lock();
        if state.closed {
            drop(state);
            drop(entry);
            return Err(closed_error());
        }
        state.timers.push(when, entry);
        // A new earliest deadline must shorten a wait in progress (a timer set from another thread).
        // Under the lock: `close` closes the eventfd under it too.
        if state.sleeping && state.timers.peek().is_some_and(|(w, _)| w == when) {
            self.poller.wake()?;
        }
        drop(state);
        Ok(timer)
    }

    /// A new handle for `callback(*args)`, registered as `fd`'s reader or writer.
    fn watch_new(
        &self,
        py: Python<'_>,
        fd: RawFd,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        write: bool,
    ) -> PyResult<Py<Handle>> {
        let call = Callback::new(py, &self.event_loop, callback, args, None)?;
        let handle = Py::new(py, Handle { call })?;
        self.watch(fd, handle.clone_ref(py), write)?;
        Ok(handle)
    }

    /// Registers `handle` as `fd`'s reader or writer; the one it replaces is cancelled.
    fn watch(&self, fd: RawFd, handle: Py<Handle>, write: bool) -> PyResult<()> {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            drop(handle);
            return Err(closed_error());
        }
        let mut registered = state.io.contains_key(&fd);
        if let Some(at) = state.lapsed.iter().position(|&lapsed| lapsed == fd) {
            // Still in the epoll set, unless it was closed (and maybe reused) since: MOD, else ADD.
            state.lapsed.swap_remove(at);
            registered = true;
        }
        let watch = state.io.entry(fd).or_default();
        let slot = if write {
            &mut watch.writer
        } else {
            &mut watch.reader
        };
        let old = slot.replace(handle);
        let (read, write_) = (watch.reader.is_some(), watch.writer.is_some());
        if let Err(err) = self.poller.set_interest(fd, read, write_, registered) {
            // Undo: the registration did not happen.
            let watch = state.io.get_mut(&fd).expect("just inserted");
            let slot = if write {
                &mut watch.writer
            } else {
                &mut watch.reader
            };
            let new = std::mem::replace(slot, old);
            let empty = watch.reader.is_none() && watch.writer.is_none();
            if empty {
                state.io.remove(&fd);
            }
            drop(state);
            drop(new);
            return Err(err.into());
        }
        drop(state);
        if let Some(old) = old {
            old.get().cancel();
        }
        Ok(())
    }

    /// Removes `fd`'s reader or writer (into `garbage`); false if there was none. Lock held by caller.
    fn unwatch_locked(
        state: &mut State,
        poller: &Poller,
        fd: RawFd,
        write: bool,
        garbage: &mut Garbage,
    ) -> bool {
        let Some(watch) = state.io.get_mut(&fd) else {
            return false;
        };
        let slot = if write {
            &mut watch.writer
        } else {
            &mut watch.reader
        };
        let Some(old) = slot.take() else {
            return false;
        };
        old.get().call.cancel_into(garbage);
        garbage.push(old.into_any());
        let (read, write) = (watch.reader.is_some(), watch.writer.is_some());
        if !read && !write {
            // Leave it in the epoll set until the next wait: a database driver removes its socket's
            // reader after every reply and adds it back for the next query in the same callback, and
            // one MOD then replaces a DEL and an ADD.
            state.io.remove(&fd);
            state.lapsed.push(fd);
            return true;
        }
        // The descriptor may already be closed (the kernel dropped it from the set): nothing to undo.
        let _ = poller.set_interest(fd, read, write, true);
        true
    }

    /// Takes the descriptors that lost their last reader or writer out of the epoll set. Lock held.
    fn flush_lapsed(state: &mut State, poller: &Poller) {
        for fd in state.lapsed.drain(..) {
            // Already closed: the kernel dropped it from the set.
            let _ = poller.set_interest(fd, false, false, true);
        }
    }

    fn unwatch(&self, fd: RawFd, write: bool) -> bool {
        let mut garbage = Garbage::new();
        let mut state = self.lock();
        let removed = !state.closed
            && Self::unwatch_locked(&mut state, &self.poller, fd, write, &mut garbage);
        drop(state);
        drop(garbage);
        removed
    }

    /// Drops cancelled timers from the heap's head, and purges them all when they are most of it.
    fn purge_cancelled(&self, state: &mut State, garbage: &mut Garbage) {
        let cancelled = self.cancelled_in_heap.load(Ordering::Relaxed).max(0) as usize;
        if state.timers.len() > MIN_CANCELLED_TO_PURGE && cancelled * 2 > state.timers.len() {
            for timer in state.timers.extract_if(|t| !t.get().call.cancelled()) {
                timer.get().leave_heap();
                garbage.push(timer.into_any());
            }
        }
        while state
            .timers
            .peek()
            .is_some_and(|(_, t)| t.get().call.cancelled())
        {
            let timer = state.timers.pop().expect("peeked");
            timer.get().leave_heap();
            garbage.push(timer.into_any());
        }
    }

    /// Seconds to wait for I/O (0: callbacks are ready or a stop is pending; None: no timer).
    fn wait_seconds(state: &State) -> Option<f64> {
        if !state.ready.is_empty() || state.stopping {
            Some(0.0)
        } else {
            state
                .timers
                .peek()
                .map(|(when, _)| (when - monotonic()).clamp(0.0, MAXIMUM_WAIT))
        }
    }

    /// `wait_seconds`, and marks the loop asleep if it is to wait: decided under the lock that
    /// `call_soon_threadsafe` takes, so no wake-up falls between the decision and the wait.
    fn park_locked(&self, state: &mut State, garbage: &mut Garbage) -> Option<f64> {
        Self::flush_lapsed(state, &self.poller);
        self.purge_cancelled(state, garbage);
        let timeout = Self::wait_seconds(state);
        state.sleeping = timeout != Some(0.0);
        timeout
    }

    /// One iteration (`Poll::Block` or `Poll::Now`) and, if it ran I/O callbacks or timers and left
    /// callbacks ready, one more that does not poll (see the module doc).
    fn iterate(&self, py: Python<'_>, poll: Poll) -> PyResult<()> {
        if self.iterate_once(py, poll)? {
            let again = {
                let state = self.lock();
                !state.stopping && !state.ready.is_empty()
            };
            if again {
                self.iterate_once(py, Poll::Skip)?;
            }
        }
        Ok(())
    }

    /// One iteration: wait for I/O as `poll` says (never longer than the next timer), queue what is
    /// ready and due, run the callbacks that were ready when the iteration started. Returns whether
    /// that included an I/O callback or a timer.
    fn iterate_once(&self, py: Python<'_>, poll: Poll) -> PyResult<bool> {
        let mut garbage = Garbage::new();
        let (timeout, mut events) = {
            let mut state = self.lock();
            if state.closed {
                return Err(closed_error());
            }
            let timeout = match poll {
                Poll::Block => self
                    .park_locked(&mut state, &mut garbage)
                    .map(Duration::from_secs_f64),
                // Skip flushes too: a transport removes its reader in an I/O callback (EOF) and
                // closes the socket in the next iteration, which may be this one.
                Poll::Now | Poll::Skip => {
                    Self::flush_lapsed(&mut state, &self.poller);
                    Some(Duration::ZERO)
                }
            };
            state.polling = !matches!(poll, Poll::Skip);
            (timeout, std::mem::take(&mut state.events))
        };
        drop(garbage);
        events.clear();
        let waited = match poll {
            Poll::Skip => Ok(()),
            _ if timeout == Some(Duration::ZERO) => self.poller.wait(&mut events, timeout),
            _ => {
                let poller = &self.poller;
                py.detach(|| poller.wait(&mut events, timeout))
            }
        };
        let mut garbage = Garbage::new();
        let mut woken = false;
        let mut batch = {
            let mut state = self.lock();
            state.sleeping = false;
            state.polling = false;
            if state.closed {
                // Closed during the wait (from another thread): the descriptors were left to us.
                self.poller.close();
                return Err(closed_error());
            }
            for event in &events {
                let Some(watch) = state.io.get(&event.fd) else {
                    continue;
                };
                let reader = watch.reader.as_ref().filter(|_| event.readable);
                let writer = watch.writer.as_ref().filter(|_| event.writable);
                let (reader, writer) = (
                    reader.map(|h| (h.get().call.cancelled(), h.clone_ref(py))),
                    writer.map(|h| (h.get().call.cancelled(), h.clone_ref(py))),
                );
                for (handle, write) in [(reader, false), (writer, true)] {
                    match handle {
                        Some((true, handle)) => {
                            garbage.push(handle.into_any());
                            Self::unwatch_locked(
                                &mut state,
                                &self.poller,
                                event.fd,
                                write,
                                &mut garbage,
                            );
                        }
                        Some((false, handle)) => {
                            woken = true;
                            state.ready.push_back(Ready::Soon(handle));
                        }
                        None => {}
                    }
                }
            }
            state.events = events;
            let end = monotonic() + CLOCK_RESOLUTION;
            while let Some((when, timer)) = state.timers.peek() {
                if timer.get().call.cancelled() {
                    self.purge_cancelled(&mut state, &mut garbage);
                    continue;
                }
                if when >= end {
                    break;
                }
                let timer = state.timers.pop().expect("peeked");
                timer.get().leave_heap();
                woken = true;
                state.ready.push_back(Ready::Timer(timer));
            }
            let spare = std::mem::take(&mut state.spare);
            std::mem::replace(&mut state.ready, spare)
        };
        drop(garbage);
        if let Err(err) = waited {
            if err.kind() != std::io::ErrorKind::Interrupted {
                self.requeue(batch);
                return Err(err.into());
            }
            // A signal: run Python's handlers now (KeyboardInterrupt comes out of here).
            if let Err(err) = py.check_signals() {
                self.requeue(batch);
                return Err(err);
            }
        }
        let debug = self.debug.load(Ordering::Relaxed);
        self.in_callbacks.store(thread_token(), Ordering::Relaxed);
        let mut failed = None;
        while let Some(ready) = batch.pop_front() {
            let ran = if debug {
                ready.run_debug(py, &self.event_loop)
            } else {
                ready.run(py)
            };
            if let Err(err) = ran {
                drop(ready);
                failed = Some(err);
                break;
            }
        }
        self.in_callbacks.store(0, Ordering::Relaxed);
        let flushed = self.run_after_callbacks(py);
        if let Some(err) = failed {
            self.requeue(batch);
            return Err(err);
        }
        flushed?;
        let mut state = self.lock();
        if state.spare.capacity() == 0 {
            state.spare = batch;
        }
        Ok(woken)
    }

    /// asyncio's `_ensure_fd_no_transport` and `selectors._fileobj_to_fd`, same errors: the descriptor
    /// of `fileobj`, unless a transport that is not closing owns it.
    fn no_transport(&self, py: Python<'_>, fileobj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
        let invalid_object = || -> PyErr {
            match fileobj.repr() {
                Ok(repr) => PyValueError::new_err(format!("Invalid file object: {repr}")),
                Err(err) => err,
            }
        };
        let number = if fileobj.is_instance_of::<PyInt>() {
            fileobj.clone()
        } else {
            fileobj
                .call_method0(intern!(py, "fileno"))
                .and_then(|n| py.get_type::<PyInt>().call1((n,)))
                .map_err(|_| invalid_object())?
        };
        if let Some(transports) = self.transports.get(py) {
            if let Some(reference) = transports.bind(py).get_item(&number)? {
                let transport = reference.call0()?;
                if !transport.is_none()
                    && !transport
                        .call_method0(intern!(py, "is_closing"))?
                        .is_truthy()?
                {
                    return Err(PyRuntimeError::new_err(format!(
                        "File descriptor {} is used by transport {}",
                        fileobj.repr()?,
                        transport.repr()?
                    )));
                }
            }
        }
        let fd: i64 = number.extract()?;
        match RawFd::try_from(fd) {
            Ok(fd) if fd >= 0 => Ok(fd),
            _ => Err(PyValueError::new_err(format!(
                "Invalid file descriptor: {fd}"
            ))),
        }
    }

    /// For the server's driver (python/driver.rs), about to wait in tokio: `park`, after clearing a
    /// pending `stop()` (there is no `run_forever` to end; a stop only ends the current iteration, as
    /// it does for asyncio's loop on a loop thread).
    pub(super) fn park_outer(&self) -> Option<f64> {
        let mut garbage = Garbage::new();
        let mut state = self.lock();
        state.stopping = false;
        let timeout = self.park_locked(&mut state, &mut garbage);
        drop(state);
        drop(garbage);
        timeout
    }

    /// For the server's driver: one iteration that does not wait (tokio did the waiting).
    pub(super) fn step(&self, py: Python<'_>) -> PyResult<()> {
        self.iterate(py, Poll::Now)
    }

    /// For the server's driver: `(ready callbacks, timers in the heap)`.
    pub(super) fn pending(&self) -> (usize, usize) {
        let state = self.lock();
        (state.ready.len(), state.timers.len())
    }

    /// Whether the loop thread is running an iteration's callbacks (for python/transport.rs: writes
    /// made then are sent together after them).
    pub(super) fn running_callbacks(&self) -> bool {
        self.in_callbacks.load(Ordering::Relaxed) == thread_token()
    }

    /// Removes `fd`'s writer, if it has one (python/transport.rs: a flush that emptied a buffer a
    /// writer callback was registered for, as asyncio's `_write_ready` does when it empties one).
    pub(super) fn drop_writer(&self, fd: RawFd) -> bool {
        self.unwatch(fd, true)
    }

    /// Queues `callback()` for when the running iteration's callbacks are done (before its next
    /// poll). Used by transports to send the small writes of an iteration back to back, as uvloop
    /// does (its `_exec_queued_writes`): sent at once, each at the end of its own task step, a
    /// burst of database queries reached PostgreSQL's core 46 us apart (median, asyncpg
    /// `/queries`), which went idle between them and had to be woken by an inter-processor interrupt
    /// each time (8.8-10 per request against uvloop's 4.4; docs/benchmarks.md).
    pub(super) fn after_callbacks(&self, callback: Py<PyAny>) -> PyResult<()> {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            drop(callback);
            return Err(closed_error());
        }
        state.after.push(callback);
        Ok(())
    }

    /// Runs what `after_callbacks` queued; an exception goes to the loop's exception handler, as a
    /// callback's would, except `KeyboardInterrupt` and `SystemExit`, which leave the iteration once
    /// the rest has run, as they do from a callback.
    fn run_after_callbacks(&self, py: Python<'_>) -> PyResult<()> {
        let after = std::mem::take(&mut self.lock().after);
        let mut escaping = None;
        for callback in after {
            if let Err(err) = callback.bind(py).call0() {
                if leaves_the_loop(py, &err) {
                    escaping.get_or_insert(err);
                    continue;
                }
                let context = PyDict::new(py);
                let reported = context
                    .set_item("message", "Exception in a transport's queued write")
                    .and_then(|()| context.set_item("exception", err.value(py)))
                    .and_then(|()| {
                        self.event_loop
                            .bind(py)
                            .call_method1(intern!(py, "call_exception_handler"), (context,))
                    });
                if let Err(err) = reported {
                    err.print(py);
                }
            }
        }
        escaping.map_or(Ok(()), Err)
    }

    /// Puts callbacks an interrupted iteration did not run back at the front of the queue.
    fn requeue(&self, mut batch: VecDeque<Ready>) {
        let mut state = self.lock();
        batch.append(&mut state.ready);
        state.ready = batch;
    }
}

#[pymethods]
impl Reactor {
    #[new]
    fn new(event_loop: Py<PyAny>) -> PyResult<Self> {
        Ok(Self {
            poller: Poller::new()?,
            state: Mutex::new(State::default()),
            event_loop,
            cancelled_in_heap: Arc::new(AtomicIsize::new(0)),
            debug: AtomicBool::new(false),
            transports: PyOnceLock::new(),
            in_callbacks: AtomicUsize::new(0),
        })
    }

    /// Gives the reactor `loop._transports.data` (see `add_reader_checked`); once.
    fn bind_transports(&self, py: Python<'_>, data: Bound<'_, PyDict>) -> PyResult<()> {
        self.transports
            .set(py, data.unbind())
            .map_err(|_| PyRuntimeError::new_err("transports already bound"))
    }

    /// asyncio's public `add_reader` (`_ensure_fd_no_transport`, then `_add_reader`) in one call:
    /// database drivers add and remove their socket's reader around every query.
    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader_checked(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        let fd = self.no_transport(py, fd)?;
        self.watch_new(py, fd, callback, args, false).map(drop)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer_checked(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        let fd = self.no_transport(py, fd)?;
        self.watch_new(py, fd, callback, args, true).map(drop)
    }

    fn remove_reader_checked(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        let fd = self.no_transport(py, fd)?;
        Ok(self.unwatch(fd, false))
    }

    fn remove_writer_checked(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        let fd = self.no_transport(py, fd)?;
        Ok(self.unwatch(fd, true))
    }

    /// `call_soon` (`threadsafe`: `call_soon_threadsafe`) as a builtin that parses its arguments
    /// itself (`ffi::soon_builtin`): what the loop binds as its own in its fast path.
    fn soon_function<'py>(slf: &Bound<'py, Self>, threadsafe: bool) -> PyResult<Bound<'py, PyAny>> {
        if threadsafe {
            soon_builtin(slf.as_any(), Soon::Threadsafe, |reactor, run_args| {
                Reactor::soon_builtin_call(reactor, run_args, true)
            })
        } else {
            soon_builtin(slf.as_any(), Soon::Soon, |reactor, run_args| {
                Reactor::soon_builtin_call(reactor, run_args, false)
            })
        }
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        self.soon(py, callback, args, context, false)
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        self.soon(py, callback, args, context, true)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        &self,
        py: Python<'_>,
        delay: Option<f64>,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let delay = delay.ok_or_else(|| PyTypeError::new_err("delay must not be None"))?;
        self.timer(py, monotonic() + delay, callback, args, context)
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        &self,
        py: Python<'_>,
        when: Option<f64>,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let when = when.ok_or_else(|| PyTypeError::new_err("when cannot be None"))?;
        self.timer(py, when, callback, args, context)
    }

    /// `time.monotonic()`, the loop's clock.
    fn time(&self) -> f64 {
        monotonic()
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        &self,
        py: Python<'_>,
        fd: RawFd,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        self.watch_new(py, fd, callback, args, false)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(
        &self,
        py: Python<'_>,
        fd: RawFd,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        self.watch_new(py, fd, callback, args, true)
    }

    fn remove_reader(&self, fd: RawFd) -> bool {
        self.unwatch(fd, false)
    }

    fn remove_writer(&self, fd: RawFd) -> bool {
        self.unwatch(fd, true)
    }

    /// `(events, reader, writer)` for a watched descriptor (`events` as in `selectors`: 1 read, 2 write).
    #[allow(clippy::type_complexity)]
    fn get_key(
        &self,
        py: Python<'_>,
        fd: RawFd,
    ) -> PyResult<(u8, Option<Py<Handle>>, Option<Py<Handle>>)> {
        let state = self.lock();
        let watch = state
            .io
            .get(&fd)
            .ok_or_else(|| PyKeyError::new_err(format!("{fd} is not registered")))?;
        let events = u8::from(watch.reader.is_some()) | (u8::from(watch.writer.is_some()) << 1);
        Ok((
            events,
            watch.reader.as_ref().map(|h| h.clone_ref(py)),
            watch.writer.as_ref().map(|h| h.clone_ref(py)),
        ))
    }

    /// The watched descriptors.
    fn fds(&self) -> Vec<RawFd> {
        self.lock().io.keys().copied().collect()
    }

    /// One loop iteration (asyncio's `_run_once`), never followed by one that skips the poll: code
    /// that steps the loop itself gets exactly asyncio's iterations.
    ///
    /// `block=False` never waits: an outer reactor (tokio) that watches `fileno()` and `timeout()`
    /// did the waiting.
    #[pyo3(signature = (block=true))]
    fn run_once(&self, py: Python<'_>, block: bool) -> PyResult<()> {
        let poll = if block { Poll::Block } else { Poll::Now };
        self.iterate_once(py, poll).map(drop)
    }

    /// Iterates until `stop()` (the Python side does `run_forever`'s setup and cleanup).
    fn run_forever(&self, py: Python<'_>) -> PyResult<()> {
        let result = loop {
            if let Err(err) = self.iterate(py, Poll::Block) {
                break Err(err);
            }
            if self.lock().stopping {
                break Ok(());
            }
        };
        self.lock().stopping = false;
        result
    }

    /// Debug mode: callbacks run through the loop's `_percore_run_debug`.
    fn set_debug(&self, enabled: bool) {
        self.debug.store(enabled, Ordering::Relaxed);
    }

    /// Makes `run_forever` return after the current iteration (the next one, if none is running).
    fn stop(&self) {
        self.lock().stopping = true;
    }

    fn is_stopping(&self) -> bool {
        self.lock().stopping
    }

    /// Interrupts a blocking wait (for signals; thread-safe). Nothing once closed, as asyncio's
    /// `_write_to_self` does nothing then.
    fn wakeup(&self) -> PyResult<()> {
        let state = self.lock();
        if !state.closed {
            self.poller.wake()?;
        }
        Ok(())
    }

    /// The epoll descriptor: readable when an iteration would find I/O ready (-1 once closed).
    pub(super) fn fileno(&self) -> RawFd {
        self.poller.as_raw_fd()
    }

    /// Seconds until the loop must iterate again: 0 if callbacks are ready, None if only I/O can wake it.
    fn timeout(&self) -> Option<f64> {
        let mut garbage = Garbage::new();
        let mut state = self.lock();
        self.purge_cancelled(&mut state, &mut garbage);
        let timeout = Self::wait_seconds(&state);
        drop(state);
        drop(garbage);
        timeout
    }

    /// For an outer reactor (tokio) about to wait on `fileno()` for `timeout()` seconds (returned):
    /// until the next `run_once`, `call_soon_threadsafe` and a new earliest timer write the eventfd, so
    /// `fileno()` turns readable. Without it they assume the loop is running and will see them.
    fn park(&self) -> Option<f64> {
        let mut garbage = Garbage::new();
        let mut state = self.lock();
        let timeout = self.park_locked(&mut state, &mut garbage);
        drop(state);
        drop(garbage);
        timeout
    }

    /// Cancelled timers still in the heap, as counted for purging (tests check it stays exact).
    fn cancelled_timers(&self) -> isize {
        self.cancelled_in_heap.load(Ordering::Relaxed)
    }

    /// `(ready callbacks, timers in the heap, watched descriptors)`.
    fn counts(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (state.ready.len(), state.timers.len(), state.io.len())
    }

    /// Drops every queued callback, timer and registration and closes the epoll descriptor and the
    /// eventfd (at once, not when the collector frees the loop); later scheduling raises RuntimeError.
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let ready = std::mem::take(&mut state.ready);
        let timers = state.timers.drain();
        let io = std::mem::take(&mut state.io);
        let after = std::mem::take(&mut state.after);
        if state.polling {
            // Another thread is in `wait` (only a direct call can close a running loop): unregister,
            // wake it, and that iteration closes the descriptors when it takes the lock again.
            Self::flush_lapsed(&mut state, &self.poller);
            for fd in io.keys() {
                let _ = self.poller.set_interest(*fd, false, false, true);
            }
            let _ = self.poller.wake();
        } else {
            // Closing the epoll descriptor drops every registration with it.
            state.lapsed.clear();
            self.poller.close();
        }
        drop(state);
        for timer in &timers {
            timer.get().leave_heap();
        }
        drop((ready, timers, io, after));
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        // Never block in the collector: if another thread holds the lock, what it guards is simply
        // not reported (the collector then treats those objects as reachable; nothing is freed early).
        let Ok(state) = self.state.try_lock() else {
            return Ok(());
        };
        for ready in &state.ready {
            visit.call(ready.object())?;
        }
        for timer in state.timers.iter() {
            visit.call(timer)?;
        }
        for watch in state.io.values() {
            visit.call(&watch.reader)?;
            visit.call(&watch.writer)?;
        }
        for callback in &state.after {
            visit.call(callback)?;
        }
        Ok(())
    }
}
