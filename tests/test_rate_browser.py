"""The rating page in a real browser: Debian's Chromium driven by Playwright (as the report's test),
against `promptbake rate` run as its own process, so that it can be killed and started again."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from click.testing import CliRunner
from ratedata import write_dataset, write_eval
from test_report_browser import chromium

from promptbake.cli.main import cli
from promptbake.rate.store import RatingStore

ROOT = Path(__file__).parent.parent
HOSTILE = '<script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2"><b>bold?</b>'
# the names of the sources and their files: none may reach the browser
TEACHER, STUDENT = "gpt-teacher-x1", "student-ft-y2"
TEACHER_DIR, STUDENT_FILE = "teacher_built_data", "student_eval_file.jsonl"


@contextmanager
def rate_server(*args: str) -> Iterator[str]:
    """`promptbake rate ARGS --port 0` in a child process; yields the URL it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "promptbake", "rate", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline().strip() if ready else ""  # type: ignore[union-attr]
        assert line.startswith("http://127.0.0.1:"), (line, proc.poll(), proc.stderr.read() if proc.poll() else "")
        yield line
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean shutdown: every rating must already be stored
        proc.wait(timeout=30)


def results(store: Path) -> dict:
    out = CliRunner().invoke(cli, ["rate", "--results", str(store), "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


class Rater:
    """One rater's page: what it shows, and keys pressed on it, waiting for the next item each time."""

    def __init__(self, browser: object, url: str, name: str, start: int = 1, ask: bool = False) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
        self.problems: list[str] = []
        self.bodies: list[str] = []
        self.responses: list[object] = []
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        self.page.on("response", lambda r: self.responses.append(r))  # read in press(), not in a callback
        if ask:  # no ?rater=: the page asks for the name once
            self.page.goto(url, wait_until="load")
            self.page.fill("#rater-name", name)
            self.page.keyboard.press("Enter")
        else:
            self.page.goto(f"{url}{'&' if '?' in url else '?'}rater={name}", wait_until="load")
        self.wait_for(start)

    def wait_for(self, position: int) -> None:
        # a selector, not wait_for_function: the page's content security policy forbids eval
        self.page.wait_for_selector(f'body[data-position="{position}"]', state="attached", timeout=30_000)

    @property
    def position(self) -> int:
        return int(self.page.evaluate("document.body.dataset.position"))

    def shown(self) -> dict[str, str]:
        return {"prompt": self.page.inner_text("#prompt"), "left": self.page.text_content("#left") or "",
                "right": self.page.text_content("#right") or ""}

    def press(self, key: str, expect: int) -> None:
        self.page.keyboard.press(key)
        self.wait_for(expect)
        self.read_responses()

    def read_responses(self) -> None:
        """Keep the body of everything the server sent (page, JSON) for the leak check."""
        while self.responses:
            self.bodies.append(self.responses.pop(0).text())  # type: ignore[attr-defined]


def source_on(text: str) -> str:
    return TEACHER if text.startswith("Teacher reply") else STUDENT


def test_a_rater_rates_20_items_by_keyboard_resumes_after_a_kill_and_no_source_leaks(tmp_path):
    data = write_dataset(tmp_path / TEACHER_DIR, 30)
    student = write_eval(tmp_path / STUDENT_FILE, 30,
                         answer=lambda i: f"Student reply {i}: {HOSTILE}" if i % 3 == 0 else f"Student reply {i}.")
    store = tmp_path / "ratings.db"
    keys = "1234121212341221s212"  # 20 ratings: left, right, tie, both bad, and one skip
    verdicts = {"1": "left", "2": "right", "3": "tie", "4": "both_bad", "s": "skip"}
    expected: Counter[str] = Counter()
    seen_prompts = []
    with chromium() as browser:
        with rate_server(f"{TEACHER}={data}", f"{STUDENT}={student}", "--out", str(store), "--repeat-share", "0",
                         "--seed", "3") as url:
            rater = Rater(browser, url, "alice")
            assert "item 1 of 30" in rater.page.inner_text("#progress")
            for n, key in enumerate(keys, 1):
                shown = rater.shown()
                assert shown["prompt"] not in seen_prompts  # a new item each time
                seen_prompts.append(shown["prompt"])
                if n == 7:  # a slip, undone: the same item comes back and only the second key counts
                    rater.press("4", n + 1)
                    rater.press("u", n)
                    assert rater.shown() == shown
                for side in ("left", "right"):
                    if "<script>" in shown[side]:  # the hostile answer shows as text, and runs nothing
                        assert shown[side].endswith(HOSTILE) and rater.page.evaluate("window.pwned") is None
                        assert rater.page.eval_on_selector(f"#{side}", "e => e.children.length") == 0
                        assert "&lt;script&gt;window.pwned" in rater.page.inner_html(f"#{side}")
                        expected["hostile shown"] += 1
                if n == 3:  # a comment: keys typed into it rate nothing; Esc leaves the box
                    rater.page.click("#comment")
                    rater.page.keyboard.type("1 4 s u: both fine")
                    rater.page.keyboard.press("Escape")
                    assert rater.position == 3
                verdict = verdicts[key]
                if verdict in ("left", "right"):
                    expected[source_on(shown[verdict])] += 1
                    expected["left wins"] += verdict == "left"
                else:
                    expected[verdict] += 1
                rater.press(key, n + 1)
            assert rater.problems == []
            rater.read_responses()
            page_source = rater.page.content()
            everything = "\n".join([page_source, rater.page.url, *rater.bodies])
        assert expected["hostile shown"] > 0 and rater.page.evaluate("window.pwned") is None
        for secret in (TEACHER, STUDENT, TEACHER_DIR, STUDENT_FILE, "ratings.db"):
            assert secret not in everything, secret

        with RatingStore(store) as opened:
            assert [r.comment for r in opened.ratings()][2] == "1 4 s u: both fine"
        got = results(store)
        assert got["sources"] == [TEACHER, STUDENT] and got["ratings"] == 20 and got["skipped"] == 1
        (pair,) = got["pairs"]
        assert (pair["a"], pair["b"]) == (TEACHER, STUDENT)
        assert (pair["a_wins"], pair["b_wins"], pair["ties"], pair["both_bad"]) == (
            expected[TEACHER], expected[STUDENT], expected["tie"], expected["both_bad"])
        assert got["position"]["left_wins"] == expected["left wins"]
        assert got["position"]["decisive"] == expected[TEACHER] + expected[STUDENT]

        # killed above (SIGKILL); started again without the sources, it resumes alice at item 21
        with rate_server("--out", str(store)) as url:
            rater = Rater(browser, url, "alice", start=21)
            assert "item 21 of 30" in rater.page.inner_text("#progress")
            assert rater.shown()["prompt"] not in seen_prompts
            rater.press("1", 22)
    assert results(store)["ratings"] == 21


def test_two_raters_on_overlapping_items_give_the_agreement_computed_by_hand(tmp_path):
    n = 8
    data = write_dataset(tmp_path / "data", n)
    student = write_eval(tmp_path / "student.jsonl", n, judge=lambda i: 1 + i % 5)
    store = tmp_path / "ratings"
    # what each rater says of each item, in terms of sources: T teacher better, S student, = tie, 0 both bad
    alice = {i: "TTS=TT0S"[i] for i in range(n)}
    bob = {i: "TSS=T=0T"[i] for i in range(n)}
    labels: dict[str, dict[int, str]] = {}
    with chromium() as browser, rate_server(f"teacher={data}", f"student={student}", "--out", str(store),
                                            "--raters-per-item", "2", "--repeat-share", "0") as url:
        for name, says in (("alice", alice), ("bob", bob)):
            rater = Rater(browser, url, name, ask=name == "bob")
            labels[name] = {}
            for position in range(1, n + 1):
                shown = rater.shown()
                item = int(shown["prompt"].split("Customer ")[1].split(":")[0])
                wanted = says[item]
                teacher_left = source_on(shown["left"]) == TEACHER
                key = {"=": "3", "0": "4"}.get(wanted) or ("1" if (wanted == "T") == teacher_left else "2")
                labels[name][item] = wanted
                rater.press(key, position + 1)
            assert "0 of 0" not in rater.page.inner_text("#progress") and rater.page.is_visible("#done")
            assert rater.problems == []
    assert labels["alice"].keys() == labels["bob"].keys() == set(range(n))  # both rated every item

    # Cohen's kappa by hand: observed agreement against chance from each rater's own label shares
    a, b = [labels["alice"][i] for i in range(n)], [labels["bob"][i] for i in range(n)]
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    chance = sum(a.count(c) * b.count(c) for c in "TS=0") / n**2
    kappa = (observed - chance) / (1 - chance)
    # Krippendorff's alpha (nominal) by hand: the coincidence matrix of the 2n pairable values
    values = a + b
    total = len(values)
    disagree_observed = sum(x != y for x, y in zip(a, b, strict=True)) * 2 / total
    disagree_expected = sum(values.count(c) * (total - values.count(c)) for c in "TS=0") / (total * (total - 1))
    alpha = 1 - disagree_observed / disagree_expected

    got = results(store)["agreement"]
    assert got["units"] == n and got["raters"] == ["alice", "bob"]
    assert abs(got["kappa"] - kappa) < 1e-9 and abs(got["alpha"] - alpha) < 1e-9
    assert (got["pairs"], got["agreed"]) == (n, sum(x == y for x, y in zip(a, b, strict=True)))
    assert 0 < kappa < 1  # the labels above agree partly: neither trivial case


def test_with_host_the_url_carries_a_token_the_page_sends_back(tmp_path):
    data = write_dataset(tmp_path / "data", 3)
    student = write_eval(tmp_path / "s.jsonl", 3)
    with chromium() as browser, rate_server(str(data), str(student), "--out", str(tmp_path / "r.db"),
                                            "--host", "127.0.0.1") as url:
        base, _, token = url.partition("?token=")
        assert len(token) >= 20
        rater = Rater(browser, url, "al")
        rater.press("1", 2)  # the POST carried the token
        rater.press("u", 1)
        assert rater.problems == []
        stranger = browser.new_page()  # type: ignore[attr-defined]
        response = stranger.goto(f"{base}?rater=al")
        assert response.status == 403 and "token" in stranger.content()
    assert results(tmp_path / "r.db")["ratings"] == 0  # rated, then undone


KEYS = {"left": "1", "right": "2", "tie": "3", "both_bad": "4", "skip": "s"}


def test_the_readme_ratings_replay_on_the_page(tmp_path):
    """The README's picture of the page and its ratings: the committed store
    (samples/quick_ratings/ratings.db, the quick sample's teacher against the trained student) is
    what the page records when its rater presses the same keys. Started from the committed sources
    with the store's seed, the page shows the same items in the same order on the same sides, and the
    replayed store gives the same results. PROMPTBAKE_UPDATE_SAMPLES=1 rewrites
    samples/quick_ratings/page.png (the page as the rater first saw it)."""
    rated = ROOT / "samples" / "quick_ratings"
    shutil.copy(rated / "ratings.db", tmp_path / "copy.db")  # opening a store may write beside it
    with RatingStore(tmp_path / "copy.db") as committed:
        seed = committed.settings()["seed"]
        given = [(committed.shown(r.shown), r) for r in committed.ratings()]
        answers = {(s.item, name): committed.answer(s.item, name) for s, _ in given for name in (s.left, s.right)}
        prompts = {s.item: committed.prompt(s.item) for s, _ in given}
    rater_name = given[0][1].rater
    store = tmp_path / "replay.db"
    with chromium() as browser, rate_server(f"teacher={ROOT / 'samples' / 'quick'}",
                                            f"student={rated / 'student.jsonl'}", "--out", str(store),
                                            "--seed", str(seed), "--repeat-share", "1") as url:
        rater = Rater(browser, url, rater_name)
        rater.page.set_viewport_size({"width": 1100, "height": 500})
        shot = rated / "page.png" if os.environ.get("PROMPTBAKE_UPDATE_SAMPLES") else tmp_path / "page.png"
        rater.page.screenshot(path=str(shot))
        for position, (shown, rating) in enumerate(given, start=1):
            assert shown is not None
            now = rater.shown()
            assert (now["left"], now["right"]) == (answers[shown.item, shown.left], answers[shown.item, shown.right])
            assert prompts[shown.item][-1]["content"] in now["prompt"]
            rater.page.fill("#comment", rating.comment)
            rater.page.evaluate("document.activeElement.blur()")
            rater.press(KEYS[rating.verdict], position + 1)
        assert rater.problems == [] and rater.page.is_visible("#done")
    assert shot.stat().st_size > 20_000
    replayed, original = results(store), results(tmp_path / "copy.db")
    assert {**replayed, "store": ""} == {**original, "store": ""}
    with RatingStore(store) as again:
        assert [(r.item, r.left, r.verdict, r.comment) for r in again.ratings()] == \
            [(r.item, r.left, r.verdict, r.comment) for _, r in given]
