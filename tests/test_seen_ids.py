"""SeenIds answers exactly what a plain dict of id -> "file:line" answers, across run merges."""

from __future__ import annotations

import random

from screener.reader import seen
from screener.reader.seen import SeenIds


def test_seen_ids_matches_a_plain_dict_across_merges(monkeypatch) -> None:
    monkeypatch.setattr(seen, "RECENT_LIMIT", 7)  # many flushes and merges on few ids
    rng = random.Random(0)
    reference: dict[str, str] = {}
    ids = SeenIds()
    sources = ["a.jsonl", "dir/b.csv", "c.parquet"]
    for step in range(3000):
        sample_id = f"id-{rng.randrange(2000)}" if step % 3 else f"ünï-{rng.randrange(500)}"
        expected = reference.get(sample_id)
        assert ids.first_seen(sample_id) == expected
        if expected is None:
            source, line = rng.choice(sources), rng.randrange(1, 2**39)
            ids.add(sample_id, source, line)
            reference[sample_id] = f"{source}:{line}"
    assert len(ids) == len(reference)
    assert len(ids._runs) <= 1 + len(reference).bit_length()
    for keys, locations in ids._runs:  # each run strictly sorted, a location per key
        assert (keys[1:] > keys[:-1]).all() and len(locations) == len(keys)
    for sample_id, where in reference.items():
        assert ids.first_seen(sample_id) == where
    assert ids.first_seen("never added") is None
