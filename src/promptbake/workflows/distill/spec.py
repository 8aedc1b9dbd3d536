"""The spec of a distillation, built from command-line (or API) choices.

The grid's ``table`` is the inputs file (or a first step asks the teacher for inputs), the step
``answer`` sends each input under the full long prompt, and the training example keeps only the
baked system message (if any), the input and the answer.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from promptbake.curate.checks import Checks, read_schema
from promptbake.errors import DataFileError, InputError
from promptbake.plan.expand import load_table
from promptbake.specification.models import IDENTIFIER, Spec

ANSWER_STEP = "answer"
INPUT_STEP = "input"  # the generated-inputs step; its items become the variable ``input``
INPUTS_PER_REQUEST = 20  # one list request asks for at most this many inputs
# max_tokens of an inputs request: up to a short paragraph per input, so the spend of that step is
# bounded and --max-cost reserves a worst case the answer fits in (the 512 default would cut it off)
INPUT_TOKENS = 150 * INPUTS_PER_REQUEST

# A Jinja template; {traits} and {batch} are filled in (by str.replace) when the spec is built.
INPUTS_PROMPT = """\
You are writing realistic test data for an AI assistant. The assistant receives: {{ description }}
{traits}
Write {{ count }} different messages that real users could send to it. Vary the length (from one line \
to a short paragraph), the tone, the level of detail and the situation; include a few messy, vague or \
badly written ones. Each message is exactly what the user would type, with no label, number or comment.
Answer with a JSON array of {{ count }} strings and nothing else.{batch}"""


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
        data["schema"] = read_schema(schema_file)
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
    text = path.read_text(encoding="utf-8-sig")
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

    Paths are kept as given (relative to the working directory). In file mode an axis takes one
    value, a prompt variable for every input: several values would only vary the prompt that is
    baked away, paying for each input once per value to keep one answer, so they are refused.
    ``structured`` sends the checks' JSON schema as the answer's response format (grammar-bound on
    the local teacher), retries answers that do not parse, and stores them as canonical JSON."""
    prompt = Path(prompt_path)
    if not prompt.is_file():
        raise InputError(f"{prompt}: no such prompt file")
    if not prompt.read_bytes().strip():
        raise InputError(f"{prompt}: the prompt file is empty: there is nothing to distill")
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
        several = next(((a, v) for a, v in axes.items() if len(v) > 1), None)
        if several is not None:
            raise InputError(
                f"--axis {several[0]} has {len(several[1])} values, but with --inputs an axis only changes the long "
                "prompt, which is baked away: every input would be paid for once per value and all but one "
                "answer dropped as duplicates. Give one value (a prompt variable), or put the value in a column "
                "of the inputs file and in the input text"
            )
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
        if wanted % cells:
            raise InputError(f"--generate-inputs {wanted}: the {cells} combinations of --axis values each get the "
                             f"same number of inputs; give a multiple of {cells} "
                             f"(such as {wanted + cells - wanted % cells})")
        # exactly ``wanted``: per combination, batches of at most INPUTS_PER_REQUEST inputs, the last
        # one smaller when they do not divide evenly (a weight on its batch value)
        per_cell = wanted // cells
        batches = math.ceil(per_cell / INPUTS_PER_REQUEST)
        size = math.ceil(per_cell / batches)
        last = per_cell - (batches - 1) * size
        if last != size:
            grid["weights"] = {"batch": {str(batches): last / size}}
        traits = "".join(f"- {a}: {{{{ {a} }}}}\n" for a in axes)
        batch_axis = {"batch": list(range(1, batches + 1))} if batches > 1 else {}
        grid["axes"] = {"description": [describe], **axes, **batch_axis}
        grid["count"] = size
        batch_line = " (This is batch {{ batch }}: make it different from the other batches.)"
        content = INPUTS_PROMPT.replace(
            "{traits}", f"Every message must fit this situation:\n{traits}" if traits else ""
        ).replace("{batch}", batch_line if batches > 1 else "")
        steps.insert(0, {"name": INPUT_STEP, "parse": "list", "temperature": 1.0, "max_tokens": INPUT_TOKENS,
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
