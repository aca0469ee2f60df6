//! ASGI WebSockets: the `websocket` scope, the handshake decided by the app, then messages both ways.
//!
//! The app first receives `websocket.connect`. `websocket.accept` answers the upgrade with 101 (and the
//! chosen subprotocol); `websocket.close` before that denies it with 403, and the denial-response
//! extension (`websocket.http.response.start`/`.body`) with the app's own HTTP response. After the upgrade the frame
//! pump (`crate::websocket`, a local task) turns client frames into `websocket.receive` /
//! `websocket.disconnect` for `receive()` and writes what the app passes to `send()`. A WebSocket stays
//! on the loop that accepted its connection (the upgraded socket belongs to that thread's runtime).
//! Native `@api.websocket` routes use the same exchange: their runner (`percore._websocket_route`) is
//! called with this scope, `receive` and `send` (`PyExecutor::start_websocket`).
//!
//! Both directions are bounded. Client messages wait in a queue of `--ws-max-queue` for `receive()`;
//! while it is full the reader stops reading the socket, so TCP pushes back on the client. Frames for the
//! client wait in a queue of `SEND_QUEUE_FRAMES` (then `send()` waits); a client that reads nothing for
//! `--send-timeout` while frames wait for it is dropped, and the app hears `websocket.disconnect` 1006.
//!
//! Invariants: one HTTP answer per handshake (101, 403, the app's denial response, or 500 if the app
//! fails before deciding); once
//! closed by either side nothing more is sent; everything runs on the connection's loop thread; the state
//! lock is never held while Python code runs (an app's objects may call back into `receive()`/`send()`,
//! which take the lock: holding it would deadlock the loop), so Python values are read before locking.
//!
//! Over 500 lines: the handshake, the `receive()` queue and the app side of the frame pump share one
//! state machine (`State`), which reads best whole.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use tokio::sync::{mpsc, oneshot, Notify};

use super::scope::{base_scope, AsgiEndpoint};
use crate::exchange::{HttpRequest, HttpResponse, Latch, ResponseBody};
use crate::python::awaitable::{future_is_done, ready};
use crate::python::loop_state::LoopShared;
use crate::python::task::AppConnection;
use crate::websocket::{
    derive_accept_key, serve_upgraded, App as PumpApp, CloseCode, CloseFrame, Event,
    Limits as PumpLimits, Message,
};

/// Frames queued for a client before `send()` makes the app wait (plus what the socket buffers hold).
const SEND_QUEUE_FRAMES: usize = 64;

enum Phase {
    Handshake,
    /// The app is sending a denial response (`websocket.http.response.*`): the handshake's answer,
    /// its body collected until `more_body` is false.
    Denying(HttpResponse, Vec<u8>),
    Open,
    Closed,
}

struct State {
    phase: Phase,
    /// Events for `receive()` that nobody is waiting for yet.
    events: VecDeque<Event>,
    /// The future a `receive()` is waiting on.
    waiter: Option<Py<PyAny>>,
    reply: Option<oneshot::Sender<HttpResponse>>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// Frames for the client; the writer task takes the receiving end at upgrade. Bounded: an app that
    /// sends faster than the client reads waits in `send()` instead of growing memory without limit.
    outgoing: mpsc::Sender<Message>,
    outgoing_receiver: Option<mpsc::Receiver<Message>>,
    client_key: String,
    /// The server closed the open connection itself (`close_from_server`, `abandon`), not the app: the
    /// app's later sends fail as on a connection that broke (OSError), its close is a no-op, as under
    /// uvicorn, instead of the protocol error a send after its own close is.
    closed_by_server: bool,
}

