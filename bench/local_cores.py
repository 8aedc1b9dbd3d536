"""The local teacher on every core: one 2-thread server (what `--teacher local` did) against one
1-thread server per core behind the endpoints layer (what it does now), in one run.

    python bench/local_cores.py                 # 32 requests of at most 64 tokens each, twice
    python bench/local_cores.py --requests 64

Both go through the real send path (``connect`` + ``Pool``), two requests in flight per
setup, as ``promptbake run --teacher local`` sends them. Prints completion tokens per second of
each, the ratio, and a grammar-constrained JSON list from each (``json_object`` with a schema).
Heavy: it keeps both cores busy for a minute or two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator

from promptbake.spec.models import EndpointConfig, TeacherConfig
from promptbake.teacher.client import Endpoint
from promptbake.teacher.endpoints import connect
from promptbake.teacher.local import MODEL_ALIAS, LocalTeacher, local_servers
from promptbake.teacher.pool import Job, Outcome, Pool

TOPICS = ["a late parcel", "a broken kettle", "a wrong invoice", "a rude waiter", "a cancelled flight",
          "a noisy hotel room", "a cold pizza", "a lost password"]
LIST_SCHEMA = {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}


def jobs(n: int) -> Iterator[Job]:
    for i in range(n):
        body = {"model": MODEL_ALIAS, "max_tokens": 64, "temperature": 0.7, "seed": i, "messages": [
            {"role": "user", "content": f"Write what an angry customer says about {TOPICS[i % len(TOPICS)]}."}]}
        yield Job(str(i), body, est_tokens=100)
    structured = {"model": MODEL_ALIAS, "max_tokens": 160, "temperature": 0.7, "seed": 1,
                  "response_format": {"type": "json_object", "schema": LIST_SCHEMA},
                  "messages": [{"role": "user", "content": "List 3 complaints as a JSON list of strings."}]}
    yield Job("json", structured, est_tokens=100)


@contextlib.contextmanager
def single() -> Iterator[tuple[Endpoint, TeacherConfig]]:
    with LocalTeacher(n_threads=min(2, os.cpu_count() or 1)) as server:
        yield Endpoint(server.base_url, MODEL_ALIAS), TeacherConfig(kind="local", concurrency=server.concurrency)


@contextlib.contextmanager
def per_core() -> Iterator[tuple[Endpoint, TeacherConfig]]:
    with local_servers() as servers:
        endpoints = [EndpointConfig(base_url=s.base_url, model=MODEL_ALIAS, concurrency=s.concurrency)
                     for s in servers]
        yield Endpoint(servers[0].base_url, MODEL_ALIAS), TeacherConfig(kind="local", endpoints=endpoints)


async def measure(endpoint: Endpoint, config: TeacherConfig, n: int) -> tuple[float, int, str]:
    outcomes: list[Outcome] = []

    async def sink(outcome: Outcome) -> None:
        outcomes.append(outcome)

    async with connect(endpoint, config) as (client, limiter):
        await Pool(client, limiter, max_attempts=3, cost=lambda *a: 0.0).run(  # type: ignore[arg-type]
            list(jobs(1)), sink)  # warm-up
        outcomes.clear()
        start = time.perf_counter()
        await Pool(client, limiter, max_attempts=3, cost=lambda *a: 0.0).run(jobs(n), sink)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - start
    tokens = sum(o.result.completion_tokens for o in outcomes if o.result)
    listed = next(o.result.contents[0] for o in outcomes if o.job.id == "json" and o.result)
    return tokens / elapsed, sum(o.ok for o in outcomes), listed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}, cores: {len(os.sched_getaffinity(0))}")
    results = {}
    for name, setup in (("one 2-thread server (before)", single), ("one 1-thread server per core (now)", per_core)):
        with setup() as (endpoint, config):
            rate, ok, listed = asyncio.run(measure(endpoint, config, args.requests))
        results[name] = rate
        try:
            valid = f"valid: {isinstance(json.loads(listed, strict=False), list)}"
        except ValueError as exc:
            valid = f"invalid ({exc})"
        print(f"{name}: {rate:.1f} completion tok/s, {ok} of {args.requests + 1} ok; "
              f"grammar-constrained JSON list {valid}: {listed.strip()[:80]!r}")
    before, now = results.values()
    print(f"ratio now / before: {now / before:.2f}x (load average after: {os.getloadavg()})")


if __name__ == "__main__":
    main()
