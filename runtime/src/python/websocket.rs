//! ASGI WebSockets: the `websocket` scope, the handshake decided by the app, then messages both ways.
//!
//! The app first receives `websocket.connect`. `websocket.accept` answers the upgrade with 101 (and the
//! chosen subprotocol); `websocket.close` before that denies it with 403. After the upgrade a reader
//! task turns client frames into `websocket.receive` / `websocket.disconnect` for `receive()`, and a
//! writer task sends what the app passes to `send()`. A WebSocket stays on the loop that accepted its
//! connection (the upgraded socket belongs to that thread's runtime).
//!
//! Invariants: one HTTP answer per handshake (101, 403, or 500 if the app fails before deciding); once
//! closed by either side nothing more is sent; everything runs on the connection's loop thread.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue, StatusCode};
use hyper_util::rt::TokioIo;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::asgi::{base_scope, future_is_done, ready, AsgiEndpoint};
use super::executor::LoopShared;
use super::task::AppConnection;
use crate::pool::{HttpRequest, HttpResponse, ResponseBody};

/// Frames queued for a client before `send()` makes the app wait (plus what the socket buffers hold).
const SEND_QUEUE_FRAMES: usize = 64;

enum Phase {
    Handshake,
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
}

enum Event {
    Connect,
    Text(String),
    Binary(Bytes),
    Disconnect(u16),
}

pub struct WebSocketExchange {
    state: Mutex<State>,
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
                return ready(py, Self::message(py, &event)?);
            }
            state.waiter.take()
        };
        // A previous receive() that was cancelled (wait_for, asyncio.wait) left its future behind.
        if let Some(previous) = previous {
            if !future_is_done(previous.bind(py)) {
                self.lock().waiter = Some(previous);
                return Err(PyRuntimeError::new_err("receive() called concurrently"));
            }
        }
        let future = self.shared.create_future(py)?;
        self.lock().waiter = Some(future.clone().unbind());
        Ok(future)
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
        let mut state = self.lock();
        match (kind.as_str(), &state.phase) {
            ("websocket.accept", Phase::Handshake) => {
                let subprotocol: Option<String> =
                    match message.get_item(intern!(py, "subprotocol"))? {
                        Some(p) if !p.is_none() => Some(p.extract()?),
                        _ => None,
                    };
                let mut headers = vec![
                    (http::header::UPGRADE, HeaderValue::from_static("websocket")),
                    (
                        http::header::CONNECTION,
                        HeaderValue::from_static("Upgrade"),
                    ),
                    (
                        http::header::SEC_WEBSOCKET_ACCEPT,
                        HeaderValue::from_str(
                            &tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                                state.client_key.as_bytes(),
                            ),
                        )
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
                if let Some(extra) = message.get_item(intern!(py, "headers"))? {
                    for pair in extra.try_iter()? {
                        let pair = pair?;
                        let name: Vec<u8> = pair.get_item(0)?.extract()?;
                        let value: Vec<u8> = pair.get_item(1)?.extract()?;
                        headers.push((
                            HeaderName::from_bytes(&name)
                                .map_err(|_| PyTypeError::new_err("invalid header name"))?,
                            HeaderValue::from_bytes(&value)
                                .map_err(|_| PyTypeError::new_err("invalid header value"))?,
                        ));
                    }
                }
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
            ("websocket.close", Phase::Handshake) => {
                state.phase = Phase::Closed;
                let reply = state.reply.take();
                drop(state);
                if let Some(reply) = reply {
                    let _ = reply.send(HttpResponse::text(403, "Forbidden"));
                }
            }
            ("websocket.send", Phase::Open) => {
                let text = message
                    .get_item(intern!(py, "text"))?
                    .filter(|t| !t.is_none());
                let data = message
                    .get_item(intern!(py, "bytes"))?
                    .filter(|b| !b.is_none());
                let frame = match (text, data) {
                    (Some(text), _) => Message::text(text.cast::<PyString>()?.to_str()?.to_owned()),
                    (None, Some(data)) => Message::binary(data.extract::<Vec<u8>>()?),
                    (None, None) => {
                        return Err(PyTypeError::new_err(
                            "websocket.send needs 'text' or 'bytes'",
                        ))
                    }
                };
                let sender = state.outgoing.clone();
                drop(state);
                return self.enqueue(py, sender, frame);
            }
            ("websocket.close", Phase::Open) => {
                let code: u16 = match message.get_item(intern!(py, "code"))? {
                    Some(code) if !code.is_none() => code.extract()?,
                    _ => 1000,
                };
                let reason: String = match message.get_item(intern!(py, "reason"))? {
                    Some(reason) if !reason.is_none() => reason.extract()?,
                    _ => String::new(),
                };
                state.phase = Phase::Closed;
                let sender = state.outgoing.clone();
                drop(state);
                let close = Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                }));
                return self.enqueue(py, sender, close);
            }
            (kind, Phase::Closed) => {
                return Err(PyRuntimeError::new_err(format!(
                    "Unexpected ASGI message '{kind}' after the WebSocket was closed"
                )))
            }
            (kind, _) => {
                return Err(PyRuntimeError::new_err(format!(
                    "Unexpected ASGI message '{kind}' in this WebSocket state"
                )))
            }
        }
        ready(py, py.None().into_bound(py))
    }
}

