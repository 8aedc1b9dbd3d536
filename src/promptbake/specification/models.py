"""Generator specs: the single pydantic source of truth for a dataset recipe.

A spec file (``generators/*.yaml``) is parsed with PyYAML's node API so that a validation error can
name the line it comes from, then validated by the models below (unknown keys are errors).
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from promptbake.curate.checks import AnswerList, Checks
from promptbake.curate.filters import FilterSet
from promptbake.errors import DataFileError, SpecError, TemplateError
from promptbake.specification.strict import Strict

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Prices(Strict):
    """USD per million tokens. ``batch_*``: the Batch API's prices (default: half of the above)."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    batch_input: float | None = Field(default=None, ge=0)
    batch_output: float | None = Field(default=None, ge=0)


class EndpointConfig(Strict):
    """One server of a fleet (``teacher.endpoints``). Unset fields take the teacher section's
    value; limits are this endpoint's own (each replica or account has its own)."""

    base_url: str
    model: str | None = None
    api_key_env: str | None = None
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, ge=1)
    weight: float = Field(default=1.0, gt=0)  # preference among endpoints that all have room


class TeacherConfig(Strict):
    """Where the teacher lives and how hard we may push it. CLI flags override these."""

    kind: Literal["remote", "local"] = "remote"
    base_url: str | None = None
    model: str | None = None
    # several models answering the steps without their own, each request one of them (see
    # plan/routing.py): mixing is said here, never inferred from endpoints naming other models
    models: list[str] | None = Field(default=None, min_length=1)
    api_key_env: str = "OPENAI_API_KEY"
    rpm: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    tpm: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    concurrency: int = Field(default=64, ge=1)
    max_attempts: int = Field(default=6, ge=1)
    timeout: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    max_retry_after: float = Field(default=60.0, gt=0, allow_inf_nan=False)  # seconds; a longer wait pauses one request
    structured_output: Literal["auto", "json_schema", "json_object", "none"] = "auto"
    prices: dict[str, Prices] = Field(default_factory=dict)
    endpoints: list[EndpointConfig] = Field(default_factory=list)  # several servers instead of base_url
    threads: int | None = Field(default=None, ge=1)  # local teacher: llama.cpp threads (default: one per core)
    # local teacher: a GGUF file or a `promptbake train` model folder instead of the embedded SmolLM2
    local_model: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset_local_model(self, handler: SerializerFunctionWrapHandler,
                                info: SerializationInfo) -> dict[str, Any]:
        # unset, it is left out, so that the hash of every spec written before it existed stays the same
        data: dict[str, Any] = handler(self)
        if data.get("local_model") is None:
            data.pop("local_model", None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `teacher: local` is the documented shorthand for the embedded llama.cpp teacher.
        if isinstance(data, str):
            if data not in ("local", "remote"):
                raise ValueError("teacher must be 'local', 'remote' or a mapping")
            return {"kind": data}
        return data

    @model_validator(mode="after")
    def _one_model_source(self) -> TeacherConfig:
        check_models(self.model, self.models)
        named = sorted({e.model for e in self.endpoints if e.model})
        if self.model is None and self.models is None and len(named) > 1:
            raise ValueError(f"the endpoints serve several models ({', '.join(named)}) and the teacher names none: "
                             "set teacher.model to the one steps use, or mix them explicitly with "
                             f"teacher.models: [{', '.join(named)}]")
        return self


def check_models(model: str | None, models: list[str] | None) -> None:
    """``model`` or ``models`` (a mix of distinct names), not both."""
    if model is not None and models is not None:
        raise ValueError("give 'model' (one model) or 'models' (a mix), not both")
    if models is not None and len(set(models)) < len(models):
        raise ValueError("'models' names a model twice")


class MessageTemplate(Strict):
    """One chat message built from a Jinja template: inline ``content`` or a ``template`` file."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    template: str | None = None
    weight: Literal[0, 1] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> MessageTemplate:
        if (self.content is None) == (self.template is None):
            raise ValueError("give exactly one of 'content' (inline template) or 'template' (file)")
        if self.weight is not None and self.role != "assistant":
            raise ValueError("'weight' is only allowed on assistant messages")
        return self


class SamplingParams(Strict):
    """Teacher parameters sent in the request body (only the ones that are set)."""

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    extra_body: dict[str, Any] | None = None

    def body_params(self) -> dict[str, Any]:
        """The set params as they go into the request body (``extra_body`` merged at top level)."""
        fields = set(SamplingParams.model_fields) - {"model", "extra_body"}
        params = self.model_dump(exclude_none=True, include=fields)
        params.update(self.extra_body or {})
        return params


class TurnBounds(Strict):
    """How many exchanges (a customer turn and the agent's reply) a dialogue has: ``{min, max}``, or
    one number for both."""

    min: int = Field(default=1, ge=1)
    max: int = Field(ge=1, le=50)

    @model_validator(mode="before")
    @classmethod
    def _one_number(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"min": data, "max": data}
        return data

    @model_validator(mode="after")
    def _check(self) -> TurnBounds:
        if self.min > self.max:
            raise ValueError(f"turns.min ({self.min}) is above turns.max ({self.max})")
        return self


class Side(SamplingParams):
    """One voice of a conversation: the customer simulator (``user``) or the agent (``assistant``),
    each with its own messages (persona, few-shot turns), model and sampling. The dialogue so far
    follows its messages, the other side's turns as user messages and its own as assistant ones."""

    messages: list[MessageTemplate] = Field(min_length=1)
    parse: Literal["text", "json"] = "text"
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    say: str | None = None  # parse: json: the field holding what this side says
    models: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Side:
        check_models(self.model, self.models)
        if (self.n or 1) != 1:
            raise ValueError("a conversation side takes one answer per turn (n: 1)")
        if self.json_schema is not None and self.parse != "json":
            raise ValueError("'schema' needs parse: json")
        if (self.parse == "json") != (self.say is not None):
            raise ValueError("parse: json needs 'say' (the field holding the turn's text), and 'say' needs parse: json")
        return self


class StopJudge(Strict):
    """A model reading the dialogue after each agent turn (from ``turns.min`` on) and saying
    whether it is over: a request per check, cached and resumed like a turn."""

    criteria: str | None = None
    template: str | None = None  # a prompt file instead, with {{ transcript }} and every variable
    model: str | None = None
    models: list[str] | None = Field(default=None, min_length=1)
    temperature: float | None = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=200, ge=16)

    @model_validator(mode="after")
    def _check(self) -> StopJudge:
        if (self.criteria is None) == (self.template is None):
            raise ValueError("a stop judge needs exactly one of 'criteria' or 'template'")
        check_models(self.model, self.models)
        return self


class StopRule(Strict):
    """What ends a dialogue before ``turns.max``: a ``phrase`` in a turn, a true ``field`` of a
    structured turn, or a ``judge``. ``side``: whose turns the phrase or field is read from (the
    customer's by default: a customer turn that ends the dialogue is not kept, an agent turn is)."""

    phrase: str | None = Field(default=None, min_length=1)
    done_field: str | None = Field(default=None, alias="field")
    judge: StopJudge | None = None
    side: Literal["user", "assistant"] = "user"

    @model_validator(mode="after")
    def _check(self) -> StopRule:
        if sum(x is not None for x in (self.phrase, self.done_field, self.judge)) != 1:
            raise ValueError("a stop rule is exactly one of 'phrase', 'field' or 'judge'")
        return self


class Conversation(Strict):
    """Dialogues between a customer simulator and an agent, turn by turn: each turn is one request,
    planned from the dialogue so far, so a killed run resumes at the next turn."""

    turns: TurnBounds
    user: Side
    assistant: Side
    stop: StopRule | None = None  # None: each dialogue's length is drawn evenly from the bounds
    opener: Literal["user", "assistant"] = "user"

    @model_validator(mode="after")
    def _check(self) -> Conversation:
        rule = self.stop
        if rule is not None and rule.done_field is not None:
            side = self.user if rule.side == "user" else self.assistant
            if side.parse != "json":
                raise ValueError(f"stop.field needs the {rule.side} side to answer in JSON (parse: json, say: ...)")
            properties = (side.json_schema or {}).get("properties")
            if isinstance(properties, dict) and rule.done_field not in properties:
                raise ValueError(f"stop.field {rule.done_field!r} is not a property of the {rule.side} side's schema")
        return self


class Step(SamplingParams):
    """One teacher call per row. Its parsed output becomes the template variable ``name``. A step
    with a ``conversation`` instead of ``messages`` is a whole dialogue (its sampling parameters
    are the defaults of both sides); it must be the last step."""

    name: str
    messages: list[MessageTemplate] = Field(default_factory=list)
    conversation: Conversation | None = None
    parse: Literal["text", "json", "list"] = "text"
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    repeat: int | None = Field(default=None, ge=1)
    min_items: int = Field(default=1, ge=1)
    models: list[str] | None = Field(default=None, min_length=1)  # a mix, each request one of them
    # with n > 1 on the last step: every choice becomes an example ("all"), or only the one the
    # quality gates rate best ("best": best-of-n, n candidates for one request and one payment)
    pick: Literal["all", "best"] = "all"

    @model_validator(mode="after")
    def _check(self) -> Step:
        check_models(self.model, self.models)
        if not IDENTIFIER.match(self.name):
            raise ValueError(f"step name {self.name!r} must be an identifier (letters, digits, _)")
        if self.json_schema is not None and self.parse == "text":
            raise ValueError("'schema' needs parse: json or parse: list")
        if self.conversation is None and not self.messages:
            raise ValueError("a step needs 'messages' (or a 'conversation')")
        if self.conversation is not None:
            # compared with the defaults, not with what was given: a dumped spec writes them out
            given = {"messages": self.messages != [], "parse": self.parse != "text",
                     "schema": self.json_schema is not None, "repeat": self.repeat is not None,
                     "min_items": self.min_items != 1, "n": (self.n or 1) != 1}
            if any(given.values()):
                name = next(k for k, v in given.items() if v)
                raise ValueError(f"a conversation step takes no {name!r}: each side has its own")
        if self.pick == "best" and (self.n or 1) < 2:
            raise ValueError("pick: best needs n >= 2 (the candidates to pick from)")
        if self.pick == "best" and self.parse == "list":
            raise ValueError("pick: best picks one of n answers; parse: list would fan each one out")
        return self

    def all_messages(self) -> list[MessageTemplate]:
        """Every message template of the step, both sides' for a conversation."""
        talk = self.conversation
        return self.messages if talk is None else [*talk.user.messages, *talk.assistant.messages]


class Grid(Strict):
    """Scenario axes expanded as a Cartesian product into cells.

    ``axes`` values are lists or a path (relative to the spec) to a file with one value per line.
    ``table`` is a JSONL/CSV file whose rows are crossed with the axes (each row's fields become
    cell variables): that is how a list of inputs becomes cells for distillation.
    """

    axes: dict[str, list[str | int | float | bool] | str] = Field(default_factory=dict)
    table: str | None = None
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    weights: dict[str, dict[str, float]] = Field(default_factory=dict)
    count: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Grid:
        for axis in self.axes:
            if not IDENTIFIER.match(axis):
                raise ValueError(f"axis name {axis!r} must be an identifier (letters, digits, _)")
        for axis, table in self.weights.items():
            if axis not in self.axes:
                raise ValueError(f"weights name unknown axis {axis!r}")
            if any(w < 0 for w in table.values()):
                raise ValueError(f"weights for axis {axis!r} must be >= 0")
        for rule in self.exclude:
            unknown = set(rule) - set(self.axes)
            if unknown:
                raise ValueError(f"exclude rule names unknown axis {sorted(unknown)[0]!r}")
        if not self.axes and self.table is None:
            raise ValueError("grid needs 'axes' or a 'table'")
        return self


class ConversationSlot(Strict):
    """``- conversation: NAME`` in ``example.messages``: the dialogue's turns, in place. ``weight``
    (an expression, or 0/1) marks each agent turn trained on or not; it sees the turn's ``turn``
    (1-based exchange), ``turns`` (the dialogue's exchanges), ``content``, ``data`` (a structured
    turn) and every variable of the row."""

    conversation: str
    weight: str | Literal[0, 1] | None = None


def _slot_or_message(value: Any) -> str:
    if isinstance(value, dict):
        return "ConversationSlot" if "conversation" in value else "MessageTemplate"
    return "ConversationSlot" if isinstance(value, ConversationSlot) else "MessageTemplate"


ExampleMessage = Annotated[
    Annotated[MessageTemplate, Tag("MessageTemplate")] | Annotated[ConversationSlot, Tag("ConversationSlot")],
    Discriminator(_slot_or_message),
]
_UNION_TAGS = ("MessageTemplate", "ConversationSlot")  # in error locations, they name no YAML key


class ExampleSpec(Strict):
    """The training example written for each final row: the baked messages. ``checks`` drop
    examples whose last assistant answer (each agent turn, for a conversation) fails them (counted
    per category in the manifest)."""

    messages: list[ExampleMessage] = Field(min_length=1)
    checks: Checks | None = None
    tools: list[dict[str, Any]] | None = None
    rejected: str | None = None  # template of a rejected assistant answer, for preference pairs


class Judge(Strict):
    """An LLM judge gating examples inside the exact-count loop: an ordinary step (same pool, store,
    cache and limits) that reasons, then scores the example 1-5 as structured output. Examples
    scoring below ``min_score`` are dropped and their cells refilled by the top-up rounds."""

    name: str | None = None  # the step's name in the store (default: judge, judge_2, ...)
    criteria: str | None = None
    template: str | None = None  # a prompt template (file under templates/) instead of criteria
    model: str | None = None  # default: the teacher's model
    models: list[str] | None = Field(default=None, min_length=1)  # a mix, each verdict one of them
    min_score: int = Field(default=4, ge=1, le=5)
    fields: list[Literal["system", "user", "assistant"]] | None = None  # default: the whole example
    turns: Literal["all", "last"] = "all"  # a conversation: the whole dialogue, or its last exchange
    temperature: float | None = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=300, ge=16)
    expected_pass_rate: float = Field(default=0.8, gt=0, le=1)  # for the dry run's estimate only

    @model_validator(mode="after")
    def _check(self) -> Judge:
        if (self.criteria is None) == (self.template is None):
            raise ValueError("a judge needs exactly one of 'criteria' or 'template'")
        check_models(self.model, self.models)
        if self.name is not None and not IDENTIFIER.match(self.name):
            raise ValueError(f"judge name {self.name!r} must be an identifier (letters, digits, _)")
        return self


