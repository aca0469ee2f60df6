//! The Python executor of one loop thread: an asyncio event loop driven from the thread's tokio runtime,
//! and the call path from a routed request to a handler and back.
//!
//! How the two loops share one thread: the asyncio loop is created with a selector that never blocks
//! (`percore._loop`). Its epoll fd is registered with tokio (`AsyncFd`), so tokio wakes when any asyncio
//! socket, the loop's self-pipe (`call_soon_threadsafe`) or a timer needs attention, and then runs one
//! asyncio iteration (`_run_once`). Handlers are called directly from the connection task; a coroutine is
//! stepped in place (`RequestTask`) and only involves the asyncio loop if it suspends.
//!
//! Invariants: the thread is attached to the interpreter once for its whole life (`run_thread`) and
//! re-enters it only around Python work (`Python::attach` on an existing thread state is a cheap state
//! change); nothing here waits while attached, so GIL builds never deadlock and 3.13t's stop-the-world
//! pauses never wait on a parked loop. Python objects that are re-used on every request are created once.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, Notify};

use super::asgi::{self, AsgiEndpoint, AsgiExchange};
use super::forms;
use super::params::{self, Param};
use super::response::to_response;
use super::sync_pool::{Offloaded, SyncCall, SyncHold, SyncOutcome, SyncPool};
use super::task::{in_context, AppConnection, Completion, RequestTask};
use super::websocket;
use crate::forms::Form;
use crate::metrics::{self, ExtraMetrics};
use crate::pool::{
    Executor, ExecutorFactory, HttpRequest, HttpResponse, Latch, LocalBoxFuture, ResponseBody,
};
use crate::routing::InFlight;
use crate::static_files::StaticFiles;

/// What a route runs: a native handler, a response computed once at startup, a mounted directory of
/// static files (served from Rust), a native WebSocket route, or (for every path) an ASGI app.
pub enum Endpoint {
    /// Shared so a request reading its form body can reach it after the body has arrived.
    Native(Arc<NativeEndpoint>),
    Const(ConstResponse),
    Asgi(AsgiEndpoint),
    Static(Arc<StaticFiles>),
    WebSocket(WebSocketRoute),
}

/// A native `@api.websocket(path)` route. Its runner (`percore._websocket_route`) drives the same
/// exchange as an ASGI app's WebSocket (`python/websocket.rs`: frame pump, limits, bounded queues),
/// called as `runner(scope, receive, send, kwargs)` with the handshake's parameters bound like a
/// native handler's.
pub struct WebSocketRoute {
    /// The runner, and the empty root path the scope is built with.
    pub runner: AsgiEndpoint,
    pub params: Vec<Param>,
}

/// A `const=True` route's response: served from Rust on every request without entering Python.
pub struct ConstResponse {
    status: http::StatusCode,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    body: bytes::Bytes,
}

impl From<HttpResponse> for ConstResponse {
    fn from(response: HttpResponse) -> Self {
        let body = match response.body {
            ResponseBody::Full(body) => body,
            ResponseBody::Stream(..) => bytes::Bytes::new(),
        };
        ConstResponse {
            status: response.status,
            headers: response.headers,
            body,
        }
    }
}

impl ConstResponse {
    fn response(&self) -> HttpResponse {
        HttpResponse {
            status: self.status,
            headers: self.headers.clone(),
            body: ResponseBody::Full(self.body.clone()),
        }
    }
}

