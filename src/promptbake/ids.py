"""Stable ids: every id promptbake writes (cells, requests, cache keys, examples, eval calls) is a
content hash of what defines it, so planning the same thing twice gives the same id and a re-run
finds its earlier answers instead of paying for them again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from promptbake import fastjson


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Short content hash of JSON-able parts (sorted keys), the basis of every id we write."""
    blob = fastjson.sorted_dumps(parts) or json.dumps(
        parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks: what a record of the file it was made
    from (an eval file, a training split) compares against."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
