"""A run's scored samples on disk, so that screening memory does not grow with the dataset.

`ScoredSamples` is written chunk by chunk as samples are scored and read back lazily:
iterating decodes one row group at a time, indexing keeps the last decoded row group, and
`column` reads a single score column as a numpy array (8 bytes per row). Chunks are gathered
into row groups of `ROW_GROUP_ROWS` samples: the parquet writer and reader keep every row
group's metadata in memory (about 14 MB for a thousand groups), so row groups of a scoring
chunk each (often 1,024 samples) would make that grow with the dataset.

The file lives in a private directory under `$SCREENER_HOME/spill/` (beside the run store, on
disk rather than in a RAM-backed /tmp) that is removed when the `ScoredSamples` is closed or
garbage collected; directories left by killed runs are removed by the next run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from screener.atomic import process_alive
from screener.paths import state_root
from screener.screening.scoring import ScoredSample

_PREFIX = "run-"
ROW_GROUP_ROWS = 8192  # samples per row group of the spill file


def spill_root() -> Path:
    return state_root() / "spill"


def remove_orphans(root: Path) -> None:
    """Delete spill directories whose process has died (a run killed before it cleaned up)."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        pid_text = entry.name.removeprefix(_PREFIX).split("-", 1)[0]
        if not (entry.name.startswith(_PREFIX) and pid_text.isdigit()):
            continue
        if int(pid_text) != os.getpid() and not process_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)


