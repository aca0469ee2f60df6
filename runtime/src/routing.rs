//! Which loop runs a request: the routing policies' choice (`Chooser`; the policy itself is a `config`
//! value) and the per-loop load they read — requests in flight,
//! and whether the loop is running executor (Python) code right now, away from its event loop.
//!
//! Invariants: a loop's counter is raised when a request is assigned to it and lowered exactly once when
//! that request's work is over (`InFlight` guard: its response is ready and, for a handler or ASGI app
//! that runs on after that, its coroutine has finished), whichever thread finishes it. Its busy flag is set
//! only by the loop itself, while it runs executor code (`Busy` guard), and cleared when it returns. Its
//! open-connection count is raised and lowered by the loop's own acceptor (`connection_opened`/`_closed`).
//! Each loop's fields sit on their own cache line so loops updating their own do not contend.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::RoutingPolicy;

/// What a busy loop adds to its in-flight count for `least-loaded`: more than any real count, so any
/// loop that can start a request now wins, while busy loops still compare by their counts.
///
/// Why "busy now" and not "busy for a while": a loop running Python cannot start anything handed to it
/// until it returns, and its in-flight count (often 1) looks idle. A loop in Python only for the few
/// microseconds of a fast request is passed over for that moment, which costs nothing: another loop
/// takes the request as cheaply.
const BUSY_PENALTY: usize = 1 << 32;

#[repr(align(128))]
#[derive(Default)]
struct PaddedCounter {
    in_flight: AtomicUsize,
    /// Set while the loop runs executor code (`LoadTable::busy`).
    busy: AtomicBool,
    /// Connections the loop has open (`LoadTable::connection_opened`).
    connections: AtomicUsize,
}

/// Per-loop load, shared by every loop: in-flight request counts and busy flags.
pub struct LoadTable {
    counters: Box<[PaddedCounter]>,
}

impl LoadTable {
    pub fn new(loops: usize) -> Arc<Self> {
        Arc::new(LoadTable {
            counters: (0..loops).map(|_| PaddedCounter::default()).collect(),
        })
    }

