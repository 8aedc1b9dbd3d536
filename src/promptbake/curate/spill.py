"""Kept examples on disk while a build decides which to write: memory that does not grow with them.

A build keeps every example that passes the gates and dedupe until it has balanced and split them,
and only then writes them, in an order (the split's shuffle) unrelated to the order they came in.
Held as ``Example`` objects, a million of them took gigabytes. So each kept example is written
once to a scratch file beside the output (its JSON, one line) and the build carries a ``Kept``
handle instead: the few fields that counting, balancing and splitting read, and where the line
starts. Writers read the examples back one at a time, in the order they write them; at most one
is alive at a time. The scratch files are removed when the build ends, also on an error; one a
killed build left behind is removed by the next build of the same directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from promptbake import fastjson
from promptbake.errors import OutputError
from promptbake.output.atomic import temp_beside
from promptbake.records import Example


class Kept:
    """A kept example while the build decides: what ``balance``, ``assign`` and ``nested_subsets``
    read, and ``at``, where its line starts in the spill. Slots, and strings shared where they
    repeat (categories), keep it to a couple of hundred bytes."""

    __slots__ = ("at", "category", "group", "id")

    def __init__(self, id: str, category: str, group: str, at: int) -> None:
        self.id = id
        self.category = category
        self.group = group  # the split's group key (split.group_key)
        self.at = at


class Scratch:
    """A temporary file of lines beside ``path`` (``.NAME.PID.HEX.tmp``), removed by ``close``.

    Appended to first, then read: by offset (``line_at``) or from the start (``lines``)."""

    def __init__(self, path: Path) -> None:
        self.path = temp_beside(path)
        try:
            self._fh = open(self.path, "x+b")  # noqa: SIM115 (closed by close(), also on error)
        except OSError as exc:
            raise self._error(exc) from None
        self._end = 0
        self._reading = False

    def _error(self, exc: OSError) -> OutputError:
        """A full disk or a file size limit met while spilling: the output's directory is where."""
        return OutputError(f"{self.path.parent}: cannot write a scratch file ({exc.strerror or exc})")

    def append(self, line: bytes) -> int:
        """Add one line (without its newline); returns the offset it starts at."""
        if self._reading:
            self._fh.seek(0, os.SEEK_END)
            self._reading = False
        at = self._end
        try:
            self._fh.write(line + b"\n")
        except OSError as exc:
            raise self._error(exc) from None
        self._end += len(line) + 1
        return at

    def line_at(self, at: int) -> bytes:
        self._read()
        self._fh.seek(at)
        return self._fh.readline()

    def lines(self) -> Iterator[bytes]:
        """Every line (with its newline), in the order appended."""
        self._flush()
        with open(self.path, "rb") as fh:
            yield from fh

    def _read(self) -> None:
        if not self._reading:
            self._flush()
            self._reading = True

    def _flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):  # its buffer could not be written: the file goes anyway
            self._fh.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Spill(Scratch):
    """Examples in a ``Scratch``: ``put`` one, ``examples`` reads them back in any order."""

    def put(self, example: Example) -> int:
        """Write ``example``; returns its offset (``Kept.at``)."""
        return self.append(fastjson.dumps(example.model_dump()))

    def get(self, at: int) -> Example:
        # the dump of a validated Example: nothing to validate again
        fields: dict[str, Any] = fastjson.loads(self.line_at(at))
        return Example.model_construct(**fields)

    def examples(self, kept: Iterable[Kept]) -> Iterator[Example]:
        """The examples ``kept`` stand for, read one at a time, in their order."""
        for handle in kept:
            yield self.get(handle.at)
