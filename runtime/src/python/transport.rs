//! The hot paths of `percore._transport.SocketTransport` (asyncio's `_SelectorSocketTransport` on
//! percore's loop): reading into a `data_received` protocol, and the first `send` of a `write`.
//!
//! A database driver that talks through a transport (asyncpg) runs both on every query; in asyncio
//! they are three Python frames and a 256 KiB `bytes` allocated and shrunk per read, where uvloop's
//! transport is C (asyncpg, GIL build: uvicorn + uvloop was 1.13x / 1.28x ahead on `/db` / `/queries`,
//! with the same system calls per query).
//!
//! Invariants:
//! - Semantics are asyncio's `_read_ready__data_received` and `write`, line for line (but for a
//!   `max_size` set on one transport after it was made, which is not seen); every case off
//!   the hot path (a buffered protocol, a closed or closing transport, data already buffered, a partial
//!   or failed send, a `write_eof`, sendfile in progress, a type `send` does not take) is handed to
//!   asyncio's own Python code with the transport's state untouched, so it decides as it always did.
//! - A failed `send` sent nothing, so asyncio's `write` retrying it sees the same error and handles it.
//! - A small write made while the reactor runs an iteration's callbacks is queued (in asyncio's own
//!   `_buffer`, so asyncio's code sees it as buffered data) and sent by `socket_flush` once they are
//!   done (`Reactor::after_callbacks`), as uvloop queues its writes: a burst of database queries then
//!   leaves back to back instead of one per task step, and the database's core is woken once per
//!   burst (asyncpg `/queries?n=20`: inter-processor interrupts per request 8.8 -> ~4, uvloop's
//!   count; docs/event-loop.md, "Queued writes"). `SocketIo::queued` counts the queued bytes. Between
//!   the write and the flush the buffer is non-empty with no writer registered; every iteration that
//!   ran callbacks ends with the flush, which restores asyncio's invariant (and removes a writer left
//!   for an emptied buffer).
//! - What the hot paths would otherwise read from the transport's attributes on every call is kept in
//!   its `SocketIo` (descriptor, the protocol, the high-water mark, `write_eof` and sendfile, the
//!   queued byte count; `max_size` as it was when the transport was made). Each attribute read is a
//!   type lookup and a dict lookup, ~190 instructions: callgrind counted ~25 of them per asyncpg
//!   query, 4% of all instructions of `/queries?n=20`. `percore._transport.SocketTransport` keeps it
//!   true by overriding the methods that change those (`set_protocol`, `_set_write_buffer_limits`,
//!   `write_eof`, `_make_empty_waiter`, `_reset_empty_waiter`); what asyncio changes inline in many
//!   places (`_conn_lost`, `_closing`, `_buffer`) is still read from the transport. Once the
//!   connection is lost the state is dead (`clear`): a `write` kept from before goes to asyncio's own
//!   code, never to the descriptor number, which the kernel may have given to another socket.
//! - Writes are queued only where asyncio's `_buffer` is a deque of buffers (3.12+); on 3.11 it is a
//!   `bytearray` and every write is sent at once, as before queued writes existed.
//! - The read buffer is per thread (each loop thread reads its own sockets) and is not borrowed while
//!   Python runs (`data_received` gets a copy).

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use pyo3::exceptions::PyOSError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PySlice};
use pyo3::{PyTraverseError, PyVisit};

use super::event_loop::{leaves_the_loop, Reactor};
use super::ffi::with_contiguous_bytes;
use crate::event_loop::{recv, send};

thread_local! {
    /// Where reads land before the copy into a `bytes` of the right size (grown to `max_size`).
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `OSError(errno, strerror)`: Python picks the subclass (`ConnectionResetError`, ...) and sets `errno`,
/// as `socket.recv` would have raised.
fn os_error(err: &std::io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => {
            PyOSError::new_err((errno, std::io::Error::from_raw_os_error(errno).to_string()))
        }
        None => PyOSError::new_err(err.to_string()),
    }
}

/// `SystemExit` and `KeyboardInterrupt` propagate; anything else is the transport's fatal error.
fn fatal(transport: &Bound<'_, PyAny>, err: PyErr, message: &str) -> PyResult<()> {
    let py = transport.py();
    if leaves_the_loop(py, &err) {
        return Err(err);
    }
    transport.call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))?;
    Ok(())
}

