"""Step 0 of a big grid, planned a slice of cells at a time, the later slices in a helper process.

Planning is Python from end to end (render, three hashes, a token count, the rows' JSON), a
quarter of what ``generate`` spends per request on a big grid, and the event loop that sends and
stores the answers runs on one core. A helper process plans the next slice on another core
while this one sends the slice before; this process keeps the store (its one writer) and the
sending, so every guarantee about what is stored, and when, is unchanged.

The helper gets the spec and the teacher settings once, plans from the cell it is told to start
at, and writes each slice as one pickle to its stdout; the pipe holds it to about one slice ahead.
The first slices are planned here while the helper starts (its imports take longer than a small
slice takes to send), and if the helper stops, or cannot start, the rest is planned here: the
plan is the same either way (the same code plans the same cells).
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from promptbake.plan.expand import Cell, Expander
from promptbake.plan.planner import Planner
from promptbake.specification.models import Spec, TeacherConfig
from promptbake.store.db import cell_row, request_row

# How long a slice boundary waits for the helper to be ready: not at all (the slice is planned
# here instead); tests wait, to know which slices the helper plans.
READY_WAIT = 0.0


class Ask(NamedTuple):
    """What sending a planned request needs (see :func:`promptbake.teacher.jobs.step_job`)."""

    id: str
    body: dict[str, Any]
    est_tokens: int
    cache_key: str


@dataclass
class PlanSlice:
    cells: list[tuple[Any, ...]]  # rows of the store's cells table
    rows: list[tuple[Any, ...]]  # rows of its requests table
    blobs: dict[str, str]  # the long system prompts the rows name by hash
    asks: list[Ask]


def plan_slice(planner: Planner, chunk: list[Cell]) -> PlanSlice:
    """Step 0's requests for the cells of ``chunk`` in round 0, as the store takes them."""
    blobs: dict[str, str] = {}
    name = planner.spec.name
    planned = list(planner.first_step(chunk, 0))
    return PlanSlice(
        [cell_row(name, cell) for cell in chunk],
        [request_row(r, blobs) for r in planned],
        blobs,
        [Ask(r.id, r.body, r.est_tokens, r.cache_key) for r in planned],
    )


def sizes(first: int, most: int) -> Iterator[int]:
    """Slice sizes: the first answers come at once, and the plan goes in in a few big commits."""
    size = first
    while True:
        yield size
        size = min(2 * size, most)


@dataclass
class Setup:
    """What the helper is sent first: enough to build the same planner as the run's."""

    spec: Spec
    config: TeacherConfig
    topup_round: int
    origin: str = field(default_factory=lambda: _origin())  # the promptbake this run imported


def _origin() -> str:
    import promptbake

    return str(Path(promptbake.__file__).resolve().parent)


@dataclass
class Start:
    """Plan from cell ``at`` on, in slices of ``sizes(first, most)``."""

    at: int
    first: int
    most: int


class Helper:
    """The helper process, from this side. Every method returns None (or False) once the
    helper is gone: the caller plans the rest itself."""

    def __init__(self, setup: Setup) -> None:
        # -P: not the working directory first on its path, where a stray module could shadow ours
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "promptbake.teacher.ahead"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ready = False
        self.started = False
        self.refused: str | None = None  # why it will not plan, when it said so
        if not self._send(setup):
            self.close()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _send(self, message: object) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def _receive(self) -> tuple[str, Any] | None:
        assert self.proc.stdout is not None
        try:
            return pickle.load(self.proc.stdout)  # type: ignore[no-any-return]
        except Exception:  # whatever came through is no slice: plan here
            return None

    def poll_ready(self) -> bool:
        """Whether the helper has its planner built (without waiting for it)."""
        if not self.ready and self.proc.stdout is not None and not self.proc.stdout.closed:
            readable, _, _ = select.select([self.proc.stdout], [], [], READY_WAIT)
            if readable:
                message = self._receive()
                self.ready = message == ("ready", None)
                if message is not None and message[0] == "refused":
                    self.refused = message[1]
        return self.ready

    def start(self, at: int, first: int, most: int) -> bool:
        self.started = self._send(Start(at, first, most))
        return self.started

    def next(self) -> PlanSlice | BaseException | None:
        """The next slice (an empty one at the end of the grid), the error that stopped the
        helper's planning (a template that fails on some row), or None when it stopped itself."""
        message = self._receive()
        return None if message is None else message[1]  # ("slice", PlanSlice) or ("error", exception)

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        try:
            self.proc.wait(0.5)  # its stdin closed: it stops at once, unless still starting
        except subprocess.TimeoutExpired:
            self.proc.kill()  # it holds nothing: the store is this process's alone
            self.proc.wait()


