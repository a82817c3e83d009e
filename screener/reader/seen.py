"""The ids a reader has seen and where, in 16 bytes per id, for duplicate detection at any size.

A Python dict of id -> "file:line" costs about 200 bytes per row (200 MB at a million rows);
`SeenIds` keeps a 64-bit hash of each id and its packed location in sorted numpy runs instead,
with the newest ids in a small dict. Runs are merged like a binary counter, so a lookup checks
the dict and at most log2(rows / RECENT_LIMIT) sorted runs.

Two different ids are taken for the same id only when their 64-bit hashes collide: about one
chance in 36 million at a million rows.
"""

from __future__ import annotations

import hashlib

import numpy as np

RECENT_LIMIT = 4096  # ids kept in the dict before they are moved into a sorted run
_LINE_BITS = 40  # a location is source_index << _LINE_BITS | line


def _key(sample_id: str) -> int:
    digest = hashlib.blake2b(sample_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class SeenIds:
    """Where each id was first seen; `first_seen` answers `file:line` or None."""

    def __init__(self) -> None:
        self._sources: list[str] = []
        self._source_index: dict[str, int] = {}
        self._recent: dict[int, int] = {}
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, locations)

    def __len__(self) -> int:
        return len(self._recent) + sum(len(keys) for keys, _ in self._runs)

    def first_seen(self, sample_id: str) -> str | None:
        key = _key(sample_id)
        location = self._recent.get(key)
        if location is None:
            wanted = np.uint64(key)
            for keys, locations in self._runs:
                position = int(np.searchsorted(keys, wanted))
                if position < len(keys) and keys[position] == wanted:
                    location = int(locations[position])
                    break
        if location is None:
            return None
        line = location & ((1 << _LINE_BITS) - 1)
        return f"{self._sources[location >> _LINE_BITS]}:{line}"

    def add(self, sample_id: str, source: str, line: int) -> None:
        """Record `sample_id` at `source:line` (call only for ids not seen before)."""
        index = self._source_index.get(source)
        if index is None:
            index = self._source_index[source] = len(self._sources)
            self._sources.append(source)
        self._recent[_key(sample_id)] = index << _LINE_BITS | line
        if len(self._recent) >= RECENT_LIMIT:
            self._flush()

    def _flush(self) -> None:
        keys = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
        locations = np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))
        self._recent = {}
        order = np.argsort(keys)
        self._runs.append((keys[order], locations[order]))
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= len(self._runs[-1][0]):
            newer = self._runs.pop()
            self._runs[-1] = _merge(self._runs[-1], newer)


def _merge(
    older: tuple[np.ndarray, np.ndarray], newer: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs with no key in common as one sorted run, without sorting again: each
    newer key goes where `searchsorted` puts it. At its peak the merge holds about 41 bytes per
    id (both runs, the merged run, the destinations), a concatenate-and-argsort 56."""
    (older_keys, older_locations), (newer_keys, newer_locations) = older, newer
    size = len(older_keys) + len(newer_keys)
    destinations = np.searchsorted(older_keys, newer_keys)
    destinations += np.arange(len(newer_keys))  # the newer keys before each one shift it on
    from_older = np.ones(size, dtype=bool)
    from_older[destinations] = False
    merged = []
    for old_values, new_values in ((older_keys, newer_keys), (older_locations, newer_locations)):
        values = np.empty(size, dtype=old_values.dtype)
        values[destinations] = new_values
        values[from_older] = old_values
        merged.append(values)
    return merged[0], merged[1]
