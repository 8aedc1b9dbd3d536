"""The dataset report at scale: ``promptbake report DIR`` on a built dataset of N examples.

For each ``--examples`` size, a store and its built directory are made once under ``--work`` (scale.py's
RUN_SPEC against the loopback stand-in: every input its own cell, 20 categories; then ``build
--no-report``) and kept for later runs. Then ``promptbake report`` runs in a fresh process (peak RSS is
a maximum) with this checkout's sources, and with ``--against SRC`` (a ``src`` folder of other code,
e.g. ``git archive main src | tar -x -C /tmp/base``) the same again, so both are measured in one run.
Printed: wall seconds, peak RSS, page size, and each size's ratio to the smallest (flat is the goal).

Prints figures; it is not a test.

    python bench/report_memory.py --examples 20000,200000 --work /tmp/reportbench --against /tmp/base/src
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import write_run  # noqa: E402
from throughput import fake_server  # noqa: E402


def built(n: int, folder: Path) -> Path:
    """``folder/out``, a dataset of ``n`` examples built from ``folder/s.db`` (made when missing)."""
    out = folder / "out"
    if (out / "manifest.json").exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    write_run(n, folder)
    with fake_server() as url:
        subprocess.run([sys.executable, "-m", "promptbake", "generate", "spec.yaml", "--store", "s.db", "-q",
                        "--base-url", url, "--concurrency", "64"], cwd=folder, check=True)
    subprocess.run([sys.executable, "-m", "promptbake", "build", "spec.yaml", "--store", "s.db", "--out", "out",
                    "--no-report"], cwd=folder, check=True)
    return out


def report(src: Path, out: Path, page: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, page bytes) of ``promptbake report`` run from ``src``."""
    argv = [sys.executable, "-m", "promptbake", "report", str(out), "--store", str(out.parent / "s.db"),
            "-o", str(page)]
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            f"r = subprocess.run({argv!r}, capture_output=True); w = time.perf_counter() - t; "
            "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r.returncode); "
            "sys.stderr.write(r.stderr.decode()[-2000:])")
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=out.parent)
    wall, peak, status = done.stdout.split()
    if int(status) != 0:
        raise SystemExit(f"report from {src} failed (exit {status}): {done.stderr.strip()[-500:]}")
    return float(wall), float(peak), page.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default="20000,200000", help="comma-separated dataset sizes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/promptbake-report-bench"),
                        help="where the stores and built directories are kept between runs")
    parser.add_argument("--against", type=Path, help="a src folder of the code to compare with")
    args = parser.parse_args()
    sizes = [int(n) for n in args.examples.split(",")]
    outs = {n: built(n, args.work / f"n{n}") for n in sizes}
    codes = {"this": HERE.parent / "src", **({"against": args.against} if args.against else {})}
    print(f"{'code':8} {'examples':>9} {'seconds':>8} {'peak MiB':>9} {'page KiB':>9}   ratio to {sizes[0]:,}"
          " (time, RSS, page)")
    for name, src in codes.items():
        first: tuple[float, float, int] | None = None
        for n in sizes:
            wall, peak, size = report(src, outs[n], args.work / f"n{n}" / f"report.{name}.html")
            first = first or (wall, peak, size)
            print(f"{name:8} {n:>9,} {wall:>8.1f} {peak:>9.0f} {size / 1024:>9.0f}   "
                  f"{wall / first[0]:.2f}x {peak / first[1]:.2f}x {size / first[2]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
