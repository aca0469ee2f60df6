//! Every raw call the bridge makes — CPython's C API where PyO3 has no safe wrapper, and the two OS-level
//! calls the asyncio driver needs — each behind a safe function whose `SAFETY` comment says why it holds.
//!
//! Invariant: this is the only module under `python/` with `unsafe` (the crate denies `unsafe_code`
//! everywhere else but `sys`, its plain-Rust twin). Each function here is called attached to the
//! interpreter (it takes a `Python` token or a bound object) and never stores a raw pointer it was given.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
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

/// The Rust side of a builtin with asyncio's `call_soon` signature, `(callback, *args, context=None)`:
/// given what the builtin is bound to and the call as one tuple `(context, callback, *args)` (a copy
/// of the current context when none was passed: asyncio's rule), it returns the handle.
pub(super) type SoonCall =
    for<'py> fn(&Bound<'py, PyAny>, Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>>;

/// Which `call_soon`-like builtin (`soon_builtin`): each has its own entry point and Rust side.
#[derive(Debug, Clone, Copy)]
pub(super) enum Soon {
    Soon = 0,
    Threadsafe = 1,
}

/// The Rust side of each `Soon` kind: the `call` of the first `soon_builtin` of that kind (later
/// ones are ignored; the event loop passes the same function every time).
static SOON_CALLS: [OnceLock<SoonCall>; 2] = [OnceLock::new(), OnceLock::new()];

/// A `PyMethodDef` as a static: CPython only reads it (the pointer it takes is `*mut` for history).
struct MethodDef(ffi::PyMethodDef);
// SAFETY: immutable after construction; its pointers are to static strings and functions.
unsafe impl Sync for MethodDef {}

const fn soon_def(
    name: &'static std::ffi::CStr,
    doc: &'static std::ffi::CStr,
    entry: ffi::PyCFunctionFastWithKeywords,
) -> MethodDef {
    MethodDef(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: entry,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: doc.as_ptr(),
    })
}

static SOON_DEFS: [MethodDef; 2] = [
    soon_def(
        c"call_soon",
        c"call_soon($self, callback, *args, context=None)\n--\n\nasyncio's loop.call_soon.",
        soon_entry::<0>,
    ),
    soon_def(
        c"call_soon_threadsafe",
        c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nasyncio's loop.call_soon_threadsafe.",
        soon_entry::<1>,
    ),
];

/// `call` as a builtin bound to `owner`, called the way CPython calls C functions
/// (`METH_FASTCALL | METH_KEYWORDS`: no argument tuple, no keyword dict). What it replaces, a PyO3
/// method with `(callback, *args, context=None)`, parsed its arguments generically and built the
/// argument tuple twice: ~1,300 instructions per `call_soon`, 52 of them per asyncpg
/// `/queries?n=20` request (callgrind).
pub(super) fn soon_builtin<'py>(
    owner: &Bound<'py, PyAny>,
    kind: Soon,
    call: SoonCall,
) -> PyResult<Bound<'py, PyAny>> {
    let index = kind as usize;
    SOON_CALLS[index].get_or_init(|| call);
    let def = std::ptr::addr_of!(SOON_DEFS[index].0).cast_mut();
    // SAFETY: attached; `def` is a static CPython never writes to; `owner` is live and the new
    // function object takes its own reference to it. New reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            owner.py(),
            ffi::PyCFunction_NewEx(def, owner.as_ptr(), std::ptr::null_mut()),
        )
    }
}

