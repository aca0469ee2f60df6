//! The Python executor of one loop thread (`crate::executor::Executor` for Python apps): the call path
//! from a routed request to its endpoint — native handler (`native`), const response, or ASGI app
//! (`asgi`) — and back, the lifecycle hooks (ASGI lifespan), and shutdown (wait, cancel, close).
//! The asyncio loop it runs on is driven by `driver`; `factory` creates both on the loop thread.
//!
//! A coroutine is stepped in place (`RequestTask`) and only involves the asyncio loop if it suspends.
//!
//! Invariants: the thread is attached to the interpreter once for its whole life (`run_thread`) and
//! re-enters it only around Python work (`Python::attach` on an existing thread state is a cheap state
//! change); nothing here waits while attached, so GIL builds never deadlock and 3.13t's stop-the-world
//! pauses never wait on a parked loop. Python objects that are re-used on every request are created once.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::oneshot;

use super::asgi::{self, AsgiEndpoint};
use super::driver::Driver;
use super::errors::BridgeError;
use super::ffi;
use super::forms;
use super::loop_state::LoopShared;
use super::native::{self, ConstResponse, NativeEndpoint, NativeLoop, Started, WebSocketRoute};
use super::sync_pool::SyncCall;
use super::task::{Completion, RequestTask};
use crate::exchange::{HttpRequest, HttpResponse};
use crate::executor::{Executor, ExecutorError, ExecutorErrorKind, LocalBoxFuture};
use crate::routing::InFlight;
use crate::static_files::StaticFiles;

/// What a route runs: a native handler, a response computed once at startup, a mounted directory of
/// static files (served from Rust), a native WebSocket route, or (for every path) an ASGI app.
pub(super) enum Endpoint {
    /// Shared so a request reading its form body can reach it after the body has arrived.
    Native(Arc<NativeEndpoint>),
    Const(ConstResponse),
    Asgi(AsgiEndpoint),
    Static(Arc<StaticFiles>),
    WebSocket(WebSocketRoute),
}

/// A response that took at least this long to compute is written only after the connections that are
/// ready now have been served (one `yield_now`), so responses leave in bursts instead of one at a time.
///
/// Why: each write to an idle client (a load balancer, wrk) wakes it on another core, and that wake-up
/// is paid by the writer inside `writev` (the loopback/NIC softirq runs `try_to_wake_up` and an IPI; in a
/// VM the IPI is a VM exit). Measured with Starlette `/json` on one loop: ~10 µs of kernel time per
/// request (a quarter of the loop's CPU) went to that wake-up when every response was written as soon as
/// it was ready, because a client served every ~35 µs falls asleep between responses; written in bursts
/// the client is woken once per burst (experiments/starlette-gap/README.md). Fast handlers (the
/// native API's ~2–3 µs) keep the client busy anyway and are written at once; 10 µs was too high:
/// Starlette `/plaintext` (~10 µs) then still woke the client on a third of its responses.
const COALESCE_AFTER: Duration = Duration::from_micros(5);

/// One loop thread's executor: the asyncio loop (`driver`), its shared state, and the app's lifecycle.
pub(super) struct PyExecutor {
    index: usize,
    shared: Arc<LoopShared>,
    driver: Rc<Driver>,
    /// The loop's lifecycle object (ASGI lifespan), created on this thread by the factory's `lifecycle`.
    lifecycle: Option<Py<PyAny>>,
    /// The state the lifecycle's startup returned; each ASGI request's scope gets a shallow copy.
    loop_state: RefCell<Option<Py<PyDict>>>,
    /// Where `def` handlers go (None when the app has none to offload).
    sync_calls: Option<Rc<async_channel::Sender<SyncCall>>>,
    /// This executor, for requests that resume after an await (a form body streaming in); set by `drive`.
    this: RefCell<Weak<PyExecutor>>,
}

impl PyExecutor {
    pub(super) fn new(
        index: usize,
        shared: Arc<LoopShared>,
        driver: Rc<Driver>,
        lifecycle: Option<Py<PyAny>>,
        sync_calls: Option<Rc<async_channel::Sender<SyncCall>>>,
    ) -> Self {
        PyExecutor {
            index,
            shared,
            driver,
            lifecycle,
            loop_state: RefCell::new(None),
            sync_calls,
            this: RefCell::new(Weak::new()),
        }
    }

