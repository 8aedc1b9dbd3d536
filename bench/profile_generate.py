"""Where ``promptbake generate`` spends its time per request, beyond the HTTP round trip.

Runs a bare aiohttp loop over the same requests (the baseline: the HTTP round trip alone), then
``promptbake generate`` (store on, whole process) against the loopback stand-in twice: once
plain, timing its phases from the store's own timestamps and taking its CPU time, and once under a
profiler whose samples are grouped by what the code does (start-up imports, planning, the store,
the writer, our HTTP client, aiohttp, the event loop, the pool). With ``py-spy`` on the
PATH (``pip install py-spy``) the second run is sampled, every thread, at almost no cost to the
run, and each group's share of the samples is turned into CPU µs per request. Without it, cProfile
(which slows the run about 2×); there a builtin or a generic stdlib function (``sqlite3.execute``,
``json.dumps``) is charged to whoever called it. Not a test; the figures feed the README's
per-request cost breakdown.

    python bench/profile_generate.py                    # 10,000 requests
    python bench/profile_generate.py --requests 100000
    python bench/profile_generate.py --profiler cprofile --top 30
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import BARE, GENERATE_SPEC, fake_server, whole_process  # noqa: E402

# (what, how a profiled function's file or name shows it), first match wins
BUCKETS = [
    ("start-up: imports", ("<frozen importlib", "marshal.loads", "builtins.compile", "_imp.", "<frozen zipimport",
                           "importlib/", "built-in method builtins.__build_class__", ":<module>", "re/_parser",
                           "re/_compiler", "textwrap.py", "inspect.py", "numpy/", "scipy/", "typing_inspection",
                           "dataclasses.py:_create_fn", "_distutils_hack")),
    ("JSON encode/decode", ("/json/", "_json.", "orjson")),
    ("store (SQLite: plan, read back, answers)", ("promptbake/store/", "sqlite3")),
    ("planning (render, hash, count tokens)", ("promptbake/plan/", "promptbake/teacher/ahead", "_pickle",
                                               "promptbake/specification/templates",
                                               "jinja2/", "tiktoken", "promptbake/ids.py", "hashlib", "_hashlib",
                                               "promptbake/teacher/tokens.py", "markupsafe")),
    ("spec loading and validation (YAML, pydantic)", ("yaml/", "pydantic", "promptbake/specification/")),
    ("HTTP client (aiohttp, our client)", ("aiohttp/", "yarl/", "multidict/", "promptbake/teacher/client.py",
                                          "_http_parser", "zlib")),
    ("event loop and sockets (asyncio)", ("asyncio/", "selectors.py", "_socket", "select.epoll", "uvloop")),
    ("pool, limiter, pricing, parse, progress", ("promptbake/teacher/", "promptbake/records.py")),
    ("CLI and workflow glue", ("promptbake/", "click/")),
]
GENERIC = ("~", "/json/", "/re/", "re.py", "/enum.py", "dataclasses.py", "/typing.py", "/abc.py", "functools.py",
           "copy.py", "/collections/", "contextlib.py", "/logging/", "/random.py", "/weakref", "_weakrefset.py")


def label(func: tuple[str, int, str]) -> str:
    filename, _, name = func
    return f"{filename}:{name}"


def bucket_of(text: str) -> str | None:
    for what, marks in BUCKETS:
        if any(m in text for m in marks):
            return what
    return None


def breakdown(stats: pstats.Stats) -> dict[str, float]:
    """Seconds of own time per bucket; the time of a builtin or generic stdlib function is
    handed to its callers in proportion to what each call edge cost, until a bucket takes it."""
    raw = stats.stats  # type: ignore[attr-defined]
    shares: dict[tuple[str, int, str], dict[str, float]] = {}

    def share(func: tuple[str, int, str], seen: frozenset[tuple[str, int, str]]) -> dict[str, float]:
        """Where a second of ``func``'s own time goes, by bucket (memoised; cycles go to "other")."""
        if func in shares:
            return shares[func]
        own = bucket_of(label(func))
        generic = func[0] == "~" or any(g in func[0] for g in GENERIC[1:])
        if own is not None and (not generic or own in ("JSON encode/decode", "start-up: imports")):
            result = {own: 1.0}
        else:
            edges = {c: v[2] for c, v in raw[func][4].items() if c not in seen and v[2] > 0}
            weight = sum(edges.values())
            result = defaultdict(float)
            if not edges or weight <= 0:
                result[own or "other"] = 1.0
            for caller, part in edges.items():
                for what, fraction in share(caller, seen | {func}).items():
                    result[what] += fraction * part / weight
            result = dict(result)
        shares[func] = result
        return result

    totals: dict[str, float] = defaultdict(float)
    for func, (_, _, tottime, _, _) in raw.items():
        if tottime > 0:
            for what, fraction in share(func, frozenset()).items():
                totals[what] += tottime * fraction
    return dict(totals)


