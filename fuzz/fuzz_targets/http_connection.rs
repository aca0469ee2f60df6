//! The whole request path (`server::serve_connection`: hyper's HTTP/1.1 parser, our routing, body reading
//! and limits, response writing) fed arbitrary bytes as one client connection, over an in-memory pipe.
//!
//! Asserts, for every input: no panic; the connection ends (a paused clock makes every timeout fire at
//! once, so a hang is a deterministic failure, not a slow run); everything written back is a sequence of
//! well-formed HTTP/1.x responses with nothing after them; and no status is a 5xx (the test executor
//! only ever answers 200, so a 5xx could only come from the server itself).
#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use _runtime::config::{Config, LoopCount};
use _runtime::pool::{
    Executor, HttpRequest, HttpResponse, Latch, LocalBoxFuture, LoopContext, RequestBody,
    ResponseBody, Shared,
};
use _runtime::listener::LocalAddress;
use _runtime::query::{parse_cookies, parse_query};
use _runtime::router::Router;
use _runtime::routing::{Chooser, RoutingPolicy};
use _runtime::server::serve_connection;
use bytes::Bytes;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const MAX_BODY_SIZE: u64 = 4096;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the client waits after its last byte before half-closing (virtual time).
const CLIENT_LINGER: Duration = Duration::from_secs(30);
/// Longer than anything the server may legitimately wait for: past this the connection hangs.
const HANG: Duration = Duration::from_secs(300);

enum Endpoint {
    /// A fixed JSON body.
    Json,
    /// The request body read whole by the server, echoed.
    Echo,
    /// Reads the body itself as it arrives, answers with a streamed (chunked) body.
    Stream,
    /// Path captures, query and cookies, decoded.
    Params,
}

struct TestExecutor;

impl Executor for TestExecutor {
    type Endpoint = Endpoint;

    fn streams_request_body(endpoint: &Endpoint) -> bool {
        matches!(endpoint, Endpoint::Stream)
    }

