"""Evals: run a model on a test split through the teacher pool and score every answer.

``testset.py`` reads the split and the sweep grid, ``scoring.py`` scores answers (checks, judge),
``summary.py`` makes the per-category table, ``runner.py`` plans, sends and resumes the calls.
"""

from promptbake.workflows.evaluate.runner import EvalReport, evaluate, evaluate_async, run_eval, run_eval_async
from promptbake.workflows.evaluate.scoring import Scoring, judge_config
from promptbake.workflows.evaluate.summary import summarise
from promptbake.workflows.evaluate.testset import load_test, parse_sweeps

__all__ = [
    "EvalReport",
    "Scoring",
    "evaluate",
    "evaluate_async",
    "judge_config",
    "load_test",
    "parse_sweeps",
    "run_eval",
    "run_eval_async",
    "summarise",
]
