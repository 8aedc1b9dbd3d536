"""Training on this machine: tokens/s and peak RSS of ``promptbake train`` on the quick sample.

Trains the default student (SmolLM2-135M-Instruct) for a few steps each way, every run in a fresh
interpreter so that each peak RSS is its own: (a) full fine-tuning, the baseline; (b) LoRA; then
times writing the GGUF of the trained model. Tokens are those trained on (padding excluded), from
``train.json``; ratios are against (a) in the same run. On a machine shared with other jobs the
wall-clock figures move with their load; tokens per CPU second move less. Not a test.

    python bench/train.py               # 4 steps each (~10 minutes on 2 busy cores)
    python bench/train.py --steps 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GGUF = ("import sys, time; from pathlib import Path; from promptbake.train.gguf import write_gguf; "
        "t = time.perf_counter(); write_gguf(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]); "
        "print(time.perf_counter() - t)")


def train(data: Path, out: Path, steps: int, extra: list[str]) -> tuple[dict, float]:
    argv = [sys.executable, "-m", "promptbake", "train", str(data), "--out", str(out), "--max-steps", str(steps),
            "--validation", "0", "--save-steps", "1000", "--gguf", "none", "-q", *extra]
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads((out / "train.json").read_text()), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--data", default=str(ROOT / "samples" / "quick"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="promptbake-bench-train-") as work:
        baseline = None
        for label, extra in (("(a) full fine-tuning", []), ("(b) LoRA r16", ["--lora"])):
            record, wall = train(Path(args.data), Path(work) / label[1], args.steps, extra)
            perf = record["performance"]
            speed, per_cpu = perf["tokens_per_s"], perf["tokens"] / perf["cpu_s"]
            baseline = baseline or (speed, per_cpu)
            print(f"{label}: {speed:,.1f} tokens/s ({speed / baseline[0]:.2f}x (a)), {per_cpu:,.1f} tokens per CPU "
                  f"second ({per_cpu / baseline[1]:.2f}x (a)), {perf['train_s'] / record['global_step']:.1f} s/step "
                  f"over {record['global_step']} steps of batch {record['hyperparameters']['batch_size']}, peak RSS "
                  f"{perf['peak_rss_mb']:,.0f} MiB, {wall:.0f} s wall with start-up; {record['threads']} torch "
                  f"threads, {record['device']}")
        for kind in ("q8_0", "f16"):
            target = Path(work) / f"model.{kind}.gguf"
            done = subprocess.run([sys.executable, "-c", GGUF, str(Path(work) / "a"), str(target), kind],
                                  check=True, capture_output=True, text=True)
            print(f"GGUF {kind}: {float(done.stdout):.1f} s, {target.stat().st_size / 2**20:,.0f} MiB")
        print(f"machine: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
