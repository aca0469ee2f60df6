//! The loop pool: one OS thread per loop, pinned to its core, each owning a tokio current-thread runtime,
//! its HTTP acceptor and an `Executor` (for Python apps: an asyncio event loop) that runs handlers.
//!
//! Invariants:
//! - An executor is created, used and closed on its own thread; it never moves (`Rc`, not `Arc`).
//! - A request handed to another loop travels as a `Job` over that loop's channel and its response comes
//!   back over a oneshot to the connection's own thread; the sender never blocks a thread, it awaits.
//! - Shutdown is two-phase: every loop stops accepting and drains its connections, but keeps running
//!   jobs from other loops until *all* loops have drained, so no accepted request is lost to a hand-off.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{oneshot, watch, Notify};

use crate::config::Config;
use crate::listener::{self, Listener, LocalAddress, SocketFile};
use crate::metrics::{self, ExtraMetrics, Gauges, Metrics};
use crate::router::{EndpointId, Router};
use crate::routing::{Chooser, InFlight, LoadTable};
use crate::server::{self, AsyncListener};

pub type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// How long cancelled request work may take to unwind at shutdown before the loop shuts down anyway.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A request's body: already read (small bodies are collected before dispatch), or still arriving (under
/// `--body-timeout`).
pub enum RequestBody {
    Full(Bytes),
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

    pub fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Sets the request's `client_gone` latch if dropped before `delivered`: hyper dropped the request's
/// future because the client went away.
struct DisconnectGuard {
    client_gone: Arc<Latch>,
    delivered: bool,
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if !self.delivered {
            self.client_gone.set();
        }
    }
}

/// A request as the executor sees it: routed, and `Send` so it can be handed to another loop.
pub struct HttpRequest {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: RequestBody,
    pub params: Vec<(String, String)>,
    /// The peer: the client, or the proxy in front of it (then see `forwarded`); None on a Unix socket.
    pub client: Option<SocketAddr>,
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

/// Chunks of a streamed response body. The executor keeps the sender: dropping it ends the body, an
/// `Err` aborts the connection (the client must not mistake a failed stream for a complete one).
pub type BodyChunks = tokio::sync::mpsc::Receiver<Result<Bytes, StreamAborted>>;

#[derive(Debug)]
pub struct StreamAborted(pub String);

impl fmt::Display for StreamAborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "response stream aborted: {}", self.0)
    }
}

impl std::error::Error for StreamAborted {}

pub enum ResponseBody {
    Full(Bytes),
    /// Chunks as they are produced. The latch is set if the body is dropped before its end — the
    /// client went away mid-stream — so the producer can stop.
    Stream(BodyChunks, Arc<Latch>),
}

/// A response: status and headers, and a body that is either complete or streamed.
pub struct HttpResponse {
    pub status: http::StatusCode,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: ResponseBody,
}

impl HttpResponse {
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

    pub fn text(status: u16, body: &'static str) -> Self {
        Self::new(
            status,
            "text/plain; charset=utf-8",
            Bytes::from_static(body.as_bytes()),
        )
    }

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

/// Runs endpoints on one loop thread. Created on that thread by its `ExecutorFactory`.
pub trait Executor: 'static {
    type Endpoint: Send + Sync + 'static;

    /// Whether `endpoint` reads the request body as it arrives; if not, the server reads it whole first.
    fn streams_request_body(_endpoint: &Self::Endpoint) -> bool {
        false
    }

    /// Runs `endpoint` for `request`. The returned future resolves on this thread. `request.in_flight`
    /// is to be kept until the future resolves, or longer while work for the request still runs.
    fn call(&self, endpoint: &Self::Endpoint, request: HttpRequest)
        -> LocalBoxFuture<HttpResponse>;

    /// Background work the executor needs for its whole life (for Python: driving the asyncio loop).
    /// Dropped (cancelled) when the loop stops.
    fn drive(self: Rc<Self>) -> LocalBoxFuture<()>;

    /// Runs once before the loop accepts connections, with `drive` already running (for ASGI apps:
    /// lifespan startup). An error stops the server before it serves anything.
    fn startup(self: Rc<Self>) -> LocalBoxFuture<Result<(), String>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Runs once after the loop's connections have drained, with `drive` still running.
    fn shutdown(self: Rc<Self>) -> LocalBoxFuture<()> {
        Box::pin(std::future::ready(()))
    }

    /// The loop stopped accepting: long-lived exchanges that no graceful HTTP shutdown reaches
    /// (WebSockets) are asked to close now, so they finish within the shutdown timeout.
    fn begin_shutdown(&self) {}

