"""Atomic writes: the old file or the whole new one, never a half file or a stray temp file."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from promptbake.errors import OutputError
from promptbake.output.atomic import atomic_writer, json_line, write_jsonl_atomic, write_text_atomic


def _listing(directory):
    return sorted(p.name for p in directory.iterdir())


def test_jsonl_round_trip_is_compact_unescaped_and_ordered(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"z": 1, "a": "héllo ✓"}, {"messages": [{"role": "user", "content": "hi\nthere"}]}]
    assert write_jsonl_atomic(path, rows) == 2
    raw = path.read_bytes()
    assert raw == b'{"z":1,"a":"h\xc3\xa9llo \xe2\x9c\x93"}\n{"messages":[{"role":"user","content":"hi\\nthere"}]}\n'
    assert [json.loads(line) for line in raw.decode().splitlines()] == rows


def test_identical_input_gives_identical_bytes(tmp_path):
    rows = [{"id": i, "text": f"row {i} ünïcode"} for i in range(50)]
    write_jsonl_atomic(tmp_path / "a.jsonl", rows)
    write_jsonl_atomic(tmp_path / "b.jsonl", iter(rows))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_exception_mid_iteration_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl_atomic(path, [{"old": True}])
    before = path.read_bytes()

    def rows():
        yield {"new": 1}
        yield {"new": 2}
        raise RuntimeError("teacher exploded")

    with pytest.raises(RuntimeError, match="teacher exploded"):
        write_jsonl_atomic(path, rows())
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["train.jsonl"]


def test_exception_mid_iteration_on_a_new_path_leaves_nothing(tmp_path):
    def rows():
        yield {"a": 1}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl_atomic(tmp_path / "out.jsonl", rows())
    assert _listing(tmp_path) == []


def test_unserialisable_row_is_an_output_error_naming_path_and_row(tmp_path):
    path = tmp_path / "x.jsonl"
    with pytest.raises(OutputError) as info:
        write_jsonl_atomic(path, [{"ok": 1}, {"bad": float("nan")}])
    message = str(info.value)
    assert str(path) in message and "row 2" in message and "\n" not in message
    assert _listing(tmp_path) == []


def test_disk_full_at_fsync_is_output_error_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    write_text_atomic(path, "old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError) as info:
        write_text_atomic(path, "new\n")
    assert str(path) in str(info.value) and os.strerror(errno.ENOSPC) in str(info.value)
    assert path.read_text() == "old\n"
    assert _listing(tmp_path) == ["manifest.json"]


def test_parent_is_a_file_is_output_error(tmp_path):
    (tmp_path / "blocker").write_text("x")
    path = tmp_path / "blocker" / "train.jsonl"
    with pytest.raises(OutputError, match="blocker"):
        write_jsonl_atomic(path, [{"a": 1}])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_output_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "train.jsonl").write_text("old\n")
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(OutputError, match=r"train\.jsonl"):
            write_jsonl_atomic(ro / "train.jsonl", [{"a": 1}])
        assert (ro / "train.jsonl").read_text() == "old\n"
    finally:
        ro.chmod(stat.S_IRWXU)


def test_writer_context_streams_and_replaces(tmp_path):
    path = tmp_path / "stream.jsonl"
    path.write_text("previous\n")
    with atomic_writer(path) as handle:
        handle.write(json_line({"a": 1}) + "\n")
        assert path.read_text() == "previous\n"  # not visible until the block ends
    assert path.read_text() == '{"a":1}\n'


def test_file_mode_follows_umask_not_tempfile_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "m.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