class EvalSpec(Strict):
    """How ``promptbake eval`` scores a student on this dataset (``checks`` default: example.checks).

    ``reference``: a template over the example's cell (from the metadata) giving the right answer,
    when it is known apart from the teacher's (a question bank's key); else the test answer is it.
    ``answers`` scores an answer that is a list of items, one per question, on five metrics."""

    checks: Checks | None = None
    reference: str | None = None
    answers: AnswerList | None = None
    criteria: str | None = None  # a rubric a judge model scores 1-5 (G-Eval style)
    pass_score: int = Field(default=4, ge=1, le=5)  # the judge score that counts as a pass


class SplitConfig(Strict):
    test: float | int = 0.1
    seed: int = 0
    group: Literal["prompt", "lineage", "none"] = "prompt"  # examples of one group share a side

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if isinstance(self.test, float) and not 0 <= self.test < 1:
            raise ValueError("split.test as a fraction must be in [0, 1)")
        if isinstance(self.test, int) and self.test < 0:
            raise ValueError("split.test as a count must be >= 0")
        return self


class DedupeStorage(Strict):
    """A shared near-duplicate index in Redis (datasketch's ``storage_config``), so that several
    machines building parts of one dataset dedupe against each other. ``basename`` names the index:
    every machine of one dataset uses the same one. ``redis`` is passed to ``redis.Redis``; a value
    may be ``{env: NAME, default: ...}`` so that a password stays out of the spec and manifest."""

    type: Literal["redis"] = "redis"
    redis: dict[str, Any] = Field(default_factory=lambda: {"host": "localhost", "port": 6379})
    basename: str = Field(min_length=1)

    def storage_config(self) -> dict[str, Any]:
        """What ``datasketch.MinHashLSH(storage_config=...)`` takes."""
        return {"type": self.type, "redis": self.redis, "basename": self.basename.encode("utf-8")}