    /// Resolves once no request work runs on this loop: handlers (those it runs on other threads too),
    /// ASGI apps (including work they do after their response), WebSockets.
    fn idle(self: Rc<Self>) -> LocalBoxFuture<()> {
        Box::pin(std::future::ready(()))
    }

    /// Cancels all request work still running (the shutdown timeout expired); returns how much.
    fn cancel_running(&self) -> usize {
        0
    }

    /// Releases the executor's resources, on its own thread, after all requests have finished.
    fn close(&self);
}

pub trait ExecutorFactory: Send + Sync + 'static {
    type Endpoint: Send + Sync + 'static;
    type Executor: Executor<Endpoint = Self::Endpoint>;

    /// Wraps the whole life of a loop thread (for Python: attach the thread to the interpreter once).
    fn run_thread(&self, body: &mut (dyn FnMut() + Send)) {
        body()
    }

    /// Creates the loop's executor on the loop thread, inside its tokio runtime.
    fn create(&self, loop_index: usize) -> Result<Self::Executor, String>;

    /// Process-level lines to append to every metrics scrape (for Python: whether the GIL is on).
    fn extra_metrics(&self) -> Option<ExtraMetrics> {
        None
    }
}

/// A request handed from the loop that read it to the loop that runs it (its `in_flight` guard with it).
pub struct Job {
    pub endpoint: EndpointId,
    pub request: HttpRequest,
    pub reply: oneshot::Sender<HttpResponse>,
}

/// What every loop shares: the routes, the endpoint table, the load counters and the job channels.
pub struct Shared<E> {
    pub router: Router,
    pub endpoints: Vec<E>,
    pub load: Arc<LoadTable>,
    pub jobs: Vec<async_channel::Sender<Job>>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// Loops that have not yet drained their own connections during shutdown.
    draining: AtomicUsize,
    all_drained: watch::Sender<bool>,
}

impl<E> Shared<E> {
    /// The state the loops share; `jobs` holds one channel per loop (its length is the loop count).
    pub fn new(
        router: Router,
        endpoints: Vec<E>,
        config: Config,
        jobs: Vec<async_channel::Sender<Job>>,
    ) -> Self {
        let loops = jobs.len();
        Shared {
            router,
            endpoints,
            load: LoadTable::new(loops),
            jobs,
            config,
            metrics: Metrics::new(loops),
            draining: AtomicUsize::new(loops),
            all_drained: watch::channel(false).0,
        }
    }
}

/// What one loop thread owns.
pub struct LoopContext<X: Executor> {
    pub index: usize,
    pub executor: Rc<X>,
    pub shared: Arc<Shared<X::Endpoint>>,
    pub chooser: Chooser,
    pub local_addr: LocalAddress,
}

impl<X: Executor> LoopContext<X> {
    /// Runs a routed request on the loop the policy picks and returns its response on this thread.
    pub async fn dispatch(&self, endpoint: EndpointId, request: HttpRequest) -> HttpResponse {
        let mut guard = DisconnectGuard {
            client_gone: Arc::clone(&request.client_gone),
            delivered: false,
        };
        let response = self.run_somewhere(endpoint, request).await;
        guard.delivered = true;
        response
    }

    async fn run_somewhere(&self, endpoint: EndpointId, mut request: HttpRequest) -> HttpResponse {
        let target = if request.upgrade.is_some() {
            self.index
        } else {
            self.chooser.choose()
        };
        // Backpressure: a loop already this busy takes no more; the client is told when to retry
        // instead of queueing without bound.
        if self.shared.load.in_flight(target) >= self.shared.config.limits.max_in_flight_per_loop {
            let mut response =
                HttpResponse::text(503, "Service Unavailable: the server is overloaded");
            response.headers.push((
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            ));
            return response;
        }
        request.in_flight = Some(self.shared.load.track(target));
        if target == self.index {
            let call = {
                let _busy = self.shared.load.busy(self.index);
                self.executor
                    .call(&self.shared.endpoints[endpoint], request)
            };
            return call.await;
        }
        let (reply, response) = oneshot::channel();
        let job = Job {
            endpoint,
            request,
            reply,
        };
        if self.shared.jobs[target].send(job).await.is_err() {
            return HttpResponse::text(503, "Service Unavailable");
        }
        response
            .await
            .unwrap_or_else(|_| HttpResponse::internal_error())
    }
}

#[derive(Debug)]
pub enum PoolError {
    Bind(String),
    Spawn(String),
    LoopStart { index: usize, message: String },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Bind(message) => f.write_str(message),
            PoolError::Spawn(message) => write!(f, "could not start a loop thread: {message}"),
            PoolError::LoopStart { index, message } => {
                write!(f, "loop {index} failed to start: {message}")
            }
        }
    }
}

