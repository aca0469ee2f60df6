//! Server configuration: what the CLI resolved (address, loop count, cores, routing policy) in plain Rust.
//! `--loops auto` is one loop per CPU of the process's budget: its affinity mask capped by its cgroup's
//! CPU quota (`cpu_budget`).
//!
//! Invariant: a `Config` that exists is valid — at least one loop, one core per loop, a known policy.
//! Everything the user can get wrong is reported as a `ConfigError` before any thread or socket exists.

use std::fmt;

use crate::routing::RoutingPolicy;

/// How many loops to run: one per CPU the process may use (affinity mask capped by the cgroup CPU quota,
/// see `cpu_budget`), or an explicit count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopCount {
    Auto,
    Fixed(usize),
}

impl LoopCount {
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
pub struct Config {
    /// TCP address to listen on, unless `socket` says otherwise.
    pub host: String,
    pub port: u16,
    /// A Unix socket path (`--uds`) or an inherited socket (`--fd`) instead of `host:port`.
    pub socket: Option<crate::listener::SocketSource>,
    /// Pending connections each listening socket queues (`--backlog`).
    pub backlog: i32,
    pub routing: RoutingPolicy,
    /// The core each loop is pinned to; its length is the loop count. More loops than cores wrap around.
    pub cores: Vec<usize>,
    /// With `--loops auto`: the CPU budget that chose the count (its Display says why, for the banner).
    pub cpu_budget: Option<crate::cpu_budget::CpuBudget>,
    /// How long in-flight requests may run after a stop signal before their connections are dropped.
    pub shutdown_timeout: std::time::Duration,
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
}

impl Config {
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
            shutdown_timeout: std::time::Duration::from_secs(5),
            limits: Limits::default(),
            access_log: false,
            shared_port: false,
            metrics_port: None,
            metrics_host: None,
            trusted_proxies: None,
            tls: None,
        })
    }

    pub fn loops(&self) -> usize {
        self.cores.len()
    }
}

/// The longest duration a flag accepts: a year. Beyond it a timer's deadline could overflow the clock.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A duration flag's value: a positive, finite number of seconds, at most `MAX_SECONDS`.
pub fn seconds(value: f64, flag: &str) -> Result<std::time::Duration, ConfigError> {
    if value.is_finite() && value > 0.0 && value <= MAX_SECONDS {
        Ok(std::time::Duration::from_secs_f64(value))
    } else {
        Err(ConfigError::BadSeconds {
            flag: flag.to_owned(),
            value,
        })
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

#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    ZeroLoops,
    BadLoopCount(String),
    BadRoutingPolicy(String),
    NoCores,
    BadSeconds { flag: String, value: f64 },
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
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_count_parses_auto_and_numbers() {
        assert_eq!(LoopCount::parse("auto").unwrap(), LoopCount::Auto);
        assert_eq!(LoopCount::parse(" AUTO ").unwrap(), LoopCount::Auto);
        assert_eq!(LoopCount::parse("3").unwrap(), LoopCount::Fixed(3));
        assert_eq!(LoopCount::parse("0").unwrap_err(), ConfigError::ZeroLoops);
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
}
