//! HTTP on each loop: accepting on the loop's duplicate of the shared listening socket (`listener` binds
//! it), Hyper HTTP/1.1 connections with keep-alive, and the request path from bytes on a socket to a routed
//! `HttpRequest` and back.
//!
//! A connection stays on the loop that accepted it; the routing policies (hand-off per request) are what
//! spread a single long-lived connection's requests.
//!
//! Invariant: 404 and 405 (and 400 for a head breaking the Host, Transfer-Encoding or target rules,
//! `head_error`) are answered here, before any executor (Python) is involved. Every wait on a
//! client is bounded: the TLS handshake and each request head by `--header-timeout`, a body by
//! `--body-timeout`, taking the response by `--send-timeout` (`deadline`).
//!
//! Over 500 lines: one connection's life, from accept to the last byte written, reads best in one place.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch, Notify};

use crate::access_log;
use crate::config::Limits;
use crate::deadline::{BodyReadError, SendDeadline, TimedBody};
use crate::dispatch::LoopContext;
use crate::exchange::{
    BodyChunks, HttpRequest, HttpResponse, Latch, RequestBody, ResponseBody, StreamAborted,
};
use crate::executor::Executor;
use crate::listener::Listener;
use crate::metrics::Metrics;
use crate::proxy::Forwarded;
use crate::router::Lookup;
use crate::routing::LoadTable;

/// A request head (request line and headers) larger than this is answered 431.
const MAX_HEADER_SIZE: usize = 64 * 1024;
/// Declared bodies up to this size are read before the handler runs.
const EAGER_BODY_LIMIT: u64 = 64 * 1024;

/// A loop's listening socket in its async form (`listener` binds them).
///
/// Readiness and accepting are separate steps (an `AsyncFd`, not tokio's listeners, whose `accept`
/// takes whatever is queued): between them a loop that has more connections than a free loop leaves the
/// queued connection to that loop (`LoadTable::should_leave_connection`).
pub struct AsyncListener {
    socket: ListeningSocket,
    /// Every loop accepts from this one queue (its listener is a duplicate of one socket).
    shared_queue: bool,
}

enum ListeningSocket {
    Tcp(AsyncFd<std::net::TcpListener>),
    Unix(AsyncFd<std::os::unix::net::UnixListener>),
}

/// How long a loop leaves a queued connection to a free loop with fewer connections before it takes the
/// connection itself (that loop may be slow to wake): tokio's timer tick, so at most ~2 ms.
const LEAVE_TO_ANOTHER_LOOP: Duration = Duration::from_millis(1);

impl AsyncListener {
    /// Must run on the loop's runtime (registers the socket with its reactor).
    pub fn from_std(listener: Listener, shared_queue: bool) -> std::io::Result<Self> {
        let socket = match listener {
            Listener::Tcp(listener) => {
                listener.set_nonblocking(true)?;
                ListeningSocket::Tcp(crate::sys::register_listener(listener)?)
            }
            Listener::Unix(listener) => {
                listener.set_nonblocking(true)?;
                ListeningSocket::Unix(crate::sys::register_listener(listener)?)
            }
        };
        Ok(AsyncListener {
            socket,
            shared_queue,
        })
    }

    /// The next connection this loop should take: waits until one is queued, and on a shared queue first
    /// lets a free loop with fewer connections take it (see `LEAVE_TO_ANOTHER_LOOP`).
    async fn accept(&self, load: &LoadTable, index: usize) -> std::io::Result<Accepted> {
        let leave = || self.shared_queue && load.should_leave_connection(index);
        match &self.socket {
            ListeningSocket::Tcp(fd) => {
                let (stream, peer) = accept_from(fd, leave, |l| l.accept()).await?;
                stream.set_nonblocking(true)?;
                Ok(Accepted::Tcp(
                    tokio::net::TcpStream::from_std(stream)?,
                    peer,
                ))
            }
            ListeningSocket::Unix(fd) => {
                let (stream, _) = accept_from(fd, leave, |l| l.accept()).await?;
                stream.set_nonblocking(true)?;
                Ok(Accepted::Unix(tokio::net::UnixStream::from_std(stream)?))
            }
        }
    }
}