/// A socket transport's state for its Rust hot paths (see the module's invariants); one per
/// transport, made by `SocketTransport.__init__` before asyncio's (which sets the protocol).
#[pyclass(module = "percore._runtime", frozen)]
pub(crate) struct SocketIo {
    reactor: Py<Reactor>,
    fd: RawFd,
    /// asyncio's `max_size`: at most this much per `recv`.
    max_size: usize,
    /// Whether small writes may be queued (asyncio's `_buffer` is a deque: 3.12+).
    queues: bool,
    /// Bytes in `_buffer` queued by `socket_write` in this iteration (not left by a full socket).
    queued: AtomicUsize,
    /// asyncio's `_high_water`.
    high_water: AtomicUsize,
    /// asyncio's `_eof` (`write_eof` was called).
    eof: AtomicBool,
    /// asyncio's `_empty_waiter is not None` (a sendfile is in progress).
    sendfile: AtomicBool,
    /// The protocol, when it is read with `data_received` (looked up on every read, as asyncio
    /// does: a protocol may rebind it, in `connection_made` say); None for a buffered protocol:
    /// then asyncio's own reader runs.
    protocol: Mutex<Option<Py<PyAny>>>,
    /// The connection is lost (`clear`): every path hands over to asyncio's code.
    lost: AtomicBool,
    /// `socket_flush` bound to the transport and this state, queued after the iteration's callbacks
    /// when a write is queued; None once the connection is lost.
    flush: Mutex<Option<Py<PyAny>>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SocketIo {
    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        locked(&self.protocol)
            .as_ref()
            .map(|protocol| protocol.clone_ref(py))
    }

    fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    fn flush(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        locked(&self.flush)
            .as_ref()
            .map(|flush| flush.clone_ref(py))
    }
}

#[pymethods]
impl SocketIo {
    #[new]
    fn new(reactor: Py<Reactor>, fd: RawFd, max_size: usize, queues: bool) -> Self {
        Self {
            reactor,
            fd,
            max_size: max_size.max(1),
            queues,
            queued: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
            eof: AtomicBool::new(false),
            sendfile: AtomicBool::new(false),
            protocol: Mutex::new(None),
            lost: AtomicBool::new(false),
            flush: Mutex::new(None),
        }
    }

    /// The new protocol if it reads with `data_received`, None to leave reading to asyncio (a
    /// buffered protocol).
    fn set_protocol(&self, protocol: Option<Py<PyAny>>) {
        let old = std::mem::replace(&mut *locked(&self.protocol), protocol);
        drop(old); // after the lock: a finalizer may run
    }

    fn set_flush(&self, flush: Option<Py<PyAny>>) {
        let old = std::mem::replace(&mut *locked(&self.flush), flush);
        drop(old);
    }

    fn set_high_water(&self, high_water: usize) {
        self.high_water.store(high_water, Ordering::Relaxed);
    }

    fn set_eof(&self, eof: bool) {
        self.eof.store(eof, Ordering::Relaxed);
    }

    fn set_sendfile(&self, in_progress: bool) {
        self.sendfile.store(in_progress, Ordering::Relaxed);
    }

    /// The queued byte count, reset to 0 (`writelines` sends the whole buffer; `abort` the queue).
    fn take_queued(&self) -> usize {
        self.queued.swap(0, Ordering::Relaxed)
    }

    /// The connection is lost: the state is dead, and drops its references back to the transport.
    fn clear(&self) {
        self.lost.store(true, Ordering::Release);
        self.__clear__();
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.reactor)?;
        // Never block in the collector: a busy lock only delays collection.
        if let Ok(protocol) = self.protocol.try_lock() {
            visit.call(&*protocol)?;
        }
        if let Ok(flush) = self.flush.try_lock() {
            visit.call(&*flush)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = (locked(&self.protocol).take(), locked(&self.flush).take());
        drop(taken);
    }
}

