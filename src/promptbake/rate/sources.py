"""What is rated: answers from several sources, matched by example.

A source is an eval file (a model's answers, as ``promptbake eval`` writes them), a built dataset
(the teacher's answers: the assistant turns of its test split, or of a split file named directly),
or a trained student (answered through ``eval`` first). Items are matched across sources by the
example id the metadata sidecar gives, and each carries the prompt its answers replied to: from the
eval file's own ``prompt`` field, or from a dataset among the sources.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptbake.errors import DataFileError, InputError
from promptbake.ids import stable_hash
from promptbake.output.jsonl import read_jsonl

TEST_SPLIT = "test.jsonl"


@dataclass(frozen=True)
class Answer:
    text: str
    judge: float | None = None  # the eval's LLM-judge score (1-5) of this answer, when it has one


@dataclass
class Source:
    """One side of the comparison: a name (never shown to raters) and its answer to each example."""

    name: str
    path: str
    kind: str  # "eval" or "dataset"
    answers: dict[str, Answer] = field(default_factory=dict)
    prompts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    categories: dict[str, str] = field(default_factory=dict)

    def digest(self) -> str:
        """Changes when any answer does: a restarted study must rate the same texts."""
        return stable_hash(sorted((k, a.text) for k, a in self.answers.items()))


@dataclass(frozen=True)
class Item:
    id: str
    category: str
    prompt: list[dict[str, Any]]


def parse_source(text: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named by itself) → (name, path)."""
    name, sep, path = text.partition("=")
    if sep and name and path and not Path(text).exists():
        return name, path
    return text, text


def load_source(text: str) -> Source:
    name, where = parse_source(text)
    path = Path(where)
    if path.is_dir():
        if not (path / "manifest.json").exists():
            raise InputError(f"{path}: neither a built dataset (no manifest.json) nor a student `promptbake train` "
                             "wrote (no model.gguf); a model served elsewhere is rated through its eval file: "
                             "`promptbake eval --model M --data DATA/test.jsonl --out A.jsonl`, then rate A.jsonl")
        return _dataset(name, path / TEST_SPLIT)
    first = next(read_jsonl(path, "source"), None)
    if first is None:
        raise DataFileError(f"{path}: empty")
    if "messages" in first[1]:
        return _dataset(name, path)
    if "output" in first[1]:
        return _eval(name, path)
    raise DataFileError(f"{path}:{first[0]}: neither an eval line ('id', 'output') nor a dataset line ('messages')")


def _dataset(name: str, path: Path) -> Source:
    from promptbake.workflows.evaluate.testset import load_test

    source = Source(name, str(path), "dataset")
    for item in load_test(path):
        if item.reference is None:
            raise DataFileError(f"{path}: example {item.id} has no assistant answer to rate")
        _add(source, path, item.id, item.category, Answer(item.reference), item.prompt)
    return source


def _eval(name: str, path: Path) -> Source:
    source = Source(name, str(path), "eval")
    for number, row in read_jsonl(path, "eval"):
        key, category, output = row.get("id"), row.get("category"), row.get("output")
        if not isinstance(key, str) or not key:
            raise DataFileError(f"{path}:{number}: no 'id'")
        if key in source.categories:
            raise DataFileError(f"{path}:{number}: example {key} is answered twice (a --sweep?); rate an eval of "
                                "one setting")
        if output is None:  # the call failed: nothing to rate for this example
            source.categories[key] = str(category or "all")
            continue
        if not isinstance(output, str):
            raise DataFileError(f"{path}:{number}: 'output' must be a string")
        prompt = row.get("prompt")
        if prompt is not None and not (isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)):
            raise DataFileError(f"{path}:{number}: 'prompt' must be a list of messages")
        judge = (row.get("scores") or {}).get("judge") if isinstance(row.get("scores"), dict) else None
        score = float(judge) if isinstance(judge, int | float) and not isinstance(judge, bool) else None
        _add(source, path, key, str(category or "all"), Answer(output, score), prompt)
    return source


def _add(source: Source, path: Path, key: str, category: str, answer: Answer,
         prompt: list[dict[str, Any]] | None) -> None:
    if key in source.answers:
        raise DataFileError(f"{path}: example {key} appears twice")
    source.answers[key] = answer
    source.categories[key] = category
    if prompt is not None:
        source.prompts[key] = prompt


def match(sources: list[Source]) -> list[Item]:
    """The examples at least two sources answered, in the first source's order, each with the
    prompt its answers replied to. Sources that disagree on an example's prompt rate different
    data, and an example whose prompt no source carries cannot be shown: both are refused."""
    names = [s.name for s in sources]
    if len(sources) < 2:
        raise InputError("rate needs at least two sources (eval files or built datasets)")
    if len(set(names)) < len(names):
        raise InputError(f"two sources are named {next(n for n in names if names.count(n) > 1)!r}: name them "
                         "NAME=PATH")
    order = list(dict.fromkeys(k for s in sources for k in s.answers))
    items = []
    for key in order:
        having = [s for s in sources if key in s.answers]
        if len(having) < 2:
            continue
        prompts = {json.dumps(s.prompts[key], sort_keys=True): s for s in having if key in s.prompts}
        if len(prompts) > 1:
            a, b = list(prompts.values())[:2]
            raise InputError(f"example {key} has different prompts in {a.path} and {b.path}: they answer different "
                             "data")
        if not prompts:
            lacking = next(s for s in having if s.kind == "eval")
            raise InputError(f"{lacking.path}: its lines carry no prompt (an eval file written before prompts were "
                             "kept): run the same `promptbake eval` again (its store answers, nothing is paid) or rate "
                             "it together with the dataset it answered")
        prompt = json.loads(next(iter(prompts)))
        items.append(Item(key, having[0].categories[key], prompt))
    if not items:
        raise InputError(f"no example is answered by two of the sources ({', '.join(s.path for s in sources)}): "
                         "rate answers to the same test split")
    return items
