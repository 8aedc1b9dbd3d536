"""The API key never leaves the Authorization header: not into the store (nor its WAL), the
manifest, any output file, stdout or stderr, even when the server echoes it back in a 401 or a
500 error message."""

from __future__ import annotations

import secrets
import sqlite3

from fakeserver import FakeServer, Fault, body_hash
from relkit import cli_env, promptbake, pure_answer, text_spec


def echoing_responder(key: str):
    """Every third new request fails once with a 500 whose message quotes the key."""
    seen: set[str] = set()

    def respond(body: dict) -> str | Fault:
        digest = body_hash(body)
        if digest not in seen:
            seen.add(digest)
            if len(seen) % 3 == 0:
                return Fault("500", message=f"upstream rejected key {key} (internal error)")
        return pure_answer(body)

    return respond


def test_the_key_appears_nowhere(tmp_path):
    secret = secrets.token_hex(16)
    key = f"sk-test-{secret}"
    env = cli_env(OPENAI_API_KEY=key)
    (tmp_path / "spec.yaml").write_text(text_spec(3, 4, 3), encoding="utf-8")
    other = text_spec(2, 2, 2, name="other").replace("Say something", "Tell me something")  # not cached
    (tmp_path / "other.yaml").write_text(other, encoding="utf-8")
    fast = ["-q", "--max-attempts", "2"]
    outputs = []

    def cli(*args: str, code: int = 0) -> None:
        done = promptbake(*args, cwd=tmp_path, env=env)
        assert done.returncode == code, (args, done.stderr)
        outputs.append(done.stdout + done.stderr)

    with FakeServer(responder=echoing_responder(key)).running() as good:
        cli("generate", "spec.yaml", "--store", "s.db", "--base-url", good.base_url, *fast)
        cli("run", "spec.yaml", "--out", "out", "--store", "s.db", "--base-url", good.base_url, *fast)
        cli("build", "spec.yaml", "--store", "s.db", "--out", "out2")
        cli("build", "s.db", "--out", "out3")
        cli("eval", "--data", "out/test.jsonl", "--out", "eval.jsonl", "--base-url", good.base_url,
            "--model", "student", "--check-regex", "answer", *fast)
        assert {f"Bearer {key}"} == set(good.auth_headers)  # the key really was sent
        assert good.statuses["500"] > 0

    # a reader holding the store open keeps its write-ahead log on disk, so the log is scanned too
    reader = sqlite3.connect(tmp_path / "s.db")
    reader.execute("SELECT COUNT(*) FROM requests").fetchone()
    always_500 = [Fault("500", message=f"boom, key={key}")] * 100
    with FakeServer(script=always_500).running() as broken:
        # nothing succeeds: the run fails (exit 1) with the server's reason, redacted
        cli("generate", "other.yaml", "--store", "s.db", "--base-url", broken.base_url, *fast, code=1)
        assert broken.count == 16  # 8 rows × 2 attempts, each failing with the key in its message
    with sqlite3.connect(tmp_path / "s.db") as con:
        errors = [e for (e,) in con.execute("SELECT error FROM requests WHERE status = 'failed'")]
    assert len(errors) == 8 and all("boom, key=" in e for e in errors), errors  # kept, but redacted

    with FakeServer(script=[Fault("401", message=f"Incorrect API key provided: {key}")] * 100).running() as denied:
        cli("generate", "other.yaml", "--store", "denied.db", "--base-url", denied.base_url, *fast, code=1)
        cli("eval", "--data", "out/test.jsonl", "--out", "eval401.jsonl", "--base-url", denied.base_url,
            "--model", "student", "--check-regex", "answer", *fast, code=1)
        assert denied.count > 0

    assert any("401" in o or "API key" in o for o in outputs[-2:]), outputs[-2:]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".yaml"]
    names = {p.name for p in files}
    assert {"s.db", "denied.db", "manifest.json", "train.jsonl", "metadata.jsonl", "eval.jsonl"} <= names, names
    assert (tmp_path / "s.db-wal").stat().st_size > 0
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    for text in outputs:
        assert secret not in text, text
    reader.close()


def test_the_key_appears_nowhere_in_batch_mode(tmp_path):
    """Batch mode sends the key to the Files and Batches endpoints only, and a batch's error lines
    echoing it are stored redacted."""
    secret = secrets.token_hex(16)
    key = f"sk-test-{secret}"
    (tmp_path / "spec.yaml").write_text(text_spec(3, 4, 3), encoding="utf-8")
    with FakeServer(responder=echoing_responder(key)).running() as srv:
        done = promptbake("run", "spec.yaml", "--out", "out", "--base-url", srv.base_url, "-q", "--batch",
                          "--batch-poll", "0.2", cwd=tmp_path, env=cli_env(OPENAI_API_KEY=key))
        assert done.returncode == 0, done.stderr
        assert set(srv.auth_headers) == {f"Bearer {key}"} and srv.uploads  # the key really was sent
        assert srv.statuses["batch_500"] > 0
    with sqlite3.connect(tmp_path / "out" / "promptbake.db") as con:
        echoed = [e for (e,) in con.execute("SELECT error FROM attempts WHERE status_code = 500")]
    assert echoed and all(e == "upstream rejected key *** (internal error)" for e in echoed), echoed
    for path in (p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".yaml"):
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in done.stdout + done.stderr

