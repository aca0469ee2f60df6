"""The worker's side of the supervisor: what a worker process does before it imports the app."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from collections.abc import Callable

from .._logging import logger
from ..exceptions import StartupError


class _WorkerTag(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.prefix = f"worker {index}: "

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.msg.startswith(self.prefix):
            record.msg = self.prefix + record.msg
        return True


def enter_worker(
    index: int, supervisor: int, cpus: str | None, ready_fd: int
) -> tuple[Callable[[], None], Callable[[], None]]:
    """What a worker does before importing the app: exit with its supervisor, pin itself to its CPUs (the
    loops pin to the CPUs in the mask), tag its log lines. Returns the callbacks that tell the supervisor
    this worker serves, and that it reached ``--limit-max-requests`` (start my replacement, then stop me)."""
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        logger.warning("cannot ask to be stopped with the supervisor: errno %d", ctypes.get_errno())
    if os.getppid() != supervisor:  # it died before prctl: nobody would stop us
        raise StartupError(f"worker {index}: the supervisor (pid {supervisor}) is gone")
    if cpus:
        os.sched_setaffinity(0, [int(cpu) for cpu in cpus.split(",")])
    logger.addFilter(_WorkerTag(index))

    def tell(line: str, what: str) -> None:
        try:
            os.write(ready_fd, f"{line}\n".encode())
        except OSError as error:  # the supervisor is gone; PR_SET_PDEATHSIG stops us
            logger.warning("cannot tell the supervisor %s: %s", what, error)

    def ready() -> None:
        tell(str(os.getpid()), "this worker serves")

    def recycle() -> None:
        tell(f"recycle {os.getpid()}", "this worker reached --limit-max-requests")

    return ready, recycle
