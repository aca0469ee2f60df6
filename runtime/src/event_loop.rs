//! The plain-Rust half of percore's event loop (the Python half is `python/event_loop.rs`): a
//! level-triggered epoll poller with an eventfd wake-up, the monotonic clock, and a timer heap.
//!
//! Invariants:
//! - Readiness is level-triggered, as asyncio's selectors are: a reader that leaves data unread is
//!   reported again on the next poll (mio and tokio are edge-triggered, which asyncio callbacks are not
//!   written for).
//! - `Poller::wake` is the only thing other threads do to a poller; it is async-signal- and thread-safe
//!   (one `write` to an eventfd). The eventfd is drained inside `wait` and never reported as an event.
//! - `Poller::close` closes both descriptors at once (a closed loop must not hold them until the cycle
//!   collector frees it: 128 closed loops used up a 256-descriptor limit on 3.13t); afterwards every
//!   operation fails with `EBADF`. A descriptor number is reused by the next `open`, so the caller
//!   must make sure no other thread is inside a `wait`, `wake` or `set_interest` while it closes (the
//!   reactor closes under the lock those run under, never during a wait).
//! - `monotonic()` is `CLOCK_MONOTONIC` in seconds, the same clock as Python's `time.monotonic()`, so
//!   `loop.time()` values and deadlines computed in Python agree with the heap's.
//! - Timers with equal deadlines fire in the order they were scheduled (a sequence number breaks ties).
//!
//! All `unsafe` of the event loop lives in this module: the epoll/eventfd/clock system calls, and the
//! `recv`/`send` of its socket transports (`python/transport.rs`).
#![allow(unsafe_code)]

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering as AtomicOrdering};
use std::time::Duration;

/// The epoll token of the wake-up eventfd (file descriptors are never negative).
const WAKE_TOKEN: u64 = u64::MAX;

/// One readiness report: errors and hang-ups count as both readable and writable, as in
/// `selectors.EpollSelector`, so the callback that reads or writes sees the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub fd: RawFd,
    pub readable: bool,
    pub writable: bool,
}

/// An epoll instance and the eventfd that interrupts its `wait`; both owned (closed by `close` or on
/// drop), `-1` once closed.
#[derive(Debug)]
pub struct Poller {
    epoll: AtomicI32,
    wake: AtomicI32,
}

