"""Running a distillation: the spec through the normal pipeline, the prompt's own examples kept
out of the data, and the ``distill`` section (tokens saved, leaks, break-even) in the manifest.

A distillation is an ordinary spec (``spec.py``), so the store, resume, dedupe, split and manifest
all work as for any other dataset; ``leaks.py`` finds the prompt's few-shot examples and
``breakeven.py`` prices the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptbake.errors import InputError
from promptbake.output.atomic import write_text_atomic
from promptbake.plan.expand import Expander
from promptbake.specification.models import MessageTemplate, Spec
from promptbake.teacher.config import Teacher, merge, model_name
from promptbake.teacher.generate import GenerateOptions
from promptbake.teacher.pricing import PriceTable
from promptbake.teacher.tokens import encoding_note
from promptbake.workflows.distill.breakeven import break_even_section, system_tokens
from promptbake.workflows.distill.leaks import (
    EXAMPLE_ID,
    TRACE_CHARS,
    leakage_guard,
    prompt_examples,
    prompt_windows,
    quotes_prompt,
)
from promptbake.workflows.pipeline import RunReport
from promptbake.workflows.pipeline import run_async as run_pipeline
from promptbake.workflows.sync import synchronous


@dataclass
class DistillResult:
    run: RunReport
    summary: dict[str, Any] = field(default_factory=dict)  # the manifest's ``distill`` section

    def format(self) -> str:
        s = self.summary
        lines = [
            f"distill: long prompt {s['long_prompt_tokens']:,} tokens, baked prompt {s['baked_prompt_tokens']:,} "
            f"→ {s['tokens_saved_per_call']:,} prompt tokens saved per call ({s['price_model']})",
            f"distill: {s['prompt_examples']} examples found in the prompt, {s['leaked_inputs_dropped']} inputs "
            f"dropped as copies of them; {s['rejected_by_checks']} answers rejected by checks",
        ]
        validation = self.run.build.validation if self.run.build is not None else None
        shown = validation is not None and not validation.ok and any("cached offline" in n for n in validation.notes)
        if s.get("encoding_note") and not shown:  # once: a failed validation above already said it
            lines.append(f"note: {s['encoding_note']}")
        if s["examples_quoting_prompt"]:
            lines.append(f"warning: {s['examples_quoting_prompt']} examples quote {TRACE_CHARS}+ characters of "
                         "the long prompt (see manifest.json distill.examples_quoting_prompt)")
        b = s.get("break_even")
        if b is None:
            lines.append(f"break-even: {s['break_even_note']}")
            return "\n".join(lines)
        f = s["finetune"]
        p = s["prices"]
        lines.append(
            f"break-even: ${b['saving_per_call']:.6f} saved per call ({s['price_model']} ${p['input_per_1m']}/1M in, "
            f"fine-tuned ×{p['ft_factor']}); upfront ${s['generation_cost']:.4f} generation + "
            f"${f['cost']:.4f} fine-tuning ({f['tokens_per_epoch']:,} tokens × {f['epochs']} epochs × "
            f"${f['usd_per_1m']:.2f}/1M) → {b['verdict']}"
        )
        return "\n".join(lines)


def _long_prompt(spec: Spec) -> tuple[MessageTemplate, int]:
    """The long prompt: the answer step's system message (the last step's, by convention)."""
    k = len(spec.steps) - 1
    for message in spec.steps[k].messages:
        if message.role in ("system", "developer"):
            return message, k
    raise InputError(f"{spec.where()}: step {spec.steps[k].name!r} has no system message holding the long prompt")


def _render_prompts(spec: Spec, expander: Expander, message: MessageTemplate, k: int) -> tuple[str, str, list[str]]:
    """Render the long prompt for every cell now, before anything is paid for: an undefined
    variable is reported with the prompt file and line even when the inputs are still to be
    generated. Returns (template name, source, renderings)."""
    templates = expander.templates
    if message.template is not None:
        name = message.template
        templates.get(name)  # a missing file is reported here, by name
        source, _, _ = templates.env.loader.get_source(templates.env, name)  # type: ignore[union-attr]
    else:
        name = templates.add_inline(f"{spec.where()}:steps[{k}].system", message.content or "")
        source = message.content or ""
    earlier = {s.name: "(an input)" for s in spec.steps[:k]}
    rendered = {templates.render(name, {**cell.values, **earlier}) for cell in expander.cells()}
    if not rendered:
        raise InputError(f"{spec.where()}: the grid has no cells")
    return name, source, sorted(rendered)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def distill_async(
    spec: Spec,
    out_dir: str | Path,
    store_path: str | Path | None = None,
    teacher: Teacher | None = None,
    options: GenerateOptions | None = None,
    *,
    formats: list[str] | None = None,
    seed: int | None = None,
    price_model: str | None = None,
    ft_factor: float | None = None,
    epochs: int | None = None,
) -> DistillResult:
    """Run a distillation spec (``distill_spec`` or a hand-written one whose last step's system
    message is the long prompt) through the normal pipeline, keeping the prompt's own examples
    out of the data, then add the ``distill`` section to ``manifest.json``."""
    expander = Expander(spec)
    message, k = _long_prompt(spec)
    name, source, rendered = _render_prompts(spec, expander, message, k)
    examples = prompt_examples(source)
    config = merge(spec.teacher, teacher)
    model = price_model or model_name(config)

    # an input generated by a step may come out different when asked again; one from a file cannot
    report = await run_pipeline(spec, out_dir, store_path, teacher, options, formats=formats, seed=seed,
                                existing=leakage_guard(examples), command="distill",
                                refill_existing=len(spec.steps) > 1)
    out = Path(out_dir)
    train, test = _read_rows(out / "train.jsonl"), _read_rows(out / "test.jsonl")
    dropped = _read_rows(out / "dropped.jsonl")
    manifest = report.build.manifest

    long_tokens = round(sum(system_tokens(r, model) for r in rendered) / len(rendered))
    baked = next((m for m in spec.example.messages
                  if isinstance(m, MessageTemplate) and m.role in ("system", "developer")), None)
    baked_tokens = system_tokens(baked.content or "", model) if baked is not None else 0
    summary: dict[str, Any] = {
        "prompt": name,
        "price_model": model,
        "encoding_note": encoding_note(model),
        "long_prompt_tokens": long_tokens,
        "baked_prompt_tokens": baked_tokens,
        "tokens_saved_per_call": long_tokens - baked_tokens,
        "prompt_examples": len(examples),
        "leaked_inputs_dropped": sum(1 for d in dropped if str(d.get("duplicate_of", "")).startswith(EXAMPLE_ID)),
        "rejected_by_checks": sum(c.get("rejected_by_checks", 0) for c in manifest.get("categories", {}).values()),
        "examples_quoting_prompt": quotes_prompt(train + test, prompt_windows(rendered[0], examples)),
        "generation_cost": report.totals.get("cost", 0.0),
    }
    summary.update(break_even_section(summary, train, model, PriceTable(config.prices), ft_factor, epochs))
    manifest["distill"] = summary
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return DistillResult(report, summary)


distill = synchronous(distill_async)