class DedupeConfig(Strict):
    enabled: bool = True
    # roles whose text is compared, or "opening" (the first user turn; a conversation's default)
    fields: list[str] = Field(default_factory=lambda: ["user", "assistant"])
    near: bool = True
    threshold: float = Field(default=0.85, gt=0, le=1)
    num_perm: int = Field(default=128, ge=16)
    shingle: int = Field(default=3, ge=1)
    storage: DedupeStorage | None = None  # None: the index lives in this process's memory


class BalanceConfig(Strict):
    mode: Literal["none", "cap", "min", "equal"] = "none"
    n: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> BalanceConfig:
        if self.mode in ("cap", "min") and self.n is None:
            raise ValueError(f"balance mode {self.mode!r} needs 'n'")
        return self


class OutputConfig(Strict):
    formats: list[str] = Field(default_factory=lambda: ["openai-chat"])
    completion_separator: str = "\n\n###\n\n"
    completion_stop: str = "\n\n===\n\n"


class Spec(Strict):
    name: str
    description: str = ""
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    grid: Grid
    category: str | None = None
    steps: list[Step] = Field(min_length=1)
    example: ExampleSpec
    split: SplitConfig = Field(default_factory=SplitConfig)
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    max_rounds: int = Field(default=3, ge=0)
    eval: EvalSpec | None = None
    filters: FilterSet = Field(default_factory=FilterSet)
    judge: list[Judge] = Field(default_factory=list)

    _path: Path | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _conversation_example(cls, data: Any) -> Any:
        # a conversation's training example is, unless said otherwise, the whole dialogue
        if isinstance(data, dict) and "example" not in data and isinstance(data.get("steps"), list):
            names = [s.get("name") for s in data["steps"] if isinstance(s, dict) and "conversation" in s]
            if names:
                return {**data, "example": {"messages": [{"conversation": names[-1]}]}}
        return data

    @field_validator("judge", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _check(self) -> Spec:
        for i, judge in enumerate(self.judge):
            if judge.name is None:
                judge.name = "judge" if i == 0 else f"judge_{i + 1}"
        names = [s.name for s in self.steps] + [j.name or "" for j in self.judge]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"step names must be unique: {sorted(dupes)[0]!r} repeats")
        clash = set(names) & set(self.grid.axes)
        if clash:
            raise ValueError(f"step {sorted(clash)[0]!r} has the same name as an axis")
        self._check_conversation()
        early = [s.name for s in self.steps[:-1] if s.pick == "best"]
        if early:
            raise ValueError(f"step {early[0]!r}: pick: best is for the last step, whose choices become the examples")
        return self

    def _check_conversation(self) -> None:
        """A conversation is the last step, and the example holds it (``- conversation: NAME``)."""
        talks = [i for i, s in enumerate(self.steps) if s.conversation is not None]
        if talks and talks[0] != len(self.steps) - 1:
            raise ValueError(f"the conversation step {self.steps[talks[0]].name!r} must be the last step")
        slots = [m for m in self.example.messages if isinstance(m, ConversationSlot)]
        for slot in slots:
            if not talks or slot.conversation != self.steps[talks[0]].name:
                raise ValueError(f"example.messages: {slot.conversation!r} is not a conversation step")
        if talks and not slots:
            raise ValueError(f"example.messages must hold the dialogue: add '- conversation: {self.steps[-1].name}'")
        if talks and "fields" not in self.dedupe.model_fields_set:
            self.dedupe.fields = ["opening"]  # dialogues are told apart by the customer's opening turn

    @property
    def conversation(self) -> Step | None:
        """The conversation step, when the spec has one (always the last step)."""
        return self.steps[-1] if self.steps[-1].conversation is not None else None

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def base_dir(self) -> Path:
        """Relative paths in the spec (axis files, tables, templates) resolve from here."""
        return self._path.parent if self._path else Path.cwd()

    def where(self) -> str:
        """How errors name this spec: its file, or its name for a spec built in Python."""
        return str(self._path) if self._path else f"spec {self.name!r}"

    def spec_hash(self) -> str:
        """Hash of the validated content and of the files it names (message templates, axis value
        files, the table): what the manifest records to tie data to its recipe, so an edited
        template changes it as an edited spec does."""
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        digest = hashlib.sha256(canonical.encode())
        for name, content in self._named_files():
            digest.update(f"\x00{name}\x00".encode() + content)
        return digest.hexdigest()[:16]

    def _named_files(self) -> list[tuple[str, bytes]]:
        """(name, content) of every file the spec names; a missing one hashes as missing (loading
        it reports the error where it matters)."""
        import jinja2

        from promptbake.specification.templates import Templates

        files: dict[str, bytes] = {}
        messages = [m for step in self.steps for m in step.all_messages()]
        messages += [m for m in self.example.messages if isinstance(m, MessageTemplate)]
        templates = Templates.for_spec_dir(self.base_dir)
        loader = templates.env.loader
        assert loader is not None
        for message in messages:
            if message.template is not None:
                try:
                    source = loader.get_source(templates.env, message.template)[0].encode()
                except (jinja2.TemplateNotFound, TemplateError, OSError):
                    source = b"<missing>"
                files[f"template:{message.template}"] = source
        paths = [f"axis:{v}" for v in self.grid.axes.values() if isinstance(v, str)]
        paths += [f"table:{self.grid.table}"] if self.grid.table else []
        for name in paths:
            try:
                files[name] = self.resolve(name.split(":", 1)[1]).read_bytes()
            except OSError:
                files[name] = b"<missing>"
        return sorted(files.items())

    def resolve(self, relative: str) -> Path:
        """A path the spec names (template, axis file, table), from the spec's folder."""
        path = Path(relative)
        return path if path.is_absolute() else self.base_dir / path


