//! Conversions between Python values and the plain-Rust exchange types: body bytes, header pairs, the
//! client and server addresses and the method as ASGI scopes and `Request` carry them.
//!
//! A leaf of the bridge: no state but per-thread caches of immutable strings.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString, PyTuple};

use crate::listener::LocalAddress;

/// An ASGI body (or header) value: `bytes`, `bytearray` or anything with the buffer protocol.
pub(super) fn bytes_of(value: &Bound<'_, PyAny>) -> PyResult<Bytes> {
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

/// ASGI response headers: an iterable of `(name, value)` byte pairs.
pub(super) fn parse_headers(
    headers: &Bound<'_, PyAny>,
) -> PyResult<Vec<(HeaderName, HeaderValue)>> {
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

thread_local! {
    /// The last client host seen on this loop thread, as the `str` the scope needs: formatting an IP
    /// costs more than the rest of the scope's fixed keys, and a loop's clients (a load balancer, a
    /// proxy, localhost) are few.
    static CLIENT_HOST: std::cell::RefCell<Option<(std::net::IpAddr, Py<PyString>)>> =
        const { std::cell::RefCell::new(None) };
}

/// A client's IP as the `str` a scope holds, cached per thread (`CLIENT_HOST`).
pub(super) fn host_string(py: Python<'_>, ip: std::net::IpAddr) -> Bound<'_, PyString> {
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
pub(super) fn server_tuple<'py>(
    py: Python<'py>,
    server: &LocalAddress,
) -> PyResult<Bound<'py, PyTuple>> {
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

/// `GET`, `POST`, ... as the interned strings they are; other methods as new strings.
pub(super) fn method_string<'py>(py: Python<'py>, method: &http::Method) -> Bound<'py, PyString> {
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
