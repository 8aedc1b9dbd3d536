"""Disk full and read-only output: one clear error line, no traceback, a consistent store, and a
re-run that completes once there is room.

How the faults are made: as root (this sandbox, most CI containers) a real small ``tmpfs`` gives a
real ENOSPC, and a read-only bind mount a real EROFS (``chmod`` means nothing to root). Without
root those tests skip, and two portable ones stand in: ``RLIMIT_FSIZE`` in the child (EFBIG, with
SIGXFSZ ignored so the write fails instead of killing the process) and ``chmod 0o555``.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeserver import FakeServer
from relkit import cli_env, integrity, one_line_error, promptbake, pure_answer, statuses, text_spec

PLANNED = 300


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path) -> Iterator:
    """``tmpfs(name, size)`` → a directory on a fresh tmpfs of that size (unmounted afterwards)."""
    mounted: list[Path] = []

    def make(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
            pytest.skip("needs root to mount a small tmpfs")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def readonly_dir(tmp_path) -> Iterator[Path]:
    """An existing, empty directory nobody can write into, root included."""
    source, path = tmp_path / "ro-source", tmp_path / "ro"
    source.mkdir()
    path.mkdir()
    if os.geteuid() == 0:
        if not _mount("--bind", "-o", "ro", str(source), str(path)):
            pytest.skip("root, but no read-only bind mount here")
        yield path
        subprocess.run(["umount", "-l", str(path)], check=False)
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer(responder=pure_answer).running() as srv:
        yield srv


@pytest.fixture
def spec(tmp_path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text_spec(6, 5, 10), encoding="utf-8")
    return path


def run(tmp_path: Path, server: FakeServer, out: Path, store: Path, *args: str,
        **kwargs) -> subprocess.CompletedProcess[str]:
    return promptbake("run", "spec.yaml", "--out", str(out), "--store", str(store), "--base-url", server.base_url,
                      "-q", *args, cwd=tmp_path, **kwargs)


def test_output_disk_full(tmp_path, spec, server, tmpfs):
    full = tmpfs("full", "64k")  # the data needs about 120 kB
    failed = run(tmp_path, server, full / "out", tmp_path / "s.db")
    assert failed.returncode == 1
    line = one_line_error(failed.stderr)
    assert str(full / "out") in line and "No space left on device" in line, line
    assert not list((full / "out").glob(".*.tmp"))  # the failed write cleaned up after itself
    assert not (full / "out" / "manifest.json").exists()  # the manifest only marks a complete build
    assert integrity(tmp_path / "s.db") == "ok"
    assert statuses(tmp_path / "s.db") == {"ok": PLANNED}

    assert _mount("-o", "remount,size=1m", str(full))
    done = run(tmp_path, server, full / "out", tmp_path / "s.db")
    assert done.returncode == 0, done.stderr
    assert (full / "out" / "manifest.json").exists()
    assert len(server.paid_by_hash) == PLANNED and server.count == PLANNED  # nothing re-sent


def test_store_disk_full_mid_generate(tmp_path, spec, server, tmpfs):
    full = tmpfs("full", "600k")  # room for the store and its plan, not for 300 answers in its log
    store = full / "s.db"
    failed = run(tmp_path, server, tmp_path / "out", store, "--concurrency", "8")
    assert failed.returncode == 1
    line = one_line_error(failed.stderr)
    assert line == f"Error: {store}: cannot record results: database or disk is full", line
    assert integrity(store) == "ok"
    before = statuses(store)
    assert 0 < before.get("ok", 0) < PLANNED and "failed" not in before, before  # unfinished, not failed
    assert before.get("ok", 0) + before.get("pending", 0) == PLANNED  # the plan is whole
    # the run stopped when the store did: it paid for at most a batch and what was in flight
    assert server.count - before["ok"] <= 2 * 8, (server.count, before)

    assert _mount("-o", "remount,size=16m", str(full))
    done = run(tmp_path, server, tmp_path / "out", store)
    assert done.returncode == 0, done.stderr
    assert statuses(store) == {"ok": PLANNED}
    assert integrity(store) == "ok"


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of death by signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))


def test_output_file_too_large_without_root(tmp_path, spec, server):
    """The portable stand-in for a full disk: no file may grow past 40 kB (train.jsonl needs 45)."""
    assert run(tmp_path, server, tmp_path / "first", tmp_path / "s.db").returncode == 0
    failed = promptbake("build", "spec.yaml", "--store", "s.db", "--out", "out", cwd=tmp_path,
                        preexec_fn=_limit_file_size)
    assert failed.returncode == 1
    line = one_line_error(failed.stderr)
    # the build's first write there is its scratch file of kept examples (curate/spill.py)
    assert "out: cannot write a scratch file (File too large)" in line, line
    assert not list((tmp_path / "out").glob(".*.tmp"))
    assert integrity(tmp_path / "s.db") == "ok"
    done = promptbake("build", "spec.yaml", "--store", "s.db", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == (tmp_path / "first" / "train.jsonl").read_bytes()


def test_read_only_output_directory(tmp_path, spec, server, readonly_dir):
    failed = run(tmp_path, server, readonly_dir, tmp_path / "s.db")
    assert failed.returncode == 1
    line = one_line_error(failed.stderr)
    assert line == f"Error: {readonly_dir}: cannot write a scratch file (Read-only file system)", line
    assert integrity(tmp_path / "s.db") == "ok"
    assert statuses(tmp_path / "s.db") == {"ok": PLANNED}
    done = run(tmp_path, server, tmp_path / "out", tmp_path / "s.db")
    assert done.returncode == 0, done.stderr
    assert server.count == PLANNED  # the re-run built from the store without paying again


def test_store_in_read_only_directory(tmp_path, spec, server, readonly_dir):
    failed = run(tmp_path, server, tmp_path / "out", readonly_dir / "s.db")
    assert failed.returncode == 1
    line = one_line_error(failed.stderr)
    assert line == f"Error: {readonly_dir}/s.db: cannot create the store: " + (
        "Read-only file system" if os.geteuid() == 0 else "Permission denied"), line
    assert server.count == 0  # refused before paying for anything


def test_full_temporary_directory_for_dedupe(tmp_path, spec, server, tmpfs):
    """dedupe's signatures wait in a temporary file (curate/dedupe.py): a temporary directory
    without room for them is one line naming it, and the same build with room completes."""
    spec.write_text(spec.read_text(encoding="utf-8").replace("near: false", "near: true"), encoding="utf-8")
    assert run(tmp_path, server, tmp_path / "first", tmp_path / "s.db").returncode == 0
    full = tmpfs("tmp", "4k")  # one page: 300 examples' signatures take 150 kB
    failed = promptbake("build", "spec.yaml", "--store", "s.db", "--out", "out", "--no-report", cwd=tmp_path,
                        env=cli_env(TMPDIR=str(full)))
    assert failed.returncode == 1
    line = one_line_error(failed.stderr)
    assert line == (f"Error: {full}: cannot write dedupe's signature file (No space left on device); "
                    "set TMPDIR to a directory with room"), line
    assert not list((tmp_path / "out").glob(".*.tmp"))  # the build's own scratch file is gone too
    assert not list(full.iterdir())  # and the signature file went with its descriptor
    done = promptbake("build", "spec.yaml", "--store", "s.db", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == (tmp_path / "first" / "train.jsonl").read_bytes()
