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
    assert link.limiter is not None, "send through an open link"
    writer = _Writer(store)

    async def sink(outcome: Outcome) -> None:
        writer.check()  # the writer died (disk full): stop the pool, or it pays for answers nobody keeps
        progress.update(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        await writer.put(result_row(outcome))

    try:
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
        await writer.close()
        progress.close()


Pending = tuple[ResultRow, "asyncio.Future[None]"]  # an answer, and what tells its worker it is committed


class _Writer:
    """The single writer: commits everything waiting each time it wakes (a group commit).

    Under load, results pile up while the loop serves the workers, so batches grow by themselves;
    when the pool is idle each result is committed at once. A worker's ``put`` returns once its
    answer is committed, and only then does that worker send again: each worker holds at most one
    answer not yet in the store, sent or received, so a kill loses at most ``concurrency``
    answers, the ones in flight, never a backlog of finished ones. The commits run on the event
    loop itself: handing each batch to a thread of its own cost more (the hand-over, the wake-ups,
    the two threads taking turns at the GIL) than the commit it let overlap, about a tenth of
    generate's CPU (README, Benchmarks). When the store stops (a full disk), the run has paid for
    no more than what was in flight.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queue: asyncio.Queue[Pending | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    def check(self) -> None:
        """Raise what stopped the writer, if it stopped."""
        if self.task.done():
            self.task.result()

    async def put(self, row: ResultRow) -> None:
        """Queue ``row`` and wait until it is committed; queued even when cancelled while waiting:
        the answer is paid for, and the writer commits what is queued before it stops."""
        self.check()
        committed = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((row, committed))
        # no shield: cancelling this wait cancels only ``committed``, which the writer skips
        # (it sets a result only on a future not done); the row stays queued and is committed
        await committed

    async def close(self) -> None:
        """Commit what is left and stop; raises what stopped the writer."""
        self.queue.put_nowait(None)
        await self.task

    async def _run(self) -> None:
        try:
            await self._commits()
        except BaseException as exc:
            # a writer that stopped must not leave a worker waiting for its commit
            for item in _drain(self.queue):
                if item is not None and not item[1].done():
                    item[1].set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            raise

    async def _commits(self) -> None:
        while True:
            batch: list[Pending | None] = []
            try:
                batch.append(await self.queue.get())
                # two turns of the loop before committing: the workers whose answers are already
                # in hand queue theirs too, so a commit carries about twice as many (30 against
                # 15 with none, 25 with one, at 64 in flight; more turns add nothing), and the
                # pages they share are written to the log once
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                # Ctrl-C: what already finished is paid for, so it is committed before we go
                self._commit([item for item in [*batch, *_drain(self.queue)] if item is not None])
                raise
            batch += _drain(self.queue)
            self._commit([item for item in batch if item is not None])
            if None in batch:
                return

    def _commit(self, items: list[Pending]) -> None:
        """Record ``items`` in one transaction, then let their workers go on (or hand them the error)."""
        if not items:
            return
        try:
            self.store.record([row for row, _ in items])
        except Exception as exc:
            for _, committed in items:
                if not committed.done():
                    committed.set_exception(exc)
            raise
        for _, committed in items:
            if not committed.done():
                committed.set_result(None)


def _drain(queue: asyncio.Queue[Pending | None]) -> list[Pending | None]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
