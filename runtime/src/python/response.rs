//! A handler's return value to an `HttpResponse`.
//!
//! dict/list/tuple/int/float/bool → JSON (sonic-rs), str → text/plain, bytes → application/octet-stream,
//! None → empty body, a `percore.Response` → its status, headers, media type and body as given (and its
//! `background` task queued on the loop).

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyConnectionResetError;
use tokio::sync::{mpsc, Notify};

use super::awaitable::{future_is_done, ready};
use super::convert::bytes_of;
use super::hooks::Hooks;
use super::serialize::to_json;
use crate::exchange::{HttpResponse, Latch, ResponseBody, StreamAborted};

/// How many body chunks may wait for the client before `send` makes the app wait.
pub(super) const STREAM_BUFFER: usize = 16;

const FILE_CHUNK: usize = 64 * 1024;

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const OCTETS: &str = "application/octet-stream";

fn status(code: u16) -> PyResult<StatusCode> {
    StatusCode::from_u16(code)
        .map_err(|_| PyValueError::new_err(format!("{code} is not a valid HTTP status code")))
}

/// Where a response is converted on a loop thread: the loop driver's `wake` and the runtime's hooks, which
/// a response that streams or has a `background` needs.
pub(super) struct OnLoop<'a> {
    pub(super) wake: &'a Arc<Notify>,
    pub(super) hooks: &'a Hooks,
}

/// `on_loop` is given only where a response may stream (or run a background task): on a loop thread.
pub(super) fn to_response(
    value: &Bound<'_, PyAny>,
    default_status: u16,
    response_class: &Bound<'_, PyAny>,
    on_loop: Option<OnLoop<'_>>,
) -> PyResult<HttpResponse> {
    if let Ok(text) = value.cast::<PyString>() {
        let body = Bytes::copy_from_slice(text.to_str()?.as_bytes());
        return with_status(HttpResponse::new(200, TEXT, body), default_status);
    }
    if let Ok(bytes) = value.cast::<PyBytes>() {
        let body = Bytes::copy_from_slice(bytes.as_bytes());
        return with_status(HttpResponse::new(200, OCTETS, body), default_status);
    }
    if value.is_none() {
        let mut response = HttpResponse::new(200, TEXT, Bytes::new());
        response.headers.clear();
        return with_status(response, default_status);
    }
    if value.is_instance(response_class)? {
        return explicit_response(value, on_loop);
    }
    let body = to_json(value)?;
    with_status(HttpResponse::new(200, JSON, body), default_status)
}

fn with_status(mut response: HttpResponse, code: u16) -> PyResult<HttpResponse> {
    response.status = status(code)?;
    Ok(response)
}

/// A `percore.Response`: `status_code`, `media_type` (or None), `headers` (pairs of str), and either
/// `body` (bytes, already rendered), `body_iterator` (a `StreamingResponse`) or `path` (a `FileResponse`).
fn explicit_response(
    value: &Bound<'_, PyAny>,
    on_loop: Option<OnLoop<'_>>,
) -> PyResult<HttpResponse> {
    let py = value.py();
    let code: u16 = value.getattr(intern!(py, "status_code"))?.extract()?;
    let mut headers = Vec::new();
    let media_type = value.getattr(intern!(py, "media_type"))?;
    if !media_type.is_none() {
        let media_type: String = media_type.extract()?;
        headers.push((http::header::CONTENT_TYPE, header_value(&media_type)?));
    }
    for pair in value.getattr(intern!(py, "headers"))?.try_iter()? {
        let (name, text): (String, String) = pair?.extract()?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| PyValueError::new_err(format!("invalid header name {name:?}")))?;
        headers.push((name, header_value(&text)?));
    }
    let status = status(code)?;
    // `Response(background=...)`: queued on this loop now, so it runs after the response is handed to
    // the connection (`percore.background.run_after_response`). Not for const routes (no loop).
    if let Some(on_loop) = &on_loop {
        if let Some(background) = value
            .getattr_opt(intern!(py, "background"))?
            .filter(|b| !b.is_none())
        {
            on_loop.hooks.run_after_response.call1(py, (background,))?;
        }
    }
    if let Some(iterator) = value
        .getattr_opt(intern!(py, "body_iterator"))?
        .filter(|i| !i.is_none())
    {
        let on_loop =
            on_loop.ok_or_else(|| PyTypeError::new_err("this response cannot stream here"))?;
        return stream(py, status, headers, iterator, on_loop);
    }
    if let Some(path) = value
        .getattr_opt(intern!(py, "path"))?
        .filter(|p| !p.is_none())
    {
        if on_loop.is_none() {
            return Err(PyTypeError::new_err("this response cannot stream here"));
        }
        let path: String = path.str()?.to_string();
        let (sender, chunks) = mpsc::channel(STREAM_BUFFER);
        tokio::task::spawn_local(stream_file(path, sender));
        return Ok(HttpResponse {
            status,
            headers,
            body: ResponseBody::Stream(chunks, Arc::default()),
        });
    }
    let body_object = value.getattr(intern!(py, "body"))?;
    let body = if let Ok(bytes) = body_object.cast::<PyBytes>() {
        Bytes::copy_from_slice(bytes.as_bytes())
    } else if let Ok(array) = body_object.cast::<PyByteArray>() {
        Bytes::from(array.to_vec())
    } else {
        return Err(PyTypeError::new_err("Response.body must be bytes"));
    };
    Ok(HttpResponse {
        status,
        headers,
        body: ResponseBody::Full(body),
    })
}

