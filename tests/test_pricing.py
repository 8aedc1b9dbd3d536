"""Prices by exact name: a dated snapshot or variant priced on its own is never priced as its
(cheaper) family, and a name the table does not hold is priced as its family only as a guess that
the dry run and ``--max-cost`` name."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import MINIMAL_SPEC, list_then_reply_responder, write_spec

from promptbake.cli.main import cli
from promptbake.specification.models import Prices
from promptbake.teacher.pricing import PriceTable

ROOT = Path(__file__).resolve().parent.parent


def price(model: str, table: PriceTable | None = None) -> tuple[float, float]:
    found = (table or PriceTable()).lookup(model)
    assert found is not None, model
    return found.input, found.output


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
    match = PriceTable().match(model)
    assert match is not None and match.exact
    assert price(model) == pytest.approx(expected)


def test_an_unlisted_snapshot_is_its_familys_price_marked_as_a_guess():
    match = PriceTable().match("gpt-4o-2099-01-01")
    assert match is not None and not match.exact
    assert (match.price.input, match.price.output) == (2.50, 10.00)
    assert "guessed from its family, gpt-4o's price" in match.describe("gpt-4o-2099-01-01")
    assert PriceTable().guesses(["gpt-4o", "gpt-4o-2099-01-01"]) == [match.describe("gpt-4o-2099-01-01")]
    # the longest family wins: a new gpt-5-pro snapshot is not priced as gpt-5
    assert price("gpt-5-pro-2099-01-01") == (15.00, 120.00)


def test_fine_tunes_are_exact_when_their_base_is():
    assert PriceTable().match("ft:gpt-4o-mini-2024-07-18:acme::x").exact  # type: ignore[union-attr]
    assert price("ft:gpt-4o-2024-05-13:acme::x") == pytest.approx((7.50, 22.50))  # 1.5 × the snapshot's own
    guess = PriceTable().match("ft:gpt-4o-2099-01-01:acme::x")
    assert guess is not None and not guess.exact


def test_the_spec_prices_a_family_and_its_snapshots():
    table = PriceTable({"gpt-4o": Prices(input=3.0, output=12.0), "gpt-4o-2024-05-13": Prices(input=6, output=18)})
    assert price("gpt-4o-2024-08-06", table) == (3.0, 12.0)  # the spec's family price, not the default
    assert price("gpt-4o-2024-05-13", table) == (6.0, 18.0)
    assert table.match("gpt-4o-2024-05-13").exact  # type: ignore[union-attr]


def test_the_dry_run_says_which_prices_are_exact_and_which_are_guesses():
    spec = str(ROOT / "generators" / "rude_agent.yaml")
    exact = CliRunner().invoke(cli, ["expand", spec, "--dry-run", "--model", "gpt-4o-2024-05-13"])
    assert exact.exit_code == 0, exact.output
    assert "price: gpt-4o-2024-05-13: exact" in exact.output
    guessed = CliRunner().invoke(cli, ["expand", spec, "--dry-run", "--model", "gpt-4o-2099-01-01"])
    assert guessed.exit_code == 0, guessed.output
    assert "price: gpt-4o-2099-01-01: guessed from its family, gpt-4o's price" in guessed.output
    # the snapshot priced on its own ($5/$15) costs 1.5-2 times the family ($2.50/$10): the estimate shows it
    cost = [float(r.output.split("estimated cost ≤ $")[1].split()[0]) for r in (exact, guessed)]
    assert 1.5 * cost[1] <= cost[0] <= 2 * cost[1]


def test_max_cost_says_when_a_price_is_a_guess(tmp_path):
    path = write_spec(tmp_path, MINIMAL_SPEC.replace("model: gpt-4o-mini", "model: gpt-4o-mini-2099-01-01"))
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        result = CliRunner().invoke(cli, ["generate", str(path), "--store", str(tmp_path / "s.db"), "--base-url",
                                          srv.base_url, "-q", "--max-cost", "5"])
    assert result.exit_code == 0, result.output
    assert "--max-cost: the price of gpt-4o-mini-2099-01-01: guessed from its family, gpt-4o-mini's price" \
        in result.output
