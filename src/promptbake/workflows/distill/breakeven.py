"""Break-even: the prompt tokens a distilled model saves per call, and the calls after which the
saving repays generation plus fine-tuning. Priced honestly: a fine-tuned model usually costs more
per token than its base model, so the saving can be negative and the answer "never".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from promptbake.output.training_cost import finetune_estimate
from promptbake.teacher.pricing import PriceTable, base_model, ft_price_factor
from promptbake.teacher.tokens import TOKENS_PER_MESSAGE, count_messages, count_tokens


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


def system_tokens(text: str, model: str) -> int:
    """What a system message costs in a request: its text plus the chat format's overhead."""
    return count_tokens(text, model) + TOKENS_PER_MESSAGE


def break_even_section(summary: dict[str, Any], train: list[dict[str, Any]], model: str, prices: PriceTable,
                        ft_factor: float | None, epochs: int | None) -> dict[str, Any]:
    price = prices.lookup(base_model(model))  # the base model's price; the fine-tune's is derived below
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
