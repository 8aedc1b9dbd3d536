"""Run the promptbake CLI and ``kill -9`` ourselves at an exact point of a build.

Killing from outside by polling cannot hit "after train.jsonl was renamed, before test.jsonl" on
purpose; a hook inside the process can, and SIGKILL gives it no chance to clean up, exactly like
``kill -9`` from a shell. Usage: ``python killer.py POINT -- promptbake-args...`` where POINT is
``build`` (as build starts, after generate finished) or ``replace:N`` (just before the N-th atomic
rename of an output file: 1 = a temp file written, nothing renamed; 2 = train.jsonl in place).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    if point == "build":
        from promptbake.build import builder

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