fn closed() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system calls; each returned descriptor is owned exactly once.
        let epoll =
            unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let wake = unsafe {
            OwnedFd::from_raw_fd(check(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?)
        };
        let wake_fd = wake.as_raw_fd();
        let poller = Self {
            epoll: AtomicI32::new(epoll.into_raw_fd()),
            wake: AtomicI32::new(wake.into_raw_fd()),
        };
        // On error `poller` is dropped, which closes both.
        poller.ctl(
            libc::EPOLL_CTL_ADD,
            wake_fd,
            libc::EPOLLIN as u32,
            WAKE_TOKEN,
        )?;
        Ok(poller)
    }

    /// The epoll descriptor: readable when `wait` would report something (for an outer reactor); -1
    /// once closed.
    pub fn as_raw_fd(&self) -> RawFd {
        self.epoll.load(AtomicOrdering::Acquire)
    }

    fn live(fd: &AtomicI32) -> io::Result<RawFd> {
        match fd.load(AtomicOrdering::Acquire) {
            -1 => Err(closed()),
            fd => Ok(fd),
        }
    }

    /// Closes the epoll descriptor and the eventfd (idempotent). See the module doc for the caller's
    /// side of it: no `wait`, `wake` or `set_interest` in progress on another thread.
    pub fn close(&self) {
        for fd in [&self.epoll, &self.wake] {
            let old = fd.swap(-1, AtomicOrdering::AcqRel);
            if old >= 0 {
                // SAFETY: `old` was ours and nothing else closes it (the swap hands it out once).
                drop(unsafe { OwnedFd::from_raw_fd(old) });
            }
        }
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let epoll = Self::live(&self.epoll)?;
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` outlives the call; the kernel validates `fd`.
        check(unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) })?;
        Ok(())
    }

    /// Watches `fd` for exactly the given interests (replacing earlier ones); with neither, stops
    /// watching it. `registered`: whether the caller has `fd` in the set already, so that the first
    /// `epoll_ctl` is the right one (a database driver adds and removes its socket's reader on every
    /// query: a MOD that fails before the ADD was one system call in three, measured with strace). A
    /// descriptor closed and reused behind our back is re-added instead of modified, and the other way
    /// round.
    pub fn set_interest(
        &self,
        fd: RawFd,
        read: bool,
        write: bool,
        registered: bool,
    ) -> io::Result<()> {
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if !read && !write {
            return match self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0) {
                // Already gone: closing a descriptor removes it from every epoll set.
                Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::EBADF)) => {
                    Ok(())
                }
                other => other,
            };
        }
        let mut events = 0u32;
        if read {
            events |= libc::EPOLLIN as u32;
        }
        if write {
            events |= libc::EPOLLOUT as u32;
        }
        let (first, then, missing) = if registered {
            (libc::EPOLL_CTL_MOD, libc::EPOLL_CTL_ADD, libc::ENOENT)
        } else {
            (libc::EPOLL_CTL_ADD, libc::EPOLL_CTL_MOD, libc::EEXIST)
        };
        match self.ctl(first, fd, events, fd as u64) {
            Err(err) if err.raw_os_error() == Some(missing) => {
                self.ctl(then, fd, events, fd as u64)
            }
            other => other,
        }
    }

    /// Waits up to `timeout` (`None`: until something happens) and appends what is ready to `events`.
    /// An interrupted wait (a signal) returns `ErrorKind::Interrupted` so the caller can run handlers.
    pub fn wait(&self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        const CAPACITY: usize = 256;
        // Left uninitialised: the kernel fills the first `n`, only those are read. (Zeroing 3 KiB per
        // wait was `rep stosb` in every iteration of the loop.)
        let mut raw = [const { MaybeUninit::<libc::epoll_event>::uninit() }; CAPACITY];
        // Round up: waking a millisecond early would find the timer not yet due and spin.
        let millis = match timeout {
            None => -1,
            Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int,
        };
        let epoll = Self::live(&self.epoll)?;
        // SAFETY: `raw` has room for CAPACITY entries and outlives the call.
        let n = check(unsafe {
            libc::epoll_wait(
                epoll,
                raw.as_mut_ptr().cast(),
                CAPACITY as libc::c_int,
                millis,
            )
        })?;
        for event in &raw[..n as usize] {
            // SAFETY: epoll_wait initialised the first `n` entries.
            let event = unsafe { event.assume_init_read() };
            let (bits, token) = (event.events, event.u64);
            if token == WAKE_TOKEN {
                self.drain_wake();
                continue;
            }
            let error = bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
            events.push(Event {
                fd: token as RawFd,
                readable: error || bits & libc::EPOLLIN as u32 != 0,
                writable: error || bits & libc::EPOLLOUT as u32 != 0,
            });
        }
        Ok(())
    }

    /// Interrupts a `wait` in progress (or makes the next one return at once). Thread-safe.
    pub fn wake(&self) -> io::Result<()> {
        let wake = Self::live(&self.wake)?;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64.
        let n = unsafe { libc::write(wake, (&one as *const u64).cast(), 8) };
        if n < 0 {
            let err = io::Error::last_os_error();
            // EAGAIN: the counter is saturated, so a wake-up is pending anyway.
            if err.kind() != io::ErrorKind::WouldBlock {
                return Err(err);
            }
        }
        Ok(())
    }

    fn drain_wake(&self) {
        let Ok(wake) = Self::live(&self.wake) else {
            return;
        };
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64. Non-blocking: EAGAIN when already drained.
        unsafe { libc::read(wake, (&mut value as *mut u64).cast(), 8) };
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.close();
    }
}

/// The hasher of maps keyed by file descriptor ([`FdMap`]). std's default, SipHash, resists keys an
/// attacker picks, which descriptors are not, and cost ~10 instructions per byte plus setup on every
/// readiness event and reader change (callgrind: 9 k instructions per asyncpg `/queries` request); a
/// multiply spreads a small integer over all 64 bits (hashbrown takes a control byte from the top).
#[derive(Debug, Default, Clone, Copy)]
pub struct FdHasher(u64);

impl Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i32(&mut self, n: i32) {
        self.0 = (u64::from(n as u32) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by file descriptor.
pub type FdMap<V> = HashMap<RawFd, V, BuildHasherDefault<FdHasher>>;

/// `recv(fd, buf)`: what `socket.recv` does, without a Python object per call.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send(fd, data)`; no SIGPIPE (a peer that went away is EPIPE, as under Python, which ignores it).
pub fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of its length for the duration of the call.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `CLOCK_MONOTONIC` in seconds: Python's `time.monotonic()`.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest deadline must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .when
            .total_cmp(&self.when)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Deadlines in `monotonic()` seconds, earliest first, ties in insertion order.
pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> TimerHeap<T> {
    pub fn push(&mut self, when: f64, item: T) {
        self.seq += 1;
        self.heap.push(Entry {
            when,
            seq: self.seq,
            item,
        });
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The earliest entry's deadline and item.
    pub fn peek(&self) -> Option<(f64, &T)> {
        self.heap.peek().map(|e| (e.when, &e.item))
    }

    /// Every item, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
    }

    /// Removes and returns the earliest entry.
    pub fn pop(&mut self) -> Option<T> {
        self.heap.pop().map(|e| e.item)
    }

    /// Removes every entry `keep` rejects (returned, so the caller decides where they are dropped).
    pub fn extract_if(&mut self, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        let mut kept = Vec::with_capacity(self.heap.len());
        for entry in std::mem::take(&mut self.heap).into_vec() {
            if keep(&entry.item) {
                kept.push(entry);
            } else {
                removed.push(entry.item);
            }
        }
        self.heap = BinaryHeap::from(kept);
        removed
    }

    /// Empties the heap, returning the items.
    pub fn drain(&mut self) -> Vec<T> {
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.item)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn timers_come_out_by_deadline_then_insertion_order() {
        let mut heap = TimerHeap::default();
        heap.push(2.0, "c");
        heap.push(1.0, "a");
        heap.push(1.0, "b");
        heap.push(0.5, "first");
        let order: Vec<_> = std::iter::from_fn(|| heap.pop()).collect();
        assert_eq!(order, ["first", "a", "b", "c"]);
    }

    #[test]
    fn extract_if_keeps_the_heap_ordered() {
        let mut heap = TimerHeap::default();
        for i in 0..10 {
            heap.push(f64::from(10 - i), i);
        }
        let removed = heap.extract_if(|i| i % 2 == 0);
        assert_eq!(removed.len(), 5);
        assert_eq!(heap.peek().map(|(w, _)| w), Some(2.0));
    }

    #[test]
    fn descriptor_maps_keep_every_key_apart() {
        let mut map = FdMap::default();
        for fd in -1..5000 {
            map.insert(fd, fd * 2);
        }
        assert_eq!(map.len(), 5001);
        assert!((-1..5000).all(|fd| map.get(&fd) == Some(&(fd * 2))));
        let hash = |fd: RawFd| {
            let mut hasher = FdHasher::default();
            std::hash::Hash::hash(&fd, &mut hasher);
            hasher.finish()
        };
        // Neighbouring descriptors differ in the top bits too (hashbrown's control byte).
        assert_ne!(hash(3) >> 57, hash(4) >> 57);
    }

    #[test]
    fn a_wrong_registration_hint_still_sets_the_interest() {
        // A descriptor closed and reused (the kernel dropped it from the set) or registered behind the
        // caller's back: the other operation is tried.
        let poller = Poller::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        poller
            .set_interest(b.as_raw_fd(), true, false, true)
            .unwrap();
        poller
            .set_interest(b.as_raw_fd(), true, true, false)
            .unwrap();
        a.write_all(b"x").unwrap();
        let mut events = Vec::new();
        poller
            .wait(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            events,
            [Event {
                fd: b.as_raw_fd(),
                readable: true,
                writable: true
            }]
        );
    }

    #[test]
    fn a_closed_poller_refuses_every_operation() {
        let poller = Poller::new().unwrap();
        let (_a, b) = UnixStream::pair().unwrap();
        assert!(poller.as_raw_fd() >= 0);
        poller.close();
        poller.close(); // idempotent
        assert_eq!(poller.as_raw_fd(), -1);
        let ebadf = |result: io::Result<()>| result.unwrap_err().raw_os_error();
        assert_eq!(
            ebadf(poller.set_interest(b.as_raw_fd(), true, false, false)),
            Some(libc::EBADF)
        );
        assert_eq!(
            ebadf(poller.wait(&mut Vec::new(), Some(Duration::ZERO))),
            Some(libc::EBADF)
        );
        assert_eq!(ebadf(poller.wake()), Some(libc::EBADF));
    }

    #[test]
    fn readiness_is_level_triggered() {
        let poller = Poller::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        poller
            .set_interest(b.as_raw_fd(), true, false, false)
            .unwrap();
        let mut events = Vec::new();
        poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty());
        a.write_all(b"xy").unwrap();
        for _ in 0..2 {
            // Not drained, so reported again.
            events.clear();
            poller
                .wait(&mut events, Some(Duration::from_secs(5)))
                .unwrap();
            assert_eq!(
                events,
                [Event {
                    fd: b.as_raw_fd(),
                    readable: true,
                    writable: false
                }]
            );
        }
        let mut buf = [0u8; 2];
        (&b).read_exact(&mut buf).unwrap();
        events.clear();
        poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty());
        poller
            .set_interest(b.as_raw_fd(), false, false, true)
            .unwrap();
        // Removing twice is harmless.
        poller
            .set_interest(b.as_raw_fd(), false, false, true)
            .unwrap();
    }

    #[test]
    fn wake_interrupts_a_blocking_wait_from_another_thread() {
        let poller = std::sync::Arc::new(Poller::new().unwrap());
        let waker = poller.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            waker.wake().unwrap();
        });
        let mut events = Vec::new();
        poller.wait(&mut events, None).unwrap();
        assert!(events.is_empty(), "the wake-up is not an event");
        thread.join().unwrap();
        // Drained: the next wait times out instead of returning at once forever.
        poller.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty());
    }

    #[test]
    fn bad_descriptors_are_errors() {
        let poller = Poller::new().unwrap();
        assert!(poller.set_interest(-1, true, false, false).is_err());
        assert!(poller.set_interest(1_000_000, true, false, false).is_err());
    }

    #[test]
    fn monotonic_moves_forward() {
        let a = monotonic();
        let b = monotonic();
        assert!(b >= a && a > 0.0);
    }
}
