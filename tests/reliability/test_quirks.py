"""Server quirks never crash a run and never lose an answer: content as a list of parts, lone UTF-16
surrogates, ``usage`` of Infinity/NaN/strings, a gzip bomb and a 30 MB body (refused under a size
cap, in bounded memory), fewer choices than ``n``. One bad row never stops the store's writer."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import zlib

from fakeserver import FakeServer, Raw
from relkit import integrity, peak_rss, promptbake, text_spec

from promptbake.store.db import AttemptRow, ResultRow, Store

FAST = ("-q", "--max-attempts", "2", "--concurrency", "2")


def prompt(body: dict) -> str:
    return body["messages"][-1]["content"]


def generate(tmp_path, responder, *extra: str, spec: str | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "spec.yaml").write_text(spec or text_spec(2, 3, 1), encoding="utf-8")
    with FakeServer(responder=responder).running() as srv:
        return promptbake("generate", "spec.yaml", "--store", "s.db", "--base-url", srv.base_url, *FAST, *extra,
                          cwd=tmp_path)


def contents(db) -> list[str]:
    with sqlite3.connect(db) as con:
        return [c for (text,) in con.execute("SELECT contents FROM responses") for c in json.loads(text)]


def test_content_as_a_list_of_parts_is_joined(tmp_path):
    def respond(body: dict) -> Raw:
        parts = [{"type": "text", "text": "Parts: "}, {"type": "image_url", "image_url": {"url": "x"}},
                 {"type": "text", "text": prompt(body)}]
        return Raw.completion([Raw.choice(parts)], usage={"prompt_tokens": 5, "completion_tokens": 4})

    done = generate(tmp_path, respond)
    assert done.returncode == 0, done.stderr
    assert sorted(contents(tmp_path / "s.db")) == sorted(f"Parts: Say something about x{a} and y{b}."
                                                          for a in range(2) for b in range(3))


def test_lone_surrogates_are_stored_as_replacement_characters(tmp_path):
    def respond(body: dict) -> Raw:  # json.dumps writes the lone surrogate as the escape \ud800
        return Raw.completion([Raw.choice(f"caf\ud800 {prompt(body)} \udfff")])

    done = generate(tmp_path, respond)
    assert done.returncode == 0, done.stderr
    stored = contents(tmp_path / "s.db")
    assert len(stored) == 6 and all(c.startswith("caf\ufffd ") and c.endswith(" \ufffd") for c in stored)
    assert integrity(tmp_path / "s.db") == "ok"


def test_usage_of_infinity_nan_and_strings_counts_as_missing_not_a_crash(tmp_path):
    usages = [{"prompt_tokens": float("inf"), "completion_tokens": float("nan")},
              {"prompt_tokens": "12", "completion_tokens": "seven"},
              {"prompt_tokens": -3, "completion_tokens": 10**30},
              {"prompt_tokens": 1e400, "completion_tokens": None},
              "lots", [1, 2]]
    answered: list[str] = []

    def respond(body: dict) -> Raw:
        answered.append(prompt(body))
        return Raw.completion([Raw.choice(f"ok {prompt(body)}")], usage=usages[(len(answered) - 1) % len(usages)])

    done = generate(tmp_path, respond)
    assert done.returncode == 0, done.stderr
    assert len(contents(tmp_path / "s.db")) == 6
    with sqlite3.connect(tmp_path / "s.db") as con:
        tokens = sorted(con.execute("SELECT prompt_tokens, completion_tokens FROM attempts"))
    # no usable count anywhere (strings too): each answer is charged its worst case, never free
    assert len(tokens) == 6 and len(set(tokens)) == 1 and tokens[0][0] + tokens[0][1] > 0


def bomb(megabytes: int) -> bytes:
    """A gzip body that inflates to ``megabytes`` MB of zeros (about 1,000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * 2**20
    return b"".join(packer.compress(chunk) for _ in range(megabytes)) + packer.flush()


def test_a_gzip_bomb_is_refused_in_bounded_memory_and_the_other_answers_are_kept(tmp_path):
    body = bomb(600)
    assert len(body) < 2**20

    def respond(body_: dict) -> Raw | str:
        if "x0 and y0" in prompt(body_):
            return Raw(body, headers={"Content-Encoding": "gzip"})
        return f"fine: {prompt(body_)}"

    (tmp_path / "spec.yaml").write_text(text_spec(2, 3, 1), encoding="utf-8")
    with FakeServer(responder=respond).running() as srv:
        done, peak = peak_rss([sys.executable, "-m", "promptbake", "generate", "spec.yaml", "--store", "s.db",
                               "--base-url", srv.base_url, *FAST], cwd=tmp_path)
    stderr = done.stderr
    assert done.returncode == 3, stderr  # one request failed: a shortfall
    assert peak < 300 * 1024, peak  # KiB: far below the 600 MB it inflates to
    assert "1 × the answer is larger than 16 MiB (after decompression); refused" in stderr, stderr
    assert len(contents(tmp_path / "s.db")) == 5


def test_a_30_mb_body_is_refused_with_a_reason(tmp_path):
    huge = Raw.completion([Raw.choice("x" * 30 * 2**20)])

    def respond(body: dict) -> Raw | str:
        return huge if "x1 and y2" in prompt(body) else f"fine: {prompt(body)}"

    done = generate(tmp_path, respond)
    assert done.returncode == 3, done.stderr
    assert "the answer is larger than 16 MiB" in done.stderr
    assert len(contents(tmp_path / "s.db")) == 5
    with sqlite3.connect(tmp_path / "s.db") as con:
        [(error,)] = con.execute("SELECT error FROM requests WHERE status = 'failed'")
    assert "larger than 16 MiB" in error


def test_a_30_mb_body_once_is_asked_again_and_the_run_is_whole(tmp_path):
    huge = Raw.completion([Raw.choice("x" * 30 * 2**20)])
    sent: list[str] = []

    def respond(body: dict) -> Raw | str:
        sent.append(prompt(body))
        return huge if sent.count(prompt(body)) == 1 and "x1 and y2" in prompt(body) else f"fine: {prompt(body)}"

    done = generate(tmp_path, respond)
    assert done.returncode == 0, done.stderr
    assert len(contents(tmp_path / "s.db")) == 6
    assert sent.count("Say something about x1 and y2.") == 2


def test_a_request_refused_for_size_on_every_attempt_is_topped_up(tmp_path):
    """Both attempts of round 0 get a 30 MB body; the top-up round asks again (another seed) and
    the cell fills: a body too large is about one answer, not about the request."""
    huge = Raw.completion([Raw.choice("x" * 30 * 2**20)])
    sent: list[str] = []

    def respond(body: dict) -> Raw | str:
        sent.append(prompt(body))
        return huge if sent.count(prompt(body)) <= 2 and "x1 and y2" in prompt(body) else f"fine: {body['seed']}"

    (tmp_path / "spec.yaml").write_text(text_spec(2, 3, 1, test=0.5), encoding="utf-8")
    with FakeServer(responder=respond).running() as srv:
        done = promptbake("run", "spec.yaml", "--out", "out", "--base-url", srv.base_url, *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sent.count("Say something about x1 and y2.") == 3  # two in round 0, one in the top-up
    assert len(contents(tmp_path / "out" / "promptbake.db")) == 6


def test_fewer_choices_than_n_keeps_what_came(tmp_path):
    spec = text_spec(2, 2, 3).replace("    seed: 7\n", "    seed: 7\n    n: 3\n") + "max_rounds: 0\n"

    def respond(body: dict) -> Raw:
        assert body["n"] == 3
        return Raw.completion([Raw.choice(f"only one for {prompt(body)}")])

    done = generate(tmp_path, respond, spec=spec)
    assert done.returncode == 0, done.stderr  # every request answered; the cells' shortfall shows at build
    with sqlite3.connect(tmp_path / "s.db") as con:
        outputs = [json.loads(o) for (o,) in con.execute("SELECT outputs FROM responses")]
    assert len(outputs) == 4 and all(len(o) == 1 for o in outputs)


def test_one_unstorable_row_never_costs_the_rest_of_its_batch(tmp_path):
    """The writer commits a batch in one transaction: a row SQLite refuses (a lone surrogate
    from any path, an integer beyond 64 bits) is repaired and stored, and the batch with it."""

    def row(i: int, text: str, tokens: int = 3) -> ResultRow:
        attempt = AttemptRow(1, 200, None, None, 1.0, tokens, 2, 0.0, None)
        return ResultRow(f"r{i}", f"k{i}", True, [attempt], model="m", contents=[text], outputs=[text],
                         finish_reasons=["stop"])

    with Store(tmp_path / "s.db") as store:
        store.record([row(0, "fine"), row(1, "bad \ud800 text", tokens=2**70), row(2, "also fine")])
    with sqlite3.connect(tmp_path / "s.db") as con:
        stored = dict(con.execute("SELECT cache_key, contents FROM responses"))
        tokens = sorted(con.execute("SELECT prompt_tokens FROM attempts"))
    assert stored == {"k0": '["fine"]', "k1": '["bad \ufffd text"]', "k2": '["also fine"]'}
    assert tokens == [(0,), (3,), (3,)]


def test_compressed_answers_within_the_cap_are_read(tmp_path):
    def respond(body: dict) -> Raw:
        plain = Raw.completion([Raw.choice(f"zipped {prompt(body)}")]).body
        if "x0" in prompt(body):
            return Raw(zlib.compress(plain), headers={"Content-Encoding": "deflate"})
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)
        return Raw(packer.compress(plain) + packer.flush(), headers={"Content-Encoding": "gzip"})

    done = generate(tmp_path, respond)
    assert done.returncode == 0, done.stderr
    assert len([c for c in contents(tmp_path / "s.db") if c.startswith("zipped Say something")]) == 6