/// One registered route's handler, analysed once at startup.
pub struct NativeEndpoint {
    pub function: Py<PyAny>,
    /// How to bind each keyword argument the handler takes.
    pub params: Vec<Param>,
    pub status_code: u16,
    /// "GET /users/{id}", for logs.
    pub name: Arc<str>,
    /// A `def` handler (not `inline=True`): called on the sync pool (`sync_pool`), not the loop thread.
    pub offload: bool,
    /// It takes form fields or files: its body is parsed as it streams in, before binding (`forms`).
    pub form: bool,
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
pub const COALESCE_AFTER: Duration = Duration::from_micros(5);

/// What a loop's executor and its in-flight `RequestTask`s share.
pub struct LoopShared {
    pub event_loop: Py<PyAny>,
    pub cancelled_error_type: Py<PyAny>,
    /// Tells the driver to look at the asyncio loop again (work was scheduled outside `_run_once`).
    pub wake: Arc<Notify>,
    pub uuid_class: Py<PyAny>,
    /// `--max-body-size`, for request bodies read as they stream in (ASGI).
    pub max_body_size: u64,
    /// `--ws-max-size`: the largest WebSocket message a client may send.
    pub max_websocket_message: usize,
    /// `--ws-max-queue`: client messages queued for the app before the server stops reading the socket.
    pub websocket_max_queue: usize,
    /// `--send-timeout`: no write progress to a client for this long closes its connection.
    pub send_timeout: Duration,
    /// `--ws-ping-interval` (None: off) and `--ws-ping-timeout`.
    pub websocket_ping: (Option<Duration>, Duration),
    response_class: Py<PyAny>,
    on_error: Py<PyAny>,
    /// The native app's `_exception_response(error)`: a response for handled exception types, or None.
    exception_responder: Option<Py<PyAny>>,
    /// Request tasks that suspended and have not finished, so shutdown can wait for them and cancel
    /// the rest before the lifespan shutdown. Touched only by this loop's thread (an uncontended lock,
    /// once when a task first suspends and once when it finishes; never on the synchronous fast path).
    live_tasks: Mutex<HashMap<usize, Py<RequestTask>>>,
    /// Notified when `live_tasks` becomes empty.
    no_live_tasks: Notify,
    /// `def` calls this loop sent to the sync pool that have not ended: shutdown waits for them too.
    pub offloaded: Arc<Offloaded>,
    /// Set when the loop stops accepting: open WebSockets close with 1001 (going away).
    pub closing: Latch,
}

impl LoopShared {
    /// Remembers `task` until it finishes, if it is still running (it suspended).
    pub fn track(&self, task: &Bound<'_, RequestTask>) {
        if task.get().mark_tracked() {
            self.live_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(task.as_ptr() as usize, task.clone().unbind());
        }
    }

    /// A tracked task finished.
    pub fn untrack(&self, task: &Bound<'_, RequestTask>) {
        let mut live = self.live_tasks.lock().unwrap_or_else(|p| p.into_inner());
        let removed = live.remove(&(task.as_ptr() as usize));
        if live.is_empty() {
            self.no_live_tasks.notify_waiters();
        }
        // Released after the lock: no Python object is dropped while a Rust lock is held.
        drop(live);
        drop(removed);
    }

    fn live_tasks(&self, py: Python<'_>) -> Vec<Py<RequestTask>> {
        self.live_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|task| task.clone_ref(py))
            .collect()
    }

    async fn idle(&self) {
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
    pub fn create_future<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.event_loop
            .bind(py)
            .call_method0(intern!(py, "create_future"))
    }

    /// A native handler raised: the app's exception handlers (HTTPException, `@exception_handler`) may
    /// turn it into a response; anything else is a logged 500.
    pub fn handler_failed(&self, py: Python<'_>, err: &PyErr, name: &str) -> HttpResponse {
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
    pub fn respond(
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
            Some(&self.wake),
        ) {
            Ok(response) => response,
            Err(err) => self.fail(py, &err, name),
        }
    }

    /// Logs a handler failure with its traceback (through `percore`'s logger) and answers 500.
    pub fn fail(&self, py: Python<'_>, err: &PyErr, name: &str) -> HttpResponse {
        if let Err(log_err) = self.on_error.call1(py, (name, err.value(py))) {
            log_err.print(py);
        }
        HttpResponse::internal_error()
    }
}

struct SelectorFd(RawFd);

