"""The open-files limit (RLIMIT_NOFILE): every connection is a file descriptor, so a server allowed
``--max-connections`` per loop needs loops × that many, plus a few of its own.

Most systems start processes with a soft limit of 1024 and a much higher hard limit, which only the
process itself may use. At start ``serve`` raises the soft limit to the hard one (as Go's runtime does)
and warns when even that is below what the connection limit allows: past it, accepting fails with EMFILE
(new connections wait in the listen backlog) and so does opening files."""

from __future__ import annotations

from ._logging import logger

try:
    import resource
except ImportError:  # not a Unix: nothing to raise
    resource = None  # type: ignore[assignment]

# Descriptors the server holds besides its connections: listeners, the metrics port, each loop's selector
# and wake-up pipe, the access log, the app's own files. A guess that errs on the generous side.
MARGIN = 64
# --max-connections when not given: runtime/src/config.rs, Limits::default.
DEFAULT_MAX_CONNECTIONS = 10_000


def raise_limit() -> int | None:
    """Raises the soft limit to the hard limit; returns the soft limit now in force (None: unlimited or
    unknown)."""
    if resource is None:
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    target = hard
    if hard == resource.RLIM_INFINITY:  # Linux refuses more than fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open") as nr_open:
                target = int(nr_open.read())
        except (OSError, ValueError):
            target = soft
    if soft == resource.RLIM_INFINITY or target <= soft:
        return None if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as error:
        logger.debug("cannot raise the open-files limit from %d to %d: %s", soft, target, error)
        return soft
    return target


def warn_if_short(limit: int | None, loops: int, max_connections: int | None) -> None:
    """One warning when ``loops`` × ``max_connections`` (+ ``MARGIN``) descriptors exceed ``limit``."""
    per_loop = DEFAULT_MAX_CONNECTIONS if max_connections is None else max_connections
    needed = loops * per_loop + MARGIN
    if limit is not None and needed > limit:
        logger.warning(
            "the open-files limit is %d, but --loops %d × --max-connections %d need about %d: past it new "
            "connections wait unaccepted and opening files fails (EMFILE). Raise the hard limit "
            "(ulimit -Hn, systemd LimitNOFILE=) or lower --max-connections",
            limit,
            loops,
            per_loop,
            needed,
        )
