"""A built dataset as Python objects: what ``promptbake.run`` and its siblings return.

The directory stays the source of truth (train/test JSONL, the metadata sidecar, the manifest);
``Dataset`` reads it back through the same reader eval and top-up use, so what a notebook sees is
exactly what a trainer will read, and a dataset built by the CLI loads the same way
(``Dataset.load(DIR)``). After a top-up, ``train`` is the newest version (``train.v2.jsonl``...).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptbake.errors import DataFileError
from promptbake.output.export import train_file
from promptbake.output.formats import WriteReport
from promptbake.output.sidecar import iter_split, read_split
from promptbake.records import Example


class CategoryCounts(BaseModel):
    """One category's way through build: rows generated, what the quality gates (checks, filters,
    judges), dedupe and the per-cell count took away, and where the kept examples went."""

    model_config = ConfigDict(extra="allow")

    rows: int = 0
    rejected_by_checks: int = 0
    filtered: int = 0
    judged_out: int = 0
    exact_dupes: int = 0
    near_dupes: int = 0
    surplus: int = 0
    kept: int = 0
    train: int = 0
    test: int = 0


class UsageTotals(BaseModel):
    """Requests, tokens and USD the store holds for the spec, over every run that fed it."""

    model_config = ConfigDict(extra="allow")

    requests: int = 0
    ok: int = 0
    failed: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


class Manifest(BaseModel):
    """``manifest.json`` typed: what ties the data to its recipe (spec hash, seed, teacher) and
    the counts behind it. Sections added by later steps (``distill``, ``topups``) and keys this
    version does not know are kept, so reading never fails on a newer manifest."""

    model_config = ConfigDict(extra="allow")

    spec: str = ""
    spec_hash: str = ""
    seed: int | None = None
    teacher: dict[str, Any] = Field(default_factory=dict)
    formats: list[str] = Field(default_factory=list)
    train: int = 0
    test: int = 0
    categories: dict[str, CategoryCounts] = Field(default_factory=dict)
    dedupe: dict[str, Any] = Field(default_factory=dict)
    balance: dict[str, Any] = Field(default_factory=dict)
    usage: UsageTotals = Field(default_factory=UsageTotals)
    warnings: list[str] = Field(default_factory=list)
    validation: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None
    topups: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """The manifest at ``path``; an empty one when the dataset has none (plain JSONL files)."""
        if not path.exists():
            return cls()
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, ValidationError) as exc:
            raise DataFileError(f"{path}: cannot read the manifest ({exc})") from None


class Dataset:
    """A built dataset: ``train`` and ``test`` lists of ``Example`` (messages, category and
    metadata), the ``manifest``, the ``directory`` it lives in, the ``store`` its answers came from
    (when the call knows it), and the ``report`` of the call that made it (a ``RunReport``,
    ``DistillResult``, ``TopupReport`` or ``BuildReport``).

    The splits are read on first use, so the CLI, which only prints the report, never holds a
    large dataset in memory."""

    def __init__(self, directory: str | Path, *, report: Any = None, store: Path | None = None,
                 train_version: int | None = None) -> None:
        self.directory = Path(directory)
        if not (self.directory / "train.jsonl").is_file():
            raise DataFileError(f"{self.directory}: no train.jsonl (build the dataset first)")
        self.manifest = Manifest.read(self.directory / "manifest.json")
        self.train_file = train_file(self.directory, train_version)
        self.report = report
        self.store = store

    @classmethod
    def load(cls, directory: str | Path, *, report: Any = None, store: Path | None = None,
             train_version: int | None = None) -> Dataset:
        """Read a built dataset directory (``promptbake run/build --out DIR``). ``train_version``
        picks a training file as ``export --train-version`` does (1: the build's ``train.jsonl``)."""
        return cls(directory, report=report, store=store, train_version=train_version)

    @cached_property
    def train(self) -> list[Example]:
        """The training examples: ``train_file``, after a top-up the newest version (``train.v2.jsonl``...)."""
        return read_split(self.directory / self.train_file, "train").examples

    @cached_property
    def test(self) -> list[Example]:
        """The held-out examples (none when the split has no test part)."""
        path = self.directory / "test.jsonl"
        return read_split(path, "test").examples if path.exists() else []

    def stream(self, split: str) -> Iterator[Example]:
        """One split's examples read a line at a time and not kept (``train`` is ``train_file``): a
        pass over a dataset too large to hold, as the report makes."""
        path = self.directory / (self.train_file if split == "train" else f"{split}.jsonl")
        if split == "train" or path.exists():
            yield from (example for _, example, _ in iter_split(path, split))

    def splits(self) -> dict[str, list[Example]]:
        """``{"train": ..., "test": ...}``, the shape every writer takes."""
        return {"train": self.train, "test": self.test}

    def to_hf(self) -> Any:
        """The splits as a Hugging Face ``datasets.DatasetDict`` (needs ``promptbake[hf]``), in the
        fixed schema of the ``hf`` export: messages plus id/category/cell/provenance columns."""
        from promptbake.output.export import hf_dataset_dict

        return hf_dataset_dict(self.splits())

    def write(self, directory: str | Path, format: str | Iterable[str] = "openai-chat") -> list[WriteReport]:
        """Write the splits in one or more formats under ``directory/<format>/``, exactly as
        ``promptbake export`` does (``hf`` writes Parquet and a ``save_to_disk`` folder)."""
        from promptbake.output.export import export_examples

        return export_examples(self.splits(), [format] if isinstance(format, str) else format, directory)

    def __repr__(self) -> str:
        # counted, not loaded: a repr is taken where nobody asked for the splits (asyncio's
        # Runner takes one of the task holding a finished run's Dataset on the way out, and
        # reading a million examples there cost gigabytes)
        counts = [len(self.__dict__[split]) if split in self.__dict__ else _lines(self.directory / name)
                  for split, name in (("train", self.train_file), ("test", "test.jsonl"))]
        return f"Dataset(train={counts[0]}, test={counts[1]}, directory={str(self.directory)!r})"


def _lines(path: Path) -> int:
    """Examples in a split file (one a line; none when it is absent), read a block at a time."""
    if not path.exists():
        return 0
    count = 0
    last = b"\n"
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")  # a last line without its newline
