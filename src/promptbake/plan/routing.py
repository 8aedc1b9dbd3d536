"""Which model answers a request: decided once, when the request is planned.

A step's own ``model`` (a judge's too), else the teacher's: ``teacher.model``, or, for a fleet
whose endpoints name their models, the one model they serve. The request's body names that model,
so its cache key does too, and nothing rewrites it at send time: a fleet sends a request only to
the endpoints that serve its model (an endpoint without a ``model`` serves whatever it is asked).
The store's answer for a model is therefore always that model's, and a later run asking for the
model is served only answers it gave.

Mixing models for one step is said in the spec, never inferred from a fleet: ``models: [a, b]`` on
the teacher (for every step without its own) or on a step or judge. Each request is then given
one of them when it is planned (spread evenly by the request's identity), and its body, cache key
and price are that model's. A spec whose fleet names models the steps do not ask for is refused:
either it meant to mix (and should say ``models:``) or an endpoint would sit idle unseen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from promptbake.errors import InputError
from promptbake.ids import stable_hash
from promptbake.specification.models import EndpointConfig, Step, TeacherConfig

LOCAL_MODEL = "smollm2"  # the embedded teacher's model, when the spec names none


def teacher_models(config: TeacherConfig) -> tuple[str, ...]:
    """The models a step without its own is answered by: ``teacher.models``, ``teacher.model``,
    the one model a fleet's endpoints name, or the local teacher's."""
    if config.models:
        return tuple(config.models)
    if config.model:
        return (config.model,)
    named = served_models(config.endpoints)
    if len(named) == 1:  # several: an implicit mix, which TeacherConfig refuses
        return named
    if config.kind == "local" and config.local_model is not None:
        from promptbake.teacher.local import served_model

        # the name a trained student is served under carries its GGUF's hash: a retrained one is asked anew
        return (served_model(config.local_model).alias,)
    if config.kind == "local":
        return (LOCAL_MODEL,)
    raise InputError("no teacher model: set teacher.model in the spec or pass --model")


def with_model(config: TeacherConfig, model: str | None) -> TeacherConfig:
    """``config`` with ``model`` answering every step without its own (``--model`` of a dry run or
    ``expand``): the spec's mix and fleet set aside, as ``--model`` with ``--base-url`` would
    (None: ``config`` unchanged)."""
    if model is None:
        return config
    return config.model_copy(update={"model": model, "models": None, "endpoints": []})


def step_models(step: Step, config: TeacherConfig) -> tuple[str, ...]:
    """The models ``step``'s requests are planned with (one each, see :func:`pick`)."""
    if step.models:
        return tuple(step.models)
    if step.model:
        return (step.model,)
    return teacher_models(config)


def pick(models: Sequence[str], *identity: object) -> str:
    """The model of one request: the only one, or one of a mix chosen by the request's identity,
    so planning it again (a resumed run) gives it the same model and cache key."""
    if len(models) == 1:
        return models[0]
    return models[int(stable_hash(*identity, length=8), 16) % len(models)]


def served_models(endpoints: Iterable[EndpointConfig]) -> tuple[str, ...]:
    """The models a fleet's endpoints name, sorted (an endpoint without one serves any)."""
    return tuple(sorted({e.model for e in endpoints if e.model}))


def serves(endpoint_model: str | None, model: str) -> bool:
    """Whether an endpoint restricted to ``endpoint_model`` (None: to nothing) may answer ``model``."""
    return endpoint_model is None or endpoint_model == model


def label(config: TeacherConfig) -> str:
    """How messages name the teacher's model(s): never sent, only shown."""
    try:
        return ", ".join(teacher_models(config))
    except InputError:
        return ", ".join(served_models(config.endpoints))


def check_routes(steps: Sequence[Step], config: TeacherConfig) -> list[tuple[str, ...]]:
    """Each step's models, after refusing a fleet that cannot answer them as asked: a model no
    endpoint serves (it would never be sent), or an endpoint whose model no step asks for (an
    implicit mix: its answers would be stored as another model's, or it would sit idle)."""
    models = [step_models(step, config) for step in steps]
    if not config.endpoints:
        return models
    asked = {m for step in models for m in step}
    for model in sorted(asked):
        if not any(serves(e.model, model) for e in config.endpoints):
            fleet = ", ".join(f"{e.base_url} ({e.model})" for e in config.endpoints)
            users = [s.name for s, ms in zip(steps, models, strict=True) if model in ms]
            raise InputError(f"no endpoint serves model {model!r} (asked by {', '.join(users)}): the fleet is "
                             f"{fleet}; add an endpoint for it, or one without a model (it serves any)")
    for endpoint in config.endpoints:
        if endpoint.model is not None and endpoint.model not in asked:
            raise InputError(
                f"endpoint {endpoint.base_url} serves model {endpoint.model!r}, which no step asks for "
                f"(they ask for {', '.join(sorted(asked))}): to let it answer too, mix the models explicitly "
                f"with teacher.models (or a step's models:), else remove it")
    return models
