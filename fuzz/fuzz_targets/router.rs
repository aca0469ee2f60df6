//! `router.rs`: registering arbitrary route patterns and matching arbitrary paths.
//!
//! Registration may fail (conflicts, duplicates, malformed patterns) but never panics; every static route
//! that registered is found again; a lookup only ever returns an endpoint registered for that method
//! (or for GET, when asked for HEAD); a 405 lists the registered methods and not the one asked for.
#![no_main]

use std::collections::HashMap;

use _runtime::router::{Lookup, Router};
use http::Method;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE",
];

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<(u8, String)>,
    lookups: Vec<(u8, String)>,
}

fn method(index: u8) -> Method {
    Method::from_bytes(METHODS[index as usize % METHODS.len()].as_bytes()).unwrap()
}

fuzz_target!(|input: Input| {
    let mut router = Router::new();
    // endpoint id -> (method, pattern)
    let mut registered: HashMap<usize, (Method, String)> = HashMap::new();
    for (endpoint, (m, pattern)) in input.routes.iter().enumerate() {
        if router.insert(method(*m), pattern, endpoint).is_ok() {
            registered.insert(endpoint, (method(*m), pattern.clone()));
        }
    }

    for (endpoint, (m, pattern)) in &registered {
        if pattern.contains(['{', '}']) {
            continue;
        }
        match router.lookup(m, pattern) {
            Lookup::Found {
                endpoint: found,
                params,
            } => {
                assert_eq!(found, *endpoint, "{m} {pattern:?}");
                assert!(params.is_empty());
            }
            _ => panic!("registered static route {m} {pattern:?} is not found"),
        }
    }

    let lookups = input
        .lookups
        .iter()
        .map(|(m, p)| (method(*m), p.clone()))
        .chain(registered.values().cloned());
    for (m, path) in lookups {
        match router.lookup(&m, &path) {
            Lookup::Found { endpoint, .. } => {
                let (registered_method, _) = registered.get(&endpoint).unwrap_or_else(|| {
                    panic!("{m} {path:?} found unregistered endpoint {endpoint}")
                });
                assert!(
                    *registered_method == m
                        || (m == Method::HEAD && *registered_method == Method::GET),
                    "{m} {path:?} found endpoint {endpoint} registered for {registered_method}"
                );
            }
            Lookup::MethodNotAllowed { allow } => {
                let allowed: Vec<&str> = allow.split(", ").collect();
                assert!(
                    !allowed.is_empty() && !allowed.contains(&m.as_str()),
                    "{m} {path:?}: {allow}"
                );
                if m == Method::HEAD {
                    assert!(
                        !allowed.contains(&"GET"),
                        "HEAD {path:?} not served by GET: {allow}"
                    );
                }
                for name in allowed {
                    assert!(
                        registered.values().any(|(rm, _)| rm.as_str() == name),
                        "{allow}"
                    );
                }
            }
            Lookup::NotFound => {}
        }
    }
});