# py-spy: a sample goes to the first group any frame of its stack names (the writer first)
SAMPLED = [
    ("start-up: imports", ("_find_and_load",)),
    ("writer: answers into SQLite", ("_Writer._commits", "record (promptbake/store/db.py")),
]
# ... else to the group of the frame nearest the leaf that one of these names
NEAREST = [
    ("planning: render, hash, count tokens", ("promptbake/plan/", "specification/templates", "teacher/tokens.py",
                                             "tiktoken/", "promptbake/ids.py", "fastjson.py:sorted")),
    ("store: plan in, read back", ("promptbake/store/db.py",)),
    ("HTTP: our client, aiohttp, JSON", ("promptbake/teacher/client.py", "aiohttp/", "yarl/", "multidict/",
                                         "promptbake/fastjson.py")),
    ("pool, limiter, jobs, sink", ("promptbake/teacher/pool.py", "promptbake/teacher/jobs.py",
                                   "promptbake/teacher/limiter.py", "promptbake/teacher/online.py",
                                   "promptbake/teacher/pricing.py", "promptbake/teacher/progress.py",
                                   "promptbake/teacher/parse.py", "teacher/generate.py")),
    ("event loop", ("asyncio/", "uvloop", "sync.py")),
    ("spec, CLI, workflow", ("promptbake/",)),
]


def sampled(raw: Path) -> dict[str, int]:
    """Samples per group from ``py-spy record -f raw`` output (one ``stack count`` a line)."""
    groups: dict[str, int] = defaultdict(int)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        name = next((what for what, marks in SAMPLED if any(m in f for f in frames for m in marks)), None)
        for frame in reversed(frames):
            if name is not None:
                break
            name = next((what for what, marks in NEAREST if any(m in frame for m in marks)), None)
        groups[name or "other"] += int(count)
    return dict(groups)


def write_job(folder: Path, n: int) -> None:
    (folder / "spec.yaml").write_text(GENERATE_SPEC)
    with (folder / "inputs.jsonl").open("w") as fh:
        fh.writelines(json.dumps({"input": f"item {i}"}) + "\n" for i in range(n))


def generate(folder: Path, url: str, concurrency: int, profile: Path | None = None, spy: bool = False) -> float:
    for stale in folder.glob("s.db*"):
        stale.unlink()
    argv = [sys.executable, "-m", "promptbake", "generate", "spec.yaml", "--store", "s.db", "--base-url", url,
            "--concurrency", str(concurrency), "-q"]
    if profile is not None and spy:
        # --gil: a sample of the thread holding the GIL, so that a thread waiting for it is not counted
        # (SQLite's own work, done without the GIL, is then left out: see the README)
        argv = ["py-spy", "record", "-o", str(profile), "-f", "raw", "-r", "250", "--gil", "--", *argv]
    elif profile is not None:
        argv[1:1] = ["-m", "cProfile", "-o", str(profile)]
    start = time.time()
    subprocess.run(argv, cwd=folder, check=True, capture_output=True)
    return start


