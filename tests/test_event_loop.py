"""percore's own event loop (percore._event_loop over runtime/src/python/event_loop.rs), in process.

Every test runs on ``percore.new_event_loop()``; the ones marked ``both`` also run on asyncio's own loop,
so a behaviour asserted here is asyncio's behaviour, not an accident of ours. Nothing here waits on a
clock: a broken wake-up hangs, and pytest-timeout turns that into a failure.
"""

from __future__ import annotations

import array
import asyncio
import contextvars
import errno
import gc
import inspect
import os
import select
import signal
import socket
import ssl
import sys
import threading
import warnings
import weakref
from pathlib import Path

import percore
import pytest
from percore import _runtime

CERTS = Path(__file__).resolve().parent / "certs"

FACTORIES = {"percore": percore.new_event_loop, "asyncio": asyncio.SelectorEventLoop}


@pytest.fixture
def loop():
    loop = percore.new_event_loop()
    yield loop
    if not loop.is_closed():
        loop.close()


@pytest.fixture(params=list(FACTORIES))
def any_loop(request):
    loop = FACTORIES[request.param]()
    yield loop
    if not loop.is_closed():
        loop.close()


def test_the_loop_is_ours_all_the_way_down(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert isinstance(loop.call_soon(lambda: None), _runtime.Handle)
    assert isinstance(loop.call_later(10, lambda: None), _runtime.TimerHandle)
    # No selectors object: the epoll descriptor belongs to the Rust reactor.
    assert not hasattr(loop._selector, "_selector")
    with pytest.raises(RuntimeError, match="no select"):
        loop._selector.select(0)


def test_callbacks_run_in_fifo_order_and_new_ones_wait_for_the_next_iteration(any_loop):
    seen = []

    def first():
        seen.append("first")
        any_loop.call_soon(seen.append, "scheduled by first")

    any_loop.call_soon(first)
    any_loop.call_soon(seen.append, "second")
    any_loop._run_once()
    assert seen == ["first", "second"]
    any_loop._run_once()
    assert seen == ["first", "second", "scheduled by first"]


@pytest.fixture
def readable_socket():
    """`(a, b)`, a connected socket pair with one byte waiting on `b`."""
    a, b = socket.socketpair()
    a.send(b"x")
    yield a, b
    a.close()
    b.close()


def _read_once(loop, sock, seen, *then):
    """A reader on `sock` that reads its byte, removes itself, records "io" and calls each of `then`."""

    def on_readable():
        sock.recv(1)
        loop.remove_reader(sock)
        seen.append("io")
        for call in then:
            call()

    loop.add_reader(sock, on_readable)


def test_callbacks_queued_before_io_run_before_its_callbacks(any_loop, readable_socket):
    """asyncio's order within an iteration, which code relies on: a `sock_accept` cancelled by a
    callback queued before the connection's readiness is seen must not take the connection (CPython's
    test_sock_accept_racing). percore's loop may follow an iteration that ran I/O callbacks with one
    that does not poll, but never runs I/O ahead of what was queued."""
    _, b = readable_socket
    seen = []
    _read_once(
        any_loop,
        b,
        seen,
        lambda: any_loop.call_soon(seen.append, "scheduled by io"),
        lambda: any_loop.call_soon(any_loop.stop),
    )
    any_loop.call_soon(seen.append, "queued before")
    any_loop.run_forever()
    assert seen == ["queued before", "io", "scheduled by io"]


def test_stop_from_an_io_callback_leaves_what_it_scheduled_for_the_next_run(any_loop, readable_socket):
    """`stop()` ends `run_forever` after the current iteration: the iteration without a poll that
    percore's loop may add after I/O callbacks must not run when a stop is pending."""
    _, b = readable_socket
    seen = []
    _read_once(any_loop, b, seen, any_loop.stop, lambda: any_loop.call_soon(seen.append, "scheduled by io"))
    any_loop.run_forever()
    assert seen == ["io"]
    any_loop.call_soon(any_loop.stop)
    any_loop.run_forever()
    assert seen == ["io", "scheduled by io"]


def test_run_once_is_one_iteration_even_after_io(any_loop, readable_socket):
    """`loop._run_once()` is exactly asyncio's iteration: what an I/O callback schedules waits for the
    next call (percore's extra iteration without a poll is `run_forever`'s and the server's)."""
    _, b = readable_socket
    seen = []
    _read_once(any_loop, b, seen, lambda: any_loop.call_soon(seen.append, "scheduled by io"))
    any_loop._run_once()
    assert seen == ["io"]
    any_loop._run_once()
    assert seen == ["io", "scheduled by io"]


def test_a_descriptor_that_stays_ready_is_called_every_other_iteration_while_busy(loop, readable_socket):
    """After an iteration with I/O, percore's loop runs the callbacks it left ready without polling
    (asyncio's loop would poll and call this never-drained reader in every iteration); but only one
    such iteration, so I/O is never starved."""
    _, b = readable_socket
    reader_calls, steps = [], []

    def step():
        steps.append(len(reader_calls))
        if len(steps) < 10:
            loop.call_soon(step)
        else:
            loop.stop()

    loop.add_reader(b, reader_calls.append, None)  # never reads: level-triggered, always ready
    loop.call_soon(step)
    loop.run_forever()
    # Iteration 1 polls (reader + step 1), iteration 2 does not (step 2), and so on.
    assert steps == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]


