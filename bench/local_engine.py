"""The README's main job on each way of running the local teacher, in one run:

- before: one llama-cpp-python server with a thread per core (what `--teacher local` was when
  issue #16 was filed);
- per core: one single-thread llama-cpp-python server per core (what it became next);
- llama-server: one single-thread llama.cpp `llama-server` per core (what it is now, once
  `promptbake teacher build` has run).

    python bench/local_engine.py                  # each setup once, in that order
    python bench/local_engine.py --repeat 2       # twice, interleaved

Each runs `generators/rude_agent_quick.yaml` into a fresh folder and store through the public API,
as `promptbake run ... --teacher local` does. Prints wall time, completion tokens and completion
tokens per second of the whole job (start-up, every round, the build), a digest of the data files
(equal digests: the same dataset), and each setup's ratios to "before". The machine must be
quiet: llama.cpp's threads spin, so any other busy process makes every figure worse (and not
equally). Heavy: several minutes of both cores.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import promptbake
from promptbake.store.db import Store
from promptbake.teacher import local
from promptbake.teacher.engine import find_llama_server

SPEC = Path(__file__).resolve().parent.parent / "generators" / "rude_agent_quick.yaml"
DATA = ("train.jsonl", "test.jsonl", "metadata.jsonl")  # what a reproducible run repeats byte for byte


def layouts(cores: int) -> dict[str, local.LocalLayout]:
    return {
        "before: 1 llama-cpp-python server": local.LocalLayout("llama-cpp-python", 1, cores),
        "per core: llama-cpp-python servers": local.LocalLayout("llama-cpp-python", cores, 1),
        "per core: llama-server": local.LocalLayout("llama-server", cores, 1),
    }


def run_job(layout: local.LocalLayout, folder: Path) -> tuple[float, int, int, str]:
    """Wall seconds, completion tokens, attempts and a digest of the data files of the main job
    with the teacher laid out so."""
    original = local.local_layout
    local.local_layout = lambda threads=None: layout  # type: ignore[assignment]  # what open_teacher starts
    try:
        start = time.perf_counter()
        promptbake.run(SPEC, folder / "out", store=folder / "store.db", teacher=promptbake.Teacher(kind="local"),
                       progress=False)
        wall = time.perf_counter() - start
    finally:
        local.local_layout = original  # type: ignore[assignment]
    with Store(folder / "store.db") as store:
        totals = store.totals()
    data = hashlib.sha256(b"".join((folder / "out" / name).read_bytes() for name in DATA)).hexdigest()[:12]
    return wall, int(totals["completion_tokens"]), int(totals["attempts"]), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if find_llama_server() is None:
        raise SystemExit("llama-server is not built: run `promptbake teacher build` first")
    cores = local.core_count()
    print(f"cores: {cores}, load average before: {os.getloadavg()}")
    rates: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):
            for name, layout in layouts(cores).items():
                wall, tokens, attempts, data = run_job(layout, Path(tmp) / f"{round_}-{layout.engine}-"
                                                                                  f"{layout.processes}")
                rates.setdefault(name, []).append(tokens / wall)
                walls.setdefault(name, []).append(wall)
                print(f"{name}: {wall:.1f} s wall, {attempts} attempts, {tokens} completion tokens, "
                      f"{tokens / wall:.1f} completion tok/s, data {data}", flush=True)
    before = sum(rates["before: 1 llama-cpp-python server"]) / args.repeat
    before_wall = sum(walls["before: 1 llama-cpp-python server"]) / args.repeat
    for name, values in rates.items():
        mean, wall = sum(values) / len(values), sum(walls[name]) / len(values)
        print(f"{name}: {mean:.1f} completion tok/s = {mean / before:.2f}x before; "
              f"{wall:.1f} s wall = {before_wall / wall:.2f}x as fast")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
