//! ASGI 3 over the loop pool: the HTTP scope, `receive` and `send`, and what a finished app left behind.
//!
//! One `AsgiExchange` per request holds the request body still to deliver, the response as the app builds
//! it, and the reply channel to the connection. The response head goes to the connection with the first
//! body message: complete if `more_body` is false, otherwise as a stream fed by later messages (and
//! written to the client as they come). `receive`/`send` return an already-completed awaitable when they
//! need not wait, so an app that never blocks is stepped to completion without touching the asyncio loop.
//!
//! Invariants: exactly one response per request — an app that raises, returns early or breaks the
//! protocol before its response starts gets a 500 (logged); once streaming has started, a failure aborts
//! the stream instead of letting the client take a truncated body for a complete one. All methods run on
//! the request's loop thread. The state lock guards Rust data only: nothing that can run Python (an app's
//! header iterable, `__index__`, `__eq__` of a dict key, a finalizer) runs while it is held, because the
//! app may call `receive()`/`send()` from there and the lock is not re-entrant.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple};
use tokio::sync::{mpsc, oneshot};

use super::executor::LoopShared;
use super::task::AppConnection;
use crate::deadline::{BodyReadError, TimedBody};
use crate::listener::LocalAddress;
use crate::pool::{HttpRequest, HttpResponse, Latch, RequestBody, ResponseBody, StreamAborted};
use crate::query::percent_decode_path;

/// How many body chunks may wait for the client before `send` makes the app wait.
pub const STREAM_BUFFER: usize = 16;

/// An awaitable that is already complete: `await Ready(v)` evaluates to `v` without suspending.
#[pyclass(frozen, module = "percore._runtime")]
pub struct Ready {
    value: Py<PyAny>,
}

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Err(PyStopIteration::new_err((self.value.clone_ref(py),)))
    }

    #[pyo3(signature = (_value=None))]
    fn send(&self, py: Python<'_>, _value: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        self.__next__(py)
    }

    #[pyo3(signature = (error, *_rest))]
    fn throw(&self, error: Bound<'_, PyAny>, _rest: Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        Err(PyErr::from_value(error))
    }

    fn close(&self) {}
}

/// Whether an asyncio future is done (a failing check counts as done: never resolve it twice).
pub fn future_is_done(future: &Bound<'_, PyAny>) -> bool {
    future
        .call_method0(intern!(future.py(), "done"))
        .and_then(|d| d.is_truthy())
        .unwrap_or(true)
}

/// `await Done()` evaluates to `None` without suspending, like `Ready(None)` but cheaper: `__next__`
/// ends the iteration without raising `StopIteration` (CPython takes a bare end of iteration as
/// `None`), and each loop thread reuses one instance. Every `await send(...)` of an ASGI app ends
/// here, twice per response; allocating a `Ready` and raising through `StopIteration` cost ~1.5k
/// instructions per await (callgrind, Starlette `/json`).
#[pyclass(frozen, module = "percore._runtime")]
pub struct Done;

#[pymethods]
impl Done {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self) -> Option<Py<PyAny>> {
        None
    }

    /// Called from Python (`awaitable.send(None)`), the end must be a real `StopIteration`.
    #[pyo3(signature = (_value=None))]
    fn send(&self, _value: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        Err(PyStopIteration::new_err(()))
    }

    #[pyo3(signature = (error, *_rest))]
    fn throw(&self, error: Bound<'_, PyAny>, _rest: Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        Err(PyErr::from_value(error))
    }

    fn close(&self) {}
}

thread_local! {
    /// This thread's `Done`. One per thread, not per process: on 3.13t an object shared by every loop
    /// would have its reference count written by all of them on every await. A raw pointer, leaked on
    /// purpose (one small object per loop thread): it needs no care when the thread exits.
    static DONE: std::cell::Cell<*mut pyo3::ffi::PyObject> =
        const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// The completed awaitable for `None`: this thread's `Done`.
pub fn done(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let cached = DONE.with(|done| done.get());
    if !cached.is_null() {
        // SAFETY: a strong reference this thread owns forever (leaked below); we are attached.
        return Ok(unsafe { Bound::from_borrowed_ptr(py, cached) });
    }
    let created = Bound::new(py, Done)?.into_any();
    DONE.with(|done| done.set(created.clone().into_ptr()));
    Ok(created)
}

/// The completed awaitable for `value` (`Done` for `None`).
pub fn ready<'py>(py: Python<'py>, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if value.is_none() {
        return done(py);
    }
    Ok(Bound::new(
        py,
        Ready {
            value: value.unbind(),
        },
    )?
    .into_any())
}