async fn accept_from<L: AsRawFd, T>(
    fd: &AsyncFd<L>,
    leave: impl Fn() -> bool,
    accept: impl Fn(&L) -> std::io::Result<T>,
) -> std::io::Result<T> {
    loop {
        let mut ready = fd.readable().await?;
        if leave() {
            drop(ready);
            tokio::time::sleep(LEAVE_TO_ANOTHER_LOOP).await;
            // Still marked ready: returns at once, and accepting then finds the queue empty if another
            // loop took the connection meanwhile.
            ready = fd.readable().await?;
        }
        match ready.try_io(|inner| accept(inner.get_ref())) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Counts a loop's open connections so shutdown can wait for them to finish.
pub struct Connections {
    open: Cell<usize>,
    closed: Notify,
    /// Set when the shutdown timeout expired: every connection still open is dropped.
    abort: watch::Sender<bool>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            open: Cell::new(0),
            closed: Notify::new(),
            abort: watch::channel(false).0,
        }
    }
}

impl Connections {
    pub async fn all_closed(&self) {
        while self.open.get() > 0 {
            self.closed.notified().await;
        }
    }

    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// Drops every open connection (and with it the requests in progress on it, whose handlers are
    /// cancelled).
    pub fn abort_all(&self) {
        self.abort.send_replace(true);
    }
}

/// An open connection, counted in the loop's `Connections` and in the shared `LoadTable`.
struct ConnectionGuard {
    connections: Rc<Connections>,
    load: Arc<LoadTable>,
    index: usize,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.load.connection_closed(self.index);
        self.connections.open.set(self.connections.open.get() - 1);
        self.connections.closed.notify_waiters();
    }
}

/// Accepts and serves connections until `stop` turns true; returns the tracker of connections still open.
/// Those are told to finish their current request and close (graceful shutdown).
pub async fn accept_until_stopped<X: Executor>(
    listener: AsyncListener,
    context: Rc<LoopContext<X>>,
    stop: &mut watch::Receiver<bool>,
) -> Rc<Connections> {
    let connections = Rc::new(Connections::default());
    let limits = context.shared.config.limits.clone();
    let shares_queue = listener.shared_queue;
    loop {
        while connections.open.get() >= limits.max_connections_per_loop {
            tokio::select! {
                _ = connections.closed.notified() => {}
                _ = stop.wait_for(|stopped| *stopped) => break,
            }
        }
        if *stop.borrow() {
            break;
        }
        let accepted = tokio::select! {
            accepted = listener.accept(&context.shared.load, context.index) => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        match accepted {
            Ok(Accepted::Tcp(stream, peer)) => {
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, Some(peer), &connections, &context, stop);
            }
            // A Unix socket's peer has no address: ASGI's `client` is None, as under uvicorn.
            Ok(Accepted::Unix(stream)) => {
                spawn_connection(stream, None, &connections, &context, stop)
            }
            // Transient (EMFILE, ECONNABORTED, ...): back off briefly instead of spinning.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        }
        if shares_queue {
            // Serve what was just accepted (its request is usually there already) before taking the next
            // connection from the shared queue: if that request keeps this loop busy, the connections
            // behind it go to the loops that are waiting, instead of this one taking them all at once.
            tokio::task::yield_now().await;
        }
    }
    drop(listener);
    connections
}

enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

fn spawn_connection<X, IO>(
    stream: IO,
    peer: Option<SocketAddr>,
    connections: &Rc<Connections>,
    context: &Rc<LoopContext<X>>,
    stop: &watch::Receiver<bool>,
) where
    X: Executor,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    connections.open.set(connections.open.get() + 1);
    context.shared.load.connection_opened(context.index);
    let guard = ConnectionGuard {
        connections: Rc::clone(connections),
        load: Arc::clone(&context.shared.load),
        index: context.index,
    };
    let context = Rc::clone(context);
    let stop = stop.clone();
    let mut abort = connections.abort.subscribe();
    tokio::task::spawn_local(async move {
        let _guard = guard;
        tokio::select! {
            _ = serve_stream(stream, context, peer, stop) => {}
            _ = abort.wait_for(|aborted| *aborted) => {}
        }
    });
}

