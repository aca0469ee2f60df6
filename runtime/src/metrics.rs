//! Metrics: counters the request path bumps on every request, and their Prometheus text exposition on
//! `--metrics-port`, served by a thread of its own so a scrape never waits behind (or delays) a loop.
//!
//! Invariants:
//! - Each loop's counters live on their own cache lines and are written only by that loop's thread
//!   (relaxed atomics): counting never makes loops share a written line, which measurably costs
//!   scaling on 3.13t (see docs/experiments.md on shared state).
//! - Gauges that already exist elsewhere (in-flight per loop in `routing::LoadTable`, the hand-off
//!   queues) are read at scrape time, not duplicated.
//! - A scrape reads each counter once; totals may be a few requests apart from each other (a histogram's
//!   `_count` vs the request counter) but every counter only grows.
//! - The exporter is small and bounded: it binds loopback unless told otherwise (`DEFAULT_HOST`), serves
//!   at most `MAX_CONNECTIONS` connections at once, one request each, for at most
//!   `CONNECTION_DEADLINE`, so idle or slow clients cannot pile up sockets or memory on it.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Semaphore};

use crate::listener::{BindError, BindErrorKind};

/// Upper bounds of the latency histogram, in microseconds (Prometheus `le` in seconds).
/// From 100 µs (a native endpoint's whole cost) to 10 s (a slow upstream), roughly ×2.5 apart.
const LATENCY_BOUNDS_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One loop's counters. Aligned so no two loops' counters share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct LoopMetrics {
    responses: [AtomicU64; 5],
    /// Non-cumulative: bucket `i` counts latencies in (bound[i-1], bound[i]]; the last one is +Inf.
    latency_buckets: [AtomicU64; LATENCY_BOUNDS_MICROS.len() + 1],
    latency_sum_micros: AtomicU64,
    open_connections: AtomicI64,
    accepted_connections: AtomicU64,
    /// Connections hyper ended with an error: malformed requests (400/431 written by hyper itself),
    /// header-read timeouts, resets.
    connection_errors: AtomicU64,
}