impl AsRawFd for SelectorFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

pub struct PyExecutor {
    index: usize,
    shared: Arc<LoopShared>,
    /// `loop._ready`: the deque of callbacks to run; created once by asyncio and never replaced.
    ready: Py<PyAny>,
    /// Length of `loop._scheduled` when the driver last computed its timeout.
    scheduled_seen: Cell<isize>,
    selector: RefCell<Option<Rc<AsyncFd<SelectorFd>>>>,
    /// The loop's lifecycle object (ASGI lifespan), created on this thread by the factory's `lifecycle`.
    lifecycle: Option<Py<PyAny>>,
    /// The state the lifecycle's startup returned; each ASGI request's scope gets a shallow copy.
    loop_state: RefCell<Option<Py<PyDict>>>,
    /// Where `def` handlers go (None when the app has none to offload).
    sync_calls: Option<Rc<async_channel::Sender<SyncCall>>>,
    /// This executor, for requests that resume after an await (a form body streaming in); set by `drive`.
    this: RefCell<Weak<PyExecutor>>,
}

fn object_len(object: &Bound<'_, PyAny>) -> isize {
    // SAFETY: attached, live object; a failure (-1) only means "treat as non-empty".
    let len = unsafe { ffi::PyObject_Size(object.as_ptr()) };
    if len < 0 {
        unsafe { ffi::PyErr_Clear() };
    }
    len
}

impl PyExecutor {
    /// Starts the request; a task that suspends takes `in_flight` (see `RequestTask::hold_in_flight`).
    fn start(
        &self,
        py: Python<'_>,
        endpoint: &Endpoint,
        request: HttpRequest,
        in_flight: &mut Option<InFlight>,
    ) -> Started {
        match endpoint {
            Endpoint::Native(native) => self.start_native(py, native, request, None, in_flight),
            Endpoint::Asgi(asgi) => match self.start_asgi(py, asgi, request, in_flight) {
                Ok(response) => Started::Done(response),
                Err(pending) => Started::Pending(pending, None),
            },
            Endpoint::Const(constant) => Started::Done(constant.response()),
            // Answered by `call` before Python is entered.
            Endpoint::Static(_) => Started::Done(HttpResponse::internal_error()),
            Endpoint::WebSocket(route) => match self.start_websocket(py, route, request) {
                Ok(response) => Started::Done(response),
                Err(pending) => Started::Pending(pending, None),
            },
        }
    }