/// `serve_connection`, after the TLS handshake when the server has a certificate. A handshake that fails
/// or outlasts the header timeout (a client that connects and says nothing, or speaks plain HTTP) closes
/// the connection and counts it as failed in the metrics. Writes to the socket (TLS records included) fail
/// after `--send-timeout` without progress, which closes the connection (counted as failed too).
async fn serve_stream<X, IO>(
    stream: IO,
    context: Rc<LoopContext<X>>,
    peer: Option<SocketAddr>,
    stop: watch::Receiver<bool>,
) where
    X: Executor,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stream = SendDeadline::new(stream, context.shared.config.limits.send_timeout);
    let Some(tls) = &context.shared.config.tls else {
        return serve_connection(stream, context, peer, stop).await;
    };
    let header_timeout = context.shared.config.limits.header_timeout;
    let mut stopping = stop.clone();
    let handshake = async {
        tokio::select! {
            accepted = tls.accept(stream, header_timeout) => accepted,
            // A stop does not wait a whole header timeout for a handshake: the same grace a plain
            // connection gets for its first request.
            _ = async {
                let _ = stopping.wait_for(|stopped| *stopped).await;
                tokio::time::sleep(FIRST_REQUEST_GRACE).await;
            } => None,
        }
    };
    match handshake.await {
        Some(stream) => serve_connection(stream, context, peer, stop).await,
        None => {
            let mut open = OpenConnection::new(Arc::clone(&context.shared.metrics), context.index);
            open.failed = true;
        }
    }
}