impl LoopMetrics {
    /// Records a response: its status class, and the time from the request head to the response head.
    pub fn observe(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(LATENCY_BOUNDS_MICROS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.accepted_connections.fetch_add(1, Ordering::Relaxed);
        self.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, failed: bool) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
        if failed {
            self.connection_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Responses counted so far, all classes.
    pub fn responses(&self) -> u64 {
        self.responses
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Values read at scrape time from the parts of the runtime that own them.
pub struct Gauges {
    /// Requests running per loop (`routing::LoadTable`).
    pub in_flight: Vec<usize>,
    /// Jobs waiting in each loop's hand-off channel.
    pub queued: Vec<usize>,
}

/// Extra process-level lines (for Python: whether the GIL is enabled), appended to every scrape.
pub type ExtraMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Every loop's counters, shared by the loops and the metrics thread.
pub struct Metrics {
    loops: Box<[LoopMetrics]>,
    started: Instant,
}

impl Metrics {
    pub fn new(loops: usize) -> Arc<Self> {
        Arc::new(Metrics {
            loops: (0..loops).map(|_| LoopMetrics::default()).collect(),
            started: Instant::now(),
        })
    }

    pub fn of_loop(&self, index: usize) -> &LoopMetrics {
        &self.loops[index]
    }

    /// Responses sent by every loop so far (`--limit-max-requests` counts these).
    pub fn responses(&self) -> u64 {
        self.loops.iter().map(LoopMetrics::responses).sum()
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self, gauges: &Gauges, extra: Option<&ExtraMetrics>) -> String {
        let mut out = String::with_capacity(4096 + 2048 * self.loops.len());
        let loops = self.loops.iter().enumerate();
        header(
            &mut out,
            "percore_requests_total",
            "counter",
            "Responses sent, by loop (the loop that read the request) and status class.",
        );
        for (index, m) in loops.clone() {
            for (class, counter) in STATUS_CLASSES.iter().zip(&m.responses) {
                let value = counter.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "percore_requests_total{{loop=\"{index}\",status=\"{class}\"}} {value}"
                );
            }
        }
        header(
            &mut out,
            "percore_request_duration_seconds",
            "histogram",
            "Time from the request head to the response head, by loop.",
        );
        for (index, m) in loops.clone() {
            let mut cumulative = 0u64;
            for (i, bucket) in m.latency_buckets.iter().enumerate() {
                cumulative += bucket.load(Ordering::Relaxed);
                let le = match LATENCY_BOUNDS_MICROS.get(i) {
                    Some(&micros) => format_seconds(micros),
                    None => "+Inf".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "percore_request_duration_seconds_bucket{{loop=\"{index}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = m.latency_sum_micros.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "percore_request_duration_seconds_sum{{loop=\"{index}\"}} {}",
                format_seconds(sum)
            );
            let _ = writeln!(
                out,
                "percore_request_duration_seconds_count{{loop=\"{index}\"}} {cumulative}"
            );
        }
        gauge_per_loop(
            &mut out,
            "percore_in_flight_requests",
            "Requests running on the loop now (including ones handed to it by other loops).",
            gauges.in_flight.iter().map(|&v| v as i64),
        );
        gauge_per_loop(
            &mut out,
            "percore_handoff_queue_depth",
            "Requests handed to the loop by other loops and not yet started.",
            gauges.queued.iter().map(|&v| v as i64),
        );
        gauge_per_loop(
            &mut out,
            "percore_open_connections",
            "HTTP connections open on the loop.",
            self.loops
                .iter()
                .map(|m| m.open_connections.load(Ordering::Relaxed)),
        );
        header(
            &mut out,
            "percore_connections_total",
            "counter",
            "Connections accepted by the loop.",
        );
        for (index, m) in loops.clone() {
            let value = m.accepted_connections.load(Ordering::Relaxed);
            let _ = writeln!(out, "percore_connections_total{{loop=\"{index}\"}} {value}");
        }
        header(
            &mut out,
            "percore_connection_errors_total",
            "counter",
            "Connections ended by a protocol error (malformed request, header too large, header timeout), a send timeout or a reset.",
        );
        for (index, m) in loops {
            let value = m.connection_errors.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "percore_connection_errors_total{{loop=\"{index}\"}} {value}"
            );
        }
        header(&mut out, "percore_loops", "gauge", "Loops in the pool.");
        let _ = writeln!(out, "percore_loops {}", self.loops.len());
        header(
            &mut out,
            "percore_uptime_seconds",
            "gauge",
            "Seconds since the pool started.",
        );
        let _ = writeln!(
            out,
            "percore_uptime_seconds {:.3}",
            self.started.elapsed().as_secs_f64()
        );
        header(
            &mut out,
            "percore_access_log_dropped_lines_total",
            "counter",
            "Access-log lines dropped because stderr fell too far behind (--access-log).",
        );
        let _ = writeln!(
            out,
            "percore_access_log_dropped_lines_total {}",
            crate::access_log::dropped_lines()
        );
        if let Some(bytes) = resident_memory_bytes() {
            header(
                &mut out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
            );
            let _ = writeln!(out, "process_resident_memory_bytes {bytes}");
        }
        if let Some(extra) = extra {
            extra(&mut out);
        }
        out
    }
}

pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge_per_loop(out: &mut String, name: &str, help: &str, values: impl Iterator<Item = i64>) {
    header(out, name, "gauge", help);
    for (index, value) in values.enumerate() {
        let _ = writeln!(out, "{name}{{loop=\"{index}\"}} {value}");
    }
}

fn format_seconds(micros: u64) -> String {
    let text = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Resident set size from /proc/self/statm (Linux); None elsewhere.
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * crate::sys::page_size()?)
}

/// Where the metrics port listens without `--metrics-host`: loopback, whatever `--host` is, so serving
/// the app on `0.0.0.0` does not publish its metrics too.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// Binds the metrics listener (before any loop starts, so a busy port fails the start cleanly).
///
/// `shared`: a `--workers` worker, whose successor (`--reload` starts the next generation before the
/// old one stops) must be able to bind the same port while it still runs, so SO_REUSEPORT is set.
pub fn bind(host: &str, port: u16, shared: bool) -> Result<std::net::TcpListener, BindError> {
    let failed = |e: std::io::Error| {
        let host = host.to_owned();
        if e.kind() == std::io::ErrorKind::AddrInUse {
            BindError::new(BindErrorKind::MetricsInUse { host, port }, e)
        } else {
            BindError::new(BindErrorKind::MetricsListen { host, port }, e)
        }
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(failed)?
        .next()
        .ok_or_else(|| BindErrorKind::NoAddress { host: host.into() })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(failed)?;
    socket.set_reuse_address(true).map_err(failed)?;
    if shared {
        socket.set_reuse_port(true).map_err(failed)?;
    }
    socket.bind(&addr.into()).map_err(failed)?;
    socket.listen(128).map_err(failed)?;
    socket.set_nonblocking(true).map_err(failed)?;
    Ok(socket.into())
}

/// Connections the metrics port serves at once; further ones wait in the listen backlog until one of
/// these ends (within `CONNECTION_DEADLINE`), so a burst of idle connections only delays a scrape.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a metrics connection may stay open, idle or not: one request is read and answered, then the
/// connection is closed (a scraper opens one per scrape; the body is rendered in well under a second).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` from a thread of its own until `stop` turns true: at most
/// `MAX_CONNECTIONS` at once, each for one request and at most `CONNECTION_DEADLINE`.
pub fn spawn_exporter(
    listener: std::net::TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("percore-metrics".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
                loop {
                    // A slot first, then the accept: connections past the cap stay in the kernel's
                    // backlog instead of being accepted and held.
                    let slot = tokio::select! {
                        slot = Arc::clone(&slots).acquire_owned() => slot,
                        _ = stop.wait_for(|stopped| *stopped) => return,
                    };
                    let Ok(slot) = slot else { return };
                    let accepted = tokio::select! {
                        accepted = listener.accept() => accepted,
                        _ = stop.wait_for(|stopped| *stopped) => return,
                    };
                    let Ok((stream, _)) = accepted else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let render = Arc::clone(&render);
                    tokio::spawn(async move {
                        let service = service_fn(move |request: hyper::Request<_>| {
                            let response = respond(&request, &*render);
                            async move { Ok::<_, Infallible>(response) }
                        });
                        let _ = tokio::time::timeout(
                            CONNECTION_DEADLINE,
                            hyper::server::conn::http1::Builder::new()
                                .keep_alive(false)
                                .serve_connection(TokioIo::new(stream), service),
                        )
                        .await;
                        drop(slot);
                    });
                }
            });
        })
}

fn respond<B>(
    request: &hyper::Request<B>,
    render: &(dyn Fn() -> String + Send + Sync),
) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(render()),
        ),
        (_, "/metrics") => (
            405,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"Method Not Allowed"),
        ),
        _ => (
            404,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"Not Found: metrics are at /metrics"),
        ),
    };
    let mut response = hyper::Response::new(Full::new(body));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// The address a bound metrics listener ended up on (port 0 picks one).