impl AppConnection for WebSocketExchange {
    fn app_finished(&self, py: Python<'_>, error: Option<PyErr>) {
        let mut state = self.lock();
        if let Some(err) = &error {
            self.shared.fail(py, err, &self.name);
        }
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
    /// After the client left, ASGI 2.3 says sends are silently dropped.
    fn enqueue<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        sender: mpsc::Sender<Message>,
        frame: Message,
    ) -> PyResult<Bound<'py, PyAny>> {
        let frame = match sender.try_send(frame) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {
                return ready(py, py.None().into_bound(py))
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

    /// The server is stopping: close an open WebSocket with 1001 (going away) and tell the app, which
    /// sees `websocket.disconnect` with that code.
    fn server_closing(&self, py: Python<'_>) {
        self.close_from_server(py, CloseCode::Away, "server shutting down");
    }

    /// Closes an open WebSocket from the server's side with `code`, and tells the app (its
    /// `websocket.disconnect` carries the same code).
    fn close_from_server(&self, py: Python<'_>, code: CloseCode, reason: &'static str) {
        let mut state = self.lock();
        if !matches!(state.phase, Phase::Open) {
            return;
        }
        state.phase = Phase::Closed;
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

/// Moves frames between the upgraded connection and the app until either side closes.
async fn pump(
    exchange: Arc<WebSocketExchange>,
    upgrade: hyper::upgrade::OnUpgrade,
    mut outgoing: mpsc::Receiver<Message>,
) {
    let Ok(upgraded) = upgrade.await else {
        Python::attach(|py| exchange.deliver(py, Event::Disconnect(1006)));
        return;
    };
    let limit = exchange.shared.max_websocket_message;
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let (mut sink, mut stream) = socket.split();
    // When the client last sent anything (a pong included): what the keepalive checks.
    let heard = Cell::new(tokio::time::Instant::now());
    let keepalive = async {
        let (Some(interval), timeout) = exchange.shared.websocket_ping else {
            return std::future::pending().await;
        };
        let sender = exchange.lock().outgoing.clone();
        loop {
            tokio::time::sleep(interval).await;
            let pinged = tokio::time::Instant::now();
            // A full queue means the app is sending faster than the client reads: no ping goes out this
            // round, so the client's silence proves nothing (a receive-only client sends nothing else).
            if sender.try_send(Message::Ping(Default::default())).is_err() {
                continue;
            }
            tokio::time::sleep(timeout).await;
            if heard.get() < pinged {
                Python::attach(|py| {
                    exchange.close_from_server(py, CloseCode::Error, "keepalive ping timeout")
                });
                return;
            }
        }
    };
    let writer = async {
        while let Some(frame) = outgoing.recv().await {
            let closing = matches!(frame, Message::Close(_));
            if sink.send(frame).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    };
    let reader = async {
        loop {
            let next = stream.next().await;
            heard.set(tokio::time::Instant::now());
            let event = match next {
                Some(Ok(Message::Text(text))) => Event::Text(text.to_string()),
                Some(Ok(Message::Binary(data))) => Event::Binary(data),
                Some(Ok(Message::Close(frame))) => {
                    Event::Disconnect(frame.map(|f| u16::from(f.code)).unwrap_or(1005))
                }
                Some(Ok(_)) => continue, // ping/pong are answered by tungstenite
                Some(Err(WsError::Capacity(_))) => {
                    // Over --ws-max-size: close with 1009 rather than buffer it; the app hears 1009.
                    Python::attach(|py| {
                        exchange.close_from_server(py, CloseCode::Size, "message too big")
                    });
                    break;
                }
                Some(Err(_)) | None => Event::Disconnect(1006),
            };
            let last = matches!(event, Event::Disconnect(_));
            Python::attach(|py| exchange.deliver(py, event));
            if last {
                break;
            }
        }
    };
    let closing = async {
        exchange.shared.closing.wait().await;
        Python::attach(|py| exchange.server_closing(py));
        // The close frame is queued: the writer sends it and ends, which ends this select.
        std::future::pending::<()>().await
    };
    tokio::pin!(writer);
    tokio::pin!(reader);
    // Biased, the reader before the keepalive: after a stall of the loop both may be ready at once, and a
    // pong already received must count before the keepalive checks (as asyncio runs I/O before timers).
    tokio::select! {
        biased;
        _ = closing => {}
        _ = &mut reader => {
            // The client is gone or closed: flush what the app already queued (a close reply).
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
        }
        _ = keepalive => {
            // No answer to a ping: the close is queued; send it if the socket takes it, then drop it.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
        }
        _ = &mut writer => {
            // We closed: give the client a moment to answer the close before dropping the socket.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), reader).await;
        }
    }
}

#[pyclass(frozen, module = "percore._runtime", name = "WebSocketReceive")]
pub struct WebSocketReceive(Arc<WebSocketExchange>);

#[pymethods]
impl WebSocketReceive {
    fn __call__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.0.receive(py)
    }
}

#[pyclass(frozen, module = "percore._runtime", name = "WebSocketSend")]
pub struct WebSocketSend(Arc<WebSocketExchange>);

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

/// Whether `request` asks to become a WebSocket.
pub fn is_websocket(request: &HttpRequest) -> bool {
    request.upgrade.is_some()
        && request
            .headers
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && request
            .headers
            .contains_key(http::header::SEC_WEBSOCKET_KEY)
}

/// The `websocket` scope and `(scope, receive, send)` for one handshake.
pub fn prepare<'py>(
    py: Python<'py>,
    shared: &Arc<LoopShared>,
    endpoint: &AsgiEndpoint,
    mut request: HttpRequest,
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
        &request,
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
        }),
        shared: Arc::clone(shared),
        name: format!("WebSocket {raw_path}"),
    });
    let receive = Bound::new(py, WebSocketReceive(Arc::clone(&exchange)))?;
    let send = Bound::new(py, WebSocketSend(Arc::clone(&exchange)))?;
    let arguments = PyTuple::new(py, [scope.into_any(), receive.into_any(), send.into_any()])?;
    Ok((exchange, arguments))
}
