//! The event-loop driver of one loop thread: how the thread's Python event loop and its tokio runtime
//! share it.
//!
//! The loop (`percore._loop`) never blocks by itself. Its epoll fd is registered with tokio
//! (`AsyncFd`), so tokio wakes when any of the loop's sockets, its wake-up (`call_soon_threadsafe`) or
//! a timer needs attention, and then runs one iteration. Two loops (`--loop`):
//! - percore's (`percore.EventLoop`, the default): the driver calls its Rust reactor directly —
//!   `park_outer` for the timeout (it also makes `call_soon_threadsafe` and a new earliest timer write
//!   the reactor's eventfd while tokio waits), `step` for the iteration, `pending` for the wake check.
//!   No Python frame runs between tokio and the callbacks.
//! - asyncio's selector loop with a selector that never blocks: `_percore_timeout()` and `_run_once()`,
//!   Python methods; `_self-pipe` for cross-thread calls.
//!
//! Handlers are called directly from connection tasks; the driver only runs what they left scheduled
//! (`wake_if_needed` tells it).
//!
//! Invariant: the epoll fd's registration is dropped (`close`) before the loop closes the fd.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use pyo3::intern;
use pyo3::prelude::*;
use tokio::io::unix::AsyncFd;

use super::event_loop::Reactor;
use super::ffi::{self, has_pending_events, object_len, SelectorFd};
use super::loop_state::LoopShared;

/// Which event loop the thread runs, and what the driver keeps of it.
enum Stepper {
    /// `percore.EventLoop`: its Rust reactor.
    Percore {
        reactor: Py<Reactor>,
        /// Timers in the heap when the driver last parked.
        timers_seen: Cell<usize>,
    },
    /// asyncio's selector loop.
    Asyncio {
        /// `loop._ready`: the deque of callbacks to run; created once by asyncio and never replaced.
        ready: Py<PyAny>,
        /// Length of `loop._scheduled` when the driver last computed its timeout.
        scheduled_seen: Cell<isize>,
    },
}

pub(super) struct Driver {
    shared: Arc<LoopShared>,
    stepper: Stepper,
    selector: RefCell<Option<Rc<AsyncFd<SelectorFd>>>>,
}

impl Driver {
    /// Registers `shared.event_loop`'s epoll fd with this thread's tokio runtime.
    pub(super) fn new(py: Python<'_>, shared: Arc<LoopShared>) -> PyResult<Self> {
        let event_loop = shared.event_loop.bind(py);
        let reactor = event_loop
            .getattr_opt(intern!(py, "_reactor"))?
            .and_then(|reactor| reactor.cast_into::<Reactor>().ok());
        let (stepper, fd) = match reactor {
            Some(reactor) => {
                let fd = reactor.get().fileno();
                let stepper = Stepper::Percore {
                    reactor: reactor.unbind(),
                    timers_seen: Cell::new(0),
                };
                (stepper, fd)
            }
            None => {
                let ready = event_loop.getattr(intern!(py, "_ready"))?.unbind();
                let fd: RawFd = event_loop
                    .getattr(intern!(py, "_selector"))?
                    .call_method0(intern!(py, "fileno"))?
                    .extract()?;
                let stepper = Stepper::Asyncio {
                    ready,
                    scheduled_seen: Cell::new(0),
                };
                (stepper, fd)
            }
        };
        // The fd stays open until `close`, which drops this registration before the loop closes it.
        let selector = ffi::register_selector(fd)?;
        Ok(Driver {
            shared,
            stepper,
            selector: RefCell::new(Some(Rc::new(selector))),
        })
    }

