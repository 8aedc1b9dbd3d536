"""Scoring an answer: deterministic checks (``checks.Checks``) and an optional rubric that a judge
model scores 1-5 (G-Eval style: the criteria in, reasoning and then a score out, as JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from promptbake.curate.checks import AnswerList, Checks
from promptbake.errors import InputError
from promptbake.specification.models import Spec, TeacherConfig
from promptbake.specification.templates import Templates
from promptbake.teacher.client import ChatResult
from promptbake.teacher.config import Teacher, merge
from promptbake.teacher.parse import parse_output
from promptbake.workflows.evaluate.testset import TestItem

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["reasoning", "score"],
}
JUDGE_SYSTEM = (
    "You are a strict evaluator of an AI assistant's answers. Grade the answer against the "
    "criteria on a scale from 1 (does not meet them at all) to 5 (meets them fully). First reason "
    "step by step about each part of the criteria, then give the score. Reply with JSON only: "
    '{"reasoning": "<your reasoning>", "score": <1-5>}'
)


@dataclass(frozen=True)
class Scoring:
    """What makes an answer pass: checks, the answer list right (``answers``, against the
    ``reference`` rendered from the cell, else the test answer), and a rubric score of at least
    ``pass_score``."""

    checks: Checks | None = None
    criteria: str | None = None
    pass_score: int = 4
    answers: AnswerList | None = None
    reference: Callable[[dict[str, Any]], str] | None = None

    def reference_for(self, item: TestItem) -> str | None:
        return self.reference(item.cell) if self.reference is not None else item.reference

    @classmethod
    def build(cls, spec: Spec | None, flags: dict[str, Any] | None = None, criteria: str | None = None,
              pass_score: int | None = None) -> Scoring:
        """The spec's ``eval`` block (checks default to ``example.checks``) with the command-line
        flags (``Checks`` field aliases: json, schema, regex, max_length, exact) laid over it."""
        block = spec.eval if spec is not None else None
        base = block.checks if block is not None and block.checks is not None else None
        if base is None and spec is not None:
            base = spec.example.checks
        data = base.model_dump(by_alias=True, exclude_defaults=True) if base is not None else {}
        data.update({k: v for k, v in (flags or {}).items() if v is not None and v is not False})
        try:
            checks = Checks.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise InputError(f"check {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return cls(
            checks=checks if checks.active() else None,
            criteria=criteria or (block.criteria if block is not None else None),
            pass_score=pass_score or (block.pass_score if block is not None else 4),
            answers=block.answers if block is not None else None,
            reference=_reference(spec) if spec is not None else None,
        )


def _reference(spec: Spec) -> Callable[[dict[str, Any]], str] | None:
    """The spec's ``eval.reference`` template, compiled now so a syntax error stops the eval before
    any request; it renders over an example's cell."""
    if spec.eval is None or spec.eval.reference is None:
        return None
    templates = Templates.for_spec_dir(spec.base_dir)
    name = templates.add_inline(f"{spec.where()}:eval.reference", spec.eval.reference)
    templates.get(name)
    return lambda cell: templates.render(name, cell)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def score_row(item: TestItem, settings: dict[str, Any], answer: dict[str, str] | None, error: str | None,
              scoring: Scoring, verdict: dict[str, Any] | None = None,
              judge_error: str | None = None) -> dict[str, Any]:
    """One output line. ``score`` (0-1) is the mean of the check result (0/1) and the judge score
    rescaled ((n-1)/4); ``pass`` needs every check and ``judge ≥ pass_score``. Both are None when
    there was nothing to score (no checks or rubric, or the call or the judge failed)."""
    text = answer["text"] if answer is not None else None
    row: dict[str, Any] = {
        # the prompt rides along so that the file alone shows what each output replied to (`promptbake rate`)
        "id": item.id, "category": item.category, "prompt": item.prompt, "settings": settings, "output": text,
        "finish_reason": answer.get("finish_reason") if answer is not None else None,
        "error": error, "length": len(text) if text is not None else None,
        "json": _is_json(text) if text is not None else None,
    }
    scores: dict[str, float | int] = {}
    passed: list[bool] = []
    if text is not None and scoring.checks is not None:
        row["failures"] = scoring.checks.failures(text, item.reference)
        scores["checks"] = 0.0 if row["failures"] else 1.0
        passed.append(not row["failures"])
    if text is not None and scoring.answers is not None:
        metrics = scoring.answers.metrics(text, scoring.reference_for(item))
        row["metrics"] = metrics
        if metrics["items"] is not None:
            scores["answers"] = metrics["items"]
            passed.append(metrics["correct"] == 1)
        else:  # no right answers known: the format is what is scored
            scores["answers"] = float(bool(metrics["keys"]) and metrics["values"] != 0)
            passed.append(scores["answers"] == 1)
    judged = text is not None and scoring.criteria is not None
    if judged and verdict is not None:
        scores["judge"] = verdict["score"]
        row["judge_reasoning"] = verdict["reasoning"]
        passed.append(verdict["score"] >= scoring.pass_score)
    elif judged:
        row["judge_error"] = judge_error or "not judged"
    row["scores"] = scores
    complete = bool(scores) and not (judged and verdict is None)
    parts = [scores[k] for k in ("checks", "answers") if k in scores]
    parts += [(scores["judge"] - 1) / 4] if "judge" in scores else []
    row["score"] = round(sum(parts) / len(parts), 4) if complete else None
    row["pass"] = all(passed) if complete else None
    return row


def judge_messages(item: TestItem, output: str, criteria: str) -> list[dict[str, str]]:
    conversation = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in item.prompt)
    parts = [f"Criteria:\n{criteria}", f"Conversation:\n{conversation}"]
    if item.reference is not None:
        parts.append(f"Reference answer (a good answer, for comparison):\n{item.reference}")
    parts.append(f"Answer to grade:\n{output}")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def judge_format(config: TeacherConfig) -> dict[str, Any] | None:
    """Structured output for the verdict, in the form the judge's server accepts (FACTS.md:
    llama.cpp's server wants ``json_object`` with a schema, not ``json_schema``)."""
    mode = config.structured_output
    if mode == "auto":
        mode = "json_object" if config.kind == "local" else "json_schema"
    if mode == "json_object":
        return {"type": "json_object", "schema": JUDGE_SCHEMA}
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": JUDGE_SCHEMA}}
    return None


def answer_outputs(result: ChatResult) -> list[dict[str, str]]:
    return [{"text": c, "finish_reason": f} for c, f in zip(result.contents, result.finish_reasons, strict=False)]


def parse_verdict(result: ChatResult) -> list[Any]:
    # a verdict that is not JSON or out of range is rejected, so the pool asks again
    return parse_output(result.contents[0] if result.contents else "", "json", JUDGE_SCHEMA)


def judge_config(spec: Spec | None, judge: Teacher | None) -> TeacherConfig:
    """The judge: the spec's teacher (limits, key, prices) with what ``judge`` sets (``--judge-model``,
    ``--judge-base-url``) laid over it."""
    config = merge(spec.teacher if spec is not None else TeacherConfig(), judge)
    if config.kind == "remote" and config.model is None:
        raise InputError("a rubric needs a judge model: pass --judge-model (or --spec with teacher.model)")
    return config
