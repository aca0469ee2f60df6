//! Every raw call the bridge makes — CPython's C API where PyO3 has no safe wrapper, and the two OS-level
//! calls the asyncio driver needs — each behind a safe function whose `SAFETY` comment says why it holds.
//!
//! Invariant: this is the only module under `python/` with `unsafe` (the crate denies `unsafe_code`
//! everywhere else but `sys`, its plain-Rust twin). Each function here is called attached to the
//! interpreter (it takes a `Python` token or a bound object) and never stores a raw pointer it was given.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};

use pyo3::ffi;
use pyo3::prelude::*;
use tokio::io::unix::AsyncFd;

/// `len(object)` without raising: -1 when the object has no length (callers treat it as non-empty).
pub(super) fn object_len(object: &Bound<'_, PyAny>) -> isize {
    // SAFETY: attached, live object; a failure (-1) only means "treat as non-empty".
    let len = unsafe { ffi::PyObject_Size(object.as_ptr()) };
    if len < 0 {
        // SAFETY: attached; clears the error PyObject_Size set.
        unsafe { ffi::PyErr_Clear() };
    }
    len
}

/// Whether `value` is exactly a native coroutine (what `async def` returns): one C type check, where
/// `inspect.iscoroutine` is a Python call.
pub(super) fn is_coroutine(value: &Bound<'_, PyAny>) -> bool {
    // SAFETY: attached, live object.
    unsafe { ffi::PyCoro_CheckExact(value.as_ptr()) != 0 }
}

/// `body` over the bytes of `object` when it exposes a C-contiguous buffer (bytes, bytearray, a
/// contiguous memoryview: what `socket.send` accepts, format ignored, as its `y*`); None otherwise, with
/// no exception left set.
pub(super) fn with_contiguous_bytes<R>(
    object: &Bound<'_, PyAny>,
    body: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: attached, live object; on success `view` is filled in and must be released below.
    if unsafe { ffi::PyObject_GetBuffer(object.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_SIMPLE) }
        != 0
    {
        // SAFETY: attached; clears the error PyObject_GetBuffer set.
        unsafe { ffi::PyErr_Clear() };
        return None;
    }
    // SAFETY: PyObject_GetBuffer succeeded, so `view` is initialised.
    let mut view = unsafe { view.assume_init() };
    let bytes = if view.len == 0 || view.buf.is_null() {
        &[][..]
    } else {
        // SAFETY: PyBUF_SIMPLE: `buf` points to `len` contiguous bytes, valid until released; the
        // slice does not outlive `body`.
        unsafe { std::slice::from_raw_parts(view.buf as *const u8, view.len as usize) }
    };
    let result = body(bytes);
    // SAFETY: the view obtained above, released once.
    unsafe { ffi::PyBuffer_Release(&mut view) };
    Some(result)
}

/// A fresh copy of the thread's current `contextvars.Context`.
pub(super) fn copy_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: attached; returns a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }
}

/// Enters `context` (a `contextvars.Context`) for the duration of `body`.
pub(super) fn in_context<R>(context: &Bound<'_, PyAny>, body: impl FnOnce() -> R) -> PyResult<R> {
    let py = context.py();
    // SAFETY: `context` is a contextvars.Context created for this request; we are attached.
    if unsafe { ffi::PyContext_Enter(context.as_ptr()) } != 0 {
        return Err(PyErr::fetch(py));
    }
    let result = body();
    // SAFETY: as above; it is the context entered just now.
    if unsafe { ffi::PyContext_Exit(context.as_ptr()) } != 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(result)
}

/// What one `send(None)` into a coroutine did.
pub(super) enum Sent {
    /// It suspended, yielding this (a future, for asyncio coroutines).
    Yielded(Py<PyAny>),
    /// It finished with this return value.
    Returned(Py<PyAny>),
    Raised(PyErr),
}

/// `coroutine.send(None)` through `PyIter_Send`: no `StopIteration` is raised and caught for a
/// coroutine that returns (~0.5 µs per request step instead of several).
pub(super) fn send_none(py: Python<'_>, coroutine: &Bound<'_, PyAny>) -> Sent {
    let mut result: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: `coroutine` is a live object and we are attached; PyIter_Send returns a new reference in
    // `result` for PYGEN_RETURN and PYGEN_NEXT, and sets an exception for PYGEN_ERROR.
    let status = unsafe { ffi::PyIter_Send(coroutine.as_ptr(), ffi::Py_None(), &mut result) };
    match status {
        // SAFETY: a new reference (see above).
        ffi::PySendResult::PYGEN_RETURN => {
            Sent::Returned(unsafe { Bound::from_owned_ptr(py, result) }.unbind())
        }
        // SAFETY: a new reference (see above).
        ffi::PySendResult::PYGEN_NEXT => {
            Sent::Yielded(unsafe { Bound::from_owned_ptr(py, result) }.unbind())
        }
        _ => Sent::Raised(PyErr::fetch(py)),
    }
}

/// One Python object per thread, created on first use and leaked on purpose: a raw strong reference in a
/// `thread_local!` needs no care when the thread exits (a `Py` there would be released after the thread
/// detached for good). For tiny per-thread singletons only.
pub(super) struct PerThreadObject(Cell<*mut ffi::PyObject>);

impl PerThreadObject {
    pub(super) const fn new() -> Self {
        PerThreadObject(Cell::new(std::ptr::null_mut()))
    }

    /// This thread's object, made by `create` the first time.
    pub(super) fn get_or_create<'py>(
        &self,
        py: Python<'py>,
        create: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cached = self.0.get();
        if !cached.is_null() {
            // SAFETY: a strong reference this thread owns forever (leaked below); we are attached.
            return Ok(unsafe { Bound::from_borrowed_ptr(py, cached) });
        }
        let created = create()?;
        self.0.set(created.clone().into_ptr());
        Ok(created)
    }
}

/// asyncio's selector (epoll) fd as tokio registers it: borrowed, never closed by Rust.
pub(super) struct SelectorFd(RawFd);

impl AsRawFd for SelectorFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Registers asyncio's selector fd with this thread's tokio reactor, for readability.
///
/// The caller keeps the fd open (asyncio owns it) until the returned registration is dropped: the
/// executor drops it in `close`, before asyncio closes its selector.
pub(super) fn register_selector(fd: RawFd) -> std::io::Result<AsyncFd<SelectorFd>> {
    // SAFETY: the fd stays open until the registration is dropped (the caller's contract above).
    unsafe { AsyncFd::register_with_interest(SelectorFd(fd), tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// Whether `fd` has events waiting right now (`poll` with a zero timeout).
pub(super) fn has_pending_events(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut poll, 1, 0) > 0 }
}
