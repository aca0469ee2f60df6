//! The sync handler pool: threads that run native `def` handlers, so a handler that computes or blocks
//! (a sync HTTP call, `time.sleep`, a sync database driver) never holds up its loop, which keeps
//! accepting, reading, routing and running `async def` handlers meanwhile.
//!
//! The loop binds the parameters (422/400 never leave it), copies the Context and sends a `SyncCall`
//! over one bounded channel per process; a pool thread calls the handler inside that Context and turns a
//! plain return value into the `HttpResponse` there (JSON included). What needs the loop — a coroutine
//! (a `def` that returned one), a `percore.Response` (it may stream from the loop), an exception (the app's
//! exception handlers) — goes back to the loop as the Python value. Either way the result travels over a
//! oneshot, whose wake-up is the loop's tokio waking from epoll: the loop never waits for the pool.
//!
//! Invariants: each pool thread attaches to the interpreter once for its life and waits for work
//! detached (as loop threads do); the channel is bounded (`QUEUE`), and a loop whose call does not fit
//! awaits room instead of queueing without bound; a call whose client left before a thread took it is
//! dropped without running. Each call carries a `SyncHold` (its --max-in-flight guard and its loop's count
//! of offloaded calls) that is released only when the call's work ends — on the pool thread, or on the
//! loop after it handled the outcome — so a client leaving never frees the slot of a handler still
//! running, and a stopping loop waits for its offloaded calls before its shutdown hooks (`Offloaded`).
//! A handler that panics the Rust side is answered 500 and the thread lives on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::sync::{oneshot, Notify};

use super::response::to_response;
use super::task::in_context;
use crate::exchange::HttpResponse;
use crate::routing::InFlight;

/// A loop's offloaded calls that have not ended, so its shutdown waits for them like for its tasks.
#[derive(Default)]
pub(super) struct Offloaded {
    count: AtomicUsize,
    /// Notified (`notify_waiters`) when `count` drops to zero.
    pub(super) none: Notify,
}

impl Offloaded {
    pub(super) fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Counts one call until the returned hold is dropped.
    pub(super) fn hold(self: &Arc<Self>, in_flight: Option<InFlight>) -> SyncHold {
        self.count.fetch_add(1, Ordering::AcqRel);
        SyncHold {
            in_flight,
            offloaded: Arc::clone(self),
        }
    }
}

/// What an offloaded call keeps taken until its work ends (see the module docs).
pub(super) struct SyncHold {
    in_flight: Option<InFlight>,
    offloaded: Arc<Offloaded>,
}

impl SyncHold {
    /// The --max-in-flight guard, for work the loop continues (a coroutine the handler returned).
    pub(super) fn take_in_flight(&mut self) -> Option<InFlight> {
        self.in_flight.take()
    }
}

impl Drop for SyncHold {
    fn drop(&mut self) {
        if self.offloaded.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.offloaded.none.notify_waiters();
        }
    }
}

/// Calls waiting for a pool thread, for the whole process. A loop whose call does not fit waits.
pub(super) const QUEUE: usize = 1024;

/// The default number of pool threads: `2 × loops`, at least 4. On 3.13t CPU-bound handlers run in
/// parallel on every core (one thread per loop would do); the second half is for handlers that block on
/// I/O, which hold a thread without using a core. A waiting thread costs a stack and nothing else.
pub(super) fn default_threads(loops: usize) -> usize {
    (2 * loops).max(4)
}

/// A `def` handler's call, bound on the loop, run on a pool thread.
pub(super) struct SyncCall {
    pub(super) function: Py<PyAny>,
    pub(super) kwargs: Option<Py<PyDict>>,
    /// The request's own copy of the loop's Context.
    pub(super) context: Py<PyAny>,
    pub(super) status_code: u16,
    /// The outcome and the hold, which the loop drops once it has handled the outcome.
    pub(super) reply: oneshot::Sender<(SyncOutcome, SyncHold)>,
    pub(super) hold: SyncHold,
}