    /// Calls `app(*arguments)` in a fresh Context and steps the coroutine it returns as a task of this
    /// loop, for `connection` (an ASGI exchange or a WebSocket).
    fn run_app<'py>(
        &self,
        py: Python<'py>,
        app: &Bound<'py, PyAny>,
        arguments: Bound<'py, PyTuple>,
        name: &str,
        connection: Arc<dyn AppConnection>,
    ) -> PyResult<Bound<'py, RequestTask>> {
        let context = new_context(py)?;
        let coroutine = in_context(&context, || app.call1(arguments))??;
        // SAFETY: attached, live object.
        if unsafe { ffi::PyCoro_CheckExact(coroutine.as_ptr()) } == 0 {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "the ASGI app did not return a coroutine (is it an ASGI 3 app?)",
            ));
        }
        let task = RequestTask::new(
            py,
            coroutine.unbind(),
            Arc::clone(&self.shared),
            context.unbind(),
            name.to_owned(),
            Completion::Asgi(connection),
        )?;
        RequestTask::step(&task, None);
        self.shared.track(&task);
        Ok(task)
    }

    /// A handshake on a native WebSocket route: its parameters bound (a request that does not validate
    /// is refused with 403 and the 422 detail, as FastAPI closes it with 1008 before accepting), then
    /// the route's runner on the WebSocket exchange. Like an ASGI WebSocket, it counts as in flight
    /// until its handshake is answered.
    fn start_websocket(
        &self,
        py: Python<'_>,
        route: &WebSocketRoute,
        mut request: HttpRequest,
    ) -> Result<HttpResponse, oneshot::Receiver<HttpResponse>> {
        let name = asgi::request_name(&request);
        if !websocket::is_websocket(&request) {
            return Ok(HttpResponse::text(
                400,
                "Bad Request: not a WebSocket handshake",
            ));
        }
        let (reply, mut response) = oneshot::channel();
        let loop_state = self
            .loop_state
            .borrow()
            .as_ref()
            .map(|s| s.bind(py).clone());
        let started = (|| -> PyResult<()> {
            let (socket, arguments) = websocket::prepare(
                py,
                &self.shared,
                &route.runner,
                &mut request,
                loop_state.as_ref(),
                reply,
            )?;
            let scope = arguments.get_item(0)?;
            let path_params = PyDict::new(py);
            for (key, value) in &request.params {
                path_params.set_item(key, value)?;
            }
            scope.set_item(intern!(py, "path_params"), path_params)?;
            let kwargs = match self.bind(py, &route.params, request, None)? {
                Ok(kwargs) => kwargs.unwrap_or_else(|| PyDict::new(py)),
                Err(mut rejected) => {
                    rejected.status = http::StatusCode::FORBIDDEN;
                    socket.refuse(rejected);
                    return Ok(());
                }
            };
            let mut arguments: Vec<Bound<'_, PyAny>> = arguments.iter().collect();
            arguments.push(kwargs.into_any());
            let arguments = PyTuple::new(py, arguments)?;
            self.run_app(py, route.runner.app.bind(py), arguments, &name, socket)?;
            Ok(())
        })();
        if let Err(err) = started {
            return Ok(self.shared.fail(py, &err, &name));
        }
        match response.try_recv() {
            Ok(response) => Ok(response),
            Err(oneshot::error::TryRecvError::Empty) => Err(response),
            Err(oneshot::error::TryRecvError::Closed) => Ok(HttpResponse::internal_error()),
        }
    }

    fn start_asgi(
        &self,
        py: Python<'_>,
        endpoint: &AsgiEndpoint,
        request: HttpRequest,
        in_flight: &mut Option<InFlight>,
    ) -> Result<HttpResponse, oneshot::Receiver<HttpResponse>> {
        let name = asgi::request_name(&request);
        let (reply, mut response) = oneshot::channel();
        let loop_state = self
            .loop_state
            .borrow()
            .as_ref()
            .map(|s| s.bind(py).clone());
        let mut request = request;
        let started = (|| -> PyResult<Option<Arc<AsgiExchange>>> {
            let (connection, arguments, exchange): (Arc<dyn AppConnection>, _, _) =
                if websocket::is_websocket(&request) {
                    let (socket, arguments) = websocket::prepare(
                        py,
                        &self.shared,
                        endpoint,
                        &mut request,
                        loop_state.as_ref(),
                        reply,
                    )?;
                    (socket, arguments, None)
                } else {
                    let (exchange, arguments) = asgi::prepare(
                        py,
                        &self.shared,
                        endpoint,
                        request,
                        loop_state.as_ref(),
                        reply,
                        name.clone(),
                    )?;
                    (exchange.clone(), arguments, Some(exchange))
                };
            let task = self.run_app(py, endpoint.app.bind(py), arguments, &name, connection)?;
            // An HTTP app counts against --max-in-flight until it returns, even when its client has
            // left (ASGI apps are not cancelled then). A WebSocket counts until its handshake is
            // answered only: open sockets are bounded by --max-connections.
            if exchange.is_some() {
                task.get().hold_in_flight(in_flight.take());
            }
            Ok(exchange)
        })();
        let exchange = match started {
            Ok(exchange) => exchange,
            Err(err) => return Ok(self.shared.fail(py, &err, &name)),
        };
        if let Some(exchange) = exchange.filter(|e| !e.finished.is_set()) {
            // Still running: tell a waiting `receive()` if the client goes away first.
            tokio::task::spawn_local(async move {
                tokio::select! {
                    _ = exchange.client_gone.wait() => {
                        Python::attach(|py| exchange.client_disconnected(py));
                    }
                    _ = exchange.finished.wait() => {}
                }
            });
        }
        match response.try_recv() {
            Ok(response) => Ok(response),
            Err(oneshot::error::TryRecvError::Empty) => Err(response),
            Err(oneshot::error::TryRecvError::Closed) => Ok(HttpResponse::internal_error()),
        }
    }

    fn start_native(
        &self,
        py: Python<'_>,
        endpoint: &NativeEndpoint,
        request: HttpRequest,
        form: Option<Form>,
        in_flight: &mut Option<InFlight>,
    ) -> Started {
        let context = match new_context(py) {
            Ok(context) => context,
            Err(err) => return Started::Done(self.shared.fail(py, &err, &endpoint.name)),
        };
        let kwargs = match self.bind(py, &endpoint.params, request, form) {
            Ok(Ok(kwargs)) => kwargs,
            Ok(Err(rejected)) => return Started::Done(rejected),
            Err(err) => return Started::Done(self.shared.handler_failed(py, &err, &endpoint.name)),
        };
        if let (true, Some(calls)) = (endpoint.offload, &self.sync_calls) {
            let (reply, outcome) = oneshot::channel();
            let call = SyncCall {
                function: endpoint.function.clone_ref(py),
                kwargs: kwargs.map(Bound::unbind),
                context: context.unbind(),
                status_code: endpoint.status_code,
                reply,
                hold: self.shared.offloaded.hold(in_flight.take()),
            };
            return Started::Offloaded(call, Rc::clone(calls), outcome);
        }
        let function = endpoint.function.bind(py);
        let called = in_context(&context, || match &kwargs {
            None => function.call0(),
            Some(kwargs) => function.call(PyTuple::empty(py), Some(kwargs)),
        })
        .and_then(|called| called);
        match called {
            Ok(value) => {
                let route = (endpoint.status_code, &*endpoint.name);
                finish_native(py, &self.shared, route, value, context, in_flight)
            }
            Err(err) => Started::Done(self.shared.handler_failed(py, &err, &endpoint.name)),
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
            Started::Pending(pending, task) => Box::pin(until_finished(
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
                Box::pin(on_sync_pool(call, calls, outcome, shared, route))
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
                let started = this.start_native(py, &native, request, Some(form), &mut in_flight);
                this.wake_driver_if_needed(py);
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
            Arc::clone(&self.shared),
            new_context(py)?.unbind(),
            name.to_owned(),
            Completion::Detached(reply),
        )?;
        RequestTask::step(&task, None);
        self.wake_driver_if_needed(py);
        Ok(result)
    }

    /// Runs `lifecycle.<method>()` to completion on this loop.
    async fn run_lifecycle(&self, method: &'static str) -> Result<Option<Py<PyAny>>, String> {
        let Some(lifecycle) = &self.lifecycle else {
            return Ok(None);
        };
        let started = Python::attach(|py| {
            let coroutine = lifecycle.bind(py).call_method0(method)?;
            self.run_coroutine(py, coroutine, method)
        });
        let result = match started {
            Ok(result) => result.await,
            Err(err) => return Err(Python::attach(|py| super::describe(py, &err))),
        };
        match result {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(err)) => Err(Python::attach(|py| super::describe(py, &err))),
            Err(_) => Err(format!("{method} never finished")),
        }
    }

    /// The handler's keyword arguments (None: it takes none); `Ok(Err(response))` when the request was
    /// rejected and the handler must not run (422/400).
    fn bind<'py>(
        &self,
        py: Python<'py>,
        params: &[Param],
        request: HttpRequest,
        form: Option<Form>,
    ) -> PyResult<Result<Option<Bound<'py, PyDict>>, HttpResponse>> {
        if params.is_empty() {
            return Ok(Ok(None));
        }
        let state = self
            .loop_state
            .borrow()
            .as_ref()
            .map(|s| s.clone_ref(py).into_any());
        Ok(
            match params::bind(
                py,
                params,
                request,
                form,
                self.index,
                state,
                self.shared.uuid_class.bind(py),
            )? {
                Ok(kwargs) => Ok(Some(kwargs)),
                Err(rejected) => Err(rejected.into_response(py)?),
            },
        )
    }

    /// A handler may have scheduled asyncio work (`create_task`, `call_later`) without suspending; the
    /// driver must then look at the loop again instead of sleeping on its old deadline.
    fn wake_driver_if_needed(&self, py: Python<'_>) {
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
}

