"""What a teacher call costs, so spend can be shown live and capped with ``--max-cost``.

Prices are USD per million tokens (standard tier, no batch or cache discount) as published by
OpenAI; a spec overrides or extends them with ``teacher.prices``. Dated snapshots match their
family by the longest prefix (``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``).
"""

from __future__ import annotations

from collections.abc import Mapping

from promptbake.spec.models import Prices

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


class PriceTable:
    def __init__(self, overrides: Mapping[str, Prices] | None = None) -> None:
        self.prices = {**DEFAULT_PRICES, **(overrides or {})}

    def lookup(self, model: str) -> Prices | None:
        if "+" in model and model not in self.prices:
            # a fleet of several models (endpoints.py): which one answers is not known before,
            # so a budget counts the dearest of those with a price
            found = [p for p in map(self.lookup, model.split("+")) if p is not None]
            return max(found, key=lambda p: (p.output, p.input)) if found else None
        name = model.split(":")[1] if model.startswith("ft:") else model
        matches = [k for k in self.prices if name == k or name.startswith(k + "-")]
        return self.prices[max(matches, key=len)] if matches else None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one call; 0.0 when the model has no known price (``known`` tells which)."""
        price = self.lookup(model)
        if price is None:
            return 0.0
        return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000

    def known(self, model: str) -> bool:
        return self.lookup(model) is not None
