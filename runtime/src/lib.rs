//! percore's Rust core: a thread-per-core pool of pinned loops, each with its own Hyper acceptor and
//! executor, routing requests `local`, `round-robin` or `least-loaded` across loops.
//!
//! Everything outside `python/` is plain Rust (testable with `cargo test --no-default-features`); the
//! PyO3 bridge in `python/` is the only place that knows about Python.

pub mod access_log;
pub mod config;
pub mod cpu_budget;
pub mod deadline;
pub mod event_loop;
pub mod forms;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod query;
pub mod router;
pub mod routing;
pub mod server;
pub mod static_files;
pub mod tls;
pub mod websocket;

#[cfg(feature = "python")]
mod python;

// mimalloc only in the extension build: the allocator is a property of the shipped module, and plain
// `cargo test` exercises the same code on the system allocator.
#[cfg(feature = "python")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
