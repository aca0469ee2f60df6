//! `percore._runtime.Server`: the Python handle on a loop pool — built from the app's routes, started,
//! waited on (in short slices so the main thread can take Ctrl-C) and stopped.
//!
//! Over 500 lines (just): `Server` and the two socket classes a `--workers` supervisor holds.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::asgi::AsgiEndpoint;
use super::errors::{describe, ConfigurationError, StartupError};
use super::executor::Endpoint;
use super::factory::PyExecutorFactory;
use super::hooks::Hooks;
use super::native::{ConstResponse, NativeEndpoint, WebSocketRoute};
use super::params::{Param, ParamSpec};
use super::response::to_response;
use super::sync_pool::{self, SyncPool};
use crate::config::{Config, Options};
use crate::listener::{self, LocalAddress, SocketFile};
use crate::pool::{self, RunningPool};
use crate::router::Router;
use crate::static_files::StaticFiles;

/// A route as the Python app describes it.
#[derive(FromPyObject)]
pub(super) struct RouteSpec {
    method: String,
    path: String,
    function: Py<PyAny>,
    params: Vec<ParamSpec>,
    status_code: u16,
    /// For `const=True` routes: `(value,)`, the handler's result computed once at startup.
    #[pyo3(default)]
    const_value: Option<(Py<PyAny>,)>,
    /// `inline=True`: a `def` handler runs on the loop thread instead of the sync pool.
    #[pyo3(default)]
    inline: bool,
    /// A route of `mount(path, StaticFiles(...))`: the directory served from Rust.
    #[pyo3(default)]
    static_files: Option<StaticSpec>,
}

/// `percore.staticfiles._Mounted`: a `StaticFiles` and the path it is mounted at.
#[derive(FromPyObject)]
pub(super) struct StaticSpec {
    directory: std::path::PathBuf,
    html: bool,
    prefix: String,
}

struct Prepared {
    router: Router,
    endpoints: Vec<Endpoint>,
}

#[pyclass(frozen, module = "percore._runtime")]
pub(super) struct Server {
    config: Config,
    prepared: Mutex<Option<Prepared>>,
    factory: Arc<PyExecutorFactory>,
    running: Mutex<Option<RunningPool>>,
    address: Mutex<Option<LocalAddress>>,
    metrics_address: Mutex<Option<SocketAddr>>,
    /// When `stop` was first called: the shutdown timeout is one deadline from then.
    stop_requested: Mutex<Option<Instant>>,
}

impl Server {
    fn with(
        config: Config,
        router: Router,
        endpoints: Vec<Endpoint>,
        factory: Arc<PyExecutorFactory>,
    ) -> Self {
        Server {
            config,
            prepared: Mutex::new(Some(Prepared { router, endpoints })),
            factory,
            running: Mutex::new(None),
            address: Mutex::new(None),
            metrics_address: Mutex::new(None),
            stop_requested: Mutex::new(None),
        }
    }
}

impl Server {
    /// After the loops: the sync pool finishes the calls it runs, for what remains of the stop's one
    /// shutdown deadline (the loops have waited for their calls already), and stops.
    fn close_sync_pool(&self, py: Python<'_>) {
        let sync_pool = self.factory.sync_pool.lock().unwrap().take();
        if let Some(sync_pool) = sync_pool {
            let timeout = self.config.shutdown_timeout;
            let grace = match *self.stop_requested.lock().unwrap() {
                Some(stop) => (stop + timeout).saturating_duration_since(Instant::now()),
                None => timeout,
            };
            py.detach(|| sync_pool.close(grace));
        }
    }
}

fn config_error(err: impl std::fmt::Display) -> PyErr {
    ConfigurationError::new_err(err.to_string())
}