def slices(planner: Planner, cells: Callable[[], Iterator[Cell]], setup: Setup | None, first: int, most: int,
           notice: Callable[[str], None]) -> Generator[PlanSlice, None, None]:
    """Step 0 of round 0, slice by slice, planned here or, with ``setup``, by a helper process
    once it is ready. ``cells``: the grid's cells, from the first, each time it is called."""
    helper: Helper | None = None
    if setup is not None:
        try:
            helper = Helper(setup)
        except OSError as exc:
            notice(f"planning in this process: the planning helper could not start ({exc})")
    try:
        here = cells()
        at = 0
        plan = sizes(first, most)
        while True:
            if helper is not None and helper.started:
                got = helper.next()
                if isinstance(got, BaseException):
                    raise got
                if got is not None:
                    if not got.cells:
                        return
                    at += len(got.cells)
                    yield got
                    continue
                notice(f"planning in this process from cell {at + 1}: the planning helper stopped "
                       f"(exit code {helper.proc.poll()})")
                helper.close()
                helper = None
                here = itertools.islice(cells(), at, None)
            size = next(plan)
            chunk = list(itertools.islice(here, size))
            if not chunk:
                return
            at += len(chunk)
            why = None
            if helper is not None and helper.poll_ready():
                # it plans the slice after this one while this one is sent
                if not helper.start(at, next(plan), most):
                    why = f"it stopped as it was told where to start (exit code {helper.proc.poll()})"
            elif helper is not None and (helper.refused or not helper.alive):
                why = helper.refused or f"it stopped before it was ready (exit code {helper.proc.poll()})"
            if helper is not None and why is not None:
                notice(f"planning in this process: the planning helper does not plan: {why}")
                helper.close()
                helper = None
            yield plan_slice(planner, chunk)
    finally:
        if helper is not None:
            helper.close()


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    setup: Setup = pickle.load(stdin)

    def send(kind: str, value: object) -> None:
        stdout.write(pickle.dumps((kind, value), protocol=pickle.HIGHEST_PROTOCOL))
        stdout.flush()

    if _origin() != setup.origin:  # another promptbake would plan other rows
        send("refused", f"it imports promptbake from {_origin()}, the run from {setup.origin}")
        return
    expander = Expander(setup.spec)
    planner = Planner(setup.spec, expander.templates, setup.config, topup_round=setup.topup_round)
    send("ready", None)
    try:
        start: Start = pickle.load(stdin)
    except EOFError:
        return
    cells = itertools.islice(expander.cells(), start.at, None)
    try:
        for size in sizes(start.first, start.most):
            chunk = list(itertools.islice(cells, size))
            send("slice", plan_slice(planner, chunk))
            if not chunk:
                return
    except Exception as exc:
        try:
            pickle.dumps(exc)
        except Exception:
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        send("error", exc)


def main() -> None:
    # Ctrl-C reaches the whole process group: it is the run's to handle; the helper stops when
    # its stdin closes (the run ended, or died)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but slices on the pipe
    with contextlib.suppress(BrokenPipeError, EOFError):  # the run is gone
        _serve(stdin, stdout)


if __name__ == "__main__":
    # by its importable name: what the helper pickles must unpickle as promptbake's classes
    from promptbake.teacher.ahead import main as serve

    serve()