def test_a_socket_closed_in_the_iteration_without_a_poll_leaves_the_epoll_set(loop, readable_socket):
    """asyncio's transports remove their reader in an I/O callback (EOF) and close the socket in the
    next iteration, which may be the one that skips the poll: the descriptor must still leave the
    reactor's epoll set before the close, or a duplicate of it (a forked child) keeps it there and
    the loop wakes for a socket it no longer watches."""
    _, b = readable_socket
    duplicate = b.dup()
    try:

        def close():
            b.close()
            loop.stop()

        def on_readable():
            loop.remove_reader(b)
            loop.call_soon(close)

        loop.add_reader(b, on_readable)
        loop.run_forever()
        assert b.fileno() == -1
        assert select.select([loop._reactor.fileno()], [], [], 0)[0] == []
    finally:
        duplicate.close()


def test_a_cancelled_handle_never_runs(any_loop):
    seen = []
    handle = any_loop.call_soon(seen.append, "cancelled")
    any_loop.call_soon(seen.append, "kept")
    handle.cancel()
    assert handle.cancelled()
    any_loop._run_once()
    assert seen == ["kept"]


def test_timers_fire_by_deadline_equal_deadlines_in_scheduling_order(loop):
    seen = []
    now = loop.time()
    when = now + 0.05
    loop.call_at(when + 0.01, seen.append, "later")
    for name in ["a", "b", "c", "d"]:
        loop.call_at(when, seen.append, name)
    loop.call_at(now - 1, seen.append, "past")
    cancelled = loop.call_at(when, seen.append, "cancelled")
    assert cancelled.when() == when
    cancelled.cancel()
    loop.call_at(when + 0.02, loop.stop)
    loop.run_forever()
    assert seen == ["past", "a", "b", "c", "d", "later"]


def test_timer_handles_compare_by_deadline(loop):
    early = loop.call_later(1, print)
    late = loop.call_later(2, print)
    assert early < late and late > early and early != late
    assert sorted([late, early]) == [early, late]
    early.cancel()
    late.cancel()


def test_many_cancelled_timers_are_purged_and_the_rest_still_fire(loop):
    seen = []
    handles = [loop.call_later(3600, seen.append, i) for i in range(500)]
    for handle in handles:
        handle.cancel()
    loop.call_later(0, seen.append, "due")
    loop.call_later(0, loop.stop)
    loop.run_forever()
    assert seen == ["due"]
    _, timers, _ = loop._reactor.counts()
    assert timers < 500, "cancelled timers are dropped from the heap, not kept until their deadline"
    assert not any(h._scheduled for h in handles)


def test_timers_cancelled_from_another_thread_as_they_fall_due_are_counted_exactly(loop):
    """The reactor counts cancelled timers still in its heap to decide when to purge them. A cancel()
    from another thread racing the loop taking the same timer out of the heap (truly parallel on 3.13t)
    must not leave the count off by one: it used to, and the drift only grew, until every iteration
    rebuilt the heap."""
    batches, size = 300, 100
    for _ in range(batches):
        handles = [loop.call_at(loop.time(), lambda: None) for _ in range(size)]
        go = threading.Event()

        def cancel_all(handles=handles, go=go):
            go.wait()
            for handle in handles:
                handle.cancel()

        canceller = threading.Thread(target=cancel_all)
        canceller.start()
        go.set()
        while canceller.is_alive():
            loop._reactor.run_once(block=False)
        canceller.join()
        loop._reactor.run_once(block=False)
        assert loop._reactor.counts()[1] == 0
        assert loop._reactor.cancelled_timers() == 0


def test_a_cancelled_timer_lets_go_of_its_callback_at_once(any_loop):
    # asyncio drops a cancelled handle's callback; the timer itself may wait in the heap for an hour.
    class Owner:
        def method(self):
            pass

    owner = Owner()
    alive = weakref.ref(owner)
    timer = any_loop.call_later(3600, owner.method)
    del owner
    assert alive() is not None
    timer.cancel()
    assert alive() is None
    assert timer._callback is None and timer._args is None
    if sys.version_info >= (3, 12):  # get_context() is new in 3.12
        assert timer.get_context() is not None


@pytest.mark.parametrize("debug", [False, True])
def test_a_task_that_failed_is_reported_as_soon_as_it_is_dropped(any_loop, debug):
    # Nothing of the loop's may keep a finished task alive (debug mode once did, through a frame's
    # locals): its "exception was never retrieved" report would come at some later collection instead.
    reports = []
    any_loop.set_exception_handler(lambda _loop, context: reports.append(context["message"]))
    any_loop.set_debug(debug)

    async def fail():
        raise ValueError("nobody awaits me")

    async def main():
        asyncio.tasks._PyTask(fail(), loop=any_loop)
        asyncio.Task(fail(), loop=any_loop)  # the C Task
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return list(reports)

    gc.disable()  # only reference counting may free the tasks
    try:
        seen = any_loop.run_until_complete(main())
    finally:
        gc.enable()
    assert seen == ["Task exception was never retrieved"] * 2


