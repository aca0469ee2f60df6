//! Form bodies for native routes: reads the body through `crate::forms` (as it streams in, before the
//! handler is called) and turns uploaded files into Python objects — `percore.UploadFile`s (made by
//! `percore._forms.upload_file`) or their bytes.
//!
//! Invariants: a refused form body never reaches Python (400 with the reason, 413 past
//! `--max-body-size`, 408 past `--body-timeout`); a file spooled to disk reaches Python as that open
//! (unlinked) file, never read into memory here unless the handler asked for `bytes`.

use std::io::Read;
use std::os::fd::{AsRawFd, IntoRawFd};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyStream;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::deadline::BodyReadError;
use crate::exchange::{HttpRequest, HttpResponse, RequestBody};
use crate::forms::{self, Form, FormError, FormLimits, Spooled, UploadedFile};

/// Reads `request`'s form (its body is taken; the rest of the request is left for binding). A request
/// that is not a form (another `Content-Type`) has an empty one, as in Starlette: its required fields
/// are then reported missing.
pub(super) async fn read_form(
    request: &mut HttpRequest,
    max_body_size: u64,
) -> Result<Form, HttpResponse> {
    let content_type = request
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let encoding = match forms::encoding(content_type) {
        Ok(Some(encoding)) => encoding,
        Ok(None) => return Ok(Form::default()),
        Err(message) => return Err(bad_request(&message)),
    };
    let limits = FormLimits::with_body_limit(max_body_size);
    match std::mem::replace(&mut request.body, RequestBody::Full(Bytes::new())) {
        RequestBody::Full(bytes) => {
            let whole = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]);
            forms::read(whole, encoding, limits)
                .await
                .map_err(|err| refused(err, |never| match *never {}))
        }
        RequestBody::Streaming(body) => {
            let chunks = BodyStream::new(body).filter_map(|frame| {
                std::future::ready(match frame {
                    Ok(frame) => frame.into_data().ok().map(Ok),
                    Err(err) => Some(Err(err)),
                })
            });
            forms::read(chunks, encoding, limits)
                .await
                .map_err(|err| refused(err, body_error))
        }
    }
}

fn body_error(err: &BodyReadError) -> HttpResponse {
    match err {
        BodyReadError::TimedOut => HttpResponse::request_timeout(),
        BodyReadError::Hyper(_) => HttpResponse::text(400, "Bad Request: unreadable body"),
    }
}

/// The answer to a refused form body.
fn refused<E: std::fmt::Display>(
    err: FormError<E>,
    body_error: impl Fn(&E) -> HttpResponse,
) -> HttpResponse {
    match err {
        FormError::TooLarge => HttpResponse::text(413, "Payload Too Large"),
        FormError::Invalid(message) => bad_request(&message),
        FormError::Body(err) => body_error(&err),
        FormError::Spool(err) => {
            // The disk (the temporary directory) is full or unwritable: the operator's problem.
            let message = FormError::<E>::Spool(err).to_string();
            Python::attach(|py| {
                let logger = py
                    .import("percore._logging")
                    .and_then(|m| m.getattr("logger"));
                if let Ok(logger) = logger {
                    let _ = logger.call_method1("error", ("%s", message));
                }
            });
            HttpResponse::internal_error()
        }
    }
}

/// 400 with `{"detail": message}`, as Starlette answers a form it cannot parse.
fn bad_request(message: &str) -> HttpResponse {
    let message = sonic_rs::to_string(message).unwrap_or_else(|_| "\"Bad Request\"".to_owned());
    HttpResponse::new(400, "application/json", format!("{{\"detail\":{message}}}"))
}

/// `factory(filename, content_type, headers, size, data, raw)`: an `UploadFile` of the part, its
/// contents in memory (`data`) or in the temporary file, handed over as an `io.FileIO` (`raw`).
pub(super) fn upload_file<'py>(
    py: Python<'py>,
    factory: &Bound<'py, PyAny>,
    file: UploadedFile,
) -> PyResult<Bound<'py, PyAny>> {
    let headers = PyList::empty(py);
    for (name, value) in &file.headers {
        headers.append(PyTuple::new(py, [name.as_str(), value.as_str()])?)?;
    }
    let (data, raw) = match file.data {
        Spooled::Memory(chunks) => (Some(joined(py, &chunks, file.size)?), None),
        Spooled::Disk(disk) => {
            // The descriptor is Python's once the FileIO exists (a failing FileIO leaves it to its
            // caller): until then `disk` owns it and closes it on an error; after, the FileIO does,
            // also when the factory call fails.
            let raw = py
                .import(pyo3::intern!(py, "io"))?
                .getattr(pyo3::intern!(py, "FileIO"))?
                .call1((disk.as_raw_fd(), "rb+"))?;
            let _ = disk.into_raw_fd();
            (None, Some(raw))
        }
    };
    factory.call1((
        file.filename,
        file.content_type,
        headers,
        file.size,
        data,
        raw,
    ))
}

/// The file's contents as `bytes` (`Annotated[bytes, File()]`).
pub(super) fn file_bytes(py: Python<'_>, file: UploadedFile) -> PyResult<Bound<'_, PyAny>> {
    Ok(match file.data {
        Spooled::Memory(chunks) => joined(py, &chunks, file.size)?.into_any(),
        Spooled::Disk(mut disk) => {
            let mut contents = Vec::with_capacity(file.size as usize);
            disk.read_to_end(&mut contents)?;
            PyBytes::new(py, &contents).into_any()
        }
    })
}

/// The chunks of an in-memory file as one `bytes`, copied straight into the Python object.
fn joined<'py>(py: Python<'py>, chunks: &[Bytes], size: u64) -> PyResult<Bound<'py, PyBytes>> {
    if let [one] = chunks {
        return Ok(PyBytes::new(py, one));
    }
    PyBytes::new_with(py, size as usize, |buffer| {
        let mut at = 0;
        for chunk in chunks {
            buffer[at..at + chunk.len()].copy_from_slice(chunk);
            at += chunk.len();
        }
        Ok(())
    })
}
