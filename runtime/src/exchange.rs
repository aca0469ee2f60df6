//! The plain-Rust contract between the HTTP server and an executor: a routed request (`HttpRequest`)
//! and its answer (`HttpResponse`), their bodies, and the `Latch` both sides use to say "the client went
//! away" or "the exchange is over".
//!
//! This is the bottom layer: it imports nothing from the rest of the crate but `deadline` (a streaming
//! body's timer) and `proxy` (what a trusted proxy said), so every layer above can speak it.
#![warn(missing_docs)]

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::listener::LocalAddress;
use crate::routing::InFlight;

/// A request's body: already read (small bodies are collected before dispatch), or still arriving (under
/// `--body-timeout`).
pub enum RequestBody {
    /// Read whole before dispatch.
    Full(Bytes),
    /// Still arriving, under `--body-timeout`.
    Streaming(crate::deadline::TimedBody),
}

impl RequestBody {
    /// The body if it has been read whole (always, for endpoints that do not stream their body).
    pub fn full(&self) -> &[u8] {
        match self {
            RequestBody::Full(bytes) => bytes,
            RequestBody::Streaming(_) => &[],
        }
    }
}

/// A one-way flag that can be awaited from any thread: set once, never cleared.
#[derive(Default)]
pub struct Latch {
    set: AtomicBool,
    notify: Notify,
}

impl Latch {
    /// Whether the latch has been set.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the latch is set.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }

    /// Sets the latch and wakes every waiter; setting it again does nothing.
    pub fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// A request as the executor sees it: routed, and `Send` so it can be handed to another loop.
pub struct HttpRequest {
    /// The request method.
    pub method: http::Method,
    /// The request target, as sent.
    pub uri: http::Uri,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: http::Version,
    /// The request headers, in order, repeats kept.
    pub headers: http::HeaderMap,
    /// The body, read or still arriving.
    pub body: RequestBody,
    /// Path parameters the route captured, percent-decoded.
    pub params: Vec<(String, String)>,
    /// The peer: the client, or the proxy in front of it (then see `forwarded`); None on a Unix socket.
    pub client: Option<SocketAddr>,
    /// The address the connection was accepted on.
    pub server: LocalAddress,
    /// The connection is TLS (`--ssl-certfile`): the scheme is https/wss unless a trusted proxy says otherwise.
    pub secure: bool,
    /// What a trusted proxy's headers said (client, scheme); None for most requests.
    pub forwarded: Option<Box<crate::proxy::Forwarded>>,
    /// Set when the client goes away before its response is ready.
    pub client_gone: Arc<Latch>,
    /// For an `Upgrade` request (WebSocket): resolves to the raw connection once a 101 response is sent.
    /// Such requests always run on the loop that read them: the connection cannot change threads.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// Counts the request against its loop's `--max-in-flight` (set by `LoopContext::dispatch`). The
    /// executor keeps it until its response is ready, and longer while the request's work runs on (an
    /// ASGI app whose client left); dropped with the request otherwise.
    pub in_flight: Option<InFlight>,
}

/// `"GET /path"`: how logs, task names and native routes call a request or route. The one place this
/// format is defined. Built by hand: `format!` cost ~1k instructions per request, for a name that is read
/// only when something fails.
pub fn route_name(method: &str, path: &str) -> String {
    let mut name = String::with_capacity(method.len() + 1 + path.len());
    name.push_str(method);
    name.push(' ');
    name.push_str(path);
    name
}

/// Whether a request's headers ask to become a WebSocket (`Upgrade: websocket`, any case): such a request
/// is routed to the path's WebSocket route, if it has one (`Router::lookup_websocket`).
pub fn is_handshake(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

impl HttpRequest {
    /// `"GET /path"` (`route_name`) for this request.
    pub fn name(&self) -> String {
        route_name(self.method.as_str(), self.uri.path())
    }

    /// Whether this request asks to become a WebSocket: an upgradable connection, `Upgrade: websocket`
    /// (any case) and a `Sec-WebSocket-Key`.
    pub fn is_websocket(&self) -> bool {
        self.upgrade.is_some()
            && is_handshake(&self.headers)
            && self.headers.contains_key(http::header::SEC_WEBSOCKET_KEY)
    }
}

/// Chunks of a streamed response body. The executor keeps the sender: dropping it ends the body, an
/// `Err` aborts the connection (the client must not mistake a failed stream for a complete one).
pub type BodyChunks = tokio::sync::mpsc::Receiver<Result<Bytes, StreamAborted>>;

#[derive(Debug)]
/// Why a streamed response body was cut off (the connection is then closed, not ended cleanly).
pub struct StreamAborted(pub String);

impl fmt::Display for StreamAborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "response stream aborted: {}", self.0)
    }
}