/// What the app passed to `send()`, read out of its Python objects before the state is locked.
enum Outgoing {
    Accept {
        subprotocol: Option<String>,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    Send(Message),
    Close {
        code: u16,
        reason: String,
    },
    ResponseStart(HttpResponse),
    ResponseBody {
        body: Vec<u8>,
        more: bool,
    },
    Other,
}

pub(in crate::python) struct WebSocketExchange {
    state: Mutex<State>,
    /// Notified when `receive()` takes an event: a reader waiting for room in the queue reads on.
    room: Notify,
    shared: Arc<LoopShared>,
    name: String,
}

impl WebSocketExchange {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn message<'py>(py: Python<'py>, event: &Event) -> PyResult<Bound<'py, PyAny>> {
        let message = PyDict::new(py);
        match event {
            Event::Connect => {
                message.set_item(intern!(py, "type"), intern!(py, "websocket.connect"))?;
            }
            Event::Text(text) => {
                message.set_item(intern!(py, "type"), intern!(py, "websocket.receive"))?;
                message.set_item(intern!(py, "text"), text)?;
            }
            Event::Binary(data) => {
                message.set_item(intern!(py, "type"), intern!(py, "websocket.receive"))?;
                message.set_item(intern!(py, "bytes"), PyBytes::new(py, data))?;
            }
            Event::Disconnect(code) => {
                message.set_item(intern!(py, "type"), intern!(py, "websocket.disconnect"))?;
                message.set_item(intern!(py, "code"), *code)?;
            }
        }
        Ok(message.into_any())
    }

    fn receive<'py>(self: &Arc<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let previous = {
            let mut state = self.lock();
            if let Some(event) = state.events.pop_front() {
                // A disconnect stays the answer to every later receive().
                if let Event::Disconnect(code) = event {
                    state.events.push_front(Event::Disconnect(code));
                }
                drop(state);
                self.room.notify_one();
                return ready(py, Self::message(py, &event)?);
            }
            state.waiter.take()
        };
        // A previous receive() that was cancelled (wait_for, asyncio.wait) left its future behind.
        if let Some(previous) = previous {
            if !future_is_done(previous.bind(py)) {
                self.set_waiter(previous);
                return Err(PyRuntimeError::new_err("receive() called concurrently"));
            }
        }
        let future = self.shared.create_future(py)?;
        self.set_waiter(future.clone().unbind());
        Ok(future)
    }

    /// Stores the future a `receive()` waits on. A future it replaces is released after unlocking:
    /// releasing a Python object may run Python code.
    fn set_waiter(&self, future: Py<PyAny>) {
        let replaced = self.lock().waiter.replace(future);
        drop(replaced);
    }

    /// Whether the client's messages fill the queue: the reader waits before reading more.
    fn queue_full(&self) -> bool {
        self.lock().events.len() >= self.shared.websocket_max_queue
    }

    /// Delivers a client event to a waiting `receive()`, or queues it.
    fn deliver(&self, py: Python<'_>, event: Event) {
        let waiter = self.lock().waiter.take();
        let waiter = match waiter {
            Some(waiter) if !future_is_done(waiter.bind(py)) => waiter,
            // Nobody waiting, or the waiter was cancelled: keep the event for the next receive().
            _ => {
                self.lock().events.push_back(event);
                return;
            }
        };
        if let Event::Disconnect(code) = &event {
            self.lock().events.push_back(Event::Disconnect(*code));
        }
        let result = Self::message(py, &event).and_then(|m| {
            waiter
                .bind(py)
                .call_method1(intern!(py, "set_result"), (m,))
        });
        if let Err(err) = result {
            err.print(py);
        }
        self.shared.wake.notify_one();
    }

    fn send<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let message = message
            .cast::<PyDict>()
            .map_err(|_| PyTypeError::new_err("ASGI messages must be dicts"))?;
        let kind: String = message
            .get_item(intern!(py, "type"))?
            .ok_or_else(|| PyTypeError::new_err("ASGI message has no 'type'"))?
            .extract()?;
        // Everything is read from the app's objects first: they may run Python code (a header iterable,
        // `__index__`, `__eq__` on a key), which may call `receive()`/`send()` again.
        let outgoing = Self::outgoing(py, &kind, message)?;
        let mut state = self.lock();
        let closed_by_server = state.closed_by_server;
        match (outgoing, &mut state.phase) {
            (
                Outgoing::Accept {
                    subprotocol,
                    headers: extra,
                },
                Phase::Handshake,
            ) => {
                let mut headers = vec![
                    (http::header::UPGRADE, HeaderValue::from_static("websocket")),
                    (
                        http::header::CONNECTION,
                        HeaderValue::from_static("Upgrade"),
                    ),
                    (
                        http::header::SEC_WEBSOCKET_ACCEPT,
                        HeaderValue::from_str(&derive_accept_key(state.client_key.as_bytes()))
                            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?,
                    ),
                ];
                if let Some(subprotocol) = subprotocol {
                    headers.push((
                        http::header::SEC_WEBSOCKET_PROTOCOL,
                        HeaderValue::from_str(&subprotocol)
                            .map_err(|_| PyTypeError::new_err("invalid subprotocol"))?,
                    ));
                }
                headers.extend(extra);
                state.phase = Phase::Open;
                let reply = state.reply.take();
                let upgrade = state.upgrade.take();
                let outgoing = state.outgoing_receiver.take();
                drop(state);
                if let Some(reply) = reply {
                    let _ = reply.send(HttpResponse {
                        status: StatusCode::SWITCHING_PROTOCOLS,
                        headers,
                        body: ResponseBody::Full(Bytes::new()),
                    });
                }
                if let (Some(upgrade), Some(outgoing)) = (upgrade, outgoing) {
                    tokio::task::spawn_local(pump(Arc::clone(self), upgrade, outgoing));
                }
            }
            (Outgoing::Close { .. }, Phase::Handshake) => {
                state.phase = Phase::Closed;
                let reply = state.reply.take();
                drop(state);
                if let Some(reply) = reply {
                    let _ = reply.send(HttpResponse::text(403, "Forbidden"));
                }
            }
            (Outgoing::ResponseStart(response), Phase::Handshake) => {
                state.phase = Phase::Denying(response, Vec::new());
            }
            (Outgoing::ResponseBody { body, more }, Phase::Denying(_, collected)) => {
                collected.extend_from_slice(&body);
                if !more {
                    let denial = std::mem::replace(&mut state.phase, Phase::Closed);
                    let reply = state.reply.take();
                    drop(state);
                    if let (Some(reply), Phase::Denying(response, body)) = (reply, denial) {
                        let _ = reply.send(HttpResponse {
                            body: ResponseBody::Full(body.into()),
                            ..response
                        });
                    }
                }
            }
            (Outgoing::Send(frame), Phase::Open) => {
                let sender = state.outgoing.clone();
                drop(state);
                return self.enqueue(py, sender, frame);
            }
            (Outgoing::Close { code, reason }, Phase::Open) => {
                state.phase = Phase::Closed;
                let sender = state.outgoing.clone();
                drop(state);
                let close = Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                }));
                return self.enqueue(py, sender, close);
            }
            (Outgoing::Close { .. }, Phase::Closed) if closed_by_server => {
                return ready(py, py.None().into_bound(py));
            }
            (Outgoing::Send(_), Phase::Closed) if closed_by_server => {
                return Err(PyOSError::new_err("the WebSocket connection is closed"));
            }
            (_, Phase::Closed) => {
                return Err(PyRuntimeError::new_err(format!(
                    "Unexpected ASGI message '{kind}' after the WebSocket was closed"
                )))
            }
            (_, _) => {
                return Err(PyRuntimeError::new_err(format!(
                    "Unexpected ASGI message '{kind}' in this WebSocket state"
                )))
            }
        }
        ready(py, py.None().into_bound(py))
    }

    /// A message's `headers`: an iterable of `(name, value)` byte pairs (runs the app's Python code).
    fn headers(headers: Option<Bound<'_, PyAny>>) -> PyResult<Vec<(HeaderName, HeaderValue)>> {
        let mut parsed = Vec::new();
        if let Some(headers) = headers {
            for pair in headers.try_iter()? {
                let pair = pair?;
                let name: Vec<u8> = pair.get_item(0)?.extract()?;
                let value: Vec<u8> = pair.get_item(1)?.extract()?;
                parsed.push((
                    HeaderName::from_bytes(&name)
                        .map_err(|_| PyTypeError::new_err("invalid header name"))?,
                    HeaderValue::from_bytes(&value)
                        .map_err(|_| PyTypeError::new_err("invalid header value"))?,
                ));
            }
        }
        Ok(parsed)
    }

    /// Reads a `send()` message of type `kind` out of the app's dict into Rust values. Runs the app's
    /// Python code (iterables, `__index__`, ...), so it must be called without the state lock.
    fn outgoing<'py>(
        py: Python<'py>,
        kind: &str,
        message: &Bound<'py, PyDict>,
    ) -> PyResult<Outgoing> {
        let field = |name: &Bound<'py, PyString>| -> PyResult<Option<Bound<'py, PyAny>>> {
            Ok(message.get_item(name)?.filter(|v| !v.is_none()))
        };
        Ok(match kind {
            "websocket.accept" => {
                let subprotocol = field(intern!(py, "subprotocol"))?
                    .map(|p| p.extract())
                    .transpose()?;
                Outgoing::Accept {
                    subprotocol,
                    headers: Self::headers(field(intern!(py, "headers"))?)?,
                }
            }
            "websocket.send" => Outgoing::Send(
                match (field(intern!(py, "text"))?, field(intern!(py, "bytes"))?) {
                    (Some(text), _) => Message::text(text.cast::<PyString>()?.to_str()?.to_owned()),
                    (None, Some(data)) => Message::binary(data.extract::<Vec<u8>>()?),
                    (None, None) => {
                        return Err(PyTypeError::new_err(
                            "websocket.send needs 'text' or 'bytes'",
                        ))
                    }
                },
            ),
            "websocket.http.response.start" => {
                let status: u16 = field(intern!(py, "status"))?
                    .ok_or_else(|| {
                        PyTypeError::new_err("websocket.http.response.start needs 'status'")
                    })?
                    .extract()?;
                let status = StatusCode::from_u16(status)
                    .map_err(|_| PyTypeError::new_err(format!("invalid status {status}")))?;
                Outgoing::ResponseStart(HttpResponse {
                    status,
                    headers: Self::headers(field(intern!(py, "headers"))?)?,
                    body: ResponseBody::Full(Bytes::new()),
                })
            }
            "websocket.http.response.body" => Outgoing::ResponseBody {
                body: field(intern!(py, "body"))?
                    .map(|b| b.extract())
                    .transpose()?
                    .unwrap_or_default(),
                more: field(intern!(py, "more_body"))?
                    .map(|m| m.is_truthy())
                    .transpose()?
                    .unwrap_or(false),
            },
            "websocket.close" => Outgoing::Close {
                code: field(intern!(py, "code"))?
                    .map(|c| c.extract())
                    .transpose()?
                    .unwrap_or(1000),
                reason: field(intern!(py, "reason"))?
                    .map(|r| r.extract())
                    .transpose()?
                    .unwrap_or_default(),
            },
            _ => Outgoing::Other,
        })
    }
}

