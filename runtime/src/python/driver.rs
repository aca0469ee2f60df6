//! The asyncio driver of one loop thread: how the asyncio loop and the thread's tokio runtime share it.
//!
//! The asyncio loop is created with a selector that never blocks (`percore._loop`). Its epoll fd is
//! registered with tokio (`AsyncFd`), so tokio wakes when any asyncio socket, the loop's self-pipe
//! (`call_soon_threadsafe`) or a timer needs attention, and then runs one asyncio iteration
//! (`_run_once`). Handlers are called directly from connection tasks; the driver only runs what they
//! left scheduled (`wake_if_needed` tells it).
//!
//! Invariant: the selector's registration is dropped (`close`) before asyncio closes the epoll fd.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use pyo3::intern;
use pyo3::prelude::*;
use tokio::io::unix::AsyncFd;

use super::ffi::{self, has_pending_events, object_len, SelectorFd};
use super::loop_state::LoopShared;

pub(super) struct Driver {
    shared: Arc<LoopShared>,
    /// `loop._ready`: the deque of callbacks to run; created once by asyncio and never replaced.
    ready: Py<PyAny>,
    /// Length of `loop._scheduled` when the driver last computed its timeout.
    scheduled_seen: Cell<isize>,
    selector: RefCell<Option<Rc<AsyncFd<SelectorFd>>>>,
}

impl Driver {
    /// Registers `shared.event_loop`'s selector with this thread's tokio runtime.
    pub(super) fn new(py: Python<'_>, shared: Arc<LoopShared>) -> PyResult<Self> {
        let event_loop = shared.event_loop.bind(py);
        let ready = event_loop.getattr(intern!(py, "_ready"))?.unbind();
        let fd: RawFd = event_loop
            .getattr(intern!(py, "_selector"))?
            .call_method0(intern!(py, "fileno"))?
            .extract()?;
        // The fd stays open until `close`, which drops this registration before asyncio closes its
        // selector.
        let selector = ffi::register_selector(fd)?;
        Ok(Driver {
            shared,
            ready,
            scheduled_seen: Cell::new(0),
            selector: RefCell::new(Some(Rc::new(selector))),
        })
    }

    /// A handler may have scheduled asyncio work (`create_task`, `call_later`) without suspending; the
    /// driver must then look at the loop again instead of sleeping on its old deadline.
    pub(super) fn wake_if_needed(&self, py: Python<'_>) {
        let event_loop = self.shared.event_loop.bind(py);
        let scheduled = event_loop
            .getattr(intern!(py, "_scheduled"))
            .map(|s| object_len(&s))
            .unwrap_or(-1);
        if object_len(self.ready.bind(py)) != 0 || scheduled != self.scheduled_seen.get() {
            self.shared.wake.notify_one();
        }
    }

    /// Seconds until asyncio needs to run again: 0 when callbacks are ready, None when only I/O can wake it.
    fn asyncio_timeout(&self, py: Python<'_>) -> Option<Duration> {
        let event_loop = self.shared.event_loop.bind(py);
        let timeout = event_loop.call_method0(intern!(py, "_percore_timeout"));
        if let Ok(scheduled) = event_loop.getattr(intern!(py, "_scheduled")) {
            self.scheduled_seen.set(object_len(&scheduled));
        }
        match timeout.and_then(|t| t.extract::<Option<f64>>()) {
            Ok(Some(seconds)) => Some(Duration::from_secs_f64(seconds.max(0.0))),
            Ok(None) => None,
            Err(err) => {
                err.print(py);
                Some(Duration::from_millis(10))
            }
        }
    }

    fn run_asyncio_once(&self, py: Python<'_>) {
        let event_loop = self.shared.event_loop.bind(py);
        if let Err(err) = event_loop.call_method0(intern!(py, "_run_once")) {
            err.print(py);
        }
    }

    /// Runs the asyncio loop for the life of the executor: one `_run_once` whenever its selector is
    /// readable, its next timer is due or `wake` says work was scheduled from outside.
    pub(super) async fn run(self: Rc<Self>) {
        loop {
            let timeout = Python::attach(|py| self.asyncio_timeout(py));
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
            Python::attach(|py| self.run_asyncio_once(py));
            // asyncio's fds are level-triggered inside its epoll; tokio sees the epoll fd
            // edge-triggered, so only forget readiness once the inner epoll is really empty.
            if let Some(mut readiness) = readiness {
                if !has_pending_events(selector.as_raw_fd()) {
                    readiness.clear_ready();
                }
            }
        }
    }

    /// Deregisters from tokio, then closes the asyncio loop (on its own thread, never left to the
    /// collector: 3.13t reports "Invalid file descriptor" for a loop collected elsewhere).
    pub(super) fn close(&self) {
        // Before asyncio closes the epoll fd (`run`, which held the other reference, has been cancelled
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
