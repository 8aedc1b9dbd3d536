"""Only known model names are priced, each by its exact name: a typo is refused with the closest
name, never priced as a dearer model by prefix, and a dated snapshot or variant priced on its own
is never priced as its (cheaper) family."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import write_spec

from promptbake.cli.main import cli
from promptbake.errors import InputError
from promptbake.specification.models import Prices
from promptbake.teacher.pricing import DEFAULT_PRICES, PriceTable

ROOT = Path(__file__).resolve().parent.parent


def price(model: str, table: PriceTable | None = None) -> tuple[float, float]:
    found = (table or PriceTable()).lookup(model)
    assert found is not None, model
    return found.input, found.output


def test_a_typo_is_unknown_not_priced_as_the_family_it_starts_with():
    prices = PriceTable()
    assert prices.lookup("gpt-4o-mni") is None  # was gpt-4o's price: 17x the model meant
    assert prices.lookup("gpt-4o-mini-preview-x") is None
    assert prices.unknown("gpt-4o-mni") == "unknown model 'gpt-4o-mni' (did you mean gpt-4o-mini?)"
    assert prices.unknown("vendor/llama-70b") == "unknown model 'vendor/llama-70b'"
    with pytest.raises(InputError, match=r"unknown model 'gpt-4o-mni' \(did you mean gpt-4o-mini\?\)"):
        prices.require(["gpt-4o-mni"], max_cost=1.0)


@pytest.mark.parametrize("model, expected", [
    ("gpt-4o-2024-05-13", (5.00, 15.00)),  # twice gpt-4o's price: the family would undercount
    ("gpt-5-pro", (15.00, 120.00)),  # twelve times gpt-5's
    ("gpt-5-pro-2025-10-06", (15.00, 120.00)),
    ("o3-pro", (20.00, 80.00)),
    ("gpt-3.5-turbo-16k", (3.00, 4.00)),
    ("gpt-4o-2024-08-06", (2.50, 10.00)),
    ("gpt-4o-mini-2024-07-18", (0.15, 0.60)),
])
def test_snapshots_and_variants_have_their_own_price(model, expected):
    assert price(model) == pytest.approx(expected)


def test_an_unlisted_snapshot_is_unknown_not_priced_as_its_family():
    prices = PriceTable()
    assert prices.lookup("gpt-4o-2099-01-01") is None  # not a snapshot OpenAI published
    assert prices.lookup("gpt-5-pro-2099-01-01") is None
    assert "did you mean" in prices.unknown("gpt-4o-2099-01-01")


def test_fine_tunes_are_priced_from_their_exact_base():
    prices = PriceTable()
    ft = prices.lookup("ft:gpt-4o-mini-2024-07-18:acme:rude:abc123")
    assert ft is not None and ft.input == 2 * DEFAULT_PRICES["gpt-4o-mini"].input
    assert price("ft:gpt-4o-2024-05-13:acme::x") == pytest.approx((7.50, 22.50))  # 1.5 × the snapshot's own
    assert prices.lookup("ft:gpt-4o-2099-01-01:acme::x") is None


def test_the_spec_prices_only_the_names_it_lists():
    table = PriceTable({"gpt-4o": Prices(input=3.0, output=12.0), "gpt-4o-2024-05-13": Prices(input=6, output=18)})
    assert price("gpt-4o", table) == (3.0, 12.0)
    assert price("gpt-4o-2024-05-13", table) == (6.0, 18.0)
    assert price("gpt-4o-2024-08-06", table) == (2.50, 10.00)  # its own default entry, not the spec's family


def test_the_dry_run_names_each_models_price_and_its_entry():
    spec = str(ROOT / "generators" / "rude_agent.yaml")
    snapshot = CliRunner().invoke(cli, ["expand", spec, "--dry-run", "--model", "gpt-4o-2024-05-13"])
    assert snapshot.exit_code == 0, snapshot.output
    assert "price: gpt-4o-2024-05-13: $5 in, $15 out per 1M tokens (its own entry)" in snapshot.output
    family = CliRunner().invoke(cli, ["expand", spec, "--dry-run", "--model", "gpt-4o"])
    assert family.exit_code == 0, family.output
    # the snapshot priced on its own ($5/$15) costs 1.5-2 times the family ($2.50/$10): the estimate shows it
    cost = [float(r.output.split("estimated cost ≤ $")[1].split()[0]) for r in (snapshot, family)]
    assert 1.5 * cost[1] <= cost[0] <= 2 * cost[1]


def test_run_under_max_cost_refuses_a_typo_before_any_request(tmp_path):
    spec = write_spec(tmp_path)
    result = CliRunner().invoke(cli, ["run", str(spec), "--out", "out", "--model", "gpt-4o-mni", "--max-cost", "1",
                                      "--base-url", "http://127.0.0.1:9/v1"])
    assert result.exit_code == 2, result.output
    assert "did you mean gpt-4o-mini?" in result.output


def test_dry_run_says_the_model_is_unknown_and_suggests_the_closest(tmp_path):
    spec = write_spec(tmp_path)
    result = CliRunner().invoke(cli, ["expand", str(spec), "--dry-run", "--model", "gpt-4o-mni"])
    assert result.exit_code == 0, result.output
    assert "unknown model 'gpt-4o-mni' (did you mean gpt-4o-mini?)" in result.output