enum ResponseState {
    NotStarted,
    Started {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    Streaming(mpsc::Sender<Result<Bytes, StreamAborted>>),
    Finished,
    /// The server answered for the app (413, 400 for a malformed body) and told it the client is gone:
    /// whatever the app still sends is dropped silently, as after a disconnect (uvicorn does the same),
    /// and its failure is not logged as an error — the request was the client's fault.
    AnsweredByServer,
}

struct ExchangeState {
    body: Option<RequestBody>,
    body_complete: bool,
    /// Bytes of a streamed body delivered so far, against `--max-body-size`.
    body_received: u64,
    /// The future a `receive()` after the body is waiting on; resolved with `http.disconnect`.
    disconnect_waiter: Option<Py<PyAny>>,
    response: ResponseState,
    reply: Option<oneshot::Sender<HttpResponse>>,
}

pub struct AsgiExchange {
    state: Mutex<ExchangeState>,
    shared: Arc<LoopShared>,
    name: String,
    pub client_gone: Arc<Latch>,
    pub finished: Latch,
}

impl AsgiExchange {
    fn lock(&self) -> std::sync::MutexGuard<'_, ExchangeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn http_request_message<'py>(
        py: Python<'py>,
        body: &[u8],
        more_body: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let message = PyDict::new(py);
        message.set_item(intern!(py, "type"), intern!(py, "http.request"))?;
        message.set_item(intern!(py, "body"), PyBytes::new(py, body))?;
        message.set_item(intern!(py, "more_body"), more_body)?;
        Ok(message.into_any())
    }

    fn disconnect_message(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let message = PyDict::new(py);
        message.set_item(intern!(py, "type"), intern!(py, "http.disconnect"))?;
        Ok(message.into_any())
    }

    /// Whether a `receive()` now would learn that the client is gone (or no longer listened to).
    fn disconnected(&self, state: &ExchangeState) -> bool {
        matches!(
            state.response,
            ResponseState::Finished | ResponseState::AnsweredByServer
        ) || self.client_gone.is_set()
    }

    /// `await receive()`.
    fn receive<'py>(self: &Arc<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut state = self.lock();
        if !state.body_complete {
            let body = state.body.take();
            if matches!(body, Some(RequestBody::Full(_))) {
                state.body_complete = true;
            }
            drop(state);
            return match body {
                Some(RequestBody::Full(bytes)) => {
                    ready(py, Self::http_request_message(py, &bytes, false)?)
                }
                Some(RequestBody::Streaming(incoming)) => self.receive_streaming(py, incoming),
                // A receive() while another is still reading the body.
                None => Err(PyRuntimeError::new_err("receive() called concurrently")),
            };
        }
        let disconnected = self.disconnected(&state);
        drop(state);
        if disconnected {
            return ready(py, Self::disconnect_message(py)?);
        }
        // Created unlocked (creating a future runs Python), so the state is looked at again after.
        let future = self.shared.create_future(py)?;
        let mut state = self.lock();
        if self.disconnected(&state) {
            drop(state);
            return ready(py, Self::disconnect_message(py)?);
        }
        let replaced = state.disconnect_waiter.replace(future.clone().unbind());
        drop(state);
        drop(replaced);
        Ok(future)
    }

