//! Where a routed request runs: the loop that read it or another one, as the routing policy chooses.
//! `LoopContext` is what one loop thread owns; `Shared` what all loops share (routes, endpoints, load,
//! the job channels between loops); a `Job` is a request handed to another loop.
//!
//! Invariants:
//! - A request handed to another loop travels as a `Job` over that loop's bounded channel and its response
//!   comes back over a oneshot to the connection's own thread; the sender never blocks a thread, it awaits.
//! - A loop at `--max-in-flight` takes no more requests: they get 503 + Retry-After, nothing queues
//!   without bound.
//! - A request dropped before its response is delivered (hyper dropped it: the client went away) sets its
//!   `client_gone` latch (`DisconnectGuard`), wherever it runs.
#![warn(missing_docs)]

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::exchange::{HttpRequest, HttpResponse, Latch};
use crate::executor::Executor;
use crate::listener::LocalAddress;
use crate::metrics::Metrics;
use crate::router::{EndpointId, Router};
use crate::routing::{Chooser, LoadTable};

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

/// A request handed from the loop that read it to the loop that runs it (its `in_flight` guard with it).
pub struct Job {
    /// What the request was routed to.
    pub endpoint: EndpointId,
    /// The request, its `in_flight` guard counting it against the target loop.
    pub request: HttpRequest,
    /// Where the response goes: the connection's own thread awaits it.
    pub reply: oneshot::Sender<HttpResponse>,
}

/// What every loop shares: the routes, the endpoint table, the load counters and the job channels.
pub struct Shared<E> {
    /// The routes, matched on the connection's thread.
    pub router: Router,
    /// What each `EndpointId` runs.
    pub endpoints: Vec<E>,
    /// Each loop's in-flight count and busy flag.
    pub load: Arc<LoadTable>,
    /// One bounded job channel per loop (its length is the loop count).
    pub jobs: Vec<async_channel::Sender<Job>>,
    /// The server's configuration.
    pub config: Config,
    /// Per-loop counters for `/metrics`.
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

    /// This loop has drained its own connections (or never started): the last one to say so releases
    /// every loop waiting in `all_drained`.
    pub fn loop_drained(&self) {
        if self.draining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_drained.send_replace(true);
        }
    }

    /// Resolves once every loop has drained its own connections; until then a drained loop keeps running
    /// jobs handed to it, so no accepted request is lost to a hand-off.
    pub async fn all_drained(&self) {
        let mut all_drained = self.all_drained.subscribe();
        let _ = all_drained.wait_for(|drained| *drained).await;
    }
}

/// What one loop thread owns.
pub struct LoopContext<X: Executor> {
    /// This loop's index (its place in `Shared::jobs` and the load table).
    pub index: usize,
    /// This loop's executor; it never leaves the thread.
    pub executor: Rc<X>,
    /// What all loops share.
    pub shared: Arc<Shared<X::Endpoint>>,
    /// This loop's routing policy.
    pub chooser: Chooser,
    /// The address the loop accepts on (for the ASGI `server` and logs).
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
        let target =
            if request.upgrade.is_some() || X::runs_off_loop(&self.shared.endpoints[endpoint]) {
                // Measured (routing experiment, 3.13t, even mix of 0.2 ms `def` handlers, 2 loops):
                // least-loaded moving such requests ran at 4990 req/s against local's 6299.
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

/// Runs the jobs other loops hand to this one, each as its own local task, until the channel closes.
pub async fn run_jobs<X: Executor>(
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