impl std::error::Error for PoolError {}

/// A started pool. `stop` asks every loop to shut down; `join` waits for them.
pub struct RunningPool {
    threads: Vec<JoinHandle<()>>,
    metrics_thread: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    pub local_addr: LocalAddress,
    /// Where `GET /metrics` is served, when `Config::metrics_port` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The `--uds` socket file, removed once every loop has stopped accepting on it.
    socket_file: Option<SocketFile>,
    metrics: Arc<Metrics>,
}

impl RunningPool {
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Responses every loop has sent so far.
    pub fn responses(&self) -> u64 {
        self.metrics.responses()
    }

    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    pub fn join(self) {
        self.stop.send_replace(true);
        for thread in self.threads.into_iter().chain(self.metrics_thread) {
            let _ = thread.join();
        }
        drop(self.socket_file);
    }
}

/// Binds the listeners, starts one pinned thread per loop and returns once every loop is serving.
pub fn start<F: ExecutorFactory>(
    config: Config,
    router: Router,
    endpoints: Vec<F::Endpoint>,
    factory: Arc<F>,
) -> Result<RunningPool, PoolError> {
    let loops = config.loops();
    let bound = listener::bind(
        config.socket.as_ref(),
        &config.host,
        config.port,
        loops,
        config.shared_port,
        config.backlog,
    )
    .map_err(|e| PoolError::Bind(e.0))?;
    let local_addr = bound.address.clone();
    let metrics_listener = config
        .metrics_port
        .map(|port| {
            let host = config
                .metrics_host
                .as_deref()
                .unwrap_or(metrics::DEFAULT_HOST);
            metrics::bind(host, port, config.shared_port)
        })
        .transpose()
        .map_err(PoolError::Bind)?;
    let metrics_addr = metrics_listener.as_ref().and_then(metrics::local_addr);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..loops)
        .map(|_| async_channel::bounded::<Job>(4096))
        .unzip();
    let (stop, _) = watch::channel(false);
    let shared = Arc::new(Shared::new(router, endpoints, config, senders));
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let mut threads = Vec::with_capacity(loops);
    for ((index, listener), jobs) in bound.listeners.into_iter().enumerate().zip(receivers) {
        let shared = Arc::clone(&shared);
        let factory = Arc::clone(&factory);
        let stop = stop.subscribe();
        let ready = ready_tx.clone();
        let listener = (listener, local_addr.clone(), bound.shared_queue);
        let thread = std::thread::Builder::new()
            .name(format!("percore-loop-{index}"))
            .spawn(move || {
                let core = shared.config.cores[index];
                core_affinity::set_for_current(core_affinity::CoreId { id: core });
                let mut run = Some((shared, listener, jobs, stop, ready));
                factory.run_thread(&mut || {
                    if let Some((shared, listener, jobs, stop, ready)) = run.take() {
                        run_loop(index, &*factory, shared, listener, jobs, stop, ready);
                    }
                });
            })
            .map_err(|e| PoolError::Spawn(e.to_string()))?;
        threads.push(thread);
    }
    drop(ready_tx);
    let mut pool = RunningPool {
        threads,
        metrics_thread: None,
        stop,
        local_addr,
        metrics_addr,
        socket_file: bound.socket_file,
        metrics: Arc::clone(&shared.metrics),
    };
    for _ in 0..loops {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((index, Err(message))) => {
                pool.stop();
                pool.join();
                return Err(PoolError::LoopStart { index, message });
            }
            Err(_) => {
                pool.stop();
                pool.join();
                return Err(PoolError::Spawn(
                    "a loop thread exited during start-up".into(),
                ));
            }
        }
    }
    if let Some(listener) = metrics_listener {
        let extra = factory.extra_metrics();
        let render = Arc::new(move || {
            let gauges = Gauges {
                in_flight: (0..loops).map(|i| shared.load.in_flight(i)).collect(),
                queued: shared.jobs.iter().map(|jobs| jobs.len()).collect(),
            };
            shared.metrics.render(&gauges, extra.as_ref())
        });
        match metrics::spawn_exporter(listener, render, pool.stop.subscribe()) {
            Ok(thread) => pool.metrics_thread = Some(thread),
            Err(e) => {
                pool.stop();
                pool.join();
                return Err(PoolError::Spawn(format!("metrics thread: {e}")));
            }
        }
    }
    Ok(pool)
}