def test_callbacks_run_in_their_context(any_loop):
    var = contextvars.ContextVar("var", default="outside")
    context = contextvars.copy_context()
    context.run(var.set, "inside")
    seen = []
    any_loop.call_soon(lambda: seen.append(var.get()), context=context)
    any_loop.call_soon(lambda: seen.append(var.get()))
    any_loop._run_once()
    assert seen == ["inside", "outside"]


def test_call_soon_threadsafe_wakes_a_loop_blocked_in_the_reactor(any_loop):
    # No timers, no ready callbacks: the loop blocks in epoll_wait until the eventfd is written.
    future = any_loop.create_future()
    started = threading.Event()

    def other_thread():
        started.wait()
        any_loop.call_soon_threadsafe(future.set_result, "woken")

    thread = threading.Thread(target=other_thread)
    thread.start()
    any_loop.call_soon(started.set)
    assert any_loop.run_until_complete(future) == "woken"
    thread.join()


def test_call_soon_threadsafe_from_many_threads_loses_nothing(loop):
    threads, per_thread = 4, 2000
    seen = []
    done = loop.create_future()

    def add(item):
        seen.append(item)
        if len(seen) == threads * per_thread:
            done.set_result(None)

    def producer(t):
        for i in range(per_thread):
            loop.call_soon_threadsafe(add, (t, i))

    workers = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    loop.run_until_complete(done)
    for worker in workers:
        worker.join()
    assert sorted(seen) == [(t, i) for t in range(threads) for i in range(per_thread)]
    for t in range(threads):  # each thread's calls keep their order
        assert [i for tt, i in seen if tt == t] == list(range(per_thread))


def test_readers_and_writers_on_a_socketpair(any_loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        got = []
        done = any_loop.create_future()

        def on_readable():
            # Reads one byte at a time: level-triggered readiness calls again while data is left.
            got.append(b.recv(1))
            if len(got) == 3:
                assert any_loop.remove_reader(b) is True
                done.set_result(None)

        any_loop.add_reader(b, on_readable)

        def on_writable():
            assert any_loop.remove_writer(a.fileno()) is True
            a.send(b"xyz")

        any_loop.add_writer(a.fileno(), on_writable)
        any_loop.run_until_complete(done)
        assert got == [b"x", b"y", b"z"]
        assert any_loop.remove_reader(b) is False
        assert any_loop.remove_writer(a) is False
    finally:
        a.close()
        b.close()


def test_a_reader_removed_and_added_again_in_one_callback_still_fires(any_loop):
    """What a database driver does per query (psycopg: remove the reader after a reply, add it back for
    the next query in the same callback), and the same with the descriptor closed and its number
    reused by a new socket in between: the reactor defers dropping a descriptor from its epoll set to
    the next wait, and must still watch the new socket."""
    a, b = socket.socketpair()
    c = d = None
    try:
        seen = []
        done = any_loop.create_future()

        def first():
            nonlocal c, d
            b.recv(1)
            seen.append("first")
            # Same descriptor, same callback: removed, then watched again.
            any_loop.remove_reader(b)
            any_loop.add_reader(b, second)
            a.send(b"y")

        def second():
            nonlocal c, d
            b.recv(1)
            seen.append("second")
            number = b.fileno()
            any_loop.remove_reader(b)
            a.close()
            b.close()
            c, d = socket.socketpair()
            assert number in (c.fileno(), d.fileno()), "the new socketpair did not reuse the number"
            new = c if c.fileno() == number else d
            other = d if new is c else c
            any_loop.add_reader(new, third, new)
            other.send(b"z")

        def third(sock):
            assert sock.recv(1) == b"z"
            seen.append("third")
            any_loop.remove_reader(sock)
            done.set_result(None)

        any_loop.add_reader(b, first)
        a.send(b"x")
        any_loop.run_until_complete(done)
        assert seen == ["first", "second", "third"]
    finally:
        for sock in (a, b, c, d):
            if sock is not None:
                sock.close()


def test_replacing_a_reader_cancels_the_old_handle(loop):
    a, b = socket.socketpair()
    try:
        loop.add_reader(b, print)
        old = loop._selector.get_key(b).data[0]
        loop.add_reader(b, print)
        assert old.cancelled()
        assert loop.remove_reader(b)
    finally:
        a.close()
        b.close()


def test_a_bad_descriptor_is_a_clear_error_and_leaves_nothing_registered(loop):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        loop.add_reader(r, print)
    assert loop._reactor.counts()[2] == 1  # only the loop's own self-pipe
    with pytest.raises(ValueError):
        loop.add_reader(-1, print)


def test_add_reader_takes_file_objects_and_refuses_a_transports_descriptor(any_loop):
    # asyncio's checks (percore's loop makes them in Rust): the same errors, word for word.
    a, b = socket.socketpair()
    loop = any_loop
    try:
        got = []
        assert loop.add_reader(b, got.append, "file object") is None
        a.send(b"x")
        loop.run_until_complete(asyncio.sleep(0.05))
        assert got and got[0] == "file object"
        assert loop.remove_reader(b) is True
        assert loop.remove_reader(b.fileno()) is False
        for bad in ("not a file", object()):
            with pytest.raises(ValueError, match="Invalid file object: "):
                loop.add_reader(bad, print)
        with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
            loop.add_writer(-1, print)

        async def connect():
            return await loop.create_connection(asyncio.Protocol, sock=a)

        transport, _ = loop.run_until_complete(connect())
        for call in (
            lambda: loop.add_reader(a.fileno(), print),
            lambda: loop.add_writer(a, print),
            lambda: loop.remove_reader(a.fileno()),
            lambda: loop.remove_writer(a),
        ):
            with pytest.raises(RuntimeError, match=f"File descriptor .* is used by transport {transport!r}"):
                call()
        transport.close()  # a closing transport no longer owns it
        assert loop.add_reader(a.fileno(), print) is None
        assert loop.remove_reader(a.fileno()) is True
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        a.close()
        b.close()
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_reader(0, print)
    assert loop.remove_reader(0) is False


class _Recorder(asyncio.Protocol):
    """What a transport tells its protocol, as futures and counters."""

    def __init__(self, loop, fail_on=None):
        self.data = bytearray()
        self.types = set()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.paused = self.resumed = 0
        self.fail_on = fail_on

    def data_received(self, data):
        self.types.add(type(data))
        self.data += data
        if self.fail_on is not None and self.fail_on in self.data:
            raise ValueError("the protocol gave up")

    def eof_received(self):
        self.eof.set_result(None)

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def _receive(loop, sock, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = await loop.sock_recv(sock, 65536)
        assert chunk, "the other end closed early"
        got += chunk
    return bytes(got)


def test_a_socket_transport_streams_both_ways_with_flow_control(any_loop):
    """percore's transport (its read and first send are Rust) against asyncio's: every kind of data
    `write` takes, a write bigger than the socket buffer (sent partly, the rest buffered, the protocol
    paused and resumed), reads delivered as bytes, EOF, a clean close."""
    from percore._transport import SocketTransport

    a, b = socket.socketpair()
    b.setblocking(False)
    big = bytes(range(256)) * 8192  # 2 MiB: more than a socketpair buffers

    async def main():
        transport, protocol = await any_loop.create_connection(lambda: _Recorder(any_loop), sock=a)
        assert isinstance(transport, SocketTransport) == (type(any_loop) is not asyncio.SelectorEventLoop)
        for wrong in ("text", array.array("B", b"buffer, but not a type write takes")):
            # asyncio's own messages (3.12+ and 3.11)
            with pytest.raises(TypeError, match=r"bytes, bytearray, or memoryview|bytes-like object"):
                transport.write(wrong)
        transport.write(b"head")
        transport.write(bytearray(b"-"))
        transport.write(memoryview(b"0123456789")[2:7])
        transport.write(b"")
        transport.write(big)
        assert transport.get_write_buffer_size() > 0 and protocol.paused == 1
        expected = b"head-23456" + big
        assert await _receive(any_loop, b, len(expected)) == expected
        await asyncio.sleep(0)
        assert transport.get_write_buffer_size() == 0 and protocol.resumed == 1
        await any_loop.sock_sendall(b, b"x" * 300_000)
        b.shutdown(socket.SHUT_WR)
        await protocol.eof
        assert protocol.data == b"x" * 300_000 and protocol.types == {bytes}
        assert await protocol.lost is None  # eof_received returned None: the transport closed
        assert transport.is_closing()
        # Nothing keeps it in a cycle once the connection is lost: freed by reference counting. (3.11's
        # asyncio keeps one of its own, `_read_ready_cb`, on either loop.)
        freed = weakref.ref(transport)
        del transport
        assert freed() is None or sys.version_info < (3, 12)

    gc.disable()
    try:
        any_loop.run_until_complete(main())
    finally:
        gc.enable()
        a.close()
        b.close()


def test_a_socket_transport_reports_a_reset_and_a_failing_protocol_like_asyncios(any_loop):
    errors = []
    any_loop.set_exception_handler(lambda loop, context: errors.append(context))

    async def reset():
        listener = socket.create_server(("127.0.0.1", 0))
        transport, protocol = await any_loop.create_connection(
            lambda: _Recorder(any_loop), *listener.getsockname()
        )
        peer, _ = listener.accept()
        listener.close()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        peer.close()  # linger 0: a reset
        exc = await protocol.lost
        assert isinstance(exc, ConnectionResetError) and exc.errno == errno.ECONNRESET
        assert transport.is_closing()

    async def failing_protocol():
        a, b = socket.socketpair()
        with a, b:
            transport, protocol = await any_loop.create_connection(
                lambda: _Recorder(any_loop, fail_on=b"!"), sock=a
            )
            b.sendall(b"fine!")
            exc = await protocol.lost
            assert isinstance(exc, ValueError) and transport.is_closing()
            transport.write(b"after the end")  # ignored, as asyncio does (counted, then logged)

    any_loop.run_until_complete(reset())
    # asyncio logs a reset only in debug mode; a failing protocol always goes to the handler.
    any_loop.run_until_complete(failing_protocol())
    assert [c["message"] for c in errors] == ["Fatal error: protocol.data_received() call failed."]
    assert isinstance(errors[0]["exception"], ValueError)


@pytest.mark.skipif(
    sys.version_info < (3, 12), reason="3.11's write buffer is a bytearray: writes are not queued"
)
def test_small_writes_of_an_iteration_leave_together_after_its_callbacks(loop):
    """percore's transport queues a small write made while the loop runs callbacks and sends it once
    they are done (as uvloop does), so the queries a burst of task steps writes reach the database
    back to back: none has left while the other callbacks of the iteration run, all have after."""
    pairs = [socket.socketpair() for _ in range(3)]
    peers = [peer for _, peer in pairs]

    async def main():
        transports = []
        for ours, _ in pairs:
            transport, _ = await loop.create_connection(lambda: _Recorder(loop), sock=ours)
            transports.append(transport)
        readable_meanwhile = []

        def write(i):
            transports[i].write(b"query %d;" % i)
            transports[i].write(b" and more")  # joins the queued one, in order
            readable_meanwhile.append(select.select(peers, [], [], 0)[0])

        for i in range(3):
            loop.call_soon(write, i)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert readable_meanwhile == [[], [], []]
        assert [t.get_write_buffer_size() for t in transports] == [0, 0, 0]
        return [await _receive(loop, peer, len(b"query 0; and more")) for peer in peers]

    try:
        assert loop.run_until_complete(main()) == [b"query %d; and more" % i for i in range(3)]
    finally:
        for ours, peer in pairs:
            ours.close()
            peer.close()


def _run_then_read_to_the_end(loop, main, ours, peer) -> bytes:
    """Runs `main`, then returns what `peer` receives until the other end is done; closes both."""
    try:
        loop.run_until_complete(main)
        received = b""
        while chunk := peer.recv(100):
            received += chunk
        return received
    finally:
        ours.close()
        peer.close()


@pytest.mark.parametrize("end", ["close", "abort", "write_eof"])
def test_what_is_written_just_before_the_end_is_delivered(any_loop, end):
    # Written, then ended in the same callback: asyncio has sent it by then; percore's queued writes
    # must still arrive (close and write_eof wait for the buffer, abort sends what was queued), and an
    # empty write among them (h11 writes one per response) must not stay in the buffer for ever.
    ours, peer = socket.socketpair()
    peer.settimeout(5)

    async def main():
        transport, _ = await any_loop.create_connection(lambda: _Recorder(any_loop), sock=ours)

        def last_words():
            transport.write(b"last ")
            transport.write(b"")
            transport.write(bytearray(b"words"))
            getattr(transport, end)()

        any_loop.call_soon(last_words)
        await asyncio.sleep(0.05)
        return transport

    assert _run_then_read_to_the_end(any_loop, main(), ours, peer) == b"last words"


def test_a_protocol_writing_from_resume_writing_leaves_no_writer_behind(any_loop):
    # The writer callback empties the buffer and resumes the protocol, which writes again (TLS does):
    # once that is sent, nothing may stay registered for an empty buffer (it would fire, and fail,
    # on every iteration).
    errors = []
    any_loop.set_exception_handler(lambda loop, context: errors.append(context))
    a, b = socket.socketpair()
    b.setblocking(False)
    big = b"x" * (4 * 1024 * 1024)

    class Refill(_Recorder):
        def resume_writing(self):
            super().resume_writing()
            self.transport.write(b"after the pause")

    async def main():
        transport, protocol = await any_loop.create_connection(lambda: Refill(any_loop), sock=a)
        protocol.transport = transport
        transport.write(big)
        assert protocol.paused == 1
        received = await _receive(any_loop, b, len(big) + len(b"after the pause"))
        for _ in range(5):
            await asyncio.sleep(0.01)
        return received, protocol.resumed, transport.get_write_buffer_size()

    try:
        received, resumed, buffered = any_loop.run_until_complete(main())
        assert received.endswith(b"after the pause") and resumed == 1 and buffered == 0
        assert errors == []
    finally:
        a.close()
        b.close()


def test_a_reply_written_before_the_protocol_fails_is_delivered(any_loop):
    ours, peer = socket.socketpair()
    peer.settimeout(5)

    class ReplyThenFail(_Recorder):
        def data_received(self, data):
            self.transport.write(b"bad request")
            raise ValueError("the protocol gave up")

    async def main():
        transport, protocol = await any_loop.create_connection(lambda: ReplyThenFail(any_loop), sock=ours)
        protocol.transport = transport
        peer.sendall(b"?")
        assert isinstance(await protocol.lost, ValueError)

    any_loop.set_exception_handler(lambda loop, context: None)
    assert _run_then_read_to_the_end(any_loop, main(), ours, peer) == b"bad request"


def test_a_write_to_a_closed_peer_ends_the_connection_with_its_error(any_loop):
    ours, peer = socket.socketpair()

    async def main():
        transport, protocol = await any_loop.create_connection(lambda: _Recorder(any_loop), sock=ours)
        peer.close()
        transport.write(b"nobody listens")  # before the loop reads the end
        exc = await protocol.lost
        assert isinstance(exc, BrokenPipeError) and transport.is_closing()

    try:
        any_loop.run_until_complete(main())
    finally:
        ours.close()


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_call_soon_takes_the_arguments_asyncio_takes(any_loop, method):
    """percore binds a builtin that parses `(callback, *args, context=None)` itself."""
    call_soon = getattr(any_loop, method)
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    def record(*args):
        seen.append((args, var.get()))

    with pytest.raises(TypeError, match="callback"):
        call_soon()
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        call_soon(record, bogus=1)
    with pytest.raises(TypeError, match="multiple values for argument 'callback'"):
        call_soon(record, callback=record)
    assert list(inspect.signature(call_soon).parameters)[:3] == ["callback", "args", "context"]
    context = contextvars.copy_context()
    context.run(var.set, "given")
    var.set("current")
    call_soon(record, 1, "two", context=context)
    call_soon(record, context=None)
    call_soon(callback=record)
    handle = call_soon(record, 3)
    var.set("later")  # the copy was taken at the call
    assert handle._args == (3,) and handle._callback is record
    any_loop.call_soon(any_loop.stop)
    any_loop.run_forever()
    assert seen == [((1, "two"), "given"), ((), "current"), ((), "current"), ((3,), "current")]
    var.set("unset")


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_a_closed_loop_refusing_a_call_keeps_nothing_of_it(any_loop, method):
    call_soon = getattr(any_loop, method)
    any_loop.close()

    class Callback:
        def __call__(self):
            pass

    callback = Callback()
    alive = weakref.ref(callback)
    with pytest.raises(RuntimeError, match="closed"):
        call_soon(callback, object())
    del callback
    assert alive() is None


def test_a_protocol_may_bind_its_data_received_after_connection_made(any_loop):
    """The reader looks `data_received` up on every read, as asyncio does: a protocol that binds it in
    connection_made (after the transport took the protocol) gets its data."""
    ours, peer = socket.socketpair()

    class LateBinding(asyncio.Protocol):
        def connection_made(self, transport):
            self.got = bytearray()
            self.data_received = self.got.extend

    async def main():
        transport, protocol = await any_loop.create_connection(LateBinding, sock=ours)
        peer.sendall(b"hello")
        for _ in range(100):
            if protocol.got:
                break
            await asyncio.sleep(0.01)
        assert protocol.got == b"hello"
        transport.close()

    try:
        any_loop.run_until_complete(main())
    finally:
        peer.close()


def test_write_buffer_limits_take_any_number_asyncio_takes(any_loop):
    ours, peer = socket.socketpair()

    async def main():
        transport, _ = await any_loop.create_connection(lambda: _Recorder(any_loop), sock=ours)
        transport.set_write_buffer_limits(high=float("inf"), low=0)
        transport.write(b"x" * 1000)
        transport.set_write_buffer_limits(low=1000.5)  # high: 4 * low = 4002.0
        assert transport.get_write_buffer_limits() == (1000.5, 4002.0)
        transport.set_write_buffer_limits(high=2**70, low=0)
        transport.write(b"y" * 1000)
        assert await _receive(any_loop, peer, 2000) == b"x" * 1000 + b"y" * 1000
        transport.close()

    peer.setblocking(False)
    try:
        any_loop.run_until_complete(main())
    finally:
        peer.close()


def test_a_write_kept_from_before_the_end_never_reaches_a_reused_descriptor(any_loop):
    """asyncio ends a connection closed with data buffered once the buffer drains, with `_conn_lost` still
    0; the descriptor number then goes to the next socket. A `write` kept from before must not send there."""
    ours, peer = socket.socketpair()
    number = ours.fileno()
    reported = []
    any_loop.set_exception_handler(lambda loop, context: reported.append(context))

    async def main():
        transport, protocol = await any_loop.create_connection(lambda: _Recorder(any_loop), sock=ours)
        write = transport.write
        transport.write(b"x" * 2_000_000)  # more than a socketpair takes: buffered
        transport.close()
        await _receive(any_loop, peer, 2_000_000)
        assert await protocol.lost is None
        reused = socket.socketpair()
        try:
            assert number in (reused[0].fileno(), reused[1].fileno())
            try:
                write(b"secret")
            except AttributeError:
                pass  # asyncio's own write after the end (its socket is gone)
            await asyncio.sleep(0.01)
            for sock in reused:
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(100)
        finally:
            for sock in reused:
                sock.close()

    peer.setblocking(False)
    try:
        any_loop.run_until_complete(main())
    finally:
        peer.close()


async def _echo_via_streams() -> bytes:
    async def handle(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello streams\n")
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
    return line


def test_tcp_echo_via_streams(any_loop):
    assert any_loop.run_until_complete(_echo_via_streams()) == b"hello streams\n"


def test_tcp_echo_via_streams_over_tls(loop):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(CERTS / "localhost.crt", CERTS / "localhost.key")
    client_ctx = ssl.create_default_context(cafile=CERTS / "localhost.crt")

    async def main():
        async def handle(reader, writer):
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
            )
            writer.write(b"hello tls\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
        return line

    assert loop.run_until_complete(main()) == b"hello tls\n"


def test_tcp_echo_via_transports_and_protocols(any_loop):
    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    class Client(asyncio.Protocol):
        def __init__(self):
            self.received = b""
            self.done = any_loop.create_future()

        def connection_made(self, transport):
            transport.write(b"x" * 100_000)  # more than one socket buffer: exercises add_writer
            self.transport = transport

        def data_received(self, data):
            self.received += data
            if len(self.received) == 100_000:
                self.transport.close()

        def connection_lost(self, exc):
            self.done.set_result(self.received)

    async def main():
        server = await any_loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, client = await any_loop.create_connection(Client, "127.0.0.1", port)
        received = await client.done
        server.close()
        await server.wait_closed()
        return received

    assert any_loop.run_until_complete(main()) == b"x" * 100_000


def test_sock_methods_getaddrinfo_and_run_in_executor(loop):
    async def main():
        infos = await loop.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)
        assert infos
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        with listener, client:
            await loop.sock_connect(client, listener.getsockname())
            conn, _ = await loop.sock_accept(listener)
            with conn:
                await loop.sock_sendall(client, b"ping")
                assert await loop.sock_recv(conn, 4) == b"ping"
        return await loop.run_in_executor(None, threading.get_ident)

    assert loop.run_until_complete(main()) != threading.get_ident()


def test_closing_with_pending_work_drops_it(loop):
    seen = []
    loop.call_soon(seen.append, "never")
    loop.call_later(0, seen.append, "never either")
    a, b = socket.socketpair()
    loop.add_reader(a, seen.append, "nor this")
    loop.close()
    assert loop.is_closed()
    loop.close()  # twice is fine
    assert seen == []
    assert loop._reactor.counts() == (0, 0, 0)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon_threadsafe(print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_later(1, print)
    coroutine = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_until_complete(coroutine)
    coroutine.close()
    a.close()
    b.close()


def test_a_running_loop_cannot_be_closed(loop):
    async def main():
        with pytest.raises(RuntimeError, match="running"):
            loop.close()

    loop.run_until_complete(main())


def test_an_exception_in_a_callback_goes_to_the_exception_handler(any_loop):
    contexts = []
    any_loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    seen = []

    def boom():
        raise ValueError("boom")

    handle = any_loop.call_soon(boom)
    any_loop.call_soon(seen.append, "still runs")
    any_loop._run_once()
    assert seen == ["still runs"]
    [context] = contexts
    assert isinstance(context["exception"], ValueError)
    assert context["handle"] is handle
    assert context["message"].startswith("Exception in callback")
    assert "boom" in context["message"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_escape_and_leave_the_rest_queued(any_loop, exc):
    seen = []

    def interrupt():
        raise exc

    any_loop.call_soon(interrupt)
    any_loop.call_soon(seen.append, "after")
    with pytest.raises(exc):
        any_loop._run_once()
    assert seen == []
    any_loop._run_once()
    assert seen == ["after"]


def test_stop_before_run_forever_runs_one_iteration(any_loop):
    seen = []
    any_loop.call_soon(seen.append, 1)
    any_loop.stop()
    any_loop.run_forever()
    assert seen == [1]
    assert not any_loop.is_running()


def test_asyncio_timeout_and_task_group(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(3600)

        async def child(i):
            await asyncio.sleep(0)
            return i * 2

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(child(i)) for i in range(10)]

        async def fail():
            raise ValueError("child failed")

        with pytest.raises(ExceptionGroup):
            async with asyncio.TaskGroup() as group:
                group.create_task(fail())
                group.create_task(asyncio.sleep(3600))
        return [t.result() for t in tasks]

    assert loop.run_until_complete(main()) == [i * 2 for i in range(10)]


def test_percore_run_and_asyncio_runners_use_our_loop():
    async def which():
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop())

    assert percore.run(which()) is percore.EventLoop
    if sys.version_info >= (3, 12):  # asyncio.run's loop_factory is new in 3.12
        assert asyncio.run(which(), loop_factory=percore.new_event_loop) is percore.EventLoop
    with asyncio.Runner(loop_factory=percore.new_event_loop) as runner:
        assert runner.run(which()) is percore.EventLoop
    policy = asyncio.get_event_loop_policy()
    try:
        asyncio.set_event_loop_policy(percore.EventLoopPolicy())
        assert asyncio.run(which()) is percore.EventLoop
    finally:
        asyncio.set_event_loop_policy(policy)


def test_signal_handlers_wake_the_loop(loop):
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, got.set_result, "signalled")
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        assert loop.run_until_complete(got) == "signalled"
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


@pytest.mark.e2e  # starts a (short) Python process
def test_subprocess(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print(input().upper())", stdin=-1, stdout=-1
        )
        out, _ = await proc.communicate(b"percore\n")
        return out, proc.returncode

    assert loop.run_until_complete(main()) == (b"PERCORE\n", 0)


def test_debug_mode_checks_callbacks(loop):
    loop.set_debug(True)
    with pytest.raises(TypeError, match="coroutine"):
        loop.call_soon(_echo_via_streams)
    loop.set_debug(False)
    assert loop.call_soon.__self__ is loop._reactor  # the fast path is back


@pytest.mark.parametrize("factory", list(FACTORIES.values()), ids=list(FACTORIES))
def test_a_closed_loop_holds_no_descriptor(factory):
    # A test suite makes and closes a loop per test: what a loop opened must be closed by close(), not
    # when the cycle collector gets to it (percore's reactor held its epoll fd and eventfd until then).
    def open_descriptors():
        return len(os.listdir("/proc/self/fd"))

    gc.collect()
    gc.disable()
    try:
        before = open_descriptors()
        loops = [factory() for _ in range(20)]
        for loop in loops:
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
        assert open_descriptors() == before
        with pytest.raises(RuntimeError, match="closed"):
            loops[0].call_soon_threadsafe(print)
    finally:
        gc.enable()


def test_futures_and_tasks_record_their_origin_only_in_debug_mode(any_loop):
    async def nothing():
        pass

    def created():
        future, task = any_loop.create_future(), any_loop.create_task(nothing())
        any_loop.run_until_complete(task)
        return future._source_traceback is not None, task._source_traceback is not None

    assert any_loop.get_debug() is False
    assert created() == (False, False)
    any_loop.set_debug(True)
    assert any_loop.get_debug() is True
    assert created() == (True, True)
    any_loop.set_debug(False)
    assert any_loop.get_debug() is False
    assert created() == (False, False)


def test_anyio_on_our_loop():
    anyio = pytest.importorskip("anyio")

    async def main():
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.sleep, 0)
        result = await anyio.to_thread.run_sync(lambda: 42)
        return result, type(asyncio.get_running_loop())

    assert anyio.run(main, backend_options={"loop_factory": percore.new_event_loop}) == (
        42,
        percore.EventLoop,
    )


def test_httpx_client_against_a_local_http_server(loop):
    httpx = pytest.importorskip("httpx")

    async def main():
        async def handle(reader, writer):
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/")
        return response.status_code, response.text

    assert loop.run_until_complete(main()) == (200, "hello")


def test_an_outer_reactor_can_wait_on_the_loop(loop):
    # How the server's tokio driver will run this loop: wait on fileno() itself for park()'s timeout,
    # then run_once(block=False). A call from another thread must make fileno() readable.
    import select

    reactor = loop._reactor
    seen = []
    loop.call_soon(seen.append, "ready")
    assert reactor.park() == 0.0  # callbacks are ready: do not wait
    reactor.run_once(block=False)
    assert seen == ["ready"]
    timer = loop.call_later(3600, seen.append, "later")
    timeout = reactor.park()
    assert timeout is not None and 0 < timeout <= 3600
    assert select.select([reactor.fileno()], [], [], 0)[0] == []
    thread = threading.Thread(target=loop.call_soon_threadsafe, args=(seen.append, "from a thread"))
    thread.start()
    assert select.select([reactor.fileno()], [], [], 60)[0] == [reactor.fileno()]
    thread.join()
    reactor.run_once(block=False)
    assert seen == ["ready", "from a thread"]
    timer.cancel()
    assert reactor.park() is None  # nothing scheduled: only I/O can wake it


def test_loops_closed_or_just_dropped_give_their_descriptors_back():
    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    gc.collect()  # what earlier tests left for the collector (sockets) closes now, not during the count
    before = open_fds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # "unclosed event loop", on purpose
        for close in [True, False] * 10:
            loop = percore.new_event_loop()
            loop.call_soon(print)  # a callback referencing the loop: a cycle only the collector breaks
            loop.call_soon(loop.stop)
            loop.call_later(3600, print)
            if close:
                loop.close()
            alive = weakref.ref(loop)
            del loop
            gc.collect()
            assert alive() is None
    assert open_fds() <= before  # each loop has 4 (epoll, eventfd, self-pipe): a leak shows as +80


def test_finalizers_run_by_the_reactor_may_schedule_callbacks(loop):
    # The reactor drops Python objects only after releasing its lock: a finalizer calling call_soon
    # from inside remove_reader, close or a purge would otherwise deadlock the loop's thread.
    seen = []

    class Finalizer:
        def __del__(self):
            if not loop.is_closed():
                loop.call_soon(seen.append, "finalized")

    a, b = socket.socketpair()
    with a, b:
        loop.add_reader(a, print, Finalizer())
        assert loop.remove_reader(a)
        loop.add_writer(b, print, Finalizer())
        loop.add_writer(b, print, Finalizer())  # replaces (and cancels) the first
        assert loop.remove_writer(b)
        timers = [loop.call_later(3600, print, Finalizer()) for _ in range(200)]
        for timer in timers:
            timer.cancel()
        del timers
        loop.call_soon(print, Finalizer())
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.run_until_complete(asyncio.sleep(0))
    assert seen.count("finalized") == 204
    loop.call_later(3600, print, Finalizer())
    loop.close()
