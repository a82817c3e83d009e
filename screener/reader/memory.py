"""Rows already in memory: a list of dicts, a polars DataFrame or a `datasets.Dataset`.

They are read with the same format detection and rejection rules as files. Their source is
MEMORY_SOURCE, and a row's `line` is its index from 0, so `data[line]` is the row.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from screener.errors import ConfigError
from screener.reader.sources import RawRow, json_kind

if TYPE_CHECKING:
    import datasets
    import polars as pl
    import pyarrow as pa

InMemoryData: TypeAlias = "Sequence[Mapping[str, Any]] | pl.DataFrame | datasets.Dataset"
MEMORY_SOURCE = "<memory>"
_BATCH_ROWS = 1024


def is_in_memory(data: object) -> bool:
    """True for rows held in memory, False for a path (str or Path)."""
    return not isinstance(data, str | Path)


def as_data(data: str | Path | InMemoryData) -> Path | InMemoryData:
    """A path as a Path; rows in memory as they are."""
    return Path(data) if isinstance(data, str | Path) else data


def _kind(data: object) -> str | None:
    """`polars`, `datasets` or `rows` for the data this module reads, None otherwise."""
    module = type(data).__module__.split(".")[0]
    if module == "polars" and type(data).__name__ == "DataFrame":
        return "polars"
    if module == "datasets" and type(data).__name__ == "Dataset":
        return "datasets"
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return "rows"
    return None


def check_in_memory(data: object) -> None:
    """Refuse anything that is neither a path nor data this module reads."""
    if is_in_memory(data) and _kind(data) is None:
        split = " (pick a split: data['train'])" if type(data).__name__ == "DatasetDict" else ""
        raise ConfigError(
            f"cannot read a {type(data).__module__}.{type(data).__name__}{split}: pass a path, "
            "a list of dicts, a polars DataFrame or a datasets.Dataset"
        )


def data_name(data: str | Path | InMemoryData) -> str:
    """How outputs name the data: its path, or the kind and size of the rows in memory."""
    if not is_in_memory(data):
        return str(data)
    kind = {"polars": "polars DataFrame", "datasets": "datasets.Dataset", "rows": "list"}
    return f"{MEMORY_SOURCE} {kind[_kind(data) or 'rows']} of {len(data)} rows"  # type: ignore[arg-type]


def iter_memory(data: InMemoryData) -> Iterator[RawRow]:
    """The rows of `data` as RawRows; a row that is not a mapping is rejected with its kind."""
    for index, record in enumerate(_records(data)):
        if isinstance(record, Mapping):
            yield RawRow(MEMORY_SOURCE, index, dict(record))
        else:
            reason = f"row is {json_kind(record)}, expected an object"
            yield RawRow(MEMORY_SOURCE, index, None, reason)


def _records(data: Any) -> Iterator[Any]:
    kind = _kind(data)
    if kind == "polars":
        yield from data.iter_rows(named=True)
    elif kind == "datasets":
        for columns in data.iter(batch_size=_BATCH_ROWS):
            for values in zip(*columns.values(), strict=True):
                yield dict(zip(columns, values, strict=True))
    else:
        yield from data


def arrow_schema(data: InMemoryData) -> pa.Schema | None:
    """The Arrow schema of a DataFrame's or a Dataset's columns (None for a list of dicts)."""
    kind = _kind(data)
    if kind == "polars":
        return data.head(0).to_arrow().schema  # type: ignore[union-attr]
    if kind == "datasets":
        return data.features.arrow_schema  # type: ignore[union-attr]
    return None
