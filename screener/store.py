"""The run store: a DuckDB file that caches what screening computes, so nothing is computed twice.

Two tables, both keyed by the model's fingerprint so that results of different models never mix:

- `base_responses`: the model's own answer to a rendered prompt, per generation settings;
- `activations`: per sample content (its token ids and response boundary) and layer, the mean
  response activation and the last prompt token's activation, as float32 bytes.

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
CREATE TABLE IF NOT EXISTS base_responses (
    model VARCHAR NOT NULL,
    prompt_hash VARCHAR NOT NULL,
    settings VARCHAR NOT NULL,
    response VARCHAR NOT NULL,
    PRIMARY KEY (model, prompt_hash, settings)
);
CREATE TABLE IF NOT EXISTS activations (
    model VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    layer INTEGER NOT NULL,
    response_mean BLOB NOT NULL,
    last_prompt BLOB NOT NULL,
    PRIMARY KEY (model, content_hash, layer)
);
"""

TABLES = ("base_responses", "activations")
# DuckDB's memory for a store or output file. Without a limit the primary-key index of a store
# stays in memory and grows with every row (about 0.8 KB each); with one, DuckDB pages it to
# disk and screening memory stays flat at a million rows (benchmarks/bench_scale.py).
DUCKDB_MEMORY_LIMIT = "64MB"


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
            yield cls(connection, where)
        finally:
            connection.close()

    def _keys_table(self, name: str, **columns: Sequence[Any]) -> None:
        self.connection.register(name, pa.table({k: list(v) for k, v in columns.items()}))

    def get_base_responses(
        self, model: str, prompt_hashes: Sequence[str], settings: str
    ) -> dict[str, str]:
        """Cached responses for the given prompt hashes (those present)."""
        if not prompt_hashes:
            return {}
        self._keys_table("wanted_prompts", prompt_hash=prompt_hashes)
        rows = self.connection.execute(
            "SELECT b.prompt_hash, b.response FROM base_responses b "
            "JOIN wanted_prompts w USING (prompt_hash) WHERE b.model = ? AND b.settings = ?",
            [model, settings],
        ).fetchall()
        self.connection.unregister("wanted_prompts")
        return {prompt_hash: response for prompt_hash, response in rows}

    def put_base_responses(self, model: str, settings: str, responses: dict[str, str]) -> None:
        if not responses:
            return
        table = pa.table(
            {
                "model": [model] * len(responses),
                "prompt_hash": list(responses),
                "settings": [settings] * len(responses),
                "response": list(responses.values()),
            }
        )
        self._insert("base_responses", table)

    def get_activations(
        self, model: str, content_hashes: Sequence[str], layers: Iterable[int]
    ) -> dict[tuple[str, int], LayerActivations]:
        """Cached activations, keyed by (content hash, layer), for those present."""
        if not content_hashes:
            return {}
        self._keys_table("wanted_contents", content_hash=content_hashes)
        wanted_layers = sorted(set(layers))
        rows = self.connection.execute(
            "SELECT a.content_hash, a.layer, a.response_mean, a.last_prompt FROM activations a "
            "JOIN wanted_contents w USING (content_hash) "
            f"WHERE a.model = ? AND a.layer IN ({', '.join('?' * len(wanted_layers))})",
            [model, *wanted_layers],
        ).fetchall()
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
        self._insert("activations", table)

    def export_table(self, name: str) -> pa.Table:
        """Every row of one of the store's tables (`base_responses` or `activations`)."""
        if name not in TABLES:
            raise ValueError(f"unknown store table {name!r}")
        return self.connection.execute(f"SELECT * FROM {name}").to_arrow_table()

    def import_table(self, name: str, table: pa.Table) -> None:
        """Add rows exported from another store (a worker's); rows already here are kept."""
        if name not in TABLES:
            raise ValueError(f"unknown store table {name!r}")
        if table.num_rows:
            self._insert(name, table)

    def clear(self) -> None:
        """Delete every row (a worker's in-memory store, between batches)."""
        for name in TABLES:
            self.connection.execute(f"DELETE FROM {name}")

    def _insert(self, name: str, table: pa.Table) -> None:
        """One transaction; rows already present (same key) are kept as they were."""
        import duckdb

        self.connection.register("incoming", table)
        try:
            self.connection.execute(f"INSERT OR IGNORE INTO {name} SELECT * FROM incoming")
        except duckdb.Error as exc:  # a full disk, a file size limit: the insert rolled back
            raise StoreError(
                f"cannot write to the run store {self.path}: {str(exc).splitlines()[0]} (the "
                "store keeps every chunk finished before this one: fix this and run again)"
            ) from exc
        finally:
            self.connection.unregister("incoming")