pub fn local_addr(listener: &std::net::TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counted() {
        let metrics = Metrics::new(2);
        let m = metrics.of_loop(1);
        m.observe(200, Duration::from_micros(80));
        m.observe(404, Duration::from_micros(3_000));
        m.observe(503, Duration::from_secs(20));
        let text = metrics.render(
            &Gauges {
                in_flight: vec![0, 2],
                queued: vec![1, 0],
            },
            None,
        );
        assert!(text.contains("percore_requests_total{loop=\"1\",status=\"2xx\"} 1\n"));
        assert!(text.contains("percore_requests_total{loop=\"1\",status=\"4xx\"} 1\n"));
        assert!(text.contains("percore_requests_total{loop=\"1\",status=\"5xx\"} 1\n"));
        assert!(text.contains("percore_requests_total{loop=\"0\",status=\"2xx\"} 0\n"));
        assert!(
            text.contains("percore_request_duration_seconds_bucket{loop=\"1\",le=\"0.0001\"} 1\n")
        );
        assert!(
            text.contains("percore_request_duration_seconds_bucket{loop=\"1\",le=\"0.005\"} 2\n")
        );
        assert!(text.contains("percore_request_duration_seconds_bucket{loop=\"1\",le=\"10\"} 2\n"));
        assert!(
            text.contains("percore_request_duration_seconds_bucket{loop=\"1\",le=\"+Inf\"} 3\n")
        );
        assert!(text.contains("percore_request_duration_seconds_count{loop=\"1\"} 3\n"));
        assert!(text.contains("percore_request_duration_seconds_sum{loop=\"1\"} 20.00308\n"));
        assert!(text.contains("percore_in_flight_requests{loop=\"1\"} 2\n"));
        assert!(text.contains("percore_handoff_queue_depth{loop=\"0\"} 1\n"));
        assert!(text.contains("percore_loops 2\n"));
    }

    #[test]
    fn every_sample_line_is_a_declared_metric() {
        let metrics = Metrics::new(1);
        metrics.of_loop(0).connection_opened();
        metrics.of_loop(0).connection_closed(true);
        let text = metrics.render(
            &Gauges {
                in_flight: vec![0],
                queued: vec![0],
            },
            None,
        );
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split_whitespace().next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    declared.iter().any(|d| name == d
                        || name.strip_prefix(d.as_str()).is_some_and(|suffix| {
                            ["_bucket", "_sum", "_count"].contains(&suffix)
                        })),
                    "undeclared sample {line:?}"
                );
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
            }
        }
        assert!(text.contains("percore_connection_errors_total{loop=\"0\"} 1\n"));
        assert!(text.contains("percore_open_connections{loop=\"0\"} 0\n"));
        assert!(text.contains("percore_connections_total{loop=\"0\"} 1\n"));
    }

    #[test]
    fn seconds_are_formatted_without_trailing_zeros() {
        assert_eq!(format_seconds(100), "0.0001");
        assert_eq!(format_seconds(1_000_000), "1");
        assert_eq!(format_seconds(2_500_000), "2.5");
    }
}