fn run_loop<F: ExecutorFactory>(
    index: usize,
    factory: &F,
    shared: Arc<Shared<F::Endpoint>>,
    (listener, local_addr, shared_queue): (Listener, LocalAddress, bool),
    jobs: async_channel::Receiver<Job>,
    mut stop: watch::Receiver<bool>,
    ready: mpsc::Sender<(usize, Result<(), String>)>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send((index, Err(format!("tokio runtime: {e}"))));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        // Every early return counts this loop as drained, so the loops that did start are not kept
        // waiting for it at shutdown.
        let give_up = |message: String| {
            let _ = ready.send((index, Err(message)));
            if shared.draining.fetch_sub(1, Ordering::AcqRel) == 1 {
                shared.all_drained.send_replace(true);
            }
        };
        let executor = match factory.create(index) {
            Ok(executor) => Rc::new(executor),
            Err(message) => return give_up(message),
        };
        let listener = match AsyncListener::from_std(listener, shared_queue) {
            Ok(listener) => listener,
            Err(e) => {
                executor.close();
                return give_up(format!("listener: {e}"));
            }
        };
        let context = Rc::new(LoopContext {
            index,
            executor: Rc::clone(&executor),
            chooser: Chooser::new(shared.config.routing, index, Arc::clone(&shared.load)),
            local_addr: local_addr.clone(),
            shared: Arc::clone(&shared),
        });
        let driver = tokio::task::spawn_local(BusyWhilePolled {
            inner: Rc::clone(&executor).drive(),
            load: Arc::clone(&shared.load),
            index,
        });
        if let Err(message) = Rc::clone(&executor).startup().await {
            give_up(message);
            driver.abort();
            let _ = driver.await;
            drop(context);
            executor.close();
            return;
        }
        let job_runner = tokio::task::spawn_local(run_jobs(
            index,
            Rc::clone(&executor),
            Arc::clone(&shared),
            jobs,
        ));
        let _ = ready.send((index, Ok(())));

        let connections =
            server::accept_until_stopped(listener, Rc::clone(&context), &mut stop).await;
        // One deadline for everything in flight: connections, hand-offs from other loops, and work
        // that outlives its response (ASGI background tasks) or its HTTP exchange (WebSockets).
        let deadline = tokio::time::Instant::now() + shared.config.shutdown_timeout;
        executor.begin_shutdown();
        let _ = tokio::time::timeout_at(deadline, connections.all_closed()).await;

        if shared.draining.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.all_drained.send_replace(true);
        }
        let mut all_drained = shared.all_drained.subscribe();
        let _ = tokio::time::timeout_at(deadline, all_drained.wait_for(|drained| *drained)).await;
        job_runner.abort();
        let _ = job_runner.await;
        let _ = tokio::time::timeout_at(deadline, Rc::clone(&executor).idle()).await;
        // Out of time: cancel what still runs *before* the lifespan/loop shutdown hooks, so they never
        // tear down resources a handler is still using; cancellation gets a moment to unwind
        // (`finally` blocks, `async with` exits) while the loop is still driven.
        if executor.cancel_running() > 0 || connections.open() > 0 {
            connections.abort_all();
            let _ = tokio::time::timeout(CANCEL_GRACE, async {
                connections.all_closed().await;
                Rc::clone(&executor).idle().await;
            })
            .await;
        }
        let _ = tokio::time::timeout(
            shared.config.shutdown_timeout,
            Rc::clone(&executor).shutdown(),
        )
        .await;
        driver.abort();
        let _ = driver.await;
        drop(context);
        executor.close();
    });
}

/// Marks the loop busy (`LoadTable::busy`) while `inner` is polled: the executor's driver runs Python
/// (resumed handlers, asyncio callbacks) inside its polls.
struct BusyWhilePolled {
    inner: LocalBoxFuture<()>,
    load: Arc<LoadTable>,
    index: usize,
}

impl Future for BusyWhilePolled {
    type Output = ();

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let _busy = this.load.busy(this.index);
        this.inner.as_mut().poll(cx)
    }
}

async fn run_jobs<X: Executor>(
    index: usize,
    executor: Rc<X>,
    shared: Arc<Shared<X::Endpoint>>,
    jobs: async_channel::Receiver<Job>,
) {
    while let Ok(job) = jobs.recv().await {
        let executor = Rc::clone(&executor);
        let shared = Arc::clone(&shared);
        tokio::task::spawn_local(async move {
            let Job {
                endpoint,
                request,
                mut reply,
            } = job;
            let call = {
                let _busy = shared.load.busy(index);
                executor.call(&shared.endpoints[endpoint], request)
            };
            tokio::select! {
                response = call => {
                    let _ = reply.send(response);
                }
                // The client went away (the connection's thread dropped the receiver): dropping `call`
                // stops the handler, as for a request run where it was read.
                _ = reply.closed() => {}
            }
        });
    }
}
