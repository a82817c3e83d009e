"""Write kept rows back in the input's own format and field order.

A single input file gives `filtered.<ext>`; a `save_to_disk` dataset gives `filtered.parquet`,
a `save_to_disk` DatasetDict `filtered/<split>.parquet` for each split. A directory gives
`filtered/<file name>` per data file in it (`<name>-<split>.parquet` for a DatasetDict there).
Rows in memory give `filtered.parquet` with their schema (a polars DataFrame, a
datasets.Dataset) or `filtered.jsonl` (a list of dicts). Every file is written under a
temporary name and renamed into place only when complete, so a crash leaves no partial file
under its final name. Rows are streamed: memory does not grow with the dataset.
"""

from __future__ import annotations

import csv
import json
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from screener.atomic import atomic_path
from screener.paths import safe_file_name
from screener.reader.files import list_data_files, splits_of
from screener.reader.memory import MEMORY_SOURCE, InMemoryData, arrow_schema, as_data
from screener.reader.sources import FILE_TYPES, split_source

_PARQUET_BATCH = 1024


class _RowWriter:
    """Writes rows of one source file in its format to an already-open temporary path."""

    def __init__(
        self, kind: str, tmp: Path, source_file: Path | None, schema: pa.Schema | None = None
    ) -> None:
        self.kind = kind
        self.tmp = tmp
        self.source_file = source_file
        self.count = 0
        self.handle: IO[str] | None = None
        self.csv_writer: Any = None
        self.header: list[str] = []
        self.parquet: pq.ParquetWriter | None = None
        self.schema = schema
        self.buffer: list[dict[str, Any]] = []
        if kind in ("jsonl", "json", "csv"):
            self.handle = tmp.open("w", encoding="utf-8", newline="")
        if kind == "json":
            assert self.handle is not None
            self.handle.write("[")
        if kind == "csv":
            assert self.handle is not None and source_file is not None
            with source_file.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
                self.header = next(csv.reader(fh), [])
            self.csv_writer = csv.writer(self.handle)
            self.csv_writer.writerow(self.header)
        if kind == "parquet" and source_file is not None and source_file.is_file():
            self.schema = pq.read_schema(source_file)

    def write(self, record: dict[str, Any]) -> None:
        if self.kind == "jsonl":
            assert self.handle is not None
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif self.kind == "json":
            assert self.handle is not None
            separator = "," if self.count else ""
            self.handle.write(f"{separator}\n  {json.dumps(record, ensure_ascii=False)}")
        elif self.kind == "csv":
            self.csv_writer.writerow([record.get(name, "") for name in self.header])
        else:
            self.buffer.append(record)
            if len(self.buffer) >= _PARQUET_BATCH:
                self._flush()
        self.count += 1

    def _flush(self) -> None:
        if not self.buffer and self.parquet is not None:
            return
        table = (
            pa.Table.from_pylist(self.buffer, schema=self.schema)
            if self.schema is not None
            else pa.Table.from_pylist(self.buffer)
        )
        if self.parquet is None:
            self.schema = table.schema
            self.parquet = pq.ParquetWriter(self.tmp, table.schema)
        self.parquet.write_table(table)
        self.buffer = []

    def close(self) -> None:
        if self.kind == "json":
            assert self.handle is not None
            self.handle.write("\n]\n" if self.count else "]\n")
        if self.handle is not None:
            self.handle.close()
        if self.kind == "parquet":
            self._flush()
            if self.parquet is not None:
                self.parquet.close()


class FilteredWriter:
    """Context manager: `write(source, record)` for each kept row, in input order.

    Every data file of the input gets an output file, also when none of its rows is kept.
    """

    def __init__(self, data: str | Path | InMemoryData, out_dir: Path) -> None:
        self.data = as_data(data)
        self.out_dir = out_dir
        self.stack = ExitStack()
        self.writers: dict[str, _RowWriter] = {}
        self.paths: list[Path] = []

    def _target(self, file: Path) -> tuple[str, Path]:
        kind = FILE_TYPES[file.suffix.lower()] if file.is_file() else "parquet"
        suffix = file.suffix.lower() if file.is_file() else ".parquet"
        if file == self.data:
            return kind, self.out_dir / f"filtered{suffix}"
        name = file.name if file.is_file() else file.name + suffix
        return kind, self.out_dir / "filtered" / safe_file_name(name)

    def __enter__(self) -> FilteredWriter:
        if not isinstance(self.data, Path):  # rows in memory: parquet with their schema, or jsonl
            schema = arrow_schema(self.data)
            kind = "jsonl" if schema is None else "parquet"
            self._open(MEMORY_SOURCE, kind, self.out_dir / f"filtered.{kind}", None, schema)
            return self
        for file in list_data_files(self.data):
            splits = splits_of(file)
            if splits:  # a DatasetDict or hub dataset: each split keeps its own output
                for split in splits:
                    name = split if file == self.data else f"{file.name}-{split}"
                    final = self.out_dir / "filtered" / safe_file_name(f"{name}.parquet")
                    self._open(split_source(file, split), "parquet", final, None, None)
                continue
            kind, final = self._target(file)
            self._open(str(file), kind, final, file if file.is_file() else None, None)
        return self

    def _open(
        self,
        source: str,
        kind: str,
        final: Path,
        source_file: Path | None,
        schema: pa.Schema | None,
    ) -> None:
        tmp = self.stack.enter_context(atomic_path(final))
        writer = _RowWriter(kind, tmp, source_file, schema)
        self.stack.callback(writer.close)  # runs before the atomic rename (LIFO)
        self.writers[source] = writer
        self.paths.append(final)

    def write(self, source: str, record: dict[str, Any]) -> None:
        self.writers[source].write(record)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stack.__exit__(kind, value, traceback)
