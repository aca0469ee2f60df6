//! Handler parameters: from the request to keyword arguments, as the app's signature asked for them.
//!
//! `percore.params` analyses each handler's signature once, at startup, into `ParamSpec`s (where each
//! value comes from, its wire name, its type, its default). Per request this module reads the values in
//! Rust — path captures, the decoded query string, headers, cookies, the JSON body (sonic-rs, straight
//! into Python objects) — converts scalars (str, int, float, bool, UUID, lists of them) and, for bodies
//! that name a model, calls the converter `percore.params` prepared. Every failure is collected, so one
//! 422 names every bad field, in FastAPI's format: `{"detail": [{"type", "loc", "msg", "input"}]}`.
//!
//! Form fields (`Form()`) and uploads (`File()`, `UploadFile`) come from the form `crate::forms` parsed
//! as the body streamed in (`python/forms.rs` turns its files into `UploadFile`s); their errors are
//! FastAPI's, at `["body", name]`.
//!
//! Invariant: a request either binds completely or is rejected with 422 (invalid input) or 400
//! (malformed JSON); the handler never sees a half-bound call.
//!
//! Over 500 lines (just): one binder for every parameter source, each conversion beside its error.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyList, PyString, PyTuple};

use super::forms::{file_bytes, upload_file};
use super::request::Request;
use super::serialize::{from_json, to_json};
use crate::exchange::{HttpRequest, HttpResponse};
use crate::forms::{Form, FormValue};
use crate::query::{parse_cookies, parse_query};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Path,
    Query,
    Header,
    Cookie,
    Body,
    Request,
    /// A text field of a form body.
    Form,
    /// A file of a multipart body.
    File,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Str,
    Int,
    Float,
    Bool,
    Uuid,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    One(Scalar),
    Many(Scalar),
    Json,
    /// Files: as `UploadFile`s (`upload`) or their contents (`bytes`); `many` for `list[...]`.
    File {
        upload: bool,
        many: bool,
    },
}

/// A parameter as `percore.params.Param` describes it.
#[derive(FromPyObject)]
pub(super) struct ParamSpec {
    name: String,
    source: String,
    key: String,
    kind: String,
    required: bool,
    default: Py<PyAny>,
    converter: Option<Py<PyAny>>,
}

pub(super) struct Param {
    name: Py<PyString>,
    source: Source,
    key: String,
    kind: Kind,
    required: bool,
    default: Py<PyAny>,
    /// For bodies: `converter(value) -> (True, converted) | (False, [error dicts])`. For uploads:
    /// `percore._forms.upload_file`, which makes an `UploadFile`.
    converter: Option<Py<PyAny>>,
}

fn scalar(name: &str) -> Option<Scalar> {
    Some(match name {
        "str" => Scalar::Str,
        "int" => Scalar::Int,
        "float" => Scalar::Float,
        "bool" => Scalar::Bool,
        "uuid" => Scalar::Uuid,
        _ => return None,
    })
}

/// A parameter spec from the app that this module does not know (a bug in `percore.app`, not the user's).
#[derive(Debug)]
pub(super) enum SpecError {
    UnknownSource(String),
    UnknownKind(String),
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecError::UnknownSource(source) => write!(f, "unknown parameter source {source:?}"),
            SpecError::UnknownKind(kind) => write!(f, "unknown kind {kind:?}"),
        }
    }
}

impl std::error::Error for SpecError {}

impl Param {
    /// Whether this parameter comes from a form body (the route's body is then parsed as a form).
    pub(super) fn reads_form(&self) -> bool {
        matches!(self.source, Source::Form | Source::File)
    }

