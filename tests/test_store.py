"""The run store: what goes in comes out exactly, rows are never duplicated, a 64-bit key
collision can only cost a recomputation, and stores from before the key column are carried
over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
import torch

from screener import store as store_module
from screener.store import MIGRATIONS, LayerActivations, RunStore, row_key, schema_version

OLD_SCHEMA = """
CREATE TABLE base_responses (model VARCHAR NOT NULL, prompt_hash VARCHAR NOT NULL,
    settings VARCHAR NOT NULL, response VARCHAR NOT NULL,
    PRIMARY KEY (model, prompt_hash, settings));
CREATE TABLE activations (model VARCHAR NOT NULL, content_hash VARCHAR NOT NULL,
    layer INTEGER NOT NULL, response_mean BLOB NOT NULL, last_prompt BLOB NOT NULL,
    PRIMARY KEY (model, content_hash, layer));
"""


def vectors(seed: float) -> LayerActivations:
    return LayerActivations(torch.arange(4.0) + seed, torch.arange(4.0) - seed)


def assert_same(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(found[key].response_mean, value.response_mean)
        assert torch.equal(found[key].last_prompt, value.last_prompt)


def test_what_is_put_is_got_back_once(tmp_path: Path) -> None:
    with RunStore.open(tmp_path / "store.duckdb") as store:
        first = {("a", 1): vectors(1), ("a", 2): vectors(2), ("b", 1): vectors(3)}
        store.put_activations("m", first)
        store.put_activations("m", {("a", 1): vectors(9), ("c", 1): vectors(4)})  # a1 kept
        assert_same(
            store.get_activations("m", ["a", "b", "c", "a", "missing"], [1, 2]),
            {**first, ("c", 1): vectors(4)},
        )
        assert store.get_activations("other model", ["a"], [1]) == {}
        store.put_base_responses("m", "greedy", {"p1": "one", "p2": "two"})
        store.put_base_responses("m", "greedy", {"p1": "changed"})
        assert store.get_base_responses("m", ["p1", "p2", "p3", "p1"], "greedy") == {
            "p1": "one",
            "p2": "two",
        }
        assert store.get_base_responses("m", ["p1"], "sampled") == {}
        counts = [store.export_table(name).num_rows for name in store_module.TABLES]
        assert counts == [2, 4]


def test_a_key_collision_costs_a_recomputation_never_a_wrong_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "row_key", lambda *parts: 7)  # every row collides
    with RunStore.open(tmp_path / "store.duckdb") as store:
        store.put_activations("m", {("a", 1): vectors(1), ("b", 1): vectors(2)})
        found = store.get_activations("m", ["a", "b"], [1])
        assert len(found) == 1  # one of the two was stored, under the shared key
        ((content, _), value), seeds = next(iter(found.items())), {"a": 1, "b": 2}
        assert torch.equal(value.response_mean, vectors(seeds[content]).response_mean)
        store.put_base_responses("m", "greedy", {"p1": "one"})
        store.put_base_responses("m", "greedy", {"p2": "two"})
        assert store.get_base_responses("m", ["p1", "p2"], "greedy") == {"p1": "one"}


def test_a_store_from_before_the_key_column_is_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as old:
        old.execute(OLD_SCHEMA)
        blob = vectors(5).response_mean.numpy().tobytes()
        old.execute("INSERT INTO activations VALUES ('m', 'a', 3, ?, ?)", [blob, blob])
        old.execute("INSERT INTO base_responses VALUES ('m', 'p', 'greedy', 'hello')")
    with RunStore.open(path) as store:
        found = store.get_activations("m", ["a"], [3])
        assert torch.equal(found[("a", 3)].response_mean, vectors(5).response_mean)
        assert store.get_base_responses("m", ["p"], "greedy") == {"p": "hello"}
        tables = {
            row[0]
            for row in store.connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
    assert tables == {*store_module.TABLES, "schema_version"}
    with RunStore.open(path) as store:  # opening again changes nothing
        assert store.export_table("activations_v2").num_rows == 1
        assert schema_version(store.connection) == len(MIGRATIONS)
    # the migrated schema is a new store's, column for column
    with RunStore.open(tmp_path / "new.duckdb") as new:
        fresh = columns(new.connection)
    with RunStore.open(path) as store:
        assert columns(store.connection) == fresh


def columns(connection: Any) -> list[tuple[str, str, str, bool]]:
    """Every column of every table of a store: table, name, type, nullable."""
    return connection.execute(
        "SELECT table_name, column_name, data_type, is_nullable FROM duckdb_columns() "
        "ORDER BY table_name, column_index"
    ).fetchall()


def test_migrations_are_numbered_in_order_and_each_is_recorded(tmp_path: Path) -> None:
    assert [number for number, _, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    with RunStore.open(tmp_path / "store.duckdb") as store:
        recorded = store.connection.execute("SELECT version FROM schema_version").fetchall()
    assert [version for (version,) in recorded] == [number for number, _, _ in MIGRATIONS]


def test_row_keys_are_a_fixed_hash_of_the_columns() -> None:
    """Keys are stored, so they may not depend on the process (as Python's hash() does)."""
    assert row_key("m", "a", 3) == 5286913918874252288  # blake2b-64 of "m␟a␟3", little-endian
    assert row_key("m", "a", 3) != row_key("m", "a3", "") != row_key("ma", "", 3)


def memory_limit(store: RunStore) -> str:
    return store.connection.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]


def test_a_chunk_of_large_model_activations_goes_in_and_comes_back(tmp_path: Path) -> None:
    """256 samples x 4 layers of a 7B-sized model's vectors (hidden size 4,096: 32 MB) go into
    a file store and come back exactly: DuckDB's default memory for a store would run out on
    them (inserted in batches, read back streamed, the limit raised for the hidden size)."""
    hidden = 4096
    generator = torch.Generator().manual_seed(0)
    layers = (10, 15, 20, 30)
    values = {
        (f"{i:064x}", layer): LayerActivations(
            torch.randn(hidden, generator=generator), torch.randn(hidden, generator=generator)
        )
        for i in range(256)
        for layer in layers
    }
    with RunStore.open(tmp_path / "store.duckdb") as store:
        store.make_room_for_vectors(hidden)
        limit = memory_limit(store)
        assert limit == "384.0 MiB"
        store.put_activations("m", values)
        store.put_activations("m", values)  # all present: nothing added
        assert store.export_table("activations_v2").num_rows == len(values)
        assert_same(store.get_activations("m", [h for h, _ in values], layers), values)


def test_small_vectors_keep_the_default_memory_limit(tmp_path: Path) -> None:
    with RunStore.open(tmp_path / "store.duckdb") as store:
        store.make_room_for_vectors(576)  # the embedded model: 6 x 9 MB batches = 54 MiB
        limit = memory_limit(store)
        assert limit == "54.0 MiB"
        store.make_room_for_vectors(64)
        limit = memory_limit(store)
        assert limit == f"{store_module.DUCKDB_MEMORY_LIMIT_MIB}.0 MiB"
