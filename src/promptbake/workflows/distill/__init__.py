"""Prompt distillation: bake a long, expensive prompt into examples that need a short one or none.

``spec.py`` builds the spec from the prompt and inputs, ``leaks.py`` keeps the prompt's own
few-shot examples out of the data, ``breakeven.py`` prices the result, ``run.py`` runs it all.
"""

from promptbake.workflows.distill.breakeven import BreakEven, break_even
from promptbake.workflows.distill.leaks import TRACE_CHARS, PromptExample, prompt_examples
from promptbake.workflows.distill.run import DistillResult, distill, distill_async
from promptbake.workflows.distill.spec import answer_checks, distill_spec, parse_axis

__all__ = [
    "TRACE_CHARS",
    "BreakEven",
    "DistillResult",
    "PromptExample",
    "answer_checks",
    "break_even",
    "distill",
    "distill_async",
    "distill_spec",
    "parse_axis",
    "prompt_examples",
]
