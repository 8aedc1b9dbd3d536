"""What a teacher call costs, so spend can be shown live and capped with ``--max-cost``.

Prices are USD per million tokens (standard tier, no batch or cache discount) as published by
OpenAI; a spec overrides or extends them with ``teacher.prices``. Dated snapshots match their
family by the longest prefix (``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``). A fine-tuned model
(``ft:gpt-4o-mini:acme:rude:abc123``) costs more per token than its base: it is priced at the
base price times the family's fine-tuned factor, and is unknown when the family has none.
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

# Fine-tuned inference price ÷ base price, input and output alike (OpenAI pricing page, 2026-11:
# fine-tuned gpt-4o-mini $0.30/$1.20 vs $0.15/$0.60 base; gpt-4o $3.75/$15 vs $2.50/$10).
FT_PRICE_FACTORS = {"gpt-4o-mini": 2.0, "gpt-4.1-mini": 2.0, "gpt-4.1-nano": 2.0, "gpt-4o": 1.5, "gpt-4.1": 1.5}
DEFAULT_FT_PRICE_FACTOR = 2.0  # what break-even estimates assume for a family not listed above


def base_model(model: str) -> str:
    """``ft:gpt-4o-mini:acme:rude:abc123`` → ``gpt-4o-mini``; any other name unchanged."""
    return model.split(":")[1] if model.startswith("ft:") else model


def _family(table: Mapping[str, Prices | float], name: str) -> str | None:
    """The longest key naming ``name`` or its family (``-`` snapshot or ``:`` tag suffix)."""
    matches = [k for k in table if name == k or name.startswith((k + "-", k + ":"))]
    return max(matches, key=len) if matches else None


def ft_price_factor(model: str) -> float:
    """Fine-tuned ÷ base price for ``model``'s family; ``DEFAULT_FT_PRICE_FACTOR`` if unlisted."""
    key = _family(FT_PRICE_FACTORS, base_model(model))
    return FT_PRICE_FACTORS[key] if key is not None else DEFAULT_FT_PRICE_FACTOR


# OpenAI's Batch API costs half the standard price for every model (and so do Azure OpenAI's
# global batch deployments); other providers may differ: set batch_input/batch_output per model
BATCH_DISCOUNT = 0.5


class PriceTable:
    def __init__(self, overrides: Mapping[str, Prices] | None = None) -> None:
        self.prices = {**DEFAULT_PRICES, **(overrides or {})}
        self._found: dict[str, Prices | None] = {}  # every answer is priced: look each model up once

    def lookup(self, model: str) -> Prices | None:
        """The model's price: its own entry (``teacher.prices`` may name a fine-tune), else for
        a fine-tune its base price × the family's fine-tuned factor; None when unknown."""
        if model not in self._found:
            self._found[model] = self._lookup(model)
        return self._found[model]

    def _lookup(self, model: str) -> Prices | None:
        key = _family(self.prices, model)
        if key is not None:
            return self.prices[key]
        if not model.startswith("ft:"):
            return None
        base = base_model(model)
        base_key, factor_key = _family(self.prices, base), _family(FT_PRICE_FACTORS, base)
        if base_key is None or factor_key is None:
            return None
        price, factor = self.prices[base_key], FT_PRICE_FACTORS[factor_key]
        return Prices(input=price.input * factor, output=price.output * factor)

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

    def require(self, models: Iterable[str], max_cost: float | None) -> None:
        """Under ``--max-cost`` every model must have a price: an unknown one would be counted
        as free and the bound would not hold. Raises InputError naming the model."""
        if max_cost is None:
            return
        check_max_cost(max_cost)
        for model in sorted(set(models)):
            if not self.known(model):
                raise InputError(
                    f"--max-cost: no price is known for model {model!r}, so its spend cannot be bounded; "
                    f"add it to the spec's teacher.prices (USD per 1M tokens: {{input: ..., output: ...}})"
                )


def check_max_cost(max_cost: float) -> None:
    if not math.isfinite(max_cost) or max_cost < 0:
        raise InputError(f"--max-cost {max_cost}: must be a finite amount of USD, 0 or more")
