"""A trained student as a rating source: a model folder ``promptbake train`` wrote is answered
first, through ``eval`` on the test split of the built dataset rated beside it, and its answers
are then rated like any eval file's.

Why through ``eval`` and its store: the answers are stored under the name the local engine serves
the student's GGUF as, which carries the file's hash, so starting the page again asks nothing
and rates the same texts, while a retrained student is answered afresh (and the ratings store,
which keeps each source's digest, refuses to mix its old ratings with the new answers).
"""

from __future__ import annotations

from pathlib import Path

from promptbake.errors import InputError
from promptbake.rate.sources import TEST_SPLIT, parse_source
from promptbake.rate.store import store_path
from promptbake.teacher.local import STUDENT_GGUF


def is_student(path: Path) -> bool:
    """A model folder with the GGUF the local engine serves, and no dataset's manifest."""
    return path.is_dir() and (path / STUDENT_GGUF).is_file() and not (path / "manifest.json").exists()


async def answer_students(sources: list[str], ratings: str | Path, *, progress: bool = True) -> list[str]:
    """``sources`` with each trained student replaced by its eval file (``NAME=FILE``), written
    beside the ratings store in ``<store>-answers/NAME.jsonl``; the other sources as given."""
    parsed = [parse_source(s) for s in sources]
    students = [(name, Path(where)) for name, where in parsed if is_student(Path(where))]
    if not students:
        return sources
    datasets = [Path(where) for _, where in parsed if (Path(where) / "manifest.json").exists()]
    if not datasets:
        raise InputError(f"{students[0][1]}: a trained student answers the test split of a built dataset: rate it "
                         "beside one (teacher=out/rude student=out/rude-student)")
    from promptbake.specification.models import TeacherConfig
    from promptbake.teacher.config import Teacher, merge
    from promptbake.workflows.evaluate import run_eval_async

    store = store_path(ratings)
    folder = store.with_name(f"{store.stem}-answers")
    answered = []
    for text, (name, where) in zip(sources, parsed, strict=True):
        if not is_student(Path(where)):
            answered.append(text)
            continue
        out = folder / f"{name}.jsonl"
        config = merge(TeacherConfig(), Teacher(local_model=where))
        await run_eval_async(datasets[0] / TEST_SPLIT, out, config, progress=progress)
        answered.append(f"{name}={out}")
    return answered
