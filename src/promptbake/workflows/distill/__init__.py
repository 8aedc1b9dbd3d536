"""Prompt distillation: bake a long, expensive prompt into examples that need a short one or none."""

from promptbake.workflows.distill.run import (
    TRACE_CHARS,
    DistillResult,
    answer_checks,
    break_even,
    distill,
    distill_spec,
    parse_axis,
    prompt_examples,
)

__all__ = [
    "TRACE_CHARS",
    "DistillResult",
    "answer_checks",
    "break_even",
    "distill",
    "distill_spec",
    "parse_axis",
    "prompt_examples",
]