    fn receive_streaming<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        mut incoming: TimedBody,
    ) -> PyResult<Bound<'py, PyAny>> {
        let future = self.shared.create_future(py)?;
        let result = future.clone().unbind();
        let exchange = Arc::clone(self);
        tokio::task::spawn_local(async move {
            let chunk = loop {
                match incoming.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => break Ok(Some(data)),
                        Err(_) => continue, // trailers: not part of ASGI's http.request
                    },
                    Some(Err(err)) => break Err(err),
                    None => break Ok(None),
                }
            };
            Python::attach(|py| {
                let message = match chunk {
                    Ok(data) => {
                        // `None` is the end; after a data frame, hyper knows the end only for a
                        // declared length, so a chunked body ends with one empty final message.
                        let more = data.is_some() && !hyper::body::Body::is_end_stream(&incoming);
                        let mut state = exchange.lock();
                        state.body_received += data.as_ref().map_or(0, |d| d.len() as u64);
                        if state.body_received > exchange.shared.max_body_size {
                            drop(state);
                            exchange.answer_for_app(HttpResponse::text(413, "Payload Too Large"));
                            exchange.resolve(py, result.bind(py), Self::disconnect_message(py));
                            return;
                        }
                        if more {
                            state.body = Some(RequestBody::Streaming(incoming));
                        } else {
                            state.body_complete = true;
                        }
                        drop(state);
                        let data = data.unwrap_or_default();
                        Self::http_request_message(py, &data, more)
                    }
                    Err(err) if err.client_left() => {
                        exchange.lock().body_complete = true;
                        Self::disconnect_message(py)
                    }
                    Err(BodyReadError::TimedOut) => {
                        // The body stopped arriving (`--body-timeout`): 408, as for bodies read
                        // before dispatch, and the connection closes.
                        exchange.answer_for_app(HttpResponse::request_timeout());
                        Self::disconnect_message(py)
                    }
                    Err(BodyReadError::Hyper(_)) => {
                        // A malformed body (bad chunk encoding): the client's fault, so 400 — as for
                        // bodies read before dispatch — not the 500 an app failing on a truncated body
                        // would give. The app sees the client gone; hyper closes the connection.
                        exchange.answer_for_app(HttpResponse::text(
                            400,
                            "Bad Request: malformed request body",
                        ));
                        Self::disconnect_message(py)
                    }
                };
                exchange.resolve(py, result.bind(py), message);
            });
        });
        Ok(future)
    }

    /// The server answers for the app, for a request body it cannot take (413, 400, 408), and the app is
    /// told the client is gone: `response` if nothing was sent to the client yet; else a streamed response
    /// is aborted, so that the client cannot take it for complete and the connection closes. Whatever the
    /// app sends afterwards is dropped.
    fn answer_for_app(&self, response: HttpResponse) {
        let mut state = self.lock();
        state.body_complete = true;
        let reply = state.reply.take();
        let previous = std::mem::replace(&mut state.response, ResponseState::AnsweredByServer);
        if let ResponseState::Finished = previous {
            state.response = ResponseState::Finished;
        }
        drop(state);
        match (reply, previous) {
            (Some(reply), _) => {
                let _ = reply.send(response);
            }
            (None, ResponseState::Streaming(sender)) => {
                let reason = format!("the request body failed: {}", response.status);
                tokio::task::spawn_local(async move {
                    let _ = sender.send(Err(StreamAborted(reason))).await;
                });
            }
            _ => {}
        }
    }

    fn resolve(
        &self,
        py: Python<'_>,
        future: &Bound<'_, PyAny>,
        message: PyResult<Bound<'_, PyAny>>,
    ) {
        let outcome = match message {
            Ok(message) => {
                if future_is_done(future) {
                    return;
                }
                future.call_method1(intern!(py, "set_result"), (message,))
            }
            Err(err) => future.call_method1(intern!(py, "set_exception"), (err.into_value(py),)),
        };
        if let Err(err) = outcome {
            err.print(py);
        }
        self.shared.wake.notify_one();
    }

    /// `await send(message)`.
    fn send<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let message = message
            .cast::<PyDict>()
            .map_err(|_| PyTypeError::new_err("ASGI messages must be dicts"))?;
        let kind = message
            .get_item(intern!(py, "type"))?
            .ok_or_else(|| PyTypeError::new_err("ASGI message has no 'type'"))?;
        let kind = kind.cast::<PyString>()?;
        let kind = kind.to_str()?;
        if kind.starts_with("http.response.")
            && matches!(self.lock().response, ResponseState::AnsweredByServer)
        {
            return done(py);
        }
        match kind {
            "http.response.start" => {
                // Read before locking: the status (`__index__`), the headers (any iterable) and even the
                // dict lookups (a key's `__eq__`) may run the app's code, which may call receive/send.
                let status: u16 = message
                    .get_item(intern!(py, "status"))?
                    .ok_or_else(|| PyTypeError::new_err("http.response.start needs 'status'"))?
                    .extract()
                    .map_err(|_| PyTypeError::new_err("'status' must be an int"))?;
                let status = StatusCode::from_u16(status)
                    .map_err(|_| PyTypeError::new_err(format!("invalid HTTP status {status}")))?;
                let headers = match message.get_item(intern!(py, "headers"))? {
                    Some(headers) => parse_headers(&headers)?,
                    None => Vec::new(),
                };
                let mut state = self.lock();
                if !matches!(state.response, ResponseState::NotStarted) {
                    return Err(PyRuntimeError::new_err(
                        "Unexpected ASGI message 'http.response.start': the response has already started",
                    ));
                }
                state.response = ResponseState::Started { status, headers };
                drop(state);
                done(py)
            }
            "http.response.body" => {
                let body = match message.get_item(intern!(py, "body"))? {
                    Some(body) => bytes_of(&body)?,
                    None => Bytes::new(),
                };
                let more = match message.get_item(intern!(py, "more_body"))? {
                    Some(more) => more.is_truthy()?,
                    None => false,
                };
                self.send_body(py, body, more)
            }
            "http.response.pathsend" => {
                let path: String = message
                    .get_item(intern!(py, "path"))?
                    .ok_or_else(|| PyTypeError::new_err("http.response.pathsend needs 'path'"))?
                    .extract()?;
                self.send_file(py, path)
            }
            other => Err(PyRuntimeError::new_err(format!(
                "Unexpected ASGI message '{other}' for an HTTP connection"
            ))),
        }
    }

    fn send_body<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        body: Bytes,
        more: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut state = self.lock();
        let previous = std::mem::replace(&mut state.response, ResponseState::Finished);
        match previous {
            ResponseState::NotStarted => {
                state.response = ResponseState::NotStarted;
                Err(PyRuntimeError::new_err(
                    "Unexpected ASGI message 'http.response.body' before 'http.response.start'",
                ))
            }
            ResponseState::Finished => Err(PyRuntimeError::new_err(
                "Unexpected ASGI message 'http.response.body' after the response completed",
            )),
            ResponseState::AnsweredByServer => {
                state.response = ResponseState::AnsweredByServer;
                drop(state);
                done(py)
            }
            ResponseState::Started { status, headers } => {
                let reply = state.reply.take();
                if more {
                    let (sender, chunks) = mpsc::channel(STREAM_BUFFER);
                    if !body.is_empty() {
                        let _ = sender.try_send(Ok(body));
                    }
                    state.response = ResponseState::Streaming(sender);
                    drop(state);
                    if let Some(reply) = reply {
                        let _ = reply.send(HttpResponse {
                            status,
                            headers,
                            body: ResponseBody::Stream(chunks, Arc::clone(&self.client_gone)),
                        });
                    }
                } else {
                    drop(state);
                    if let Some(reply) = reply {
                        let _ = reply.send(HttpResponse {
                            status,
                            headers,
                            body: ResponseBody::Full(body),
                        });
                    }
                    self.response_complete(py);
                }
                ready(py, py.None().into_bound(py))
            }
            ResponseState::Streaming(sender) => {
                if more {
                    state.response = ResponseState::Streaming(sender.clone());
                }
                drop(state);
                let waiting = if body.is_empty() {
                    None
                } else {
                    match sender.try_send(Ok(body)) {
                        Ok(()) => None,
                        // The client is gone: per ASGI 2.3 the send is ignored, and a pending
                        // receive() learns of the disconnect.
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            self.client_gone.set();
                            self.client_disconnected(py);
                            None
                        }
                        Err(mpsc::error::TrySendError::Full(chunk)) => Some(chunk),
                    }
                };
                if !more {
                    // Dropping the last sender (after any queued chunk) ends the body.
                    self.response_complete(py);
                }
                match waiting {
                    None => ready(py, py.None().into_bound(py)),
                    Some(chunk) => self.wait_for_room(py, sender, chunk),
                }
            }
        }
    }

    /// The client is slower than the app: the app's `send` waits until the stream has room.
    fn wait_for_room<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        sender: mpsc::Sender<Result<Bytes, StreamAborted>>,
        chunk: Result<Bytes, StreamAborted>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let future = self.shared.create_future(py)?;
        let result = future.clone().unbind();
        let exchange = Arc::clone(self);
        tokio::task::spawn_local(async move {
            let _ = sender.send(chunk).await;
            drop(sender);
            Python::attach(|py| {
                let none = Ok(py.None().into_bound(py));
                exchange.resolve(py, result.bind(py), none);
            });
        });
        Ok(future)
    }

    fn send_file<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        path: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut state = self.lock();
        let ResponseState::Started { status, headers } =
            std::mem::replace(&mut state.response, ResponseState::Finished)
        else {
            return Err(PyRuntimeError::new_err(
                "Unexpected ASGI message 'http.response.pathsend' outside a started response",
            ));
        };
        let reply = state.reply.take();
        drop(state);
        let (sender, chunks) = mpsc::channel(STREAM_BUFFER);
        if let Some(reply) = reply {
            let _ = reply.send(HttpResponse {
                status,
                headers,
                body: ResponseBody::Stream(chunks, Arc::clone(&self.client_gone)),
            });
        }
        tokio::task::spawn_local(super::response::stream_file(path, sender));
        self.response_complete(py);
        ready(py, py.None().into_bound(py))
    }

    fn response_complete(&self, py: Python<'_>) {
        let waiter = self.lock().disconnect_waiter.take();
        if let Some(waiter) = waiter {
            self.resolve(py, waiter.bind(py), Self::disconnect_message(py));
        }
    }

    /// The client went away while the app was still running: wake a pending `receive()`.
    pub fn client_disconnected(&self, py: Python<'_>) {
        let waiter = self.lock().disconnect_waiter.take();
        if let Some(waiter) = waiter {
            self.resolve(py, waiter.bind(py), Self::disconnect_message(py));
        }
    }
}

