//! The loop pool: one OS thread per loop, pinned to its core, each owning a tokio current-thread runtime,
//! its HTTP acceptor and an `Executor` (for Python apps: an asyncio event loop) that runs handlers.
//!
//! Invariants:
//! - An executor is created, used and closed on its own thread; it never moves (`Rc`, not `Arc`).
//! - Shutdown is two-phase: every loop stops accepting and drains its connections, but keeps running
//!   jobs from other loops until *all* loops have drained, so no accepted request is lost to a hand-off.
#![warn(missing_docs)]

//!
//! The top of the plain-Rust layers: pool → server → dispatch → executor → exchange (`docs/architecture.md`).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::Config;
use crate::dispatch::{run_jobs, Job, LoopContext, Shared};
use crate::executor::{Executor, ExecutorError, ExecutorFactory, LocalBoxFuture};
use crate::listener::{self, BindError, Listener, LocalAddress, SocketFile};
use crate::metrics::{self, Gauges, Metrics};
use crate::router::Router;
use crate::routing::{Chooser, LoadTable};
use crate::server::{self, AsyncListener};

/// How long cancelled request work may take to unwind at shutdown before the loop shuts down anyway.
const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// Why a pool did not start.
#[derive(Debug)]
pub enum PoolError {
    /// The listening socket (or the metrics port) could not be set up.
    Bind(BindError),
    /// A loop thread could not be spawned.
    Spawn(std::io::Error),
    /// The metrics thread could not be spawned.
    SpawnMetrics(std::io::Error),
    /// A loop thread ended before it said whether it started (it panicked).
    LoopVanished,
    /// A loop could not start serving.
    LoopStart {
        /// Which loop.
        index: usize,
        /// Why.
        cause: LoopStartError,
    },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Bind(err) => err.fmt(f),
            PoolError::Spawn(err) => write!(f, "could not start a loop thread: {err}"),
            PoolError::SpawnMetrics(err) => {
                write!(f, "could not start a loop thread: metrics thread: {err}")
            }
            PoolError::LoopVanished => {
                f.write_str("could not start a loop thread: a loop thread exited during start-up")
            }
            PoolError::LoopStart { index, cause } => {
                write!(f, "loop {index} failed to start: {cause}")
            }
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Bind(err) => Some(err),
            PoolError::Spawn(err) | PoolError::SpawnMetrics(err) => Some(err),
            PoolError::LoopVanished => None,
            PoolError::LoopStart { cause, .. } => Some(cause),
        }
    }
}

/// Why one loop could not start serving.
#[derive(Debug)]
pub enum LoopStartError {
    /// Its tokio runtime could not be built.
    Runtime(std::io::Error),
    /// Its listener could not be registered with the runtime.
    Listener(std::io::Error),
    /// Its executor could not be created or started (an ASGI app's lifespan startup failed).
    Executor(ExecutorError),
}

impl fmt::Display for LoopStartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoopStartError::Runtime(err) => write!(f, "tokio runtime: {err}"),
            LoopStartError::Listener(err) => write!(f, "listener: {err}"),
            LoopStartError::Executor(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for LoopStartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoopStartError::Runtime(err) | LoopStartError::Listener(err) => Some(err),
            // Transparent: its Display is the executor error's.
            LoopStartError::Executor(err) => err.source(),
        }
    }
}

/// A started pool. `stop` asks every loop to shut down; `join` waits for them.
pub struct RunningPool {
    threads: Vec<JoinHandle<()>>,
    finished: FinishSignal,
    metrics_thread: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    /// Where the pool accepts connections.
    pub local_addr: LocalAddress,
    /// Where `GET /metrics` is served, when `Config::metrics_port` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The `--uds` socket file, removed once every loop has stopped accepting on it.
    socket_file: Option<SocketFile>,
    metrics: Arc<Metrics>,
}

impl RunningPool {
    /// Asks every loop to stop accepting and shut down (returns at once; `join` waits).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Responses every loop has sent so far.
    pub fn responses(&self) -> u64 {
        self.metrics.responses()
    }

    /// What `FinishSignal::wait` waits on: every loop's work done (held apart from the pool, so a waiter
    /// does not keep the pool, and whatever guards it, locked while it waits).
    pub fn finish_signal(&self) -> FinishSignal {
        self.finished.clone()
    }

