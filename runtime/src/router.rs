//! Path routing in Rust: a matchit tree from path to the endpoints registered for each method.
//!
//! Invariant: a request that matches no path (404) or no method on a matched path (405, with `Allow`) is
//! answered from here without entering Python. Conflicting registrations fail at startup, never at request time.
//!
//! WebSocket routes are filed under the pseudo-method [`WEBSOCKET`]: only a WebSocket handshake
//! (`lookup_websocket`) reaches them; a plain request never does, and `Allow` never names it.

use std::fmt;

use http::Method;

use crate::query::percent_decode_path;

/// The method WebSocket routes are registered under (not an HTTP method anyone may send: plain lookups
/// skip it).
pub const WEBSOCKET: &str = "WEBSOCKET";

/// An index into the server's endpoint table.
pub type EndpointId = usize;

/// matchit 0.9 renames a route's parameters `a`..=`z` internally and panics on the 26th.
const MAX_PARAMS: usize = 25;

/// An upper bound on the parameters in `path`: every `{` that is not part of an escaped `{{`.
fn count_params(path: &str) -> usize {
    let bytes = path.as_bytes();
    let (mut i, mut count) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b'{' {
            if bytes.get(i + 1) == Some(&b'{') {
                i += 2;
                continue;
            }
            count += 1;
        }
        i += 1;
    }
    count
}

#[derive(Default)]
struct MethodTable {
    entries: Vec<(Method, EndpointId)>,
}

#[derive(Default)]
pub struct Router {
    tree: matchit::Router<usize>,
    tables: Vec<MethodTable>,
    /// Path as registered, per table, for error messages.
    paths: Vec<String>,
    /// Every request goes here (an ASGI app does its own routing).
    catch_all: Option<EndpointId>,
}

pub enum Lookup {
    Found {
        endpoint: EndpointId,
        params: Vec<(String, String)>,
    },
    NotFound,
    MethodNotAllowed {
        allow: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterError {
    Conflict { path: String, reason: String },
    Duplicate { method: String, path: String },
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouterError::Conflict { path, reason } => {
                write!(f, "route {path:?} cannot be registered: {reason}")
            }
            RouterError::Duplicate { method, path } => {
                write!(f, "route {method} {path} is registered twice")
            }
        }
    }
}