#[pymethods]
impl Server {
    /// Serves `routes` (a native app), or `asgi_app` for every request when it is given.
    #[new]
    #[pyo3(signature = (
        routes, *, host, port, loops, routing, loop_factory, response_class, on_error, hooks,
        asgi_app=None, root_path=String::new(), lifecycle=None, exception_responder=None,
        max_body_size=None, header_timeout=None, send_timeout=None, max_connections=None, max_in_flight=None,
        shutdown_timeout=None, access_log=false, metrics_port=None, metrics_host=None, shared_port=false,
        forwarded_allow_ips=None, ws_max_size=None, ws_max_queue=None, ws_ping_interval=None, ws_ping_timeout=None,
        uds=None, fd=None, ssl_certfile=None, ssl_keyfile=None, backlog=None, listen_fds=None,
        body_timeout=None, sync_threads=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        routes: Vec<RouteSpec>,
        host: &str,
        port: u16,
        loops: &str,
        routing: &str,
        loop_factory: Py<PyAny>,
        response_class: Py<PyAny>,
        on_error: Py<PyAny>,
        hooks: Hooks,
        asgi_app: Option<Py<PyAny>>,
        root_path: String,
        lifecycle: Option<Py<PyAny>>,
        exception_responder: Option<Py<PyAny>>,
        max_body_size: Option<u64>,
        header_timeout: Option<f64>,
        send_timeout: Option<f64>,
        max_connections: Option<usize>,
        max_in_flight: Option<usize>,
        shutdown_timeout: Option<f64>,
        access_log: bool,
        metrics_port: Option<u16>,
        metrics_host: Option<String>,
        shared_port: bool,
        forwarded_allow_ips: Option<&str>,
        ws_max_size: Option<usize>,
        ws_max_queue: Option<usize>,
        ws_ping_interval: Option<f64>,
        ws_ping_timeout: Option<f64>,
        uds: Option<std::path::PathBuf>,
        fd: Option<i32>,
        ssl_certfile: Option<std::path::PathBuf>,
        ssl_keyfile: Option<std::path::PathBuf>,
        backlog: Option<i32>,
        listen_fds: Option<Vec<i32>>,
        body_timeout: Option<f64>,
        sync_threads: Option<usize>,
    ) -> PyResult<Self> {
        let config = Config::from_options(Options {
            host: host.to_owned(),
            port,
            loops: loops.to_owned(),
            routing: routing.to_owned(),
            max_body_size,
            header_timeout,
            send_timeout,
            max_connections,
            max_in_flight,
            shutdown_timeout,
            access_log,
            metrics_port,
            metrics_host,
            shared_port,
            forwarded_allow_ips: forwarded_allow_ips.map(str::to_owned),
            ws_max_size,
            ws_max_queue,
            ws_ping_interval,
            ws_ping_timeout,
            uds,
            fd,
            ssl_certfile,
            ssl_keyfile,
            backlog,
            listen_fds,
            body_timeout,
            sync_threads,
        })
        .map_err(config_error)?;
        let factory = Arc::new(PyExecutorFactory {
            loop_factory,
            lifecycle,
            response_class,
            on_error,
            hooks,
            exception_responder,
            max_body_size: config.limits.max_body_size,
            max_websocket_message: config.limits.max_websocket_message,
            websocket_max_queue: config.limits.websocket_max_queue,
            send_timeout: config.limits.send_timeout,
            websocket_ping: (
                config.limits.websocket_ping_interval,
                config.limits.websocket_ping_timeout,
            ),
            sync_pool: Mutex::new(None),
            sync_threads: config.sync_threads,
        });
        if let Some(app) = asgi_app {
            return Ok(Server::with(
                config,
                Router::catch_all(0),
                vec![Endpoint::Asgi(AsgiEndpoint { app, root_path })],
                factory,
            ));
        }
        let mut router = Router::new();
        let mut endpoints = Vec::with_capacity(routes.len());
        let is_async = py.import("inspect")?.getattr("iscoroutinefunction")?;
        for route in routes {
            let method = http::Method::from_bytes(route.method.to_ascii_uppercase().as_bytes())
                .map_err(|_| config_error(format!("invalid HTTP method {:?}", route.method)))?;
            router
                .insert(method.clone(), &route.path, endpoints.len())
                .map_err(config_error)?;
            if let Some(spec) = route.static_files {
                let files = StaticFiles::new(spec.directory, spec.html, spec.prefix);
                endpoints.push(Endpoint::Static(Arc::new(files)));
                continue;
            }
            if let Some((value,)) = route.const_value {
                let response = to_response(
                    value.bind(py),
                    route.status_code,
                    factory.response_class.bind(py),
                    None,
                )
                .map_err(|err| {
                    config_error(format!(
                        "const route {method} {}: {}",
                        route.path,
                        describe(py, &err)
                    ))
                })?;
                endpoints.push(Endpoint::Const(ConstResponse::from(response)));
                continue;
            }
            let params = route
                .params
                .into_iter()
                .map(|spec| Param::from_spec(py, spec))
                .collect::<Result<Vec<_>, _>>()
                .map_err(config_error)?;
            if method.as_str() == crate::router::WEBSOCKET {
                endpoints.push(Endpoint::WebSocket(WebSocketRoute {
                    runner: AsgiEndpoint {
                        app: route.function,
                        root_path: String::new(),
                    },
                    params,
                }));
                continue;
            }
            // A `def` handler goes to the sync pool (one that returns a coroutine anyway has it stepped
            // on the loop afterwards); `async def` ones and `inline=True` ones run on the loop.
            let offload = !route.inline && !is_async.call1((&route.function,))?.is_truthy()?;
            endpoints.push(Endpoint::Native(Arc::new(NativeEndpoint {
                function: route.function,
                form: params.iter().any(Param::reads_form),
                params,
                status_code: route.status_code,
                name: crate::exchange::route_name(method.as_str(), &route.path).into(),
                offload,
            })));
        }
        Ok(Server::with(config, router, endpoints, factory))
    }

    /// Binds the listeners and starts every loop; returns once all of them are serving.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let prepared = self
            .prepared
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| StartupError::new_err("this server was already started"))?;
        let config = self.config.clone();
        let factory = Arc::clone(&self.factory);
        let offloads = prepared
            .endpoints
            .iter()
            .any(|e| matches!(e, Endpoint::Native(native) if native.offload));
        if offloads {
            let threads = (self.factory.sync_threads)
                .unwrap_or_else(|| sync_pool::default_threads(config.loops()));
            let sync_pool = SyncPool::start(threads, factory.response_class.clone_ref(py))
                .map_err(|e| {
                    StartupError::new_err(format!("could not start the sync pool: {e}"))
                })?;
            *factory.sync_pool.lock().unwrap() = Some(sync_pool);
        }
        // Detached: each loop thread attaches to create its asyncio loop while we wait for it.
        let pool = py.detach(|| pool::start(config, prepared.router, prepared.endpoints, factory));
        let pool = match pool {
            Ok(pool) => pool,
            Err(e) => {
                self.close_sync_pool(py);
                return Err(StartupError::new_err(e.to_string()));
            }
        };
        *self.address.lock().unwrap() = Some(pool.local_addr.clone());
        *self.metrics_address.lock().unwrap() = pool.metrics_addr;
        *self.running.lock().unwrap() = Some(pool);
        Ok(())
    }

    /// Responses sent so far by every loop (0 before start).
    #[getter]
    fn responses(&self) -> u64 {
        self.running
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, RunningPool::responses)
    }

    /// Waits up to `timeout` seconds for the pool to stop; True once every loop's work has ended (`join`
    /// waits for the threads themselves).
    fn wait(&self, py: Python<'_>, timeout: f64) -> bool {
        // The signal, not the pool: `stop()` from another thread must not wait behind this lock.
        let signal = self
            .running
            .lock()
            .unwrap()
            .as_ref()
            .map(RunningPool::finish_signal);
        let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
        signal.is_none_or(|signal| py.detach(|| signal.wait(timeout)))
    }

    /// Asks every loop to stop accepting, finish in-flight requests and exit.
    fn stop(&self) {
        self.stop_requested
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        if let Some(pool) = self.running.lock().unwrap().as_ref() {
            pool.stop();
        }
    }

    /// Waits for every loop thread to exit.
    fn join(&self, py: Python<'_>) {
        let pool = self.running.lock().unwrap().take();
        if let Some(pool) = pool {
            py.detach(|| pool.join());
        }
        self.close_sync_pool(py);
    }

    /// The TCP address's host once started; None on a Unix socket.
    #[getter]
    fn host(&self) -> Option<String> {
        match self.address.lock().unwrap().as_ref() {
            Some(LocalAddress::Tcp(address)) => Some(address.ip().to_string()),
            _ => None,
        }
    }

    /// The TCP port once started (the one picked for port 0); None on a Unix socket.
    #[getter]
    fn port(&self) -> Option<u16> {
        match self.address.lock().unwrap().as_ref() {
            Some(LocalAddress::Tcp(address)) => Some(address.port()),
            _ => None,
        }
    }

    /// Where it serves once started: `http://HOST:PORT`, `https://HOST:PORT` or `unix:PATH`.
    #[getter]
    fn address(&self) -> Option<String> {
        self.address
            .lock()
            .unwrap()
            .as_ref()
            .map(|a| a.url(self.config.tls.is_some()))
    }

    /// The port `GET /metrics` is served on, once started with `metrics_port`.
    #[getter]
    fn metrics_port(&self) -> Option<u16> {
        self.metrics_address.lock().unwrap().map(|a| a.port())
    }

    /// The core each loop is pinned to, by loop index.
    #[getter]
    fn cores(&self) -> Vec<usize> {
        self.config.cores.clone()
    }

    /// With `--loops auto`, why it chose this many loops (affinity, CPU quota); None for a fixed count.
    #[getter]
    fn loops_reason(&self) -> Option<String> {
        self.config.cpu_budget.as_ref().map(ToString::to_string)
    }

    #[getter]
    fn routing(&self) -> &'static str {
        self.config.routing.name()
    }
}

