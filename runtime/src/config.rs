//! Server configuration: what the CLI resolved (address, loop count, cores, routing policy) in plain Rust.
//! `--loops auto` is one loop per CPU of the process's budget: its affinity mask capped by its cgroup's
//! CPU quota (`cpu_budget`).
//!
//! Invariant: a `Config` that exists is valid — at least one loop, one core per loop, a known policy.
//! Everything the user can get wrong is reported as a `ConfigError` before any thread or socket exists.
//!
//! Over 500 lines: the tests (one per `ConfigError` kind) are ~250 of them.
#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

/// How many loops to run: one per CPU the process may use (affinity mask capped by the cgroup CPU quota,
/// see `cpu_budget`), or an explicit count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopCount {
    /// One loop per CPU of the process's budget (`--loops auto`).
    Auto,
    /// Exactly this many loops (at least 1).
    Fixed(usize),
}

impl LoopCount {
    /// `auto` (any case) or a positive integer, as `--loops` takes it.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Ok(LoopCount::Auto);
        }
        match text.parse::<usize>() {
            Ok(0) => Err(ConfigError::ZeroLoops),
            Ok(n) => Ok(LoopCount::Fixed(n)),
            Err(_) => Err(ConfigError::BadLoopCount(text.to_owned())),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Which loop runs a request (`--routing`); `routing::Chooser` applies it.
pub enum RoutingPolicy {
    /// Run on the loop that read the request: no hand-off at all.
    Local,
    /// Each loop hands its requests to every loop in turn, starting with itself, passing over a loop that
    /// is busy in executor code.
    RoundRobin,
    /// The loop with the fewest in-flight requests, a loop busy in executor code counting as fully loaded;
    /// ties go to the loop that read the request.
    LeastLoaded,
}

impl RoutingPolicy {
    /// Every policy, the default (`--routing local`) first.
    pub const ALL: [RoutingPolicy; 3] = [
        RoutingPolicy::Local,
        RoutingPolicy::RoundRobin,
        RoutingPolicy::LeastLoaded,
    ];

    /// The policy as `--routing` spells it.
    pub fn name(self) -> &'static str {
        match self {
            RoutingPolicy::Local => "local",
            RoutingPolicy::RoundRobin => "round-robin",
            RoutingPolicy::LeastLoaded => "least-loaded",
        }
    }
}

impl fmt::Display for RoutingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RoutingPolicy {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "local" => Ok(RoutingPolicy::Local),
            "round-robin" | "roundrobin" => Ok(RoutingPolicy::RoundRobin),
            "least-loaded" | "leastloaded" => Ok(RoutingPolicy::LeastLoaded),
            _ => Err(ConfigError::BadRoutingPolicy(text.to_owned())),
        }
    }
}

