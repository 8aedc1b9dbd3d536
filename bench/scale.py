"""Every stage at scale: ``promptbake run`` on N examples, and a 10^7-cell grid's dry run and build.

(a) ``promptbake run`` (generate + build + report) on ``--examples`` examples against the loopback
stand-in, store on, as a user runs it: peak RSS of the whole process, wall time, and the phases
from the store's timestamps. Each size runs in a fresh process (peak RSS is a maximum). The
ratio printed is against the smallest size measured in the same run: flat memory is the goal.
(b) ``expand --dry-run`` and ``build`` on a grid of ``--grid-cells`` cells, of which the first
``--answered`` have answers (a streamed ``generate`` stopped by ``--max-cost``): time and peak RSS.

Prints figures; it is not a test.

    python bench/scale.py                          # run on 2,000 and 20,000 examples; a 10^7-cell grid
    python bench/scale.py --examples 20000,1000000 --only a     # the million-example run (long)
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import GENERATE_SPEC, fake_server  # noqa: E402

WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "gravel", "harbor", "iris", "juniper", "kelp",
         "lantern", "meadow", "nickel", "orchid", "pepper", "quartz", "raven", "saffron", "thistle", "umber",
         "violet", "willow", "xenon", "yarrow", "zephyr"]

# throughput.py's job, each input in its topic's category: the report draws per-category panels
RUN_SPEC = GENERATE_SPEC.replace("name: bench", "name: scale").replace(
    "count: 1}\n", 'count: 1}\ncategory: "{{ topic }}"\n', 1)

GRID_SPEC = """
name: grid
teacher:
  model: gpt-4o-mini
  prices: {{gpt-4o-mini: {{input: {price}, output: {price}}}}}
grid:
  axes: {{a: a.txt, b: b.txt}}
  count: 1
steps:
  - name: answer
    max_tokens: 16
    messages:
      - {{role: user, content: "Say {{{{ a }}}} and {{{{ b }}}}."}}
example:
  messages:
    - {{role: user, content: "Say {{{{ a }}}} and {{{{ b }}}}."}}
    - {{role: assistant, content: "{{{{ answer }}}}"}}
"""


def child(argv: list[str], cwd: Path, timeout: float | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit status) of one command in a fresh process. The peak is
    the largest process's (the kernel's count), or, if larger, the largest sum over the command's
    processes at one time (``rss.py``: generate plans a big grid's slices in a helper process)."""
    code = (f"import resource, subprocess, sys, time; sys.path.insert(0, {str(HERE)!r}); from rss import TreePeak; "
            "peak = TreePeak().start(); t = time.perf_counter(); "
            f"r = subprocess.run({argv!r}, capture_output=True, timeout={timeout!r}); "
            "w = time.perf_counter() - t; "
            "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, peak.stop(), r.returncode); "
            "sys.stderr.write(r.stderr.decode()[-2000:])")
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    wall, largest, together, status = done.stdout.split()
    if int(status) != 0:
        print(f"    (exit {status}: {done.stderr.strip().splitlines()[-1:] or '?'})")
    return float(wall), max(float(largest), float(together)), int(status)


def write_run(n: int, folder: Path) -> None:
    """RUN_SPEC and its ``n`` inputs in ``folder``: each input its own cell, 20 topics."""
    rng = random.Random(n)
    (folder / "spec.yaml").write_text(RUN_SPEC)
    with (folder / "inputs.jsonl").open("w") as fh:
        for i in range(n):
            words = " ".join(rng.choice(WORDS) for _ in range(6))
            fh.write(json.dumps({"input": f"{words} number {i}", "topic": WORDS[i % 20]}) + "\n")


def run_examples(url: str, n: int, folder: Path) -> tuple[float, float, dict[str, float]]:
    write_run(n, folder)
    start = time.time()
    wall, peak, _ = child([sys.executable, "-m", "promptbake", "run", "spec.yaml", "--out", "out", "-q",
                           "--base-url", url, "--concurrency", "64"], folder)
    with sqlite3.connect(folder / "out" / "promptbake.db") as db:
        started, finished = db.execute("SELECT MIN(started_at), MAX(finished_at) FROM runs").fetchone()
        first, last = db.execute("SELECT MIN(created_at), MAX(created_at) FROM attempts").fetchone()
    phases = {"start-up": started - start, "planning": first - started, "answers": last - first,
              "build + report": start + wall - finished}
    return wall, peak, phases


def grid(url: str, cells: int, answered: int, folder: Path) -> None:
    side = min(cells, 1000)
    (folder / "a.txt").write_text("\n".join(f"a{i}" for i in range(side)))
    (folder / "b.txt").write_text("\n".join(f"b{i}" for i in range(cells // side)))
    # a price that lets --max-cost stop generate after about `answered` answers (~30 tokens each)
    (folder / "spec.yaml").write_text(GRID_SPEC.format(price=1000))
    total = side * (cells // side)
    wall, peak, _ = child([sys.executable, "-m", "promptbake", "expand", "spec.yaml", "--dry-run"], folder)
    print(f"(b) expand --dry-run, {total:,} cells: {wall:.1f} s, peak RSS {peak:,.0f} MiB")
    wall, peak, _ = child([sys.executable, "-m", "promptbake", "generate", "spec.yaml", "--store", "s.db", "-q",
                           "--base-url", url, "--max-cost", str(answered * 30 * 1000 / 1e6)], folder)
    with sqlite3.connect(folder / "s.db") as db:
        ok = db.execute("SELECT COUNT(*) FROM requests WHERE status = 'ok'").fetchone()[0]
    print(f"    generate stopped by --max-cost after {ok:,} answers: {wall:.1f} s, peak RSS {peak:,.0f} MiB")
    for extra in (["--no-report"], []):
        wall, peak, status = child([sys.executable, "-m", "promptbake", "build", "spec.yaml", "--store", "s.db",
                                    "--out", "out", *extra], folder, timeout=600)
        what = "build --no-report" if extra else "build (with the report)"
        print(f"    {what}: {wall:.1f} s, peak RSS {peak:,.0f} MiB" + ("" if status == 0 else f" (exit {status})"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default="2000,20000", help="(a): sizes, comma-separated")
    parser.add_argument("--grid-cells", type=int, default=10_000_000, help="(b)")
    parser.add_argument("--answered", type=int, default=5_000, help="(b): cells answered before the build")
    parser.add_argument("--only", default="a,b")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    with fake_server() as url:
        if "a" in parts:
            baseline = None
            for n in (int(s) for s in args.examples.split(",")):
                with tempfile.TemporaryDirectory() as tmp:
                    wall, peak, phases = run_examples(url, n, Path(tmp))
                baseline = baseline or peak
                shown = ", ".join(f"{k} {v:,.1f} s" for k, v in phases.items())
                print(f"(a) run, {n:>9,} examples: peak RSS {peak:7,.0f} MiB ({peak / baseline:.2f}× the first "
                      f"size), {wall:,.0f} s ({shown})", flush=True)
        if "b" in parts:
            with tempfile.TemporaryDirectory() as tmp:
                grid(url, args.grid_cells, args.answered, Path(tmp))


if __name__ == "__main__":
    main()
