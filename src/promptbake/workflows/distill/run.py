"""Prompt distillation: bake a long, expensive prompt into examples that need a short one or none.

A distillation is an ordinary spec, so the store, resume, dedupe, split and manifest all work as
for any other dataset: the grid's ``table`` is the inputs file (or a first step asks the teacher
for inputs), the step ``answer`` sends each input under the full long prompt, and the training
example keeps only the baked system message (if any), the input and the answer.

What is specific to distillation lives here:

- ``distill_spec`` builds that spec from command-line choices.
- ``prompt_examples`` finds the few-shot examples written inside the long prompt, so that inputs
  copying them (exactly or nearly) never become training data: a student evaluated on the
  prompt's own examples would look better than it is. Two conventions are recognised:

  * ``<example>`` … ``</example>`` blocks; inside, ``<input>``/``<output>`` tags, else labels as
    below, else the whole block is the input;
  * labelled pairs: a line starting with ``Input:`` or ``User:`` (optionally decorated as
    ``**Input:**``, ``### Input:``, ``- Input:``) opens an input that runs until a line starting
    with ``Output:``, ``Assistant:`` or ``Answer:``, whose text runs to the next blank line (an
    input with no output label after it is not taken as an example).

  A Markdown heading, a ``---`` rule or an ``<example>`` tag also ends an input or output.
- ``break_even`` and the report: prompt tokens saved per call and the number of calls after
  which those savings repay generation plus fine-tuning, priced honestly (a fine-tuned model
  usually costs more per token than its base model, so the saving can be negative).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from promptbake.output.atomic import write_text_atomic
from promptbake.build.checks import Checks
from promptbake.errors import DataFileError, InputError
from promptbake.plan.expand import Expander, load_table
from promptbake.teacher.generate import GenerateOptions
from promptbake.workflows.pipeline import RunReport
from promptbake.workflows.pipeline import run as run_pipeline
from promptbake.teacher.pricing import PriceTable
from promptbake.records import Example
from promptbake.spec.models import IDENTIFIER, MessageTemplate, Spec
from promptbake.teacher.config import TeacherOverrides, merge, model_name
from promptbake.teacher.tokens import TOKENS_PER_MESSAGE, count_messages, count_tokens, encoding_note
from promptbake.output.training_cost import finetune_estimate, ft_price_factor

ANSWER_STEP = "answer"
INPUT_STEP = "input"  # the generated-inputs step; its items become the variable ``input``
EXAMPLE_ID = "prompt-example-"  # ids of the prompt's own examples in dropped.jsonl
INPUTS_PER_REQUEST = 20  # one list request asks for at most this many inputs
TRACE_CHARS = 40  # a shared run this long between an example and the long prompt is a trace

# A Jinja template; {traits} and {batch} are filled in (by str.replace) when the spec is built.
INPUTS_PROMPT = """\
You are writing realistic test data for an AI assistant. The assistant receives: {{ description }}
{traits}
Write {{ count }} different messages that real users could send to it. Vary the length (from one line \
to a short paragraph), the tone, the level of detail and the situation; include a few messy, vague or \
badly written ones. Each message is exactly what the user would type, with no label, number or comment.
Answer with a JSON array of {{ count }} strings and nothing else.{batch}"""


# ---- the prompt's own examples ------------------------------------------------------------------


@dataclass(frozen=True)
class PromptExample:
    input: str
    output: str
    line: int  # 1-based line of the prompt where the example starts


_LABEL = re.compile(
    r"^[ \t#>*_-]*(?P<label>input|user|output|assistant|answer)[ \t*_]*:[ \t*_]*(?P<rest>.*)$", re.IGNORECASE
)
_INPUT_LABELS = {"input", "user"}
_BLOCK = re.compile(r"<example>(?P<body>.*?)</example>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<(?P<tag>input|output)>(?P<body>.*?)</(?P=tag)>", re.IGNORECASE | re.DOTALL)
_STOP = re.compile(r"^\s*(#|---|\*\*\*|</?example>)", re.IGNORECASE)


def _clean(lines: list[str]) -> str:
    text = "\n".join(line for line in lines if not line.strip().startswith("```"))
    return text.strip()


def _labelled(text: str, first_line: int) -> list[PromptExample]:
    """``Input:`` / ``Output:`` pairs in ``text`` (see the module docstring for the rules)."""
    found: list[PromptExample] = []
    state, start = "", 0
    inp: list[str] = []
    out: list[str] = []

    def flush() -> None:
        # without its output label, an "Input:" or "User:" line is more likely prose than an example
        if state == "output" and _clean(inp):
            found.append(PromptExample(_clean(inp), _clean(out), start))

    for number, line in enumerate(text.splitlines(), first_line):
        match = _LABEL.match(line)
        if match and match["label"].lower() in _INPUT_LABELS:
            flush()
            state, start, inp, out = "input", number, [match["rest"]], []
        elif match and state == "input":
            state, out = "output", [match["rest"]]
        elif _STOP.match(line) or (state == "output" and not line.strip() and _clean(out)):
            if state:
                flush()
            state, inp, out = "", [], []
        elif state == "input":
            inp.append(line)
        elif state == "output":
            out.append(line)
    if state:
        flush()
    return found


def prompt_examples(text: str) -> list[PromptExample]:
    """The few-shot examples written inside a long prompt, in order of appearance."""
    found: list[PromptExample] = []
    outside = text
    for block in _BLOCK.finditer(text):
        line = text.count("\n", 0, block.start()) + 1
        body = block["body"]
        tags = {m["tag"].lower(): m["body"].strip() for m in _TAG.finditer(body)}
        if "input" in tags:
            found.append(PromptExample(tags["input"], tags.get("output", ""), line))
        else:
            found.extend(_labelled(body, line) or [PromptExample(body.strip(), "", line)])
        # blank the block out (keeping line numbers) so labels inside it are not read twice
        outside = outside.replace(block.group(0), "\n" * block.group(0).count("\n"), 1)
    found.extend(_labelled(outside, 1))
    return sorted(found, key=lambda e: e.line)


def leakage_guard(examples: list[PromptExample]) -> list[Example]:
    """The prompt's examples as records for ``build(existing=...)``: dedupe then drops every
    training example whose input equals or nearly equals one of them."""
    return [
        Example(id=f"{EXAMPLE_ID}{i}", category="prompt", messages=[
            {"role": "user", "content": e.input}, {"role": "assistant", "content": e.output}])
        for i, e in enumerate(examples, 1)
    ]


# ---- the spec --------------------------------------------------------------------------------


def parse_axis(text: str) -> tuple[str, list[str]]:
    """``name=v1,v2`` (the ``--axis`` flag) → (name, values)."""
    name, sep, values = text.partition("=")
    name = name.strip()
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not IDENTIFIER.match(name) or not items:
        raise InputError(f"--axis {text!r}: write it as name=value1,value2 (name: letters, digits, _)")
    return name, items


def answer_checks(schema_file: str | Path | None = None, regex: str | None = None,
                  max_length: int | None = None) -> Checks | None:
    """``--check-schema`` / ``--check-regex`` / ``--max-length`` as the example's ``checks``."""
    data: dict[str, Any] = {}
    if schema_file is not None:
        path = Path(schema_file)
        try:
            data["schema"] = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise DataFileError(f"{path}: cannot read the JSON schema: {exc.strerror}") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataFileError(f"{path}: the JSON schema is not valid JSON: {exc}") from exc
    if regex is not None:
        data["regex"] = regex
    if max_length is not None:
        data["max_length"] = max_length
    if not data:
        return None
    try:
        return Checks.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = {"schema": f"--check-schema {schema_file}", "regex": "--check-regex", "max_length": "--max-length"}
        where = flag.get(str(err["loc"][0]), str(err["loc"][0]))
        raise InputError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from exc


