"""Exact and near-duplicate removal over the text fields a spec names.

Two passes because they cost very different amounts: an exact duplicate (same text once case,
whitespace, punctuation and Unicode width are normalised away) is a dictionary lookup, while a near
duplicate (the teacher rephrasing a word or two) needs MinHash signatures and an LSH index. Both run
against everything kept so far, so the first occurrence wins and input order is preserved.

A ``Deduper`` can be seeded with examples that must not be dropped (everything already in
train/test), so top-up rounds only ever reject the *new* examples that repeat what we have.

Speed: MinHash is the cost (shingles x permutations). Signatures are computed for batches of
examples at once with numpy, in slices small enough to stay in CPU cache, using datasketch's
``affine32`` scheme: they are identical to what ``datasketch.MinHash.update_batch`` would produce
from the same shingle hashes (a test checks this). Everything is seeded and hashed with
process-independent functions (crc32, blake2b), so decisions are identical across runs.

Memory: the LSH index is not datasketch's ``MinHashLSH`` with its default dict storage, which at a
million examples held a Python set per bucket, a bytes key per band per example and a
``LeanMinHash`` object per example (about 4 GiB). It uses datasketch's band layout (the same
``b`` x ``r`` for the threshold, so the same candidates) over flat numpy arrays: a signature
costs ``num_perm`` uint32 and each band one (uint64 band hash, uint32 key) pair, kept sorted per
band so that a whole chunk of examples is looked up with one ``searchsorted`` per band. Only the
band arrays stay in memory: a signature is read back only for a candidate, so signatures wait in
an unnamed temporary file (512 bytes an example at 128 permutations, 488 MiB at a million). For data
spread over several machines, ``dedupe.storage`` puts the index in Redis through datasketch's own
storage backend instead (:class:`_SharedIndex`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Literal, Protocol

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from promptbake.curate.normalise import normalise
from promptbake.errors import IndexUnavailable, InputError, OutputError, SpecError
from promptbake.records import Example
from promptbake.specification.models import DedupeConfig, DedupeStorage

ROLES = ("system", "developer", "user", "assistant", "tool", "opening")  # opening: the first user turn
Reason = Literal["exact", "near"]

_SEED = 1  # fixed permutation seed: the same text must get the same signature in every run
_SCHEME = "affine32"
# Shingles per numpy batch: shingles x num_perm uint32 (1 MiB at 128 perms) stays in cache, which
# measured ~6x faster than batching 160k shingles at once.
_BATCH = 2048
# LSH band layout favours recall: every candidate is verified against its Jaccard estimate, so a
# false candidate costs one comparison while a missed one is a duplicate left in the data.
_LSH_WEIGHTS = (0.1, 0.9)  # (false positive, false negative)
# Examples decided per index lookup: large enough that numpy calls dominate Python overhead, small
# enough that the examples held meanwhile stay a few MiB.
_CHUNK_MIN, _CHUNK_MAX = 1024, 16384


@dataclass(frozen=True, slots=True)
class Dropped:
    """Why one example was left out, and which kept example it repeats."""

    id: str
    category: str
    reason: Reason
    duplicate_of: str
    similarity: float  # 1.0 for exact; the MinHash Jaccard estimate for near

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "category": self.category,
            "reason": self.reason,
            "duplicate_of": self.duplicate_of,
            "similarity": self.similarity,
        }


@dataclass(slots=True)
class CategoryCounts:
    before: int = 0
    exact: int = 0
    near: int = 0

    @property
    def after(self) -> int:
        return self.before - self.exact - self.near

    def as_dict(self) -> dict[str, int]:
        return {"before": self.before, "exact": self.exact, "near": self.near, "after": self.after}


@dataclass
class DedupeResult:
    kept: list[Example]
    dropped: list[Dropped]
    counts: dict[str, CategoryCounts] = field(default_factory=dict)  # first-seen category order


@dataclass(slots=True)
class _Prepared:
    example: Example
    key: bytes  # digest of the normalised fields
    sig: np.ndarray | None  # MinHash values; None when near dedupe is off or the fields have no words


class _Signer:
    """MinHash signatures of word-shingle sets, for many documents per numpy call."""

    def __init__(self, num_perm: int, shingle: int) -> None:
        self.shingle = shingle
        self.num_perm = num_perm
        a, b = MinHash(num_perm=num_perm, seed=_SEED, scheme=_SCHEME).permutations
        self._a = a.astype(np.uint32)
        self._b = b.astype(np.uint32)
        # Odd 64-bit multipliers combining word hashes into a shingle hash, one per position.
        rng = np.random.default_rng(_SEED)
        self._mult = rng.integers(1, 2**63, size=shingle, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._words: dict[str, int] = {}

    def shingle_count(self, n_words: int) -> int:
        # Fewer words than the shingle size: the whole text is one shingle, so short texts are
        # still compared (they match only when their words match).
        return max(n_words - self.shingle + 1, 1)

    def shingle_hashes(self, docs: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """uint32 hash of every shingle of every doc (each doc non-empty), docs concatenated, and
        the number of shingles per doc."""
        k = self.shingle
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        total = int(lengths.sum())
        words = np.zeros(total + k, dtype=np.uint64)
        cache = self._words
        for word in set(chain.from_iterable(docs)).difference(cache):
            cache[word] = zlib.crc32(word.encode("utf-8"))
        words[:total] = np.fromiter(
            map(cache.__getitem__, chain.from_iterable(docs)), dtype=np.uint64, count=total
        )
        ends = np.cumsum(lengths)
        pos = np.arange(total)
        end_of = np.repeat(ends, lengths)
        h = np.zeros(total, dtype=np.uint64)
        for j in range(k):
            # Words past the end of their own doc contribute nothing (short docs, last shingles).
            h += np.where(pos + j < end_of, words[j : j + total], 0) * self._mult[j]
        starts = ends - lengths
        counts = np.maximum(lengths - k + 1, 1)
        keep = (pos - np.repeat(starts, lengths)) < np.repeat(counts, lengths)
        h = h[keep]
        return (h ^ (h >> np.uint64(32))).astype(np.uint32), counts

    def signatures(self, docs: list[list[str]]) -> np.ndarray:
        """(len(docs), num_perm) uint32 MinHash values, datasketch's affine32 scheme."""
        hashes, counts = self.shingle_hashes(docs)
        hv = _fmix32(hashes)
        if len(docs) == 1:
            sig = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
            for s in range(0, len(hv), _BATCH):
                sig = np.minimum(sig, (hv[s : s + _BATCH, None] * self._a + self._b).min(axis=0))
            return sig[None, :]
        offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
        return np.minimum.reduceat(hv[:, None] * self._a + self._b, offsets, axis=0)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser: the pre-mix datasketch's affine32 scheme applies."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    mixed: np.ndarray = h ^ (h >> np.uint32(16))
    return mixed


