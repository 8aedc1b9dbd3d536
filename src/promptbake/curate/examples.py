"""Stored answers → training examples, rendered from the spec's ``example`` templates.

The rows of the last step are read in lineage order, so the same store always yields the same
examples in the same order: that is what makes builds byte-identical.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from promptbake.curate.split import prompt_key
from promptbake.ids import stable_hash
from promptbake.plan.planner import MessageRenderer
from promptbake.records import Example
from promptbake.specification.models import Spec
from promptbake.specification.templates import Templates
from promptbake.store.db import Store


class ExampleRenderer:
    def __init__(self, spec: Spec, templates: Templates) -> None:
        self.spec = spec
        self.templates = templates
        self.messages = MessageRenderer(templates, spec.example.messages, f"{spec.where()}:example")
        self.rejected = (
            templates.add_inline(f"{spec.where()}:example.rejected", spec.example.rejected)
            if spec.example.rejected is not None
            else None
        )
        if self.rejected:
            templates.get(self.rejected)

    def examples(self, store: Store, round_: int | None = None) -> Iterator[Example]:
        last = len(self.spec.steps) - 1
        name = self.spec.steps[last].name
        seen: Counter[tuple[str, str | None]] = Counter()  # examples so far per (cell, prompt)
        for request in store.succeeded(self.spec.name, last, round_):
            # the row the last step answered: its repeats and n > 1 choices share it (split.group)
            lineage = request.ord.rsplit(".", 1)[0] if last else request.ord
            for j, output in enumerate(request.outputs or []):
                variables = {**request.vars, name: output}
                messages = self.messages.render(variables)
                # what the example is, whatever the sampling parameters: the k-th example of its
                # cell with this prompt (the id hashes the request, and so every parameter)
                place = (request.cell_key, prompt_key(messages))
                slot = stable_hash(*place, seen[place])
                seen[place] += 1
                yield Example(
                    id=stable_hash(request.id, j),
                    category=request.category,
                    cell=_cell_values(self.spec, variables),
                    messages=messages,
                    tools=self.spec.example.tools,
                    rejected=(
                        {"role": "assistant", "content": self.templates.render(self.rejected, variables)}
                        if self.rejected
                        else None
                    ),
                    provenance={"request": request.id, "cell_key": request.cell_key, "round": str(request.round),
                                "lineage": lineage, "slot": slot},
                )


def _cell_values(spec: Spec, variables: dict[str, Any]) -> dict[str, Any]:
    step_names = {s.name for s in spec.steps}
    return {k: v for k, v in variables.items() if k not in step_names}