impl AppConnection for WebSocketExchange {
    fn app_finished(&self, py: Python<'_>, error: Option<PyErr>) {
        // Reported before locking: the error handler and the exception's own methods are Python code.
        if let Some(err) = &error {
            self.shared.fail(py, err, &self.name);
        }
        let mut state = self.lock();
        match state.phase {
            Phase::Handshake => {
                state.phase = Phase::Closed;
                if let Some(reply) = state.reply.take() {
                    let response = if error.is_some() {
                        HttpResponse::internal_error()
                    } else {
                        HttpResponse::text(403, "Forbidden")
                    };
                    let _ = reply.send(response);
                }
            }
            Phase::Denying(..) => {
                // The app ended inside its denial response: what it sent so far, or a 500 if it failed.
                let denial = std::mem::replace(&mut state.phase, Phase::Closed);
                if let (Some(reply), Phase::Denying(response, body)) = (state.reply.take(), denial)
                {
                    let _ = reply.send(if error.is_some() {
                        HttpResponse::internal_error()
                    } else {
                        HttpResponse {
                            body: ResponseBody::Full(body.into()),
                            ..response
                        }
                    });
                }
            }
            Phase::Open => {
                state.phase = Phase::Closed;
                let code = if error.is_some() {
                    CloseCode::Error
                } else {
                    CloseCode::Normal
                };
                let sender = state.outgoing.clone();
                drop(state);
                send_eventually(
                    sender,
                    Message::Close(Some(CloseFrame {
                        code,
                        reason: "".into(),
                    })),
                );
            }
            Phase::Closed => {}
        }
    }
}

