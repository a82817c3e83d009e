"""Read a dataset into `Sample` and `RejectedRow` records, streaming, in file order.

    reader = DatasetReader("data.jsonl")
    for record in reader:          # Sample or RejectedRow
        ...
    reader.counts                  # rows read == samples + rejected

Every row ends up as exactly one record: nothing is dropped silently. With
`on_bad_row="fail"` the first bad row raises `InputError` instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from screener.errors import ConfigError, InputError, RowError
from screener.reader.files import iter_path, skipped_files
from screener.reader.formats import (
    FORMATS,
    FieldNames,
    detect_format,
    format_fields,
    to_messages,
)
from screener.reader.memory import (
    InMemoryData,
    as_data,
    check_in_memory,
    data_name,
    iter_memory,
)
from screener.reader.seen import SeenIds
from screener.reader.sources import RawRow, json_kind
from screener.records import Message, RejectedRow, Sample

MAX_ROW_CHARS = 16_000_000  # about 4M tokens: beyond every model's context window

BadRowPolicy = Literal["reject", "fail"]


@dataclass
class ReadCounts:
    """How many rows were read and where they went."""

    rows: int = 0
    samples: int = 0
    rejected: int = 0
    formats: dict[str, str] = field(default_factory=dict)  # source -> format used
    skipped_files: list[str] = field(default_factory=list)  # not data files, not read

    def skipped_note(self) -> str | None:
        """One line naming the files of a directory that were not read, if any."""
        if not self.skipped_files:
            return None
        names = ", ".join(self.skipped_files[:5])
        more = f" and {len(self.skipped_files) - 5} more" if len(self.skipped_files) > 5 else ""
        return (
            f"skipped {len(self.skipped_files)} file(s) that are not a supported data type: "
            f"{names}{more}"
        )


def content_id(messages: tuple[Message, ...]) -> str:
    """A stable id for a conversation without one: a hash of its roles and texts."""
    canonical = json.dumps([[m.role, m.content] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class DatasetReader:
    """Iterate a data file or directory as `Sample | RejectedRow` records.

    data: a .jsonl/.json/.csv/.parquet file, a `save_to_disk` directory, a directory of such
        files (each read by its own type), or rows in memory (screener.reader.memory: a list
        of dicts, a polars DataFrame or a datasets.Dataset; `line` is then the row index).
    fmt: `auto` (detected per file from its first readable row) or one of FORMATS.
    fields: column names for ids and the prompt/response format.
    on_bad_row: `reject` keeps going and yields a RejectedRow; `fail` raises InputError.
    check_duplicates: reject a row whose id an earlier row has. Off only to read rows again
        that were judged on a first read, which needs no per-row memory (16 bytes a row).
    """

    def __init__(
        self,
        data: str | Path | InMemoryData,
        *,
        fmt: str = "auto",
        fields: FieldNames | None = None,
        on_bad_row: BadRowPolicy = "reject",
        check_duplicates: bool = True,
    ) -> None:
        if fmt != "auto" and fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r}: use auto or one of {', '.join(FORMATS)}")
        if on_bad_row not in ("reject", "fail"):
            raise ConfigError(f"unknown bad-row policy {on_bad_row!r}: use reject or fail")
        check_in_memory(data)
        self.data = as_data(data)
        self.fmt = fmt
        self.fields = fields or FieldNames()
        self.on_bad_row = on_bad_row
        self.check_duplicates = check_duplicates
        self.counts = ReadCounts()
        self._seen = SeenIds()

    def __iter__(self) -> Iterator[Sample | RejectedRow]:
        self._seen = SeenIds()
        if isinstance(self.data, Path):
            self.counts = ReadCounts(skipped_files=[str(p) for p in skipped_files(self.data)])
            rows = iter_path(self.data)
        else:
            self.counts = ReadCounts()
            rows = iter_memory(self.data)
        for row in rows:
            self.counts.rows += 1
            record = self._convert(row)
            if isinstance(record, RejectedRow):
                if self.on_bad_row == "fail":
                    raise InputError(
                        record.reason, source=record.source, line=record.line, field=record.field
                    )
                self.counts.rejected += 1
            else:
                self.counts.samples += 1
            yield record
        self._seen = SeenIds()  # a finished reader holds no per-row state
        if self.counts.rows == 0:
            raise InputError(
                "no rows to read: the data is empty, or holds only blank lines or a header",
                source=data_name(self.data),
            )

    def _format_for(self, row: RawRow, record: dict[str, Any]) -> str:
        """The format of `row`'s file, told from its first readable row (which is also where a
        missing --id-field column shows)."""
        known = self.counts.formats.get(row.source)
        if known is not None:
            return known
        if self.fields.id != FieldNames().id and self.fields.id not in record:
            raise InputError(
                f"no column {self.fields.id!r} (from --id-field): the columns are "
                f"{', '.join(sorted(record))}; pass one of them, or leave --id-field out to "
                "give rows ids from their content",
                source=row.source,
                line=row.line,
                field=self.fields.id,
            )
        detected = self.fmt if self.fmt != "auto" else detect_format(record, self.fields)
        if detected is None:
            raise InputError(
                unknown_format_message(record, self.fields), source=row.source, line=row.line
            )
        self.counts.formats[row.source] = detected
        return detected

    def _convert(self, row: RawRow) -> Sample | RejectedRow:
        if row.record is None:
            return RejectedRow(row.source, row.line, row.error or "unreadable row", raw=row.raw)
        record = row.record
        fmt = self._format_for(row, record)
        own_id = record.get(self.fields.id)
        try:
            if isinstance(own_id, bool) or not isinstance(own_id, (str, int, type(None))):
                raise RowError(
                    f"id is {json_kind(own_id)}, expected a string or integer", self.fields.id
                )
            missing = [name for name in format_fields(fmt, self.fields) if name not in record]
            if missing:
                present = ", ".join(sorted(record))
                raise RowError(
                    f"missing field(s) {', '.join(missing)} for format {fmt} "
                    f"(fields present: {present})",
                    missing[0],
                )
            messages, warnings = to_messages(record, fmt, self.fields)
            size = sum(len(message.content) for message in messages)
            if size > MAX_ROW_CHARS:
                raise RowError(
                    f"conversation has {size:,} characters, over the {MAX_ROW_CHARS:,} limit "
                    "for one row (more text than any model's context holds)",
                    "messages" if fmt == "messages" else None,
                )
        except RowError as exc:
            return RejectedRow(row.source, row.line, exc.reason, exc.field, _id_text(own_id))
        has_own_id = own_id is not None and str(own_id).strip() != ""
        sample_id = str(own_id).strip() if has_own_id else content_id(messages)
        first = self._seen.first_seen(sample_id) if self.check_duplicates else None
        if first is not None:
            reason = (
                f"duplicate id {sample_id!r} (first seen at {first})"
                if has_own_id
                else f"duplicate conversation (same text as {first})"
            )
            return RejectedRow(
                row.source, row.line, reason, self.fields.id if has_own_id else None, sample_id
            )
        if self.check_duplicates:
            self._seen.add(sample_id, row.source, row.line)
        return Sample(sample_id, row.source, row.line, messages, record, fmt, tuple(warnings))


PROMPT_NAMES = ("prompt", "question", "input", "query", "instruction", "user")
RESPONSE_NAMES = ("response", "answer", "output", "completion", "chosen", "assistant")


def unknown_format_message(record: dict[str, Any], fields: FieldNames) -> str:
    """Why no format fits `record`, with its columns and the flags that would map them."""
    default = FieldNames()
    asked = (fields.prompt, fields.response) != (default.prompt, default.response)
    pair = f"`{fields.prompt}`+`{fields.response}`" + (
        " (from --prompt-field/--response-field)" if asked else ""
    )
    prompt = next((name for name in PROMPT_NAMES if name in record), None)
    response = next((name for name in RESPONSE_NAMES if name in record and name != prompt), None)
    remedy = (
        f"pass --prompt-field {prompt} --response-field {response}"
        if prompt and response and (prompt, response) != (fields.prompt, fields.response)
        else "name the prompt and response columns with --prompt-field and --response-field"
    )
    return (
        f"cannot tell the dataset format: the columns are {', '.join(sorted(record))}, and none "
        f"of `messages`, `conversations`, {pair} or `instruction`+`output` is there; {remedy}, "
        "or pass --format"
    )


def _id_text(value: Any) -> str | None:
    return None if value is None else str(value)


def read_dataset(
    data: str | Path | InMemoryData,
    *,
    fmt: str = "auto",
    fields: FieldNames | None = None,
    on_bad_row: BadRowPolicy = "reject",
    check_duplicates: bool = True,
) -> DatasetReader:
    """Open a dataset for streaming; see `DatasetReader`."""
    return DatasetReader(
        data, fmt=fmt, fields=fields, on_bad_row=on_bad_row, check_duplicates=check_duplicates
    )
