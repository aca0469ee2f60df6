//! Server configuration: what the CLI resolved (address, loop count, cores, routing policy) in plain Rust.
//!
//! Invariant: a `Config` that exists is valid — at least one loop, one core per loop, a known policy.
//! Everything the user can get wrong is reported as a `ConfigError` before any thread or socket exists.

use std::fmt;

use crate::routing::RoutingPolicy;

/// How many loops to run: one per core in the process's affinity mask, or an explicit count.
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

#[derive(Clone, Debug)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub routing: RoutingPolicy,
    /// The core each loop is pinned to; its length is the loop count. More loops than cores wrap around.
    pub cores: Vec<usize>,
    /// How long in-flight requests may run after a stop signal before their connections are dropped.
    pub shutdown_timeout: std::time::Duration,
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
        let count = match loops {
            LoopCount::Auto => available.len(),
            LoopCount::Fixed(0) => return Err(ConfigError::ZeroLoops),
            LoopCount::Fixed(n) => n,
        };
        let cores = (0..count).map(|i| available[i % available.len()]).collect();
        Ok(Config {
            host: host.to_owned(),
            port,
            routing,
            cores,
            shutdown_timeout: std::time::Duration::from_secs(5),
        })
    }

    pub fn loops(&self) -> usize {
        self.cores.len()
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    ZeroLoops,
    BadLoopCount(String),
    BadRoutingPolicy(String),
    NoCores,
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
    fn auto_uses_every_core_in_the_affinity_mask() {
        let config = Config::new("127.0.0.1", 0, LoopCount::Auto, RoutingPolicy::Local).unwrap();
        assert_eq!(config.cores, available_cores());
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