    /// Starts the request; a task that suspends takes `in_flight` (see `RequestTask::hold_in_flight`).
    fn start(
        &self,
        py: Python<'_>,
        endpoint: &Endpoint,
        request: HttpRequest,
        in_flight: &mut Option<InFlight>,
    ) -> Started {
        match endpoint {
            Endpoint::Native(endpoint) => {
                native::start(py, &self.native_loop(), endpoint, request, None, in_flight)
            }
            Endpoint::Asgi(endpoint) => {
                // Cloned out of the cell: no borrow is held while the app runs.
                let loop_state = self
                    .loop_state
                    .borrow()
                    .as_ref()
                    .map(|s| s.bind(py).clone());
                let shared = &self.shared;
                match asgi::start(
                    py,
                    shared,
                    endpoint,
                    request,
                    loop_state.as_ref(),
                    in_flight,
                ) {
                    Ok(response) => Started::Done(response),
                    Err(pending) => Started::Pending(pending, None),
                }
            }
            Endpoint::Const(constant) => Started::Done(constant.response()),
            // Answered by `call` before Python is entered.
            Endpoint::Static(_) => Started::Done(HttpResponse::internal_error()),
            Endpoint::WebSocket(route) => {
                match native::start_websocket(py, &self.native_loop(), route, request) {
                    Ok(response) => Started::Done(response),
                    Err(pending) => Started::Pending(pending, None),
                }
            }
        }
    }

    /// What a native handler needs from this loop.
    fn native_loop(&self) -> NativeLoop<'_> {
        NativeLoop {
            index: self.index,
            shared: &self.shared,
            loop_state: &self.loop_state,
            sync_calls: self.sync_calls.as_ref(),
        }
    }

    /// The response to a started request: at once, or once its task or sync-pool call is done.
    fn respond_started(
        &self,
        started: Started,
        began: Instant,
        in_flight: Option<InFlight>,
        native: Option<&NativeEndpoint>,
    ) -> LocalBoxFuture<HttpResponse> {
        match started {
            // A slow response waits for the other ready connections: see `COALESCE_AFTER`.
            Started::Done(response) if began.elapsed() >= COALESCE_AFTER => Box::pin(async move {
                tokio::task::yield_now().await;
                response
            }),
            Started::Done(response) => Box::pin(std::future::ready(response)),
            Started::Pending(pending, task) => Box::pin(native::until_finished(
                pending,
                task,
                Arc::clone(&self.shared.wake),
                in_flight,
            )),
            Started::Offloaded(call, calls, outcome) => {
                let Some(native) = native else {
                    unreachable!("only native handlers are offloaded")
                };
                let route = (native.status_code, Arc::clone(&native.name));
                let shared = Arc::clone(&self.shared);
                Box::pin(native::on_sync_pool(call, calls, outcome, shared, route))
            }
        }
    }

    /// A route that takes form fields or files: its body is read and parsed (`forms::read_form`, no
    /// Python involved) as it arrives, then the handler is bound and started as any other. The request
    /// counts against `--max-in-flight` while its body arrives.
    fn call_with_form(
        &self,
        native: Arc<NativeEndpoint>,
        mut request: HttpRequest,
    ) -> LocalBoxFuture<HttpResponse> {
        let this = self.this.borrow().clone();
        let max_body_size = self.shared.max_body_size;
        Box::pin(async move {
            let mut in_flight = request.in_flight.take();
            let form = match forms::read_form(&mut request, max_body_size).await {
                Ok(form) => form,
                Err(refused) => return refused,
            };
            let Some(this) = this.upgrade() else {
                return HttpResponse::internal_error();
            };
            let began = Instant::now();
            let started = Python::attach(|py| {
                let on = this.native_loop();
                let started = native::start(py, &on, &native, request, Some(form), &mut in_flight);
                this.driver.wake_if_needed(py);
                started
            });
            this.respond_started(started, began, in_flight, Some(&native))
                .await
        })
    }

    /// Steps `coroutine` as a task of this loop and delivers its result (lifecycle hooks, not requests).
    fn run_coroutine(
        &self,
        py: Python<'_>,
        coroutine: Bound<'_, PyAny>,
        name: &str,
    ) -> PyResult<oneshot::Receiver<PyResult<Py<PyAny>>>> {
        let (reply, result) = oneshot::channel();
        let task = RequestTask::new(
            py,
            coroutine.unbind(),
            self.shared.clone(),
            ffi::copy_context(py)?.unbind(),
            name.to_owned(),
            Completion::Detached(reply),
        )?;
        RequestTask::step(&task, None);
        self.driver.wake_if_needed(py);
        Ok(result)
    }

    /// Runs `lifecycle.<method>()` to completion on this loop.
    async fn run_lifecycle(&self, method: &'static str) -> Result<Option<Py<PyAny>>, BridgeError> {
        let Some(lifecycle) = &self.lifecycle else {
            return Ok(None);
        };
        let started = Python::attach(|py| {
            let coroutine = lifecycle.bind(py).call_method0(method)?;
            self.run_coroutine(py, coroutine, method)
        });
        let result = match started {
            Ok(result) => result.await,
            Err(err) => return Err(BridgeError::Raised(err)),
        };
        match result {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(err)) => Err(BridgeError::Raised(err)),
            Err(_) => Err(BridgeError::NeverFinished(method)),
        }
    }
}