impl std::error::Error for StreamAborted {}

/// A response's body: complete, or chunks as they are produced.
pub enum ResponseBody {
    /// The whole body.
    Full(Bytes),
    /// Chunks as they are produced. The latch is set if the body is dropped before its end — the
    /// client went away mid-stream — so the producer can stop.
    Stream(BodyChunks, Arc<Latch>),
}

/// A response: status and headers, and a body that is either complete or streamed.
pub struct HttpResponse {
    /// The status code.
    pub status: http::StatusCode,
    /// Headers, in order (`content-length` is hyper's to set).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The body.
    pub body: ResponseBody,
}

impl HttpResponse {
    /// A complete response with one `content-type` header (an invalid status becomes 500).
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        HttpResponse {
            status: http::StatusCode::from_u16(status)
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
            headers: vec![(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            )],
            body: ResponseBody::Full(body.into()),
        }
    }

    /// A plain-text response.
    pub fn text(status: u16, body: &'static str) -> Self {
        Self::new(
            status,
            "text/plain; charset=utf-8",
            Bytes::from_static(body.as_bytes()),
        )
    }

    /// 500 Internal Server Error, saying nothing more.
    pub fn internal_error() -> Self {
        Self::text(500, "Internal Server Error")
    }

    /// 408 for a request whose body stopped arriving (`--body-timeout`), closing the connection: the rest
    /// of the body is not read, so nothing after it on the wire may be taken for a request.
    pub fn request_timeout() -> Self {
        let mut response = Self::text(408, "Request Timeout");
        response.headers.push((
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        ));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> HttpRequest {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        HttpRequest {
            method: method.parse().unwrap(),
            uri: target.parse().unwrap(),
            version: http::Version::HTTP_11,
            headers: map,
            body: RequestBody::Full(Bytes::new()),
            params: Vec::new(),
            client: None,
            server: LocalAddress::Tcp(SocketAddr::from(([127, 0, 0, 1], 8000))),
            secure: false,
            forwarded: None,
            client_gone: Arc::default(),
            upgrade: None,
            in_flight: None,
        }
    }

    /// An upgrade handle as hyper attaches one to an HTTP/1.1 request (this one never resolves).
    fn upgradable() -> hyper::upgrade::OnUpgrade {
        hyper::upgrade::on(http::Request::new(()))
    }

    #[test]
    fn a_request_is_named_by_method_and_path_without_the_query() {
        assert_eq!(request("GET", "/items/1?x=2", &[]).name(), "GET /items/1");
        assert_eq!(request("DELETE", "/", &[]).name(), "DELETE /");
        assert_eq!(route_name("POST", "/users/{id}"), "POST /users/{id}");
    }

    #[test]
    fn a_websocket_needs_an_upgradable_connection_the_upgrade_header_and_a_key() {
        let handshake = [
            ("upgrade", "WebSocket"),
            ("sec-websocket-key", "x3JJHMbDL1EzLkh9GBhXDw=="),
        ];
        // Without hyper's upgrade handle (e.g. HTTP/1.0, or a request read without one) it is plain HTTP.
        assert!(!request("GET", "/ws", &handshake).is_websocket());
        let mut with_upgrade = request("GET", "/ws", &handshake);
        with_upgrade.upgrade = Some(upgradable());
        assert!(with_upgrade.is_websocket());
        for headers in [
            &[("upgrade", "h2c"), ("sec-websocket-key", "x")][..],
            &[("upgrade", "websocket")][..],
            &[("sec-websocket-key", "x")][..],
        ] {
            let mut other = request("GET", "/ws", headers);
            other.upgrade = Some(upgradable());
            assert!(!other.is_websocket(), "{headers:?}");
        }
    }
}