/// What one client may cost the server; each is a CLI flag with this default.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Larger request bodies are answered 413 (without reading them, when the length is declared).
    pub max_body_size: u64,
    /// A connection that does not deliver a complete request head within this time is closed: slowloris
    /// defence, and the idle limit for keep-alive connections.
    pub header_timeout: std::time::Duration,
    /// Open connections per loop; beyond it the loop stops accepting until one closes (the rest wait
    /// in the kernel's backlog).
    pub max_connections_per_loop: usize,
    /// Requests in flight per loop; beyond it new requests routed to that loop get 503 + Retry-After.
    pub max_in_flight_per_loop: usize,
    /// A WebSocket message (or frame) larger than this closes the socket with 1009 (message too big)
    /// instead of being buffered: uvicorn's `--ws-max-size` and its default.
    pub max_websocket_message: usize,
    /// Client messages queued for an app that has not called `receive()` yet; while the queue is full
    /// the server stops reading the socket, so TCP pushes back on the client (uvicorn's `--ws-max-queue`
    /// and its default).
    pub websocket_max_queue: usize,
    /// Every open WebSocket is pinged this often; a client that has sent nothing (a pong included)
    /// `websocket_ping_timeout` later is closed with 1011, so a peer that vanished without closing does
    /// not hold the socket forever (uvicorn's `--ws-ping-interval`/`--ws-ping-timeout`, same defaults).
    /// None: no pings.
    pub websocket_ping_interval: Option<std::time::Duration>,
    /// How long a pinged WebSocket client may stay silent before it is closed (`--ws-ping-timeout`).
    pub websocket_ping_timeout: std::time::Duration,
    /// Reading a request body: no bytes of it for this long closes the connection, with 408 if nothing of
    /// the response was sent yet (nginx's `client_body_timeout`). A stalled upload holds nothing forever.
    pub body_timeout: std::time::Duration,
    /// Writing to a client: no byte accepted by the socket for this long closes the connection (nginx's
    /// `send_timeout`), so a client that stops reading (also one that pipelines requests and never reads
    /// the answers) does not hold its connection and the response buffered for it forever.
    pub send_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_size: 16 * 1024 * 1024,
            header_timeout: std::time::Duration::from_secs(30),
            max_connections_per_loop: 10_000,
            max_in_flight_per_loop: 4096,
            max_websocket_message: 16 * 1024 * 1024,
            websocket_max_queue: 32,
            websocket_ping_interval: Some(std::time::Duration::from_secs(20)),
            websocket_ping_timeout: std::time::Duration::from_secs(20),
            body_timeout: std::time::Duration::from_secs(60),
            send_timeout: std::time::Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug)]
/// A validated server configuration (see the module's invariant); built by `Config::from_options`.
pub struct Config {
    /// TCP address to listen on, unless `socket` says otherwise.
    pub host: String,
    /// TCP port; 0 lets the kernel pick one.
    pub port: u16,
    /// A Unix socket path (`--uds`) or an inherited socket (`--fd`) instead of `host:port`.
    pub socket: Option<crate::listener::SocketSource>,
    /// Pending connections each listening socket queues (`--backlog`).
    pub backlog: i32,
    /// Which loop runs each request (`--routing`).
    pub routing: RoutingPolicy,
    /// The core each loop is pinned to; its length is the loop count. More loops than cores wrap around.
    pub cores: Vec<usize>,
    /// With `--loops auto`: the CPU budget that chose the count (its Display says why, for the banner).
    pub cpu_budget: Option<crate::cpu_budget::CpuBudget>,
    /// How long in-flight requests may run after a stop signal before their connections are dropped.
    pub shutdown_timeout: std::time::Duration,
    /// What one client may cost (`Limits`).
    pub limits: Limits,
    /// One Common Log Format line per request on stderr (`access_log`).
    pub access_log: bool,
    /// The port is reserved by a `--workers` supervisor for its workers: bind without the busy-port probe.
    pub shared_port: bool,
    /// Serve Prometheus metrics on this port when set; 0 picks a free port.
    pub metrics_port: Option<u16>,
    /// The address the metrics port binds; None: loopback (`metrics::DEFAULT_HOST`), whatever `host` is,
    /// so metrics are never public unless asked for.
    pub metrics_host: Option<String>,
    /// Peers whose `X-Forwarded-For`/`-Proto` headers name the client and scheme (`proxy`); None: the
    /// headers are never applied (`--no-proxy-headers`).
    pub trusted_proxies: Option<crate::proxy::TrustedProxies>,
    /// Serve HTTPS with this certificate (`tls`); None: plain HTTP.
    pub tls: Option<crate::tls::Tls>,
    /// Threads running `def` handlers (`--sync-threads`); None: the executor's default for the loop count.
    pub sync_threads: Option<usize>,
}