    pub(super) fn from_spec(py: Python<'_>, spec: ParamSpec) -> Result<Param, SpecError> {
        let source = match spec.source.as_str() {
            "path" => Source::Path,
            "query" => Source::Query,
            "header" => Source::Header,
            "cookie" => Source::Cookie,
            "body" => Source::Body,
            "request" => Source::Request,
            "form" => Source::Form,
            "file" => Source::File,
            other => return Err(SpecError::UnknownSource(other.to_owned())),
        };
        let kind = match spec.kind.as_str() {
            "json" => Kind::Json,
            "upload" | "bytes" | "list[upload]" | "list[bytes]" => Kind::File {
                upload: spec.kind.contains("upload"),
                many: spec.kind.starts_with("list["),
            },
            many if many.starts_with("list[") && many.ends_with(']') => Kind::Many(
                scalar(&many[5..many.len() - 1])
                    .ok_or_else(|| SpecError::UnknownKind(many.to_owned()))?,
            ),
            one => Kind::One(scalar(one).ok_or_else(|| SpecError::UnknownKind(one.to_owned()))?),
        };
        Ok(Param {
            name: PyString::intern(py, &spec.name).unbind(),
            source,
            key: spec.key,
            kind,
            required: spec.required,
            default: spec.default,
            converter: spec.converter,
        })
    }
}

/// Why a request could not be bound.
pub(super) enum Rejected {
    /// 422 with these error entries.
    Invalid(Vec<Py<PyAny>>),
    /// 400: the body is not JSON.
    MalformedJson(String),
}

impl Rejected {
    pub(super) fn into_response(self, py: Python<'_>) -> PyResult<HttpResponse> {
        let detail = PyDict::new(py);
        let status = match self {
            Rejected::Invalid(errors) => {
                detail.set_item(intern!(py, "detail"), PyList::new(py, errors)?)?;
                422
            }
            Rejected::MalformedJson(message) => {
                detail.set_item(
                    intern!(py, "detail"),
                    format!("Malformed JSON body: {message}"),
                )?;
                400
            }
        };
        Ok(HttpResponse::new(
            status,
            "application/json",
            to_json(&detail)?,
        ))
    }
}

/// `loc` as FastAPI writes it: the source, the name, and for list items the integer index.
fn location<'py>(
    py: Python<'py>,
    parts: &[&str],
    index: Option<usize>,
) -> PyResult<Bound<'py, PyList>> {
    let loc = PyList::new(py, parts)?;
    if let Some(index) = index {
        loc.append(index)?;
    }
    Ok(loc)
}

fn error_entry(
    py: Python<'_>,
    kind: &str,
    loc: Bound<'_, PyList>,
    msg: &str,
    input: Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let entry = PyDict::new(py);
    entry.set_item(intern!(py, "type"), kind)?;
    entry.set_item(intern!(py, "loc"), loc)?;
    entry.set_item(intern!(py, "msg"), msg)?;
    entry.set_item(intern!(py, "input"), input)?;
    Ok(entry.into_any().unbind())
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Path => "path",
        Source::Query => "query",
        Source::Header => "header",
        Source::Cookie => "cookie",
        Source::Body | Source::Form | Source::File => "body",
        Source::Request => "request",
    }
}

/// Converts one text value; `Err((type, msg))` says why it is not valid.
fn convert<'py>(
    py: Python<'py>,
    scalar: Scalar,
    text: &str,
    uuid_class: &Bound<'py, PyAny>,
) -> PyResult<Result<Bound<'py, PyAny>, (&'static str, &'static str)>> {
    Ok(match scalar {
        Scalar::Str => Ok(PyString::new(py, text).into_any()),
        Scalar::Int => match text.trim().parse::<i64>() {
            Ok(n) => Ok(n.into_pyobject(py)?.into_any()),
            Err(_) => Err((
                "int_parsing",
                "Input should be a valid integer, unable to parse string as an integer",
            )),
        },
        Scalar::Float => match text.trim().parse::<f64>() {
            Ok(n) => Ok(PyFloat::new(py, n).into_any()),
            Err(_) => Err((
                "float_parsing",
                "Input should be a valid number, unable to parse string as a number",
            )),
        },
        Scalar::Bool => match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "t" | "yes" | "y" | "on" => {
                Ok(PyBool::new(py, true).to_owned().into_any())
            }
            "0" | "false" | "f" | "no" | "n" | "off" => {
                Ok(PyBool::new(py, false).to_owned().into_any())
            }
            _ => Err((
                "bool_parsing",
                "Input should be a valid boolean, unable to interpret input",
            )),
        },
        Scalar::Uuid => match uuid_class.call1((text,)) {
            Ok(uuid) => Ok(uuid),
            Err(_) => Err(("uuid_parsing", "Input should be a valid UUID")),
        },
    })
}