/// Serves one client connection (HTTP/1.1, keep-alive, upgrades) until it closes, or until `stop` turns
/// true: then the request in progress is finished and the connection closed.
///
/// Generic over the byte stream so the whole request path can be driven over an in-memory pipe
/// (`fuzz/`: arbitrary bytes as a client, no sockets).
pub async fn serve_connection<X, IO>(
    io: IO,
    context: Rc<LoopContext<X>>,
    peer: Option<SocketAddr>,
    mut stop: watch::Receiver<bool>,
) where
    X: Executor,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = context.shared.config.limits.header_timeout;
    let mut open = OpenConnection::new(Arc::clone(&context.shared.metrics), context.index);
    let (io, released) = Tracked::new(io);
    let served = Rc::new(Cell::new(false));
    let seen = Rc::clone(&served);
    let service = service_fn(move |request| {
        seen.set(true);
        let context = Rc::clone(&context);
        async move { Ok::<_, Infallible>(handle(request, context, peer).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_HEADER_SIZE)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    // The connection is dropped when this block ends, and with it the socket unless it was upgraded.
    let outcome = async move {
        tokio::pin!(connection);
        tokio::select! {
            outcome = connection.as_mut() => outcome,
            _ = stop.wait_for(|stopped| *stopped) => {
                match first_request_grace(connection.as_mut(), &served).await {
                    Some(outcome) => outcome,
                    None => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                }
            }
        }
    }
    .await;
    open.failed = outcome.is_err();
    // After a 101 hyper's part ends but the socket lives on (a WebSocket, `python/asgi/websocket.rs`): until it
    // closes it still counts against `--max-connections` (the caller's guard) and as open in the metrics.
    let _ = released.await;
}

/// A connection's byte stream that reports when it is dropped: after an upgrade hyper hands it to the
/// upgrade's owner, and the connection is still open until that owner drops it.
struct Tracked<IO> {
    io: IO,
    _released: oneshot::Sender<()>,
}

impl<IO> Tracked<IO> {
    /// The stream, and a receiver that completes (with an error) when the stream is dropped.
    fn new(io: IO) -> (Self, oneshot::Receiver<()>) {
        let (released, receiver) = oneshot::channel();
        (
            Tracked {
                io,
                _released: released,
            },
            receiver,
        )
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tracked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tracked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// How long a connection that has not sent a request yet may take to send one after a stop signal.
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// On a stop, hyper closes a connection with no request in progress at once. A connection accepted just
/// before the stop (a replaced worker's last ones, or a client that connected as the signal came) usually
/// has its first request already on the wire, and closing it would lose that request: the client sees the
/// connection close without an answer. So such a connection is polled until its first request starts (then
/// the graceful shutdown lets it finish), it ends, or `FIRST_REQUEST_GRACE` passes. Returns the outcome if
/// the connection ended meanwhile. Connections that have served a request already are idle keep-alives: they
/// close at once.
async fn first_request_grace<F: std::future::Future>(
    mut connection: Pin<&mut F>,
    served: &Cell<bool>,
) -> Option<F::Output> {
    let deadline = tokio::time::Instant::now() + FIRST_REQUEST_GRACE;
    while !served.get() && tokio::time::Instant::now() < deadline {
        tokio::select! {
            outcome = connection.as_mut() => return Some(outcome),
            _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
        }
    }
    None
}

/// Counts a connection as open in the metrics until dropped (also when the connection is aborted).
struct OpenConnection {
    metrics: Arc<Metrics>,
    index: usize,
    failed: bool,
}

impl OpenConnection {
    fn new(metrics: Arc<Metrics>, index: usize) -> Self {
        metrics.of_loop(index).connection_opened();
        OpenConnection {
            metrics,
            index,
            failed: false,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics
            .of_loop(self.index)
            .connection_closed(self.failed);
    }
}

async fn handle<X: Executor>(
    request: hyper::Request<Incoming>,
    context: Rc<LoopContext<X>>,
    peer: Option<SocketAddr>,
) -> hyper::Response<Body> {
    let mut request = request;
    let upgrade = request
        .headers()
        .contains_key(http::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let started = Instant::now();
    let forwarded = context
        .shared
        .config
        .trusted_proxies
        .as_ref()
        .and_then(|trusted| Forwarded::of(trusted, peer.map(|p| p.ip()), &parts.headers));
    let logged = context.shared.config.access_log.then(|| {
        let client = match forwarded.as_ref().and_then(|f| f.client.as_ref()) {
            Some((host, _)) => host.clone(),
            None => peer.map_or_else(|| "-".to_owned(), |p| p.ip().to_string()),
        };
        (
            client,
            parts.method.clone(),
            parts.uri.clone(),
            parts.version,
        )
    });
    let malformed = head_error(&parts);
    let router = &context.shared.router;
    let lookup = if upgrade.is_some() && crate::exchange::is_handshake(&parts.headers) {
        router.lookup_websocket(&parts.method, parts.uri.path())
    } else {
        router.lookup(&parts.method, parts.uri.path())
    };
    let response = match lookup {
        // Before routing, as h11 does: a 404 must not hide a malformed request.
        _ if malformed.is_some() => bad_request_and_close(malformed.unwrap_or_default()),
        Lookup::NotFound => HttpResponse::text(404, "Not Found"),
        Lookup::MethodNotAllowed { allow } => {
            let mut response = HttpResponse::text(405, "Method Not Allowed");
            if let Ok(value) = http::HeaderValue::from_str(&allow) {
                response.headers.push((http::header::ALLOW, value));
            }
            response
        }
        Lookup::Found { endpoint, params } => match read_body(
            body,
            X::streams_request_body(&context.shared.endpoints[endpoint]),
            &context.shared.config.limits,
        )
        .await
        {
            Err(BodyError::TooLarge) => HttpResponse::text(413, "Payload Too Large"),
            Err(BodyError::Unreadable) => HttpResponse::text(400, "Bad Request: unreadable body"),
            Err(BodyError::TimedOut) => HttpResponse::request_timeout(),
            Ok(body) => {
                let request = HttpRequest {
                    method: parts.method,
                    uri: parts.uri,
                    version: parts.version,
                    headers: parts.headers,
                    body,
                    params,
                    client: peer,
                    server: context.local_addr.clone(),
                    secure: context.shared.config.tls.is_some(),
                    forwarded,
                    client_gone: Default::default(),
                    upgrade,
                    in_flight: None,
                };
                context.dispatch(endpoint, request).await
            }
        },
    };
    let elapsed = started.elapsed();
    context
        .shared
        .metrics
        .of_loop(context.index)
        .observe(response.status.as_u16(), elapsed);
    if let Some((client, method, uri, version)) = logged {
        let length = match &response.body {
            ResponseBody::Full(bytes) => Some(bytes.len()),
            ResponseBody::Stream(..) => None,
        };
        access_log::record(
            client,
            &method,
            &uri,
            version,
            response.status.as_u16(),
            length,
            elapsed,
        );
    }
    into_hyper(response)
}

/// What hyper accepts but a request must not have, so that percore reads the same requests in the same
/// bytes as other parsers (h11, the proxy in front): smuggling and cache poisoning live where two parsers
/// disagree (tests/test_http_parsing.py holds percore against h11).
///
/// - Host (RFC 9112 §3.2): an HTTP/1.1 request without one, or any request with more than one, must get
///   400. HTTP/1.0 predates Host and may omit it. Which of two hosts is meant is not guessed.
/// - Transfer-Encoding: only a single `chunked` is supported, as by h11 and nginx. hyper would take the
///   body of `gzip, chunked` as plain bytes, and decode `chunked` sent twice (two lines, or a list) once.
/// - The request-target (RFC 9112 §3.2) is a path (`/...`), an absolute URI or `*`. hyper also takes an
///   authority (`host:80`, for CONNECT, which percore does not proxy) or a bare `;x`, and then reports an
///   empty path: the app would route a request other parsers see with a different target.
fn head_error(head: &http::request::Parts) -> Option<&'static str> {
    let mut hosts = head.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Some("Bad Request: more than one Host header"),
        (None, None) if head.version == http::Version::HTTP_11 => {
            return Some("Bad Request: missing Host header")
        }
        _ => {}
    }
    let path = head.uri.path();
    if !path.starts_with('/') && path != "*" {
        return Some("Bad Request: the request target is not a path or an absolute URI");
    }
    let mut codings = head.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => None,
        (Some(coding), None) if coding.as_bytes().eq_ignore_ascii_case(b"chunked") => None,
        _ => Some("Bad Request: unsupported Transfer-Encoding (only chunked, once)"),
    }
}

/// A 400 after which the connection closes: the request was malformed, so nothing after it on the
/// connection can be trusted to be framed as the client meant.
fn bad_request_and_close(reason: &'static str) -> HttpResponse {
    let mut response = HttpResponse::text(400, reason);
    response.headers.push((
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    ));
    response
}

/// Reads the body before dispatch, unless the endpoint streams it: then only bodies that declare a
/// small length are read first (so most requests still arrive complete) and anything larger or chunked
/// is handed over still arriving.
///
/// A body larger than `--max-body-size` is refused: at once when its declared length says so (nothing is
/// read), otherwise as soon as the bytes read pass the limit. (A body the endpoint streams — ASGI — is
/// counted as the app reads it: `python/asgi.rs`.) Either way the body is read under `--body-timeout`.
async fn read_body(
    body: Incoming,
    streams: bool,
    limits: &Limits,
) -> Result<RequestBody, BodyError> {
    let max_size = limits.max_body_size;
    if body.size_hint().lower() > max_size {
        return Err(BodyError::TooLarge);
    }
    let body = TimedBody::new(body, limits.body_timeout);
    let read_whole = |body: TimedBody| async move {
        match http_body_util::Limited::new(body, max_size as usize)
            .collect()
            .await
        {
            Ok(collected) => Ok(RequestBody::Full(collected.to_bytes())),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
            Err(err) if matches!(err.downcast_ref(), Some(BodyReadError::TimedOut)) => {
                Err(BodyError::TimedOut)
            }
            Err(_) => Err(BodyError::Unreadable),
        }
    };
    if !streams {
        return read_whole(body).await;
    }
    match body.size_hint().exact() {
        Some(0) => Ok(RequestBody::Full(Bytes::new())),
        Some(length) if length <= EAGER_BODY_LIMIT => read_whole(body).await,
        _ => Ok(RequestBody::Streaming(body)),
    }
}

enum BodyError {
    TooLarge,
    Unreadable,
    TimedOut,
}

/// The response body hyper writes: complete, or chunks as the executor produces them.
pub enum Body {
    Full(Option<Bytes>),
    Stream {
        chunks: BodyChunks,
        ended: bool,
        /// Set on drop before the end: hyper drops a body whose client has gone.
        abandoned: Arc<Latch>,
    },
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Body::Stream {
            ended: false,
            abandoned,
            ..
        } = self
        {
            abandoned.set();
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = StreamAborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream { chunks, ended, .. } => {
                let polled = chunks.poll_recv(cx);
                // The end (or an abort, after which hyper closes the connection) is not abandonment.
                if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    *ended = true;
                }
                polled.map(|chunk| chunk.map(|c| c.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream { .. } => SizeHint::default(),
        }
    }
}

fn into_hyper(response: HttpResponse) -> hyper::Response<Body> {
    let body = match response.body {
        ResponseBody::Full(bytes) => Body::Full(Some(bytes)),
        ResponseBody::Stream(chunks, abandoned) => Body::Stream {
            chunks,
            ended: false,
            abandoned,
        },
    };
    let mut out = hyper::Response::new(body);
    *out.status_mut() = response.status;
    let headers = out.headers_mut();
    for (name, value) in response.headers {
        headers.append(name, value);
    }
    out
}
