"""Render every template once before anything is paid for.

Step 0's prompts are rendered when they are planned, but a later step's only once the answers it
builds on exist, and the training example's only at build time: a typo there (``{{ replyy }}``)
used to surface after the teacher had been paid. ``check_templates`` renders each step (with the
variables it will really see), the example and the judges, with placeholders for the answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from promptbake.plan.conversation import Dialogues
from promptbake.plan.expand import Expander
from promptbake.plan.judge import judge_steps
from promptbake.plan.planner import MessageRenderer
from promptbake.specification.models import Spec, Step


class Placeholder:
    """A structured answer (``parse: json`` or a list item) before it exists: any field, index or
    loop over it is another placeholder, so only variables that are really missing fail."""

    def __init__(self, name: str, text: str | None = None) -> None:
        self._name = name
        self._text = text if text is not None else f"<{name}>"

    def __getattr__(self, attr: str) -> Placeholder:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return Placeholder(f"{self._name}.{attr}")

    def __getitem__(self, key: object) -> Placeholder:
        return Placeholder(f"{self._name}[{key!r}]")

    def __iter__(self) -> Iterator[Placeholder]:
        yield Placeholder(f"{self._name}[0]")

    def __len__(self) -> int:
        return 1

    def __str__(self) -> str:
        return self._text


def placeholder(step: Step, text: str | None = None) -> Any:
    """What stands for ``step``'s answer (printed as ``text``, which the dry run sizes like one)."""
    text = text if text is not None else f"<{step.name}>"
    # a text answer is a string: `{{ reply.field }}` on it is a real mistake and must fail
    return text if step.parse == "text" else Placeholder(step.name, text)


def check_templates(spec: Spec, expander: Expander) -> None:
    """Raise ``TemplateError`` naming the field (or file) and line of the first template that
    cannot render for the first cell (a grid with no cell has nothing to render)."""
    from promptbake.curate.examples import ExampleRenderer

    cell = next(expander.cells(), None)
    if cell is None:
        return
    variables: dict[str, Any] = dict(cell.values)
    for k, step in enumerate(spec.steps):
        if step.conversation is not None:
            variables = _check_turns(Dialogues(step, k), spec, expander, variables, cell.count)
            continue
        renderer = MessageRenderer(expander.templates, step.messages, f"{spec.where()}:steps[{k}]")
        renderer.render({**variables, "count": cell.count} if k == 0 else variables)
        variables[step.name] = placeholder(step)
    example = ExampleRenderer(spec, expander.templates)
    example.messages.render(variables)
    if example.rejected is not None:
        expander.templates.render(example.rejected, variables)
    for i, (judge, step) in enumerate(zip(spec.judge, judge_steps(spec), strict=True)):
        renderer = MessageRenderer(expander.templates, step.messages, f"{spec.where()}:judge[{i}]")
        renderer.render({**variables, "example": "<example>", "criteria": judge.criteria})


def _check_turns(flow: Dialogues, spec: Spec, expander: Expander, variables: dict[str, Any],
                 count: int) -> dict[str, Any]:
    """Render every turn of the longest dialogue, each with the dialogue it will see (an empty one
    for the first: a template reading ``dialogue[-1]`` there fails here, not after payment).
    Returns the row of a finished dialogue, for the example."""
    row = flow.start(variables, "preflight")
    for i, step in enumerate(flow.steps):
        k = flow.first + i
        renderer = MessageRenderer(expander.templates, step.messages,
                                   f"{spec.where()}:steps[{flow.first}].conversation.{flow.field(k)}")
        renderer.render({**row, **({"count": count} if k == 0 else {}), **flow.render_vars(k, row)})
        message = flow.said(k, f"<{step.name}>", placeholder(step))
        if message is not None:
            row = {**row, flow.name: [*row[flow.name], message]}
    return row
