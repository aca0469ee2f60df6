//! Native routes (the percore API): binding a request to a handler's parameters, calling it on the loop
//! or on the sync pool, stepping the coroutine it returns, and turning what it returned into the
//! response. `const=True` routes are answered from Rust without entering Python.
//!
//! Invariants: a handler's coroutine that suspends is tracked by the loop and cancelled if its client
//! goes away (`CancelOnDrop`); a request holds its `InFlight` guard until its work is over, wherever it
//! runs (loop, sync pool, a task that outlives the response).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::sync::{oneshot, Notify};

use super::asgi::{self, AsgiEndpoint};
use super::ffi;
use super::loop_state::LoopShared;
use super::params::{self, Param};
use super::sync_pool::{SyncCall, SyncHold, SyncOutcome};
use super::task::{in_context, Completion, RequestTask};
use crate::exchange::{HttpRequest, HttpResponse, ResponseBody};
use crate::forms::Form;
use crate::routing::InFlight;

/// A `const=True` route's response: served from Rust on every request without entering Python.
pub(super) struct ConstResponse {
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
    pub(super) fn response(&self) -> HttpResponse {
        HttpResponse {
            status: self.status,
            headers: self.headers.clone(),
            body: ResponseBody::Full(self.body.clone()),
        }
    }
}

/// One registered route's handler, analysed once at startup.
pub(super) struct NativeEndpoint {
    pub(super) function: Py<PyAny>,
    /// How to bind each keyword argument the handler takes.
    pub(super) params: Vec<Param>,
    pub(super) status_code: u16,
    /// "GET /users/{id}", for logs.
    pub(super) name: Arc<str>,
    /// A `def` handler (not `inline=True`): called on the sync pool (`sync_pool`), not the loop thread.
    pub(super) offload: bool,
    /// It takes form fields or files: its body is parsed as it streams in, before binding (`forms`).
    pub(super) form: bool,
}

/// A native `@api.websocket(path)` route. Its runner (`percore._websocket_route`) drives the same
/// exchange as an ASGI app's WebSocket (`asgi/websocket.rs`: frame pump, limits, bounded queues),
/// called as `runner(scope, receive, send, kwargs)` with the handshake's parameters bound like a
/// native handler's.
pub(super) struct WebSocketRoute {
    /// The runner, and the empty root path the scope is built with.
    pub(super) runner: AsgiEndpoint,
    pub(super) params: Vec<Param>,
}

/// The loop a native handler is called on: what `start` needs besides the handler and the request.
pub(super) struct NativeLoop<'a> {
    pub(super) index: usize,
    pub(super) shared: &'a Arc<LoopShared>,
    /// The state the lifecycle's startup returned (`Request.state`, `State` parameters).
    pub(super) loop_state: &'a RefCell<Option<Py<PyDict>>>,
    /// Where `def` handlers go (None when the app has none to offload).
    pub(super) sync_calls: Option<&'a Rc<async_channel::Sender<SyncCall>>>,
}

/// Calls a native handler for `request` on this loop (or hands it to the sync pool): how far it got. A
/// coroutine that suspends takes `in_flight` (see `RequestTask::hold_in_flight`).
pub(super) fn start(
    py: Python<'_>,
    on: &NativeLoop<'_>,
    endpoint: &NativeEndpoint,
    request: HttpRequest,
    form: Option<Form>,
    in_flight: &mut Option<InFlight>,
) -> Started {
    let context = match ffi::copy_context(py) {
        Ok(context) => context,
        Err(err) => return Started::Done(on.shared.fail(py, &err, &endpoint.name)),
    };
    let kwargs = match bind(py, on, &endpoint.params, request, form) {
        Ok(Ok(kwargs)) => kwargs,
        Ok(Err(rejected)) => return Started::Done(rejected),
        Err(err) => return Started::Done(on.shared.handler_failed(py, &err, &endpoint.name)),
    };
    if let (true, Some(calls)) = (endpoint.offload, on.sync_calls) {
        let (reply, outcome) = oneshot::channel();
        let call = SyncCall {
            function: endpoint.function.clone_ref(py),
            kwargs: kwargs.map(Bound::unbind),
            context: context.unbind(),
            status_code: endpoint.status_code,
            reply,
            hold: on.shared.offloaded.hold(in_flight.take()),
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
            finish(py, on.shared, route, value, context, in_flight)
        }
        Err(err) => Started::Done(on.shared.handler_failed(py, &err, &endpoint.name)),
    }
}

/// A handshake on a native WebSocket route: its parameters bound (a request that does not validate
/// is refused with 403 and the 422 detail, as FastAPI closes it with 1008 before accepting), then
/// the route's runner on the WebSocket exchange. Like an ASGI WebSocket, it counts as in flight
/// until its handshake is answered.
pub(super) fn start_websocket(
    py: Python<'_>,
    on: &NativeLoop<'_>,
    route: &WebSocketRoute,
    mut request: HttpRequest,
) -> Result<HttpResponse, oneshot::Receiver<HttpResponse>> {
    let name = request.name();
    if !request.is_websocket() {
        return Ok(HttpResponse::text(
            400,
            "Bad Request: not a WebSocket handshake",
        ));
    }
    let (reply, mut response) = oneshot::channel();
    let loop_state = on.loop_state.borrow().as_ref().map(|s| s.bind(py).clone());
    let started = (|| -> PyResult<()> {
        let (socket, arguments) = asgi::prepare_websocket(
            py,
            on.shared,
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
        let kwargs = match bind(py, on, &route.params, request, None)? {
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
        asgi::run_app(
            py,
            on.shared,
            route.runner.app.bind(py),
            arguments,
            &name,
            socket,
        )?;
        Ok(())
    })();
    if let Err(err) = started {
        return Ok(on.shared.fail(py, &err, &name));
    }
    match response.try_recv() {
        Ok(response) => Ok(response),
        Err(oneshot::error::TryRecvError::Empty) => Err(response),
        Err(oneshot::error::TryRecvError::Closed) => Ok(HttpResponse::internal_error()),
    }
}

/// The handler's keyword arguments (None: it takes none); `Ok(Err(response))` when the request was
/// rejected and the handler must not run (422/400).
fn bind<'py>(
    py: Python<'py>,
    on: &NativeLoop<'_>,
    params: &[Param],
    request: HttpRequest,
    form: Option<Form>,
) -> PyResult<Result<Option<Bound<'py, PyDict>>, HttpResponse>> {
    if params.is_empty() {
        return Ok(Ok(None));
    }
    let state = on
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
            on.index,
            state,
            on.shared.uuid_class.bind(py),
        )? {
            Ok(kwargs) => Ok(Some(kwargs)),
            Err(rejected) => Err(rejected.into_response(py)?),
        },
    )
}

/// How far a request got on its first step.
pub(super) enum Started {
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
pub(super) fn finish(
    py: Python<'_>,
    shared: &Arc<LoopShared>,
    (status_code, name): (u16, &str),
    value: Bound<'_, PyAny>,
    context: Bound<'_, PyAny>,
    in_flight: &mut Option<InFlight>,
) -> Started {
    if !ffi::is_coroutine(&value) {
        return Started::Done(shared.respond(py, &value, status_code, name));
    }
    let (reply, mut response) = oneshot::channel();
    let task = RequestTask::new(
        py,
        value.unbind(),
        shared.clone(),
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
pub(super) async fn until_finished(
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
pub(super) async fn on_sync_pool(
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
                finish(
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