impl WebSocketExchange {
    /// Queues `frame` for the client. With room in the queue the app's `await send(...)` completes at
    /// once; when the client reads slower than the app sends, it completes once the frame is queued.
    /// Once the connection is gone (the pump ended; the app has been sent `websocket.disconnect`) a send
    /// raises `OSError`, as ASGI 2.4 asks and uvicorn does: an already-completed awaitable never yields to
    /// the loop, so an app sending in a loop without receiving would hold its loop thread forever.
    fn enqueue<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        sender: mpsc::Sender<Message>,
        frame: Message,
    ) -> PyResult<Bound<'py, PyAny>> {
        let frame = match sender.try_send(frame) {
            Ok(()) => return ready(py, py.None().into_bound(py)),
            // Closing what is closed already is no error (a `finally: await websocket.close()`).
            Err(mpsc::error::TrySendError::Closed(Message::Close(_))) => {
                return ready(py, py.None().into_bound(py))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(PyOSError::new_err("the WebSocket connection is closed"))
            }
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        let future = self.shared.create_future(py)?;
        let result = future.clone().unbind();
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_local(async move {
            let _ = sender.send(frame).await;
            Python::attach(|py| {
                let result = result.bind(py);
                if !future_is_done(result) {
                    if let Err(err) = result.call_method1(intern!(py, "set_result"), (py.None(),)) {
                        err.print(py);
                    }
                    shared.wake.notify_one();
                }
            });
        });
        Ok(future)
    }

    /// The client read nothing for `--send-timeout`: its socket is dropped without a close handshake and
    /// the app hears `websocket.disconnect` 1006 (abnormal closure), as for a connection that broke.
    fn abandon(&self, py: Python<'_>) {
        let mut state = self.lock();
        state.phase = Phase::Closed;
        state.closed_by_server = true;
        drop(state);
        self.deliver(py, Event::Disconnect(1006));
    }

    /// Answers the handshake with `response` instead of running the app (a native route's parameters
    /// did not validate).
    pub(in crate::python) fn refuse(&self, response: HttpResponse) {
        let mut state = self.lock();
        state.phase = Phase::Closed;
        let reply = state.reply.take();
        drop(state);
        if let Some(reply) = reply {
            let _ = reply.send(response);
        }
    }

    /// Closes an open WebSocket from the server's side with `code`, and tells the app (its
    /// `websocket.disconnect` carries the same code).
    fn close_from_server(&self, py: Python<'_>, code: CloseCode, reason: &'static str) {
        let mut state = self.lock();
        if !matches!(state.phase, Phase::Open) {
            return;
        }
        state.phase = Phase::Closed;
        state.closed_by_server = true;
        let sender = state.outgoing.clone();
        drop(state);
        send_eventually(
            sender,
            Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        );
        self.deliver(py, Event::Disconnect(u16::from(code)));
    }
}

