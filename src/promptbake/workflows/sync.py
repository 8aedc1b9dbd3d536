"""Blocking calls to the async workflows, safe inside a running event loop.

Every workflow is a coroutine inside (one event loop drives the pool and the store's writer). A
script has no loop running, so ``asyncio.run`` serves; a notebook cell runs inside the kernel's
loop, where ``asyncio.run`` raises. There the coroutine runs on a worker thread with a loop of its
own while the cell waits, and an interrupt (the kernel's stop button) cancels it the same way
Ctrl-C does: the writer commits every answer already received before the call returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion and return its result, from any thread, loop running or not."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    tasks: list[asyncio.Task[T]] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        loops.append(asyncio.get_running_loop())
        tasks.append(task)  # type: ignore[arg-type]
        return await coro

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="promptbake") as worker:
        future = worker.submit(asyncio.run, main())
        try:
            return future.result()
        except KeyboardInterrupt:
            if tasks:
                loops[0].call_soon_threadsafe(tasks[0].cancel)
            concurrent.futures.wait([future])  # the writer commits what already arrived
            raise


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
        return await asyncio.to_thread(fn, *args, **kwargs)

    wrapper.__name__ = f"{fn.__name__}_async"
    wrapper.__qualname__ = f"{fn.__qualname__}_async"
    wrapper.__doc__ = f"Awaitable form of ``{fn.__name__}`` (runs on a worker thread).\n\n{fn.__doc__ or ''}"
    return wrapper
