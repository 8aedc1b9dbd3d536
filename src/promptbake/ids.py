"""Stable ids: every id promptbake writes (cells, requests, cache keys, examples, eval calls) is a
content hash of what defines it, so planning the same thing twice gives the same id and a re-run
finds its earlier answers instead of paying for them again.

The bytes hashed are ``json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",",
":"), default=str)``, as they always were: a store written by an earlier version must find its
answers. orjson writes the same bytes several times faster, except where the two differ: floats
below 1e-4 or from 1e16 up (``1e-05`` against ``0.00001``), NaN and infinities (``NaN`` against
``null``), integers beyond 64 bits and keys that are not strings (orjson refuses those). So
orjson's bytes are used only when they hold no number in exponent form or below 1e-4 and, if
there is a ``null`` in them, read back as the very value given (a NaN does not); otherwise the
standard library writes them. (An ``Enum`` member would be hashed by its value, not its name:
none comes from a spec or a data file.) tests/test_fastjson.py checks the two agree on values of
every kind.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import orjson

_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_E = re.compile(rb"[eE][-+0-9]")  # where an exponent may start (a literal first byte: a fast scan)
_NUMBER = frozenset(b"0123456789.-")


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Short content hash of JSON-able parts (sorted keys), the basis of every id we write."""
    return hashlib.sha256(canonical_json(list(parts))).hexdigest()[:length]


def canonical_json(value: Any) -> bytes:
    """The bytes :func:`stable_hash` hashes (see the module's docstring)."""
    try:
        blob = orjson.dumps(value, default=str, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is one
        blob = None
    if (
        blob is not None
        and b"0.0000" not in blob
        and not any(_exponent(blob, m.start()) for m in _E.finditer(blob))
        and (b"null" not in blob or orjson.loads(blob) == value)
    ):
        return blob
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def _exponent(blob: bytes, at: int) -> bool:
    """Whether the ``e`` at ``at`` ends the digits of a number: they follow ``[``, ``,`` or ``:``
    (a hex id such as ``"3e4f"`` follows a quote). Text like ``"a,1e5"`` is a harmless false alarm."""
    start = at
    while start > 0 and blob[start - 1] in _NUMBER:
        start -= 1
    return start < at and start > 0 and blob[start - 1] in b"[,:"