/// A listening Unix socket a `--workers` supervisor creates for its workers (passed to them as `--fd`):
/// the same checks as a single server's `--uds` (a path in use or not a socket is refused, a stale one
/// replaced), and the file is removed by `close()`, or when this object is collected.
#[pyclass(module = "percore._runtime")]
pub(super) struct UnixSocket {
    socket: Option<(socket2::Socket, SocketFile)>,
}

#[pymethods]
impl UnixSocket {
    #[new]
    #[pyo3(signature = (path, backlog=None))]
    fn new(path: std::path::PathBuf, backlog: Option<i32>) -> PyResult<Self> {
        let backlog = backlog.unwrap_or(listener::DEFAULT_BACKLOG);
        let bound = listener::bind_unix(&path, backlog)
            .map_err(|e| StartupError::new_err(e.to_string()))?;
        Ok(UnixSocket {
            socket: Some(bound),
        })
    }

    /// The listening socket's descriptor, for the workers to inherit.
    fn fileno(&self) -> PyResult<i32> {
        use std::os::fd::AsRawFd;
        self.socket
            .as_ref()
            .map(|(socket, _)| socket.as_raw_fd())
            .ok_or_else(|| StartupError::new_err("the unix socket is closed"))
    }

    /// Closes the socket and removes its file (unless another server has replaced it since).
    fn close(&mut self) {
        self.socket = None;
    }
}