    fn call(&self, endpoint: &Endpoint, request: HttpRequest) -> LocalBoxFuture<HttpResponse> {
        match endpoint {
            Endpoint::Json => Box::pin(std::future::ready(HttpResponse::new(
                200,
                "application/json",
                "{\"ok\":true}",
            ))),
            Endpoint::Echo => {
                let body = Bytes::copy_from_slice(request.body.full());
                Box::pin(std::future::ready(HttpResponse::new(
                    200,
                    "application/octet-stream",
                    body,
                )))
            }
            Endpoint::Params => {
                let query = parse_query(request.uri.query().unwrap_or(""));
                let cookies = parse_cookies(
                    request
                        .headers
                        .get_all(http::header::COOKIE)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                let text = format!("{:?} {:?} {:?}", request.params, query, cookies);
                Box::pin(std::future::ready(HttpResponse::new(
                    200,
                    "text/plain",
                    text,
                )))
            }
            Endpoint::Stream => Box::pin(async move {
                let mut read = 0usize;
                match request.body {
                    RequestBody::Full(bytes) => read = bytes.len(),
                    RequestBody::Streaming(mut body) => {
                        while let Some(frame) = body.frame().await {
                            match frame {
                                Ok(frame) => {
                                    read += frame.data_ref().map_or(0, |d| d.len());
                                }
                                // A broken body: the handler gives up, as an app would.
                                Err(_) => return HttpResponse::text(400, "bad body"),
                            }
                        }
                    }
                }
                let (chunks, receiver) = tokio::sync::mpsc::channel(4);
                let _ = chunks.try_send(Ok(Bytes::from(format!("read {read} bytes"))));
                let _ = chunks.try_send(Ok(Bytes::from_static(b"; done")));
                HttpResponse {
                    status: http::StatusCode::OK,
                    headers: vec![],
                    body: ResponseBody::Stream(receiver, Arc::new(Latch::default())),
                }
            }),
        }
    }

    fn drive(self: Rc<Self>) -> LocalBoxFuture<()> {
        Box::pin(std::future::pending())
    }

    fn close(&self) {}
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
    context: Rc<LoopContext<TestExecutor>>,
    stop: watch::Receiver<bool>,
    _stop_sender: watch::Sender<bool>,
    _jobs: async_channel::Receiver<_runtime::pool::Job>,
}

fn harness() -> Harness {
    let mut router = Router::new();
    let routes = [
        ("GET", "/json", 0),
        ("POST", "/echo", 1),
        ("PUT", "/echo", 1),
        ("POST", "/stream", 2),
        ("GET", "/users/{id}", 3),
        ("GET", "/files/{*rest}", 3),
    ];
    for (method, path, endpoint) in routes {
        router
            .insert(method.parse().unwrap(), path, endpoint)
            .unwrap();
    }
    let endpoints = vec![
        Endpoint::Json,
        Endpoint::Echo,
        Endpoint::Stream,
        Endpoint::Params,
    ];
    let mut config =
        Config::new("127.0.0.1", 0, LoopCount::Fixed(1), RoutingPolicy::Local).unwrap();
    config.limits.max_body_size = MAX_BODY_SIZE;
    config.limits.header_timeout = HEADER_TIMEOUT;
    let (jobs, jobs_receiver) = async_channel::bounded(1);
    let shared = Arc::new(Shared::new(router, endpoints, config, vec![jobs]));
    let context = Rc::new(LoopContext {
        index: 0,
        executor: Rc::new(TestExecutor),
        chooser: Chooser::new(RoutingPolicy::Local, 0, Arc::clone(&shared.load)),
        shared,
        local_addr: LocalAddress::Tcp(SocketAddr::from(([127, 0, 0, 1], 8000))),
    });
    let (stop_sender, stop) = watch::channel(false);
    Harness {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap(),
        local: tokio::task::LocalSet::new(),
        context,
        stop,
        _stop_sender: stop_sender,
        _jobs: jobs_receiver,
    }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

/// Sends `data` as a client would (then lingers, then half-closes) and returns every byte the server
/// wrote before closing. `pipe` is the in-memory pipe's buffer: small ones split reads at odd places.
fn exchange(data: &[u8], pipe: usize) -> Vec<u8> {
    HARNESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let h = slot.get_or_insert_with(harness);
        let (client, server) = tokio::io::duplex(pipe);
        let serve = serve_connection(
            server,
            Rc::clone(&h.context),
            Some(SocketAddr::from(([127, 0, 0, 1], 40000))),
            h.stop.clone(),
        );
        let client = async move {
            let (mut reader, mut writer) = tokio::io::split(client);
            let write = async {
                let _ = writer.write_all(data).await;
                tokio::time::sleep(CLIENT_LINGER).await;
                let _ = writer.shutdown().await;
            };
            let read = async {
                let mut out = Vec::new();
                let _ = reader.read_to_end(&mut out).await;
                out
            };
            tokio::join!(write, read).1
        };
        h.local.block_on(&h.runtime, async {
            let exchange = async { tokio::join!(serve, client).1 };
            match tokio::time::timeout(HANG, exchange).await {
                Ok(out) => out,
                Err(_) => panic!("the connection did not end within {HANG:?} of virtual time"),
            }
        })
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks `out` is a sequence of complete responses; returns their statuses. A response to a HEAD
/// request carries no body although it may declare a length: with `heads` (the input has a HEAD), a
/// response directly followed by another is taken as bodiless. With `cut_tail_ok` the last response may
/// be cut short (see `hyper_may_cut_or_splice`).
fn check_responses(out: &[u8], heads: bool, cut_tail_ok: bool) -> Result<Vec<u16>, String> {
    let mut statuses = Vec::new();
    let mut rest = out;
    macro_rules! truncated {
        ($($why:tt)*) => {{
            if cut_tail_ok {
                break;
            }
            return Err(format!($($why)*));
        }};
    }
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if cut_tail_ok => break,
            other => {
                return Err(format!(
                    "not an HTTP response ({other:?}): {:?}",
                    String::from_utf8_lossy(&rest[..rest.len().min(200)])
                ))
            }
        };
        let status = response.code.unwrap();
        statuses.push(status);
        let header = |name: &str| {
            response
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                .collect::<Vec<_>>()
        };
        let lengths = header("content-length");
        let chunked = header("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        if lengths.len() > 1 || (chunked && !lengths.is_empty()) {
            return Err(format!("ambiguous framing: {lengths:?}, chunked {chunked}"));
        }
        rest = &rest[head_len..];
        if (100..200).contains(&status) || status == 204 || status == 304 {
            continue;
        }
        if heads && (rest.is_empty() || rest.starts_with(b"HTTP/1.")) {
            continue;
        }
        if chunked {
            loop {
                let Some(line_end) = find(rest, b"\r\n") else {
                    truncated!("truncated chunk size")
                };
                let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
                let Ok(size) =
                    usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                else {
                    return Err(format!("bad chunk size {size_text:?}"));
                };
                rest = &rest[line_end + 2..];
                if size == 0 {
                    let Some(end) = find(rest, b"\r\n") else {
                        truncated!("no chunked trailer end")
                    };
                    if end != 0 {
                        return Err(format!(
                            "trailers in a response: {:?}",
                            String::from_utf8_lossy(rest)
                        ));
                    }
                    rest = &rest[2..];
                    break;
                }
                if rest.len() < size + 2 {
                    truncated!("truncated chunk");
                }
                if &rest[size..size + 2] != b"\r\n" {
                    return Err("chunk not followed by CRLF".into());
                }
                rest = &rest[size + 2..];
            }
        } else if let Some(length) = lengths.first() {
            let Ok(length) = length.parse::<usize>() else {
                return Err(format!("bad content-length {length:?}"));
            };
            if rest.len() < length {
                truncated!("body shorter than its content-length");
            }
            rest = &rest[length..];
        } else {
            // Delimited by the close: must be the last thing on the connection.
            rest = &[];
        }
    }
    Ok(statuses)
}

/// Known hyper 1.12 behaviour, not ours. When a response is still waiting in hyper's write buffer (the
/// client reads slower than the server writes: the small pipes) and the next request on the connection is
/// malformed, hyper's parse-error path
/// - writes its error response head (`400`, `connection: close`, no body) straight into the buffer,
///   ahead of the previous response's still-queued body (`without_spliced_error_head`; a debug build of
///   hyper trips `debug_assert!(self.can_write_head())` in `Conn::encode_head` here), or
/// - closes the connection with the previous response half written.
///
/// The same cut happens after a request with an `Upgrade` header answered without 101: hyper keeps the
/// pending upgrade, and the early close hands the socket to it, dropping the unwritten bytes. Requests
/// with `Expect: 100-continue` whose body the handler did not read make the "malformed next request"
/// likely: hyper parses that unread body as the next request.
fn hyper_may_cut_or_splice(data: &[u8], pipe: usize) -> bool {
    let lower = data.to_ascii_lowercase();
    pipe < 4096
        || lower.windows(8).any(|w| w == b"upgrade:")
        || lower.windows(7).any(|w| w == b"expect:")
}

/// `out` with a hyper error head that was spliced into the middle of an earlier response removed.
fn without_spliced_error_head(out: &[u8]) -> Option<Vec<u8>> {
    let marker = b"\r\nconnection: close\r\ncontent-length: 0\r\ndate: ";
    let at = find(out, marker)?;
    let start = out[..at].windows(9).rposition(|w| w == b"HTTP/1.1 ")?;
    let end = at + find(&out[at..], b"\r\n\r\n")? + 4;
    if start == 0 {
        return None;
    }
    Some([&out[..start], &out[end..]].concat())
}

fuzz_target!(|data: &[u8]| {
    let pipe = [64 * 1024, 4096, 61, 7][data.len() % 4];
    let out = exchange(data, pipe);
    // `PERCORE_FUZZ_SHOW=1 …/http_connection corpus/http_connection/*` prints each exchange.
    static SHOW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *SHOW.get_or_init(|| std::env::var_os("PERCORE_FUZZ_SHOW").is_some()) {
        eprintln!(
            "---- pipe {pipe}\n{:?}\n=>\n{:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&out)
        );
    }
    let heads = find(data, b"HEAD").is_some();
    // Everything is checked strictly, except what `hyper_may_cut_or_splice` explains.
    let quirks = hyper_may_cut_or_splice(data, pipe);
    let statuses = check_responses(&out, heads, quirks)
        .or_else(
            |err| match without_spliced_error_head(&out).filter(|_| quirks) {
                Some(fixed) => check_responses(&fixed, heads, quirks),
                None => Err(err),
            },
        )
        .unwrap_or_else(|err| {
            panic!(
                "{err}\ninput: {:?}\noutput: {:?}",
                String::from_utf8_lossy(data),
                String::from_utf8_lossy(&out)
            )
        });
    for status in statuses {
        // An HTTP/2 preface is closed without a response, other versions get 400: nothing here is a 5xx.
        assert!(
            status < 500,
            "status {status} for input {:?}",
            String::from_utf8_lossy(&data[..data.len().min(300)])
        );
    }
});
