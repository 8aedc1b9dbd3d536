"""Teacher throughput and rate-limit efficiency against a loopback OpenAI-compatible server.

Prints figures; it is not a test. The fake server (tests/fakeserver.py) runs as its own process so
that it does not share a core's event loop with the client being measured.

    python bench/throughput.py                    # everything, about 1.5 minutes
    python bench/throughput.py --only a,c         # just some parts
    python bench/throughput.py --duration 30      # shorter rate-limit run
    python bench/throughput.py --only d --learn-limit --burst-s 0.2   # harsher (d)

(a) bare aiohttp loop, (b) bare openai SDK loop (default transport, then DefaultAioHttpClient),
(c) promptbake's Pool end to end, then ``promptbake generate`` with its SQLite store as a user runs
it — all at 0 ms server latency; (d) rate-limit efficiency: the
server enforces --rpm with 50-500 ms latency, we report achieved RPM / limit and the 429s.
(e) the whole process against the bare loop, per job size (``--sizes``): ``promptbake generate``
(start-up, planning, sending, the store, exit) and a bare aiohttp loop over the same number of
requests, each in its own process, interleaved ``--repeat`` times; medians of the wall-clock ratio
and of the CPU-time ratio (what each process spent: the steadier figure on a shared machine).

    python bench/throughput.py --only e --sizes 10000,100000 --repeat 3
    python bench/throughput.py --only e --against /tmp/before/src   # and the code before a change
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from promptbake.teacher.client import ChatClient, Endpoint
from promptbake.teacher.jobs import Job, Outcome
from promptbake.teacher.limiter import Limiter
from promptbake.teacher.pool import Pool

SERVER = Path(__file__).resolve().parent.parent / "tests" / "fakeserver.py"
MODEL = "gpt-4o-mini"


def body(i: int) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64,
            "messages": [{"role": "system", "content": "You answer in one short sentence."},
                         {"role": "user", "content": f"Say something about item {i}."}]}


@contextlib.contextmanager
def fake_server(*args: str) -> Iterator[str]:
    """Start tests/fakeserver.py in its own process; yield its base URL."""
    proc = subprocess.Popen([sys.executable, str(SERVER), "--port", "0", *args],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(10)


def server_stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_stats") as response:
        return json.load(response)


async def run_concurrently(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    """req/s for ``n`` calls of ``one`` with ``concurrency`` workers."""
    counter = itertools.count()

    async def worker() -> None:
        while (i := next(counter)) < n:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


async def bare_aiohttp(base_url: str, n: int, concurrency: int) -> float:
    url = base_url + "/chat/completions"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector,
                                     headers={"Authorization": "Bearer sk-bench"}) as session:

        async def one(i: int) -> None:
            async with session.post(url, json=body(i)) as response:
                data = json.loads(await response.read())
                assert data["choices"][0]["message"]["content"]

        return await run_concurrently(n, concurrency, one)


async def bare_sdk(base_url: str, n: int, concurrency: int, aiohttp_transport: bool) -> float:
    import openai

    kwargs: dict[str, Any] = {}
    if aiohttp_transport:
        kwargs["http_client"] = openai.DefaultAioHttpClient()
    async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0,
                                  **kwargs) as sdk:

        async def one(i: int) -> None:
            completion = await sdk.chat.completions.create(**body(i))
            assert completion.choices[0].message.content

        return await run_concurrently(n, concurrency, one)


@dataclass
class PoolRun:
    per_second: float
    done: int
    throttled: int
    attempts: int
    elapsed: float


async def promptbake_pool(base_url: str, jobs: Iterator[Job], concurrency: int,
                          rpm: float | None = None) -> PoolRun:
    """(c): what promptbake itself sustains. Swap this function to measure `promptbake generate`
    with the store on: it gets the server URL and returns the same figures."""
    endpoint = Endpoint(base_url, MODEL, api_key="sk-bench")

    async def sink(outcome: Outcome) -> None:
        assert outcome.ok, outcome.error

    async with ChatClient(endpoint, timeout=30, concurrency=concurrency) as client:
        pool = Pool(client, Limiter(rpm=rpm, concurrency=concurrency), max_attempts=6,
                    cost=lambda model, prompt, completion: 0.0)
        stats = await pool.run(jobs, sink)
    return PoolRun(stats.per_second, stats.done, stats.throttled, stats.attempts, stats.elapsed)


def numbered_jobs(n: int | None = None, until: float | None = None) -> Iterator[Job]:
    for i in itertools.count():
        if (n is not None and i >= n) or (until is not None and time.monotonic() >= until):
            return
        yield Job(str(i), body(i), est_tokens=100)


async def rate_limit_efficiency(rpm: float, duration: float, warmup: float, concurrency: int,
                                burst_s: float, learn: bool) -> None:
    server_args = ("--latency-ms", "50-500", "--rpm", str(rpm), "--burst-s", str(burst_s))
    with fake_server(*server_args) as url:
        start = time.monotonic()
        run = asyncio.create_task(promptbake_pool(
            url, numbered_jobs(until=start + duration), concurrency, rpm=None if learn else rpm))
        await asyncio.sleep(warmup)
        first, t_first = server_stats(url), time.monotonic()
        await asyncio.sleep(duration - warmup)
        last, t_last = server_stats(url), time.monotonic()
        result = await run
        final = server_stats(url)
    steady = (last["paid"] - first["paid"]) / (t_last - t_first) * 60
    overall = final["paid"] / result.elapsed * 60
    throttled = final["statuses"].get("429", 0)
    told = "learned from x-ratelimit headers" if learn else "given with --rpm"
    print(f"(d) server limit {rpm:,.0f} RPM ({told}), latency 50-500 ms, server bucket "
          f"{burst_s:g} s, {duration:.0f} s run")
    print(f"    achieved {steady:,.0f} RPM after {warmup:.0f} s warm-up = {steady / rpm:.1%} of the limit"
          f" (whole run incl. start and drain: {overall:,.0f} RPM = {overall / rpm:.1%})")
    print(f"    429s: {throttled} of {final['requests']:,} requests = "
          f"{throttled / max(1, final['requests']):.2%}; answers {final['paid']:,}")


GENERATE_SPEC = """
name: bench
teacher: {model: gpt-4o-mini}
grid: {table: inputs.jsonl, count: 1}
steps:
  - name: answer
    max_tokens: 64
    messages:
      - {role: system, content: You answer in one short sentence.}
      - {role: user, content: "Say something about {{ input }}."}