def helper_cpu(folder: Path, url: str, concurrency: int) -> float:
    """CPU seconds of generate's planning helper (a grid over 50,000 cells), from another run:
    the run's CPU, less its own process's, read from /proc until it exits (0 without /proc)."""
    for stale in folder.glob("s.db*"):
        stale.unlink()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-m", "promptbake", "generate", "spec.yaml", "--store", "s.db",
                             "--base-url", url, "--concurrency", str(concurrency), "-q"], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stat, ticks = Path(f"/proc/{proc.pid}/stat"), os.sysconf("SC_CLK_TCK")
    cpu = 0.0
    while proc.poll() is None:
        with contextlib.suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / ticks
        time.sleep(0.02)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return max(total - cpu, 0.0) if cpu else 0.0


def phases(folder: Path, start: float, end: float) -> list[tuple[str, float]]:
    """Wall-clock phases of one plain run, from the store's timestamps."""
    with sqlite3.connect(folder / "s.db") as db:
        started = db.execute("SELECT started_at FROM runs").fetchone()[0]
        first, last = db.execute("SELECT MIN(created_at), MAX(created_at) FROM attempts").fetchone()
    return [("start-up: interpreter, imports, spec, checks", started - start),
            ("planning, until the first answer is committed", first - started),
            ("answers (first to last commit)", last - first),
            ("summary and exit", end - last)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--top", type=int, default=0, help="cProfile: also print the N costliest functions")
    parser.add_argument("--profiler", choices=["py-spy", "cprofile"],
                        default="py-spy" if shutil.which("py-spy") else "cprofile")
    args = parser.parse_args()
    n = args.requests
    with tempfile.TemporaryDirectory() as tmp, fake_server() as url:
        folder = Path(tmp)
        write_job(folder, n)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = generate(folder, url, args.concurrency)
        end = time.time()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        timeline = phases(folder, start, end)  # before the next run replaces the store
        helper = helper_cpu(folder, url, args.concurrency)
        # the baseline: a bare aiohttp loop over as many requests, its own process too
        bare_wall, bare_cpu = whole_process([sys.executable, "-c", BARE.format(
            here=str(HERE), url=url, n=n, concurrency=args.concurrency)])
        print(f"bare aiohttp loop, {n:,} requests, whole process: {bare_wall:.2f} s = {n / bare_wall:,.0f} req/s; "
              f"{bare_cpu:.2f} s of CPU = {bare_cpu / n * 1e6:.0f} µs/request")
        print(f"promptbake generate, {n:,} requests, whole process: {end - start:.2f} s = "
              f"{n / (end - start):,.0f} req/s; {cpu:.2f} s of CPU = {cpu / n * 1e6:.0f} µs/request "
              f"({bare_wall / (end - start):.2f}× the bare loop's rate; {cpu / bare_cpu:.2f}× its CPU per request)")
        if helper > 0.05 * cpu:
            print(f"  of which the planning helper process (in a second run): {helper:.2f} s = "
                  f"{helper / n * 1e6:.0f} µs/request; generate's own process {cpu - helper:.2f} s = "
                  f"{(cpu - helper) / n * 1e6:.0f} µs/request")
            cpu -= helper  # the profile below samples generate's own process
        for what, seconds in timeline:
            print(f"  {what:48} {seconds:7.2f} s  {seconds / n * 1e6:7.1f} µs/request")
        spy = args.profiler == "py-spy"
        profile = folder / ("generate.txt" if spy else "generate.prof")
        generate(folder, url, args.concurrency, profile, spy)
        if spy:
            groups = sampled(profile)
            total = sum(groups.values())
            print(f"\nsampled by py-spy, the thread holding the GIL ({total:,} samples), as shares of the plain "
                  "run's CPU:")
            for what, count in sorted(groups.items(), key=lambda kv: -kv[1]):
                print(f"  {what:48} {count / total:6.1%}  {cpu * count / total / n * 1e6:7.1f} µs/request")
            return
        stats = pstats.Stats(str(profile))
        total = stats.total_tt  # type: ignore[attr-defined]
        print(f"\nunder cProfile ({total:.2f} s of CPU in the profiled process; cProfile slows it "
              "about 2×, the shares are what count):")
        for what, seconds in sorted(breakdown(stats).items(), key=lambda kv: -kv[1]):
            print(f"  {what:48} {seconds:7.2f} s  {seconds / n * 1e6:7.1f} µs/request  {seconds / total:6.1%}")
        if args.top:
            print()
            stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
