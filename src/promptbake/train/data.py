"""What a student is trained on: the dataset's latest training file, a validation slice of it, and
the token sequences the trainer sees.

The training file is the one ``export`` and ``Dataset`` read (the newest ``train.vN.jsonl`` after
top-ups, else ``train.jsonl``); ``test.jsonl`` is never opened here. The validation slice, for the
loss curve only, comes out of that training file with the build's own stratified, group-aware
split (seeded, so it is the same slice on every run and every resume), and its ids go into
``train.json``.

SFT sequences are the student's chat template applied to each conversation, with the loss on the
assistant turns only: each turn's tokens are found by rendering the conversation up to that turn
with and without it, so any chat template works (no ``{% generation %}`` markers are needed, and
the template written beside the model is the student's own). A turn with ``weight: 0`` (OpenAI's
chat format) is context, not a target. Truncation to ``max_length`` is counted here and reported,
never silent.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from promptbake.curate.split import split
from promptbake.errors import DataFileError, InputError
from promptbake.ids import stable_hash
from promptbake.output.dataset import Dataset
from promptbake.output.export import train_file
from promptbake.output.formats import get_format
from promptbake.records import Example
from promptbake.specification.models import SplitConfig

Method = Literal["sft", "dpo"]
IGNORE = -100  # the label of a token that carries no loss (PyTorch's cross-entropy ignore_index)


@dataclass
class TrainData:
    """The examples a run trains and validates on, and where they came from."""

    directory: Path
    file: str  # the training file's name in ``directory``
    train: list[Example]
    validation: list[Example]
    data_hash: str  # of every training and validation example as used, in order

    def categories(self) -> dict[str, dict[str, int]]:
        """Per category, how many examples train and validate: what ``train.json`` records."""
        counts: dict[str, dict[str, int]] = {}
        for name, examples in (("train", self.train), ("validation", self.validation)):
            for category, n in Counter(e.category for e in examples).items():
                counts.setdefault(category, {"train": 0, "validation": 0})[name] = n
        return dict(sorted(counts.items()))


def load_train_data(directory: str | Path, method: Method, *, validation: float | int, seed: int) -> TrainData:
    """The dataset's training examples, split into train and a stratified validation slice
    (``validation``: a fraction or a count, 0 for none). DPO needs a rejected answer on every
    example; examples without one are refused by name, as ``export`` refuses them."""
    directory = Path(directory)
    name = train_file(directory)
    dataset = Dataset.load(directory)
    examples = dataset.train
    if not examples:
        raise DataFileError(f"{directory / name}: no training examples")
    if method == "dpo":
        missing = [e.id for e in examples if not e.rejected]
        if missing:
            raise InputError(f"{directory / name}: --method dpo needs a rejected answer on every example; "
                             f"{len(missing)} have none (first: {missing[0]}); build the dataset from a spec "
                             "with an example.rejected template (generators/rude_agent_dpo.yaml is one)")
    if validation:
        train, held = split(examples, SplitConfig(test=validation, seed=seed, group="prompt"))
    else:
        train, held = list(examples), []
    if not train:
        raise InputError(f"--validation {validation}: nothing would be left to train on")
    digest = stable_hash([_identity(e) for e in train], [_identity(e) for e in held], length=64)
    return TrainData(directory, name, train, held, digest)


def _identity(example: Example) -> list[Any]:
    return [example.messages, example.rejected, example.tools]


def sft_messages(example: Example) -> list[dict[str, Any]]:
    """The conversation as a trainer reads it (the ``messages`` export, plus each turn's weight)."""
    rows = get_format("messages").convert(example)["messages"]
    for row, original in zip(rows, example.messages, strict=True):
        if original.get("weight") is not None:
            row["weight"] = original["weight"]
    return list(rows)


def preference_row(example: Example) -> dict[str, Any]:
    """The ``preference-trl`` export of an example: ``{prompt, chosen, rejected}`` conversations."""
    return get_format("preference-trl").convert(example)


@dataclass
class Truncation:
    """What ``max_length`` cut: the user is told, never left to find out."""

    max_length: int
    examples: int = 0  # sequences (or preference pairs) longer than max_length
    tokens: int = 0  # tokens cut off in all
    lost: int = 0  # examples left with no token to learn from (dropped)
    longest: int = 0
    total: int = 0  # sequences looked at
    ids: list[str] = field(default_factory=list)  # the first few truncated

    def add(self, example_id: str, length: int, trained_after: int) -> None:
        self.total += 1
        self.longest = max(self.longest, length)
        if length <= self.max_length:
            return
        self.examples += 1
        self.tokens += length - self.max_length
        self.lost += 0 if trained_after else 1
        if len(self.ids) < 5:
            self.ids.append(example_id)

    def message(self, what: str) -> str | None:
        """One line for the user, or None when nothing was cut."""
        if not self.examples:
            return None
        lost = f"; {self.lost} kept no trained token and are left out" if self.lost else ""
        return (f"--max-length {self.max_length}: {self.examples} of {self.total} {what} are longer (longest "
                f"{self.longest} tokens); {self.tokens} tokens cut from their ends{lost} (first: "
                f"{', '.join(self.ids)})")

    def to_dict(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "truncated": self.examples, "tokens_cut": self.tokens,
                "dropped": self.lost, "longest": self.longest, "of": self.total, "first_ids": self.ids}


def _ids(tokenizer: Any, messages: list[dict[str, Any]], *, prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def sft_sequence(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation: labels are the ids on assistant turns (weight not
    0), ``IGNORE`` elsewhere."""
    plain = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    full = _ids(tokenizer, plain, prompt=False)
    labels = [IGNORE] * len(full)
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight") == 0:
            continue
        start = _common(_ids(tokenizer, plain[:i], prompt=True), full) if i else 0
        end = _common(_ids(tokenizer, plain[: i + 1], prompt=False), full)
        labels[start:end] = full[start:end]
    return full, labels


def sft_rows(tokenizer: Any, examples: list[Example], max_length: int) -> tuple[list[dict[str, Any]], Truncation]:
    """Tokenised, labelled and truncated SFT rows, with what truncation did."""
    truncation = Truncation(max_length)
    rows = []
    for example in examples:
        ids, labels = sft_sequence(tokenizer, sft_messages(example))
        kept = sum(1 for label in labels[:max_length] if label != IGNORE)
        truncation.add(example.id, len(ids), kept)
        if kept:
            rows.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
    return rows, truncation


def dpo_rows(tokenizer: Any, examples: list[Example], max_length: int) -> tuple[list[dict[str, Any]], Truncation]:
    """``preference-trl`` rows for TRL's DPO trainer (which tokenises them with the same template),
    and what its ``max_length`` will cut: the prompt plus the longer answer is measured. A pair
    whose prompt alone fills ``max_length`` is left out here (TRL would drop it too)."""
    truncation = Truncation(max_length)
    rows = []
    for example in examples:
        row = preference_row(example)
        prompt = len(_ids(tokenizer, row["prompt"], prompt=True))
        longest = max(len(_ids(tokenizer, row["prompt"] + row[side], prompt=False)) for side in ("chosen", "rejected"))
        truncation.add(example.id, longest, max(0, max_length - prompt))
        if prompt < max_length:
            rows.append(row)
    return rows, truncation


def describe(rows: list[dict[str, Any]]) -> str:
    """A short, stable fingerprint of prepared rows (what a resumed run must see again)."""
    return stable_hash(json.dumps(rows, sort_keys=True), length=16)
