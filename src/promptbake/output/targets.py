"""Where fine-tuning data goes: one table of each trainer's documented rules.

Every limit ``validate`` and ``export`` enforce comes from here, so a provider changing a rule is a
one-line edit with its source next to it. Values are what the providers published (checked
2026-11); ``None`` means the provider documents no such limit, with the reason in ``notes``.

Sources:
- OpenAI: fine-tuning guide (minimum 10 examples, improvements from 50-100), the cookbook's
  ``Chat_finetuning_data_prep`` (keys, roles, epochs rule), the pricing page (training $/1M tokens).
- Azure OpenAI: ``fine-tune-models.md`` in MicrosoftDocs/azure-ai-docs (training-example context
  lengths, including 32,768 for gpt-4.1-nano). Azure prices vary by region and training tier.
- Together: docs.together.ai data preparation and ``together.lib.constants`` (MIN_SAMPLES = 1,
  MAX_FILE_SIZE_GB = 50.1, roles system/user/assistant/tool, only ``messages`` + ``tools``
  columns, user/assistant alternate); the SDK's ``fine_tuning.create`` defaults to 1 epoch.
- Fireworks: docs.fireworks.ai SFT and DPO pages (minimum 3, maximum 3 million examples; a system
  message only first; ``weight`` 0/1; OpenAI-compatible messages incl. ``tool_calls``) and
  fine-tuning-via-api (the one-request ``:upload`` takes files under 150 MB).
- OpenAI files: ``POST /v1/files`` takes files up to 512 MB.
- TRL: huggingface.co/docs/trl dataset_formats (conversational ``messages``; preference
  ``prompt``/``chosen``/``rejected``).
- Axolotl: docs/dataset-formats and docs/rlhf.qmd (``chat_template`` on ``messages``, ShareGPT via
  ``field_messages: conversations``, ``alpaca``, DPO ``chat_template.default``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from promptbake.errors import InputError


@dataclass(frozen=True)
class ModelLimits:
    """Per-model facts: the longest training example and the training price, when published."""

    context: int
    train_usd_per_1m: float | None = None


@dataclass(frozen=True)
class Target:
    """One place training happens, and the rules a file must meet to be accepted there."""

    name: str
    formats: tuple[str, ...]
    min_examples: int | None
    recommended_examples: tuple[int, int] | None = None
    max_examples: int | None = None
    models: dict[str, ModelLimits] = field(default_factory=dict)
    default_model: str | None = None
    roles: frozenset[str] = frozenset({"system", "user", "assistant"})
    message_keys: frozenset[str] = frozenset({"role", "content"})
    allows_weight: bool = False
    alternating_roles: bool = False  # no two user (or two assistant) turns in a row
    system_first_only: bool = False
    strict_columns: bool = False  # unknown top-level keys are rejected, not ignored
    openai_epochs: bool = False  # the provider picks epochs by the cookbook rule and bills tokens
    default_epochs: int | None = None  # epochs when none are asked for, where not the cookbook rule
    max_file_bytes: int | None = None  # the largest training file its upload takes
    docs: str = ""  # where the rules above are published
    notes: str = ""

    def limits(self, model: str | None) -> ModelLimits | None:
        """Limits for a model name; dated snapshots and ``ft:`` ids match by longest prefix."""
        name = model or self.default_model
        if not name:
            return None
        if name.startswith("ft:"):
            name = name.split(":")[1]
        matches = [k for k in self.models if name == k or name.startswith(k + "-") or k.startswith(name + "-")]
        if not matches:
            return None
        exact = [k for k in matches if k == name]
        # A bare family name ("gpt-4o-mini") resolves to the snapshot the table lists first.
        return self.models[exact[0] if exact else sorted(matches, key=lambda k: (len(k), k))[0]]


_OPENAI_CHAT_KEYS = frozenset(
    {"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id"}
)
_OPENAI_ROLES = frozenset({"system", "user", "assistant", "tool", "function"})

# Training-example context lengths (OpenAI fine-tuning guide; Azure's table for gpt-4.1-nano,
# the only published figure for it) and training prices per 1M tokens (OpenAI pricing page).
OPENAI_MODELS: dict[str, ModelLimits] = {
    "gpt-4.1-2025-04-14": ModelLimits(65_536, 25.00),
    "gpt-4.1-mini-2025-04-14": ModelLimits(65_536, 5.00),
    "gpt-4.1-nano-2025-04-14": ModelLimits(32_768, 1.50),
    "gpt-4o-2024-08-06": ModelLimits(65_536, 25.00),
    "gpt-4o-mini-2024-07-18": ModelLimits(65_536, 3.00),
    "gpt-3.5-turbo-0125": ModelLimits(16_385, 8.00),
    "gpt-3.5-turbo-1106": ModelLimits(16_385, 8.00),
    "gpt-3.5-turbo-0613": ModelLimits(4_096, 8.00),
    # legacy prompt/completion models (the ``openai-completion`` format)
    "babbage-002": ModelLimits(16_384, 0.40),
    "davinci-002": ModelLimits(16_384, 6.00),
}

_AZURE_MODELS: dict[str, ModelLimits] = {
    name.replace("gpt-3.5", "gpt-35"): ModelLimits(limits.context, None)
    for name, limits in OPENAI_MODELS.items()
    if not name.endswith("-002")
}

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="openai",
            formats=("openai-chat", "preference-openai", "openai-completion"),
            min_examples=10,
            recommended_examples=(50, 100),
            models=OPENAI_MODELS,
            default_model="gpt-4o-mini-2024-07-18",
            roles=_OPENAI_ROLES,
            message_keys=_OPENAI_CHAT_KEYS,
            allows_weight=True,
            openai_epochs=True,
            max_file_bytes=512 * 1024**2,
            docs="https://platform.openai.com/docs/guides/supervised-fine-tuning",
            notes="openai-completion only for the legacy babbage-002/davinci-002 models. "
            "Self-serve fine-tuning takes no new jobs after 2027-01-06.",
        ),
        Target(
            name="azure-openai",
            formats=("openai-chat", "preference-openai"),
            min_examples=10,
            recommended_examples=(50, 100),
            models=_AZURE_MODELS,
            default_model="gpt-4o-mini-2024-07-18",
            roles=_OPENAI_ROLES,
            message_keys=_OPENAI_CHAT_KEYS,
            allows_weight=True,
            openai_epochs=True,
            notes="Same file format as OpenAI. Training prices vary by region and tier "
            "(standard/global/developer), so no cost estimate.",
        ),
        Target(
            name="together",
            formats=("messages", "openai-chat", "openai-completion", "preference-openai"),
            min_examples=1,
            roles=frozenset({"system", "user", "assistant", "tool"}),
            message_keys=frozenset({"role", "content", "weight", "tool_calls", "tool_call_id", "name"}),
            allows_weight=True,
            alternating_roles=True,
            strict_columns=True,
            default_epochs=1,
            max_file_bytes=int(50.1 * 1024**3),
            docs="https://docs.together.ai/docs/fine-tuning-data-preparation",
            notes="Context length and price depend on the base model chosen: no per-example limit "
            "checked. openai-completion lines are Together's prompt/completion 'instruction' format.",
        ),
        Target(
            name="fireworks",
            formats=("messages", "openai-chat", "preference-openai"),
            min_examples=3,
            max_examples=3_000_000,
            roles=frozenset({"system", "user", "assistant", "tool"}),
            message_keys=frozenset({"role", "content", "weight", "tool_calls", "tool_call_id", "name"}),
            allows_weight=True,
            system_first_only=True,
            default_epochs=1,
            max_file_bytes=150 * 1000**2,
            docs="https://docs.fireworks.ai/fine-tuning/fine-tuning-models",
            notes="Context length depends on the base model (see its model page): not checked.",
        ),
        Target(
            name="trl",
            formats=("messages", "preference-trl"),
            min_examples=None,
            roles=frozenset({"system", "user", "assistant", "tool"}),
            message_keys=frozenset({"role", "content", "tool_calls", "tool_call_id", "name"}),
            notes="Your own GPUs: no minimum and no token limit beyond the max_length you set "
            "(SFTConfig.max_length truncates).",
        ),
        Target(
            name="axolotl",
            formats=("messages", "sharegpt", "alpaca", "preference-trl"),
            min_examples=None,
            roles=frozenset({"system", "user", "assistant", "tool"}),
            message_keys=frozenset({"role", "content", "tool_calls", "tool_call_id", "name"}),
            notes="Your own GPUs: no minimum; sequence_len in your config truncates or drops long "
            "examples. Also read by LLaMA-Factory and Unsloth (sharegpt/alpaca).",
        ),
    )
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise InputError(f"unknown target {name!r}: choose one of {', '.join(TARGETS)}") from None


def targets_for_format(fmt: str) -> list[str]:
    """Which targets read a format: the README's format table is generated from this."""
    return [t.name for t in TARGETS.values() if fmt in t.formats]


def target_for_teacher(kind: str, base_url: str | None) -> str:
    """The target ``build`` validates for when none is named: where the teacher lives says where the
    data most likely trains. A local teacher means an open model (``trl``); Azure, Together and
    Fireworks hosts mean themselves; any other OpenAI-compatible server, OpenAI's rules."""
    import os
    from urllib.parse import urlparse

    if kind == "local":
        return "trl"
    host = urlparse(base_url or os.environ.get("OPENAI_BASE_URL") or "").hostname or ""
    for marker, target in (("openai.azure.com", "azure-openai"), ("together", "together"), ("fireworks", "fireworks")):
        if marker in host:
            return target
    return "openai"