def _row_lines(path: Path) -> list[int]:
    """The line each row of ``load_table`` starts on, for error messages."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        reader = csv.reader(io.StringIO(text))
        next(reader, None)
        lines, previous = [], reader.line_num
        for _ in reader:
            lines.append(previous + 1)
            previous = reader.line_num
        return lines
    return [n for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def check_inputs(path: Path, field: str) -> int:
    """Every row has a non-empty text ``field``; the error names the file and line. Returns rows."""
    rows = load_table(path)
    if path.suffix not in (".jsonl", ".ndjson", ".csv") and field != "input":
        raise InputError(f"{path}: a plain-text inputs file has one field, 'input' (not {field!r})")
    lines = _row_lines(path)
    for i, row in enumerate(rows):
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            at = f"{path}:{lines[i] if i < len(lines) else '?'}: field {field!r}"
            if value is None:
                raise DataFileError(f"{at} is missing (fields: {', '.join(sorted(row)) or 'none'})")
            raise DataFileError(f"{at} is {'empty' if isinstance(value, str) else 'not text'}")
    return len(rows)


def _template_path(path: Path) -> str:
    """A message ``template`` value the loader reads as a file (it needs a folder in the name)."""
    return str(path) if "/" in str(path) else f"./{path}"


def distill_spec(
    prompt_path: str | Path,
    inputs_path: str | Path | None = None,
    *,
    baked_system: str | None = None,
    model: str | None = None,
    checks: Checks | None = None,
    generate_inputs: int | None = None,
    describe: str | None = None,
    axes: dict[str, list[str]] | None = None,
    input_field: str = "input",
    name: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    max_rounds: int | None = None,
    structured: bool = False,
) -> Spec:
    """The spec of a distillation: inputs (a file, or ``generate_inputs`` asked of the teacher
    from ``describe`` and ``axes``) answered under the long prompt, baked into short examples.

    Paths are kept as given (relative to the working directory). In file mode each ``axes`` value
    is crossed with every input, so a one-value axis sets a prompt variable for all of them.
    ``structured`` sends the checks' JSON schema as the answer's response format (grammar-bound on
    the local teacher), retries answers that do not parse, and stores them as canonical JSON."""
    prompt = Path(prompt_path)
    if not prompt.is_file():
        raise InputError(f"{prompt}: no such prompt file")
    axes = dict(axes or {})
    if inputs_path is not None and generate_inputs is not None:
        raise InputError("give an inputs file (--inputs) or --generate-inputs N, not both")
    if inputs_path is None and generate_inputs is None:
        raise InputError("give an inputs file (--inputs) or --generate-inputs N")
    if not IDENTIFIER.match(input_field):
        raise InputError(f"--input-field {input_field!r}: must be an identifier (letters, digits, _)")
    user = "{{ " + (input_field if inputs_path is not None else INPUT_STEP) + " }}"
    answer: dict[str, Any] = {
        "name": ANSWER_STEP,
        "messages": [{"role": "system", "template": _template_path(prompt)}, {"role": "user", "content": user}],
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    assistant = "{{ " + ANSWER_STEP + " }}"
    if structured:
        if checks is None or checks.json_schema is None:
            raise InputError("--structured needs --check-schema: the schema the answers must follow")
        answer |= {"parse": "json", "schema": checks.json_schema}
        assistant = "{{ " + ANSWER_STEP + " | tojson }}"
    grid: dict[str, Any] = {"axes": axes}
    steps: list[dict[str, Any]] = [answer]
    if inputs_path is not None:
        check_inputs(Path(inputs_path), input_field)
        grid["table"] = str(inputs_path)
        rounds = 0  # re-asking the same input cannot fill a gap a duplicate or failed check left
    else:
        wanted = generate_inputs or 0
        if wanted < 1:
            raise InputError("--generate-inputs must be at least 1")
        if not describe:
            raise InputError("--generate-inputs needs --describe \"what the inputs are\"")
        for reserved in ("description", "batch", INPUT_STEP, ANSWER_STEP):
            if reserved in axes:
                raise InputError(f"--axis {reserved}: the name is used by distillation itself")
        cells = math.prod(len(v) for v in axes.values())
        batches = math.ceil(wanted / (cells * INPUTS_PER_REQUEST))
        traits = "".join(f"- {a}: {{{{ {a} }}}}\n" for a in axes)
        batch_axis = {"batch": list(range(1, batches + 1))} if batches > 1 else {}
        grid["axes"] = {"description": [describe], **axes, **batch_axis}
        grid["count"] = math.ceil(wanted / (cells * batches))
        batch_line = " (This is batch {{ batch }}: make it different from the other batches.)"
        content = INPUTS_PROMPT.replace(
            "{traits}", f"Every message must fit this situation:\n{traits}" if traits else ""
        ).replace("{batch}", batch_line if batches > 1 else "")
        steps.insert(0, {"name": INPUT_STEP, "parse": "list", "temperature": 1.0,
                         "messages": [{"role": "user", "content": content}]})
        rounds = 3  # top-up rounds ask for more inputs where dedupe left a cell short
    example = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    if baked_system:
        example.insert(0, {"role": "system", "content": baked_system})
    category = " ~ ' / ' ~ ".join(axes) if axes else "'all'"
    data: dict[str, Any] = {
        "name": name or "distill_" + re.sub(r"\W+", "_", prompt.stem).strip("_"),
        "description": f"Distillation of {prompt}",
        "teacher": {"model": model} if model else {},
        "grid": grid,
        "category": category,
        "steps": [{k: v for k, v in s.items() if v is not None} for s in steps],
        "example": {"messages": example, "checks": checks},
        "dedupe": {"fields": ["user"]},
        "max_rounds": rounds if max_rounds is None else max_rounds,
    }
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"distillation spec: {exc.errors()[0]['msg']}") from exc


# ---- break-even -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakEven:
    tokens_saved_per_call: int
    saving_per_call: float  # USD; negative when the fine-tuned model costs more per call
    upfront_cost: float  # USD: generation + fine-tuning
    calls: int | None  # calls until the saving repays the upfront cost; None: never

    def verdict(self) -> str:
        if self.calls is None:
            return ("never breaks even: at the fine-tuned model's per-token prices a call costs at least as "
                    "much as a call with the long prompt")
        return f"pays back after {self.calls:,} calls"


def break_even(
    long_prompt_tokens: int,
    baked_prompt_tokens: int,
    generation_cost: float,
    finetune_cost: float,
    price_per_input_token: float,
    *,
    ft_price_per_input_token: float,
    input_tokens: float = 0,
    output_tokens: float = 0,
    price_per_output_token: float = 0.0,
    ft_price_per_output_token: float = 0.0,
) -> BreakEven:
    """Calls after which running the fine-tune with the baked prompt has repaid its cost.

    Per call, the base model is sent the long prompt; the fine-tune the baked one, at its own
    (usually higher) prices. Both also pay for the user's ``input_tokens`` and the
    ``output_tokens`` of the answer, which the fine-tune's price premium makes dearer too:
    saving = (long + input)·p_in + output·p_out − [(baked + input)·ft_in + output·ft_out].
    With the input/output terms left at 0 this is long·p_in − baked·ft_in."""
    base = (long_prompt_tokens + input_tokens) * price_per_input_token + output_tokens * price_per_output_token
    tuned = (baked_prompt_tokens + input_tokens) * ft_price_per_input_token + output_tokens * ft_price_per_output_token
    saving = base - tuned
    upfront = generation_cost + finetune_cost
    # rounded before ceil so that float noise (3.0 / 0.0003 = 10000.000000000002) adds no call
    calls = None if saving <= 0 else max(0, math.ceil(round(upfront / saving, 6)))
    return BreakEven(long_prompt_tokens - baked_prompt_tokens, saving, upfront, calls)


# ---- the run --------------------------------------------------------------------------------


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
        if s.get("encoding_note"):
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


def _quotes_prompt(rows: list[dict[str, Any]], windows: set[str]) -> int:
    """Examples whose user/assistant text shares a ``TRACE_CHARS`` run with the long prompt."""
    hits = 0
    for row in rows:
        texts = [m.get("content") for m in row.get("messages", []) if m.get("role") in ("user", "assistant")]
        if any(isinstance(t, str) and any(t[i:i + TRACE_CHARS] in windows for i in range(len(t) - TRACE_CHARS + 1))
               for t in texts):
            hits += 1
    return hits


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for item in value for s in _strings(item)] if isinstance(value, list) else []


def prompt_windows(prompt: str, examples: list[PromptExample]) -> set[str]:
    """Every ``TRACE_CHARS``-long run of the prompt. In a JSON example output only the string
    values count: an answer in the required format legitimately shares its keys and layout, but
    copying the example's summary is a trace."""
    for e in examples:
        try:
            kept = _strings(json.loads(e.output))
        except json.JSONDecodeError:
            continue
        prompt = prompt.replace(e.output, "\0" + "\0".join(kept) + "\0")
    runs = (prompt[i:i + TRACE_CHARS] for i in range(len(prompt) - TRACE_CHARS + 1))
    return {run for run in runs if "\0" not in run}