impl Executor for PyExecutor {
    type Endpoint = Endpoint;

    fn runs_off_loop(endpoint: &Endpoint) -> bool {
        match endpoint {
            Endpoint::Native(native) => native.offload,
            Endpoint::Const(_) | Endpoint::Static(_) => true,
            Endpoint::Asgi(_) | Endpoint::WebSocket(_) => false,
        }
    }

    fn streams_request_body(endpoint: &Endpoint) -> bool {
        match endpoint {
            Endpoint::Asgi(_) => true,
            Endpoint::Native(native) => native.form,
            Endpoint::Const(_) | Endpoint::Static(_) | Endpoint::WebSocket(_) => false,
        }
    }

    fn startup(self: Rc<Self>) -> LocalBoxFuture<Result<(), ExecutorError>> {
        Box::pin(async move {
            let state = self
                .run_lifecycle("startup")
                .await
                .map_err(|err| ExecutorError::new(ExecutorErrorKind::Startup, err))?;
            Python::attach(|py| {
                if let Some(state) = state {
                    if let Ok(state) = state.bind(py).cast::<PyDict>() {
                        *self.loop_state.borrow_mut() = Some(state.clone().unbind());
                    }
                }
            });
            Ok(())
        })
    }

    fn shutdown(self: Rc<Self>) -> LocalBoxFuture<()> {
        Box::pin(async move {
            if let Err(err) = self.run_lifecycle("shutdown").await {
                Python::attach(|py| {
                    let message = err.to_string();
                    let logger = self.shared.hooks.logger.bind(py);
                    let _ = logger.call_method1("error", ("shutdown failed: %s", message));
                });
            }
        })
    }

    fn begin_shutdown(&self) {
        self.shared.closing.set();
        Python::attach(|py| self.driver.wake_if_needed(py));
    }

    fn idle(self: Rc<Self>) -> LocalBoxFuture<()> {
        Box::pin(async move { self.shared.idle().await })
    }

    fn cancel_running(&self) -> usize {
        Python::attach(|py| {
            let tasks = self.shared.live_tasks(py);
            if tasks.is_empty() {
                return 0;
            }
            let names: Vec<String> = tasks
                .iter()
                .map(|task| task.get().name().to_owned())
                .collect();
            let _ = self.shared.hooks.logger.bind(py).call_method1(
                intern!(py, "warning"),
                (
                    "loop %d: shutdown timeout reached, cancelling %d running request(s): %s",
                    self.index,
                    tasks.len(),
                    names.join(", "),
                ),
            );
            for task in &tasks {
                let message = "the server is shutting down".into_pyobject(py).ok();
                if let Err(err) =
                    RequestTask::cancel(task.bind(py), message.map(|m| m.into_any().unbind()))
                {
                    err.print(py);
                }
            }
            self.shared.wake.notify_one();
            tasks.len()
        })
    }

    fn call(&self, endpoint: &Endpoint, mut request: HttpRequest) -> LocalBoxFuture<HttpResponse> {
        if let Endpoint::Const(constant) = endpoint {
            return Box::pin(std::future::ready(constant.response()));
        }
        // Never enters Python: the file system work runs on tokio's blocking pool.
        if let Endpoint::Static(files) = endpoint {
            return Box::pin(Arc::clone(files).serve(request));
        }
        if let Endpoint::Native(native) = endpoint {
            if native.form {
                return self.call_with_form(Arc::clone(native), request);
            }
        }
        let began = Instant::now();
        // Held until the response is ready unless the request's task took it (it runs on).
        let mut in_flight = request.in_flight.take();
        let started = Python::attach(|py| {
            let started = self.start(py, endpoint, request, &mut in_flight);
            self.driver.wake_if_needed(py);
            started
        });
        let native = match endpoint {
            Endpoint::Native(native) => Some(&**native),
            _ => None,
        };
        self.respond_started(started, began, in_flight, native)
    }

    fn drive(self: Rc<Self>) -> LocalBoxFuture<()> {
        *self.this.borrow_mut() = Rc::downgrade(&self);
        Box::pin(Rc::clone(&self.driver).run())
    }

    fn close(&self) {
        self.driver.close();
    }
}