example:
  messages:
    - {role: user, content: "{{ input }}"}
    - {role: assistant, content: "{{ answer }}"}
"""


def promptbake_generate(base_url: str, n: int, concurrency: int) -> tuple[float, float, float]:
    """``promptbake generate`` as a user runs it (a subprocess, store on): returns the sustained
    req/s while answers arrive (from the store's timestamps), the end-to-end req/s including
    start-up and planning, and the process's peak RSS in MB."""
    import resource
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "spec.yaml").write_text(GENERATE_SPEC)
        with (folder / "inputs.jsonl").open("w") as fh:
            fh.writelines(json.dumps({"input": f"item {i}"}) + "\n" for i in range(n))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "promptbake", "generate", "spec.yaml", "--store", "s.db",
                        "--base-url", base_url, "--concurrency", str(concurrency), "-q"],
                       cwd=folder, check=True, capture_output=True)
        elapsed = time.perf_counter() - start
        with sqlite3.connect(folder / "s.db") as db:
            first, last, count = db.execute(
                "SELECT MIN(created_at), MAX(created_at), COUNT(*) FROM attempts"
            ).fetchone()
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return count / (last - first), n / elapsed, peak_mb


BARE = ("import asyncio, sys; sys.path.insert(0, {here!r}); from throughput import bare_aiohttp; "
        "asyncio.run(bare_aiohttp({url!r}, {n}, {concurrency}))")


