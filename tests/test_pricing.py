"""Only known model names are priced: a typo is refused with the closest name, never priced as a
dearer model by prefix; dated snapshots are priced as their family."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from helpers import write_spec

from promptbake.cli.main import cli
from promptbake.errors import InputError
from promptbake.teacher.pricing import DEFAULT_PRICES, PriceTable


def test_a_typo_is_unknown_not_priced_as_the_family_it_starts_with():
    prices = PriceTable()
    assert prices.lookup("gpt-4o-mni") is None  # was gpt-4o's price: 17x the model meant
    assert prices.lookup("gpt-4o-mini-preview-x") is None
    assert prices.unknown("gpt-4o-mni") == "unknown model 'gpt-4o-mni' (did you mean gpt-4o-mini?)"
    assert prices.unknown("vendor/llama-70b") == "unknown model 'vendor/llama-70b'"
    with pytest.raises(InputError, match=r"unknown model 'gpt-4o-mni' \(did you mean gpt-4o-mini\?\)"):
        prices.require(["gpt-4o-mni"], max_cost=1.0)


def test_dated_snapshots_are_priced_as_their_family():
    prices = PriceTable()
    assert prices.lookup("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert prices.lookup("gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]
    assert prices.lookup("gpt-4o-2099-01-01") is None  # not a snapshot OpenAI published
    ft = prices.lookup("ft:gpt-4o-mini-2024-07-18:acme:rude:abc123")
    assert ft is not None and ft.input == 2 * DEFAULT_PRICES["gpt-4o-mini"].input


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