fn has_pending_events(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut poll, 1, 0) > 0 }
}

/// How far a request got on its first step.
enum Started {
    Done(HttpResponse),
    /// Suspended; for native handlers, the task to cancel if the client goes away.
    Pending(oneshot::Receiver<HttpResponse>, Option<Py<RequestTask>>),
    /// A `def` handler, bound and ready for the sync pool.
    Offloaded(
        SyncCall,
        Rc<async_channel::Sender<SyncCall>>,
        oneshot::Receiver<(SyncOutcome, SyncHold)>,
    ),
}

/// What a native handler returned, as a response: converted at once, or (a coroutine) stepped as a
/// `RequestTask` in the request's `context`.
fn finish_native(
    py: Python<'_>,
    shared: &Arc<LoopShared>,
    (status_code, name): (u16, &str),
    value: Bound<'_, PyAny>,
    context: Bound<'_, PyAny>,
    in_flight: &mut Option<InFlight>,
) -> Started {
    // SAFETY: attached, live object.
    if unsafe { ffi::PyCoro_CheckExact(value.as_ptr()) } == 0 {
        return Started::Done(shared.respond(py, &value, status_code, name));
    }
    let (reply, mut response) = oneshot::channel();
    let task = RequestTask::new(
        py,
        value.unbind(),
        Arc::clone(shared),
        context.unbind(),
        name.to_owned(),
        Completion::Native { status_code, reply },
    );
    let task = match task {
        Ok(task) => task,
        Err(err) => return Started::Done(shared.fail(py, &err, name)),
    };
    RequestTask::step(&task, None);
    match response.try_recv() {
        Ok(response) => Started::Done(response),
        Err(oneshot::error::TryRecvError::Empty) => {
            shared.track(&task);
            // Counted until the coroutine ends, also when cancellation (its client left) takes a while
            // to unwind.
            task.get().hold_in_flight(in_flight.take());
            Started::Pending(response, Some(task.unbind()))
        }
        Err(oneshot::error::TryRecvError::Closed) => Started::Done(HttpResponse::internal_error()),
    }
}