impl AppConnection for AsgiExchange {
    fn app_finished(&self, py: Python<'_>, error: Option<PyErr>) {
        let (response, reply) = {
            let mut state = self.lock();
            (
                std::mem::replace(&mut state.response, ResponseState::Finished),
                state.reply.take(),
            )
        };
        match (response, error) {
            (ResponseState::Streaming(sender), error) => {
                // Failed or returned mid-stream: abort, so the client cannot take the cut body for a
                // complete one. Sent by a task because the buffer may be full (slow client).
                let reason = match error {
                    Some(err) => {
                        self.shared.fail(py, &err, &self.name);
                        err.to_string()
                    }
                    None => "the ASGI app returned before the end of its streamed body".to_owned(),
                };
                tokio::task::spawn_local(async move {
                    let _ = sender.send(Err(StreamAborted(reason))).await;
                });
            }
            (ResponseState::Finished | ResponseState::AnsweredByServer, None) => {}
            (ResponseState::AnsweredByServer, Some(_)) => {}
            (ResponseState::Finished, Some(err)) => {
                // The response was already sent (e.g. a background task failed afterwards).
                self.shared.fail(py, &err, &self.name);
            }
            (_, error) => {
                let err = error.unwrap_or_else(|| {
                    PyRuntimeError::new_err("ASGI app returned without completing a response")
                });
                let response = self.shared.fail(py, &err, &self.name);
                if let Some(reply) = reply {
                    let _ = reply.send(response);
                }
            }
        }
        self.response_complete(py);
        self.finished.set();
    }
}

