"""The metadata sidecar of a built split: ``metadata.jsonl`` beside ``train.jsonl``/``test.jsonl``.

Build keeps ids, categories, cells and provenance out of the training files and writes them here,
one line per example in the split's order (tagged with ``split``); a top-up's ``train.v2.jsonl``
gets ``metadata.v2.jsonl``. Eval, top-up and ``Dataset`` read the split's lines back through here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

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
        _mismatch(meta_path, split, data, len(rows), count)
    return rows


@dataclass
class Split:
    """A split as read: its lines (canonical JSON, as build writes them), examples and metadata."""

    lines: list[str]
    examples: list[Example]
    metadata: list[dict[str, Any]]


def read_split(path: Path, name: str) -> Split:
    """A built split file with its sidecar lines; without a sidecar, ids are ``name:line``."""
    lines, examples, metas = [], [], []
    for row, example, meta in iter_split(path, name):
        lines.append(json_line(row))
        examples.append(example)
        metas.append(meta)
    return Split(lines, examples, metas)


def iter_split(path: Path, name: str) -> Iterator[tuple[dict[str, Any], Example, dict[str, Any]]]:
    """``read_split`` a line at a time, (row, example, metadata) each: one pass over a split too large
    to hold (the report of a million examples) reads it and its sidecar side by side."""
    meta_path, split = default_metadata(path), path.name.partition(".")[0]
    metas = _split_rows(meta_path, split) if meta_path is not None else None
    count = 0
    lines = read_jsonl(path, f"{name} split")
    for number, row in lines:
        meta = {} if metas is None else next(metas, None)
        if meta is None:
            assert meta_path is not None
            _mismatch(meta_path, split, path, count, count + 1 + sum(1 for _ in lines))
        count += 1
        messages = row.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataFileError(f"{path}:{number}: no 'messages' list (splits are openai-chat files)")
        meta.setdefault("id", f"{name}:{number}")
        meta.setdefault("category", "")
        meta["split"] = name
        yield row, Example(id=str(meta["id"]), category=str(meta["category"]), cell=meta.get("cell") or {},
                           messages=messages, tools=row.get("tools"), rejected=meta.get("rejected"),
                           provenance=meta.get("provenance") or {}, scores=meta.get("scores") or {}), meta
    if metas is not None and (left := sum(1 for _ in metas)):
        assert meta_path is not None
        _mismatch(meta_path, split, path, count + left, count)


def _split_rows(meta_path: Path, split: str) -> Iterator[dict[str, Any]]:
    """The sidecar's rows of ``split`` (every row, in a sidecar that tags none)."""
    for _, row in read_jsonl(meta_path, "metadata"):
        if row.get("split", split) == split:
            yield row


def _mismatch(meta_path: Path, split: str, data: Path, rows: int, count: int) -> NoReturn:
    raise DataFileError(f"{meta_path}: {rows} metadata rows for split {split!r} but {data} has {count} examples; "
                        "pass the matching --metadata")
