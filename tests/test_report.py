"""promptbake report and build --sizes: what the page says, checked against the files it reports on.

The page itself is loaded in a real browser by test_report_browser.py."""

from __future__ import annotations

import html
import json
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from reportdata import build_dataset, write_sweep

import promptbake
from promptbake.cli.main import cli
from promptbake.curate.sizes import nested_subsets, priority_order
from promptbake.output.report import write_report
from promptbake.records import Example

ROOT = Path(__file__).parent.parent


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def plots(page: str) -> dict[str, str]:
    """Each inline plot's SVG, by name."""
    return dict(re.findall(r'<figure class="plot" data-plot="([^"]+)">(<svg.*?</svg>)', page, re.S))


# --- build --sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_every_prefix_of_the_priority_order_is_within_one_of_proportional(seed):
    rng = random.Random(seed)
    sizes = {f"c{k}": rng.randint(1, 120) for k in range(rng.randint(2, 12))}
    train = [Example(id=f"{c}{j}", category=c, messages=[]) for c, n in sizes.items() for j in range(n)]
    rng.shuffle(train)
    total = len(train)
    taken: Counter[str] = Counter()
    for t, i in enumerate(priority_order(train), 1):
        taken[train[i].category] += 1
        assert all(abs(taken[c] - t * n / total) < 1 for c, n in sizes.items()), (t, taken)
    assert taken == Counter(sizes)  # every example, once


def test_subsets_are_nested_in_train_order_and_too_large_sizes_are_named():
    train = [Example(id=str(i), category="ab"[i % 3 == 0], messages=[]) for i in range(30)]
    subsets, warnings = nested_subsets(train, [20, 5, 10, 31, 30])
    assert list(subsets) == [5, 10, 20, 30]
    assert warnings == ["--sizes 31: the train split has only 30 examples; train.31.jsonl not written"]
    position = {ex.id: i for i, ex in enumerate(train)}
    for small, large in zip([5, 10, 20], [10, 20, 30], strict=True):
        assert {e.id for e in subsets[small]} < {e.id for e in subsets[large]}
    for rows in subsets.values():
        assert [position[e.id] for e in rows] == sorted(position[e.id] for e in rows)
    assert Counter(e.category for e in subsets[10]) == {"a": 7, "b": 3}  # 10 of 30 at 2:1