/// Queues a control frame nobody awaits (a close): at once if there is room, else as soon as there is.
fn send_eventually(sender: mpsc::Sender<Message>, frame: Message) {
    if let Err(mpsc::error::TrySendError::Full(frame)) = sender.try_send(frame) {
        tokio::task::spawn_local(async move {
            let _ = sender.send(frame).await;
        });
    }
}

/// Runs the frame pump (`crate::websocket`) on the upgraded connection, for this exchange's app.
async fn pump(
    exchange: Arc<WebSocketExchange>,
    upgrade: hyper::upgrade::OnUpgrade,
    outgoing: mpsc::Receiver<Message>,
) {
    let shared = &exchange.shared;
    let limits = PumpLimits {
        max_message: shared.max_websocket_message,
        send_timeout: shared.send_timeout,
        ping_interval: shared.websocket_ping.0,
        ping_timeout: shared.websocket_ping.1,
    };
    serve_upgraded(&*exchange, upgrade, outgoing, limits).await;
}

impl PumpApp for WebSocketExchange {
    fn deliver(&self, event: Event) {
        Python::attach(|py| WebSocketExchange::deliver(self, py, event));
    }

    fn queue_full(&self) -> bool {
        WebSocketExchange::queue_full(self)
    }

    fn room(&self) -> &Notify {
        &self.room
    }

