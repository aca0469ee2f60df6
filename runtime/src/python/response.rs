//! A handler's return value to an `HttpResponse`.
//!
//! dict/list/tuple/int/float/bool → JSON (sonic-rs), str → text/plain, bytes → application/octet-stream,
//! None → empty body, a `percore.Response` → its status, headers, media type and body as given.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use super::serialize::to_json;
use crate::pool::{HttpResponse, ResponseBody};

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const OCTETS: &str = "application/octet-stream";

fn status(code: u16) -> PyResult<StatusCode> {
    StatusCode::from_u16(code)
        .map_err(|_| PyValueError::new_err(format!("{code} is not a valid HTTP status code")))
}

pub fn to_response(
    value: &Bound<'_, PyAny>,
    default_status: u16,
    response_class: &Bound<'_, PyAny>,
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
        return explicit_response(value);
    }
    let body = to_json(value)?;
    with_status(HttpResponse::new(200, JSON, body), default_status)
}

fn with_status(mut response: HttpResponse, code: u16) -> PyResult<HttpResponse> {
    response.status = status(code)?;
    Ok(response)
}

/// A `percore.Response`: `status_code`, `media_type` (or None), `headers` (pairs of str) and `body`
/// (bytes, already rendered by the subclass).
fn explicit_response(value: &Bound<'_, PyAny>) -> PyResult<HttpResponse> {
    let py = value.py();
    let code: u16 = value.getattr(intern!(py, "status_code"))?.extract()?;
    let body_object = value.getattr(intern!(py, "body"))?;
    let body = if let Ok(bytes) = body_object.cast::<PyBytes>() {
        Bytes::copy_from_slice(bytes.as_bytes())
    } else if let Ok(array) = body_object.cast::<PyByteArray>() {
        Bytes::from(array.to_vec())
    } else {
        return Err(PyTypeError::new_err("Response.body must be bytes"));
    };
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
    Ok(HttpResponse {
        status: status(code)?,
        headers,
        body: ResponseBody::Full(body),
    })
}

fn header_value(text: &str) -> PyResult<HeaderValue> {
    HeaderValue::from_str(text)
        .map_err(|_| PyValueError::new_err(format!("invalid header value {text:?}")))
}