def whole_process(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one child process."""
    import os
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def against_bare(url: str, sizes: list[int], repeat: int, concurrency: int, other: str | None = None) -> None:
    """(e): see the module's docstring. ``other``: another checkout's ``src``, run the same way."""
    import statistics
    import tempfile

    here = str(Path(__file__).resolve().parent)
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "spec.yaml").write_text(GENERATE_SPEC)
            with (folder / "inputs.jsonl").open("w") as fh:
                fh.writelines(json.dumps({"input": f"item {i}"}) + "\n" for i in range(n))
            variants = [("uvloop", {}), ("asyncio", {"PROMPTBAKE_NO_UVLOOP": "1"})]
            if other is not None:
                variants.append((f"code in {other}", {"PYTHONPATH": other}))
            runs: dict[str, list[tuple[float, float]]] = {"bare": [], **{name: [] for name, _ in variants}}
            for _ in range(repeat):
                bare = BARE.format(here=here, url=url, n=n, concurrency=concurrency)
                runs["bare"].append(whole_process([sys.executable, "-c", bare]))
                for loop, env in variants:
                    for stale in folder.glob("s.db*"):
                        stale.unlink()
                    runs[loop].append(whole_process(
                        [sys.executable, "-m", "promptbake", "generate", "spec.yaml", "--store", "s.db", "-q",
                         "--base-url", url, "--concurrency", str(concurrency)], folder, env))
        bare_wall = statistics.median(w for w, _ in runs["bare"])
        print(f"(e) {n:,} requests, whole process, medians of {repeat}: bare aiohttp loop {n / bare_wall:,.0f} req/s")
        for loop in runs:
            if loop == "bare":
                continue
            wall = statistics.median(b[0] / p[0] for b, p in zip(runs["bare"], runs[loop], strict=True))
            cpu = statistics.median(b[1] / p[1] for b, p in zip(runs["bare"], runs[loop], strict=True))
            rate = n / statistics.median(w for w, _ in runs[loop])
            shown = f"{loop} loop" if loop in ("uvloop", "asyncio") else loop
            print(f"    promptbake generate, store on, {shown:14} {rate:8,.0f} req/s   "
                  f"{wall:.2f}× the bare loop (wall), {cpu:.2f}× (CPU)", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="for (a) and (c)")
    parser.add_argument("--sdk-requests", type=int, default=3_000, help="for (b)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rpm", type=float, default=6000)
    parser.add_argument("--duration", type=float, default=65, help="seconds for (d)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of (d) not measured")
    parser.add_argument("--burst-s", type=float, default=1.0,
                        help="(d): seconds of the limit the server's bucket holds")
    parser.add_argument("--learn-limit", action="store_true",
                        help="(d): do not tell the client the limit; it must read the headers")
    parser.add_argument("--sizes", default="10000,100000", help="for (e)")
    parser.add_argument("--repeat", type=int, default=3, help="for (e)")
    parser.add_argument("--against", default=None, help="for (e): another checkout's src to run the same way")
    parser.add_argument("--only", default="a,b,c,d", help="parts to run; e is separate: --only e")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    c = args.concurrency

    if parts & {"a", "b", "c"}:
        with fake_server() as url:
            await bare_aiohttp(url, 1000, c)  # warm the server up
            baseline = await bare_aiohttp(url, args.requests, c)
            if "a" in parts:
                print(f"{'(a) bare aiohttp, ' + str(c) + ' concurrent':46} {baseline:8,.0f} req/s  (1.00×)")
            if "b" in parts:
                for name, transport in (("default transport", False), ("DefaultAioHttpClient", True)):
                    try:
                        rate = await bare_sdk(url, args.sdk_requests, c, transport)
                    except (ImportError, RuntimeError) as exc:
                        print(f"(b) openai SDK, {name}: unavailable ({exc})")
                        continue
                    print(f"{'(b) openai SDK, ' + name:46} {rate:8,.0f} req/s  "
                          f"({rate / baseline:.2f}×)")
            if "c" in parts:
                run = await promptbake_pool(url, numbered_jobs(args.requests), c)
                print(f"{'(c) promptbake Pool end to end (no store)':46} {run.per_second:8,.0f} req/s  "
                      f"({run.per_second / baseline:.2f}×)")
                sustained, overall, peak = promptbake_generate(url, args.requests, c)
                print(f"{'(c) promptbake generate, store on, sustained':46} {sustained:8,.0f} req/s  "
                      f"({sustained / baseline:.2f}×)")
                print(f"{'    same, incl. start-up and planning':46} {overall:8,.0f} req/s  "
                      f"({overall / baseline:.2f}×), peak RSS {peak:,.0f} MB")
    if "e" in parts:
        with fake_server() as url:
            await asyncio.to_thread(against_bare, url, [int(x) for x in args.sizes.split(",")], args.repeat, c,
                                    args.against)
    if "d" in parts:
        await rate_limit_efficiency(args.rpm, args.duration, args.warmup, c, args.burst_s,
                                    args.learn_limit)


if __name__ == "__main__":
    asyncio.run(main())
