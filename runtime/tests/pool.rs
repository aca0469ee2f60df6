//! The loop pool over real sockets with a plain-Rust executor: pinning, routing policies, 404/405,
//! hand-off and shutdown, without Python.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use _runtime::config::RoutingPolicy;
use _runtime::config::{available_cores, Config, LoopCount};
use _runtime::exchange::{HttpRequest, HttpResponse};
use _runtime::executor::{
    Executor, ExecutorError, ExecutorErrorKind, ExecutorFactory, LocalBoxFuture,
};
use _runtime::listener::{LocalAddress, SocketSource};
use _runtime::pool::{self, LoopStartError, PoolError};
use _runtime::router::Router;

/// Endpoints: 0 = report where it ran, 1 = report after a 400 ms sleep, 2 = block the loop's thread (nothing
/// else runs on that loop, not even accepting) until `UNBLOCK`, after saying which loop in `BLOCKED_LOOP`.
static BLOCKED_LOOP: AtomicUsize = AtomicUsize::new(0);
static UNBLOCK: AtomicBool = AtomicBool::new(false);

struct Where {
    index: usize,
}

impl Executor for Where {
    type Endpoint = usize;

    fn call(&self, endpoint: &usize, request: HttpRequest) -> LocalBoxFuture<HttpResponse> {
        let index = self.index;
        let slow = *endpoint == 1;
        if *endpoint == 2 {
            BLOCKED_LOOP.store(index + 1, Ordering::SeqCst);
            while !UNBLOCK.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let params: Vec<String> = request
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        // Counted against the loop until the response is ready, as the `Executor` contract asks.
        let in_flight = request.in_flight;
        Box::pin(async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            let cpu = unsafe { libc::sched_getcpu() };
            let body = format!("loop={index} cpu={cpu} {}", params.join(","));
            drop(in_flight);
            HttpResponse::new(200, "text/plain", body)
        })
    }

    fn drive(self: Rc<Self>) -> LocalBoxFuture<()> {
        Box::pin(std::future::pending())
    }

    fn close(&self) {}
}

struct WhereFactory;

impl ExecutorFactory for WhereFactory {
    type Endpoint = usize;
    type Executor = Where;

    fn create(&self, loop_index: usize) -> Result<Where, ExecutorError> {
        Ok(Where { index: loop_index })
    }
}

fn start(loops: usize, routing: RoutingPolicy) -> pool::RunningPool {
    start_on(None, loops, routing)
}

fn start_on(
    socket: Option<SocketSource>,
    loops: usize,
    routing: RoutingPolicy,
) -> pool::RunningPool {
    let mut config = Config::new("127.0.0.1", 0, LoopCount::Fixed(loops), routing).unwrap();
    config.socket = socket;
    let mut router = Router::new();
    router
        .insert(http::Method::GET, "/where/{name}", 0)
        .unwrap();
    router.insert(http::Method::GET, "/slow", 1).unwrap();
    router.insert(http::Method::GET, "/block", 2).unwrap();
    pool::start(config, router, vec![0, 1, 2], Arc::new(WhereFactory)).unwrap()
}

fn get(stream: &mut (impl Read + Write), path: &str) -> (u16, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    read_response(stream)
}

fn read_response(stream: &mut impl Read) -> (u16, String) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed early");
        buffer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buffer).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                let status = head[9..12].parse().unwrap();
                return (status, text[end + 4..end + 4 + length].to_string());
            }
        }
    }
}