pub fn bytes_of(value: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(bytes) = value.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(bytes.as_bytes()));
    }
    if let Ok(array) = value.cast::<PyByteArray>() {
        return Ok(Bytes::from(array.to_vec()));
    }
    if let Ok(view) = value.extract::<Vec<u8>>() {
        return Ok(Bytes::from(view));
    }
    Err(PyTypeError::new_err(format!(
        "ASGI body must be bytes, not {}",
        value.get_type().name()?
    )))
}

fn parse_headers(headers: &Bound<'_, PyAny>) -> PyResult<Vec<(HeaderName, HeaderValue)>> {
    let mut parsed = Vec::new();
    for pair in headers.try_iter()? {
        let pair = pair?;
        // Apps send `(bytes, bytes)` tuples (Starlette, FastAPI) or lists: the tuple path avoids the
        // generic `pair[0]` (an int object and a dispatch per item).
        let (name, value) = match pair.cast::<PyTuple>() {
            Ok(tuple) if tuple.len() == 2 => (tuple.get_item(0)?, tuple.get_item(1)?),
            _ => (pair.get_item(0)?, pair.get_item(1)?),
        };
        let name = header_name(&name)?;
        let value = match value.cast::<PyBytes>() {
            Ok(bytes) => HeaderValue::from_bytes(bytes.as_bytes()),
            Err(_) => HeaderValue::from_maybe_shared(bytes_of(&value)?),
        }
        .map_err(|_| PyTypeError::new_err(format!("invalid value for header {name}")))?;
        parsed.push((name, value));
    }
    Ok(parsed)
}