/// The TCP listeners a `--workers` supervisor binds for all its workers (one per worker, whose loops share
/// it; one SO_REUSEPORT group, after the busy-port probe) and keeps open for their whole life: each worker inherits
/// its share, and a worker that replaces another (`--reload`, `--limit-max-requests`, a restart) accepts on
/// the same sockets, so the connections queued on them are not lost when the old worker stops.
#[pyclass(module = "percore._runtime")]
pub(super) struct TcpListeners {
    listeners: Vec<std::net::TcpListener>,
    address: SocketAddr,
}

#[pymethods]
impl TcpListeners {
    /// `shared`: join the SO_REUSEPORT group of listeners this supervisor already holds on `port` (no
    /// busy-port probe, which they would fail).
    #[new]
    #[pyo3(signature = (host, port, count, backlog=None, shared=false))]
    fn new(
        host: &str,
        port: u16,
        count: usize,
        backlog: Option<i32>,
        shared: bool,
    ) -> PyResult<Self> {
        let backlog = backlog.unwrap_or(listener::DEFAULT_BACKLOG);
        let listeners = listener::bind_tcp(host, port, count.max(1), shared, backlog)
            .map_err(|e| StartupError::new_err(e.to_string()))?;
        let address = listeners[0]
            .local_addr()
            .map_err(|e| StartupError::new_err(e.to_string()))?;
        Ok(TcpListeners { listeners, address })
    }

    /// The listeners' descriptors, for the workers to inherit.
    fn filenos(&self) -> Vec<i32> {
        use std::os::fd::AsRawFd;
        self.listeners.iter().map(|l| l.as_raw_fd()).collect()
    }

    #[getter]
    fn host(&self) -> String {
        self.address.ip().to_string()
    }

    #[getter]
    fn port(&self) -> u16 {
        self.address.port()
    }

    /// Closes every listener.
    fn close(&mut self) {
        self.listeners.clear();
    }
}
