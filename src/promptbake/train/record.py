"""``train.json``: what a training run was (data, student, settings) and what it did (loss per
step, validation loss, tokens/s, wall time, peak RSS, library versions).

It is written beside the model when training ends, and is the receipt a later command reads:
running the same training again finds it and trains nothing, and ``eval`` and reports can show
which data and settings made the model they are looking at.
"""

from __future__ import annotations

import importlib.metadata
import json
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptbake.errors import DataFileError
from promptbake.output.atomic import write_text_atomic

RECORD = "train.json"
LIBRARIES = ("promptbake", "torch", "transformers", "trl", "peft", "accelerate", "gguf", "datasets")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def read_record(out: Path) -> dict[str, Any] | None:
    """The ``train.json`` in ``out``, or None when there is none."""
    path = out / RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataFileError(f"{path}: cannot read the training record ({exc})") from None
    if not isinstance(data, dict):
        raise DataFileError(f"{path}: not a training record (a JSON object)")
    return data


def write_record(out: Path, record: dict[str, Any]) -> Path:
    path = out / RECORD
    write_text_atomic(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return path


@dataclass
class TrainResult:
    """What ``promptbake.train`` made: the model folder, its GGUF (None with ``gguf=None``), the
    record (``train.json`` as a dict) and notes for the user (truncation, a resume, a no-op)."""

    out: Path
    gguf: Path | None
    record: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    trained: bool = True  # False when an identical finished run was found and nothing was trained

    @property
    def final_loss(self) -> float | None:
        steps = self.record.get("steps") or []
        return float(steps[-1]["loss"]) if steps else None

    def format(self) -> str:
        """The summary the CLI prints (stderr)."""
        r = self.record
        lines = list(self.notes)
        if not self.trained:
            lines.append(f"{self.out}: already trained with this data and these settings (pass --restart to train "
                         "again)")
        steps = r.get("steps") or []
        evals = r.get("validation_loss") or []
        first = f"{steps[0]['loss']:.3f}" if steps else "?"
        last = f"{steps[-1]['loss']:.3f}" if steps else "?"
        val = f", validation loss {evals[0]['loss']:.3f} → {evals[-1]['loss']:.3f}" if evals else ""
        method = f"{r.get('method', '?')}{' + LoRA' if r.get('lora') else ''}"
        examples, file = r.get("examples", {}).get("train"), r.get("dataset", {}).get("file")
        lines.append(f"{method} on {examples} examples of {file}: {r.get('global_step')} steps, loss {first} → "
                     f"{last}{val}")
        perf = r.get("performance") or {}
        lines.append(f"{perf.get('tokens_per_s', 0):,.0f} tokens/s, {perf.get('wall_s', 0):.1f} s wall, peak RSS "
                     f"{perf.get('peak_rss_mb', 0):,.0f} MiB on {r.get('device', '?')}")
        lines.append(f"model: {self.out}" + (f"; GGUF: {self.gguf} (serve it: promptbake teacher serve --model "
                                             f"{self.out})" if self.gguf else ""))
        return "\n".join(lines)
