"""JSON for the hot path: request bodies on the wire, answers coming back, rows of the store.

Why orjson: the standard library's encoder and decoder were a tenth of ``generate``'s time per
request (bench/profile_generate.py); orjson does the same work several times faster. Why the
fallbacks: orjson is stricter than ``json`` in ways that must not change what is stored or sent.
It refuses integers beyond 64 bits, dict keys that are not strings and lone surrogates, writes
NaN and infinities as ``null`` where ``json`` writes ``NaN``, and reads an integer beyond 64 bits
as a float. So any value orjson refuses, and any output with a ``null`` in it (a NaN may hide
there; a real ``null`` merely takes the slow path), goes through ``json`` exactly as before;
decoding falls back to ``json`` for what orjson rejects (``NaN`` literals, escaped lone
surrogates) and for any text with a run of 19 digits (an integer that may not fit; a long number
inside a string merely takes the slow path). Either way the result is the value ``json`` would
give. Floats may be spelled differently (``1e-05`` or ``0.00001``): the same
number, which is why stable ids (:mod:`promptbake.ids`) keep to ``json``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_DIGITS = bytes(48 if 48 <= c <= 57 else 32 for c in range(256))  # every digit to "0", the rest to " "
_LONG_NUMBER = b"0" * 19  # from 2**63 on, integers have 19 digits or more


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
        raw = data.encode() if isinstance(data, str) else data
    except UnicodeEncodeError:  # a lone surrogate in the text
        return json.loads(data)
    if _LONG_NUMBER in raw.translate(_DIGITS):
        return json.loads(data)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _slow(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