def distill(
    spec: Spec,
    out_dir: str | Path,
    store_path: str | Path | None = None,
    overrides: TeacherOverrides | None = None,
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
    config = merge(spec.teacher, overrides or TeacherOverrides())
    model = price_model or model_name(config)

    report = run_pipeline(spec, out_dir, store_path, overrides, options, formats=formats, seed=seed,
                          existing=leakage_guard(examples), command="distill")
    out = Path(out_dir)
    train, test = _read_rows(out / "train.jsonl"), _read_rows(out / "test.jsonl")
    dropped = _read_rows(out / "dropped.jsonl")
    manifest = report.build.manifest

    long_tokens = round(sum(_system_tokens(r, model) for r in rendered) / len(rendered))
    baked = next((m for m in spec.example.messages if m.role in ("system", "developer")), None)
    baked_tokens = _system_tokens(baked.content or "", model) if baked is not None else 0
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
        "examples_quoting_prompt": _quotes_prompt(train + test, prompt_windows(rendered[0], examples)),
        "generation_cost": report.totals.get("cost", 0.0),
    }
    summary.update(_break_even_section(summary, train, model, PriceTable(config.prices), ft_factor, epochs))
    manifest["distill"] = summary
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return DistillResult(report, summary)


def _system_tokens(text: str, model: str) -> int:
    """What a system message costs in a request: its text plus the chat format's overhead."""
    return count_tokens(text, model) + TOKENS_PER_MESSAGE