fn header_name(name: &Bound<'_, PyAny>) -> PyResult<HeaderName> {
    let invalid = |name: &[u8]| {
        PyTypeError::new_err(format!(
            "invalid header name {:?}",
            String::from_utf8_lossy(name)
        ))
    };
    match name.cast::<PyBytes>() {
        Ok(bytes) => {
            HeaderName::from_bytes(bytes.as_bytes()).map_err(|_| invalid(bytes.as_bytes()))
        }
        Err(_) => {
            let name = bytes_of(name)?;
            HeaderName::from_bytes(&name).map_err(|_| invalid(&name))
        }
    }
}

#[pyclass(frozen, module = "percore._runtime", name = "Receive")]
pub struct Receive(Arc<AsgiExchange>);

#[pymethods]
impl Receive {
    fn __call__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.0.receive(py)
    }
}

#[pyclass(frozen, module = "percore._runtime", name = "Send")]
pub struct Send(Arc<AsgiExchange>);

#[pymethods]
impl Send {
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.0.send(py, message)
    }
}

/// An ASGI application as a route target.
pub struct AsgiEndpoint {
    pub app: Py<PyAny>,
    pub root_path: String,
}

thread_local! {
    /// The last client host seen on this loop thread, as the `str` the scope needs: formatting an IP
    /// costs more than the rest of the scope's fixed keys, and a loop's clients (a load balancer, a
    /// proxy, localhost) are few.
    static CLIENT_HOST: std::cell::RefCell<Option<(std::net::IpAddr, Py<PyString>)>> =
        const { std::cell::RefCell::new(None) };
}

fn host_string(py: Python<'_>, ip: std::net::IpAddr) -> Bound<'_, PyString> {
    CLIENT_HOST.with(|cache| {
        let mut cache = cache.borrow_mut();
        match &*cache {
            Some((cached, host)) if *cached == ip => host.bind(py).clone(),
            _ => {
                let host = PyString::new(py, &ip.to_string());
                *cache = Some((ip, host.clone().unbind()));
                host
            }
        }
    })
}

/// `scope["server"]`, built once per scope template (see `SCOPE_TEMPLATES`).
/// ASGI's `server`: (host, port), or (path, None) on a Unix socket, as uvicorn reports it.
pub fn server_tuple<'py>(py: Python<'py>, server: &LocalAddress) -> PyResult<Bound<'py, PyTuple>> {
    match server {
        LocalAddress::Tcp(address) => PyTuple::new(
            py,
            [
                PyString::new(py, &address.ip().to_string()).into_any(),
                address.port().into_pyobject(py)?.into_any(),
            ],
        ),
        LocalAddress::Unix(path) => PyTuple::new(
            py,
            [PyString::new(py, path).into_any(), py.None().into_bound(py)],
        ),
    }
}

/// The scope keys that do not change between requests of one kind on one listener.
struct ScopeTemplate {
    kind: usize,
    scheme: usize,
    root_path: String,
    server: LocalAddress,
    scope: Py<PyDict>,
    asgi: Py<PyDict>,
}