impl std::error::Error for RouterError {}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// A router that sends every method and path to `endpoint`.
    pub fn catch_all(endpoint: EndpointId) -> Self {
        Router {
            catch_all: Some(endpoint),
            ..Self::default()
        }
    }

    pub fn insert(
        &mut self,
        method: Method,
        path: &str,
        endpoint: EndpointId,
    ) -> Result<(), RouterError> {
        let table = match self.tree.at(path) {
            // Same path text registered before (a different method): reuse its table. A different
            // pattern that happens to match this literal text (e.g. `/a/{x}` vs `/a/{y}`) is a conflict
            // that matchit reports below.
            Ok(found) if self.paths[*found.value] == path => *found.value,
            _ => {
                // Found by fuzz/fuzz_targets/router.rs: matchit panics instead of returning an error.
                if count_params(path) > MAX_PARAMS {
                    return Err(RouterError::Conflict {
                        path: path.to_owned(),
                        reason: format!("more than {MAX_PARAMS} path parameters"),
                    });
                }
                let index = self.tables.len();
                self.tree
                    .insert(path, index)
                    .map_err(|err| RouterError::Conflict {
                        path: path.to_owned(),
                        reason: err.to_string(),
                    })?;
                self.tables.push(MethodTable::default());
                self.paths.push(path.to_owned());
                index
            }
        };
        let entries = &mut self.tables[table].entries;
        if entries.iter().any(|(m, _)| *m == method) {
            return Err(RouterError::Duplicate {
                method: method.to_string(),
                path: path.to_owned(),
            });
        }
        entries.push((method, endpoint));
        Ok(())
    }

    /// For a WebSocket handshake: the path's WebSocket route, else what a plain request would get.
    pub fn lookup_websocket(&self, method: &Method, path: &str) -> Lookup {
        if self.catch_all.is_none() {
            if let Ok(found) = self.tree.at(path) {
                let entry = self.tables[*found.value]
                    .entries
                    .iter()
                    .find(|(m, _)| m.as_str() == WEBSOCKET);
                if let Some((_, endpoint)) = entry {
                    return Lookup::Found {
                        endpoint: *endpoint,
                        params: decoded(&found.params),
                    };
                }
            }
        }
        self.lookup(method, path)
    }

    pub fn lookup(&self, method: &Method, path: &str) -> Lookup {
        if let Some(endpoint) = self.catch_all {
            return Lookup::Found {
                endpoint,
                params: Vec::new(),
            };
        }
        let Ok(found) = self.tree.at(path) else {
            return Lookup::NotFound;
        };
        let table = &self.tables[*found.value];
        let entries = || {
            table
                .entries
                .iter()
                .filter(|(m, _)| m.as_str() != WEBSOCKET)
        };
        let entry = entries().find(|(m, _)| m == method).or_else(|| {
            // HEAD is GET without the body (hyper leaves the body out), unless HEAD has its own route.
            (*method == Method::HEAD)
                .then(|| entries().find(|(m, _)| *m == Method::GET))
                .flatten()
        });
        match entry {
            Some((_, endpoint)) => Lookup::Found {
                endpoint: *endpoint,
                params: decoded(&found.params),
            },
            // A path with only a WebSocket route does not exist for plain requests (as in Starlette).
            None if entries().next().is_none() => Lookup::NotFound,
            None => Lookup::MethodNotAllowed {
                allow: entries()
                    .map(|(m, _)| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        }
    }
}

/// Matching runs on the raw path (so `%2F` stays inside one segment); values are decoded.
fn decoded(params: &matchit::Params<'_, '_>) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(k, v)| (k.to_owned(), percent_decode_path(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(lookup: Lookup) -> (EndpointId, Vec<(String, String)>) {
        match lookup {
            Lookup::Found { endpoint, params } => (endpoint, params),
            _ => panic!("expected a match"),
        }
    }

    #[test]
    fn matches_static_and_parameter_paths() {
        let mut router = Router::new();
        router.insert(Method::GET, "/users/{id}", 0).unwrap();
        router.insert(Method::GET, "/users/me", 1).unwrap();
        router.insert(Method::POST, "/users/{id}", 2).unwrap();
        assert_eq!(
            found(router.lookup(&Method::GET, "/users/42")),
            (0, vec![("id".into(), "42".into())])
        );
        assert_eq!(found(router.lookup(&Method::GET, "/users/me")), (1, vec![]));
        assert_eq!(found(router.lookup(&Method::POST, "/users/7")).0, 2);
    }

    #[test]
    fn unknown_path_is_not_found_and_wrong_method_lists_allowed() {
        let mut router = Router::new();
        router.insert(Method::GET, "/items", 0).unwrap();
        router.insert(Method::PUT, "/items", 1).unwrap();
        assert!(matches!(
            router.lookup(&Method::GET, "/nope"),
            Lookup::NotFound
        ));
        match router.lookup(&Method::DELETE, "/items") {
            Lookup::MethodNotAllowed { allow } => assert_eq!(allow, "GET, PUT"),
            _ => panic!("expected 405"),
        }
    }

    #[test]
    fn head_is_served_by_get_and_captures_are_decoded() {
        let mut router = Router::new();
        router.insert(Method::GET, "/users/{name}", 3).unwrap();
        assert_eq!(
            found(router.lookup(&Method::HEAD, "/users/Jos%C3%A9%2Fx")),
            (3, vec![("name".into(), "José/x".into())])
        );
    }

    #[test]
    fn websocket_routes_answer_handshakes_only() {
        let websocket = Method::from_bytes(WEBSOCKET.as_bytes()).unwrap();
        let mut router = Router::new();
        router.insert(websocket.clone(), "/ws/{room}", 0).unwrap();
        router.insert(Method::GET, "/both", 1).unwrap();
        router.insert(websocket.clone(), "/both", 2).unwrap();
        assert_eq!(
            found(router.lookup_websocket(&Method::GET, "/ws/a%20b")),
            (0, vec![("room".to_owned(), "a b".to_owned())])
        );
        assert_eq!(found(router.lookup_websocket(&Method::GET, "/both")).0, 2);
        assert_eq!(found(router.lookup(&Method::GET, "/both")).0, 1);
        // Plain requests never reach a WebSocket route, whatever method they name.
        assert!(matches!(
            router.lookup(&Method::GET, "/ws/a"),
            Lookup::NotFound
        ));
        assert!(matches!(
            router.lookup(&websocket, "/ws/a"),
            Lookup::NotFound
        ));
        match router.lookup(&Method::POST, "/both") {
            Lookup::MethodNotAllowed { allow } => assert_eq!(allow, "GET"),
            _ => panic!("expected 405"),
        }
        // A handshake on a path without a WebSocket route is routed as the plain request it is.
        router.insert(Method::GET, "/plain", 3).unwrap();
        assert_eq!(found(router.lookup_websocket(&Method::GET, "/plain")).0, 3);
        assert!(matches!(
            router.lookup_websocket(&Method::GET, "/nope"),
            Lookup::NotFound
        ));
    }

    #[test]
    fn catch_all_takes_every_method_and_path() {
        let router = Router::catch_all(7);
        for (method, path) in [
            (Method::GET, "/"),
            (Method::DELETE, "/a/b?c"),
            (Method::OPTIONS, "*"),
        ] {
            assert_eq!(found(router.lookup(&method, path)), (7, vec![]));
        }
    }

    #[test]
    fn too_many_parameters_fail_at_registration_instead_of_panicking() {
        let path = |n: usize| (0..n).map(|i| format!("/{{p{i}}}")).collect::<String>();
        let mut router = Router::new();
        router.insert(Method::GET, &path(25), 0).unwrap();
        let (_, params) = found(router.lookup(&Method::GET, &"/x".repeat(25)));
        assert_eq!(params.len(), 25);
        match router.insert(Method::GET, &format!("/b{}", path(26)), 1) {
            Err(RouterError::Conflict { reason, .. }) => assert!(reason.contains("25"), "{reason}"),
            _ => panic!("expected an error"),
        }
        // Escaped braces are not parameters.
        assert_eq!(count_params("/{{a}}/{b}/{*rest}"), 2);
    }

    #[test]
    fn conflicts_and_duplicates_fail_at_registration() {
        let mut router = Router::new();
        router.insert(Method::GET, "/a/{x}", 0).unwrap();
        assert!(matches!(
            router.insert(Method::GET, "/a/{y}", 1),
            Err(RouterError::Conflict { .. })
        ));
        assert!(matches!(
            router.insert(Method::GET, "/a/{x}", 2),
            Err(RouterError::Duplicate { .. })
        ));
    }
}