fn connect(address: &LocalAddress) -> TcpStream {
    let LocalAddress::Tcp(address) = address else {
        panic!("not a TCP address: {address:?}")
    };
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

#[test]
fn a_unix_socket_is_served_by_every_loop_and_removed_at_shutdown() {
    let dir = std::env::temp_dir().join(format!("percore-pool-uds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.sock");
    let pool = start_on(
        Some(SocketSource::UnixPath(path.clone())),
        2,
        RoutingPolicy::Local,
    );
    assert_eq!(
        pool.local_addr,
        LocalAddress::Unix(path.display().to_string().into())
    );
    let connect_unix = || {
        let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    };
    let (status, body) = get(&mut connect_unix(), "/where/unix");
    assert_eq!((status, body.ends_with("name=unix")), (200, true), "{body}");
    // Every loop accepts on the one socket: with one loop blocked in a handler, the other accepts the
    // next connection (with Local routing, the loop that answers is the loop that accepted).
    let mut blocked = connect_unix();
    write!(blocked, "GET /block HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while BLOCKED_LOOP.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "/block never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    let blocked_loop = BLOCKED_LOOP.load(Ordering::SeqCst) - 1;
    let (status, body) = get(&mut connect_unix(), "/where/unix");
    UNBLOCK.store(true, Ordering::SeqCst);
    assert_eq!(status, 200);
    assert!(
        body.starts_with(&format!("loop={} ", 1 - blocked_loop)),
        "{body}"
    );
    assert_eq!(read_response(&mut blocked).0, 200);
    pool.stop();
    pool.join();
    assert!(!path.exists(), "the socket file outlived the server");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn loops_are_pinned_and_round_robin_reaches_every_loop() {
    let pool = start(2, RoutingPolicy::RoundRobin);
    let cores = available_cores();
    let mut stream = connect(&pool.local_addr);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (status, body) = get(&mut stream, "/where/x");
        assert_eq!(status, 200);
        let loop_index: usize = body.split_whitespace().next().unwrap()[5..]
            .parse()
            .unwrap();
        let cpu: usize = body.split_whitespace().nth(1).unwrap()[4..]
            .parse()
            .unwrap();
        assert_eq!(
            cpu,
            cores[loop_index % cores.len()],
            "loop {loop_index} ran on cpu {cpu}"
        );
        assert!(body.ends_with("name=x"));
        seen.insert(loop_index);
    }
    assert_eq!(seen.len(), 2);
    pool.stop();
    pool.join();
}

#[test]
fn local_policy_keeps_a_connection_on_its_loop() {
    let pool = start(2, RoutingPolicy::Local);
    let mut stream = connect(&pool.local_addr);
    let first = get(&mut stream, "/where/a").1;
    let loop_of = |body: &str| body.split_whitespace().next().unwrap().to_string();
    for _ in 0..5 {
        assert_eq!(loop_of(&get(&mut stream, "/where/a").1), loop_of(&first));
    }
    pool.stop();
    pool.join();
}

#[test]
fn least_loaded_steers_new_requests_away_from_a_busy_loop() {
    let pool = start(2, RoutingPolicy::LeastLoaded);
    let mut slow = connect(&pool.local_addr);
    write!(slow, "GET /slow HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // Whichever loop reads these, the one busy with /slow has one in flight and the other none.
    let mut fast = connect(&pool.local_addr);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(
            get(&mut fast, "/where/b")
                .1
                .split_whitespace()
                .next()
                .unwrap()
                .to_string(),
        );
    }
    let (status, slow_body) = read_response(&mut slow);
    assert_eq!(status, 200);
    let slow_loop = slow_body.split_whitespace().next().unwrap().to_string();
    assert_eq!(seen.len(), 1);
    assert!(
        !seen.contains(&slow_loop),
        "fast requests went to the busy loop {slow_loop}"
    );
    pool.stop();
    pool.join();
}

#[test]
fn unknown_path_and_wrong_method_are_answered_by_the_router() {
    let pool = start(1, RoutingPolicy::Local);
    let mut stream = connect(&pool.local_addr);
    assert_eq!(get(&mut stream, "/nope").0, 404);
    write!(
        stream,
        "POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_response(&mut stream).0, 405);
    pool.stop();
    pool.join();
}

#[test]
fn stop_finishes_in_flight_requests_and_joins_quickly() {
    let pool = start(2, RoutingPolicy::RoundRobin);
    let mut slow = connect(&pool.local_addr);
    write!(slow, "GET /slow HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    pool.stop();
    let (status, _) = read_response(&mut slow);
    assert_eq!(
        status, 200,
        "the in-flight request is answered, not dropped"
    );
    pool.join();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_finish_signal_wakes_a_waiter_once_every_loop_has_ended() {
    let pool = start(2, RoutingPolicy::RoundRobin);
    let finished = pool.finish_signal();
    assert!(
        !finished.wait(Duration::from_millis(50)),
        "the loops are still serving"
    );
    // No deadline: only the loops' wake-up can end this wait (the test gives up after 30 s).
    let (woken, wake) = std::sync::mpsc::channel();
    std::thread::spawn(move || woken.send(finished.wait(Duration::MAX)));
    pool.stop();
    assert_eq!(
        wake.recv_timeout(Duration::from_secs(30)),
        Ok(true),
        "the waiter is woken once both loops have ended"
    );
    pool.join();
}

#[test]
fn a_busy_port_is_reported() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let config = Config::new("127.0.0.1", port, LoopCount::Fixed(1), RoutingPolicy::Local).unwrap();
    let err = pool::start(config, Router::new(), vec![], Arc::new(WhereFactory))
        .err()
        .unwrap();
    assert!(err.to_string().contains("already in use"), "{err}");
}

/// Refuses to create the executor of loop 1: the pool reports which loop, which step and why, the
/// cause kept as a typed error.
struct FailingFactory;

#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no executor for you")
    }
}

impl std::error::Error for Refused {}

impl ExecutorFactory for FailingFactory {
    type Endpoint = usize;
    type Executor = Where;

    fn create(&self, loop_index: usize) -> Result<Where, ExecutorError> {
        match loop_index {
            1 => Err(ExecutorError::new(ExecutorErrorKind::Create, Refused)),
            _ => Ok(Where { index: loop_index }),
        }
    }
}

#[test]
fn a_loop_that_cannot_start_is_reported_with_its_typed_cause() {
    let config = Config::new("127.0.0.1", 0, LoopCount::Fixed(2), RoutingPolicy::Local).unwrap();
    let err = pool::start(config, Router::new(), vec![], Arc::new(FailingFactory))
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "loop 1 failed to start: no executor for you"
    );
    let PoolError::LoopStart {
        index: 1,
        cause: LoopStartError::Executor(cause),
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(cause.kind(), ExecutorErrorKind::Create);
    assert!(cause.cause().is::<Refused>());
}
