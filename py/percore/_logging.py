"""percore's logger and the hook the Rust side calls when a handler fails.

Log lines are formatted on the thread that logs (a traceback must be rendered while its frames exist) but
written by a thread of their own through a bounded queue: handler errors are logged on a loop thread, and a
stderr that blocks (a pipe nobody reads, a stalled terminal) must never stall a loop — found by the soak
run, where a full stderr pipe stopped a loop serving. When the queue is full, lines are dropped and the
writer says how many.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time

logger = logging.getLogger("percore")

QUEUE_CAPACITY = 10_000
# How long flush() (logging.shutdown at exit) waits for queued lines to reach the stream.
FLUSH_SECONDS = 2.0


class BackgroundStreamHandler(logging.Handler):
    """A StreamHandler whose writes happen on a daemon thread, behind a bounded queue."""

    def __init__(self, stream=None, capacity: int = QUEUE_CAPACITY) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.lines: queue.Queue[str] = queue.Queue(capacity)
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_forever, name="percore-log", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self.lines.put_nowait(line)
        except queue.Full:
            with self._dropped_lock:
                self._dropped += 1

    def _write_forever(self) -> None:
        while True:
            line = self.lines.get()
            try:
                with self._dropped_lock:
                    dropped, self._dropped = self._dropped, 0
                if dropped:
                    line = (
                        f"percore: {dropped} log line(s) dropped: the log stream was not keeping up\n{line}"
                    )
                write_lines(self.stream, line + "\n")
            except Exception:  # a closed or broken stream: nothing sensible left to report to
                pass
            finally:
                self.lines.task_done()

    def flush(self) -> None:
        self.drain(FLUSH_SECONDS)

    def drain(self, seconds: float) -> None:
        """Waits up to ``seconds`` for the lines queued so far to be written; takes no lock (a signal handler
        may call it while its own thread holds the queue's)."""
        deadline = time.monotonic() + seconds
        while self.lines.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)


def write_lines(stream, text: str) -> None:
    """Writes ``text``, whole lines, to ``stream`` in one ``write(2)`` when it has a file descriptor.

    Why: a ``--workers`` supervisor and its workers share one stderr. With an unbuffered stderr
    (``PYTHONUNBUFFERED``, ``python -u``) ``print()`` writes a line and its newline in two calls, and a
    buffered one splits a line longer than its buffer, so a worker stopped between two writes (SIGTERM from
    its supervisor) left a line without its newline and the next process's line ran on into it. One write of
    whole lines (to a pipe: up to PIPE_BUF bytes, never interleaved) is all of a line or none of it."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # no descriptor (io.StringIO, pytest's capture)
        stream.write(text)
        stream.flush()
        return
    stream.flush()  # what the stream still buffers goes first
    data = text.encode(getattr(stream, "encoding", None) or "utf-8", "backslashreplace")
    while data:  # a blocking write is short only past PIPE_BUF or when a signal interrupts it
        data = data[os.write(fd, data) :]


def flush() -> None:
    """Writes the log lines queued so far (each handler waits a bounded time for its writer)."""
    for handler in logger.handlers:
        handler.flush()


def write_error_line(text: str) -> None:
    """``text`` as one line on stderr, after the log lines queued before it (``runtime: error: ...``)."""
    flush()
    write_lines(sys.stderr, text + "\n")


def log_handler_error(route: str, error: BaseException) -> None:
    logger.error("Exception in handler for %s", route, exc_info=(type(error), error, error.__traceback__))


def configure(level: str) -> None:
    if not logger.handlers:
        handler = BackgroundStreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