def _schema(traits: Sequence[str]) -> pa.Schema:
    fields = [
        ("id", pa.string()),
        ("source", pa.string()),
        ("line", pa.int64()),
        ("format", pa.string()),
        ("content_hash", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("response_tokens", pa.int32()),
        ("warnings", pa.list_(pa.string())),
        ("base_response", pa.string()),
        ("base_response_tokens", pa.int32()),
    ]
    for trait in traits:
        fields += [
            (f"proj_{trait}", pa.float64()),
            (f"prompt_last_{trait}", pa.float64()),
            (f"base_proj_{trait}", pa.float64()),  # null without a base response
        ]
    return pa.schema(fields)


def _row(sample: ScoredSample, traits: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": sample.id,
        "source": sample.source,
        "line": sample.line,
        "format": sample.format,
        "content_hash": sample.content_hash,
        "prompt_tokens": sample.prompt_tokens,
        "response_tokens": sample.response_tokens,
        "warnings": list(sample.warnings),
        "base_response": sample.base_response,
        "base_response_tokens": sample.base_response_tokens,
    }
    for trait in traits:
        row[f"proj_{trait}"] = sample.projection[trait]
        row[f"prompt_last_{trait}"] = sample.prompt_last[trait]
        row[f"base_proj_{trait}"] = (
            None if sample.base_projection is None else sample.base_projection[trait]
        )
    return row


def _sample(row: dict[str, Any], traits: Sequence[str]) -> ScoredSample:
    has_base = row[f"base_proj_{traits[0]}"] is not None
    return ScoredSample(
        row["id"],
        row["source"],
        row["line"],
        row["format"],
        row["content_hash"],
        row["prompt_tokens"],
        row["response_tokens"],
        tuple(row["warnings"]),
        {t: row[f"proj_{t}"] for t in traits},
        {t: row[f"prompt_last_{t}"] for t in traits},
        row["base_response"],
        row["base_response_tokens"],
        {t: row[f"base_proj_{t}"] for t in traits} if has_base else None,
    )


class ScoredSamples(Sequence[ScoredSample]):
    """The scored samples of one run, in input order, kept in a parquet file.

    Write with `append` (one call per chunk), then `finish`; read afterwards.
    directory: where to make the private spill directory (default `spill_root()`).
    row_group_rows: samples gathered before a row group is written (default ROW_GROUP_ROWS).
    """

    def __init__(
        self,
        traits: Sequence[str],
        directory: Path | None = None,
        row_group_rows: int | None = None,
    ) -> None:
        root = directory or spill_root()
        root.mkdir(parents=True, exist_ok=True)
        remove_orphans(root)
        self.traits = tuple(traits)
        self.directory = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.directory, True)
        self.path = self.directory / "scored.parquet"
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self.path, _schema(self.traits))
        self._reader: pq.ParquetFile | None = None
        self._starts = [0]  # the first sample index of each row group, then the total
        self.row_group_rows = row_group_rows or ROW_GROUP_ROWS
        self._unwritten: list[pa.Table] = []  # appended chunks not yet in a row group
        self._unwritten_rows = 0
        self._cached: tuple[int, list[ScoredSample]] | None = None

    def append(self, samples: Sequence[ScoredSample]) -> None:
        if self._writer is None:
            raise RuntimeError("ScoredSamples.append after finish")
        if not samples:
            return
        table = pa.Table.from_pylist(
            [_row(s, self.traits) for s in samples], schema=self._writer.schema
        )
        self._unwritten.append(table)
        self._unwritten_rows += len(samples)
        if self._unwritten_rows >= self.row_group_rows:
            self._write_row_group()

    def _write_row_group(self) -> None:
        assert self._writer is not None
        if self._unwritten_rows:
            table = pa.concat_tables(self._unwritten)
            self._writer.write_table(table, row_group_size=self._unwritten_rows)
            self._starts.append(self._starts[-1] + self._unwritten_rows)
            self._unwritten, self._unwritten_rows = [], 0

    def finish(self) -> None:
        """Close the file for writing and open it for reading."""
        if self._writer is not None:
            self._write_row_group()
            self._writer.close()
            self._writer = None
            self._reader = pq.ParquetFile(self.path)

    def close(self) -> None:
        """Delete the spill directory now (it is also deleted when this object is collected)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._unwritten, self._unwritten_rows = [], 0
        self._reader = None
        self._cleanup()

    def _file(self) -> pq.ParquetFile:
        if self._reader is None:
            raise RuntimeError("ScoredSamples read before finish (or after close)")
        return self._reader

    def __len__(self) -> int:
        return self._starts[-1] + self._unwritten_rows

    @property
    def groups(self) -> int:
        return len(self._starts) - 1

    def group_start(self, group: int) -> int:
        return self._starts[group]

    def group(self, group: int) -> list[ScoredSample]:
        """The samples of one row group (`row_group_rows` of them, fewer in the last)."""
        if self._cached is None or self._cached[0] != group:
            rows = self._file().read_row_group(group).to_pylist()
            self._cached = (group, [_sample(row, self.traits) for row in rows])
        return self._cached[1]

    def group_table(self, group: int, columns: Sequence[str] | None = None) -> pa.Table:
        """One row group as an arrow table (all or some columns)."""
        return self._file().read_row_group(group, columns=None if columns is None else [*columns])

    @overload
    def __getitem__(self, index: int) -> ScoredSample: ...

    @overload
    def __getitem__(self, index: slice) -> list[ScoredSample]: ...

    def __getitem__(self, index: int | slice) -> ScoredSample | list[ScoredSample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range")
        group = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.group(group)[index - self._starts[group]]

    def __iter__(self) -> Iterator[ScoredSample]:
        for group in range(self.groups):
            yield from self.group(group)

    def column(self, name: str) -> np.ndarray:
        """A numeric column for every sample (nulls as NaN)."""
        values = np.empty(len(self), dtype=np.float64)
        # row group by row group into one array: reading the whole column through arrow would
        # hold it twice, and arrow's allocator keeps what it freed for a while
        for group in range(self.groups):
            column = self.group_table(group, [name]).column(0)
            start, end = self._starts[group], self._starts[group + 1]
            values[start:end] = column.to_numpy(zero_copy_only=False)
        return values

    def take(self, name: str, indices: Sequence[int]) -> list[Any]:
        """The values of one column at sorted sample `indices`, reading only their row groups."""
        values: list[Any] = []
        position = 0
        for group in range(self.groups):
            start, end = self._starts[group], self._starts[group + 1]
            wanted = []
            while position < len(indices) and indices[position] < end:
                wanted.append(indices[position] - start)
                position += 1
            if wanted:
                column = self.group_table(group, [name]).column(0)
                values += column.take(pa.array(wanted, type=pa.int64())).to_pylist()
        if position != len(indices):
            raise IndexError("indices must be sorted sample indices of this run")
        return values
