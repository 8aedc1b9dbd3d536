"""The README's main job on each way of running the local teacher, in one run:

- before: one llama-cpp-python server with a thread per core (what `--teacher local` was when
  issue #16 was filed);
- per core: one single-thread llama-cpp-python server per core (what it became next);
- llama-server: llama.cpp's own server, a thread per core, requests batched in its slots (what
  it is now, once `promptbake teacher build` has run).

    python bench/local_engine.py                  # each setup once, in that order
    python bench/local_engine.py --repeat 2       # twice, interleaved

Each runs `generators/rude_agent_quick.yaml` into a fresh folder and store through the public API,
as `promptbake run ... --teacher local` does. Prints wall time, completion tokens and completion
tokens per second of the whole job (start-up, every round, the build), and each setup's ratio to
"before". The machine must be quiet: llama.cpp's threads spin, so any other busy process makes
every figure worse (and not equally). Heavy: several minutes of both cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import promptbake
from promptbake.store.db import Store
from promptbake.teacher import local
from promptbake.teacher.engine import find_llama_server

SPEC = Path(__file__).resolve().parent.parent / "generators" / "rude_agent_quick.yaml"


def layouts(cores: int) -> dict[str, local.LocalLayout]:
    return {
        "before: 1 llama-cpp-python server": local.LocalLayout("llama-cpp-python", 1, cores, 1),
        "per core: llama-cpp-python servers": local.LocalLayout("llama-cpp-python", cores, 1, 1),
        "llama-server": local.LocalLayout("llama-server", 1, cores, local.SLOTS),
    }


def run_job(layout: local.LocalLayout, folder: Path) -> tuple[float, int, int]:
    """Wall seconds, completion tokens and attempts of the main job with the teacher laid out so."""
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
    return wall, int(totals["completion_tokens"]), int(totals["attempts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if find_llama_server() is None:
        raise SystemExit("llama-server is not built: run `promptbake teacher build` first")
    cores = local.core_count()
    print(f"cores: {cores}, load average before: {os.getloadavg()}")
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):
            for name, layout in layouts(cores).items():
                wall, tokens, attempts = run_job(layout, Path(tmp) / f"{round_}-{layout.engine}-{layout.processes}")
                rates.setdefault(name, []).append(tokens / wall)
                print(f"{name}: {wall:.1f} s wall, {attempts} attempts, {tokens} completion tokens, "
                      f"{tokens / wall:.1f} completion tok/s", flush=True)
    before = sum(rates["before: 1 llama-cpp-python server"]) / args.repeat
    for name, values in rates.items():
        mean = sum(values) / len(values)
        print(f"{name}: {mean:.1f} completion tok/s, {mean / before:.2f}x before")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