impl Config {
    /// `host:port` with `loops` loops pinned to the affinity mask's cores and every other setting at its default.
    pub fn new(
        host: &str,
        port: u16,
        loops: LoopCount,
        routing: RoutingPolicy,
    ) -> Result<Self, ConfigError> {
        let available = available_cores();
        if available.is_empty() {
            return Err(ConfigError::NoCores);
        }
        let cpu_budget = (loops == LoopCount::Auto)
            .then(|| crate::cpu_budget::CpuBudget::detect(available.len()));
        let count = match loops {
            LoopCount::Auto => cpu_budget.as_ref().map_or(1, |budget| budget.cpus()),
            LoopCount::Fixed(0) => return Err(ConfigError::ZeroLoops),
            LoopCount::Fixed(n) => n,
        };
        let cores = (0..count).map(|i| available[i % available.len()]).collect();
        Ok(Config {
            host: host.to_owned(),
            port,
            socket: None,
            backlog: crate::listener::DEFAULT_BACKLOG,
            routing,
            cores,
            cpu_budget,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            limits: Limits::default(),
            access_log: false,
            shared_port: false,
            metrics_port: None,
            metrics_host: None,
            trusted_proxies: None,
            tls: None,
            sync_threads: None,
        })
    }

    /// How many loops (threads) the pool runs.
    pub fn loops(&self) -> usize {
        self.cores.len()
    }

    /// The configuration `options` describe, every flag checked: the one place the server's flags are
    /// validated (the Python `Server` only converts its arguments into `Options`).
    pub fn from_options(options: Options) -> Result<Self, ConfigError> {
        let loops = LoopCount::parse(&options.loops)?;
        let routing: RoutingPolicy = options.routing.parse()?;
        let mut config = Config::new(&options.host, options.port, loops, routing)?;
        let limits = &mut config.limits;
        if let Some(size) = options.max_body_size {
            limits.max_body_size = size;
        }
        if let Some(timeout) = options.header_timeout {
            limits.header_timeout = seconds(timeout, "--header-timeout")?;
        }
        if let Some(timeout) = options.send_timeout {
            limits.send_timeout = seconds(timeout, "--send-timeout")?;
        }
        if let Some(count) = options.max_connections {
            limits.max_connections_per_loop = positive(count, "--max-connections")?;
        }
        if let Some(count) = options.max_in_flight {
            limits.max_in_flight_per_loop = positive(count, "--max-in-flight")?;
        }
        config.sync_threads = options
            .sync_threads
            .map(|count| positive(count, "--sync-threads"))
            .transpose()?;
        if let Some(size) = options.ws_max_size {
            limits.max_websocket_message = positive(size, "--ws-max-size")?;
        }
        if let Some(count) = options.ws_max_queue {
            limits.websocket_max_queue = positive(count, "--ws-max-queue")?;
        }
        match options.ws_ping_interval {
            Some(0.0) => limits.websocket_ping_interval = None,
            Some(interval) => {
                limits.websocket_ping_interval = Some(seconds(interval, "--ws-ping-interval")?)
            }
            None => {}
        }
        if let Some(timeout) = options.ws_ping_timeout {
            limits.websocket_ping_timeout = seconds(timeout, "--ws-ping-timeout")?;
        }
        if let Some(timeout) = options.body_timeout {
            limits.body_timeout = seconds(timeout, "--body-timeout")?;
        }
        if let Some(timeout) = options.shutdown_timeout {
            config.shutdown_timeout = seconds(timeout, "--shutdown-timeout")?;
        }
        config.socket = match (options.uds, options.fd) {
            (Some(_), Some(_)) => return Err(ConfigError::UdsAndFd),
            (Some(path), None) => Some(crate::listener::SocketSource::UnixPath(path)),
            (None, Some(fd)) if fd < 0 => return Err(ConfigError::BadFd(fd)),
            (None, Some(fd)) => Some(crate::listener::SocketSource::Fd(fd)),
            (None, None) => options
                .listen_fds
                .map(crate::listener::SocketSource::FdPerLoop),
        };
        config.tls = match (options.ssl_certfile, options.ssl_keyfile) {
            (Some(certfile), Some(keyfile)) => {
                Some(crate::tls::Tls::load(&certfile, &keyfile).map_err(ConfigError::Tls)?)
            }
            (None, None) => None,
            _ => return Err(ConfigError::TlsNeedsBoth),
        };
        if let Some(backlog) = options.backlog {
            config.backlog = positive(backlog.max(0) as usize, "--backlog")? as i32;
        }
        config.access_log = options.access_log;
        config.metrics_port = options.metrics_port;
        config.metrics_host = options.metrics_host;
        config.shared_port = options.shared_port;
        config.trusted_proxies = options
            .forwarded_allow_ips
            .as_deref()
            .map(crate::proxy::TrustedProxies::parse)
            .transpose()
            .map_err(ConfigError::TrustedProxies)?;
        Ok(config)
    }
}