def _node_line(root: yaml.Node | None, loc: tuple[int | str, ...], *, at_key: bool = False) -> int | None:
    """Follow a pydantic error location through the YAML node tree to a 1-based line number.
    ``at_key``: the line of the last key itself (an unknown key), not of its value, which for a
    mapping (``dedup:`` and its keys below) starts on the next line."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for i, key in enumerate(loc):
        if key in _UNION_TAGS:
            continue
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(key)), None)
            if at_key and i == len(loc) - 1:
                key_node = next((k for k, _ in node.value if k.value == str(key)), None)
                return key_node.start_mark.line + 1 if key_node is not None else line
            if match is None:
                # an unknown key: point at the key itself
                key_node = next((k for k, _ in node.value if k.value == str(key)), None)
                return key_node.start_mark.line + 1 if key_node is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            continue  # pydantic adds union-branch names to locations; they have no node
        line = node.start_mark.line + 1
    return line


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[union[str,int,float,bool]]", "function-before[_shorthand(), TeacherConfig]",
                      *_UNION_TAGS):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


MAX_EXPANDED = 10_000_000  # characters (plus one per node) a spec may expand to beyond its own text


def _expanded_size(root: yaml.Node | None, limit: int, where: str) -> int:
    """What the document weighs once every alias is expanded (scalar characters plus one per
    node), refusing a recursive alias or a document beyond ``limit``: a few lines of YAML aliases
    (the billion laughs) expand to gigabytes when the spec is validated, hashed or sent as
    ``extra_body``. Each distinct node is weighed once, so this costs the document's size."""
    if root is None:
        return 0
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1 + len(node.value)
            continue
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        if children_done:
            open_.discard(id(node))
            sizes[id(node)] = size = 1 + sum(sizes[id(c)] for c in children)
            if size > limit:
                raise SpecError(f"{where}:{node.start_mark.line + 1}: YAML aliases expand this value beyond "
                                f"{limit:,} characters (an alias bomb?); write the values out or put them in a file")
            continue
        if id(node) in open_:
            raise SpecError(f"{where}:{node.start_mark.line + 1}: a YAML alias refers to the value containing it")
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def parse_spec(text: str, where: str, path: Path | None = None) -> Spec:
    """Validate YAML text as a spec; errors name ``where`` (the file), the field and the line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _expanded_size(root, MAX_EXPANDED + len(text), where)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise SpecError(f"{where}{line}: invalid YAML: {exc.problem or exc}") from exc
    except RecursionError:
        raise SpecError(f"{where}: invalid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise SpecError(f"{where}: a spec must be a YAML mapping")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = _node_line(root, tuple(first["loc"]), at_key=first["type"] == "extra_forbidden")
        raise SpecError(f"{where}:{at}: {_problem(exc)}") from exc
    spec._path = path
    return spec


def _problem(exc: ValidationError) -> str:
    """``field: what is wrong`` for the first error, and how many more there are."""
    err = exc.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        import difflib  # only for a spec with a mistake: a dry run of a good one does without

        near = difflib.get_close_matches(str(err["loc"][-1]), _keys_at(tuple(err["loc"])), n=1, cutoff=0.6)
        if near:
            msg += f" (did you mean {near[0]}?)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{_format_loc(tuple(err['loc']))}: {msg}{more}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``list[Step]``, ``TeacherConfig | None``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed where an unknown key was found: what "did you mean" chooses from."""
    model: type[BaseModel] = Spec
    for part in loc[:-1]:
        if isinstance(part, int) or "[" in part:  # a list index, or a validator's name in the location
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return []
        model = inner
    return [f.alias or name for name, f in model.model_fields.items()]


def spec_from_dict(data: Mapping[str, Any]) -> Spec:
    """A spec built in Python: the keys of a spec file, validated the same way (an error names the
    field). Relative paths in it (templates, axis files, tables) resolve from the working directory."""
    try:
        return Spec.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(f"spec {data.get('name', '(unnamed)')!r}: {_problem(exc)}") from None


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError(f"{path}: no such spec file") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise SpecError(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_spec(text, str(path), path)


def read_lines_file(path: Path, what: str) -> list[str]:
    """One value per non-blank line (axis files, plain-text input files)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8-sig")  # a Windows editor's BOM is not part of the first value
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataFileError(f"{path}:{line}: {what} is not UTF-8 text") from exc
    values = [line.strip() for line in text.splitlines() if line.strip()]
    if not values:
        raise DataFileError(f"{path}: {what} is empty")
    return values
