//! ASGI 3 HTTP exchanges: the `http` scope, `receive` and `send`, and what a finished app left behind.
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
//!
//! Over 500 lines: one state machine (request body in, response out) whose transitions reference each
//! other; split, each half would need the other's invariants restated.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use tokio::sync::{mpsc, oneshot};

use super::scope::{base_scope, AsgiEndpoint};
use crate::deadline::{BodyReadError, TimedBody};
use crate::exchange::{HttpRequest, HttpResponse, Latch, RequestBody, ResponseBody, StreamAborted};
use crate::python::awaitable::{done, future_is_done, ready};
use crate::python::convert::{bytes_of, method_string, parse_headers};
use crate::python::loop_state::LoopShared;
use crate::python::response::STREAM_BUFFER;
use crate::python::task::AppConnection;

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

pub(super) struct AsgiExchange {
    state: Mutex<ExchangeState>,
    shared: Arc<LoopShared>,
    name: String,
    pub(super) client_gone: Arc<Latch>,
    pub(super) finished: Latch,
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
        tokio::task::spawn_local(crate::python::response::stream_file(path, sender));
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
    pub(super) fn client_disconnected(&self, py: Python<'_>) {
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

#[pyclass(frozen, module = "percore._runtime", name = "Receive")]
pub(super) struct Receive(Arc<AsgiExchange>);

#[pymethods]
impl Receive {
    fn __call__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.0.receive(py)
    }
}

#[pyclass(frozen, module = "percore._runtime", name = "Send")]
pub(super) struct Send(Arc<AsgiExchange>);

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

/// Builds the HTTP scope, the exchange and the `(scope, receive, send)` arguments for one request.
pub(super) fn prepare<'py>(
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
