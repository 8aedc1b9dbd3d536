"""Grid expansion: spec → cells → first-step requests.

Cells are produced lazily in a fixed order (table rows × axes, Cartesian, minus ``exclude`` rules)
so a million-cell grid never sits in memory, and every id is a hash of what defines it, so
re-expanding the same spec gives the same ids.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from promptbake import fastjson
from promptbake.errors import DataFileError
from promptbake.ids import stable_hash
from promptbake.output.jsonl import read_jsonl
from promptbake.specification.models import Spec, read_lines_file
from promptbake.specification.templates import Templates


@dataclass(frozen=True)
class Cell:
    index: int
    key: str
    values: dict[str, Any]
    category: str
    count: int  # accepted examples wanted for this cell


def load_axes(spec: Spec) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for name, given in spec.grid.axes.items():
        values = read_lines_file(spec.resolve(given), f"values of axis {name!r}") if isinstance(given, str) else given
        if not values:
            raise DataFileError(f"{spec.where()}: grid.axes.{name} is empty")
        axes[name] = list(values)
    return axes


def load_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL, CSV or plain-text file (text: one ``input`` per non-blank line)."""
    return list(_table_rows(path))


def _table_rows(path: Path) -> Iterator[dict[str, Any]]:
    """``load_table``'s rows, one at a time (a JSONL or text table is never held whole)."""
    if path.suffix in (".jsonl", ".ndjson"):
        rows: Iterable[dict[str, Any]] = (row for _, row in read_jsonl(path, "input"))
    elif path.suffix == ".csv":
        try:
            text = path.read_text(encoding="utf-8-sig")  # spreadsheets save CSV with a BOM
        except UnicodeDecodeError as exc:
            raise DataFileError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
        except OSError as exc:
            raise DataFileError(f"{path}: cannot read: {exc.strerror}") from exc
        rows = [dict(r) for r in csv.DictReader(io.StringIO(text))]
    else:
        rows = ({"input": line} for line in read_lines_file(path, "input file"))
    empty = True
    for row in rows:
        empty = False
        yield row
    if empty:
        raise DataFileError(f"{path}: no rows")


class Rows(Sequence[dict[str, Any]]):
    """A grid's table rows, each held as its JSON and decoded when read: a million-row table is
    a million cells, and as dicts its rows took about 430 bytes each (bench/build_memory.py), as
    JSON about a quarter of that. A row reads back as the value it was (``fastjson``)."""

    def __init__(self, rows: Iterable[dict[str, Any]]) -> None:
        # copied to its length: orjson hands out its bytes in a buffer of at least a kilobyte
        self._lines = [bytes(memoryview(fastjson.dumps(row))) for row in rows]

    def __len__(self) -> int:
        return len(self._lines)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [fastjson.loads(line) for line in self._lines[index]]
        row: dict[str, Any] = fastjson.loads(self._lines[index])
        return row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for line in self._lines:
            yield fastjson.loads(line)


def _canonical(value: Any) -> int:
    # the same for equal values whatever their key order; an int is half a hex string's bytes
    return int(stable_hash(value), 16)


def _excluded(values: dict[str, Any], rules: list[dict[str, Any]]) -> bool:
    for rule in rules:
        if all(values.get(axis) in (wanted if isinstance(wanted, list) else [wanted]) for axis, wanted in rule.items()):
            return True
    return False


def _cell_count(spec: Spec, values: dict[str, Any]) -> int:
    weight = 1.0
    for axis, table in spec.grid.weights.items():
        weight *= table.get(str(values.get(axis)), 1.0)
    return max(0, math.floor(spec.grid.count * weight + 0.5))


# A grid of at most this many cells is expanded once and kept: generate walks it to save the cells,
# then to plan them, then to count what is short (each walk hashes every cell and renders its
# category). A bigger one is expanded again each time rather than held in memory.
KEEP_CELLS = 20_000


class Expander:
    """Turns a spec into cells; shared by expand, generate, build and the dry run."""

    def __init__(self, spec: Spec, templates: Templates | None = None) -> None:
        self.spec = spec
        self.templates = templates or Templates.for_spec_dir(spec.base_dir)
        self.axes = load_axes(spec)
        self.table = Rows(_table_rows(spec.resolve(spec.grid.table)) if spec.grid.table else [{}])
        self._kept: list[Cell] | None = None
        self._members: tuple[list[set[int]], set[int]] | None = None  # see cell_of

    def category(self, values: dict[str, Any]) -> str:
        if self.spec.category is None:
            return " / ".join(str(values[a]) for a in self.axes) or "all"
        return self.templates.expression(f"{self.spec.where()}:category", self.spec.category, values)

    def cells(self) -> Iterator[Cell]:
        """Every cell, in grid order (see ``KEEP_CELLS``)."""
        if self._kept is None and self.totals()[0] <= KEEP_CELLS:
            self._kept = list(self._expand())
        return iter(self._kept) if self._kept is not None else self._expand()

    def _expand(self) -> Iterator[Cell]:
        names = list(self.axes)
        index = 0
        for row in self.table:
            for combo in itertools.product(*(self.axes[n] for n in names)):
                values = {**row, **dict(zip(names, combo, strict=True))}
                if _excluded(values, self.spec.grid.exclude):
                    continue
                count = _cell_count(self.spec, values)
                if count == 0:
                    continue
                key = stable_hash(self.spec.name, values)
                yield Cell(index, key, values, self.category(values), count)
                index += 1

    def cell_of(self, values: dict[str, Any]) -> Cell | None:
        """The cell ``values`` make, or None when the grid (as the spec says now) has no such cell.
        How a build finds the cells of its examples in a grid too big to expand (its ``index``
        is not looked up: -1). The first call indexes the axes' values and the table's rows."""
        if self._members is None:
            axes = [{_canonical(v) for v in self.axes[n]} for n in self.axes]
            self._members = axes, {_canonical(self._row(row)) for row in self.table}
        axes, rows = self._members
        if any(n not in values or _canonical(values[n]) not in known for n, known in zip(self.axes, axes, strict=True)):
            return None
        if _canonical(self._row(values)) not in rows or _excluded(values, self.spec.grid.exclude):
            return None
        count = _cell_count(self.spec, values)
        if count == 0:
            return None
        return Cell(-1, stable_hash(self.spec.name, values), values, self.category(values), count)

    def _row(self, values: dict[str, Any]) -> dict[str, Any]:
        """The part of a cell's values that comes from its table row (the axes override the rest)."""
        return {k: v for k, v in values.items() if k not in self.axes}

    def totals(self) -> tuple[int, int]:
        """(cells, examples wanted) from the axis sizes, without expanding the grid: a 10^8-cell
        dry run answers at once. Only the axes that ``exclude`` rules or ``weights`` name decide
        whether a cell counts and how much; their combinations are enumerated, and each stands
        for the product of the other axes' sizes times the table's rows."""
        grid = self.spec.grid
        names = list(self.axes)
        decisive = [n for n in names if n in grid.weights or any(n in rule for rule in grid.exclude)]
        others = math.prod(len(self.axes[n]) for n in names if n not in decisive) * len(self.table)
        cells = examples = 0
        for combo in itertools.product(*(self.axes[n] for n in decisive)):
            values = dict(zip(decisive, combo, strict=True))
            count = 0 if _excluded(values, grid.exclude) else _cell_count(self.spec, values)
            if count:
                cells += others
                examples += others * count
        return cells, examples
