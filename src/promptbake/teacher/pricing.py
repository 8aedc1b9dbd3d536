"""What a teacher call costs, so spend can be shown live and capped with ``--max-cost``.

Prices are USD per million tokens (standard tier, no batch or cache discount) as published by
OpenAI; a spec overrides or extends them with ``teacher.prices``. A model is priced by its exact
name: the families and every dated snapshot or variant OpenAI prices on its own are in the table
(``gpt-4o-2024-05-13`` costs twice what ``gpt-4o`` costs; ``gpt-5-pro`` twelve times ``gpt-5``).
Only a name the table does not hold is priced as its family, the longest entry it starts with
(``gpt-4o-2099-01-01`` → ``gpt-4o``): a guess, which :meth:`PriceTable.match` marks as one and
the dry run and ``--max-cost`` name. A fine-tuned model (``ft:gpt-4o-mini:acme:rude:abc123``)
costs more per token than its base: it is priced at the base price times the family's fine-tuned
factor, and is unknown when the family has none.

Why not the ``genai-prices`` package, which is maintained: it has no Batch API prices and no
fine-tuned prices (``ft:...`` names are unknown to it), and it takes about a second to import,
more than a whole dry run. The snapshot entries below agree with its table (2026-12).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class PriceMatch:
    """A model's price and where it comes from: ``exact`` (the table names the model, or a
    fine-tune's base, with the documented fine-tuned factor) or a guess from ``basis``, the
    family entry its name starts with."""

    price: Prices
    exact: bool
    basis: str

    def describe(self, model: str) -> str:
        """``gpt-4o-mini: exact`` or why it is a guess, for the dry run and --max-cost."""
        if self.exact:
            return f"{model}: exact" if self.basis == model else f"{model}: exact ({self.basis})"
        return (f"{model}: guessed from its family, {self.basis} (not in the price table; set "
                f"teacher.prices.{model} to be sure)")


class PriceTable:
    def __init__(self, overrides: Mapping[str, Prices] | None = None) -> None:
        self.overrides = dict(overrides or {})
        self.prices = {**DEFAULT_PRICES, **SNAPSHOT_PRICES, **self.overrides}
        self._found: dict[str, PriceMatch | None] = {}  # every answer is priced: look each model up once

    def lookup(self, model: str) -> Prices | None:
        """The model's price (see :meth:`match`); None when unknown."""
        match = self.match(model)
        return match.price if match is not None else None

    def match(self, model: str) -> PriceMatch | None:
        """The model's own entry (``teacher.prices`` may name a fine-tune); a family the spec
        prices covers its snapshots, as a guess; for a fine-tune, its base's price × the family's
        fine-tuned factor; else its family's price, as a guess. None when unknown."""
        if model not in self._found:
            self._found[model] = self._match(model)
        return self._found[model]

    def _match(self, model: str) -> PriceMatch | None:
        if model in self.overrides:
            return PriceMatch(self.overrides[model], True, model)
        key = _family(self.overrides, model)  # a family priced in the spec covers its snapshots
        if key is not None:
            return PriceMatch(self.overrides[key], False, f"{key}'s price in teacher.prices")
        if model in self.prices:
            return PriceMatch(self.prices[model], True, model)
        if model.startswith("ft:"):
            base = base_model(model)
            found, factor_key = self.match(base), _family(FT_PRICE_FACTORS, base)
            if found is None or factor_key is None:
                return None
            factor = FT_PRICE_FACTORS[factor_key]
            price = Prices(input=found.price.input * factor, output=found.price.output * factor)
            how = f"{factor:g} × {base}'s price, fine-tuned"
            return PriceMatch(price, found.exact, how if found.exact else f"{how}; {found.basis}")
        key = _family(self.prices, model)
        return PriceMatch(self.prices[key], False, f"{key}'s price") if key is not None else None

    def guesses(self, models: Iterable[str]) -> list[str]:
        """What to say about the models whose price is a family guess (see :meth:`match`)."""
        found = ((m, self.match(m)) for m in sorted(set(models)))
        return [match.describe(m) for m, match in found if match is not None and not match.exact]

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
