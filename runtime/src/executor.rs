//! What runs a routed request on a loop: the `Executor` trait (one per loop thread, created there by its
//! `ExecutorFactory`) and the lifecycle the pool drives it through — create, drive, startup, calls,
//! begin_shutdown, idle, cancel_running, shutdown, close.
//!
//! Plain Rust: the Python bridge implements these traits (`python/executor.rs`); `tests/pool.rs` and the
//! fuzz target implement them without Python.
#![warn(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use crate::exchange::{HttpRequest, HttpResponse};
use crate::metrics::ExtraMetrics;

/// Why an executor could not be created or started on its loop thread: the step (`kind`) and the
/// executor's own error as the cause (for Python: the exception, kept whole). Displayed as the cause
/// alone, which already says what went wrong ("RuntimeError: the database is down").
#[derive(Debug)]
pub struct ExecutorError {
    kind: ExecutorErrorKind,
    cause: Box<dyn std::error::Error + Send + Sync>,
}

/// The step of an executor's life that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorErrorKind {
    /// `ExecutorFactory::create`.
    Create,
    /// `Executor::startup` (for ASGI apps: lifespan startup).
    Startup,
}

impl ExecutorError {
    /// A failure of step `kind`, caused by `cause`.
    pub fn new(
        kind: ExecutorErrorKind,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ExecutorError {
            kind,
            cause: cause.into(),
        }
    }

    /// Which step failed.
    pub fn kind(&self) -> ExecutorErrorKind {
        self.kind
    }

    /// The executor's own error.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.cause
    }
}

impl std::fmt::Display for ExecutorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.cause.fmt(f)
    }
}

impl std::error::Error for ExecutorError {
    // Transparent: Display is the cause's, so the chain continues with the cause's own source.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.source()
    }
}

/// A future that stays on the thread that made it (executors are `Rc`, loop threads never share them).
pub type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Runs endpoints on one loop thread. Created on that thread by its `ExecutorFactory`.
pub trait Executor: 'static {
    /// What a route runs on this executor (shared by every loop).
    type Endpoint: Send + Sync + 'static;

    /// Whether `endpoint` reads the request body as it arrives; if not, the server reads it whole first.
    fn streams_request_body(_endpoint: &Self::Endpoint) -> bool {
        false
    }

    /// Whether `endpoint`'s work runs off the loop threads (a `def` handler on the shared sync pool; a
    /// response made in Rust): then which loop calls it makes no difference, and the routing policy
    /// keeps it on the loop that read it, where a hand-off would only add a hop.
    fn runs_off_loop(_endpoint: &Self::Endpoint) -> bool {
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
    fn startup(self: Rc<Self>) -> LocalBoxFuture<Result<(), ExecutorError>> {
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

/// Makes each loop's `Executor`, on that loop's thread.
pub trait ExecutorFactory: Send + Sync + 'static {
    /// What a route runs (the executors' `Endpoint`).
    type Endpoint: Send + Sync + 'static;
    /// The executor it makes.
    type Executor: Executor<Endpoint = Self::Endpoint>;

    /// Wraps the whole life of a loop thread (for Python: attach the thread to the interpreter once).
    fn run_thread(&self, body: &mut (dyn FnMut() + Send)) {
        body()
    }

    /// Creates the loop's executor on the loop thread, inside its tokio runtime.
    fn create(&self, loop_index: usize) -> Result<Self::Executor, ExecutorError>;

    /// Process-level lines to append to every metrics scrape (for Python: whether the GIL is on).
    fn extra_metrics(&self) -> Option<ExtraMetrics> {
        None
    }
}