/// The server's flags as given (the CLI's, through `percore.server.ServerConfig`), before any check:
/// `Config::from_options` validates them. None: the flag was not given (its default applies).
#[derive(Clone, Debug)]
pub struct Options {
    /// `--host`.
    pub host: String,
    /// `--port` (0: any free port).
    pub port: u16,
    /// `--loops`: `auto` or a count.
    pub loops: String,
    /// `--routing`: a `RoutingPolicy` name.
    pub routing: String,
    /// `--max-body-size`, in bytes.
    pub max_body_size: Option<u64>,
    /// `--header-timeout`, in seconds.
    pub header_timeout: Option<f64>,
    /// `--send-timeout`, in seconds.
    pub send_timeout: Option<f64>,
    /// `--max-connections` (per loop).
    pub max_connections: Option<usize>,
    /// `--max-in-flight` (per loop).
    pub max_in_flight: Option<usize>,
    /// `--shutdown-timeout`, in seconds.
    pub shutdown_timeout: Option<f64>,
    /// `--access-log`.
    pub access_log: bool,
    /// `--metrics-port` (0: any free port).
    pub metrics_port: Option<u16>,
    /// `--metrics-host`.
    pub metrics_host: Option<String>,
    /// Set by a `--workers` supervisor for its workers (see `Config::shared_port`).
    pub shared_port: bool,
    /// `--forwarded-allow-ips` (None: the CLI's default applies upstream).
    pub forwarded_allow_ips: Option<String>,
    /// `--ws-max-size`, in bytes.
    pub ws_max_size: Option<usize>,
    /// `--ws-max-queue`, in messages.
    pub ws_max_queue: Option<usize>,
    /// 0 turns pings off.
    pub ws_ping_interval: Option<f64>,
    /// `--ws-ping-timeout`, in seconds.
    pub ws_ping_timeout: Option<f64>,
    /// `--uds`: a Unix socket path.
    pub uds: Option<std::path::PathBuf>,
    /// `--fd`: an inherited listening socket.
    pub fd: Option<i32>,
    /// `--ssl-certfile`.
    pub ssl_certfile: Option<std::path::PathBuf>,
    /// `--ssl-keyfile`.
    pub ssl_keyfile: Option<std::path::PathBuf>,
    /// `--backlog`.
    pub backlog: Option<i32>,
    /// Sockets a supervisor passed down, one per loop (`--workers` with `SO_REUSEPORT` off).
    pub listen_fds: Option<Vec<i32>>,
    /// `--body-timeout`, in seconds.
    pub body_timeout: Option<f64>,
    /// `--sync-threads`.
    pub sync_threads: Option<usize>,
}

impl Default for Options {
    /// The CLI's defaults: 127.0.0.1:8000, `--loops auto`, `--routing local`, every limit at its default.
    fn default() -> Self {
        Options {
            host: "127.0.0.1".into(),
            port: 8000,
            loops: "auto".into(),
            routing: RoutingPolicy::Local.name().into(),
            max_body_size: None,
            header_timeout: None,
            send_timeout: None,
            max_connections: None,
            max_in_flight: None,
            shutdown_timeout: None,
            access_log: false,
            metrics_port: None,
            metrics_host: None,
            shared_port: false,
            forwarded_allow_ips: None,
            ws_max_size: None,
            ws_max_queue: None,
            ws_ping_interval: None,
            ws_ping_timeout: None,
            uds: None,
            fd: None,
            ssl_certfile: None,
            ssl_keyfile: None,
            backlog: None,
            listen_fds: None,
            body_timeout: None,
            sync_threads: None,
        }
    }
}