    /// Stops the pool (if not yet asked) and waits for every thread; removes a `--uds` socket file.
    pub fn join(self) {
        self.stop.send_replace(true);
        for thread in self.threads.into_iter().chain(self.metrics_thread) {
            let _ = thread.join();
        }
        drop(self.socket_file);
    }
}

/// Tells waiters when the last loop thread's work has ended, so a waiter sleeps until then (or its
/// deadline) instead of polling the threads: the server's main thread waits on it for the server's life.
#[derive(Clone)]
pub struct FinishSignal {
    ended: Arc<(Mutex<usize>, Condvar)>,
    loops: usize,
}

impl FinishSignal {
    fn new(loops: usize) -> Self {
        FinishSignal {
            ended: Arc::new((Mutex::new(0), Condvar::new())),
            loops,
        }
    }

    /// Waits up to `timeout` for every loop thread's work to end; true once it has (the threads may still
    /// be exiting: `RunningPool::join` waits for that).
    pub fn wait(&self, timeout: Duration) -> bool {
        let (ended, changed) = &*self.ended;
        let deadline = Instant::now().checked_add(timeout); // None: longer than the clock can count
        let mut count = ended.lock().unwrap_or_else(|e| e.into_inner());
        while *count < self.loops {
            count = match deadline {
                None => changed.wait(count).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    changed
                        .wait_timeout(count, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        true
    }
}

/// Counts a loop thread as ended when dropped: at the end of its closure, panics included.
struct EndsLoop(FinishSignal);

impl Drop for EndsLoop {
    fn drop(&mut self) {
        let (ended, changed) = &*self.0.ended;
        *ended.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        changed.notify_all();
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
    .map_err(PoolError::Bind)?;
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
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), LoopStartError>)>();
    let mut threads = Vec::with_capacity(loops);
    let finished = FinishSignal::new(loops);
    for ((index, listener), jobs) in bound.listeners.into_iter().enumerate().zip(receivers) {
        let ends = EndsLoop(finished.clone());
        let shared = Arc::clone(&shared);
        let factory = Arc::clone(&factory);
        let stop = stop.subscribe();
        let ready = ready_tx.clone();
        let listener = (listener, local_addr.clone(), bound.shared_queue);
        let thread = std::thread::Builder::new()
            .name(format!("percore-loop-{index}"))
            .spawn(move || {
                let _ends = ends;
                let core = shared.config.cores[index];
                core_affinity::set_for_current(core_affinity::CoreId { id: core });
                let mut run = Some((shared, listener, jobs, stop, ready));
                factory.run_thread(&mut || {
                    if let Some((shared, listener, jobs, stop, ready)) = run.take() {
                        run_loop(index, &*factory, shared, listener, jobs, stop, ready);
                    }
                });
            })
            .map_err(PoolError::Spawn)?;
        threads.push(thread);
    }
    drop(ready_tx);
    let mut pool = RunningPool {
        threads,
        finished,
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
            Ok((index, Err(cause))) => {
                pool.stop();
                pool.join();
                return Err(PoolError::LoopStart { index, cause });
            }
            Err(_) => {
                pool.stop();
                pool.join();
                return Err(PoolError::LoopVanished);
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
                return Err(PoolError::SpawnMetrics(e));
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
    ready: mpsc::Sender<(usize, Result<(), LoopStartError>)>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send((index, Err(LoopStartError::Runtime(e))));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        // Every early return counts this loop as drained, so the loops that did start are not kept
        // waiting for it at shutdown.
        let give_up = |cause: LoopStartError| {
            let _ = ready.send((index, Err(cause)));
            shared.loop_drained();
        };
        let executor = match factory.create(index) {
            Ok(executor) => Rc::new(executor),
            Err(err) => return give_up(LoopStartError::Executor(err)),
        };
        let listener = match AsyncListener::from_std(listener, shared_queue) {
            Ok(listener) => listener,
            Err(e) => {
                executor.close();
                return give_up(LoopStartError::Listener(e));
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
        if let Err(err) = Rc::clone(&executor).startup().await {
            give_up(LoopStartError::Executor(err));
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

        shared.loop_drained();
        let _ = tokio::time::timeout_at(deadline, shared.all_drained()).await;
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
