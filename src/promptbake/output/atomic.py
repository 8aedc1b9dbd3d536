"""Atomic file writes: a reader sees the old file or the complete new one, never half of either.

Every output (train/test JSONL, sidecars, manifest) goes through here, so an interrupted or failing
build (Ctrl-C, disk full, a bug mid-iteration) leaves the previous files intact and no temp files
behind. The temp file lives in the target's directory because ``os.replace`` is only atomic within
one filesystem. JSON lines have one canonical form (compact, key order as given, UTF-8 unescaped) so
identical input gives byte-identical files.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

from promptbake.errors import OutputError


def json_line(row: Any) -> str:
    """The canonical JSONL form of one row (no trailing newline)."""
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[TextIO]:
    """Yield a text handle; on a clean exit its content replaces ``path`` in one step.

    On any exception the temp file is removed and ``path`` is left as it was; ``OSError`` (read-only
    directory, disk full) becomes an ``OutputError`` naming the path, anything else propagates.
    """
    path = Path(path)
    # Not tempfile.mkstemp: its 0600 mode would survive the rename; os.open honours the umask.
    tmp = temp_beside(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({_reason(exc)})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: cannot write ({_reason(exc)})") from None
        raise
    _fsync_dir(path.parent)


def temp_beside(path: Path) -> Path:
    """A fresh temp name for ``path``, in its directory, once the temp files of ``path`` that a dead
    writer left behind are removed; a live writer's name holds its pid, so two never collide."""
    _sweep_stale(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _sweep_stale(path: Path) -> None:
    """Remove temp files of ``path`` whose writer died without cleaning up (``kill -9``, power
    loss): the next write of the same file is the only moment anyone will look for them."""
    prefix = f".{path.name}."
    with suppress(OSError):
        for tmp in path.parent.iterdir():
            pid = tmp.name[len(prefix):].split(".", 1)[0]
            if tmp.name.startswith(prefix) and tmp.name.endswith(".tmp") and pid.isdigit() and not _alive(int(pid)):
                with suppress(OSError):
                    tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; not possible (nor needed) on every platform."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create an output directory, as an ``OutputError`` naming it when that fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create directory ({exc.strerror})") from None


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[Any]) -> int:
    """Write one canonical JSON line per row, atomically; returns the number of rows written."""
    count = 0
    with atomic_writer(path) as handle:
        for row in rows:
            try:
                line = json_line(row)
            except (TypeError, ValueError) as exc:
                raise OutputError(f"{path}: row {count + 1} is not JSON-serialisable ({exc})") from None
            handle.write(line)
            handle.write("\n")
            count += 1
    return count


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8, ``\\n`` newlines), atomically."""
    with atomic_writer(path) as handle:
        handle.write(text)
