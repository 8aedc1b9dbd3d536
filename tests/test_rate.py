"""promptbake rate without a browser: sources and matching, the hand-out rules, the statistics, the
server's guards and the results' text, JSON and report section. The page itself is driven in
Chromium by tests/test_rate_browser.py."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from ratedata import write_dataset, write_eval

from promptbake.cli.main import cli
from promptbake.errors import InputError, StoreError
from promptbake.rate import RateResults
from promptbake.rate.assign import REPEAT_GAP, Assigner, open_study
from promptbake.rate.sources import load_source, match
from promptbake.rate.stats import bradley_terry, judge_agreement, outcome, position_bias, wilson
from promptbake.rate.store import Rating, RatingStore


def study(tmp_path: Path, n: int = 6, **settings) -> RatingStore:
    data = write_dataset(tmp_path / "data", n)
    student = write_eval(tmp_path / "student.jsonl", n)
    return open_study(tmp_path / "ratings.db", [f"teacher={data}", f"student={student}"], **settings)


# --- sources -----------------------------------------------------------------------------------------


def test_eval_rows_carry_the_prompt_each_answer_replied_to(tmp_path):
    """`promptbake eval` files name the prompt, so `rate` can show it with the eval file alone."""
    data = write_dataset(tmp_path / "data", 3)
    with FakeServer(responder=lambda body: "Fine.").running() as srv:
        result = CliRunner().invoke(cli, ["eval", "--data", str(data / "test.jsonl"), "--out", "eval.jsonl",
                                          "--base-url", srv.base_url, "--model", "m", "-q"])
        assert result.exit_code == 0, result.output
        sent = [b["messages"] for b in srv.bodies]
    rows = [json.loads(line) for line in Path("eval.jsonl").read_text().splitlines()]
    assert [row["prompt"] for row in rows] == sent
    source = load_source("m=eval.jsonl")
    assert source.kind == "eval" and source.prompts["ex001"] == sent[1] and source.answers["ex001"].text == "Fine."


def test_prompts_come_from_a_dataset_when_an_old_eval_file_has_none(tmp_path):
    data = write_dataset(tmp_path / "data", 4)
    old = write_eval(tmp_path / "old.jsonl", 4, with_prompt=False)
    items = match([load_source(str(data)), load_source(str(old))])
    assert [i.id for i in items] == ["ex000", "ex001", "ex002", "ex003"]
    assert items[1].prompt[-1]["content"].startswith("Customer 1:") and items[1].category == "angry"
    other = write_eval(tmp_path / "other.jsonl", 4, with_prompt=False)
    with pytest.raises(InputError, match=r"old.jsonl: its lines carry no prompt .*run the same `promptbake eval`"):
        match([load_source(str(old)), load_source(str(other))])


def test_sources_that_cannot_be_rated_are_refused_in_one_line(tmp_path):
    data = write_dataset(tmp_path / "data", 3)
    (tmp_path / "student").mkdir()
    with pytest.raises(InputError, match=r"neither a built dataset .*nor a student `promptbake train` wrote"):
        load_source(str(tmp_path / "student"))
    sweep = tmp_path / "sweep.jsonl"
    sweep.write_text(write_eval(tmp_path / "a.jsonl", 2).read_text() * 2)
    with pytest.raises(InputError, match="answered twice"):
        load_source(str(sweep))
    mismatched = write_eval(tmp_path / "b.jsonl", 3)
    rows = [json.loads(line) for line in mismatched.read_text().splitlines()]
    rows[2]["prompt"] = [{"role": "user", "content": "another question"}]
    mismatched.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match="example ex002 has different prompts"):
        match([load_source(str(data)), load_source(str(mismatched))])
    with pytest.raises(InputError, match="two sources are named"):
        match([load_source(f"x={data}"), load_source(f"x={mismatched}")])
    with pytest.raises(InputError, match="at least two sources"):
        match([load_source(str(data))])


def test_a_failed_answer_leaves_its_item_out(tmp_path):
    data = write_dataset(tmp_path / "data", 3)
    student = write_eval(tmp_path / "s.jsonl", 3)
    rows = [json.loads(line) for line in student.read_text().splitlines()]
    rows[1].update(output=None, error="timeout")
    student.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [i.id for i in match([load_source(str(data)), load_source(str(student))])] == ["ex000", "ex002"]


# --- hand-out ---------------------------------------------------------------------------------------


def test_each_unit_goes_to_raters_per_item_raters_held_ones_first(tmp_path):
    with study(tmp_path, 4, raters_per_item=2, repeat_share=0) as store:
        hand = Assigner(store)
        first = hand.current("alice")
        assert first is not None and hand.current("alice") == first  # not rated: shown again, not a new one
        hand.rate("alice", first.id, "left")
        bob = hand.current("bob")
        assert bob is not None and bob.unit == first.unit  # the unit alice holds is filled up first
        alice_units = {first.unit}
        while (shown := hand.current("alice")) is not None:
            alice_units.add(shown.unit)
            hand.rate("alice", shown.id, "tie")
        assert len(alice_units) == 4 and hand.progress("alice").left == 0
        bob_units = set()
        while (shown := hand.current("bob")) is not None:
            bob_units.add(shown.unit)
            hand.rate("bob", shown.id, "skip" if len(bob_units) == 2 else "right")
        assert bob_units == alice_units
        carol = hand.current("carol")  # every unit has its 2 raters, except the one bob skipped
        assert carol is not None and hand.progress("carol").left == 1
        hand.rate("carol", carol.id, "left")
        assert hand.current("carol") is None


def test_sides_are_drawn_per_rater_and_item_and_stored(tmp_path):
    with study(tmp_path, 20, raters_per_item=3, repeat_share=0, seed=5) as store:
        hand = Assigner(store)
        lefts = []
        while (shown := hand.current("alice")) is not None:
            lefts.append(shown.left)
            hand.rate("alice", shown.id, "left")
        assert 4 <= lefts.count("teacher") <= 16  # both sides, about half each (seeded: fixed)
        ratings = store.ratings()
        assert [r.left for r in ratings] == lefts
        assert [outcome(r) for r in ratings] == ["a" if left == "teacher" else "b" for left in lefts]


def test_a_share_of_items_comes_back_later_with_sides_swapped(tmp_path):
    with study(tmp_path, 8, repeat_share=1.0) as store:
        hand = Assigner(store)
        shown_units, repeats = [], []
        while (shown := hand.current("alice")) is not None:
            if shown.repeat_of is not None:
                first = store.shown(shown.repeat_of)
                assert first is not None and (shown.left, shown.right) == (first.right, first.left)
                repeats.append(len(shown_units))
                verdict = "left" if len(repeats) % 2 else "right"  # half consistent (sides swapped)
            else:
                verdict = "right"
            shown_units.append(shown.unit)
            hand.rate("alice", shown.id, verdict)
        assert len(shown_units) == 16 and len(set(shown_units)) == 8
        assert repeats[0] == REPEAT_GAP + 1  # the first repeat waits REPEAT_GAP ratings after its original
        summary = RateResults.load(store.path).summary
        assert summary["repeats"] == 8 and summary["counted"] == 8  # repeats never count as wins
        assert summary["consistency"]["repeats"] == 8 and summary["consistency"]["agreed"] == 4


def test_undo_brings_back_the_last_item_and_a_double_press_counts_once(tmp_path):
    with study(tmp_path, 3, repeat_share=0) as store:
        hand = Assigner(store)
        one = hand.current("alice")
        assert one is not None
        hand.rate("alice", one.id, "left")
        hand.rate("alice", one.id, "right")  # the same item again (a double key press): ignored
        two = hand.current("alice")
        assert two is not None and two.unit != one.unit
        assert hand.undo("alice")
        assert hand.current("alice") == one and hand.progress("alice").done == 0
        hand.rate("alice", one.id, "tie")
        assert hand.current("alice") == two
        assert [(r.shown, r.verdict) for r in store.ratings()] == [(one.id, "tie")]
        with pytest.raises(InputError, match="was not shown to 'bob'"):
            hand.rate("bob", two.id, "left")
        with pytest.raises(InputError, match="verdict 'great'"):
            hand.rate("alice", two.id, "great")


def test_a_restarted_study_must_rate_the_same_answers(tmp_path):
    store = study(tmp_path, 3)
    store.close()
    with open_study(tmp_path / "ratings.db", []) as again:  # no sources: the store has them
        assert [s["name"] for s in again.sources()] == ["teacher", "student"]
    write_eval(tmp_path / "student.jsonl", 3, answer=lambda i: "changed")
    with pytest.raises(InputError, match="rates teacher, student, with other answers"):
        open_study(tmp_path / "ratings.db", [f"teacher={tmp_path / 'data'}", f"student={tmp_path / 'student.jsonl'}"])
    with pytest.raises(StoreError, match="no such ratings store"):
        open_study(tmp_path / "none.db", [])


def test_ratings_is_a_file_or_a_directory_holding_one(tmp_path):
    data = write_dataset(tmp_path / "data", 2)
    student = write_eval(tmp_path / "s.jsonl", 2)
    with open_study(tmp_path / "study", [str(data), str(student)]) as store:
        assert store.path == tmp_path / "study" / "ratings.db"


# --- statistics -------------------------------------------------------------------------------------


def rating(n: int, a: str, b: str, verdict: str, *, left: str | None = None, rater: str = "r", unit: int = 0,
           judge: tuple[float | None, float | None] = (None, None), category: str = "all") -> Rating:
    return Rating(n, rater, n, unit or n, f"i{n}", category, a, b, left or a, verdict, "", None, *judge)


def test_wilson_interval_matches_the_published_values():
    low, high = wilson(8, 10) or (0, 0)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # Newcombe (1998), 8/10
    assert wilson(0, 0) is None
    assert wilson(10, 10)[1] == 1.0  # type: ignore[index]


def test_bradley_terry_recovers_consistent_odds():
    """A beats B 3:1, B beats C 3:1, A beats C 9:1: the model fits exactly, so the MLE's rating
    gaps are 400·log10(3) and 400·log10(9) Elo points."""
    ratings, n = [], 0
    for a, b, wins, losses in (("A", "B", 30, 10), ("B", "C", 30, 10), ("A", "C", 45, 5)):
        for k in range(wins + losses):
            n += 1
            ratings.append(rating(n, a, b, "left" if k < wins else "right"))
    bt = bradley_terry(ratings, ["A", "B", "C"], rounds=200)
    assert bt is not None
    got = {x["source"]: x for x in bt["strengths"]}
    assert [x["source"] for x in bt["strengths"]] == ["A", "B", "C"]
    assert math.isclose(got["A"]["rating"] - got["B"]["rating"], 400 * math.log10(3), abs_tol=0.5)
    assert math.isclose(got["A"]["rating"] - got["C"]["rating"], 400 * math.log10(9), abs_tol=0.5)
    assert math.isclose(sum(x["rating"] for x in got.values()) / 3, 1000, abs_tol=1e-6)
    assert all(x["low"] < x["rating"] < x["high"] for x in got.values())
    assert bt["battles"]["A"]["C"] == 50 and bt["win_fraction"]["A"]["C"] == 0.9
    assert bradley_terry(ratings[:40], ["A", "B"]) is None  # two sources: the pair's win rate says it all


def test_ties_count_half_in_bradley_terry_and_apart_in_the_pair_table(tmp_path):
    ratings = [rating(1, "A", "B", "tie"), rating(2, "A", "B", "both_bad"), rating(3, "B", "C", "left"),
               rating(4, "A", "C", "right", left="C")]
    bt = bradley_terry(ratings, ["A", "B", "C"], rounds=50)
    assert bt is not None and bt["win_fraction"]["A"]["B"] == 0.5 and bt["win_fraction"]["C"]["A"] == 0.0


def test_position_bias_counts_the_left_side():
    ratings = [rating(i, "A", "B", "left" if i < 9 else "right", left="A" if i % 2 else "B") for i in range(10)]
    bias = position_bias(ratings)
    assert (bias["left_wins"], bias["decisive"]) == (9, 10)
    assert math.isclose(bias["p"], 22 / 1024)  # two-sided binomial: P(≥9 or ≤1 of 10)


def test_judge_agreement_against_the_human_verdicts():
    rows = [("left", 5, 2), ("right", 4, 1), ("left", 3, 3), ("tie", 2, 2), ("right", 1, 4), ("both_bad", 1, 1)]
    ratings = [rating(i, "A", "B", v, judge=(ja, jb)) for i, (v, ja, jb) in enumerate(rows, 1)]
    j = judge_agreement(ratings)
    assert j is not None and j["n"] == 6 and j["sided"] == 4
    assert (j["judge_agrees"], j["judge_ties"]) == (2, 1)  # right/4-1 disagrees, left/3-3 is a judge tie
    assert j["spearman"] is not None and 0 < j["spearman"] < 1 and 0 < j["kendall"] < 1
    assert judge_agreement([rating(1, "A", "B", "left")]) is None  # no judge scores: no section


# --- the server -------------------------------------------------------------------------------------


def call(store: RatingStore, token: str | None, requests):
    from aiohttp.test_utils import TestClient, TestServer

    from promptbake.rate.server import RatingApp

    async def main():
        client = TestClient(TestServer(RatingApp(store, token).app(), host="127.0.0.1"))
        await client.start_server()
        try:
            out = []
            for method, path, kwargs in requests:
                response = await client.request(method, path, **kwargs)
                out.append((response.status, await response.text(), response.headers))
            return out
        finally:
            await client.close()

    return asyncio.run(main())


def test_with_a_token_every_request_needs_it(tmp_path):
    with study(tmp_path, 2) as store:
        first, *rest = call(store, "s3cret", [
            ("GET", "/?token=s3cret", {}),
            ("GET", "/", {}),
            ("GET", "/api/next?rater=al&token=wrong", {}),
            ("GET", "/api/next?rater=al&token=s3cret", {}),
            ("POST", "/api/rate?token=s3cret", {"json": {"rater": "al", "item": 1, "verdict": "left"}}),
            ("POST", "/api/rate", {"json": {"rater": "al", "item": 1, "verdict": "left"},
                                   "headers": {"X-Promptbake-Token": "s3cret"}}),
        ])
        assert first[0] == 200 and "default-src 'none'" in first[2]["Content-Security-Policy"]
        assert [status for status, _, _ in rest] == [403, 403, 200, 403, 200]
        assert json.loads(rest[-1][1])["done"] == 1 and len(store.ratings()) == 1


def test_without_a_token_only_loopback_hosts_and_json_posts(tmp_path):
    with study(tmp_path, 2) as store:
        got = call(store, None, [
            ("GET", "/api/next?rater=al", {"headers": {"Host": "attacker.example:8770"}}),
            ("POST", "/api/rate", {"data": "rater=al&item=1&verdict=left",
                                   "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
            ("GET", "/api/next?rater=", {}),
            ("GET", "/api/next?rater=al", {}),
        ])
        assert [status for status, _, _ in got] == [403, 415, 400, 200]
        body = json.loads(got[-1][1])
        assert body["item"]["left"] and body["item"]["prompt"][-1]["role"] == "user"
        assert "teacher" not in got[-1][1] and "student" not in got[-1][1]


# --- results ----------------------------------------------------------------------------------------


def test_results_as_text_json_and_a_report_section(tmp_path):
    n = 6
    data = write_dataset(tmp_path / "data", n)
    student = write_eval(tmp_path / "student.jsonl", n, judge=lambda i: 1 + i % 5)
    third = write_eval(tmp_path / "third.jsonl", n, answer=lambda i: f"<b>third</b> {i}")
    with open_study(tmp_path / "r.db", [f"teacher={data}", f"student={student}", f"<i>odd</i>={third}"],
                    repeat_share=0, raters_per_item=2) as store:
        hand = Assigner(store)
        for rater in ("al", "bo"):
            while (shown := hand.current(rater)) is not None:
                hand.rate(rater, shown.id, "left" if shown.unit % 3 else "tie")
    runner = CliRunner()
    text = runner.invoke(cli, ["rate", "--results", str(tmp_path / "r.db")])
    assert text.exit_code == 0, text.output
    assert "Bradley–Terry strengths" in text.output and "Krippendorff's alpha" in text.output
    assert "per category:" in text.output and "position: the left answer won" in text.output
    as_json = runner.invoke(cli, ["rate", "--results", str(tmp_path / "r.db"), "--json"])
    summary = json.loads(as_json.output)
    assert summary["sources"] == ["teacher", "student", "<i>odd</i>"] and summary["ratings"] == 2 * 3 * n
    assert len(summary["pairs"]) == 3 and summary["agreement"]["units"] == 3 * n
    assert summary["judge"] is None  # judge scores on one side only: nothing to compare
    out = runner.invoke(cli, ["report", str(tmp_path / "data"), "--ratings", str(tmp_path / "r.db"),
                              "-o", str(tmp_path / "report.html")])
    assert out.exit_code == 0, out.output
    html = (tmp_path / "report.html").read_text()
    assert 'id="ratings"' in html and "Bradley–Terry" in html
    assert "&lt;i&gt;odd&lt;/i&gt;" in html and "<i>odd</i>" not in html


def test_the_command_line_says_what_is_missing(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["rate", "a", "b"]).exit_code == 2
    out = runner.invoke(cli, ["rate", "--results", str(tmp_path)])
    assert out.exit_code == 1 and "no such ratings store" in out.output
    data = write_dataset(tmp_path / "data", 2)
    out = runner.invoke(cli, ["rate", str(data), "--out", str(tmp_path / "r.db")])
    assert out.exit_code == 2 and "at least two sources" in out.output
