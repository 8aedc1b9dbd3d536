"""The metadata sidecar of a built split: ``metadata.jsonl`` beside ``train.jsonl``/``test.jsonl``.

Build keeps ids, categories, cells and provenance out of the training files and writes them here,
one line per example in the split's order (tagged with ``split``); a top-up's ``train.v2.jsonl``
gets ``metadata.v2.jsonl``. Eval, top-up and ``Dataset`` read the split's lines back through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptbake.errors import DataFileError
from promptbake.output.atomic import json_line
from promptbake.output.jsonl import read_jsonl
from promptbake.records import Example


def metadata_file(data: Path) -> Path:
    """The sidecar build (or top-up) writes next to a split: ``train.jsonl`` and ``test.jsonl`` →
    ``metadata.jsonl``, ``train.v2.jsonl`` → ``metadata.v2.jsonl``."""
    _, _, rest = data.name.partition(".")
    return data.with_name(f"metadata.{rest or 'jsonl'}")


def default_metadata(data: Path) -> Path | None:
    """The sidecar next to a split (``metadata_file``), if there is one."""
    candidate = metadata_file(data) if "." in data.name else None
    return candidate if candidate is not None and candidate.exists() else None


def split_metadata(data: Path, count: int, metadata: str | Path | None = None) -> list[dict[str, Any]] | None:
    """The metadata lines of the split in ``data`` (``count`` examples), in file order (build writes
    them in the split's order); None when there is no sidecar."""
    meta_path = Path(metadata) if metadata is not None else default_metadata(data)
    if meta_path is None:
        return None
    rows = [row for _, row in read_jsonl(meta_path, "metadata")]
    split = data.name.partition(".")[0]
    if any("split" in row for row in rows):
        rows = [row for row in rows if row.get("split") == split]
    if len(rows) != count:
        raise DataFileError(
            f"{meta_path}: {len(rows)} metadata rows for split {split!r} but {data} has {count} examples; "
            "pass the matching --metadata"
        )
    return rows


@dataclass
class Split:
    """A split as read: its lines (canonical JSON, as build writes them), examples and metadata."""

    lines: list[str]
    examples: list[Example]
    metadata: list[dict[str, Any]]


def read_split(path: Path, name: str) -> Split:
    """A built split file with its sidecar lines; without a sidecar, ids are ``name:line``."""
    lines, examples = [], []
    raw = list(read_jsonl(path, f"{name} split"))
    metas = split_metadata(path, len(raw)) or [{} for _ in raw]
    for (number, row), meta in zip(raw, metas, strict=True):
        messages = row.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataFileError(f"{path}:{number}: no 'messages' list (splits are openai-chat files)")
        meta.setdefault("id", f"{name}:{number}")
        meta.setdefault("category", "")
        meta["split"] = name
        lines.append(json_line(row))
        examples.append(Example(id=str(meta["id"]), category=str(meta["category"]), cell=meta.get("cell") or {},
                                messages=messages, tools=row.get("tools"), rejected=meta.get("rejected"),
                                provenance=meta.get("provenance") or {}, scores=meta.get("scores") or {}))
    return Split(lines, examples, metas)
