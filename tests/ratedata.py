"""Data for the rating tests: a built dataset (the teacher's answers) and eval files answering the
same test split, written by hand so every id, category and judge score is known."""

from __future__ import annotations

import json
from pathlib import Path

CATEGORIES = ("calm", "angry")


def prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are the support agent."},
            {"role": "user", "content": f"Customer {i}: where is my order number {1000 + i}?"}]


def write_dataset(directory: Path, n: int, answer=lambda i: f"Teacher reply {i}: it ships tomorrow.") -> Path:
    """A built dataset folder with ``n`` test examples (ids ex000, ex001, ...)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_text(json.dumps({"spec": "rating_test", "train": 0, "test": n}))
    (directory / "train.jsonl").write_text("")
    with (directory / "test.jsonl").open("w") as test, (directory / "metadata.jsonl").open("w") as meta:
        for i in range(n):
            messages = [*prompt(i), {"role": "assistant", "content": answer(i)}]
            test.write(json.dumps({"messages": messages}) + "\n")
            meta.write(json.dumps({"id": f"ex{i:03d}", "category": CATEGORIES[i % 2], "split": "test"}) + "\n")
    return directory


def write_eval(path: Path, n: int, answer=lambda i: f"Student reply {i}: no idea.", judge=None,
               with_prompt: bool = True) -> Path:
    """An eval file as ``promptbake eval`` writes it, answering the same ``n`` examples;
    ``judge(i)`` gives a judge score (1-5) per answer."""
    with path.open("w") as fh:
        for i in range(n):
            row = {"id": f"ex{i:03d}", "category": CATEGORIES[i % 2], "settings": {}, "output": answer(i),
                   "finish_reason": "stop", "error": None}
            if with_prompt:
                row["prompt"] = prompt(i)
            if judge is not None:
                row["scores"] = {"judge": judge(i)}
            fh.write(json.dumps(row) + "\n")
    return path