/// The transport's reader callback (asyncio's `_read_ready`).
#[pyfunction]
pub(super) fn socket_read_ready(
    transport: &Bound<'_, PyAny>,
    io: &Bound<'_, SocketIo>,
) -> PyResult<()> {
    let py = transport.py();
    if transport.getattr(intern!(py, "_conn_lost"))?.is_truthy()? {
        return Ok(());
    }
    let io = io.get();
    if io.lost() {
        // A reader callback kept from before the end: asyncio's reader was removed with it.
        return Ok(());
    }
    let Some(protocol) = io.protocol(py) else {
        // A buffered protocol: asyncio's get_buffer path.
        transport.getattr(intern!(py, "_read_ready_cb"))?.call0()?;
        return Ok(());
    };
    let read = READ_BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        if buffer.len() < io.max_size {
            buffer.resize(io.max_size, 0);
        }
        recv(io.fd, &mut buffer[..io.max_size]).map(|n| PyBytes::new(py, &buffer[..n]))
    });
    let data = match read {
        Ok(data) => data,
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) =>
        {
            return Ok(());
        }
        Err(err) => {
            return fatal(
                transport,
                os_error(&err),
                "Fatal read error on socket transport",
            )
        }
    };
    if data.as_bytes().is_empty() {
        transport.call_method0(intern!(py, "_read_ready__on_eof"))?;
        return Ok(());
    }
    match protocol
        .bind(py)
        .call_method1(intern!(py, "data_received"), (data,))
    {
        Ok(_) => Ok(()),
        Err(err) => fatal(
            transport,
            err,
            "Fatal error: protocol.data_received() call failed.",
        ),
    }
}

/// Writes up to this size made while the loop runs callbacks are queued and sent after them (see
/// `Reactor::after_callbacks`); larger ones gain nothing from waiting.
const QUEUED_WRITE_MAX: usize = 16 * 1024;

