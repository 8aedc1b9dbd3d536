"""The report in a real browser: Debian's Chromium driven by Playwright, from a file:// URL.

Playwright's own browser download is not used (nor reachable): ``.ci/run`` installs the
``chromium`` package and the test launches it by path. The page must load with no console error and
no network request, draw every plot, and its search must filter the example table."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import list_then_reply_responder
from reportdata import build_dataset, build_flagged_dataset, write_sweep

from promptbake.cli.main import cli
from promptbake.output.report import write_eval_report

ROOT = Path(__file__).parent.parent
CHROMIUM = os.environ.get("PROMPTBAKE_CHROMIUM", "/usr/bin/chromium")
# Flags that work in a container with no GPU, no sandbox privileges and no network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium() -> Iterator[object]:
    """Started only once the data is built: Playwright's sync API runs an event loop in this thread,
    inside which promptbake's own ``asyncio.run`` cannot."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: install the Debian package (apt-get install -y chromium; .ci/run "
                    "does) or point PROMPTBAKE_CHROMIUM at one")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """A loaded page and everything it said or asked for."""

    def __init__(self, browser: object, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
        self.problems: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type in ("error", "warning") and self.problems.append(f"{m.type}: "
                                                                                                    f"{m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.as_uri(), wait_until="load")
        self.url = path.as_uri()

    def visible_rows(self) -> list[dict[str, str]]:
        return self.page.eval_on_selector_all(
            "#examples tbody tr",
            "rows => rows.filter(r => !r.hidden).map(r => ({status: r.dataset.status, text: r.textContent}))")

    def check_loaded(self) -> None:
        assert self.problems == []
        assert self.requests == [self.url]  # the page itself, nothing else: no network, no CDN
        plots = self.page.eval_on_selector_all("figure.plot", """figures => figures.map(f => {
            const svg = f.querySelector('svg'); const box = svg ? svg.getBoundingClientRect() : null;
            return {name: f.dataset.plot, width: box ? box.width : 0, height: box ? box.height : 0,
                    marks: svg ? svg.querySelectorAll('path, rect, use').length : 0};
        })""")
        assert plots
        for plot in plots:
            assert plot["width"] > 200 and plot["height"] > 100 and plot["marks"] > 10, plot
        self.plots = {p["name"] for p in plots}


def test_dataset_report_in_chromium(tmp_path):
    out, _ = build_dataset(tmp_path, "--sizes", "4,8")
    with chromium() as browser:
        check_dataset_page(browser, out / "report.html", tmp_path / "report.png")


def check_dataset_page(browser: object, path: Path, shot: Path) -> None:
    view = Page(browser, path)
    view.check_loaded()
    assert view.plots == {"funnel", "heatmap", "tokens", "lengths", "similarity", "diversity", "sizes"}
    for section in ("glance", "categories", "cells", "distributions", "diversity", "sizes", "examples-section"):
        assert view.page.is_visible(f"#{section}"), section

    everything = view.visible_rows()
    assert len(everything) > 20 and {r["status"] for r in everything} == {"train", "test", "dropped"}
    # search: every word must appear in the row
    view.page.fill("#search", "near duplicate")
    near = view.visible_rows()
    assert 0 < len(near) < len(everything)
    assert all(r["status"] == "dropped" and "near duplicate" in r["text"] for r in near)
    assert view.page.inner_text("#shown") == str(len(near))
    view.page.fill("#search", "calm   checks:")
    assert all("calm" in r["text"] and "checks:" in r["text"] for r in view.visible_rows())
    view.page.fill("#search", "no such text anywhere")
    assert view.visible_rows() == [] and view.page.inner_text("#shown") == "0"
    view.page.fill("#search", "")
    assert len(view.visible_rows()) == len(everything)
    # the status and category filters combine with it
    view.page.select_option("#status-filter", "train")
    view.page.select_option("#category-filter", "angry")
    rows = view.visible_rows()
    assert rows and all(r["status"] == "train" and "angry" in r["text"] for r in rows)
    view.page.select_option("#status-filter", "")
    view.page.select_option("#category-filter", "")

    view.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 100_000
    assert view.problems == []


def test_the_rude_agent_run_in_chromium(tmp_path):
    """The issue's acceptance run: the full rude-agent grid (100 cells, 1,000 examples) against the
    loopback teacher, its report opened in Chromium with every section drawn."""
    spec = str(ROOT / "generators" / "rude_agent.yaml")
    with FakeServer(responder=list_then_reply_responder(dupe_every=13)).running() as srv:
        result = CliRunner().invoke(cli, ["run", spec, "--out", str(tmp_path / "out"), "--base-url", srv.base_url,
                                          "--rpm", "1000000", "-q", "--sizes", "100,500"])
    assert result.exit_code == 0, result.output
    with chromium() as browser:
        view = Page(browser, tmp_path / "out" / "report.html")
        view.check_loaded()
        assert view.plots == {"funnel", "heatmap", "tokens", "lengths", "diversity", "sizes", "similarity"} - {
            "similarity"}  # the stand-in's repeats are exact: no near-duplicate pairs to plot
        for section in ("glance", "categories", "cells", "distributions", "diversity", "sizes", "examples-section"):
            assert view.page.is_visible(f"#{section}"), section
        manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
        duplicates = sum(c["exact_dupes"] for c in manifest["categories"].values())
        assert duplicates > 0
        assert len(view.visible_rows()) == 1000 + duplicates  # every kept example and every duplicate
        view.page.fill("#search", "exact duplicate of")
        assert len(view.visible_rows()) == duplicates
        view.page.screenshot(path=str(tmp_path / "rude.png"))
        assert view.problems == []


def test_the_quality_panel_links_to_the_rows_it_counts(tmp_path):
    """The panel counts the shop's polite replies though the spec never gated on politeness; a
    click on a count shows exactly those rows, and every plot label is whole."""
    out = build_flagged_dataset(tmp_path)
    with chromium() as browser:
        view = Page(browser, out / "report.html")
        view.check_loaded()
        assert view.page.is_visible("#quality")
        link = view.page.locator('#quality-table a.flag-link[data-flag="polite"][data-category="angry"]')
        assert link.inner_text() == "2"
        link.click()
        rows = view.visible_rows()
        assert len(rows) == 2 and view.page.inner_text("#shown") == "2"
        assert all(r["status"] in ("train", "test") and "angry" in r["text"] and "flagged: polite" in r["text"]
                   for r in rows)
        assert view.page.input_value("#flag-filter") == "polite"
        # the cut-off answers of the calm customers, with the reason the rejected ones were re-asked
        calm = view.page.locator("#quality-table tr", has_text="calm").inner_text()
        assert "4 of 10 answers" in calm
        assert "answer was cut off (finish_reason: length)" in view.page.inner_text("#quality")
        view.page.screenshot(path=str(tmp_path / "quality.png"), full_page=True)
        assert view.problems == []


def test_eval_report_in_chromium(tmp_path):
    page = write_eval_report(write_sweep(tmp_path / "eval.jsonl"))
    with chromium() as browser:
        view = Page(browser, page)
        view.check_loaded()
        assert view.plots == {"eval", "sweep"}
        view.page.select_option("#status-filter", "fail")
        failed = view.visible_rows()
        assert failed and all(r["status"] == "fail" and "too polite" in r["text"] for r in failed)
        view.page.screenshot(path=str(tmp_path / "eval.png"), full_page=True)
        assert view.problems == []


def test_the_committed_quick_report_in_chromium(tmp_path):
    """PROMPTBAKE_UPDATE_SAMPLES=1 writes the screenshot to samples/quick/report.png, the README's."""
    sample = ROOT / "samples" / "quick"
    with chromium() as browser:
        view = Page(browser, sample / "report.html")
        view.check_loaded()
        assert {"funnel", "heatmap", "tokens", "lengths", "diversity"} <= view.plots
        shot = sample / "report.png" if os.environ.get("PROMPTBAKE_UPDATE_SAMPLES") else tmp_path / "report.png"
        view.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 100_000
