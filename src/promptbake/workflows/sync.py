"""Blocking calls to the async workflows, safe inside a running event loop.

Every workflow is a coroutine inside (one event loop drives the pool and the store's writer). A
script has no loop running, so ``asyncio.run`` serves; a notebook cell runs inside the kernel's
loop, where ``asyncio.run`` raises. There the coroutine runs on a worker thread with a loop of its
own while the cell waits, and an interrupt (the kernel's stop button) cancels it the same way
Ctrl-C does: the writer commits every answer already received before the call returns.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:  # asyncio itself is imported by the calls that run a loop: a dry run needs none
    import asyncio

P = ParamSpec("P")
T = TypeVar("T")

NO_UVLOOP_ENV = "PROMPTBAKE_NO_UVLOOP"  # set (to anything) to run on asyncio's own loop


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (a dependency everywhere but Windows, which it does not support): its
    loop and transports are written in C, which takes about a fifth off the client's CPU per
    request (see the README's Benchmarks). None means asyncio's own loop, the same behaviour, only
    slower."""
    if os.environ.get(NO_UVLOOP_ENV):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the fastest loop installed, collecting garbage less often (see below)."""
    import asyncio

    with _fewer_collections(), asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """A run makes and drops a few dozen objects per request; Python's collector looks for cycles
    every 700 new ones, each time through everything the imports left behind as well. Freezing
    what exists when the run starts and collecting every 10,000 takes 7% off generate's CPU; the
    settings the caller had come back when the run ends."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(10_000, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion and return its result, from any thread, loop running or not."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_loop(coro)
    worker = _Worker(coro)
    thread = threading.Thread(target=worker.run, name="promptbake", daemon=True)
    try:
        thread.start()
        worker.done.wait()  # not Thread.join: an interrupted join can leave the thread looking finished
    except KeyboardInterrupt:
        if thread.ident is None:  # interrupted before the thread existed: nothing ran
            coro.close()
            raise
        worker.cancel()
        worker.done.wait()  # the writer commits what already arrived; a second interrupt stops waiting
        raise
    if worker.error is not None:
        raise worker.error
    result: T = worker.result
    return result


class _Worker:
    """A coroutine on a thread with its own loop, which another thread may cancel at any moment,
    even before the loop has started."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.lock = threading.Lock()
        self.cancelled = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = run_loop(self._main())
        except BaseException as exc:  # handed to the waiting thread, which raises it
            self.error = exc
        finally:
            self.done.set()

    async def _main(self) -> Any:
        import asyncio

        with self.lock:
            if self.cancelled:
                self.coro.close()
                raise asyncio.CancelledError
            self.loop, self.task = asyncio.get_running_loop(), asyncio.current_task()
        return await self.coro

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            if self.loop is not None and self.task is not None:
                with contextlib.suppress(RuntimeError):  # the loop already closed: nothing to cancel
                    self.loop.call_soon_threadsafe(self.task.cancel)


def synchronous(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """The blocking twin of an ``async def name_async``: same arguments, named ``name``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_sync(fn(*args, **kwargs))

    wrapper.__name__ = fn.__name__.removesuffix("_async")
    wrapper.__qualname__ = fn.__qualname__.removesuffix("_async")
    wrapper.__doc__ = f"Blocking form of ``{fn.__name__}`` (safe in a notebook cell).\n\n{fn.__doc__ or ''}"
    return wrapper


def threaded(fn: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]:
    """The awaitable twin of a blocking call (build, export): it runs on a worker thread, so the
    caller's event loop keeps serving while files are written."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        import asyncio

        return await asyncio.to_thread(fn, *args, **kwargs)

    wrapper.__name__ = f"{fn.__name__}_async"
    wrapper.__qualname__ = f"{fn.__qualname__}_async"
    wrapper.__doc__ = f"Awaitable form of ``{fn.__name__}`` (runs on a worker thread).\n\n{fn.__doc__ or ''}"
    return wrapper
