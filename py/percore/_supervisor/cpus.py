"""Which CPUs each worker is pinned to: its slice of the supervisor's affinity mask."""

from __future__ import annotations


def cpu_slices(cpus: list[int], workers: int, loops: str) -> list[list[int]]:
    """The CPUs each worker is pinned to (its affinity mask; its loops pin to the CPUs in it).

    ``--loops auto``: the mask is split into ``workers`` contiguous, near-equal slices (one loop per CPU);
    with more workers than CPUs each worker gets one CPU, round-robin. ``--loops N``: the ``workers × N``
    loops are laid over the mask in order, wrapping round-robin, and a worker gets the CPUs of its loops.
    """
    cpus = sorted(cpus)
    count = len(cpus)
    if loops.strip().lower() == "auto":
        if workers <= count:
            return [cpus[i * count // workers : (i + 1) * count // workers] for i in range(workers)]
        return [[cpus[i % count]] for i in range(workers)]
    try:
        per_worker = int(loops)
    except ValueError:
        per_worker = 0
    if per_worker < 1:  # invalid: each worker reports the error itself, like the single-process server
        return [cpus for _ in range(workers)]
    return [sorted({cpus[(i * per_worker + j) % count] for j in range(per_worker)}) for i in range(workers)]