def test_build_sizes_writes_nested_stratified_subsets_and_leaves_test_alone(tmp_path):
    out, output = build_dataset(tmp_path, "--sizes", "4,8,100")
    assert "warning: --sizes 100: the train split has only 12 examples; train.100.jsonl not written" in output
    assert not (out / "train.100.jsonl").exists()
    train, small, large = lines(out / "train.jsonl"), lines(out / "train.4.jsonl"), lines(out / "train.8.jsonl")
    assert (len(small), len(large)) == (4, 8)
    assert set(small) < set(large) < set(train)
    manifest = json.loads((out / "manifest.json").read_text())
    share = {c: v["train"] / manifest["train"] for c, v in manifest["categories"].items()}
    for n in (4, 8):
        assert sum(manifest["sizes"][str(n)].values()) == n
        assert all(abs(manifest["sizes"][str(n)][c] - n * share[c]) < 1 for c in share)
    # the same build without --sizes: train and test byte for byte
    result = run("build", str(out / "promptbake.db"), "--out", str(tmp_path / "plain"), "--no-report")
    assert result.exit_code == 0, result.output
    for name in ("train.jsonl", "test.jsonl", "metadata.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


@pytest.mark.parametrize("value", ["4,x", "0,10", "-3"])
def test_bad_sizes_are_bad_input(tmp_path, value):
    result = run("build", str(tmp_path / "missing.db"), "--out", str(tmp_path / "o"), "--sizes", value)
    assert result.exit_code == 2
    assert "--sizes" in result.output and value in result.output


# --- the dataset report -----------------------------------------------------------------------


def test_run_writes_a_report_with_every_section_and_every_drop_explained(tmp_path):
    out, output = build_dataset(tmp_path, "--sizes", "4,8")
    assert f"report: {out / 'report.html'}" in output
    page = (out / "report.html").read_text(encoding="utf-8")
    for section in ("glance", "categories", "cells", "distributions", "diversity", "sizes", "examples-section"):
        assert f'id="{section}"' in page, section
    drawn = plots(page)
    assert set(drawn) == {"funnel", "heatmap", "tokens", "lengths", "similarity", "diversity", "sizes"}
    assert all(svg.count("<path") > 5 for svg in drawn.values())
    # self-contained: nothing to fetch (the SVG namespaces are names, not requests)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script src" not in page

    manifest = json.loads((out / "manifest.json").read_text())
    categories = manifest["categories"]
    # every example the build saw is in the table: the kept ones, and each drop with its reason
    statuses = Counter(re.findall(r'<tr data-status="(\w+)"', page))
    assert statuses["train"] == manifest["train"] and statuses["test"] == manifest["test"]
    rows = sum(c["rows"] for c in categories.values())
    assert statuses["dropped"] == rows - manifest["train"] - manifest["test"]
    reasons = Counter(m.split(" ")[0] for m in re.findall(r'<td class="text"><div>((?:checks|exact|near|not needed)'
                                                           r'[^<]*)</div></td></tr>', page))
    assert reasons["checks:"] == sum(c["rejected_by_checks"] for c in categories.values()) > 0
    assert reasons["exact"] == sum(c["exact_dupes"] for c in categories.values()) > 0
    assert reasons["near"] == sum(c["near_dupes"] for c in categories.values()) > 0
    assert reasons["not"] > 0  # cut by the cap
    assert "checks: regex: no match" in page and "near duplicate of" in page

    # the run at a glance comes from the store: the injected 500 and 429, rounds, timings, spec
    assert re.search(r"<td>http_500</td><td class=\"n\">1</td>", page), "failures by reason"
    assert re.search(r"<td>rate_limited</td><td class=\"n\">1</td>", page)
    assert "more examples for" in page and "s over 1 run(s)" in page and "name: mini" in page
    # per category: requested (2 cells × 8), then the manifest's counts
    for name, counts in categories.items():
        assert re.search(rf"<td>{name}</td><td class=\"n\">16</td><td class=\"n\">{counts['rows']}</td>", page)
    # per cell: requested 8 everywhere, and kept as in metadata.jsonl
    kept = Counter(" · ".join(json.loads(line)["cell"].values()) for line in lines(out / "metadata.jsonl"))
    for cell, n in kept.items():
        assert re.search(rf"<td>{re.escape(cell)}</td><td class=\"n\">8</td>.*?<td class=\"n\">{n}</td>"
                         rf"<td class=\"n\">\d+</td><td class=\"n\">\d+</td></tr>", page), cell
    # the subsets' category balance, next to the full train split's
    sizes = manifest["sizes"]
    for name in categories:
        assert re.search(rf"<td>{name}</td><td class=\"n\">{sizes['4'][name]}</td><td class=\"n\">{sizes['8'][name]}"
                         rf"</td><td class=\"n\">{categories[name]['train']}</td></tr>", page)
    total = manifest["train"]
    assert re.search(rf'<td>all</td><td class="n">4</td><td class="n">8</td><td class="n">{total}</td>', page)
    # diversity: the stand-in opens every rude reply the same way
    assert "“Ugh. Fine. (Customer…” ×" in html.unescape(page).replace("&#34;", '"')


def test_report_is_the_same_bytes_for_the_same_inputs(tmp_path):
    out, _ = build_dataset(tmp_path, "--no-report")
    assert not (out / "report.html").exists()
    first = write_report(out, tmp_path / "a.html").read_bytes()
    assert write_report(out, tmp_path / "b.html").read_bytes() == first


def test_without_a_store_the_report_shows_the_files_and_says_what_it_lacks(tmp_path):
    shutil.copytree(ROOT / "samples" / "quick", tmp_path / "quick", ignore=shutil.ignore_patterns("report.*"))
    result = run("report", str(tmp_path / "quick"))
    assert result.exit_code == 0, result.output
    page = (tmp_path / "quick" / "report.html").read_text(encoding="utf-8")
    assert "no store at" in page and "pass --store" in page
    assert len(re.findall(r'<tr data-status="(?:train|test)"', page)) == 27
    # with the spec, every cell's requested count (3) is known
    result = run("report", str(tmp_path / "quick"), "--spec", str(ROOT / "generators" / "rude_agent_quick.yaml"),
                 "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert len(re.findall(r'<td class="n">3</td><td class="n">–</td>', page)) == 9  # requested, generated unknown


def test_python_report_writes_the_page_and_returns_its_path(tmp_path):
    """``promptbake.report``: a dataset directory (with the spec for requested counts), or an eval
    file, as the command writes them; ``kind`` names what the path cannot tell."""
    shutil.copytree(ROOT / "samples" / "quick", tmp_path / "quick", ignore=shutil.ignore_patterns("report.*"))
    spec = promptbake.load_spec(ROOT / "generators" / "rude_agent_quick.yaml")
    page = promptbake.report(tmp_path / "quick", spec=spec, sample=5)
    assert page == tmp_path / "quick" / "report.html"
    text = page.read_text(encoding="utf-8")
    assert len(re.findall(r'<td class="n">3</td><td class="n">–</td>', text)) == 9  # the spec's requested counts
    assert len(re.findall(r'<tr data-status="(?:train|test)"', text)) == 5  # at most `sample` listed
    evaluated = promptbake.report(write_sweep(tmp_path / "results.txt"), kind="eval")
    assert evaluated == tmp_path / "results.html" and set(plots(evaluated.read_text(encoding="utf-8"))) == {
        "eval", "sweep"}
    with pytest.raises(promptbake.PromptbakeError, match="is a directory"):
        promptbake.report(tmp_path / "quick", kind="eval")


def test_not_a_dataset_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("report", str(tmp_path / "empty"))
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {tmp_path / 'empty'}: no manifest.json; give a directory written by " \
                                    "`promptbake build`"


def test_the_committed_quick_report_shows_the_committed_quick_sample():
    page = html.unescape((ROOT / "samples" / "quick" / "report.html").read_text(encoding="utf-8"))
    for split in ("train", "test"):
        rows = [json.loads(line) for line in lines(ROOT / "samples" / "quick" / f"{split}.jsonl")]
        assert len(re.findall(rf'<tr data-status="{split}"', page)) == len(rows), split
        for row in rows:
            assert row["messages"][-1]["content"] in page
    assert (ROOT / "samples" / "quick" / "report.png").stat().st_size > 50_000
    assert "samples/quick/report.png" in (ROOT / "README.md").read_text(encoding="utf-8")


# --- eval files -------------------------------------------------------------------------------


def test_eval_report_shows_pass_rates_and_the_sweep(tmp_path):
    path = write_sweep(tmp_path / "eval.jsonl")
    result = run("report", str(path))
    assert result.exit_code == 0, result.output
    page = (tmp_path / "eval.html").read_text(encoding="utf-8")
    assert set(plots(page)) == {"eval", "sweep"}
    assert "temperature and top_p" in page
    # calm passes 4/4, 3/4, 2/4 at temperature 0, 0.5, 1 (both top_p): pooled 0.75; its best is t=0
    assert re.search(r"<td>calm</td><td class=\"n\">24</td><td class=\"n\">0.75</td>", page)
    assert re.search(r"<td>calm</td><td>temperature=0.0 top_p=0.9</td><td class=\"n\">1.00</td>", page)
    assert len(re.findall(r'<tr data-status="pass"', page)) == 18 + 18  # calm 8+6+4, angry 3 × 6 settings


def test_eval_flag_and_bad_eval_lines(tmp_path):
    path = write_sweep(tmp_path / "results.txt")
    result = run("report", str(path), "--eval", "-o", str(tmp_path / "e.html"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e.html").exists()
    (tmp_path / "bad.jsonl").write_text('{"category": "calm", "pass": true}\n{"pass": false}\n')
    result = run("report", str(tmp_path / "bad.jsonl"))
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {tmp_path / 'bad.jsonl'}:2: no 'category'"


def test_judge_scores_in_the_metadata_are_plotted_per_category(tmp_path):
    shutil.copytree(ROOT / "samples" / "quick", tmp_path / "quick", ignore=shutil.ignore_patterns("report.*"))
    meta = tmp_path / "quick" / "metadata.jsonl"
    rows = [json.loads(line) for line in lines(meta)]
    meta.write_text("".join(json.dumps({**row, "scores": {"judge": 3 + i % 3}}) + "\n" for i, row in enumerate(rows)))
    page = write_report(tmp_path / "quick").read_text(encoding="utf-8")
    assert "judge" in plots(page)
    assert "No judge scores recorded" not in page
