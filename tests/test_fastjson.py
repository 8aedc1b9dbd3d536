"""orjson on the hot path must not change a byte of what ids hash, nor a value of what is stored or
sent: checked against the standard library on values of every kind, edge cases first."""

from __future__ import annotations

import datetime
import json
import math
import random
import struct
from decimal import Decimal
from pathlib import Path

import pytest

from promptbake import fastjson
from promptbake.ids import stable_hash


def canonical_json(value) -> bytes:
    """What stable_hash hashes: orjson's bytes where they are json's."""
    fast = fastjson.sorted_dumps(value)
    return fast.encode() if fast is not None else reference(value)


def reference(value) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def same(a, b) -> bool:
    """Equal as JSON values, NaN included (NaN != NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


EDGES = [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30,
    0.0, -0.0, 0.1, 1.5, 1e-4, 9.99e-5, 1e-5, 2.5e-7, 5e-324, 1e15, 1e16, 1.5e16, 1.7976931348623157e308,
    float("nan"), float("inf"), float("-inf"),
    "", "null", "NaN", "0.00001", "a,1e5", "x:2E+3", "3e4f", "\x00\x1f\x7f\"\\/\n\t\u2028\u2029", "é😀中",
    [], {}, [None], {"b": 1, "a": None, "é": [1e-5, "null"]}, {"": 0}, {1: "int key"}, {None: 1},
    ("a", 1), datetime.date(2024, 1, 2), datetime.datetime(2024, 1, 2, 3, 4, 5), Decimal("1.10"), Path("x/y"),
    {1, 2},
]


@pytest.mark.parametrize("value", EDGES, ids=repr)
def test_ids_hash_the_bytes_json_writes(value):
    assert canonical_json([value, {"k": value}]) == reference([value, {"k": value}])


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12 if depth < 4 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([rng.randrange(-1000, 1000), rng.getrandbits(70) - 2**69, rng.getrandbits(63)])
    if kind in (3, 4):
        bits = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        return rng.choice([bits, rng.uniform(-1, 1) * 10 ** rng.uniform(-30, 30), float(rng.randrange(100))])
    if kind in (5, 6, 7):
        alphabet = "ab e1-0.:,[]{}\"\\\n\x01é😀"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if kind in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["".join(rng.choice("abé1 ") for _ in range(rng.randrange(4))) for _ in range(rng.randrange(4))]
    return {k: random_value(rng, depth + 1) for k in keys}


def test_ids_agree_with_json_on_random_values():
    rng = random.Random(7)
    for _ in range(20_000):
        value = [random_value(rng)]
        assert canonical_json(value) == reference(value), value


def test_stable_hash_is_unchanged():
    """Ids written by earlier versions (json.dumps of the parts, sha256) stay the same."""
    parts = ("spec", {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.7}, None, 1e-5, [1, "3e4"])
    import hashlib

    assert stable_hash(*parts, length=32) == hashlib.sha256(reference(list(parts))).hexdigest()[:32]


@pytest.mark.parametrize("value", [v for v in EDGES if not isinstance(v, (datetime.date, Decimal, Path, set))],
                         ids=repr)
def test_store_and_wire_json_reads_back_as_json_would(value):
    try:
        expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except TypeError:
        with pytest.raises(TypeError):
            fastjson.dumps_text(value)
        return
    text = fastjson.dumps_text(value)
    assert same(json.loads(text), json.loads(expected))
    assert fastjson.dumps(value) == text.encode()
    assert same(fastjson.loads(text), json.loads(expected))
    assert same(fastjson.loads(text.encode()), json.loads(expected))


def test_store_json_refuses_what_json_refuses():
    for value in (datetime.date(2024, 1, 2), Decimal("1.1"), {1, 2}):
        with pytest.raises(TypeError):
            json.dumps(value)
        with pytest.raises(TypeError):
            fastjson.dumps_text(value)


def test_loads_takes_what_json_takes():
    for text in ('[NaN, Infinity, -Infinity]', '"\\ud800"', '{"a": 1, "a": 2}', '1e400', str(2**70), str(2**64),
                 str(-(2**63) - 1), '["\ud800", 1]'):
        assert same(fastjson.loads(text), json.loads(text)), text
    with pytest.raises(ValueError):
        fastjson.loads(b"\xff")
    with pytest.raises(ValueError):
        fastjson.loads("{")


def test_loads_agrees_with_json_on_random_texts():
    rng = random.Random(11)
    for _ in range(20_000):
        text = json.dumps([random_value(rng)], ensure_ascii=rng.random() < 0.5)
        assert same(fastjson.loads(text), json.loads(text)), text
        assert same(fastjson.loads(text.encode()), json.loads(text)), text


def test_ids_of_ordinary_requests_take_the_fast_path():
    """The point of it all: the parts of a typical request id are written by orjson."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say 3 things, e.g. 1e5."}],
            "temperature": 1.0, "max_tokens": 64}
    for parts in ((body, "text", None, 1, [{"x": "y"}, 0, 0]), ("spec", "step", "fdbc6793229f3e4c", None, 0, [0])):
        assert fastjson.sorted_dumps(parts) is not None
        assert fastjson.sorted_dumps(parts).encode() == reference(parts)


@pytest.mark.parametrize("parts", [
    (None, {"x": float("nan")}), (None, None, [float("inf")]), ("null", None, {"a": None, "b": float("-inf")}),
    (None, "NaN", 1e-5), (None, [None, None], "x"),
])
def test_a_nan_beside_top_level_nones_is_still_caught(parts):
    assert canonical_json(parts) == reference(parts)
