"""The files of a conversations monitor, written as conversations stream through: turns.parquet
and conversations.parquet in row groups, flagged.jsonl and rejected.jsonl line by line; at the
end monitor.duckdb (both tables and the rejected rows), summary.json, report.html and the
manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from screener.atomic import write_text_atomic
from screener.monitor.conversation_rule import ConversationFlag
from screener.run_directory import write_manifest
from screener.screening.write import output_duckdb

if TYPE_CHECKING:
    from screener.monitor.conversations import ScoredConversation

TURNS_PARQUET = "turns.parquet"
CONVERSATIONS_PARQUET = "conversations.parquet"
FLAGGED_JSONL = "flagged.jsonl"
REJECTED_JSONL = "rejected.jsonl"
MONITOR_DUCKDB = "monitor.duckdb"
SUMMARY_JSON = "summary.json"
REPORT_HTML = "report.html"
ROW_GROUP = 8192


def _schemas(traits: tuple[str, ...]) -> tuple[pa.Schema, pa.Schema]:
    turns = pa.schema(
        [
            ("conversation_id", pa.string()),
            ("source", pa.string()),
            ("line", pa.int64()),
            ("turn", pa.int32()),
            ("message", pa.int32()),
            ("prompt_tokens", pa.int32()),
            ("response_tokens", pa.int32()),
            *((f"projection_{t}", pa.float64()) for t in traits),
            *((f"prompt_last_{t}", pa.float64()) for t in traits),
            ("tripped", pa.list_(pa.string())),  # traits whose flag this turn tripped
        ]
    )
    conversations = pa.schema(
        [
            ("conversation_id", pa.string()),
            ("source", pa.string()),
            ("line", pa.int64()),
            ("turns", pa.int32()),
            ("skipped_turns", pa.int32()),
            ("flagged", pa.bool_()),
            ("flag_traits", pa.list_(pa.string())),
            ("reasons", pa.list_(pa.string())),
            *((f"max_projection_{t}", pa.float64()) for t in traits),
        ]
    )
    return turns, conversations


class ConversationWriter:
    """Context manager over a staging directory; `finish` after the block ends."""

    def __init__(self, directory: Path, traits: tuple[str, ...]) -> None:
        self.directory = directory
        self.traits = traits
        self.turn_schema, self.conversation_schema = _schemas(traits)
        self.turn_rows: list[dict[str, Any]] = []
        self.conversation_rows: list[dict[str, Any]] = []
        self.turns_file: pq.ParquetWriter | None = None
        self.conversations_file: pq.ParquetWriter | None = None
        self.flagged_file: IO[str] | None = None
        self.rejected_file: IO[str] | None = None

    def __enter__(self) -> ConversationWriter:
        self.turns_file = pq.ParquetWriter(self.directory / TURNS_PARQUET, self.turn_schema)
        self.conversations_file = pq.ParquetWriter(
            self.directory / CONVERSATIONS_PARQUET, self.conversation_schema
        )
        self.flagged_file = (self.directory / FLAGGED_JSONL).open("w", encoding="utf-8")
        self.rejected_file = (self.directory / REJECTED_JSONL).open("w", encoding="utf-8")
        return self

    def rejected(self, source: str, line: int, reason: str) -> None:
        assert self.rejected_file is not None
        record = {"source": source, "line": line, "reason": reason}
        self.rejected_file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def conversation(self, scored: ScoredConversation, flags: list[ConversationFlag]) -> None:
        sample = scored.sample
        tripped: dict[int, list[str]] = {}
        for flag in flags:
            tripped.setdefault(flag.turn, []).append(flag.trait)
        for turn in scored.turns:
            self.turn_rows.append(
                {
                    "conversation_id": sample.id,
                    "source": sample.source,
                    "line": sample.line,
                    "turn": turn.turn,
                    "message": turn.message,
                    "prompt_tokens": turn.prompt_tokens,
                    "response_tokens": turn.response_tokens,
                    **{f"projection_{t}": turn.projection[t] for t in self.traits},
                    **{f"prompt_last_{t}": turn.prompt_last[t] for t in self.traits},
                    "tripped": sorted(set(tripped.get(turn.turn, []))),
                }
            )
        reasons = [flag.reason() for flag in flags]
        self.conversation_rows.append(
            {
                "conversation_id": sample.id,
                "source": sample.source,
                "line": sample.line,
                "turns": len(scored.turns),
                "skipped_turns": len(scored.skipped),
                "flagged": bool(flags),
                "flag_traits": list(dict.fromkeys(flag.trait for flag in flags)),
                "reasons": reasons,
                **{
                    f"max_projection_{t}": max(turn.projection[t] for turn in scored.turns)
                    for t in self.traits
                },
            }
        )
        if flags:
            assert self.flagged_file is not None
            record = {
                "id": sample.id,
                "source": sample.source,
                "line": sample.line,
                "reasons": reasons,
                "flags": [asdict(flag) for flag in flags],
                "turns": [asdict(turn) for turn in scored.turns],
                "skipped_turns": [{"turn": n, "reason": why} for n, why in scored.skipped],
                "messages": [{"role": m.role, "content": m.content} for m in sample.messages],
            }
            self.flagged_file.write(json.dumps(record, ensure_ascii=False) + "\n")
        if len(self.turn_rows) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        assert self.turns_file is not None and self.conversations_file is not None
        if self.turn_rows:
            self.turns_file.write_table(pa.Table.from_pylist(self.turn_rows, self.turn_schema))
            self.turn_rows = []
        if self.conversation_rows:
            table = pa.Table.from_pylist(self.conversation_rows, self.conversation_schema)
            self.conversations_file.write_table(table)
            self.conversation_rows = []

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self._flush()
        for handle in (self.turns_file, self.conversations_file):
            if handle is not None:
                handle.close()
        for text in (self.flagged_file, self.rejected_file):
            if text is not None:
                text.close()

    def finish(self, summary: dict[str, Any]) -> None:
        """summary.json, monitor.duckdb, report.html and the manifest, once the streams closed."""
        from screener.report.conversations import write_conversations_report

        write_text_atomic(
            self.directory / SUMMARY_JSON,
            json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        )
        self._duckdb()
        write_conversations_report(self.directory, summary)
        names = [
            TURNS_PARQUET,
            CONVERSATIONS_PARQUET,
            FLAGGED_JSONL,
            REJECTED_JSONL,
            MONITOR_DUCKDB,
            SUMMARY_JSON,
            REPORT_HTML,
        ]
        write_manifest(self.directory, names)

    def _duckdb(self) -> None:
        path = self.directory / MONITOR_DUCKDB
        rejected = self.directory / REJECTED_JSONL
        schema = pa.schema([("source", pa.string()), ("line", pa.int64()), ("reason", pa.string())])
        rows = (
            pa_json.read_json(rejected, parse_options=pa_json.ParseOptions(explicit_schema=schema))
            if rejected.stat().st_size
            else schema.empty_table()
        )
        with output_duckdb(path, path) as connection:  # staged_run names the final place
            for table, name in (("turns", TURNS_PARQUET), ("conversations", CONVERSATIONS_PARQUET)):
                query = f"CREATE TABLE {table} AS SELECT * FROM read_parquet(?)"
                connection.execute(query, [str(self.directory / name)])
            connection.register("rejected_rows", rows)
            connection.execute("CREATE TABLE rejected AS SELECT * FROM rejected_rows")
            connection.unregister("rejected_rows")