/// A `StreamingResponse`: its iterator is pumped by an asyncio task on this loop (the `pump` hook,
/// `percore.responses._pump`), each chunk written to the client as it is produced. The task is
/// cancelled if the client goes away.
fn stream(
    py: Python<'_>,
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    iterator: Bound<'_, PyAny>,
    on_loop: OnLoop<'_>,
) -> PyResult<HttpResponse> {
    let wake = Arc::clone(on_loop.wake);
    let (sender, chunks) = mpsc::channel(STREAM_BUFFER);
    let abandoned = Arc::new(Latch::default());
    let event_loop = py
        .import("asyncio")?
        .call_method0(intern!(py, "get_running_loop"))?;
    let chunk_sender = Bound::new(
        py,
        ChunkSender {
            sender: Mutex::new(Some(sender)),
            event_loop: event_loop.clone().unbind(),
            wake: Arc::clone(&wake),
        },
    )?;
    let pump = on_loop.hooks.pump.call1(py, (iterator, chunk_sender))?;
    let task = event_loop
        .call_method1(intern!(py, "create_task"), (pump,))?
        .unbind();
    let watch = Arc::clone(&abandoned);
    tokio::task::spawn_local(async move {
        watch.wait().await;
        Python::attach(|py| {
            let task = task.bind(py);
            let done = future_is_done(task);
            if !done {
                let _ = task.call_method0(intern!(py, "cancel"));
                wake.notify_one();
            }
        });
    });
    Ok(HttpResponse {
        status,
        headers,
        body: ResponseBody::Stream(chunks, abandoned),
    })
}

/// `await send(chunk)` for `_pump`: queues a chunk for the client, waiting when the client is slower.
#[pyclass(frozen, module = "percore._runtime")]
pub(super) struct ChunkSender {
    sender: Mutex<Option<mpsc::Sender<Result<Bytes, StreamAborted>>>>,
    event_loop: Py<PyAny>,
    wake: Arc<Notify>,
}

#[pymethods]
impl ChunkSender {
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        chunk: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let bytes = match chunk.cast::<PyString>() {
            Ok(text) => Bytes::copy_from_slice(text.to_str()?.as_bytes()),
            Err(_) => bytes_of(chunk)?,
        };
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| PyConnectionResetError::new_err("the response stream is closed"))?;
        match sender.try_send(Ok(bytes)) {
            Ok(()) => ready(py, py.None().into_bound(py)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(PyConnectionResetError::new_err("the client disconnected"))
            }
            Err(mpsc::error::TrySendError::Full(chunk)) => {
                let future = self
                    .event_loop
                    .bind(py)
                    .call_method0(intern!(py, "create_future"))?;
                let result = future.clone().unbind();
                let wake = Arc::clone(&self.wake);
                tokio::task::spawn_local(async move {
                    let sent = sender.send(chunk).await.is_ok();
                    Python::attach(|py| {
                        let future = result.bind(py);
                        let done = future_is_done(future);
                        if !done {
                            let outcome = if sent {
                                future.call_method1(intern!(py, "set_result"), (py.None(),))
                            } else {
                                let error =
                                    PyConnectionResetError::new_err("the client disconnected");
                                future.call_method1(
                                    intern!(py, "set_exception"),
                                    (error.into_value(py),),
                                )
                            };
                            if let Err(err) = outcome {
                                err.print(py);
                            }
                        }
                    });
                    wake.notify_one();
                });
                Ok(future)
            }
        }
    }

    /// Ends the body: the client sees a complete response.
    fn close(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Aborts the body: the connection is closed so the client cannot take it for complete.
    fn abort(&self, reason: String) {
        if let Some(sender) = self.sender.lock().unwrap_or_else(|p| p.into_inner()).take() {
            tokio::task::spawn_local(async move {
                let _ = sender.send(Err(StreamAborted(reason))).await;
            });
        }
    }
}

pub(super) async fn stream_file(path: String, sender: mpsc::Sender<Result<Bytes, StreamAborted>>) {
    use tokio::io::AsyncReadExt;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(err) => {
            let _ = sender
                .send(Err(StreamAborted(format!("{path}: {err}"))))
                .await;
            return;
        }
    };
    loop {
        let mut buffer = vec![0u8; FILE_CHUNK];
        match file.read(&mut buffer).await {
            Ok(0) => return,
            Ok(n) => {
                buffer.truncate(n);
                if sender.send(Ok(Bytes::from(buffer))).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                let _ = sender
                    .send(Err(StreamAborted(format!("{path}: {err}"))))
                    .await;
                return;
            }
        }
    }
}

fn header_value(text: &str) -> PyResult<HeaderValue> {
    HeaderValue::from_str(text)
        .map_err(|_| PyValueError::new_err(format!("invalid header value {text:?}")))
}
