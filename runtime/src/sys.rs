//! The raw OS calls the plain-Rust layers make, each behind a safe function whose `SAFETY` comment says
//! why it holds. With `python/ffi.rs` (the bridge's), the only module allowed `unsafe` (the crate
//! denies `unsafe_code` everywhere else).
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, RawFd};

use socket2::Socket;

/// Why an inherited descriptor cannot be adopted as a socket.
#[derive(Debug)]
pub(crate) enum AdoptError {
    /// Not an open file descriptor (`fstat` failed).
    NotOpen(std::io::Error),
    /// Open, but not a socket.
    NotASocket,
}

/// Takes ownership of `fd` if it is an open socket; otherwise leaves the descriptor untouched (so a
/// typo cannot make us close a descriptor we did not get).
pub(crate) fn adopt_socket(fd: RawFd) -> Result<Socket, AdoptError> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat on any integer is sound; it only tells whether `fd` is open.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return Err(AdoptError::NotOpen(std::io::Error::last_os_error()));
    }
    // SAFETY: fstat succeeded, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(AdoptError::NotASocket);
    }
    // SAFETY: `fd` is an open socket this process was handed to serve on; from here the caller owns it.
    Ok(unsafe { Socket::from_raw_fd(fd) })
}

/// The memory page size.
pub(crate) fn page_size() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page_size).ok()
}

/// A listening socket that owns its descriptor, so a registration that owns the socket cannot outlive
/// the descriptor.
pub(crate) trait OwnedListener: std::os::fd::AsRawFd {}

impl OwnedListener for std::net::TcpListener {}
impl OwnedListener for std::os::unix::net::UnixListener {}

/// Registers `listener` with this thread's tokio reactor, for readability; the `AsyncFd` owns it.
pub(crate) fn register_listener<L: OwnedListener>(
    listener: L,
) -> std::io::Result<tokio::io::unix::AsyncFd<L>> {
    // SAFETY: the AsyncFd owns the listener and with it the fd, which nothing else closes or replaces
    // while it is registered (`OwnedListener` types own their descriptor).
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)
}