    /// A handler may have scheduled work on the loop (`create_task`, `call_later`) without suspending;
    /// the driver must then look at the loop again instead of sleeping on its old deadline.
    pub(super) fn wake_if_needed(&self, py: Python<'_>) {
        let needed = match &self.stepper {
            Stepper::Percore {
                reactor,
                timers_seen,
            } => {
                let (ready, timers) = reactor.get().pending();
                ready != 0 || timers != timers_seen.get()
            }
            Stepper::Asyncio {
                ready,
                scheduled_seen,
            } => {
                let scheduled = self
                    .shared
                    .event_loop
                    .bind(py)
                    .getattr(intern!(py, "_scheduled"))
                    .map(|s| object_len(&s))
                    .unwrap_or(-1);
                object_len(ready.bind(py)) != 0 || scheduled != scheduled_seen.get()
            }
        };
        if needed {
            self.shared.wake.notify_one();
        }
    }

    /// Time until the loop needs to run again: zero when callbacks are ready, None when only I/O (or a
    /// wake-up) can wake it.
    fn timeout(&self, py: Python<'_>) -> Option<Duration> {
        let seconds = match &self.stepper {
            Stepper::Percore {
                reactor,
                timers_seen,
            } => {
                let reactor = reactor.get();
                let timeout = reactor.park_outer();
                timers_seen.set(reactor.pending().1);
                Ok(timeout)
            }
            Stepper::Asyncio { scheduled_seen, .. } => {
                let event_loop = self.shared.event_loop.bind(py);
                let timeout = event_loop.call_method0(intern!(py, "_percore_timeout"));
                if let Ok(scheduled) = event_loop.getattr(intern!(py, "_scheduled")) {
                    scheduled_seen.set(object_len(&scheduled));
                }
                timeout.and_then(|t| t.extract::<Option<f64>>())
            }
        };
        match seconds {
            Ok(Some(seconds)) => Some(Duration::from_secs_f64(seconds.max(0.0))),
            Ok(None) => None,
            Err(err) => {
                err.print(py);
                Some(Duration::from_millis(10))
            }
        }
    }

    /// One iteration of the loop, without waiting.
    fn run_once(&self, py: Python<'_>) {
        let ran = match &self.stepper {
            Stepper::Percore { reactor, .. } => reactor.get().step(py),
            Stepper::Asyncio { .. } => self
                .shared
                .event_loop
                .bind(py)
                .call_method0(intern!(py, "_run_once"))
                .map(drop),
        };
        if let Err(err) = ran {
            err.print(py);
        }
    }

    /// Runs the loop for the life of the executor: one iteration whenever its epoll fd is readable, its
    /// next timer is due or `wake` says work was scheduled from outside.
    pub(super) async fn run(self: Rc<Self>) {
        let mut timeout = Python::attach(|py| self.timeout(py));
        loop {
            let Some(selector) = self.selector.borrow().clone() else {
                return;
            };
            let mut readiness = None;
            if timeout == Some(Duration::ZERO) {
                // Ready callbacks: run them, but let connections progress between iterations.
                tokio::task::yield_now().await;
            } else {
                let sleep = async {
                    match timeout {
                        Some(timeout) => tokio::time::sleep(timeout).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ready = selector.readable() => readiness = ready.ok(),
                    _ = self.shared.wake.notified() => {}
                    _ = sleep => {}
                }
            }
            // The iteration and the next timeout under one attach (nothing can run in between anyway:
            // no await separates them).
            timeout = Python::attach(|py| {
                self.run_once(py);
                self.timeout(py)
            });
            // The loop's fds are level-triggered inside its epoll; tokio sees the epoll fd
            // edge-triggered, so only forget readiness once the inner epoll is really empty.
            if let Some(mut readiness) = readiness {
                if !has_pending_events(selector.as_raw_fd()) {
                    readiness.clear_ready();
                }
            }
        }
    }

    /// Deregisters from tokio, then closes the loop (on its own thread, never left to the
    /// collector: 3.13t reports "Invalid file descriptor" for a loop collected elsewhere).
    pub(super) fn close(&self) {
        // Before the loop closes the epoll fd (`run`, which held the other reference, has been cancelled
        // by now).
        drop(self.selector.borrow_mut().take());
        Python::attach(|py| {
            let event_loop = self.shared.event_loop.bind(py);
            if let Err(err) = event_loop.call_method0(intern!(py, "_percore_close")) {
                err.print(py);
            }
        });
    }
}