/// How long in-flight requests may run after a stop signal when `--shutdown-timeout` is not given.
pub const DEFAULT_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest duration a flag accepts: a year. Beyond it a timer's deadline could overflow the clock.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A duration flag's value: a positive, finite number of seconds, at most `MAX_SECONDS`.
pub fn seconds(value: f64, flag: &'static str) -> Result<std::time::Duration, ConfigError> {
    if value.is_finite() && value > 0.0 && value <= MAX_SECONDS {
        Ok(std::time::Duration::from_secs_f64(value))
    } else {
        Err(ConfigError::BadSeconds { flag, value })
    }
}

/// A count flag's value: at least 1.
pub fn positive(value: usize, flag: &'static str) -> Result<usize, ConfigError> {
    if value > 0 {
        Ok(value)
    } else {
        Err(ConfigError::NotPositive { flag })
    }
}

/// The CPU ids in this process's affinity mask (what `taskset` or a container allows), in order.
pub fn available_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect()
}

/// Everything a user can get wrong in the server's configuration, one kind per check, each naming the flag.
#[derive(Debug)]
pub enum ConfigError {
    /// `--loops 0`.
    ZeroLoops,
    /// `--loops` that is neither `auto` nor a number.
    BadLoopCount(String),
    /// A `--routing` name no policy has.
    BadRoutingPolicy(String),
    /// The affinity mask could not be read.
    NoCores,
    /// A duration flag that is not a positive number of seconds up to `MAX_SECONDS`.
    BadSeconds {
        /// The flag, as the CLI spells it.
        flag: &'static str,
        /// The value given.
        value: f64,
    },
    /// A count flag (`--max-connections`, `--backlog`, ...) that must be at least 1.
    NotPositive {
        /// The flag, as the CLI spells it.
        flag: &'static str,
    },
    /// `--uds` and `--fd` both given.
    UdsAndFd,
    /// `--fd` with a negative number.
    BadFd(i32),
    /// Only one of `--ssl-certfile` and `--ssl-keyfile`.
    TlsNeedsBoth,
    /// The certificate or key cannot serve.
    Tls(crate::tls::TlsError),
    /// A `--forwarded-allow-ips` entry that is not a network.
    TrustedProxies(crate::proxy::BadNetwork),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroLoops => write!(f, "--loops must be at least 1 (or 'auto')"),
            ConfigError::BadLoopCount(text) => {
                write!(
                    f,
                    "--loops expects 'auto' or a positive integer, got {text:?}"
                )
            }
            ConfigError::BadRoutingPolicy(text) => write!(
                f,
                "unknown routing policy {text:?} (expected local, round-robin or least-loaded)"
            ),
            ConfigError::NoCores => write!(f, "could not read this process's CPU affinity mask"),
            ConfigError::BadSeconds { flag, value } => write!(
                f,
                "{flag} must be a positive number of seconds, at most {MAX_SECONDS} (a year), got {value}"
            ),
            ConfigError::NotPositive { flag } => write!(f, "{flag} must be at least 1"),
            ConfigError::UdsAndFd => f.write_str("--uds and --fd are exclusive: pick one"),
            ConfigError::BadFd(fd) => write!(f, "--fd must be a file descriptor, got {fd}"),
            ConfigError::TlsNeedsBoth => {
                f.write_str("HTTPS needs both --ssl-certfile and --ssl-keyfile")
            }
            ConfigError::Tls(err) => err.fmt(f),
            ConfigError::TrustedProxies(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Tls(err) => Some(err),
            ConfigError::TrustedProxies(err) => Some(err),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip() {
        for policy in [
            RoutingPolicy::Local,
            RoutingPolicy::RoundRobin,
            RoutingPolicy::LeastLoaded,
        ] {
            assert_eq!(policy.name().parse::<RoutingPolicy>().unwrap(), policy);
        }
        assert!("fastest".parse::<RoutingPolicy>().is_err());
    }

    #[test]
    fn loop_count_parses_auto_and_numbers() {
        assert_eq!(LoopCount::parse("auto").unwrap(), LoopCount::Auto);
        assert_eq!(LoopCount::parse(" AUTO ").unwrap(), LoopCount::Auto);
        assert_eq!(LoopCount::parse("3").unwrap(), LoopCount::Fixed(3));
        assert!(matches!(
            LoopCount::parse("0").unwrap_err(),
            ConfigError::ZeroLoops
        ));
        assert!(matches!(
            LoopCount::parse("many").unwrap_err(),
            ConfigError::BadLoopCount(_)
        ));
    }

    #[test]
    fn seconds_must_be_positive_finite_and_at_most_a_year() {
        assert_eq!(
            seconds(1.5, "--body-timeout").unwrap(),
            std::time::Duration::from_millis(1500)
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e30] {
            let message = seconds(bad, "--send-timeout").unwrap_err().to_string();
            assert!(
                message.starts_with("--send-timeout must be a positive number of seconds"),
                "{message}"
            );
        }
    }

    #[test]
    fn auto_uses_the_first_cores_of_the_affinity_mask_within_the_cpu_budget() {
        let config = Config::new("127.0.0.1", 0, LoopCount::Auto, RoutingPolicy::Local).unwrap();
        let available = available_cores();
        let budget = config.cpu_budget.clone().unwrap();
        assert_eq!(budget.affinity, available.len());
        assert_eq!(config.cores, available[..budget.cpus()]);
        let fixed = Config::new("127.0.0.1", 0, LoopCount::Fixed(1), RoutingPolicy::Local).unwrap();
        assert_eq!(fixed.cpu_budget, None);
    }

    #[test]
    fn more_loops_than_cores_wrap_around() {
        let available = available_cores();
        let n = available.len() * 2 + 1;
        let config =
            Config::new("127.0.0.1", 0, LoopCount::Fixed(n), RoutingPolicy::Local).unwrap();
        assert_eq!(config.loops(), n);
        assert_eq!(config.cores[available.len()], available[0]);
    }

    fn options() -> Options {
        Options {
            loops: "1".into(),
            port: 0,
            ..Options::default()
        }
    }

    fn rejected(options: Options) -> ConfigError {
        Config::from_options(options).expect_err("invalid options must be rejected")
    }

    #[test]
    fn options_left_out_keep_their_defaults() {
        let config = Config::from_options(options()).unwrap();
        let defaults = Limits::default();
        assert_eq!(config.loops(), 1);
        assert_eq!(config.routing, RoutingPolicy::Local);
        assert_eq!(config.limits.max_body_size, defaults.max_body_size);
        assert_eq!(config.limits.send_timeout, defaults.send_timeout);
        assert_eq!(config.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert_eq!(config.backlog, crate::listener::DEFAULT_BACKLOG);
        assert!(config.socket.is_none() && config.tls.is_none() && config.sync_threads.is_none());
    }

    #[test]
    fn options_given_are_applied() {
        let config = Config::from_options(Options {
            routing: "least-loaded".into(),
            max_body_size: Some(10),
            header_timeout: Some(1.5),
            max_connections: Some(7),
            max_in_flight: Some(8),
            ws_ping_interval: Some(0.0),
            backlog: Some(16),
            sync_threads: Some(3),
            forwarded_allow_ips: Some("10.0.0.0/8".into()),
            fd: Some(3),
            ..options()
        })
        .unwrap();
        assert_eq!(config.routing, RoutingPolicy::LeastLoaded);
        assert_eq!(config.limits.max_body_size, 10);
        assert_eq!(
            config.limits.header_timeout,
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(config.limits.max_connections_per_loop, 7);
        assert_eq!(config.limits.max_in_flight_per_loop, 8);
        // 0 turns the pings off rather than being rejected as a duration.
        assert_eq!(config.limits.websocket_ping_interval, None);
        assert_eq!(config.backlog, 16);
        assert_eq!(config.sync_threads, Some(3));
        assert!(config.trusted_proxies.is_some());
        assert!(matches!(
            config.socket,
            Some(crate::listener::SocketSource::Fd(3))
        ));
    }

    #[test]
    fn loops_and_routing_are_checked() {
        assert!(matches!(
            rejected(Options {
                loops: "0".into(),
                ..options()
            }),
            ConfigError::ZeroLoops
        ));
        assert!(matches!(
            rejected(Options {
                loops: "many".into(),
                ..options()
            }),
            ConfigError::BadLoopCount(_)
        ));
        assert!(matches!(
            rejected(Options {
                routing: "fastest".into(),
                ..options()
            }),
            ConfigError::BadRoutingPolicy(_)
        ));
    }

    #[test]
    fn every_duration_flag_must_be_a_positive_number_of_seconds() {
        type Set = fn(&mut Options, f64);
        let flags: [(&str, Set); 6] = [
            ("--header-timeout", |o, v| o.header_timeout = Some(v)),
            ("--send-timeout", |o, v| o.send_timeout = Some(v)),
            ("--shutdown-timeout", |o, v| o.shutdown_timeout = Some(v)),
            ("--ws-ping-interval", |o, v| o.ws_ping_interval = Some(v)),
            ("--ws-ping-timeout", |o, v| o.ws_ping_timeout = Some(v)),
            ("--body-timeout", |o, v| o.body_timeout = Some(v)),
        ];
        for (flag, set) in flags {
            for bad in [-1.0, f64::NAN, f64::INFINITY, 1e30] {
                let mut options = options();
                set(&mut options, bad);
                match rejected(options) {
                    ConfigError::BadSeconds { flag: named, .. } => assert_eq!(named, flag),
                    other => panic!("{flag}={bad}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn every_count_flag_must_be_at_least_one() {
        type Set = fn(&mut Options);
        let flags: [(&str, Set); 6] = [
            ("--max-connections", |o| o.max_connections = Some(0)),
            ("--max-in-flight", |o| o.max_in_flight = Some(0)),
            ("--sync-threads", |o| o.sync_threads = Some(0)),
            ("--ws-max-size", |o| o.ws_max_size = Some(0)),
            ("--ws-max-queue", |o| o.ws_max_queue = Some(0)),
            ("--backlog", |o| o.backlog = Some(-5)),
        ];
        for (flag, set) in flags {
            let mut options = options();
            set(&mut options);
            let err = rejected(options);
            assert!(matches!(err, ConfigError::NotPositive { flag: named } if named == flag));
            assert_eq!(err.to_string(), format!("{flag} must be at least 1"));
        }
    }

    #[test]
    fn a_socket_is_a_path_or_a_descriptor_not_both() {
        let err = rejected(Options {
            uds: Some("/tmp/percore.sock".into()),
            fd: Some(3),
            ..options()
        });
        assert!(matches!(err, ConfigError::UdsAndFd));
        assert_eq!(err.to_string(), "--uds and --fd are exclusive: pick one");
        let err = rejected(Options {
            fd: Some(-1),
            ..options()
        });
        assert!(matches!(err, ConfigError::BadFd(-1)));
        assert_eq!(err.to_string(), "--fd must be a file descriptor, got -1");
    }

    #[test]
    fn https_needs_a_certificate_and_its_key() {
        for (certfile, keyfile) in [(Some("cert.pem"), None), (None, Some("key.pem"))] {
            let err = rejected(Options {
                ssl_certfile: certfile.map(Into::into),
                ssl_keyfile: keyfile.map(Into::into),
                ..options()
            });
            assert!(matches!(err, ConfigError::TlsNeedsBoth));
        }
        let missing = "/nonexistent/percore-test-cert.pem";
        let err = rejected(Options {
            ssl_certfile: Some(missing.into()),
            ssl_keyfile: Some(missing.into()),
            ..options()
        });
        assert!(matches!(err, ConfigError::Tls(_)), "{err:?}");
        assert!(err.to_string().contains(missing), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn trusted_proxies_must_be_networks() {
        let err = rejected(Options {
            forwarded_allow_ips: Some("10.0.0.0/99".into()),
            ..options()
        });
        assert!(matches!(err, ConfigError::TrustedProxies(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("--forwarded-allow-ips:"),
            "{err}"
        );
    }
}