def _break_even_section(summary: dict[str, Any], train: list[dict[str, Any]], model: str, prices: PriceTable,
                        ft_factor: float | None, epochs: int | None) -> dict[str, Any]:
    price = prices.lookup(model)
    if price is None or price.input == 0:
        why = "no per-token price" if price is None else "a zero per-token price"
        return {"break_even": None,
                "break_even_note": f"{model} has {why}; pass --price-model with a hosted model to see the break-even"}
    if not train:
        return {"break_even": None, "break_even_note": "no training examples were kept"}
    factor = ft_factor if ft_factor is not None else ft_price_factor(model)
    lengths = [count_messages(row["messages"], model) for row in train]
    users = [_role_tokens(row, "user", model) for row in train]
    answers = [_role_tokens(row, "assistant", model) for row in train]
    avg_in, avg_out = sum(users) / len(users), sum(answers) / len(answers)
    tune = finetune_estimate(lengths, model, epochs=epochs)
    result = break_even(
        summary["long_prompt_tokens"], summary["baked_prompt_tokens"], summary["generation_cost"], tune.cost,
        price.input / 1_000_000, ft_price_per_input_token=price.input * factor / 1_000_000,
        input_tokens=avg_in, output_tokens=avg_out, price_per_output_token=price.output / 1_000_000,
        ft_price_per_output_token=price.output * factor / 1_000_000,
    )
    return {
        "prices": {"input_per_1m": price.input, "output_per_1m": price.output, "ft_factor": factor,
                   "ft_input_per_1m": price.input * factor, "ft_output_per_1m": price.output * factor},
        "avg_input_tokens": round(avg_in, 1),
        "avg_output_tokens": round(avg_out, 1),
        "finetune": {"tokens_per_epoch": tune.tokens_per_epoch, "epochs": tune.epochs, "usd_per_1m": tune.usd_per_1m,
                     "price_source": tune.price_source, "cost": round(tune.cost, 6)},
        "break_even": {"saving_per_call": round(result.saving_per_call, 9),
                       "upfront_cost": round(result.upfront_cost, 6), "calls": result.calls,
                       "verdict": result.verdict()},
    }


def _role_tokens(row: dict[str, Any], role: str, model: str) -> int:
    """Tokens of one role's messages; a sent (user) message also pays the chat format's overhead."""
    overhead = TOKENS_PER_MESSAGE if role != "assistant" else 0
    return sum(count_tokens(m["content"], model) + overhead
               for m in row["messages"] if m.get("role") == role and isinstance(m.get("content"), str))

