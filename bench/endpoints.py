"""Many endpoints: `promptbake generate` spreading one job over two rate-limited loopback stand-ins.

    python bench/endpoints.py                  # about 2.5 minutes
    python bench/endpoints.py --duration 30    # shorter

Each stand-in (tests/fakeserver.py, its own process) enforces --rpm (3,000 by default) with a
one-second bucket and 50-500 ms latency, like (d) of bench/throughput.py. In one run:

(a) baseline: one stand-in, ``--base-url A --rpm 3000``: what one endpoint gives;
(b) two stand-ins, ``--base-url A --base-url B --rpm 3000`` (each endpoint its own 3,000 RPM):
    achieved RPM of both together, measured from --warmup seconds after the first answer for
    --duration seconds, as a share of 6,000 (target: at least 95%) and as a ratio to (a);
(c) the same with one stand-in killed (SIGKILL) when it has served a fifth of the job: the job
    must complete with every request answered exactly once (checked in the store).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import GENERATE_SPEC, SERVER, server_stats

LATENCY = "50-500"


@contextlib.contextmanager
def stand_ins(count: int, rpm: float) -> Iterator[list[tuple[subprocess.Popen[str], str]]]:
    """``count`` stand-ins, each its own process, enforcing ``rpm`` per second of bucket."""
    procs: list[tuple[subprocess.Popen[str], str]] = []
    try:
        for _ in range(count):
            proc = subprocess.Popen([sys.executable, str(SERVER), "--port", "0", "--latency-ms", LATENCY,
                                     "--rpm", str(rpm), "--burst-s", "1"], stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            procs.append((proc, line.split()[-1] if line else ""))
            if not line.startswith("READY "):
                raise RuntimeError(f"stand-in did not start: {line!r}")
        yield procs
    finally:
        for proc, _ in procs:
            proc.kill()
            proc.wait(10)


def answered(urls: list[str]) -> int:
    return sum(server_stats(url)["paid"] for url in urls)


def generate(folder: Path, urls: list[str], n: int, rpm: float) -> subprocess.Popen[str]:
    (folder / "spec.yaml").write_text(GENERATE_SPEC)
    with (folder / "inputs.jsonl").open("w") as fh:
        fh.writelines(json.dumps({"input": f"item {i}"}) + "\n" for i in range(n))
    flags = [arg for url in urls for arg in ("--base-url", url)]
    return subprocess.Popen([sys.executable, "-m", "promptbake", "generate", "spec.yaml", "--store", "s.db",
                             *flags, "--rpm", str(rpm), "-q"], cwd=folder, stderr=subprocess.PIPE, text=True)


def steady_rpm(count: int, rpm: float, duration: float, warmup: float) -> tuple[float, int, str]:
    """Achieved RPM over [warmup, duration] with ``count`` endpoints; the 429s; the summary."""
    n = int(count * rpm / 60 * (warmup + duration + 15))  # enough work to outlast the window
    with stand_ins(count, rpm) as servers, tempfile.TemporaryDirectory() as tmp:
        urls = [url for _, url in servers]
        job = generate(Path(tmp), urls, n, rpm)
        while answered(urls) == 0 and job.poll() is None:  # start-up and planning are not measured
            time.sleep(0.05)
        time.sleep(warmup)
        first, t_first = answered(urls), time.monotonic()
        time.sleep(duration)
        last, t_last = answered(urls), time.monotonic()
        _, summary = job.communicate()
        throttled = sum(server_stats(url)["statuses"].get("429", 0) for url in urls)
    if job.returncode != 0:
        raise RuntimeError(f"generate failed: {summary}")
    return (last - first) / (t_last - t_first) * 60, throttled, summary


def killed_mid_run(rpm: float, n: int) -> None:
    with stand_ins(2, rpm) as servers, tempfile.TemporaryDirectory() as tmp:
        (victim, victim_url), (_, survivor_url) = servers
        job = generate(Path(tmp), [victim_url, survivor_url], n, rpm)
        while server_stats(victim_url)["requests"] < n // 5 and job.poll() is None:
            time.sleep(0.05)
        served = server_stats(victim_url)["paid"]
        victim.kill()
        _, summary = job.communicate()
        with sqlite3.connect(Path(tmp) / "s.db") as db:
            ok = db.execute("SELECT COUNT(*) FROM requests WHERE status = 'ok'").fetchone()[0]
            once = db.execute("SELECT COUNT(*) FROM (SELECT request_id FROM attempts WHERE status_code = 200 "
                              "GROUP BY request_id HAVING COUNT(*) = 1)").fetchone()[0]
    print(f"(c) 2 endpoints, one killed after answering {served:,} of {n:,}: exit code {job.returncode}, "
          f"{ok:,} of {n:,} requests ok, {once:,} answered exactly once")
    for line in summary.splitlines():
        if "endpoint" in line:
            print(f"    {line.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=float, default=3000, help="each stand-in's limit")
    parser.add_argument("--duration", type=float, default=60, help="seconds measured in each throughput run")
    parser.add_argument("--warmup", type=float, default=5, help="seconds not measured after the first answer")
    args = parser.parse_args()
    one, one_429, _ = steady_rpm(1, args.rpm, args.duration, args.warmup)
    print(f"(a) 1 endpoint at {args.rpm:,.0f} RPM: achieved {one:,.0f} RPM = {one / args.rpm:.1%} of its limit, "
          f"{one_429} 429s")
    two, two_429, summary = steady_rpm(2, args.rpm, args.duration, args.warmup)
    limit = 2 * args.rpm
    print(f"(b) 2 endpoints at {args.rpm:,.0f} RPM each: achieved {two:,.0f} RPM = {two / limit:.1%} of "
          f"{limit:,.0f} combined, {two / one:.2f}x (a), {two_429} 429s")
    for line in summary.splitlines():
        if "endpoint" in line:
            print(f"    {line.strip()}")
    killed_mid_run(args.rpm, int(limit / 60 * 20))


if __name__ == "__main__":
    main()
