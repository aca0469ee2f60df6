//! percore's Rust core: a thread-per-core pool of pinned loops, each with its own Hyper acceptor and
//! executor, routing requests `local`, `round-robin` or `least-loaded` across loops.
//!
//! Everything outside `python/` is plain Rust (testable with `cargo test --no-default-features`); the
//! PyO3 bridge in `python/` is the only place that knows about Python.
//!
//! The plain-Rust layers import one way, downwards (docs/architecture.md has the map and the rules):
//! `pool` (threads) → `server` (hyper connections) → `dispatch` (which loop runs a request) → `executor`
//! (the trait an app runtime implements) → `exchange` (request and response types), over leaf modules
//! that import none of those (`config`, `routing`, `router`, `listener`, `tls`, `proxy`, `deadline`,
//! `metrics`, `access_log`, `query`, `cpu_budget`, `sys`); `websocket` (the frame pump) and
//! `static_files` sit over `exchange` only. `scripts/rust-layers.py` checks there is no cycle.
//!
//! `unsafe` is denied except in `sys` (plain Rust's OS calls), `event_loop` (the event loop's) and
//! `python/ffi.rs` (the bridge's).

#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub mod access_log;
pub mod config;
pub mod cpu_budget;
pub mod deadline;
pub mod dispatch;
pub mod event_loop;
pub mod exchange;
pub mod executor;
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
mod sys;
pub mod tls;
pub mod websocket;

#[cfg(feature = "python")]
mod python;

// mimalloc only in the extension build: the allocator is a property of the shipped module, and plain
// `cargo test` exercises the same code on the system allocator.
#[cfg(feature = "python")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
