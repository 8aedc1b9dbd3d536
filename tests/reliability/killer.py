"""Run the promptbake CLI and ``kill -9`` ourselves at an exact point of a build.

Killing from outside by polling cannot hit "after train.jsonl was renamed, before test.jsonl" on
purpose; a hook inside the process can, and SIGKILL gives it no chance to clean up, exactly like
``kill -9`` from a shell. Usage: ``python killer.py POINT -- promptbake-args...`` where POINT is
``build`` (as build starts, after generate finished) or ``replace:N`` (just before the N-th atomic
rename of an output file: 1 = a temp file written, nothing renamed; 2 = train.jsonl in place), or a
batch mode point (see ``arm_batch``).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm_batch(point: str) -> None:
    """``batch-poll:N``: as the N-th status check of an open batch starts; ``batch-uploaded`` /
    ``batch-created``: right after the provider returned the file id / batch id, before the store
    could record it (the narrowest windows a resume must cover); ``batch-collect``: a finished
    batch's answers written into the store's transaction, not yet committed."""
    from promptbake.teacher.batch import BatchApi

    if point == "batch-collect":
        from promptbake.store.batches import BatchLedger

        BatchLedger.mark_collected = lambda *a, **k: _die()  # type: ignore[method-assign]
        return
    kind, _, n = point.partition(":")
    name = {"batch-poll": "retrieve", "batch-uploaded": "upload", "batch-created": "create"}[kind]
    real = getattr(BatchApi, name)
    calls = 0

    async def hooked(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if kind == "batch-poll" and calls == int(n):
            _die()
        answer = await real(self, *args, **kwargs)
        if kind != "batch-poll":
            _die()
        return answer

    setattr(BatchApi, name, hooked)


def arm(point: str) -> None:
    if point.startswith("batch-"):
        arm_batch(point)
        return
    if point == "build":
        from promptbake.curate import builder

        builder.build = lambda *a, **k: _die()  # type: ignore[assignment]
        return
    kind, _, n = point.partition(":")
    if kind != "replace":
        raise SystemExit(f"unknown kill point {point!r}")
    real = os.replace
    calls = 0

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == int(n):
            _die()
        real(src, dst, **kwargs)

    os.replace = replace  # type: ignore[assignment]


if __name__ == "__main__":
    point, separator, *args = sys.argv[1:]
    assert separator == "--"
    arm(point)
    from promptbake.cli.main import cli

    cli(args, prog_name="promptbake")
