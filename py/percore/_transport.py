"""Socket transports of percore's event loop.

``SocketTransport`` is asyncio's ``_SelectorSocketTransport`` (TCP and Unix stream sockets without TLS,
for ``create_connection``, ``create_server``, ``open_connection`` & co.) with its two hot paths in Rust
(``runtime/src/python/transport.rs``): the reader callback that ``recv``s into a ``data_received``
protocol, and the first ``send`` of ``write``. Everything else — buffering and the writer callback, flow
control, ``write_eof``, ``close``/``abort``, sendfile, ``get_extra_info``, buffered protocols — is
asyncio's own code, and the Rust paths hand every unusual case to it.
"""

from __future__ import annotations

import functools
import sys
from asyncio import protocols, selector_events

from ._runtime import SocketIo, socket_flush, socket_read_ready, socket_write

# asyncio's write buffer is a deque of buffers from 3.12 on (a bytearray before): small writes are queued
# in it until the iteration's callbacks are done only there.
_QUEUES_WRITES = sys.version_info >= (3, 12)


class SocketTransport(selector_events._SelectorSocketTransport):  # type: ignore[name-defined,misc]
    # asyncio's write, for what the Rust path does not send at once (called with the transport's state
    # untouched, or with the part the socket did not take).
    _python_write = selector_events._SelectorSocketTransport.write

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None) -> None:
        # Before asyncio's __init__, which sets the protocol and schedules add_reader(fd, self._read_ready).
        # `_percore_io` keeps what the Rust paths would otherwise read from attributes on every call; the
        # methods below that change those keep it true (`max_size` is read here, once). (Each partial refers
        # back to the transport: a cycle until the connection is lost, see below.)
        io = self._percore_io = SocketIo(loop._reactor, sock.fileno(), self.max_size, _QUEUES_WRITES)
        self._read_ready = functools.partial(socket_read_ready, self, io)
        # A small write made while the loop runs callbacks waits in `_buffer` until they are done, and the
        # flush sends it then (see socket_write): a burst of them leaves back to back.
        self.write = functools.partial(socket_write, self, io)
        io.set_flush(functools.partial(socket_flush, self, io))
        super().__init__(loop, sock, protocol, waiter, extra, server)

    def set_protocol(self, protocol) -> None:
        super().set_protocol(protocol)
        # The Rust reader calls protocol.data_received; a BufferedProtocol reads through asyncio's own code.
        buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._percore_io.set_protocol(None if buffered else protocol)

    def _set_write_buffer_limits(self, high=None, low=None) -> None:
        super()._set_write_buffer_limits(high, low)
        # asyncio takes any number (float("inf") included): compared with byte counts, its floor is the same.
        self._percore_io.set_high_water(int(min(self._high_water, sys.maxsize)))

    def write_eof(self) -> None:
        try:
            super().write_eof()
        finally:
            self._percore_io.set_eof(self._eof)

    def _make_empty_waiter(self):
        waiter = super()._make_empty_waiter()
        self._percore_io.set_sendfile(True)
        return waiter

    def _reset_empty_waiter(self) -> None:
        super()._reset_empty_waiter()
        self._percore_io.set_sendfile(False)

    def writelines(self, list_of_data) -> None:
        # asyncio's sends the whole buffer at once, what socket_write queued included; what it leaves
        # is a full socket's backlog.
        self._percore_io.take_queued()
        super().writelines(list_of_data)

    def _force_close(self, exc) -> None:
        # abort(), or a protocol that wrote a reply and then failed: what was queued in this iteration
        # had, for asyncio, been handed to the kernel already, which delivers it before the end. Best
        # effort, as there; data a full socket left buffered is dropped, as asyncio drops it.
        if self._percore_io.take_queued() and self._buffer and not self._conn_lost:
            try:
                for data in self._buffer:
                    if self._sock.send(data) < len(data):
                        break
            except OSError:
                pass
        super()._force_close(exc)

    def _call_connection_lost(self, exc) -> None:
        try:
            super()._call_connection_lost(exc)
        finally:
            # Break the cycle through the partials: asyncio's own methods take over, and after the end
            # they only count and drop writes.
            self.__dict__.pop("_read_ready", None)
            self.__dict__.pop("write", None)
            self._percore_io.clear()