/// Awaits a suspended request's response; dropped before it (the client left), it cancels the task.
async fn until_finished(
    pending: oneshot::Receiver<HttpResponse>,
    task: Option<Py<RequestTask>>,
    wake: Arc<Notify>,
    in_flight: Option<InFlight>,
) -> HttpResponse {
    let mut cancel = CancelOnDrop { task, wake };
    let response = pending
        .await
        .unwrap_or_else(|_| HttpResponse::internal_error());
    cancel.disarm();
    drop(in_flight);
    response
}

/// Runs an offloaded `def` handler on the sync pool and turns what it gives back into the response. The
/// loop thread is free meanwhile: the pool's reply wakes it through the oneshot.
async fn on_sync_pool(
    call: SyncCall,
    calls: Rc<async_channel::Sender<SyncCall>>,
    outcome: oneshot::Receiver<(SyncOutcome, SyncHold)>,
    shared: Arc<LoopShared>,
    (status_code, name): (u16, Arc<str>),
) -> HttpResponse {
    // Full: wait for room (the queue is bounded), without blocking the loop.
    let refused = match calls.try_send(call) {
        Ok(()) => None,
        Err(async_channel::TrySendError::Full(call)) => calls.send(call).await.err().map(|e| e.0),
        Err(async_channel::TrySendError::Closed(call)) => Some(call),
    };
    if let Some(call) = refused {
        Python::attach(|_| drop(call));
        return HttpResponse::text(503, "Service Unavailable");
    }
    let Ok((outcome, mut hold)) = outcome.await else {
        return HttpResponse::internal_error();
    };
    let mut in_flight = hold.take_in_flight();
    let app_on_loop = !matches!(outcome, SyncOutcome::Response(_));
    let started = Python::attach(|py| {
        let started = match outcome {
            SyncOutcome::Response(response) => Started::Done(response),
            SyncOutcome::Raised(err) => Started::Done(shared.handler_failed(py, &err, &name)),
            SyncOutcome::Unconvertible(err) => Started::Done(shared.fail(py, &err, &name)),
            SyncOutcome::OnLoop(value, context) => {
                let route = (status_code, &*name);
                finish_native(
                    py,
                    &shared,
                    route,
                    value.into_bound(py),
                    context.into_bound(py),
                    &mut in_flight,
                )
            }
        };
        // App code ran on the loop (an exception handler, a coroutine's first step, a response's
        // background task): it may have scheduled asyncio work the driver must see.
        if app_on_loop {
            shared.wake.notify_one();
        }
        started
    });
    // The work on the loop is a tracked task by now (if it suspended): the call's count can go.
    drop(hold);
    match started {
        Started::Done(response) => response,
        Started::Pending(pending, task) => {
            until_finished(pending, task, Arc::clone(&shared.wake), in_flight).await
        }
        Started::Offloaded(..) => HttpResponse::internal_error(),
    }
}

