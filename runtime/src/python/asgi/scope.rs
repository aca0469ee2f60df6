//! The ASGI scope both connection kinds start from (`base_scope`): per-loop templates of the fixed keys,
//! copied and filled with the request's path, query, headers, client and server; and `AsgiEndpoint`, the
//! app as a route target. The bottom of `asgi/`.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::exchange::HttpRequest;
use crate::listener::LocalAddress;
use crate::python::convert::{host_string, server_tuple};
use crate::query::percent_decode_path;

/// An ASGI application as a route target.
pub(in crate::python) struct AsgiEndpoint {
    pub(in crate::python) app: Py<PyAny>,
    pub(in crate::python) root_path: String,
}

/// The scope keys that do not change between requests of one kind on one listener.
struct ScopeTemplate {
    kind: usize,
    scheme: usize,
    root_path: String,
    server: LocalAddress,
    scope: Py<PyDict>,
    asgi: Py<PyDict>,
}

thread_local! {
    /// This loop's scope templates (HTTP, WebSocket; a loop has one listener): a request's scope is a
    /// copy of its template with the per-request keys set. Copying a dict clones its key table in one
    /// go; building it key by key resized it twice and cost ~2.5k more instructions per request.
    static SCOPE_TEMPLATES: std::cell::RefCell<Vec<ScopeTemplate>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A fresh scope dict holding the fixed keys (`type`, `asgi`, `http_version` 1.1, `scheme`, `root_path`,
/// `server`) and placeholders for the keys `base_scope` sets (so that setting them replaces rather than
/// inserts). `asgi` is a fresh dict too: nothing in a scope is shared between requests, as under uvicorn.
fn scope_from_template<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyString>,
    scheme: &Bound<'py, PyString>,
    root_path: &str,
    server: &LocalAddress,
) -> PyResult<Bound<'py, PyDict>> {
    SCOPE_TEMPLATES.with(|templates| {
        let mut templates = templates.borrow_mut();
        let found = templates.iter().position(|t| {
            t.kind == kind.as_ptr() as usize
                && t.scheme == scheme.as_ptr() as usize
                && t.server == *server
                && t.root_path == root_path
        });
        let template = match found {
            Some(index) => &templates[index],
            None => {
                let asgi = PyDict::new(py);
                asgi.set_item(intern!(py, "version"), intern!(py, "3.0"))?;
                asgi.set_item(intern!(py, "spec_version"), intern!(py, "2.3"))?;
                let scope = PyDict::new(py);
                let none = py.None();
                scope.set_item(intern!(py, "type"), kind)?;
                scope.set_item(intern!(py, "asgi"), &none)?;
                scope.set_item(intern!(py, "http_version"), intern!(py, "1.1"))?;
                scope.set_item(intern!(py, "scheme"), scheme)?;
                for key in ["path", "raw_path"] {
                    scope.set_item(key, &none)?;
                }
                scope.set_item(intern!(py, "root_path"), root_path)?;
                for key in ["query_string", "headers", "client"] {
                    scope.set_item(key, &none)?;
                }
                scope.set_item(intern!(py, "server"), server_tuple(py, server)?)?;
                // A loop with clients on many listeners (never the case today) must not grow forever.
                if templates.len() >= 4 {
                    templates.remove(0);
                }
                templates.push(ScopeTemplate {
                    kind: kind.as_ptr() as usize,
                    scheme: scheme.as_ptr() as usize,
                    root_path: root_path.to_owned(),
                    server: server.clone(),
                    scope: scope.unbind(),
                    asgi: asgi.unbind(),
                });
                templates.last().expect("just pushed")
            }
        };
        let scope = template.scope.bind(py).copy()?;
        scope.set_item(intern!(py, "asgi"), template.asgi.bind(py).copy()?)?;
        Ok(scope)
    })
}

/// The scope keys HTTP and WebSocket connections share: `type`, `asgi`, `http_version`, `scheme`,
/// `path` (percent-decoded and prefixed with `root_path`, as uvicorn does), `raw_path`, `root_path`,
/// `query_string`, `headers` (byte pairs, in order, duplicates kept), `client`, `server` and `state`.
pub(super) fn base_scope<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyString>,
    scheme: &Bound<'py, PyString>,
    endpoint: &AsgiEndpoint,
    request: &HttpRequest,
    loop_state: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    let scope = scope_from_template(py, kind, scheme, &endpoint.root_path, &request.server)?;
    match request.version {
        http::Version::HTTP_10 => {
            scope.set_item(intern!(py, "http_version"), intern!(py, "1.0"))?
        }
        http::Version::HTTP_2 => scope.set_item(intern!(py, "http_version"), intern!(py, "2"))?,
        _ => {}
    }
    let raw_path = request.uri.path();
    let path = if endpoint.root_path.is_empty() && !raw_path.contains('%') {
        PyString::new(py, raw_path)
    } else {
        let decoded = percent_decode_path(raw_path);
        PyString::new(py, &format!("{}{decoded}", endpoint.root_path))
    };
    scope.set_item(intern!(py, "path"), path)?;
    scope.set_item(
        intern!(py, "raw_path"),
        PyBytes::new(py, raw_path.as_bytes()),
    )?;
    let query = request.uri.query().unwrap_or("");
    scope.set_item(
        intern!(py, "query_string"),
        PyBytes::new(py, query.as_bytes()),
    )?;
    let headers = PyList::empty(py);
    for (name, value) in &request.headers {
        headers.append(PyTuple::new(
            py,
            [
                PyBytes::new(py, name.as_str().as_bytes()),
                PyBytes::new(py, value.as_bytes()),
            ],
        )?)?;
    }
    scope.set_item(intern!(py, "headers"), headers)?;
    if let Some(forwarded) = &request.forwarded {
        // A trusted proxy's view of the client and scheme (runtime/src/proxy.rs), as uvicorn applies it.
        let scheme = if kind.to_str()? == "websocket" {
            forwarded.websocket_scheme()
        } else {
            forwarded.scheme
        };
        if let Some(scheme) = scheme {
            scope.set_item(intern!(py, "scheme"), scheme)?;
        }
    }
    let forwarded_client = request.forwarded.as_ref().and_then(|f| f.client.as_ref());
    match request.client {
        _ if forwarded_client.is_some() => {
            scope.set_item(intern!(py, "client"), forwarded_client)?;
        }
        Some(client) => {
            let host = host_string(py, client.ip());
            let client = PyTuple::new(
                py,
                [host.into_any(), client.port().into_pyobject(py)?.into_any()],
            )?;
            scope.set_item(intern!(py, "client"), client)?;
        }
        // A Unix socket peer: the template's None, as uvicorn reports it.
        None => {}
    }
    if let Some(state) = loop_state {
        scope.set_item(intern!(py, "state"), state.copy()?)?;
    }
    Ok(scope)
}