/// The entry point of the `KIND` builtin: parses `(callback, *args, context=None)` into
/// `(context, callback, *args)` and hands it to `SOON_CALLS[KIND]`.
unsafe extern "C" fn soon_entry<const KIND: usize>(
    owner: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // `attach`, not `assume_attached`: PyO3 then knows the thread is attached, so what the call
    // drops (a handle a closed loop refused, say) is released here and not left in its deferred pool
    // until some later PyO3 call (a closed loop fed in a loop grew by 200 MiB that way). Attached
    // already, this is a counter increment. A panic must not unwind into C: it becomes an exception.
    Python::attach(|py| {
        let outcome = std::panic::catch_unwind(|| {
            // SAFETY: CPython passes `nargs` positional arguments, then one value per name in
            // `kwnames` (a tuple of str, or NULL), all borrowed for the duration of the call; `owner`
            // is the object the builtin was made with.
            unsafe { soon_parse::<KIND>(py, owner, args, nargs, kwnames) }
        });
        let result = outcome.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|message| (*message).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic in call_soon".to_owned());
            Err(pyo3::panic::PanicException::new_err(message))
        });
        match result {
            Ok(handle) => handle.into_ptr(),
            Err(err) => {
                err.restore(py);
                std::ptr::null_mut()
            }
        }
    })
}

/// `soon_entry`'s work. SAFETY (caller): as documented there.
unsafe fn soon_parse<'py, const KIND: usize>(
    py: Python<'py>,
    owner: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Bound<'py, PyAny>> {
    let name = if KIND == 0 {
        "call_soon"
    } else {
        "call_soon_threadsafe"
    };
    let positional = usize::try_from(nargs).unwrap_or(0);
    let mut callback = None;
    let mut context = None;
    if !kwnames.is_null() {
        // SAFETY: CPython's calling convention makes `kwnames` a tuple of str (hence the unchecked
        // cast), borrowed for the call.
        let names = unsafe { Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>() };
        for (index, keyword) in names.iter().enumerate() {
            // SAFETY: the value of keyword `index` follows the positional arguments.
            let value = unsafe { Borrowed::from_ptr(py, *args.add(positional + index)) };
            // Compared as CPython's own argument parsing does, by value, not with `__eq__`.
            // SAFETY: `keyword` is a str; the other argument a static C string.
            let is = |expected: &std::ffi::CStr| unsafe {
                ffi::PyUnicode_CompareWithASCIIString(keyword.as_ptr(), expected.as_ptr()) == 0
            };
            if is(c"context") {
                context = Some(value);
            } else if is(c"callback") && positional == 0 {
                callback = Some(value);
            } else if is(c"callback") {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "{name}() got multiple values for argument 'callback'"
                )));
            } else {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "{name}() got an unexpected keyword argument '{keyword}'"
                )));
            }
        }
    }
    if positional == 0 && callback.is_none() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{name}() missing 1 required positional argument: 'callback'"
        )));
    }
    let context = match context {
        Some(context) if !context.is_none() => context.to_owned(),
        _ => copy_context(py)?,
    };
    // `(context, callback, *args)`: `callback` is the first positional argument unless it came as a
    // keyword (then there are no others).
    let size = positional.max(1) + 1;
    // SAFETY: a new tuple of `size` items, each set exactly once below before it is used.
    let call = unsafe {
        Bound::from_owned_ptr_or_err(py, ffi::PyTuple_New(size as ffi::Py_ssize_t))?
            .cast_into_unchecked::<PyTuple>()
    };
    // SAFETY: PyTuple_SET_ITEM steals a reference: each item is a new one (`into_ptr`, Py_NewRef).
    unsafe {
        ffi::PyTuple_SET_ITEM(call.as_ptr(), 0, context.into_ptr());
        if let Some(callback) = callback {
            ffi::PyTuple_SET_ITEM(call.as_ptr(), 1, callback.to_owned().into_ptr());
        }
        for index in 0..positional {
            let item = *args.add(index);
            ffi::PyTuple_SET_ITEM(
                call.as_ptr(),
                (index + 1) as ffi::Py_ssize_t,
                ffi::Py_NewRef(item),
            );
        }
    }
    let soon = SOON_CALLS[KIND]
        .get()
        .expect("set by soon_builtin before the builtin exists");
    // SAFETY: `owner` is the builtin's bound object, alive for the call.
    let owner = unsafe { Borrowed::from_ptr(py, owner) };
    soon(&owner, call)
}
