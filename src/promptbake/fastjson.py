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
number.

Stable ids (:mod:`promptbake.ids`) hash the exact bytes ``json.dumps(parts, sort_keys=True,
ensure_ascii=False, separators=(",", ":"), default=str)`` gives, as they always did: a store
written by an earlier version must find its answers. :func:`sorted_dumps` writes those bytes with
orjson where they are the same: orjson spells floats below 1e-4 or from 1e16 up otherwise
(``0.00001`` for ``1e-05``), writes NaN and infinities as ``null``, refuses what it refuses, and
encodes an ``Enum`` by its value where ``json`` stringifies it. So orjson's bytes are used only
when they hold no number in exponent form or below 1e-4 and, if they hold more ``null`` than the
value has ``None`` parts at its top level, read back as the very value given (a NaN does not);
otherwise the caller has ``json`` write them. (No ``Enum`` comes from a spec or a data file.)
tests/test_fastjson.py checks the two agree on values of every kind.
"""

from __future__ import annotations

import json
import re
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


_SORTED = orjson.OPT_SORT_KEYS | _PASSTHROUGH
# a number written with an exponent (orjson writes a lowercase e): its digits follow ``[``, ``,``
# or ``:``, where a hex id such as ``"3e4f"`` follows a quote; text like ``"a,1e5"`` is a harmless
# false alarm (``json`` writes the bytes)
_EXPONENT = re.compile(rb"[\[,:][0-9.\-]+e[-+0-9]")


def sorted_dumps(value: Any) -> str | None:
    """``json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    default=str)`` written by orjson, or None where that might differ (see the module's docstring)."""
    try:
        blob = orjson.dumps(value, default=str, option=_SORTED)
    except TypeError:  # orjson.JSONEncodeError is one
        blob = None
    if blob is None or b"0.0000" in blob:
        return None
    if _EXPONENT.search(blob):
        return None
    # a NaN or an infinity became a null: more nulls than the top level's Nones (cheap to count)
    # means one may have, and only reading the bytes back tells
    nones = sum(part is None for part in value) if isinstance(value, list | tuple) else 0
    if blob.count(b"null") > nones and orjson.loads(blob) != (list(value) if isinstance(value, tuple) else value):
        return None
    return blob.decode()