/// The transport's `write`: when nothing is buffered and nothing special is going on, queued until
/// the iteration's callbacks are done if it is small and made while they run, else sent at once;
/// otherwise (or for what the socket did not take) asyncio's `write`.
#[pyfunction]
pub(super) fn socket_write(
    transport: &Bound<'_, PyAny>,
    io: &Bound<'_, SocketIo>,
    data: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = transport.py();
    let io = io.get();
    // asyncio takes these three types only (TypeError otherwise, from its own `write`).
    let fine = !io.lost()
        && (data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        && !io.eof.load(Ordering::Relaxed)
        && !io.sendfile.load(Ordering::Relaxed)
        && !transport.getattr(intern!(py, "_conn_lost"))?.is_truthy()?;
    if !fine {
        transport.call_method1(intern!(py, "_python_write"), (data,))?;
        return Ok(());
    }
    let buffer = transport.getattr(intern!(py, "_buffer"))?;
    let queued = io.queued.load(Ordering::Relaxed);
    let in_callbacks = io.reactor.get().running_callbacks();
    if queued > 0 && !in_callbacks {
        // Another thread (or the loop outside its callbacks) behind a queued write: asyncio's
        // write buffers it behind the queue, and the pending flush sends both.
        transport.call_method1(intern!(py, "_python_write"), (data,))?;
        return Ok(());
    }
    if queued > 0 {
        // Behind a write queued in this iteration: for asyncio both had been sent at once. It joins
        // the queue (`owned_bytes`), and, as asyncio's `write` does with
        // what it buffers, the protocol is paused at once if that is more than the high-water mark
        // (so `write(big); await drain()` waits for the flush). Empty: nothing, as in asyncio.
        match owned_bytes(data, usize::MAX) {
            Some(Some((owned, len))) => {
                buffer.call_method1(intern!(py, "append"), (owned,))?;
                io.queued.store(queued + len, Ordering::Relaxed);
                if queued + len > io.high_water.load(Ordering::Relaxed) {
                    transport.call_method0(intern!(py, "_maybe_pause_protocol"))?;
                }
                return Ok(());
            }
            Some(None) => return Ok(()),
            // Not a contiguous buffer: asyncio's write decides.
            None => {}
        }
    }
    let quiet = !buffer.is_truthy()?;
    if quiet && io.queues && in_callbacks {
        // Into asyncio's own buffer (so `get_write_buffer_size`, `close`, `write_eof` and a second
        // write see it), as a `bytes` copy: the caller may reuse its buffer once `write` returns. No
        // flow control to apply: at most QUEUED_WRITE_MAX and the high-water mark.
        let limit = QUEUED_WRITE_MAX.min(io.high_water.load(Ordering::Relaxed));
        if let Some(flush) = io.flush(py) {
            if let Some(Some((owned, len))) = owned_bytes(data, limit) {
                io.reactor.get().after_callbacks(flush)?;
                buffer.call_method1(intern!(py, "append"), (owned,))?;
                io.queued.store(len, Ordering::Relaxed);
                return Ok(());
            }
        }
    }
    let mut rest = data.clone();
    if quiet {
        let sent = with_contiguous_bytes(data, |bytes| {
            (!bytes.is_empty()).then(|| (send(io.fd, bytes), bytes.len()))
        })
        .flatten();
        if let Some((Ok(n), len)) = sent {
            if n == len {
                return Ok(());
            }
            rest = unsent(data, n, len)?;
        }
    }
    transport.call_method1(intern!(py, "_python_write"), (rest,))?;
    Ok(())
}

/// Sends what `socket_write` queued in this iteration (run by the reactor after its callbacks): the
/// common case, one write fully taken by the socket, here; anything else through asyncio's own
/// `_write_ready` (a partial send, an error, a `close()` or `write_eof()` waiting for the buffer) and
/// its writer callback for what is left, exactly as if `write` had found the socket full.
#[pyfunction]
pub(super) fn socket_flush(transport: &Bound<'_, PyAny>, io: &Bound<'_, SocketIo>) -> PyResult<()> {
    let py = transport.py();
    let io = io.get();
    io.queued.store(0, Ordering::Relaxed);
    if io.lost() {
        return Ok(());
    }
    let buffer = transport.getattr(intern!(py, "_buffer"))?;
    // Already sent (`writelines` writes the whole buffer at once) or dropped (`abort`, an error).
    if !buffer.is_truthy()? || transport.getattr(intern!(py, "_conn_lost"))?.is_truthy()? {
        return Ok(());
    }
    let fd = io.fd;
    let simple = buffer.len()? == 1
        && !io.eof.load(Ordering::Relaxed)
        && !io.sendfile.load(Ordering::Relaxed)
        && !transport.getattr(intern!(py, "_closing"))?.is_truthy()?;
    if simple {
        let item = buffer.get_item(0)?;
        let sent = with_contiguous_bytes(&item, |bytes| (send(fd, bytes), bytes.len()));
        match sent {
            Some((Ok(n), len)) if n == len => {
                buffer.call_method0(intern!(py, "clear"))?;
                // A writer may be registered all the same: a protocol that writes from
                // `resume_writing`, called by the writer callback that had just emptied the buffer
                // (TLS does). Empty buffer, no writer: asyncio's own rule.
                io.reactor.get().drop_writer(fd);
                if transport
                    .getattr(intern!(py, "_protocol_paused"))?
                    .is_truthy()?
                {
                    transport.call_method0(intern!(py, "_maybe_resume_protocol"))?;
                }
                return Ok(());
            }
            Some((Ok(n), len)) => {
                // The rest waits for asyncio's writer callback.
                buffer.set_item(0, unsent(&item, n, len)?)?;
                return add_writer(transport, fd);
            }
            // Nothing sent: asyncio's `_write_ready` below meets the same error and handles it.
            _ => {}
        }
    }
    transport.call_method0(intern!(py, "_write_ready"))?;
    if buffer.is_truthy()? && !transport.getattr(intern!(py, "_conn_lost"))?.is_truthy()? {
        add_writer(transport, fd)?;
        // What asyncio's `write` would have done with what the socket did not take.
        transport.call_method0(intern!(py, "_maybe_pause_protocol"))?;
    }
    Ok(())
}

/// `data` as a `bytes` the transport can keep (itself if it is one, else a copy: the caller may reuse
/// its buffer once `write` returns) and its length; `Some(None)` when empty or longer than `limit`,
/// `None` when it is not a contiguous buffer.
fn owned_bytes<'py>(
    data: &Bound<'py, PyAny>,
    limit: usize,
) -> Option<Option<(Bound<'py, PyAny>, usize)>> {
    let py = data.py();
    with_contiguous_bytes(data, |bytes| {
        let len = bytes.len();
        (len > 0 && len <= limit).then(|| {
            let owned = if data.is_instance_of::<PyBytes>() {
                data.clone()
            } else {
                PyBytes::new(py, bytes).into_any()
            };
            (owned, len)
        })
    })
}

/// What a send of `n` of `data`'s `len` bytes left: asyncio's own `memoryview(data)[n:]`.
fn unsent<'py>(data: &Bound<'py, PyAny>, n: usize, len: usize) -> PyResult<Bound<'py, PyAny>> {
    PyMemoryView::from(data)?.get_item(PySlice::new(data.py(), n as isize, len as isize, 1))
}

/// asyncio's `_add_writer(fd, transport._write_ready)` (replacing one already registered).
fn add_writer(transport: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<()> {
    let py = transport.py();
    let write_ready = transport.getattr(intern!(py, "_write_ready"))?;
    transport
        .getattr(intern!(py, "_loop"))?
        .call_method1(intern!(py, "_add_writer"), (fd, write_ready))?;
    Ok(())
}
