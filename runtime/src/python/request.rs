//! `percore.Request`: read-only access to the request a handler is running for. Python objects are built
//! only for the fields a handler actually reads.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::exchange::HttpRequest;
use crate::query::{parse_cookies, parse_query};

#[pyclass(frozen, module = "percore", name = "Request")]
pub(super) struct Request {
    inner: HttpRequest,
    loop_index: usize,
    state: Option<Py<PyAny>>,
}

impl Request {
    pub(super) fn new(inner: HttpRequest, loop_index: usize, state: Option<Py<PyAny>>) -> Self {
        Request {
            inner,
            loop_index,
            state,
        }
    }
}

#[pymethods]
impl Request {
    /// The HTTP method, e.g. "GET".
    #[getter]
    fn method(&self) -> &str {
        self.inner.method.as_str()
    }

    /// The path, percent-encoded as received.
    #[getter]
    fn path(&self) -> &str {
        self.inner.uri.path()
    }

    /// The raw query string without '?', "" when absent.
    #[getter]
    fn query_string(&self) -> &str {
        self.inner.uri.query().unwrap_or("")
    }

    /// The request target as received: path and query.
    #[getter]
    fn url(&self) -> String {
        self.inner.uri.to_string()
    }

    #[getter]
    fn http_version(&self) -> &'static str {
        match self.inner.version {
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_2 => "2",
            _ => "1.1",
        }
    }

    /// Headers as a list of (name, value) pairs in the order received, names lower-case, duplicates kept.
    #[getter]
    fn header_list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let pairs = PyList::empty(py);
        for (name, value) in &self.inner.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            pairs.append(PyTuple::new(py, [name.as_str(), value.as_ref()])?)?;
        }
        Ok(pairs)
    }

    /// Headers as a dict of lower-case name to value; repeated headers are joined with ", ".
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let headers = PyDict::new(py);
        for name in self.inner.headers.keys() {
            let values: Vec<String> = self
                .inner
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            headers.set_item(name.as_str(), values.join(", "))?;
        }
        Ok(headers)
    }

    /// The query string decoded into a dict; for a repeated key the last value (see `query_list`).
    #[getter]
    fn query_params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let params = PyDict::new(py);
        for (name, value) in parse_query(self.inner.uri.query().unwrap_or("")) {
            params.set_item(name, value)?;
        }
        Ok(params)
    }

    /// The query string decoded into (name, value) pairs, in order, repeated keys kept.
    #[getter]
    fn query_list(&self) -> Vec<(String, String)> {
        parse_query(self.inner.uri.query().unwrap_or(""))
    }

    /// The cookies the client sent, by name.
    #[getter]
    fn cookies<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let cookies = PyDict::new(py);
        let headers = self.inner.headers.get_all(http::header::COOKIE);
        for (name, value) in parse_cookies(headers.iter().filter_map(|v| v.to_str().ok())) {
            cookies.set_item(name, value)?;
        }
        Ok(cookies)
    }

    /// The path parameters matched by the route, as strings.
    #[getter]
    fn path_params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let params = PyDict::new(py);
        for (name, value) in &self.inner.params {
            params.set_item(name, value)?;
        }
        Ok(params)
    }

    /// The whole request body.
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.body.full())
    }

    /// The body decoded as UTF-8 (invalid bytes replaced).
    fn text<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        PyString::new(py, &String::from_utf8_lossy(self.inner.body.full()))
    }

    /// (host, port) of the client: the peer, or what a trusted proxy named in `X-Forwarded-For`
    /// (port 0 when it gave none; docs/proxies.md).
    #[getter]
    fn client(&self) -> Option<(String, u16)> {
        match self.inner.forwarded.as_ref().and_then(|f| f.client.clone()) {
            Some(client) => Some(client),
            None => self.inner.client.map(|a| (a.ip().to_string(), a.port())),
        }
    }

    /// "http" ("https" with `--ssl-certfile`), or what a trusted proxy said in `X-Forwarded-Proto`
    /// ("https" behind a TLS terminator).
    #[getter]
    fn scheme(&self) -> &'static str {
        self.inner
            .forwarded
            .as_ref()
            .and_then(|f| f.scheme)
            .unwrap_or(if self.inner.secure { "https" } else { "http" })
    }

    /// (host, port) this server accepted the connection on; (path, None) on a Unix socket (`--uds`).
    #[getter]
    fn server<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
        super::convert::server_tuple(py, &self.inner.server)
    }

    /// This loop's state: what the app's `on_loop_start` hooks put there (a dict; None without hooks).
    #[getter]
    fn state(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.as_ref().map(|s| s.clone_ref(py))
    }

    /// `await request.json()`: the body parsed as JSON (sonic-rs); malformed JSON raises ValueError.
    /// The body is already read, so the awaitable is complete at once.
    fn json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let value = super::serialize::from_json(py, self.inner.body.full())
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("malformed JSON: {e}")))?;
        super::awaitable::ready(py, value)
    }

    /// The index of the loop running this request.
    #[getter]
    fn loop_index(&self) -> usize {
        self.loop_index
    }

    fn __repr__(&self) -> String {
        format!("<Request {} {}>", self.inner.method, self.inner.uri)
    }
}
