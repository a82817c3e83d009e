"""The run store: a DuckDB file that caches what screening computes, so nothing is computed twice.

Two tables, both keyed by the model's fingerprint so that results of different models never mix:

- `base_responses_v2`: the model's own answer to a rendered prompt, per generation settings;
- `activations_v2`: per sample content (its token ids and response boundary) and layer, the
  mean response activation and the last prompt token's activation, as float32 bytes.

A third, `schema_version`, holds the number of the last migration applied: opening a store
applies the MIGRATIONS after it, in order, so a store written by any earlier version opens.

Rows are found by a 64-bit `key` hashed from their identifying columns, and every lookup also
compares those columns, so a key collision can only cost a recomputation, never a wrong answer.
There is deliberately no primary key: DuckDB keeps a primary-key index in memory (about 0.8 KB
per row here, 800 MB at a million rows), while plain columns are paged to disk under the
connection's memory limit. Inserts skip rows whose key is already present.

A `put_*` call inserts in transactions of at most INSERT_BATCH_BYTES: a run killed at any moment
leaves whole rows, each complete on its own, and a restarted run finds them and computes the
rest.
One process writes at a time (DuckDB locks the file); the default store lives under
`$SCREENER_HOME` and `--store` points elsewhere (`:memory:` keeps nothing).

    with RunStore.open(path) as store:
        store.get_activations(fingerprint, keys, layers)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from screener.errors import StoreError
from screener.paths import state_root
from screener.store_connection import connect_waiting

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
# made of), copied into the new tables by migration 2.
_OLD_TABLES = {
    "base_responses": ("base_responses_v2", ("model", "prompt_hash", "settings")),
    "activations": ("activations_v2", ("model", "content_hash", "layer")),
}
# DuckDB's memory for a run store: its buffer pool stays this size however large the store
# grows (benchmarks/bench_scale.py measures screening memory up to a million rows; from 10k to
# 1M rows RSS grew 17 MiB under 32MB against 47 MiB under 64MB, at the same speed).
DUCKDB_MEMORY_LIMIT_MIB = 32
# ...raised for large vectors (`make_room_for_vectors`): DuckDB moves rows 2,048 at a time and
# an activation row holds two float32 vectors. Reading them back needed 4 such batches' worth
# (measured at hidden sizes 576, 4096 and 8192); the limit allows 6.
VECTOR_BATCHES_IN_MEMORY = 6
INSERT_BATCH_BYTES = 8 << 20  # the most rows one INSERT statement takes in, in bytes
FETCH_BATCH_ROWS = 256  # activation rows read from the store at a time


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


def _create_tables(connection: Any, path: str) -> None:
    connection.execute(SCHEMA)


def _key_old_tables(connection: Any, path: str) -> None:
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


# Numbered migrations, applied in order to a store whose schema_version is below their number.
# One that has shipped is never edited: a change of schema is the next number.
MIGRATIONS: tuple[tuple[int, str, Callable[[Any, str], None]], ...] = (
    (1, "the keyed tables base_responses_v2 and activations_v2", _create_tables),
    (2, "rows of the tables from before the key column, keyed", _key_old_tables),
)


def schema_version(connection: Any) -> int:
    """The number of the last migration applied to the store (0 for a store without any)."""
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    [(version,)] = connection.execute(
        "SELECT coalesce(max(version), 0) FROM schema_version"
    ).fetchall()  # all: a result left unfinished blocks the connection's next statement
    return int(version)


def migrate(connection: Any, path: str) -> None:
    """Apply the migrations the store has not had, recording each once it is complete."""
    applied = schema_version(connection)
    for number, _, apply in MIGRATIONS:
        if number > applied:
            apply(connection, path)
            connection.execute("INSERT INTO schema_version VALUES (?)", [number])


class RunStore:
    """Cached base responses and activations in one DuckDB file."""

    def __init__(self, connection: Any, path: str) -> None:
        self.connection = connection
        self.path = path

    @classmethod
    @contextmanager
    def open(
        cls,
        path: str | Path | None = None,
        *,
        progress: Callable[[str], None] | None = None,
        wait_seconds: float | None = None,
    ) -> Iterator[RunStore]:
        """Open (creating if needed) the store at `path` (default under $SCREENER_HOME). A
        store another process has open is waited for, saying so to `progress`, for up to
        `wait_seconds` (default $SCREENER_STORE_WAIT, else STORE_WAIT_SECONDS)."""
        where = str(path) if path is not None else str(default_store_path())
        if where != ":memory:":
            Path(where).parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, str | bool | int | float | list[str]] = (
            {} if where == ":memory:" else {"memory_limit": f"{DUCKDB_MEMORY_LIMIT_MIB}MiB"}
        )
        connection = connect_waiting(where, config, progress, wait_seconds)
        try:
            migrate(connection, where)
            yield cls(connection, where)
        finally:
            connection.close()

    def make_room_for_vectors(self, hidden_size: int) -> None:
        """Raise DuckDB's memory limit to what activations of `hidden_size` floats need: 384
        MiB for a 7B model's 4,096, 54 MiB for the embedded model's 576; small test models
        keep the default."""
        if self.path == ":memory:":
            return
        batch_bytes = 2048 * 2 * 4 * hidden_size
        needed = -(-VECTOR_BATCHES_IN_MEMORY * batch_bytes // 2**20)
        limit = max(DUCKDB_MEMORY_LIMIT_MIB, needed)
        self.connection.execute(f"SET memory_limit = '{limit}MiB'")

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
        self._wanted("wanted_contents", [row_key(model, h, layer) for h, layer in pairs])
        found: dict[tuple[str, int], LayerActivations] = {}
        wanted = set(pairs)
        try:
            # A semi-join on the key streamed in batches: a join would hash the stored side,
            # vectors included, and a chunk of a large model's vectors would not fit in
            # DuckDB's memory limit at once. A row under a colliding key is skipped here.
            batches = self.connection.sql(
                "SELECT content_hash, layer, response_mean, last_prompt FROM activations_v2 "
                "WHERE key IN (SELECT key FROM wanted_contents) AND model = ?",
                params=[model],
            ).to_arrow_reader(FETCH_BATCH_ROWS)
            for batch in batches:
                columns = [batch.column(i).to_pylist() for i in range(4)]
                for content_hash, layer, mean, last in zip(*columns, strict=True):
                    if (content_hash, layer) in wanted:
                        found[(content_hash, layer)] = LayerActivations(
                            _vector(mean), _vector(last)
                        )
        finally:
            self.connection.unregister("wanted_contents")
        return found

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


def _first_of_each_key(table: pa.Table) -> pa.Table:
    """The rows of `table` whose key no earlier row has, in their order."""
    keys = table.column("key").to_numpy()
    _, first = np.unique(keys, return_index=True)
    if len(first) == len(keys):
        return table
    return table.take(pa.array(np.sort(first)))


def _insert_rows(connection: Any, path: str, name: str, table: pa.Table) -> None:
    """Rows already present (same key) are kept as they were, and of several incoming rows
    with one key only the first is added.

    The rows go in as transactions of at most INSERT_BATCH_BYTES each: DuckDB holds a
    transaction's rows under the store's memory limit until it commits, and one chunk of a 7B
    model's activations (1,024 samples x 3 layers x 2 x 16 KB) is 100 MB. A run stopped
    between two of them keeps the first: each row is complete on its own, so a rerun only
    computes fewer rows.
    """
    import duckdb

    table = _first_of_each_key(table)
    rows_per_statement = max(1, INSERT_BATCH_BYTES * table.num_rows // max(1, table.nbytes))
    try:
        for start in range(0, table.num_rows, rows_per_statement):
            connection.register("incoming", table.slice(start, rows_per_statement))
            try:
                connection.execute(
                    f"INSERT INTO {name} SELECT * FROM incoming i "
                    f"WHERE NOT EXISTS (SELECT 1 FROM {name} t WHERE t.key = i.key)"
                )
            finally:
                connection.unregister("incoming")
    except duckdb.Error as exc:  # a full disk, a file size limit: that statement rolled back
        raise StoreError(
            f"cannot write to the run store {path}: {str(exc).splitlines()[0]} (the "
            "store keeps every chunk finished before this one: fix this and run again)"
        ) from exc
