"""The send path: jobs through the rate-limited pool, every finished one to the store's single writer.

Generation and eval pay for answers only through ``send_to_store``, so both get the same limits,
retries, budget stop and commit-as-they-arrive behaviour: a kill loses at most what was in flight.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from promptbake.spec.models import TeacherConfig
from promptbake.store.db import AttemptRow, ResultRow, Store
from promptbake.teacher.client import Endpoint
from promptbake.teacher.endpoints import Fleet, connect
from promptbake.teacher.pool import Job, Outcome, Pool, PoolStats
from promptbake.teacher.pricing import PriceTable


@dataclass
class StepJob(Job):
    cache_key: str = ""


class Progress:
    """tqdm: done/total, req/s, tok/s, spend and errors. On stderr in a terminal (off when it is not
    a TTY); ``tqdm.auto`` draws a widget in a Jupyter notebook, whose stderr is never a TTY."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.bar: Any = None
        if enabled and (sys.stderr.isatty() or "ipykernel" in sys.modules):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, unit="req", file=sys.stderr, dynamic_ncols=True)
        self.start = time.monotonic()
        self.tokens = 0
        self.spent = 0.0
        self.errors = 0

    def update(self, outcome: Outcome) -> None:
        self.tokens += sum(a.prompt_tokens + a.completion_tokens for a in outcome.attempts)
        self.spent += sum(a.cost for a in outcome.attempts)
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


async def send_to_store(
    store: Store,
    endpoint: Endpoint,
    config: TeacherConfig,
    jobs: Iterable[StepJob],
    *,
    progress: Progress,
    max_cost: float | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> PoolStats:
    """Send jobs through the rate-limited pool; every finished one goes to the store's single
    writer. The one path by which generate and eval pay for answers."""
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
        async with connect(endpoint, config) as (client, limiter):
            pool = Pool(
                client,
                limiter,  # type: ignore[arg-type]  # a Fleet over teacher.endpoints has Limiter's methods
                max_attempts=config.max_attempts,
                cost=PriceTable(config.prices).cost,
                max_cost=max_cost,
            )
            try:
                return await pool.run(jobs, sink)
            finally:
                if isinstance(limiter, Fleet):
                    pool.stats.endpoints = limiter.summary()
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


def result_row(outcome: Outcome) -> ResultRow:
    job = outcome.job
    assert isinstance(job, StepJob)
    attempts = [
        AttemptRow(
            a.number, a.status, a.error_kind, a.error, a.latency_ms, a.prompt_tokens, a.completion_tokens, a.cost, a.raw
        )
        for a in outcome.attempts
    ]
    result = outcome.result
    return ResultRow(
        request_id=job.id,
        cache_key=job.cache_key,
        ok=outcome.ok,
        abandoned=outcome.abandoned,
        attempts=attempts,
        error=outcome.error,
        model=result.model if result else None,
        contents=result.contents if result else None,
        outputs=outcome.parsed if outcome.ok else None,
        finish_reasons=result.finish_reasons if result else None,
    )
