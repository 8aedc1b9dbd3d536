"""Evals: run a model on a test split through the teacher pool and score every answer."""

from promptbake.workflows.evaluate.runner import (
    EvalReport,
    Scoring,
    evaluate,
    judge_config,
    load_test,
    parse_sweeps,
    run_eval,
    summarise,
)

__all__ = ["EvalReport", "Scoring", "evaluate", "judge_config", "load_test", "parse_sweeps", "run_eval", "summarise"]
