"""``promptbake build`` at scale: peak RSS and time against the code before a change.

A store of N examples (bench/scale.py's RUN_SPEC: one cell per input, each answered once by the
loopback stand-in) is generated once per size and kept in ``--keep`` for later runs (200,000
take about two minutes, 1,000,000 about eight). Then ``promptbake build --no-report`` runs on it
in a fresh process, once with this checkout's ``src`` and, with ``--against DIR``, once with the
sources in DIR (e.g. ``git archive main src | tar -x -C /tmp/base``, then ``--against
/tmp/base/src``). Printed per size and code: seconds, peak RSS, and what the build adds per example
between the smallest and each larger size (flat memory is the goal: the build keeps each example
on disk, not in memory), and the ratio of peak RSS against the other code at the same size.

Prints figures; it is not a test.

    python bench/build_memory.py --against /tmp/base/src --keep /tmp/stores       # 20,000 and 200,000
    python bench/build_memory.py --sizes 20000,1000000 --keep /tmp/stores
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import child, write_run  # noqa: E402
from throughput import fake_server  # noqa: E402

SRC = HERE.parent / "src"


def store_of(n: int, keep: Path) -> Path:
    """The folder holding a generated store of ``n`` examples (generated now if it is missing)."""
    folder = keep / f"build{n}"
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    write_run(n, folder)
    (folder / "s.db").unlink(missing_ok=True)
    with fake_server() as url:
        subprocess.run(["env", f"PYTHONPATH={SRC}", sys.executable, "-m", "promptbake", "generate", "spec.yaml",
                        "--store", "s.db", "-q", "--base-url", url, "--concurrency", "64"], cwd=folder, check=True)
    (folder / "done").write_text("")
    return folder


def build(src: Path, folder: Path, out: str) -> tuple[float, float]:
    shutil.rmtree(folder / out, ignore_errors=True)
    wall, peak, status = child(["env", f"PYTHONPATH={src}", sys.executable, "-m", "promptbake", "build",
                                "spec.yaml", "--store", "s.db", "--out", out, "--no-report"], folder)
    if status:
        raise SystemExit(f"build with {src} failed (exit {status})")
    return wall, peak


def same_files(a: Path, b: Path) -> bool:
    """Whether the two output folders hold the same files, byte for byte."""
    cmp = filecmp.dircmp(a, b)
    _, differ, unreadable = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not (cmp.left_only or cmp.right_only or differ or unreadable)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000", help="examples per store, comma-separated")
    parser.add_argument("--against", type=Path, help="the sources (a src folder) to compare with")
    parser.add_argument("--keep", type=Path, help="folder that keeps the generated stores between runs")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    codes = {"this": SRC, **({"against": args.against.resolve()} if args.against else {})}
    with tempfile.TemporaryDirectory() as tmp:
        keep = args.keep or Path(tmp)
        first: dict[str, tuple[int, float]] = {}
        for n in sizes:
            folder = store_of(n, keep)
            peaks = {}
            for name, src in codes.items():
                wall, peak = build(src, folder, f"out-{name}")
                peaks[name] = peak
                base_n, base_peak = first.setdefault(name, (n, peak))
                grows = f", {(peak - base_peak) * 2**20 / (n - base_n):,.0f} B/example over {base_n:,}" \
                    if n > base_n else ""
                print(f"{n:>9,} examples, {name:<7}: {wall:7.1f} s, peak RSS {peak:7,.0f} MiB{grows}", flush=True)
            if "against" in peaks:
                same = same_files(folder / "out-this", folder / "out-against")
                print(f"{'':>9}  peak RSS this/against: {peaks['this'] / peaks['against']:.2f}; "
                      f"files {'byte-identical' if same else 'DIFFER'}", flush=True)


if __name__ == "__main__":
    main()