/// What a pool thread hands back to the loop.
pub(super) enum SyncOutcome {
    /// A plain value, already converted.
    Response(HttpResponse),
    /// The value needs the loop: a coroutine to step (in the request's Context, given back with it), or a
    /// `percore.Response` (it may stream from the loop).
    OnLoop(Py<PyAny>, Py<PyAny>),
    /// The handler raised: the app's exception handlers decide, on the loop.
    Raised(PyErr),
    /// The value could not be converted (a logged 500, on the loop).
    Unconvertible(PyErr),
}

impl SyncCall {
    fn run(self, py: Python<'_>, response_class: &Py<PyAny>) {
        let SyncCall {
            function,
            kwargs,
            context,
            status_code,
            reply,
            hold,
        } = self;
        if reply.is_closed() {
            return; // the client went away while the call was queued
        }
        // A panic is answered 500 (the reply is dropped) and the thread lives on.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            Self::call(py, function, kwargs, context, status_code, response_class)
        }));
        if let Ok(outcome) = outcome {
            // Refused (the client left): the hold is released here, as the handler has finished.
            let _ = reply.send((outcome, hold));
        }
    }

    fn call(
        py: Python<'_>,
        function: Py<PyAny>,
        kwargs: Option<Py<PyDict>>,
        context: Py<PyAny>,
        status_code: u16,
        response_class: &Py<PyAny>,
    ) -> SyncOutcome {
        let function = function.bind(py);
        let called = in_context(context.bind(py), || match &kwargs {
            None => function.call0(),
            Some(kwargs) => function.call(PyTuple::empty(py), Some(kwargs.bind(py))),
        })
        .and_then(|called| called);
        match called {
            Err(err) => SyncOutcome::Raised(err),
            Ok(value) => {
                let response_class = response_class.bind(py);
                let coroutine = super::ffi::is_coroutine(&value);
                if coroutine || value.is_instance(response_class).unwrap_or(true) {
                    SyncOutcome::OnLoop(value.unbind(), context.clone_ref(py))
                } else {
                    match to_response(&value, status_code, response_class, None) {
                        Ok(response) => SyncOutcome::Response(response),
                        Err(err) => SyncOutcome::Unconvertible(err),
                    }
                }
            }
        }
    }
}

/// The process's pool threads and the channel that feeds them.
pub(super) struct SyncPool {
    calls: async_channel::Sender<SyncCall>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl SyncPool {
    /// Starts `threads` pool threads ("percore-sync-i"), not pinned: the scheduler puts them on whichever
    /// core is free, loops' cores included while those wait in epoll.
    /// `response_class`: `percore.Response`, whose instances are converted on the loop.
    pub(super) fn start(
        threads: usize,
        response_class: Py<PyAny>,
    ) -> std::io::Result<Arc<SyncPool>> {
        let response_class = Arc::new(response_class);
        let (calls, queued) = async_channel::bounded::<SyncCall>(QUEUE);
        let pool = Arc::new(SyncPool {
            calls,
            threads: Mutex::new(Vec::with_capacity(threads)),
        });
        for index in 0..threads {
            let queued = queued.clone();
            let response_class = Arc::clone(&response_class);
            let thread = std::thread::Builder::new()
                .name(format!("percore-sync-{index}"))
                .spawn(move || {
                    // Attached once for the thread's life; waiting for work happens detached.
                    Python::attach(|py| {
                        py.detach(|| {
                            while let Ok(call) = queued.recv_blocking() {
                                Python::attach(|py| call.run(py, &response_class));
                            }
                        })
                    });
                });
            match thread {
                Ok(thread) => pool.threads.lock().unwrap().push(thread),
                Err(e) => {
                    pool.close(Duration::ZERO);
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// The sending side, for a loop.
    pub(super) fn sender(&self) -> async_channel::Sender<SyncCall> {
        self.calls.clone()
    }

    /// Stops taking calls and waits up to `grace` for the threads to finish the ones they run. A handler
    /// still blocked after that (it cannot be interrupted) is left to the process's exit. Call detached.
    pub(super) fn close(&self, grace: Duration) {
        self.calls.close();
        let deadline = Instant::now() + grace;
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for thread in threads.into_iter().filter(JoinHandle::is_finished) {
            let _ = thread.join();
        }
    }
}
