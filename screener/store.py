"""The run store: a DuckDB file that caches what screening computes, so nothing is computed twice.

Two tables, both keyed by the model's fingerprint so that results of different models never mix:

- `base_responses`: the model's own answer to a rendered prompt, per generation settings;
- `activations`: per sample content (its token ids and response boundary) and layer, the mean
  response activation and the last prompt token's activation, as float32 bytes.

Rows are found by a 64-bit `key` hashed from their identifying columns, and every lookup also
compares those columns, so a key collision can only cost a recomputation, never a wrong answer.
There is deliberately no primary key: DuckDB keeps a primary-key index in memory (about 0.8 KB
per row here, 800 MB at a million rows), while plain columns are paged to disk under the
connection's memory limit. Inserts skip rows whose key is already present.

Each `put_*` call is one transaction: a run killed at any moment leaves the store with whole
chunks or nothing of a chunk, and a restarted run finds the finished chunks and computes the rest.
One process writes at a time (DuckDB locks the file); the default store lives under
`$SCREENER_HOME` and `--store` points elsewhere (`:memory:` keeps nothing).

    with RunStore.open(path) as store:
        store.get_activations(fingerprint, keys, layers)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from screener.errors import ConfigError, StoreError
from screener.paths import state_root

SCHEMA = """
CREATE TABLE IF NOT EXISTS base_responses_v2 (
    key UBIGINT NOT NULL,
    model VARCHAR NOT NULL,
    prompt_hash VARCHAR NOT NULL,
    settings VARCHAR NOT NULL,
    response VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS activations_v2 (
    key UBIGINT NOT NULL,
    model VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    layer INTEGER NOT NULL,
    response_mean BLOB NOT NULL,
    last_prompt BLOB NOT NULL
);
"""

TABLES = ("base_responses_v2", "activations_v2")
# Tables of stores written before the key column (old name -> new name, the columns the key is
# made of), copied into the new tables when such a store is first opened.
_OLD_TABLES = {
    "base_responses": ("base_responses_v2", ("model", "prompt_hash", "settings")),
    "activations": ("activations_v2", ("model", "content_hash", "layer")),
}
# DuckDB's memory for a run store: its buffer pool stays this size however large the
# store grows (benchmarks/bench_scale.py measures screening memory up to a million rows).
DUCKDB_MEMORY_LIMIT = "64MB"


def row_key(*parts: str | int) -> int:
    """The 64-bit lookup key of a store row from its identifying columns."""
    text = "\x1f".join(str(part) for part in parts)
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def default_store_path() -> Path:
    return state_root() / "store.duckdb"


def token_hash(*parts: Sequence[int] | int) -> str:
    """sha256 of integers and integer sequences, for content keys."""
    digest = hashlib.sha256()
    for part in parts:
        values = [part] if isinstance(part, int) else list(part)
        digest.update(np.asarray(values, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


@dataclass(frozen=True)
class LayerActivations:
    """A sample's summaries at one layer, float32 (d,)."""

    response_mean: torch.Tensor
    last_prompt: torch.Tensor


def _blob(vector: torch.Tensor) -> bytes:
    return vector.detach().to(torch.float32).contiguous().numpy().tobytes()


def _vector(blob: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(blob, dtype=np.float32).copy())


def _migrate(connection: Any, path: str) -> None:
    """Copy the rows of tables from before the key column into the new tables, then drop the
    old ones. A copy cut short is finished by the next open (rows already copied are skipped)."""
    present = {
        name for (name,) in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()
    }
    for old, (new, key_columns) in _OLD_TABLES.items():
        if old not in present:
            continue
        reader = connection.cursor()
        try:
            batches = reader.sql(f"SELECT * FROM {old}").to_arrow_reader(8192)
            for batch in batches:
                columns = [batch.column(name).to_pylist() for name in key_columns]
                keys = [row_key(*parts) for parts in zip(*columns, strict=True)]
                table = pa.Table.from_batches([batch]).add_column(
                    0, "key", pa.array(keys, type=pa.uint64())
                )
                _insert_rows(connection, path, new, table)
        finally:
            reader.close()
        connection.execute(f"DROP TABLE {old}")


class RunStore:
    """Cached base responses and activations in one DuckDB file."""

    def __init__(self, connection: Any, path: str) -> None:
        self.connection = connection
        self.path = path

    @classmethod
    @contextmanager
    def open(cls, path: str | Path | None = None) -> Iterator[RunStore]:
        """Open (creating if needed) the store at `path` (default under $SCREENER_HOME)."""
        import duckdb

        where = str(path) if path is not None else str(default_store_path())
        if where != ":memory:":
            Path(where).parent.mkdir(parents=True, exist_ok=True)
        try:
            config: dict[str, str | bool | int | float | list[str]] = (
                {} if where == ":memory:" else {"memory_limit": DUCKDB_MEMORY_LIMIT}
            )
            connection = duckdb.connect(where, config=config)
        except duckdb.IOException as exc:
            raise ConfigError(
                f"cannot open the run store {where}: {str(exc).splitlines()[0]} (another screener "
                "run may be using it: wait for it, or pass --store with another path)"
            ) from exc
        except duckdb.Error as exc:
            raise ConfigError(
                f"the run store {where} is not a usable DuckDB file ({exc}): delete it (it is "
                "only a cache) or pass --store with another path"
            ) from exc
        try:
            connection.execute(SCHEMA)
            _migrate(connection, where)
            yield cls(connection, where)
        finally:
            connection.close()

    def _wanted(self, name: str, keys: list[int], **columns: Sequence[Any]) -> None:
        table = {"key": pa.array(keys, type=pa.uint64())}
        table.update({k: pa.array(list(v)) for k, v in columns.items()})
        self.connection.register(name, pa.table(table))

    def get_base_responses(
        self, model: str, prompt_hashes: Sequence[str], settings: str
    ) -> dict[str, str]:
        """Cached responses for the given prompt hashes (those present)."""
        if not prompt_hashes:
            return {}
        wanted = list(dict.fromkeys(prompt_hashes))
        keys = [row_key(model, h, settings) for h in wanted]
        self._wanted("wanted_prompts", keys, prompt_hash=wanted)
        try:
            rows = self.connection.execute(
                "SELECT b.prompt_hash, b.response FROM base_responses_v2 b "
                "JOIN wanted_prompts w ON b.key = w.key AND b.prompt_hash = w.prompt_hash "
                "WHERE b.model = ? AND b.settings = ?",
                [model, settings],
            ).fetchall()
        finally:
            self.connection.unregister("wanted_prompts")
        return {prompt_hash: response for prompt_hash, response in rows}

    def put_base_responses(self, model: str, settings: str, responses: dict[str, str]) -> None:
        if not responses:
            return
        table = pa.table(
            {
                "key": pa.array([row_key(model, h, settings) for h in responses], type=pa.uint64()),
                "model": [model] * len(responses),
                "prompt_hash": list(responses),
                "settings": [settings] * len(responses),
                "response": list(responses.values()),
            }
        )
        _insert_rows(self.connection, self.path, "base_responses_v2", table)

    def get_activations(
        self, model: str, content_hashes: Sequence[str], layers: Iterable[int]
    ) -> dict[tuple[str, int], LayerActivations]:
        """Cached activations, keyed by (content hash, layer), for those present."""
        if not content_hashes:
            return {}
        pairs = [(h, layer) for h in dict.fromkeys(content_hashes) for layer in sorted(set(layers))]
        self._wanted(
            "wanted_contents",
            [row_key(model, h, layer) for h, layer in pairs],
            content_hash=[h for h, _ in pairs],
            layer=pa.array([layer for _, layer in pairs], type=pa.int32()),
        )
        try:
            rows = self.connection.execute(
                "SELECT a.content_hash, a.layer, a.response_mean, a.last_prompt "
                "FROM activations_v2 a JOIN wanted_contents w ON a.key = w.key "
                "AND a.content_hash = w.content_hash AND a.layer = w.layer WHERE a.model = ?",
                [model],
            ).fetchall()
        finally:
            self.connection.unregister("wanted_contents")
        return {
            (content_hash, layer): LayerActivations(_vector(mean), _vector(last))
            for content_hash, layer, mean, last in rows
        }

    def put_activations(self, model: str, values: dict[tuple[str, int], LayerActivations]) -> None:
        if not values:
            return
        keys = list(values)
        table = pa.table(
            {
                "key": pa.array([row_key(model, h, layer) for h, layer in keys], type=pa.uint64()),
                "model": [model] * len(keys),
                "content_hash": [content_hash for content_hash, _ in keys],
                "layer": pa.array([layer for _, layer in keys], type=pa.int32()),
                "response_mean": pa.array(
                    [_blob(values[k].response_mean) for k in keys], type=pa.binary()
                ),
                "last_prompt": pa.array(
                    [_blob(values[k].last_prompt) for k in keys], type=pa.binary()
                ),
            }
        )
        _insert_rows(self.connection, self.path, "activations_v2", table)

    def export_table(self, name: str) -> pa.Table:
        """Every row of one of the store's tables (`base_responses` or `activations`)."""
        if name not in TABLES:
            raise ValueError(f"unknown store table {name!r}")
        return self.connection.sql(f"SELECT * FROM {name}").to_arrow_table()

    def import_table(self, name: str, table: pa.Table) -> None:
        """Add rows exported from another store (a worker's); rows already here are kept."""
        if name not in TABLES:
            raise ValueError(f"unknown store table {name!r}")
        if table.num_rows:
            _insert_rows(self.connection, self.path, name, table)

    def clear(self) -> None:
        """Delete every row (a worker's in-memory store, between batches)."""
        for name in TABLES:
            self.connection.execute(f"DELETE FROM {name}")


def _insert_rows(connection: Any, path: str, name: str, table: pa.Table) -> None:
    """One transaction; rows already present (same key) are kept as they were, and of
    several incoming rows with one key only one is added."""
    import duckdb

    connection.register("incoming", table)
    try:
        connection.execute(
            f"INSERT INTO {name} SELECT * FROM incoming i "
            f"WHERE NOT EXISTS (SELECT 1 FROM {name} t WHERE t.key = i.key) "
            "QUALIFY row_number() OVER (PARTITION BY i.key ORDER BY i.key) = 1"
        )
    except duckdb.Error as exc:  # a full disk, a file size limit: the insert rolled back
        raise StoreError(
            f"cannot write to the run store {path}: {str(exc).splitlines()[0]} (the "
            "store keeps every chunk finished before this one: fix this and run again)"
        ) from exc
    finally:
        connection.unregister("incoming")
