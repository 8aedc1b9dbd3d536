"""Reading JSONL inputs: one streaming reader, so every command reports a bad line the same way.

Lines are decoded one at a time, so a huge file is never held whole and a non-UTF-8 byte is
reported with its line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from promptbake import fastjson
from promptbake.errors import DataFileError


def read_jsonl(path: Path, what: str = "JSONL") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; errors name the file and line."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise DataFileError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise DataFileError(f"{path}: is a directory, not a {what} file") from None
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read: {exc.strerror}") from None
    with fh:
        for number, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM is not JSON
            except UnicodeDecodeError:
                raise DataFileError(f"{path}:{number}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                row = fastjson.loads(line)  # json.loads's value, and its error on a bad line
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise DataFileError(f"{path}:{number}: each {what} line must be a JSON object")
            yield number, row