/// Cancels a suspended native handler when its response is no longer wanted: hyper drops the request's
/// future when the client disconnects, and `CancelledError` then unwinds the handler (its `finally`
/// blocks and `async with` exits run, resources are released).
struct CancelOnDrop {
    task: Option<Py<RequestTask>>,
    wake: Arc<Notify>,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.task = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            Python::attach(|py| {
                if let Err(err) = task.bind(py).call_method0(intern!(py, "cancel")) {
                    err.print(py);
                }
            });
            self.wake.notify_one();
        }
    }
}

/// A fresh copy of the thread's base context: every request runs in its own, so contextvars never leak.
fn new_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: attached; returns a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }
}

impl Executor for PyExecutor {
    type Endpoint = Endpoint;

    fn streams_request_body(endpoint: &Endpoint) -> bool {
        match endpoint {
            Endpoint::Asgi(_) => true,
            Endpoint::Native(native) => native.form,
            Endpoint::Const(_) | Endpoint::Static(_) | Endpoint::WebSocket(_) => false,
        }
    }

    fn startup(self: Rc<Self>) -> LocalBoxFuture<Result<(), String>> {
        Box::pin(async move {
            let state = self.run_lifecycle("startup").await?;
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
            if let Err(message) = self.run_lifecycle("shutdown").await {
                Python::attach(|py| {
                    let logger = py
                        .import("percore._logging")
                        .and_then(|m| m.getattr("logger"));
                    if let Ok(logger) = logger {
                        let _ = logger.call_method1("error", ("shutdown failed: %s", message));
                    }
                });
            }
        })
    }

    fn begin_shutdown(&self) {
        self.shared.closing.set();
        Python::attach(|py| self.wake_driver_if_needed(py));
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
            let logger = py
                .import(intern!(py, "percore._logging"))
                .and_then(|m| m.getattr(intern!(py, "logger")));
            if let Ok(logger) = logger {
                let _ = logger.call_method1(
                    intern!(py, "warning"),
                    (
                        "loop %d: shutdown timeout reached, cancelling %d running request(s): %s",
                        self.index,
                        tasks.len(),
                        names.join(", "),
                    ),
                );
            }
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
            self.wake_driver_if_needed(py);
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
        Box::pin(async move {
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
        })
    }

