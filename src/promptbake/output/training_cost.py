"""What fine-tuning costs: the epochs a provider defaults to, the tokens it bills, its price.

Validation reports the billed tokens of a file; distillation prices the fine-tune into its
break-even. One set of rules for both, from OpenAI's cookbook and the prices in ``targets.py``
(inference prices, fine-tuned ones included, are ``teacher/pricing.py``'s).
"""

from __future__ import annotations

from dataclasses import dataclass

from promptbake.output.targets import get_target

# Epoch defaults from the cookbook: OpenAI aims at 3 epochs, but keeps n x epochs in [100, 25,000].
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


def default_epochs(n_examples: int) -> int:
    """OpenAI's default epoch count for a training set of ``n_examples`` (the cookbook rule)."""
    if n_examples <= 0:
        return 0
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def billed_tokens(lengths: list[int], limit: int | None, epochs: int) -> int:
    """Tokens charged for training: each example counts up to the limit, once per epoch."""
    return sum(min(limit, n) if limit else n for n in lengths) * epochs


def listed_price(target: str, model: str | None) -> float | None:
    """USD per 1M training tokens that targets.py lists for ``model`` at ``target``, or None: Together
    and Fireworks price by model size bracket on their pricing pages, which no table here copies."""
    limits = get_target(target).limits(model)
    return limits.train_usd_per_1m if limits else None


# USD per 1M training tokens when targets.py has no price for the model: OpenAI's gpt-4o-mini
# price (the cheapest widely used hosted fine-tune), so the estimate errs low, and says so.
DEFAULT_TRAIN_USD_PER_1M = 3.00


@dataclass(frozen=True)
class FineTuneEstimate:
    """A training bill with its parts, so a report can show how the total was reached."""

    tokens_per_epoch: int
    epochs: int
    usd_per_1m: float
    price_source: str
    cost: float


def finetune_estimate(lengths: list[int], model: str, *, epochs: int | None = None,
                      target: str = "openai") -> FineTuneEstimate:
    """Training cost of examples of ``lengths`` tokens: billed tokens × epochs × the training
    price targets.py lists for ``model`` (else ``DEFAULT_TRAIN_USD_PER_1M``, and it says so)."""
    limits = get_target(target).limits(model)
    epochs = default_epochs(len(lengths)) if epochs is None else epochs
    per_epoch = billed_tokens(lengths, limits.context if limits else None, 1)
    listed = listed_price(target, model)
    if listed is not None:
        price, source = listed, f"{target} training price for {model}"
    else:
        price, source = DEFAULT_TRAIN_USD_PER_1M, f"assumed (no {target} training price for {model})"
    return FineTuneEstimate(per_epoch, epochs, price, source, per_epoch * epochs * price / 1_000_000)
