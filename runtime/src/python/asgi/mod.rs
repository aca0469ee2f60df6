//! ASGI 3 over the loop pool: one app serves every request, as an HTTP exchange (`http`) or a WebSocket
//! (`websocket`), both from the same base scope (`scope`).
//!
//! `start` runs the app's coroutine until it first suspends: an app that never waits answers before
//! the asyncio loop is involved. The exchange, not the coroutine, decides when the response is ready.

mod http;
mod scope;
mod websocket;

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::sync::oneshot;

use self::http::AsgiExchange;
pub(super) use self::scope::AsgiEndpoint;
pub(super) use self::websocket::prepare as prepare_websocket;
use super::ffi;
use super::loop_state::LoopShared;
use super::task::{in_context, AppConnection, Completion, RequestTask};
use crate::exchange::{HttpRequest, HttpResponse};
use crate::routing::InFlight;

/// Starts `endpoint` for `request` on this loop: its response if the app already gave one (or failed),
/// else the receiver it will arrive on. An HTTP app takes `in_flight` until it returns.
pub(super) fn start(
    py: Python<'_>,
    shared: &Arc<LoopShared>,
    endpoint: &AsgiEndpoint,
    request: HttpRequest,
    loop_state: Option<&Bound<'_, PyDict>>,
    in_flight: &mut Option<InFlight>,
) -> Result<HttpResponse, oneshot::Receiver<HttpResponse>> {
    let name = request.name();
    let (reply, mut response) = oneshot::channel();
    let mut request = request;
    let started = (|| -> PyResult<Option<Arc<AsgiExchange>>> {
        let (connection, arguments, exchange): (Arc<dyn AppConnection>, _, _) =
            if request.is_websocket() {
                let (socket, arguments) =
                    websocket::prepare(py, shared, endpoint, &mut request, loop_state, reply)?;
                (socket, arguments, None)
            } else {
                let (exchange, arguments) = http::prepare(
                    py,
                    shared,
                    endpoint,
                    request,
                    loop_state,
                    reply,
                    name.clone(),
                )?;
                (exchange.clone(), arguments, Some(exchange))
            };
        let task = run_app(
            py,
            shared,
            endpoint.app.bind(py),
            arguments,
            &name,
            connection,
        )?;
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
        Err(err) => return Ok(shared.fail(py, &err, &name)),
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

/// Calls `app(*arguments)` in a fresh Context and steps the coroutine it returns as a task of this
/// loop, for `connection` (an ASGI exchange or a WebSocket; also a native WebSocket route's runner).
pub(super) fn run_app<'py>(
    py: Python<'py>,
    shared: &Arc<LoopShared>,
    app: &Bound<'py, PyAny>,
    arguments: Bound<'py, PyTuple>,
    name: &str,
    connection: Arc<dyn AppConnection>,
) -> PyResult<Bound<'py, RequestTask>> {
    let context = ffi::copy_context(py)?;
    let coroutine = in_context(&context, || app.call1(arguments))??;
    if !ffi::is_coroutine(&coroutine) {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "the ASGI app did not return a coroutine (is it an ASGI 3 app?)",
        ));
    }
    let task = RequestTask::new(
        py,
        coroutine.unbind(),
        shared.clone(),
        context.unbind(),
        name.to_owned(),
        Completion::Asgi(connection),
    )?;
    RequestTask::step(&task, None);
    shared.track(&task);
    Ok(task)
}
