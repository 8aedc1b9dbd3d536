"""JSON for the hot path: request bodies on the wire, answers coming back, rows of the store.

Why orjson: the standard library's encoder and decoder were a tenth of ``generate``'s time per
request (bench/profile_generate.py); orjson does the same work several times faster. Why the
fallbacks: orjson is stricter than ``json`` in ways that must not change what is stored or sent.
It refuses integers beyond 64 bits, dict keys that are not strings and lone surrogates, and
writes NaN and infinities as ``null`` where ``json`` writes ``NaN``. So any value orjson refuses,
and any output with a ``null`` in it (a NaN may hide there; a real ``null`` merely takes the
slow path), goes through ``json`` exactly as before, and decoding falls back to ``json`` for what
orjson rejects (``NaN`` literals, escaped lone surrogates). Either way the result is the value
``json`` would give. Floats may be spelled differently (``1e-05`` or ``0.00001``): the same
number, which is why stable ids (:mod:`promptbake.ids`) keep to ``json``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as is), as ``json.dumps(..., ensure_ascii=False,
    separators=(",", ":"))`` encodes it; raises what that raises for what it cannot encode."""
    try:
        out = orjson.dumps(value, option=_PASSTHROUGH)
    except TypeError:
        return _slow(value).encode()
    return _slow(value).encode() if b"null" in out else out


def dumps_text(value: Any) -> str:
    """:func:`dumps` as text (what SQLite's TEXT columns take)."""
    try:
        out = orjson.dumps(value, option=_PASSTHROUGH)
    except TypeError:
        return _slow(value)
    return _slow(value) if b"null" in out else out.decode()


def loads(data: bytes | bytearray | str) -> Any:
    """``json.loads``: the same value for the same input, faster."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _slow(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
