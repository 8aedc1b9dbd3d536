"""Progress of a sending step on stderr, the same for the online pool and batch mode."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from promptbake.teacher.jobs import Outcome


def _in_notebook() -> bool:
    """True inside a Jupyter kernel, where stderr is no terminal but a widget bar works."""
    shell = sys.modules.get("IPython")
    ipython = getattr(shell, "get_ipython", lambda: None)() if shell is not None else None
    return type(ipython).__name__ == "ZMQInteractiveShell"


class Progress:
    """Progress on stderr: done/total, req/s, tok/s, spend and failures.

    A tqdm bar on a terminal (``tqdm.auto``: a widget in a notebook); otherwise (a log file, CI,
    a pipe) one plain line at least every ``every`` seconds (``$PROMPTBAKE_PROGRESS_EVERY``,
    default 5) and a last one at the end, so a long run is never silent.
    """

    def __init__(self, enabled: bool, total: int | None, label: str, *, every: float | None = None,
                 stream: TextIO | None = None, unit: str = "req") -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.label = label
        self.bar = None
        self._stop: threading.Event | None = None
        self.start = time.monotonic()
        self.done = 0
        self.tokens = 0
        self.spent = 0.0
        self.errors = 0
        if not enabled:
            return
        if self.stream.isatty() or _in_notebook():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, unit=unit, file=self.stream, dynamic_ncols=True)
            return
        every = every if every is not None else float(os.environ.get("PROMPTBAKE_PROGRESS_EVERY") or 5)
        self._stop = threading.Event()
        # a thread, not the event loop: the line must come even while every request is stuck
        threading.Thread(target=self._lines, args=(every, self._stop), daemon=True).start()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        total = "?" if self.total is None else self.total  # a streamed step's total is not known up front
        return (f"{self.label}: {self.done}/{total}{share}, {self.done / elapsed:,.1f} req/s, "
                f"{self.tokens / elapsed:,.0f} tok/s, ${self.spent:.4f}, {self.errors} failed")

    def _lines(self, every: float, stop: threading.Event) -> None:
        while not stop.wait(every):
            print(self.line(), file=self.stream, flush=True)

    def update(self, outcome: Outcome) -> None:
        self.done += 1
        for attempt in outcome.attempts:
            self.tokens += attempt.prompt_tokens + attempt.completion_tokens
            self.spent += attempt.cost
        self.errors += 0 if outcome.ok else 1
        if self.bar is not None:
            elapsed = max(time.monotonic() - self.start, 1e-6)
            self.bar.set_postfix_str(
                f"{self.tokens / elapsed:,.0f} tok/s, ${self.spent:.4f}, {self.errors} failed", refresh=False
            )
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._stop is not None and not self._stop.is_set():
            self._stop.set()
            print(self.line(), file=self.stream, flush=True)