thread_local! {
    /// This loop's scope templates (HTTP, WebSocket; a loop has one listener): a request's scope is a
    /// copy of its template with the per-request keys set. Copying a dict clones its key table in one
    /// go; building it key by key resized it twice and cost ~2.5k more instructions per request.
    static SCOPE_TEMPLATES: std::cell::RefCell<Vec<ScopeTemplate>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A fresh scope dict holding the fixed keys (`type`, `asgi`, `http_version` 1.1, `scheme`, `root_path`,
/// `server`) and placeholders for the keys `base_scope` sets (so that setting them replaces rather than
/// inserts). `asgi` is a fresh dict too: nothing in a scope is shared between requests, as under uvicorn.
fn scope_from_template<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyString>,
    scheme: &Bound<'py, PyString>,
    root_path: &str,
    server: &LocalAddress,
) -> PyResult<Bound<'py, PyDict>> {
    SCOPE_TEMPLATES.with(|templates| {
        let mut templates = templates.borrow_mut();
        let found = templates.iter().position(|t| {
            t.kind == kind.as_ptr() as usize
                && t.scheme == scheme.as_ptr() as usize
                && t.server == *server
                && t.root_path == root_path
        });
        let template = match found {
            Some(index) => &templates[index],
            None => {
                let asgi = PyDict::new(py);
                asgi.set_item(intern!(py, "version"), intern!(py, "3.0"))?;
                asgi.set_item(intern!(py, "spec_version"), intern!(py, "2.3"))?;
                let scope = PyDict::new(py);
                let none = py.None();
                scope.set_item(intern!(py, "type"), kind)?;
                scope.set_item(intern!(py, "asgi"), &none)?;
                scope.set_item(intern!(py, "http_version"), intern!(py, "1.1"))?;
                scope.set_item(intern!(py, "scheme"), scheme)?;
                for key in ["path", "raw_path"] {
                    scope.set_item(key, &none)?;
                }
                scope.set_item(intern!(py, "root_path"), root_path)?;
                for key in ["query_string", "headers", "client"] {
                    scope.set_item(key, &none)?;
                }
                scope.set_item(intern!(py, "server"), server_tuple(py, server)?)?;
                // A loop with clients on many listeners (never the case today) must not grow forever.
                if templates.len() >= 4 {
                    templates.remove(0);
                }
                templates.push(ScopeTemplate {
                    kind: kind.as_ptr() as usize,
                    scheme: scheme.as_ptr() as usize,
                    root_path: root_path.to_owned(),
                    server: server.clone(),
                    scope: scope.unbind(),
                    asgi: asgi.unbind(),
                });
                templates.last().expect("just pushed")
            }
        };
        let scope = template.scope.bind(py).copy()?;
        scope.set_item(intern!(py, "asgi"), template.asgi.bind(py).copy()?)?;
        Ok(scope)
    })
}

/// `GET`, `POST`, ... as the interned strings they are; other methods as new strings.
pub fn method_string<'py>(py: Python<'py>, method: &http::Method) -> Bound<'py, PyString> {
    let known = match *method {
        http::Method::GET => intern!(py, "GET"),
        http::Method::POST => intern!(py, "POST"),
        http::Method::PUT => intern!(py, "PUT"),
        http::Method::DELETE => intern!(py, "DELETE"),
        http::Method::PATCH => intern!(py, "PATCH"),
        http::Method::HEAD => intern!(py, "HEAD"),
        http::Method::OPTIONS => intern!(py, "OPTIONS"),
        _ => return PyString::new(py, method.as_str()),
    };
    known.clone()
}

/// The scope keys HTTP and WebSocket connections share: `type`, `asgi`, `http_version`, `scheme`,
/// `path` (percent-decoded and prefixed with `root_path`, as uvicorn does), `raw_path`, `root_path`,
/// `query_string`, `headers` (byte pairs, in order, duplicates kept), `client`, `server` and `state`.
pub fn base_scope<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyString>,
    scheme: &Bound<'py, PyString>,
    endpoint: &AsgiEndpoint,
    request: &HttpRequest,
    loop_state: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    let scope = scope_from_template(py, kind, scheme, &endpoint.root_path, &request.server)?;
    match request.version {
        http::Version::HTTP_10 => {
            scope.set_item(intern!(py, "http_version"), intern!(py, "1.0"))?
        }
        http::Version::HTTP_2 => scope.set_item(intern!(py, "http_version"), intern!(py, "2"))?,
        _ => {}
    }
    let raw_path = request.uri.path();
    let path = if endpoint.root_path.is_empty() && !raw_path.contains('%') {
        PyString::new(py, raw_path)
    } else {
        let decoded = percent_decode_path(raw_path);
        PyString::new(py, &format!("{}{decoded}", endpoint.root_path))
    };
    scope.set_item(intern!(py, "path"), path)?;
    scope.set_item(
        intern!(py, "raw_path"),
        PyBytes::new(py, raw_path.as_bytes()),
    )?;
    let query = request.uri.query().unwrap_or("");
    scope.set_item(
        intern!(py, "query_string"),
        PyBytes::new(py, query.as_bytes()),
    )?;
    let headers = PyList::empty(py);
    for (name, value) in &request.headers {
        headers.append(PyTuple::new(
            py,
            [
                PyBytes::new(py, name.as_str().as_bytes()),
                PyBytes::new(py, value.as_bytes()),
            ],
        )?)?;
    }
    scope.set_item(intern!(py, "headers"), headers)?;
    if let Some(forwarded) = &request.forwarded {
        // A trusted proxy's view of the client and scheme (runtime/src/proxy.rs), as uvicorn applies it.
        let scheme = if kind.to_str()? == "websocket" {
            forwarded.websocket_scheme()
        } else {
            forwarded.scheme
        };
        if let Some(scheme) = scheme {
            scope.set_item(intern!(py, "scheme"), scheme)?;
        }
    }
    let forwarded_client = request.forwarded.as_ref().and_then(|f| f.client.as_ref());
    match request.client {
        _ if forwarded_client.is_some() => {
            scope.set_item(intern!(py, "client"), forwarded_client)?;
        }
        Some(client) => {
            let host = host_string(py, client.ip());
            let client = PyTuple::new(
                py,
                [host.into_any(), client.port().into_pyobject(py)?.into_any()],
            )?;
            scope.set_item(intern!(py, "client"), client)?;
        }
        // A Unix socket peer: the template's None, as uvicorn reports it.
        None => {}
    }
    if let Some(state) = loop_state {
        scope.set_item(intern!(py, "state"), state.copy()?)?;
    }
    Ok(scope)
}

/// `"GET /path"`: how logs and task names call a request. Built by hand: `format!` cost ~1k
/// instructions per request, for a name that is read only when something fails.
pub fn request_name(request: &HttpRequest) -> String {
    let (method, path) = (request.method.as_str(), request.uri.path());
    let mut name = String::with_capacity(method.len() + 1 + path.len());
    name.push_str(method);
    name.push(' ');
    name.push_str(path);
    name
}

/// Builds the HTTP scope, the exchange and the `(scope, receive, send)` arguments for one request.
pub fn prepare<'py>(
    py: Python<'py>,
    shared: &Arc<LoopShared>,
    endpoint: &AsgiEndpoint,
    request: HttpRequest,
    loop_state: Option<&Bound<'py, PyDict>>,
    reply: oneshot::Sender<HttpResponse>,
    name: String,
) -> PyResult<(Arc<AsgiExchange>, Bound<'py, PyTuple>)> {
    let scheme = if request.secure {
        intern!(py, "https")
    } else {
        intern!(py, "http")
    };
    let scope = base_scope(
        py,
        intern!(py, "http"),
        scheme,
        endpoint,
        &request,
        loop_state,
    )?;
    scope.set_item(intern!(py, "method"), method_string(py, &request.method))?;
    let extensions = PyDict::new(py);
    extensions.set_item(intern!(py, "http.response.pathsend"), PyDict::new(py))?;
    scope.set_item(intern!(py, "extensions"), extensions)?;

    let exchange = Arc::new(AsgiExchange {
        state: Mutex::new(ExchangeState {
            body: Some(request.body),
            body_complete: false,
            body_received: 0,
            disconnect_waiter: None,
            response: ResponseState::NotStarted,
            reply: Some(reply),
        }),
        shared: Arc::clone(shared),
        name,
        client_gone: request.client_gone,
        finished: Latch::default(),
    });
    let receive = Bound::new(py, Receive(Arc::clone(&exchange)))?;
    let send = Bound::new(py, Send(Arc::clone(&exchange)))?;
    let arguments = PyTuple::new(py, [scope.into_any(), receive.into_any(), send.into_any()])?;
    Ok((exchange, arguments))
}
