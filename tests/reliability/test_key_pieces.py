"""Not even a piece of the key leaks: servers that echo it cut (a prefix), masked (a suffix), at the
end of a long message that we shorten, or inside a successful answer leave no 8-character run of
it in the store, its WAL, the manifest, the output files, stdout or stderr."""

from __future__ import annotations

import secrets
import sqlite3

from fakeserver import FakeServer, Fault, Raw
from relkit import cli_env, promptbake, pure_answer, text_spec

from promptbake.teacher.client import KeyScrubber


def pieces(key: str, size: int = 8) -> set[str]:
    return {key[i:i + size] for i in range(len(key) - size + 1)}


def leaks(text: str | bytes, key: str) -> list[str]:
    data = text if isinstance(text, str) else text.decode("utf-8", "replace")
    return sorted(p for p in pieces(key) if p in data)


def test_prefixes_and_suffixes_are_scrubbed_wherever_they_appear():
    key = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 3
    scrub = KeyScrubber(key)
    samples = [
        f"Incorrect API key provided: {key[:20]}...",
        f"Incorrect API key provided: sk-proj-********{key[-4:]}",  # OpenAI's own mask: 4 chars kept
        f"key ending in {key[-12:]}!",
        f"{'x' * 190}{key}",
        f"two: {key} and {key[:9]}",
    ]
    for text in samples:
        assert not leaks(scrub(text), key), (text, scrub(text))
        assert not leaks(scrub.raw(text.encode()).decode(), key)
    assert scrub("nothing to see") == "nothing to see"
    assert scrub(f"x {key} y") == "x *** y"


def test_cut_masked_and_echoed_keys_leave_no_piece_anywhere(tmp_path):
    key = f"sk-test-{secrets.token_hex(20)}"
    env = cli_env(OPENAI_API_KEY=key)
    (tmp_path / "spec.yaml").write_text(text_spec(3, 3, 2), encoding="utf-8")
    seen: set[str] = set()

    def respond(body: dict) -> str | Fault | Raw:
        prompt = body["messages"][-1]["content"] + str(body.get("seed"))
        first = prompt not in seen
        seen.add(prompt)
        n = len(seen)
        if first and n % 4 == 1:  # cut by the server, then cut again by our 200-character limit
            return Fault("500", message=f"{'upstream said: ' * 12}bad key {key[:30]}")
        if first and n % 4 == 2:  # the server's own mask keeps a long suffix
            return Fault("500", message=f"key ...{key[-16:]} was rate limited upstream")
        if first and n % 4 == 3:  # an HTML error page, not JSON, quoting the key near its end
            return Raw(f"<html>{'padding ' * 20}{key}</html>".encode(), status=502, content_type="text/html")
        answer = pure_answer(body)
        return f"{answer} (served for {key[:14]}…{key[-10:]})" if n % 3 == 0 else answer

    (tmp_path / "warm.yaml").write_text(text_spec(1, 1, 1, name="warm").replace("Say", "Tell"), encoding="utf-8")
    with FakeServer(responder=respond).running() as srv:
        # the store exists before the main run, and a reader holds it open: the WAL stays on disk
        warm = promptbake("generate", "warm.yaml", "--store", "s.db", "--base-url", srv.base_url, "-q",
                          cwd=tmp_path, env=env)
        reader = sqlite3.connect(tmp_path / "s.db")
        reader.execute("SELECT COUNT(*) FROM attempts").fetchone()
        done = promptbake("run", "spec.yaml", "--out", "out", "--store", "s.db", "--base-url", srv.base_url, "-q",
                          "--max-attempts", "4", cwd=tmp_path, env=env)
        assert {f"Bearer {key}"} == set(srv.auth_headers)
    assert warm.returncode == 0, warm.stderr
    assert done.returncode == 0, done.stderr
    for output in (warm, done):
        assert not leaks(output.stdout + output.stderr, key)
    with sqlite3.connect(tmp_path / "s.db") as con:
        errors = [e for (e,) in con.execute("SELECT error FROM attempts WHERE error IS NOT NULL")]
    assert len(errors) >= 9 and any("***" in e for e in errors), errors
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".yaml"]
    assert any(p.name == "s.db-wal" and p.stat().st_size for p in files), files
    for path in files:
        assert not leaks(path.read_bytes(), key), path
    reader.close()
