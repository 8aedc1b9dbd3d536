"""Start-up: how long a command takes before it does its work, against the code it is compared with.

(a) ``expand --dry-run`` of ``generators/rude_agent.yaml`` (100 cells, 1,100 requests): wall time,
CPU time and peak RSS of the whole process. (b) a small ``generate`` (100 requests) against the
loopback stand-in: seconds from the process's start to its first answer in the store (its commit
time, so a little after the answer came) and to its exit. Each is run ``--repeat`` times, medians
printed; with ``--against DIR`` (another checkout's ``src``, say the commit before a change) the
same runs of that code are interleaved and the ratios printed. Not a test.

    python bench/startup.py --repeat 5
    python bench/startup.py --against /tmp/base/src
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import GENERATE_SPEC, fake_server  # noqa: E402

RUDE = HERE.parent / "generators" / "rude_agent.yaml"
MEASURE = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
           "subprocess.run(sys.argv[2:], check=True, capture_output=True, cwd=sys.argv[1]); "
           "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "print(time.perf_counter() - t, r.ru_utime + r.ru_stime, r.ru_maxrss / 1024)")


def measured(argv: list[str], cwd: Path, src: str) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MiB) of one run, in a fresh measuring process."""
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", MEASURE, str(cwd), *argv], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    wall, cpu, rss = (float(x) for x in out)
    return wall, cpu, rss


def first_answer(url: str, folder: Path, src: str) -> tuple[float, float]:
    for stale in folder.glob("s.db*"):
        stale.unlink()
    start = time.time()
    subprocess.run([sys.executable, "-m", "promptbake", "generate", "spec.yaml", "--store", "s.db", "-q",
                    "--base-url", url], cwd=folder, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": src})
    end = time.time()
    with sqlite3.connect(folder / "s.db") as db:
        first = db.execute("SELECT MIN(created_at) FROM attempts").fetchone()[0]
    return first - start, end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--against", default=None, help="another src directory to compare with")
    args = parser.parse_args()
    ours = str(HERE.parent / "src")
    sources = {"this": ours, **({"against": args.against} if args.against else {})}
    dry: dict[str, list[tuple[float, float, float]]] = {k: [] for k in sources}
    gen: dict[str, list[tuple[float, float]]] = {k: [] for k in sources}
    with tempfile.TemporaryDirectory() as tmp, fake_server() as url:
        folder = Path(tmp)
        (folder / "spec.yaml").write_text(GENERATE_SPEC)
        with (folder / "inputs.jsonl").open("w") as fh:
            fh.writelines(json.dumps({"input": f"item {i}"}) + "\n" for i in range(100))
        for _ in range(args.repeat):
            for name, src in sources.items():
                dry[name].append(measured([sys.executable, "-m", "promptbake", "expand", str(RUDE), "--dry-run"],
                                          folder, src))
                gen[name].append(first_answer(url, folder, src))
    for name in sources:
        wall, cpu, rss = (statistics.median(r[i] for r in dry[name]) for i in range(3))
        first, total = (statistics.median(r[i] for r in gen[name]) for i in range(2))
        print(f"{name:8} expand --dry-run rude_agent: {wall:.2f} s wall, {cpu:.2f} s CPU, {rss:.0f} MiB; "
              f"generate (100 requests): first answer after {first:.2f} s, done in {total:.2f} s")
    if args.against:
        for i, what in enumerate(("dry run wall", "dry run CPU")):
            a, b = (statistics.median(r[i] for r in dry[k]) for k in ("this", "against"))
            print(f"  {what}: {a / b:.2f}× the other code's")
        a, b = (statistics.median(r[0] for r in gen[k]) for k in ("this", "against"))
        print(f"  first answer: {a / b:.2f}× the other code's")


if __name__ == "__main__":
    main()
