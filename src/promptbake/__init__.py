"""promptbake: bake prompts into fine-tuning data.

    import promptbake
    ds = promptbake.run("generators/rude_agent.yaml", teacher=promptbake.Teacher(base_url=URL))
    ds.train[0].messages

Every name below is imported on first use (module ``__getattr__``), so ``import promptbake``
stays fast and pulls in neither pydantic nor aiohttp until a function needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from promptbake.api import (
        batch_status,
        batch_status_async,
        build,
        build_async,
        build_local_teacher,
        cancel_batches,
        cancel_batches_async,
        distill,
        distill_async,
        estimate,
        evaluate,
        evaluate_async,
        expand,
        export,
        export_batch,
        generate,
        generate_async,
        import_batch,
        load_spec,
        local_teacher,
        rate,
        rate_async,
        rate_results,
        report,
        run,
        run_async,
        study,
        study_async,
        study_plan,
        topup,
        topup_async,
        train_cancel,
        train_cancel_async,
        train_hosted,
        train_hosted_async,
        train_local,
        train_status,
        train_status_async,
        validate,
    )
    from promptbake.errors import PromptbakeError
    from promptbake.output.dataset import Dataset, Manifest
    from promptbake.records import Example
    from promptbake.specification.models import Spec
    from promptbake.teacher.batch import BatchOptions
    from promptbake.teacher.config import Teacher
    from promptbake.train.record import TrainResult

__all__ = [
    "BatchOptions",
    "Dataset",
    "Example",
    "Manifest",
    "PromptbakeError",
    "Spec",
    "Teacher",
    "TrainResult",
    "__version__",
    "batch_status",
    "batch_status_async",
    "build",
    "build_async",
    "build_local_teacher",
    "cancel_batches",
    "cancel_batches_async",
    "distill",
    "distill_async",
    "estimate",
    "evaluate",
    "evaluate_async",
    "expand",
    "export",
    "export_batch",
    "generate",
    "generate_async",
    "import_batch",
    "load_spec",
    "local_teacher",
    "rate",
    "rate_async",
    "rate_results",
    "report",
    "run",
    "run_async",
    "study",
    "study_async",
    "study_plan",
    "topup",
    "topup_async",
    "train_cancel",
    "train_cancel_async",
    "train_hosted",
    "train_hosted_async",
    "train_local",
    "train_status",
    "train_status_async",
    "validate",
]
# where each name that is not a function of promptbake.api lives
_HOMES = {
    "BatchOptions": "promptbake.teacher.batch",
    "Dataset": "promptbake.output.dataset",
    "Example": "promptbake.records",
    "Manifest": "promptbake.output.dataset",
    "PromptbakeError": "promptbake.errors",
    "Spec": "promptbake.specification.models",
    "Teacher": "promptbake.teacher.config",
    "TrainResult": "promptbake.train.record",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'promptbake' has no attribute {name!r}")
    value = getattr(import_module(_HOMES.get(name, "promptbake.api")), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
