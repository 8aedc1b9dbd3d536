"""Dedupe against a shared index in a real ``redis-server`` (``dedupe.storage``): several machines,
one index. Each "machine" here is its own ``Deduper`` with its own connection."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from helpers import MINIMAL_SPEC, write_spec
from test_dedupe import _bench

from promptbake.curate.dedupe import Deduper, dedupe
from promptbake.errors import IndexUnavailable, SpecError
from promptbake.specification.models import DedupeConfig, DedupeStorage, load_spec

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed (Debian package redis-server; .ci/run installs it)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory) -> Iterator[int]:
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(10)


def shared(port: int, basename: str, **config: object) -> DedupeConfig:
    storage = DedupeStorage(redis={"host": "127.0.0.1", "port": port}, basename=basename)
    return DedupeConfig(storage=storage, **config)


@pytest.fixture(scope="module")
def corpus():
    return _bench().make_corpus(400, n_near=80, n_exact=40, seed=11)


def test_two_machines_sharing_one_index_decide_as_one_machine_would(redis_port, corpus):
    examples, truth = corpus
    half = len(examples) // 2
    alone = dedupe(examples, DedupeConfig())  # one machine, in memory, everything in order
    first = dedupe(examples[:half], shared(redis_port, "two-machines"))
    second = dedupe(examples[half:], shared(redis_port, "two-machines"))  # a new connection, same index
    assert [e.id for e in first.kept + second.kept] == [e.id for e in alone.kept]
    assert [d.as_dict() for d in first.dropped + second.dropped] == [d.as_dict() for d in alone.dropped]
    # The second machine dropped copies of what only the first one had seen.
    seen_first = {e.id for e in examples[:half]}
    across = [d for d in second.dropped if d.duplicate_of in seen_first]
    assert {d.reason for d in across} == {"near", "exact"}
    assert all(truth[d.id].source == d.duplicate_of for d in across)


def test_rerunning_against_the_same_index_keeps_what_it_kept(redis_port, corpus):
    examples, _ = corpus
    config = shared(redis_port, "rerun")
    once = dedupe(examples, config)
    again = dedupe(examples, config)
    assert [e.id for e in again.kept] == [e.id for e in once.kept]
    assert [d.as_dict() for d in again.dropped] == [d.as_dict() for d in once.dropped]


def test_indexes_with_different_basenames_do_not_see_each_other(redis_port, corpus):
    examples, _ = corpus
    seeded = Deduper(shared(redis_port, "one-dataset"))
    seeded.seed(examples)
    result = dedupe(examples[:50], shared(redis_port, "another-dataset"))
    assert len(result.kept) == len(dedupe(examples[:50], DedupeConfig()).kept)


def test_seeded_examples_in_the_shared_index_are_never_dropped_and_catch_copies(redis_port, corpus):
    examples, truth = corpus
    distinct = [e for e in examples if truth[e.id].kind == "distinct"]
    copies = [e for e in examples if truth[e.id].kind != "distinct"]
    Deduper(shared(redis_port, "seeded")).seed(distinct)  # e.g. the train/test set, from elsewhere
    result = dedupe(copies, shared(redis_port, "seeded"))
    assert not result.kept
    assert all(d.duplicate_of == truth[d.id].source for d in result.dropped)


def test_unreachable_redis_is_one_clear_error():
    config = DedupeConfig(storage=DedupeStorage(redis={"host": "127.0.0.1", "port": _free_port()},
                                                basename="nowhere"))
    with pytest.raises(IndexUnavailable, match=r"dedupe\.storage: Redis .*127\.0\.0\.1"):
        Deduper(config)


def test_spec_names_a_shared_index_and_must_name_it(tmp_path):
    storage = "dedupe:\n  storage: {type: redis, redis: {host: 10.0.0.5, port: 6379}, basename: rude}\n"
    spec = load_spec(write_spec(tmp_path, MINIMAL_SPEC + storage))
    assert spec.dedupe.storage is not None
    assert spec.dedupe.storage.storage_config() == {
        "type": "redis", "redis": {"host": "10.0.0.5", "port": 6379}, "basename": b"rude"}
    unnamed = "dedupe:\n  storage: {type: redis}\n"
    with pytest.raises(SpecError, match=r"spec\.yaml.*dedupe\.storage\.basename"):
        load_spec(write_spec(tmp_path, MINIMAL_SPEC + unnamed))