    fn close(&self) {
        // Deregister from tokio before asyncio closes the epoll fd (the driver, which held the other
        // reference, has been cancelled by now).
        drop(self.selector.borrow_mut().take());
        Python::attach(|py| {
            let event_loop = self.shared.event_loop.bind(py);
            if let Err(err) = event_loop.call_method0(intern!(py, "_percore_close")) {
                err.print(py);
            }
        });
    }
}

pub struct PyExecutorFactory {
    /// `percore._loop.new_running_loop`: creates this thread's asyncio loop and makes it the running loop.
    pub loop_factory: Py<PyAny>,
    /// Called on each loop thread (its loop running) to make that loop's lifecycle object: async
    /// `startup()` (returning a state dict or None) and `shutdown()`. None: no lifecycle.
    pub lifecycle: Option<Py<PyAny>>,
    pub response_class: Py<PyAny>,
    pub on_error: Py<PyAny>,
    pub exception_responder: Option<Py<PyAny>>,
    pub max_body_size: u64,
    pub max_websocket_message: usize,
    pub websocket_max_queue: usize,
    pub send_timeout: Duration,
    pub websocket_ping: (Option<Duration>, Duration),
    /// The pool `def` handlers run on, while the server runs one (`python/server.rs` starts and closes it).
    pub sync_pool: Mutex<Option<Arc<SyncPool>>>,
    /// `--sync-threads` (None: `sync_pool::default_threads`).
    pub sync_threads: Option<usize>,
}

impl ExecutorFactory for PyExecutorFactory {
    type Endpoint = Endpoint;
    type Executor = PyExecutor;

    fn run_thread(&self, body: &mut (dyn FnMut() + Send)) {
        // Attach once for the thread's life (creates its thread state), then detach: Python work re-enters
        // with `Python::attach`, which on an existing thread state is a cheap state switch.
        Python::attach(|py| py.detach(body));
    }

    fn create(&self, loop_index: usize) -> Result<PyExecutor, String> {
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
        .map_err(|err| Python::attach(|py| super::describe(py, &err)))
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
        {
            let bound = event_loop.bind(py);
            let ready = bound.getattr(intern!(py, "_ready"))?.unbind();
            let fd: RawFd = bound
                .getattr(intern!(py, "_selector"))?
                .call_method0(intern!(py, "fileno"))?
                .extract()?;
            // SAFETY: the fd stays open until `close`, which drops this registration before asyncio
            // closes its selector.
            let selector = unsafe {
                AsyncFd::register_with_interest(SelectorFd(fd), tokio::io::Interest::READABLE)
            }
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
            let cancelled_error_type = py.import("asyncio")?.getattr("CancelledError")?.unbind();
            let lifecycle = match &self.lifecycle {
                Some(factory) => Some(factory.call0(py)?).filter(|l| !l.is_none(py)),
                None => None,
            };
            let uuid_class = py.import("uuid")?.getattr("UUID")?.unbind();
            Ok(PyExecutor {
                index: loop_index,
                shared: Arc::new(LoopShared {
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
                    exception_responder: self.exception_responder.as_ref().map(|r| r.clone_ref(py)),
                    live_tasks: Mutex::new(HashMap::new()),
                    no_live_tasks: Notify::new(),
                    offloaded: Arc::default(),
                    closing: Latch::default(),
                }),
                ready,
                scheduled_seen: Cell::new(0),
                selector: RefCell::new(Some(Rc::new(selector))),
                lifecycle,
                loop_state: RefCell::new(None),
                sync_calls: self
                    .sync_pool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|pool| Rc::new(pool.sender())),
                this: RefCell::new(Weak::new()),
            })
        }
    }
}
