"""What a teacher call costs, so spend can be shown live and capped with ``--max-cost``.

Prices are USD per million tokens (standard tier, no batch or cache discount) as published by
OpenAI; a spec overrides or extends them with ``teacher.prices``. Only known names are priced, by
their exact name: the families and every dated snapshot or variant OpenAI publishes are listed,
each with its own price (``gpt-4o-2024-05-13`` costs twice what ``gpt-4o`` costs, ``gpt-5-pro``
twelve times ``gpt-5``), and nothing is matched by prefix, because a typo such as ``gpt-4o-mni``
would then be priced as ``gpt-4o`` (17× the model meant) and pass ``--max-cost``, and an unlisted
snapshot as its family, which may be several times cheaper. An unknown name is refused with the
closest known one (``did you mean gpt-4o-mini?``). A fine-tuned model
(``ft:gpt-4o-mini:acme:rude:abc123``) costs more per token than its base: it is priced at the
base price times the family's fine-tuned factor, and is unknown when the family has none.

Why not the ``genai-prices`` package, which is maintained: it has no Batch API prices and no
fine-tuned prices (``ft:...`` names are unknown to it), and it takes about a second to import,
more than a whole dry run. The snapshot entries below agree with its table (2026-12).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from promptbake.errors import InputError
from promptbake.specification.models import Prices

DEFAULT_PRICES: dict[str, Prices] = {
    "gpt-5": Prices(input=1.25, output=10.00),
    "gpt-5-mini": Prices(input=0.25, output=2.00),
    "gpt-5-nano": Prices(input=0.05, output=0.40),
    "gpt-4.1": Prices(input=2.00, output=8.00),
    "gpt-4.1-mini": Prices(input=0.40, output=1.60),
    "gpt-4.1-nano": Prices(input=0.10, output=0.40),
    "gpt-4o": Prices(input=2.50, output=10.00),
    "gpt-4o-mini": Prices(input=0.15, output=0.60),
    "o3": Prices(input=2.00, output=8.00),
    "o4-mini": Prices(input=1.10, output=4.40),
    "gpt-3.5-turbo": Prices(input=0.50, output=1.50),
    # the embedded local teacher costs nothing per token
    "smollm2": Prices(input=0.0, output=0.0),
}

# Dated snapshots and variants priced on their own (OpenAI's pricing page): a name here is never
# priced as its family, which for some of them would undercount several times over.
SNAPSHOT_PRICES: dict[str, Prices] = {
    "gpt-4o-2024-05-13": Prices(input=5.00, output=15.00),
    "gpt-4o-2024-08-06": Prices(input=2.50, output=10.00),
    "gpt-4o-2024-11-20": Prices(input=2.50, output=10.00),
    "gpt-4o-mini-2024-07-18": Prices(input=0.15, output=0.60),
    "gpt-4.1-2025-04-14": Prices(input=2.00, output=8.00),
    "gpt-4.1-mini-2025-04-14": Prices(input=0.40, output=1.60),
    "gpt-4.1-nano-2025-04-14": Prices(input=0.10, output=0.40),
    "gpt-5-2025-08-07": Prices(input=1.25, output=10.00),
    "gpt-5-mini-2025-08-07": Prices(input=0.25, output=2.00),
    "gpt-5-nano-2025-08-07": Prices(input=0.05, output=0.40),
    "gpt-5-pro": Prices(input=15.00, output=120.00),
    "gpt-5-pro-2025-10-06": Prices(input=15.00, output=120.00),
    "o3-2025-04-16": Prices(input=2.00, output=8.00),
    "o3-mini": Prices(input=1.10, output=4.40),
    "o3-mini-2025-01-31": Prices(input=1.10, output=4.40),
    "o3-pro": Prices(input=20.00, output=80.00),
    "o3-pro-2025-06-10": Prices(input=20.00, output=80.00),
    "o4-mini-2025-04-16": Prices(input=1.10, output=4.40),
    "gpt-3.5-turbo-0125": Prices(input=0.50, output=1.50),
    "gpt-3.5-turbo-1106": Prices(input=1.00, output=2.00),
    "gpt-3.5-turbo-0613": Prices(input=1.50, output=2.00),
    "gpt-3.5-turbo-16k": Prices(input=3.00, output=4.00),
    "gpt-3.5-turbo-16k-0613": Prices(input=3.00, output=4.00),
}

# Fine-tuned inference price ÷ base price, input and output alike (OpenAI pricing page, 2026-11:
# fine-tuned gpt-4o-mini $0.30/$1.20 vs $0.15/$0.60 base; gpt-4o $3.75/$15 vs $2.50/$10).
FT_PRICE_FACTORS = {"gpt-4o-mini": 2.0, "gpt-4.1-mini": 2.0, "gpt-4.1-nano": 2.0, "gpt-4o": 1.5, "gpt-4.1": 1.5}
DEFAULT_FT_PRICE_FACTOR = 2.0  # what break-even estimates assume for a family not listed above


def base_model(model: str) -> str:
    """``ft:gpt-4o-mini:acme:rude:abc123`` → ``gpt-4o-mini``; any other name unchanged."""
    return model.split(":")[1] if model.startswith("ft:") else model


def _family(table: Mapping[str, Prices | float], name: str) -> str | None:
    """The key of ``table`` that holds ``name``: the name itself, or, for a listed snapshot (never
    any other name), the longest family it belongs to (``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``)."""
    if name in table:
        return name
    if name not in SNAPSHOT_PRICES:
        return None
    families = [k for k in table if name.startswith(k + "-")]
    return max(families, key=len) if families else None


def closest_model(model: str, known: Iterable[str]) -> str | None:
    """The known model name nearest to ``model`` (a typo's fix), or None when none is close."""
    import difflib  # only when a model has no price: a dry run of a priced one does without

    names = sorted({*known, *SNAPSHOT_PRICES})
    match = difflib.get_close_matches(base_model(model), names, n=1, cutoff=0.75)
    return match[0] if match else None


def ft_price_factor(model: str) -> float:
    """Fine-tuned ÷ base price for ``model``'s family; ``DEFAULT_FT_PRICE_FACTOR`` if unlisted."""
    key = _family(FT_PRICE_FACTORS, base_model(model))
    return FT_PRICE_FACTORS[key] if key is not None else DEFAULT_FT_PRICE_FACTOR


# OpenAI's Batch API costs half the standard price for every model (and so do Azure OpenAI's
# global batch deployments); other providers may differ: set batch_input/batch_output per model
BATCH_DISCOUNT = 0.5


class PriceTable:
    def __init__(self, overrides: Mapping[str, Prices] | None = None) -> None:
        self.prices = {**DEFAULT_PRICES, **SNAPSHOT_PRICES, **(overrides or {})}
        self._found: dict[str, Prices | None] = {}  # every answer is priced: look each model up once

    def lookup(self, model: str) -> Prices | None:
        """The model's price: its own entry (``teacher.prices`` may name a fine-tune), else for
        a fine-tune its base's price × the family's fine-tuned factor; None when unknown."""
        if model not in self._found:
            self._found[model] = self._lookup(model)
        return self._found[model]

    def _lookup(self, model: str) -> Prices | None:
        if model in self.prices:
            return self.prices[model]
        if not model.startswith("ft:"):
            return None
        base = base_model(model)
        price, factor_key = self.prices.get(base), _family(FT_PRICE_FACTORS, base)
        if price is None or factor_key is None:
            return None
        factor = FT_PRICE_FACTORS[factor_key]
        return Prices(input=price.input * factor, output=price.output * factor)

    def describe(self, model: str) -> str:
        """The price the dry run uses for ``model`` and where it comes from: always an exact name
        (its own entry, or a fine-tune's base), never a family's guess."""
        price = self.lookup(model)
        if price is None:
            return self.unknown(model)
        base = base_model(model)
        source = "its own entry" if model in self.prices else f"{ft_price_factor(model):g} × {base}'s, fine-tuned"
        return f"{model}: ${price.input:g} in, ${price.output:g} out per 1M tokens ({source})"

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one call; 0.0 when the model has no known price (``known`` tells which)."""
        price = self.lookup(model)
        if price is None:
            return 0.0
        return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000

    def batch_cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one request answered through the Batch API: the model's ``batch_*`` prices,
        else ``BATCH_DISCOUNT`` of the standard ones (OpenAI bills batches at half price)."""
        price = self.lookup(model)
        if price is None:
            return 0.0
        batch_in = price.batch_input if price.batch_input is not None else price.input * BATCH_DISCOUNT
        batch_out = price.batch_output if price.batch_output is not None else price.output * BATCH_DISCOUNT
        return (prompt_tokens * batch_in + completion_tokens * batch_out) / 1_000_000

    def known(self, model: str) -> bool:
        return self.lookup(model) is not None

    def unknown(self, model: str) -> str:
        """How to say ``model`` has no price: "unknown model 'gpt-4o-mni' (did you mean gpt-4o-mini?)"."""
        near = closest_model(model, self.prices)
        return f"unknown model {model!r}" + (f" (did you mean {near}?)" if near else "")

    def require(self, models: Iterable[str], max_cost: float | None) -> None:
        """Under ``--max-cost`` every model must have a price: an unknown one would be counted
        as free and the bound would not hold. Raises InputError naming the model."""
        if max_cost is None:
            return
        check_max_cost(max_cost)
        for model in sorted(set(models)):
            if not self.known(model):
                raise InputError(
                    f"--max-cost: no price is known for model {model!r}, so its spend cannot be bounded "
                    f"({self.unknown(model)}); "
                    f"add it to the spec's teacher.prices (USD per 1M tokens: {{input: ..., output: ...}})"
                )


def check_max_cost(max_cost: float) -> None:
    if not math.isfinite(max_cost) or max_cost < 0:
        raise InputError(f"--max-cost {max_cost}: must be a finite amount of USD, 0 or more")
