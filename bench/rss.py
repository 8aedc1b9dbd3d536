"""Resident memory of a process and every process it started, sampled while they run.

``ru_maxrss`` is one process's peak; ``generate`` on a big grid plans in a helper process beside
the run, so the benchmarks also report the largest sum over the process tree at one sample.
Linux only (``/proc``); elsewhere the sum reads 0.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def tree_rss(pid: int) -> int:
    """KiB resident in ``pid`` and its descendants now (0 for a process already gone)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0
    return rss + sum(tree_rss(int(kid)) for kid in kids)


class TreePeak:
    """The largest :func:`tree_rss` of the children of this process, every ``every`` seconds,
    from ``start()`` to ``stop()`` (MiB in ``peak``)."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._done.is_set():
            kids = Path(f"/proc/{me}/task/{me}/children")
            total = sum(tree_rss(int(k)) for k in kids.read_text().split()) if kids.exists() else 0
            self.peak = max(self.peak, total / 1024)
            time.sleep(self.every)

    def start(self) -> TreePeak:
        self._thread.start()
        return self

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak
