"""Stream raw rows out of data files, one at a time, never loading a whole file.

Each supported file type yields `RawRow`s: the parsed record (a dict) or the reason it could
not be parsed, with its 1-based line (JSONL, JSON, CSV) or row number (parquet, datasets).
A problem that makes the rest of a file unreadable (a JSON array broken mid-way, a file that is
not what its extension says) raises `InputError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from screener.errors import InputError

if TYPE_CHECKING:
    from datasets import Dataset

FILE_TYPES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
_CHUNK_CHARS = 1 << 20
_MAX_JSON_ELEMENT_CHARS = 256 << 20
_BATCH_ROWS = 1024
_MAX_CSV_FIELD_CHARS = 2**31 - 1  # csv's own default (128 KiB) is too small for long chats


@dataclass(frozen=True)
class RawRow:
    """One row as read from a file: a record, or the reason there is none."""

    source: str
    line: int
    record: dict[str, Any] | None
    error: str | None = None
    raw: str | None = None


_JSON_KINDS: list[tuple[type | tuple[type, ...], str]] = [
    (bool, "a boolean"),
    (int, "a number"),
    (float, "a decimal number"),
    (str, "a string"),
    (list, "an array"),
    (dict, "an object"),
    (type(None), "null"),
    (bytes, "binary data"),
]


def json_kind(value: Any) -> str:
    """How JSON names the type of `value`, with its article ("an object", "null")."""
    for kinds, name in _JSON_KINDS:
        if isinstance(value, kinds):
            return name
    return f"a {type(value).__name__}"


_TOO_DEEP = "JSON nested too deeply to read (more levels than Python's recursion limit)"
_LONE_SURROGATE = (
    "a string holds an unpaired UTF-16 surrogate escape (such as \\ud800), which is not "
    "valid Unicode text"
)


def _holds_lone_surrogate(value: Any) -> bool:
    """True when a decoded JSON value has a string that UTF-8 cannot encode (`"\\ud800"`).
    Walks with an explicit stack: values nested as deep as the parser allows are fine."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _has_surrogates(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _json_object_row(value: Any, source: str, line: int, raw: str | None = None) -> RawRow:
    """A row for one decoded JSON value: the object, or why it is not a usable one."""
    if not isinstance(value, dict):
        return RawRow(source, line, None, f"row is {json_kind(value)}, expected a JSON object", raw)
    if _holds_lone_surrogate(value):
        return RawRow(source, line, None, _LONE_SURROGATE, raw)
    return RawRow(source, line, value)


def _parse_json_row(text: str, source: str, line: int) -> RawRow:
    text = text.rstrip("\r\n")
    raw = text[:200]
    if "\x00" in text:
        column = text.index("\x00") + 1
        return RawRow(source, line, None, f"NUL byte at column {column}: binary data", raw)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return RawRow(source, line, None, f"malformed JSON: {exc.msg} (column {exc.colno})", raw)
    except RecursionError:
        return RawRow(source, line, None, _TOO_DEEP, raw)
    return _json_object_row(value, source, line, raw)


def iter_jsonl(path: Path) -> Iterator[RawRow]:
    """One record per line; blank lines are skipped, a UTF-8 BOM and CRLF endings are fine."""
    source = str(path)
    with path.open("rb") as fh:
        for number, data in enumerate(fh, start=1):
            if number == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRow(
                    source,
                    number,
                    None,
                    f"not valid UTF-8 (byte {data[exc.start]:#04x} at column {exc.start + 1})",
                )
                continue
            if number == 1 and text.lstrip().startswith("["):
                raise InputError(
                    "this .jsonl file holds a JSON array: name it .json, "
                    "or write one object per line",
                    source=source,
                    line=1,
                )
            if text.strip():
                yield _parse_json_row(text, source, number)


class _JsonArrayStream:
    """Incremental reader of a top-level JSON array: yields (line, element) pairs."""

    def __init__(self, fh: IO[str], source: str) -> None:
        self.fh, self.source = fh, source
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.decoder = json.JSONDecoder()

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.fh.read(_CHUNK_CHARS)
        except UnicodeDecodeError as exc:
            raise InputError(
                f"not valid UTF-8 near line {self.line}: {exc.reason}",
                source=self.source,
                line=self.line,
            ) from exc
        if not chunk:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        return True

    def _next_char(self) -> str:
        """Skip whitespace (counting lines) and return the next char without consuming it."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.line += self.buf[self.pos] == "\n"
                self.pos += 1
            if self.pos < len(self.buf) or not self._fill():
                return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def _error(self, message: str) -> InputError:
        return InputError(message, source=self.source, line=self.line)

    def _may_be_cut(self, exc: json.JSONDecodeError) -> bool:
        """True when a decode error may only mean the element continues past the buffer."""
        if len(self.buf) - self.pos > _MAX_JSON_ELEMENT_CHARS:
            return False
        # An unterminated string reports where it starts; other cut-offs report the end.
        return exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - 6

    def _decode_element(self, start_line: int) -> tuple[Any, int]:
        """Decode the element at `pos`, reading more of the file while it may be incomplete."""
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except RecursionError:
                raise InputError(_TOO_DEEP, source=self.source, line=start_line) from None
            except json.JSONDecodeError as exc:
                if self._may_be_cut(exc) and self._fill():
                    continue
                line = start_line + exc.doc.count("\n", self.pos, exc.pos)
                raise InputError(
                    f"malformed JSON: {exc.msg}", source=self.source, line=line
                ) from exc
            # A number that ends the buffer may go on in the next chunk.
            if end >= len(self.buf) and self._fill():
                continue
            return value, end

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        first = self._next_char()
        if first != "[":
            raise self._error(
                "a .json file must hold one JSON array of objects "
                "(use .jsonl for one object per line)"
            )
        self.pos += 1
        expect_comma = False
        while True:
            char = self._next_char()
            if char == "]":
                self.pos += 1
                if self._next_char():
                    raise self._error("unexpected data after the end of the JSON array")
                return
            if not char:
                raise self._error("the JSON array is not closed: the file is truncated")
            if expect_comma:
                if char != ",":
                    raise self._error(f"expected ',' or ']' between array elements, found {char!r}")
                self.pos += 1
                if not self._next_char():
                    raise self._error("the JSON array is not closed: the file is truncated")
            start_line = self.line
            value, end = self._decode_element(start_line)
            self.line += self.buf.count("\n", self.pos, end)
            self.pos = end
            expect_comma = True
            yield start_line, value


def iter_json_array(path: Path) -> Iterator[RawRow]:
    """Elements of a top-level JSON array, parsed incrementally; line = where each starts."""
    source = str(path)
    with path.open(encoding="utf-8-sig") as fh:
        for line, value in _JsonArrayStream(fh, source):
            yield _json_object_row(value, source, line)


def iter_csv(path: Path) -> Iterator[RawRow]:
    """Rows of a CSV file with a header line; fields are strings, line = where a row starts."""
    source = str(path)
    csv.field_size_limit(_MAX_CSV_FIELD_CHARS)
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise InputError(
                f"the header repeats column(s) {', '.join(repeated)}: rename them",
                source=source,
                line=1,
            )
        start = reader.line_num + 1
        for values in reader:
            line, start = start, reader.line_num + 1
            if not values:
                continue
            if any(_has_surrogates(v) for v in values):
                yield RawRow(source, line, None, "not valid UTF-8")
            elif len(values) != len(header):
                yield RawRow(
                    source,
                    line,
                    None,
                    f"row has {len(values)} fields, the header has {len(header)}",
                )
            else:
                yield RawRow(source, line, dict(zip(header, values, strict=True)))


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def iter_parquet(path: Path) -> Iterator[RawRow]:
    """Rows of a parquet file, read a row group batch at a time; line = 1-based row number."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise InputError(f"cannot read parquet: {exc}", source=str(path)) from exc
    yield from _rows_from_batches(
        str(path), (b.to_pylist() for b in parquet.iter_batches(batch_size=_BATCH_ROWS))
    )


def _rows_from_batches(source: str, batches: Iterator[list[dict[str, Any]]]) -> Iterator[RawRow]:
    number = 0
    for batch in batches:
        for record in batch:
            number += 1
            yield RawRow(source, number, record)


def is_saved_dataset(path: Path) -> bool:
    """True for a directory written by `datasets`' `save_to_disk`."""
    return path.is_dir() and (
        (path / "dataset_dict.json").exists()
        or ((path / "state.json").exists() and (path / "dataset_info.json").exists())
    )


def split_source(path: Path, split: str) -> str:
    """The `source` of the rows of one split of a `save_to_disk` DatasetDict."""
    return f"{path}[{split}]"


def saved_splits(path: Path) -> list[str]:
    """The split names of a `save_to_disk` DatasetDict directory (none for anything else);
    its rows come with the source `split_source(path, split)`."""
    index = path / "dataset_dict.json"
    if not (path.is_dir() and index.exists()):
        return []
    try:
        splits = json.loads(index.read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a readable DatasetDict index ({exc})", source=str(index)) from None
    return [str(split) for split in splits]


def iter_saved_dataset(path: Path) -> Iterator[RawRow]:
    """Rows of a `save_to_disk` directory (memory-mapped); every split of a DatasetDict in turn."""
    from datasets import Dataset, load_from_disk

    loaded = load_from_disk(str(path))
    splits = (
        [(str(path), loaded)]
        if isinstance(loaded, Dataset)
        else [(split_source(path, name), split) for name, split in loaded.items()]
    )
    for source, split in splits:
        yield from rows_of_dataset(source, split)


def rows_of_dataset(source: str, dataset: Dataset) -> Iterator[RawRow]:
    """Rows of a `datasets.Dataset`, read in batches; line numbers count from 1."""
    batches = (
        [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        for columns in dataset.iter(batch_size=_BATCH_ROWS)
    )
    yield from _rows_from_batches(source, batches)


def iter_file(path: Path) -> Iterator[RawRow]:
    """Rows of one data file, by its extension."""
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise InputError(
            f"unsupported file type {path.suffix!r}: use one of {', '.join(FILE_TYPES)} "
            "or a save_to_disk directory",
            source=str(path),
        )
    readers = {
        "jsonl": iter_jsonl,
        "json": iter_json_array,
        "csv": iter_csv,
        "parquet": iter_parquet,
    }
    return readers[kind](path)