class _Bands:
    """datasketch's band layout for a threshold, with each band's ``r`` values hashed to a uint64.

    Two examples are LSH candidates when all ``r`` values of some band are equal, exactly as in
    ``MinHashLSH``; a 64-bit hash collision could add a candidate, which verification rejects.
    """

    def __init__(self, config: DedupeConfig) -> None:
        lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, weights=_LSH_WEIGHTS)
        self.count, self.rows = lsh.b, lsh.r
        rng = np.random.default_rng(_SEED + 1)
        self._mult = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

    def hashes(self, sigs: np.ndarray) -> np.ndarray:
        """(len(sigs), bands) uint64: a multiply-add of each band's values, wrapping mod 2**64."""
        cube = sigs[:, : self.count * self.rows].reshape(len(sigs), self.count, self.rows)
        hashed: np.ndarray = (cube.astype(np.uint64) * self._mult).sum(axis=2, dtype=np.uint64)
        return hashed


def _equal_pairs(sorted_hashes: np.ndarray, keys: np.ndarray,
                 query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (query row, key) whose band hash is equal, for a whole chunk in two searchsorted calls."""
    lo = np.searchsorted(sorted_hashes, query, "left")
    counts = np.searchsorted(sorted_hashes, query, "right") - lo
    rows = np.repeat(np.arange(len(query)), counts)
    shift = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return rows, keys[np.arange(len(rows)) + shift]


def _similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash Jaccard estimate of paired rows, computed as ``LeanMinHash.jaccard`` does."""
    similarity: np.ndarray = np.count_nonzero(a == b, axis=-1) / a.shape[-1]
    return similarity


Match = tuple[str, float]  # (kept example id, similarity)


class _Index(Protocol):
    """Everything kept so far: exact digests and near-duplicate signatures."""

    @property
    def chunk_size(self) -> int:
        """How many examples the deduper hands the index at once."""

    def exact(self, items: list[_Prepared]) -> list[str | None]:
        """The id an equal digest was registered under, per item (None: new)."""

    def nearest(self, items: list[_Prepared], sigs: np.ndarray, bands: np.ndarray) -> list[Match | None]:
        """Per signed item, its most similar LSH candidate (ties: the earliest registered)."""

    def register(self, items: list[_Prepared], sigs: np.ndarray, bands: np.ndarray) -> list[str | None]:
        """Remember kept items (``sigs`` and ``bands`` are those of the signed ones, in order).
        Returns per item the id of an exact duplicate registered concurrently elsewhere, if any."""


class _LocalIndex:
    """The index in this process's memory, as flat numpy arrays (see the module docstring)."""

    def __init__(self, config: DedupeConfig, bands: _Bands) -> None:
        self._num_perm = config.num_perm
        self._exact: dict[bytes, str] = {}
        self._ids: list[str] = []  # key -> example id
        # signatures, key k at row k: in the page cache, not this process (see the module docstring)
        self._row = config.num_perm * np.dtype(np.uint32).itemsize
        try:
            handle, path = tempfile.mkstemp(prefix="promptbake-dedupe-")
        except OSError as exc:
            raise _unwritable(exc) from None
        os.unlink(path)  # gone with its last descriptor, even after kill -9
        self._fd = handle
        weakref.finalize(self, os.close, handle)
        self._hashes = [np.empty(0, np.uint64) for _ in range(bands.count)]  # sorted, per band
        self._keys = [np.empty(0, np.uint32) for _ in range(bands.count)]  # aligned with _hashes

    @property
    def chunk_size(self) -> int:
        # Each chunk re-writes the sorted arrays once, so chunks grow with the index.
        return min(_CHUNK_MAX, max(_CHUNK_MIN, len(self._ids) // 4))

    def exact(self, items: list[_Prepared]) -> list[str | None]:
        return [self._exact.get(item.key) for item in items]

    def nearest(self, items: list[_Prepared], sigs: np.ndarray, bands: np.ndarray) -> list[Match | None]:
        found: list[Match | None] = [None] * len(items)
        if not self._ids or not len(sigs):
            return found
        pairs = [_equal_pairs(self._hashes[t], self._keys[t], bands[:, t]) for t in range(len(self._hashes))]
        codes = np.unique(np.concatenate([(r.astype(np.uint64) << np.uint64(32)) | k for r, k in pairs]))
        rows, keys = (codes >> np.uint64(32)).astype(np.int64), (codes & np.uint64(0xFFFFFFFF)).astype(np.int64)
        scores = _similarity(sigs[rows], self._signatures(keys))
        best = np.lexsort((keys, -scores, rows))  # per row: highest score, then earliest key
        first = best[np.r_[True, rows[best][1:] != rows[best][:-1]]] if len(best) else best
        for at in first:
            found[rows[at]] = (self._ids[keys[at]], float(scores[at]))
        return found

    def register(self, items: list[_Prepared], sigs: np.ndarray, bands: np.ndarray) -> list[str | None]:
        for item in items:
            self._exact.setdefault(item.key, item.example.id)
        if len(sigs):
            start = len(self._ids)
            self._ids.extend(item.example.id for item in items if item.sig is not None)
            self._store(start, sigs)
            keys = np.arange(start, start + len(sigs), dtype=np.uint32)
            for t in range(len(self._hashes)):
                order = np.argsort(bands[:, t], kind="stable")
                at = np.searchsorted(self._hashes[t], bands[order, t], "right")
                self._hashes[t] = np.insert(self._hashes[t], at, bands[order, t])
                self._keys[t] = np.insert(self._keys[t], at, keys[order])
        return [None] * len(items)

    def _store(self, start: int, sigs: np.ndarray) -> None:
        data = np.ascontiguousarray(sigs, np.uint32).tobytes()
        try:
            written = os.pwrite(self._fd, data, start * self._row)
        except OSError as exc:
            raise _unwritable(exc) from None
        if written < len(data):  # a file writes short only where it cannot grow
            raise _unwritable(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    def _signatures(self, keys: np.ndarray) -> np.ndarray:
        unique, where = np.unique(keys, return_inverse=True)
        data = b"".join(os.pread(self._fd, self._row, int(key) * self._row) for key in unique)
        return np.frombuffer(data, np.uint32).reshape(len(unique), self._num_perm)[where]


def _unwritable(exc: OSError) -> OutputError:
    """A full or read-only temporary directory, named, with where to point it instead."""
    return OutputError(f"{tempfile.gettempdir()}: cannot write dedupe's signature file ({exc.strerror or exc}); "
                       "set TMPDIR to a directory with room")


class _SharedIndex:
    """The index in Redis, shared by every machine that names the same ``basename``.

    Built on datasketch's storage backend: its ``MinHashLSH`` holds the buckets (band -> example
    ids), and two more of its storages hold each kept example's signature (a candidate another
    machine registered must still be verified) and the owners of each exact digest. Owners are a
    list appended with RPUSH, which Redis applies in one order, so when two machines keep the same
    text at once the first in the list wins and the other drops its copy as an exact duplicate.
    Near duplicates checked at the same instant on two machines can both be kept: each machine only
    sees what the others had registered when it looked. Re-running a build against the same index
    keeps what it kept before: an example never duplicates its own id.
    """

    chunk_size = 4096  # one pipelined round trip per band and chunk

    def __init__(self, config: DedupeConfig, storage: DedupeStorage) -> None:
        try:
            import redis
            from datasketch.storage import ordered_storage
        except ImportError:
            raise InputError("dedupe.storage: the Redis index needs the redis package "
                             "(pip install 'promptbake[redis]')") from None
        self._errors: tuple[type[Exception], ...] = (redis.RedisError,)
        self._where = storage.redis
        cfg = storage.storage_config()
        base = cfg["basename"]
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, weights=_LSH_WEIGHTS,
                               storage_config=cfg, prepickle=False)
        self._sigs = ordered_storage(cfg, name=base + b"_signatures")
        self._owners = ordered_storage(cfg, name=base + b"_exact")
        with self._talking():
            self._sigs.size()  # fail now, with the address, if Redis is not there

    @contextlib.contextmanager
    def _talking(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            host = {k: v for k, v in self._where.items() if k in ("host", "port", "db")}
            raise IndexUnavailable(f"dedupe.storage: Redis {host}: {exc}") from None

    def exact(self, items: list[_Prepared]) -> list[str | None]:
        with self._talking():
            owners = self._owners.getmany(*[item.key for item in items]) if items else []
        return [_owner(found, item) for found, item in zip(owners, items, strict=True)]

    def nearest(self, items: list[_Prepared], sigs: np.ndarray, bands: np.ndarray) -> list[Match | None]:
        if not items:
            return []
        found: list[set[bytes]] = [set() for _ in items]
        with self._talking():
            for (start, end), table in zip(self._lsh.hashranges, self._lsh.hashtables, strict=True):
                # the bucket key datasketch writes: the band's values, byte-swapped
                buckets = table.getmany(*[bytes(sig[start:end].byteswap().data) for sig in sigs])
                for members, into in zip(buckets, found, strict=True):
                    into.update(members)
            for members, item in zip(found, items, strict=True):
                members.discard(item.example.id.encode("utf-8"))
            candidates = sorted(set().union(*found))  # sorted ids: ties go to the smallest
            stored = self._sigs.getmany(*candidates) if candidates else []
        known = {key: np.frombuffer(value[0], np.uint32)
                 for key, value in zip(candidates, stored, strict=True) if value}
        matches: list[Match | None] = []
        for sig, members in zip(sigs, found, strict=True):
            keys = [key for key in sorted(members) if key in known]
            if not keys:
                matches.append(None)
                continue
            scores = _similarity(np.stack([known[key] for key in keys]), sig)
            at = int(np.argmax(scores))
            matches.append((keys[at].decode("utf-8"), float(scores[at])))
        return matches

    def register(self, items: list[_Prepared], sigs: np.ndarray, bands: np.ndarray) -> list[str | None]:
        with self._talking():
            for item in items:
                self._owners.insert(item.key, item.example.id.encode("utf-8"), buffer=True)
            self._owners.empty_buffer()
            lost = self.exact(items)  # someone else's id first in the list: they kept it first
            signed = [owner for item, owner in zip(items, lost, strict=True) if item.sig is not None]
            with self._lsh.insertion_session() as session:
                for item, owner, sig in zip([i for i in items if i.sig is not None], signed, sigs,
                                            strict=True):
                    if owner is None:
                        key = item.example.id.encode("utf-8")
                        self._sigs.insert(key, sig.tobytes(), buffer=True)
                        session.insert(key, LeanMinHash(seed=_SEED, hashvalues=sig, scheme=_SCHEME),
                                       check_duplication=False)
                self._sigs.empty_buffer()
        return lost


def _owner(found: list[bytes], item: _Prepared) -> str | None:
    owner = found[0].decode("utf-8") if found else None
    return None if owner == item.example.id else owner


class Deduper:
    """Streams examples against everything kept (or seeded) so far.

    ``add`` / ``add_many`` drop what repeats the kept set and keep the rest; ``seed`` registers
    examples that are never dropped (the existing train/test set during top-up). The kept set lives
    in memory, or in Redis when the config names a ``storage`` (shared between machines).
    """

    def __init__(self, config: DedupeConfig) -> None:
        if not config.fields:
            raise SpecError("dedupe.fields: name at least one role to compare")
        for name in config.fields:
            if name not in ROLES:
                raise SpecError(f"dedupe.fields: unknown role {name!r} (use one of {', '.join(ROLES)})")
        self.config = config
        self._signer = _Signer(config.num_perm, config.shingle)
        self._bands = _Bands(config)
        self._index: _Index = (_LocalIndex(config, self._bands) if config.storage is None
                               else _SharedIndex(config, config.storage))

    def seed(self, existing: Iterable[Example]) -> None:
        """Remember examples as kept without checking them: later additions are compared to them."""
        for chunk in self._chunks(existing):
            sigs = self._stack(chunk)
            self._index.register(chunk, sigs, self._bands.hashes(sigs))

    def add(self, example: Example) -> Dropped | None:
        """Keep ``example`` (returns None) or say which kept example it duplicates."""
        ((_, dropped),) = self.add_many([example])
        return dropped

    def add_many(
        self, examples: Iterable[Example], *, register: bool = True
    ) -> Iterator[tuple[Example, Dropped | None]]:
        """Like ``add`` for each example, in order, but signing and looking up in chunks (much
        faster). Decisions are the same as one ``add`` at a time. Lazy by chunk: an example is
        registered by the time it is yielded, and the next chunk is read only after that.
        ``register=False`` only compares with what is registered (``seed``): the examples are
        neither registered nor compared with each other.
        """
        decide = self._decide if register else self._compare
        for chunk in self._chunks(examples):
            yield from zip((item.example for item in chunk), decide(chunk), strict=True)

    def _lookup(self, chunk: list[_Prepared]) -> tuple[list[int], dict[int, int], np.ndarray, np.ndarray,
                                                       list[str | None], list[Match | None]]:
        """The chunk's signed items, their rows, signatures and band hashes, and what the index
        holds for each: an exact duplicate's id, the nearest candidate."""
        signed = [i for i, item in enumerate(chunk) if item.sig is not None]
        row_of = {i: row for row, i in enumerate(signed)}
        sigs = self._stack(chunk)
        bands = self._bands.hashes(sigs)
        exact = self._index.exact(chunk)
        nearest = self._index.nearest([chunk[i] for i in signed], sigs, bands)
        return signed, row_of, sigs, bands, exact, nearest

    def _compare(self, chunk: list[_Prepared]) -> list[Dropped | None]:
        """Each of the chunk's examples against the index alone; nothing is registered."""
        _, row_of, _, _, exact, nearest = self._lookup(chunk)
        decisions: list[Dropped | None] = []
        for i, item in enumerate(chunk):
            ex, best, same = item.example, nearest[row_of[i]] if i in row_of else None, exact[i]
            if same is not None:
                decisions.append(Dropped(ex.id, ex.category, "exact", same, 1.0))
            elif best is not None and best[1] >= self.config.threshold:
                decisions.append(Dropped(ex.id, ex.category, "near", best[0], best[1]))
            else:
                decisions.append(None)
        return decisions

    def _decide(self, chunk: list[_Prepared]) -> list[Dropped | None]:
        """The chunk's examples in order, each against the index and the chunk's earlier kept ones."""
        signed, row_of, sigs, bands, exact, nearest = self._lookup(chunk)
        # The chunk's own kept rows, by band hash: only kept rows are ever candidates, so a chunk
        # of a thousand copies of one refusal costs a thousand lookups, not a million pairs.
        buckets: list[dict[int, list[int]]] = [{} for _ in range(self._bands.count)]
        band_rows = bands.tolist()
        decisions: list[Dropped | None] = []
        first_seen: dict[bytes, str] = {}
        for i, item in enumerate(chunk):
            ex = item.example
            original = exact[i] or first_seen.get(item.key)
            if original is not None:
                decisions.append(Dropped(ex.id, ex.category, "exact", original, 1.0))
                continue
            row = row_of.get(i)
            if row is not None:
                best = nearest[row]
                earlier = {e for t, h in enumerate(band_rows[row]) for e in buckets[t].get(h, ())}
                for e in sorted(earlier):  # registered after the index's: wins only if better
                    score = float(_similarity(sigs[e], sigs[row]))
                    if best is None or score > best[1]:
                        best = (chunk[signed[e]].example.id, score)
                if best is not None and best[1] >= self.config.threshold:
                    decisions.append(Dropped(ex.id, ex.category, "near", best[0], best[1]))
                    continue
                for t, h in enumerate(band_rows[row]):
                    buckets[t].setdefault(h, []).append(row)
            first_seen.setdefault(item.key, ex.id)
            decisions.append(None)
        kept = [i for i, d in enumerate(decisions) if d is None]
        rows = [row_of[i] for i in kept if i in row_of]
        lost = self._index.register([chunk[i] for i in kept], sigs[rows], bands[rows])
        for i, owner in zip(kept, lost, strict=True):
            if owner is not None:
                ex = chunk[i].example
                decisions[i] = Dropped(ex.id, ex.category, "exact", owner, 1.0)
        return decisions

    def _stack(self, chunk: list[_Prepared]) -> np.ndarray:
        sigs = [item.sig for item in chunk if item.sig is not None]
        return np.stack(sigs) if sigs else np.empty((0, self.config.num_perm), np.uint32)

    def _chunks(self, examples: Iterable[Example]) -> Iterator[list[_Prepared]]:
        chunk: list[_Prepared] = []
        for item in self._prepare(examples):
            chunk.append(item)
            if len(chunk) >= self._index.chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _prepare(self, examples: Iterable[Example]) -> Iterator[_Prepared]:
        """Normalise and sign examples, batching the signing so numpy does the heavy lifting."""
        pending: list[tuple[Example, bytes, list[str]]] = []
        shingles = 0
        for ex in examples:
            fields = [normalise(ex.text(role)) for role in self.config.fields]
            key = hashlib.blake2b("\x1f".join(fields).encode("utf-8"), digest_size=16).digest()
            words = " ".join(fields).split() if self.config.near else []
            n = self._signer.shingle_count(len(words)) if words else 0
            if pending and shingles + n > _BATCH:
                yield from self._sign(pending)
                pending, shingles = [], 0
            pending.append((ex, key, words))
            shingles += n
        if pending:
            yield from self._sign(pending)

    def _sign(self, pending: list[tuple[Example, bytes, list[str]]]) -> Iterator[_Prepared]:
        docs = [words for _, _, words in pending if words]
        sigs = iter(self._signer.signatures(docs)) if docs else iter(())
        for ex, key, words in pending:
            yield _Prepared(ex, key, next(sigs) if words else None)


def dedupe(
    examples: Iterable[Example], config: DedupeConfig, existing: Iterable[Example] = (), *,
    keep: Callable[[Example], object] | None = None, drop: Callable[[Dropped], object] | None = None,
) -> DedupeResult:
    """Drop exact and near duplicates; the first occurrence wins and input order is kept.

    ``existing`` examples are compared against but never dropped or returned (top-up: new
    examples versus everything already in train/test). ``enabled: false`` keeps repeats among
    ``examples`` but still drops those that repeat ``existing``: a top-up must not copy the test
    split, nor a distillation the prompt's own examples. ``keep`` and ``drop``, when given, are
    handed each kept example and each drop as it is decided, in order, instead of the result
    collecting them: a build of a million examples never holds them all.
    """
    result = DedupeResult(kept=[], dropped=[])
    kept = keep or result.kept.append
    dropping = drop or result.dropped.append
    existing = list(existing)
    if not config.enabled and not existing:  # nothing to compare with: skip the signing
        for ex in examples:
            result.counts.setdefault(ex.category, CategoryCounts()).before += 1
            kept(ex)
        return result
    deduper = Deduper(config)
    deduper.seed(existing)
    for ex, dropped in deduper.add_many(examples, register=config.enabled):
        counts = result.counts.setdefault(ex.category, CategoryCounts())
        counts.before += 1
        if dropped is None:
            kept(ex)
        else:
            dropping(dropped)
            if dropped.reason == "exact":
                counts.exact += 1
            else:
                counts.near += 1
    return result