/// Binds `params` for `request` (and its parsed `form`, for routes that take form fields or files): the
/// keyword arguments, or why the request is rejected.
pub(super) fn bind<'py>(
    py: Python<'py>,
    params: &[Param],
    request: HttpRequest,
    form: Option<Form>,
    loop_index: usize,
    loop_state: Option<Py<PyAny>>,
    uuid_class: &Bound<'py, PyAny>,
) -> PyResult<Result<Bound<'py, PyDict>, Rejected>> {
    let mut form = form.unwrap_or_default();
    let kwargs = PyDict::new(py);
    let mut errors: Vec<Py<PyAny>> = Vec::new();
    let mut query: Option<Vec<(String, String)>> = None;
    let mut cookies: Option<Vec<(String, String)>> = None;
    let mut request_param = None;
    for param in params {
        let name = param.name.bind(py);
        let source = source_name(param.source);
        // The raw text values for this parameter (all of them, for list kinds).
        let values: Vec<String> = match param.source {
            Source::Request => {
                request_param = Some(name.clone());
                continue;
            }
            Source::Body => {
                let body = request.body.full();
                if body.is_empty() {
                    Vec::new()
                } else {
                    let value = match from_json(py, body) {
                        Ok(value) => value,
                        Err(message) => return Ok(Err(Rejected::MalformedJson(message))),
                    };
                    let value = match &param.converter {
                        None => value,
                        Some(converter) => {
                            let outcome = converter.bind(py).call1((value,))?;
                            let outcome = outcome.cast::<PyTuple>()?;
                            if outcome.get_item(0)?.is_truthy()? {
                                outcome.get_item(1)?
                            } else {
                                for entry in outcome.get_item(1)?.try_iter()? {
                                    errors.push(entry?.unbind());
                                }
                                continue;
                            }
                        }
                    };
                    kwargs.set_item(name, value)?;
                    continue;
                }
            }
            Source::File => {
                bind_files(py, param, &mut form, &kwargs, &mut errors)?;
                continue;
            }
            // As FastAPI: an empty text field counts as not sent (browsers send empty inputs).
            Source::Form => form
                .get(&param.key)
                .filter_map(|value| match value {
                    FormValue::Text(text) => Some(text.clone()),
                    FormValue::File(_) => None,
                })
                .filter(|text| !(text.is_empty() && matches!(param.kind, Kind::One(_))))
                .collect(),
            Source::Path => request
                .params
                .iter()
                .filter(|(k, _)| *k == param.key)
                .map(|(_, v)| v.clone())
                .collect(),
            Source::Query => {
                let pairs =
                    query.get_or_insert_with(|| parse_query(request.uri.query().unwrap_or("")));
                pairs
                    .iter()
                    .filter(|(k, _)| *k == param.key)
                    .map(|(_, v)| v.clone())
                    .collect()
            }
            Source::Header => request
                .headers
                .get_all(param.key.as_str())
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect(),
            Source::Cookie => {
                let jar = cookies.get_or_insert_with(|| {
                    parse_cookies(
                        request
                            .headers
                            .get_all(http::header::COOKIE)
                            .iter()
                            .filter_map(|v| v.to_str().ok()),
                    )
                });
                jar.iter()
                    .filter(|(k, _)| *k == param.key)
                    .map(|(_, v)| v.clone())
                    .take(1)
                    .collect()
            }
        };
        if values.is_empty() {
            if param.required {
                let loc: &[&str] = if param.source == Source::Body {
                    &["body"]
                } else {
                    &[source, &param.key]
                };
                errors.push(error_entry(
                    py,
                    "missing",
                    location(py, loc, None)?,
                    "Field required",
                    py.None().into_bound(py),
                )?);
            } else {
                kwargs.set_item(name, copy_default(param.default.bind(py))?)?;
            }
            continue;
        }
        match param.kind {
            // A repeated key for a single value: the last one wins, as in FastAPI.
            Kind::One(scalar) => {
                let text = &values[values.len() - 1];
                match convert(py, scalar, text, uuid_class)? {
                    Ok(value) => kwargs.set_item(name, value)?,
                    Err((kind, msg)) => errors.push(error_entry(
                        py,
                        kind,
                        location(py, &[source, &param.key], None)?,
                        msg,
                        PyString::new(py, text).into_any(),
                    )?),
                }
            }
            Kind::Many(scalar) => {
                let list = PyList::empty(py);
                for (index, text) in values.iter().enumerate() {
                    match convert(py, scalar, text, uuid_class)? {
                        Ok(value) => list.append(value)?,
                        Err((kind, msg)) => errors.push(error_entry(
                            py,
                            kind,
                            location(py, &[source, &param.key], Some(index))?,
                            msg,
                            PyString::new(py, text).into_any(),
                        )?),
                    }
                }
                kwargs.set_item(name, list)?;
            }
            Kind::Json => kwargs.set_item(name, PyString::new(py, &values[values.len() - 1]))?,
            Kind::File { .. } => unreachable!("files are bound by bind_files"),
        }
    }
    if !errors.is_empty() {
        return Ok(Err(Rejected::Invalid(errors)));
    }
    if let Some(name) = request_param {
        kwargs.set_item(name, Request::new(request, loop_index, loop_state))?;
    }
    Ok(Ok(kwargs))
}