    fn control(&self) -> mpsc::Sender<Message> {
        self.lock().outgoing.clone()
    }

    fn close_from_server(&self, code: CloseCode, reason: &'static str) {
        Python::attach(|py| WebSocketExchange::close_from_server(self, py, code, reason));
    }

    fn abandon(&self) {
        Python::attach(|py| WebSocketExchange::abandon(self, py));
    }

    fn closing(&self) -> &Latch {
        &self.shared.closing
    }
}

#[pyclass(frozen, module = "percore._runtime", name = "WebSocketReceive")]
pub(super) struct WebSocketReceive(Arc<WebSocketExchange>);

#[pymethods]
impl WebSocketReceive {
    fn __call__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.0.receive(py)
    }
}

#[pyclass(frozen, module = "percore._runtime", name = "WebSocketSend")]
pub(super) struct WebSocketSend(Arc<WebSocketExchange>);

#[pymethods]
impl WebSocketSend {
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.0.send(py, message)
    }
}

/// The `websocket` scope and `(scope, receive, send)` for one handshake.
pub(in crate::python) fn prepare<'py>(
    py: Python<'py>,
    shared: &Arc<LoopShared>,
    endpoint: &AsgiEndpoint,
    request: &mut HttpRequest,
    loop_state: Option<&Bound<'py, PyDict>>,
    reply: oneshot::Sender<HttpResponse>,
) -> PyResult<(Arc<WebSocketExchange>, Bound<'py, PyTuple>)> {
    let scheme = if request.secure {
        intern!(py, "wss")
    } else {
        intern!(py, "ws")
    };
    let scope = base_scope(
        py,
        intern!(py, "websocket"),
        scheme,
        endpoint,
        request,
        loop_state,
    )?;
    let subprotocols: Vec<String> = request
        .headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    scope.set_item(intern!(py, "subprotocols"), subprotocols)?;
    let extensions = PyDict::new(py);
    extensions.set_item(intern!(py, "websocket.http.response"), PyDict::new(py))?;
    scope.set_item(intern!(py, "extensions"), extensions)?;
    let raw_path = request.uri.path().to_owned();
    let client_key = request
        .headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (outgoing, outgoing_receiver) = mpsc::channel(SEND_QUEUE_FRAMES);
    let exchange = Arc::new(WebSocketExchange {
        state: Mutex::new(State {
            phase: Phase::Handshake,
            events: VecDeque::from([Event::Connect]),
            waiter: None,
            reply: Some(reply),
            upgrade: request.upgrade.take(),
            outgoing,
            outgoing_receiver: Some(outgoing_receiver),
            client_key,
            closed_by_server: false,
        }),
        room: Notify::new(),
        shared: Arc::clone(shared),
        name: format!("WebSocket {raw_path}"),
    });
    let receive = Bound::new(py, WebSocketReceive(Arc::clone(&exchange)))?;
    let send = Bound::new(py, WebSocketSend(Arc::clone(&exchange)))?;
    let arguments = PyTuple::new(py, [scope.into_any(), receive.into_any(), send.into_any()])?;
    Ok((exchange, arguments))
}