    /// Marks `loop_index` as running executor code until the guard is dropped. Only that loop's own
    /// thread calls this, around work that does not await.
    pub fn busy(&self, loop_index: usize) -> Busy<'_> {
        self.counters[loop_index]
            .busy
            .store(true, Ordering::Relaxed);
        Busy {
            table: self,
            loop_index,
        }
    }

    /// Whether `loop_index` is running executor code right now.
    pub fn is_busy(&self, loop_index: usize) -> bool {
        self.counters[loop_index].busy.load(Ordering::Relaxed)
    }

    /// `least-loaded`'s measure of a loop: its in-flight count, plus `BUSY_PENALTY` while it is busy.
    fn load(&self, loop_index: usize) -> usize {
        let load = self.in_flight(loop_index);
        if self.is_busy(loop_index) {
            load.saturating_add(BUSY_PENALTY)
        } else {
            load
        }
    }

    pub fn loops(&self) -> usize {
        self.counters.len()
    }

    /// Counts a connection `loop_index` accepted, until `connection_closed`. Only that loop calls these.
    pub fn connection_opened(&self, loop_index: usize) {
        self.counters[loop_index]
            .connections
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, loop_index: usize) {
        self.counters[loop_index]
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether `loop_index` should leave a connection waiting in the shared accept queue to another loop:
    /// one that is free (not busy in executor code) and has fewer connections open.
    ///
    /// Why: every loop waiting on the shared queue is woken by a new connection, and the one already
    /// awake (often the one that just accepted) wins the race. Measured on 3.13t, 2 loops, wrk opening 4
    /// keep-alive connections at once: all 4 landed on one loop in 4 of 6 runs, so with `--routing
    /// local` one core served everything (the routing experiment's even mix: 3890 req/s where per-loop
    /// listeners had given 7709).
    pub fn should_leave_connection(&self, loop_index: usize) -> bool {
        let own = self.connections(loop_index);
        (0..self.loops()).any(|other| {
            other != loop_index && !self.is_busy(other) && self.connections(other) < own
        })
    }

    fn connections(&self, loop_index: usize) -> usize {
        self.counters[loop_index]
            .connections
            .load(Ordering::Relaxed)
    }

    pub fn in_flight(&self, loop_index: usize) -> usize {
        self.counters[loop_index].in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request against `loop_index` until the returned guard is dropped.
    pub fn track(self: &Arc<Self>, loop_index: usize) -> InFlight {
        self.counters[loop_index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        InFlight {
            table: Arc::clone(self),
            loop_index,
        }
    }
}

pub struct InFlight {
    table: Arc<LoadTable>,
    loop_index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.table.counters[self.loop_index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A loop running executor code; see `LoadTable::busy`.
pub struct Busy<'a> {
    table: &'a LoadTable,
    loop_index: usize,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.table.counters[self.loop_index]
            .busy
            .store(false, Ordering::Relaxed);
    }
}

/// One loop's view of the policy. Not shared between threads: round-robin keeps its cursor per loop so
/// choosing a loop touches no shared cache line.
pub struct Chooser {
    policy: RoutingPolicy,
    own_index: usize,
    table: Arc<LoadTable>,
    cursor: Cell<usize>,
}

impl Chooser {
    pub fn new(policy: RoutingPolicy, own_index: usize, table: Arc<LoadTable>) -> Self {
        Chooser {
            policy,
            own_index,
            table,
            cursor: Cell::new(own_index),
        }
    }

    pub fn choose(&self) -> usize {
        let loops = self.table.loops();
        if loops == 1 {
            return 0;
        }
        match self.policy {
            RoutingPolicy::Local => self.own_index,
            RoutingPolicy::RoundRobin => {
                // The next loop in turn that is not busy in executor code (if all are: the next one).
                let first = self.cursor.get();
                let mut next = first;
                for step in 0..loops {
                    next = (first + step) % loops;
                    if !self.table.is_busy(next) {
                        break;
                    }
                }
                self.cursor.set((next + 1) % loops);
                next
            }
            RoutingPolicy::LeastLoaded => {
                let mut best = self.own_index;
                let mut best_load = self.table.load(best);
                for index in 0..loops {
                    if best_load == 0 {
                        break;
                    }
                    let load = self.table.load(index);
                    if load < best_load {
                        best = index;
                        best_load = load;
                    }
                }
                best
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_always_stays_home() {
        let table = LoadTable::new(3);
        let chooser = Chooser::new(RoutingPolicy::Local, 2, table.clone());
        let _busy = table.track(2);
        assert!((0..10).all(|_| chooser.choose() == 2));
    }

    #[test]
    fn round_robin_visits_every_loop_in_turn_starting_home() {
        let table = LoadTable::new(3);
        let chooser = Chooser::new(RoutingPolicy::RoundRobin, 1, table);
        let picks: Vec<usize> = (0..6).map(|_| chooser.choose()).collect();
        assert_eq!(picks, vec![1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn least_loaded_avoids_busy_loops_and_prefers_home_on_ties() {
        let table = LoadTable::new(3);
        let chooser = Chooser::new(RoutingPolicy::LeastLoaded, 0, table.clone());
        assert_eq!(chooser.choose(), 0);
        let busy_home = table.track(0);
        let busy_one = table.track(1);
        assert_eq!(chooser.choose(), 2);
        let _busy_two = table.track(2);
        let _busy_two_again = table.track(2);
        assert_eq!(chooser.choose(), 0, "tie between 0 and 1 goes home");
        drop(busy_one);
        assert_eq!(chooser.choose(), 1);
        drop(busy_home);
        assert_eq!(chooser.choose(), 0);
    }

    #[test]
    fn least_loaded_treats_a_loop_busy_in_executor_code_as_full() {
        let table = LoadTable::new(2);
        let chooser = Chooser::new(RoutingPolicy::LeastLoaded, 0, table.clone());
        // Loop 0 (home) has two requests in flight; loop 1 has one, and is in Python running it.
        let _one = table.track(0);
        let _two = table.track(0);
        let _its_request = table.track(1);
        assert_eq!(chooser.choose(), 1, "by counts alone, loop 1 looks lighter");
        let busy = table.busy(1);
        assert_eq!(
            chooser.choose(),
            0,
            "a loop that cannot start a request now is full"
        );
        let _home_busy_too = table.busy(0);
        assert_eq!(chooser.choose(), 1, "all busy: counts decide");
        drop(busy);
    }

    #[test]
    fn round_robin_passes_over_a_busy_loop() {
        let table = LoadTable::new(3);
        let chooser = Chooser::new(RoutingPolicy::RoundRobin, 0, table.clone());
        let busy = table.busy(1);
        let picks: Vec<usize> = (0..4).map(|_| chooser.choose()).collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
        drop(busy);
        let picks: Vec<usize> = (0..2).map(|_| chooser.choose()).collect();
        assert_eq!(picks, vec![0, 1]);
    }

    #[test]
    fn in_flight_guard_counts_until_dropped() {
        let table = LoadTable::new(2);
        let guard = table.track(1);
        assert_eq!(table.in_flight(1), 1);
        let moved = std::thread::spawn(move || drop(guard));
        moved.join().unwrap();
        assert_eq!(table.in_flight(1), 0);
    }

    #[test]
    fn a_loop_leaves_connections_to_a_free_loop_with_fewer() {
        let table = LoadTable::new(3);
        assert!(
            !table.should_leave_connection(0),
            "all equal: everyone accepts"
        );
        table.connection_opened(0);
        assert!(table.should_leave_connection(0), "loops 1 and 2 have fewer");
        assert!(!table.should_leave_connection(1));
        table.connection_opened(1);
        table.connection_opened(2);
        assert!(!table.should_leave_connection(0), "balanced again");
        table.connection_opened(0);
        let busy_one = table.busy(1);
        assert!(
            table.should_leave_connection(0),
            "loop 2 is free and has fewer"
        );
        let busy_two = table.busy(2);
        assert!(
            !table.should_leave_connection(0),
            "the loops with fewer are busy in executor code: take it"
        );
        drop((busy_one, busy_two));
        table.connection_closed(0);
        assert!(!table.should_leave_connection(0));
    }
}