/// Binds a `File()`/`UploadFile` parameter: the files sent under its name (the last one for a single
/// file, as FastAPI), or FastAPI's errors: `missing`, and for a text field where an `UploadFile` is
/// expected its `value_error`.
fn bind_files<'py>(
    py: Python<'py>,
    param: &Param,
    form: &mut Form,
    kwargs: &Bound<'py, PyDict>,
    errors: &mut Vec<Py<PyAny>>,
) -> PyResult<()> {
    let Kind::File { upload, many } = param.kind else {
        unreachable!("a file parameter has a file kind")
    };
    let name = param.name.bind(py);
    let texts: Vec<String> = form
        .get(&param.key)
        .filter_map(|value| match value {
            FormValue::Text(text) => Some(text.clone()),
            FormValue::File(_) => None,
        })
        // As for text fields: an empty one (a file input left empty) is not sent.
        .filter(|text| many || !text.is_empty())
        .collect();
    let mut files = form.take_files(&param.key);
    if files.is_empty() && texts.is_empty() {
        if param.required {
            errors.push(error_entry(
                py,
                "missing",
                location(py, &["body", &param.key], None)?,
                "Field required",
                py.None().into_bound(py),
            )?);
        } else {
            kwargs.set_item(name, copy_default(param.default.bind(py))?)?;
        }
        return Ok(());
    }
    let texts = if many || files.is_empty() {
        texts
    } else {
        files.drain(..files.len() - 1);
        Vec::new()
    };
    let mut values = Vec::with_capacity(files.len());
    for file in files {
        values.push(match (upload, &param.converter) {
            (true, Some(factory)) => upload_file(py, factory.bind(py), file)?,
            _ => file_bytes(py, file)?,
        });
    }
    // Text where a file was expected: bytes take its UTF-8, an UploadFile cannot be made of it.
    for (index, text) in texts.iter().enumerate() {
        if !upload {
            values.push(pyo3::types::PyBytes::new(py, text.as_bytes()).into_any());
            continue;
        }
        let entry = error_entry(
            py,
            "value_error",
            location(py, &["body", &param.key], many.then_some(index))?,
            "Value error, Expected UploadFile, received: <class 'str'>",
            PyString::new(py, text).into_any(),
        )?;
        let context = PyDict::new(py);
        context.set_item(intern!(py, "error"), PyDict::new(py))?;
        entry.bind(py).set_item(intern!(py, "ctx"), context)?;
        errors.push(entry);
    }
    if many {
        kwargs.set_item(name, PyList::new(py, values)?)?;
    } else if let Some(value) = values.pop() {
        kwargs.set_item(name, value)?;
    }
    Ok(())
}

/// Mutable defaults (`tags: list[str] = []`) are copied per request, so one request's changes never
/// reach the next.
fn copy_default<'py>(default: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = default.py();
    if default.cast::<PyList>().is_ok() || default.cast::<PyDict>().is_ok() {
        return default.call_method0(intern!(py, "copy"));
    }
    Ok(default.clone())
}
