//! The two hot paths of `percore._transport.SocketTransport` (asyncio's `_SelectorSocketTransport`
//! on percore's loop): reading into a `data_received` protocol, and the first `send` of a `write`.
//!
//! A database driver that talks through a transport (asyncpg) runs both on every query; in asyncio
//! they are three Python frames and a 256 KiB `bytes` allocated and shrunk per read, where uvloop's
//! transport is C (asyncpg, GIL build: uvicorn + uvloop was 1.13x / 1.28x ahead on `/db` / `/queries`,
//! with the same system calls per query).
//!
//! Invariants:
//! - Semantics are asyncio's `_read_ready__data_received` and `write`, line for line; every case off
//!   the hot path (a buffered protocol, a closed or closing transport, data already buffered, a partial
//!   or failed send, a `write_eof`, sendfile in progress, a type `send` does not take) is handed to
//!   asyncio's own Python code with the transport's state untouched, so it decides as it always did.
//! - A failed `send` sent nothing, so asyncio's `write` retrying it sees the same error and handles it.
//! - The read buffer is per thread (each loop thread reads its own sockets) and is not borrowed while
//!   Python runs (`data_received` gets a copy).

use std::cell::RefCell;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PySystemExit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PySlice};

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
    if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) {
        return Err(err);
    }
    transport.call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))?;
    Ok(())
}

/// The transport's reader callback (asyncio's `_read_ready`).
#[pyfunction]
pub(super) fn socket_read_ready(transport: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    if transport.getattr(intern!(py, "_conn_lost"))?.is_truthy()? {
        return Ok(());
    }
    if transport
        .getattr(intern!(py, "_percore_buffered"))?
        .is_truthy()?
    {
        transport.call_method0(intern!(py, "_read_ready__get_buffer"))?;
        return Ok(());
    }
    let fd: RawFd = transport.getattr(intern!(py, "_sock_fd"))?.extract()?;
    let max_size: usize = transport.getattr(intern!(py, "max_size"))?.extract()?;
    let read = READ_BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        let size = max_size.max(1);
        if buffer.len() < size {
            buffer.resize(size, 0);
        }
        recv(fd, &mut buffer[..size]).map(|n| PyBytes::new(py, &buffer[..n]))
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
    let protocol = transport.getattr(intern!(py, "_protocol"))?;
    match protocol.call_method1(intern!(py, "data_received"), (data,)) {
        Ok(_) => Ok(()),
        Err(err) => fatal(
            transport,
            err,
            "Fatal error: protocol.data_received() call failed.",
        ),
    }
}

/// The transport's `write`: sent at once when nothing is buffered and nothing special is going on,
/// else (or for what the socket did not take) asyncio's `write`.
#[pyfunction]
pub(super) fn socket_write(transport: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    // asyncio takes these three types only (TypeError otherwise, from its own `write`).
    let quiet = (data.is_instance_of::<PyBytes>()
        || data.is_instance_of::<PyByteArray>()
        || data.is_instance_of::<PyMemoryView>())
        && !transport.getattr(intern!(py, "_eof"))?.is_truthy()?
        && transport.getattr(intern!(py, "_empty_waiter"))?.is_none()
        && !transport.getattr(intern!(py, "_conn_lost"))?.is_truthy()?
        && !transport.getattr(intern!(py, "_buffer"))?.is_truthy()?;
    let mut rest = data.clone();
    if quiet {
        let fd: RawFd = transport.getattr(intern!(py, "_sock_fd"))?.extract()?;
        let sent = with_contiguous_bytes(data, |bytes| {
            (!bytes.is_empty()).then(|| (send(fd, bytes), bytes.len()))
        })
        .flatten();
        if let Some((Ok(n), len)) = sent {
            if n == len {
                return Ok(());
            }
            // asyncio's own `memoryview(data)[n:]`.
            rest = PyMemoryView::from(data)?.get_item(PySlice::new(
                py,
                n as isize,
                len as isize,
                1,
            ))?;
        }
    }
    transport.call_method1(intern!(py, "_python_write"), (rest,))?;
    Ok(())
}
