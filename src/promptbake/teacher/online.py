"""The online transport: jobs through the rate-limited pool, each finished one into the store.

The one path by which generate, eval and batch mode's online retries pay for answers; what a job
is and what its outcome becomes are :mod:`promptbake.teacher.jobs`' rules, shared with batch mode.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable

from promptbake.store.db import ResultRow, Store
from promptbake.teacher.endpoints import Fleet
from promptbake.teacher.jobs import Outcome, StepJob, bounded, result_row
from promptbake.teacher.link import Link
from promptbake.teacher.pool import FailureLog, Notice, Pool, PoolStats
from promptbake.teacher.pricing import PriceTable
from promptbake.teacher.progress import Progress


def say(line: str) -> None:
    """Where the library's mid-run notices go by default: stderr, one line each (stdout is data)."""
    print(line, file=sys.stderr, flush=True)



async def send_to_store(
    store: Store,
    link: Link,
    jobs: Iterable[StepJob],
    *,
    progress: Progress,
    max_cost: float | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    failures: FailureLog | None = None,
    notice: Notice | None = say,
) -> PoolStats:
    """Send jobs through the rate-limited pool; every finished one goes to the store's single
    writer. The one path by which generate and eval pay for answers, through the run's ``link``
    to the endpoint (its client and limiter serve every step and phase of the run)."""
    if max_cost is not None:
        jobs = map(bounded, jobs)
    queue: asyncio.Queue[ResultRow | None] = asyncio.Queue()
    writer = asyncio.create_task(_writer(store, queue))

    async def sink(outcome: Outcome) -> None:
        if writer.done():
            # the writer died (disk full): stop the pool, or it pays for answers nobody keeps
            writer.result()
        progress.update(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        queue.put_nowait(result_row(outcome))

    try:
        assert link.limiter is not None, "send through an open link"
        pool = Pool(
            link.client,
            link.limiter,  # type: ignore[arg-type]  # a Fleet over teacher.endpoints has Limiter's methods
            max_attempts=link.config.max_attempts,
            cost=PriceTable(link.config.prices).cost,
            max_cost=max_cost,
            max_retry_after=link.config.max_retry_after,
            failures=failures,
            notice=notice,
            one_server=not isinstance(link.limiter, Fleet),
        )
        try:
            return await pool.run(jobs, sink)
        finally:
            if isinstance(link.limiter, Fleet):  # counted over the whole run: the link is shared
                pool.stats.endpoints = link.limiter.summary()
    finally:
        queue.put_nowait(None)
        await writer
        progress.close()


async def _writer(store: Store, queue: asyncio.Queue[ResultRow | None]) -> None:
    """The single writer: commits everything waiting each time it wakes.

    Under load, results pile up while a commit runs, so batches grow by themselves; when the
    pool is idle each result is committed at once. A kill therefore loses only what was in
    flight, never a backlog of finished answers.
    """
    while True:
        try:
            first = await queue.get()
        except asyncio.CancelledError:
            # Ctrl-C: what already finished is paid for, so it is committed before we go
            store.record([r for r in _drain(queue) if r is not None])
            raise
        batch = [first, *_drain(queue)]
        rows = [r for r in batch if r is not None]
        if rows:
            store.record(rows)
        if None in batch:
            return


def _drain(queue: asyncio.Queue[ResultRow | None]) -> list[ResultRow | None]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
