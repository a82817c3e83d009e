"""Stages 4 and 5 of a screen: read the rows again in step with the scores, and write the run's
outputs (filtered file, flagged.jsonl, rejected.jsonl, scores.parquet, screen.duckdb,
summary.json, reference.json, run_stats.json), each atomically.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from screener.atomic import atomic_path, write_text_atomic
from screener.errors import StoreError
from screener.records import Sample
from screener.report import write_report
from screener.run_directory import (
    FLAGGED_JSONL,
    REFERENCE_JSON,
    REJECTED_JSONL,
    REPORT_HTML,
    RUN_STATS_JSON,
    SCORES_PARQUET,
    SCREEN_DUCKDB,
    SUMMARY_JSON,
    staged_run,
    summary_text,
    write_manifest,
)
from screener.run_summary import RunSummary
from screener.screening.filtered import FilteredWriter
from screener.screening.reread import screened_rows
from screener.screening.result import (
    ScreenResult,
    scores_schema,
)
from screener.screening.scoring import (
    ScoredSample,
)

# screen.duckdb is written by one thread under a small memory limit: copying a million-row
# scores.parquet in, DuckDB then holds about 90 MiB, against 115 MiB with two threads and 64MB.
OUTPUT_DUCKDB_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "memory_limit": "32MB",
    "threads": 1,
}


def _json_number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _flagged_record(
    result: ScreenResult, position: int, sample: ScoredSample, parsed: Sample
) -> dict[str, Any]:
    """The flagged.jsonl record of the flagged sample at row `position` of `result.flags`;
    its cluster is filled in when the flagged file is ordered."""
    category = result.category_at(position)
    return {
        "id": sample.id,
        "source": sample.source,
        "line": sample.line,
        "risk": _json_number(float(result.risk[result.flags.indices[position]])),
        "category": category[0],
        "category_probability": category[1],
        "cluster": None,
        "reasons": [r.as_dict() for r in result.flags.reasons_at(position)],
        "scores": {
            trait: {
                "delta": _json_number(sample.delta(trait)),
                "proj": sample.projection[trait],
                "base_proj": None
                if sample.base_projection is None
                else sample.base_projection[trait],
                "prompt_last": sample.prompt_last[trait],
            }
            for trait in result.settings.traits
        },
        "base_response": sample.base_response,
        "method": result.settings.method,
        "conversation": [{"role": m.role, "content": m.content} for m in parsed.messages],
        "row": parsed.original,
    }


class FlaggedRecords:
    """flagged.jsonl records, written in input order to a scratch file during the second read
    and copied to the final file in risk order (with their clusters) at the end. Records are
    added in the order of `Flags` rows, so a record is found by its row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("w+b")
        self._offsets = array("q")  # where each row's record starts in the scratch file

    def __enter__(self) -> FlaggedRecords:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()
        self.path.unlink(missing_ok=True)

    def add(self, record: dict[str, Any]) -> None:
        """Keep the record of the next flagged row."""
        self._offsets.append(self._handle.tell())
        self._handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def write(
        self, final: Path, order: Sequence[int], cluster_at: Callable[[int], int | None]
    ) -> None:
        """Write the records of the rows in `order` to `final` (atomically), each with its
        cluster (`cluster_at(row)`)."""
        ends = array("q", self._offsets[1:])
        ends.append(self._handle.seek(0, 2))
        with atomic_path(final) as tmp, tmp.open("wb") as output:
            for position in order:
                self._handle.seek(self._offsets[position])
                record = json.loads(self._handle.read(ends[position] - self._offsets[position]))
                record["cluster"] = cluster_at(position)
                output.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))


def second_read(
    result: ScreenResult,
    out: Path | None,
    flagged_records: FlaggedRecords | None,
    text_wanted: set[int],
) -> dict[int, str]:
    """Read the rows again, in step with the scored samples: write kept rows to the filtered
    file(s) and flagged ones to `flagged_records` (with `out`); return the conversation text
    of the samples in `text_wanted` (flagged ones, and kept ones to contrast them with), for
    naming the clusters."""
    flag_indices = result.flags.indices
    texts: dict[int, str] = {}
    flagged = 0
    writer = FilteredWriter(result.input, out) if out is not None else None
    with writer if writer is not None else nullcontext():
        for index, sample, record in screened_rows(result.samples, result.input, result.read):
            if index in text_wanted:
                texts[index] = "\n".join(m.content for m in record.messages)
            if flagged < len(flag_indices) and flag_indices[flagged] == index:
                if flagged_records is not None:
                    flagged_records.add(_flagged_record(result, flagged, sample, record))
                flagged += 1
            elif writer is not None:
                writer.write(record.source, record.original)
    if writer is not None:
        result.outputs += writer.paths
    return texts


def write_run(
    result: ScreenResult,
    out: Path,
    text_wanted: set[int] | None = None,
    after_read: Callable[[dict[int, str]], None] | None = None,
) -> None:
    """Read the data again in step with the scores and write every output of the run to `out`:
    the filtered file(s), flagged.jsonl and the files of `write_outputs`, then the manifest and
    report.html. They are written into a new directory that then takes the place of `out`.
    `after_read(texts)` runs between the read and the outputs, with the conversation texts of
    the samples in `text_wanted` (a screen names its clusters there)."""
    result.outputs = []
    with staged_run(out) as staging:  # replaces `out` whole once every file is written
        with FlaggedRecords(result.samples.directory / "flagged-unordered.jsonl") as records:
            texts = second_read(result, staging, records, text_wanted or set())
            if after_read is not None:
                after_read(texts)
            result.outputs += write_outputs(result, staging, records)
        result.outputs.append(staging / REPORT_HTML)
        write_manifest(staging, [str(p.relative_to(staging)) for p in result.outputs])
        write_report(staging)
    result.outputs = [out / p.relative_to(staging) for p in result.outputs]
    result.out_dir = out


def write_outputs(result: ScreenResult, out: Path, flagged_records: FlaggedRecords) -> list[Path]:
    """flagged.jsonl (highest risk first), rejected.jsonl, scores.parquet, screen.duckdb,
    summary.json, reference.json (the calibration distributions the cuts came from, for the
    report) and run_stats.json, each written atomically."""
    # flagged rows by risk, highest first (no risk last), then in input order
    flagged_risk = np.nan_to_num(result.risk[result.flags.indices], nan=-np.inf)
    order = np.lexsort((result.flags.indices, -flagged_risk)).tolist()
    rejected_text = "".join(
        json.dumps(
            {
                "source": r.source,
                "line": r.line,
                "field": r.field,
                "id": r.id,
                "reason": r.reason,
                "raw": r.raw,
            },
            ensure_ascii=False,
        )
        + "\n"
        for r in result.rejected
    )
    paths = {
        name: out / name
        for name in (
            FLAGGED_JSONL,
            REJECTED_JSONL,
            SCORES_PARQUET,
            SCREEN_DUCKDB,
            SUMMARY_JSON,
            REFERENCE_JSON,
            RUN_STATS_JSON,
        )
    }
    flagged_records.write(paths[FLAGGED_JSONL], order, result.cluster_at)
    write_text_atomic(paths[REJECTED_JSONL], rejected_text)
    with atomic_path(paths[SCORES_PARQUET]) as tmp:
        _write_scores(result, tmp)
    summary = result.summary
    with atomic_path(paths[SCREEN_DUCKDB]) as tmp:
        _write_duckdb(tmp, paths[SCREEN_DUCKDB], result, paths[SCORES_PARQUET], summary)
    write_text_atomic(paths[SUMMARY_JSON], summary_text(summary))
    write_text_atomic(paths[REFERENCE_JSON], json.dumps(_reference(result), indent=1) + "\n")
    write_text_atomic(paths[RUN_STATS_JSON], json.dumps(result.stats, indent=2) + "\n")
    return list(paths.values())


def _write_scores(result: ScreenResult, path: Path) -> None:
    """scores.parquet, one row group per chunk of samples."""
    schema = pl.DataFrame(schema=scores_schema(result.settings.traits)).to_arrow().schema
    with pq.ParquetWriter(path, schema) as writer:
        for frame in result.score_frames():
            writer.write_table(frame.to_arrow())


def _reference(result: ScreenResult) -> dict[str, Any]:
    """Per trait, the calibration distribution of the run's score kind (absent: uncalibrated)."""
    traits: dict[str, Any] = {}
    for trait in result.settings.traits:
        distribution = (
            None
            if result.calibration is None
            else result.calibration.distribution(trait, result.score_kind)
        )
        if distribution is not None:
            traits[trait] = vars(distribution)
    return {"score": result.score_kind, "traits": traits}


def _write_duckdb(
    path: Path, final: Path, result: ScreenResult, scores: Path, summary: RunSummary
) -> None:
    """Write the run's tables into a new DuckDB file at `path` (a temporary beside `final`);
    the scores table is read from the `scores` parquet file."""
    path.unlink()  # atomic_path made an empty file; DuckDB wants to create its own
    fields = summary.as_json()  # the `run` table: one row per field of summary.json
    flags = result.flags
    # one row per (flagged sample, trait it is flagged for), samples in input order
    rows, traits = np.nonzero(flags.flagged_for)
    ids = pl.Series(result.samples.take("id", result.flags.indices.tolist()), dtype=pl.String)
    reasons = pl.DataFrame(
        {
            "id": ids.gather(rows),
            "trait": pl.Series(flags.traits, dtype=pl.String).gather(traits),
            "score": flags.scores[rows, traits],
            "cut": flags.cuts[traits],
            "percentile": flags.percentiles[rows, traits],
        },
        schema={
            "id": pl.String,
            "trait": pl.String,
            "score": pl.Float64,
            "cut": pl.Float64,
            "percentile": pl.Float64,
        },
    )
    rejected = pl.DataFrame(
        {
            "source": [r.source for r in result.rejected],
            "line": [r.line for r in result.rejected],
            "field": [r.field for r in result.rejected],
            "reason": [r.reason for r in result.rejected],
        },
        schema={"source": pl.String, "line": pl.Int64, "field": pl.String, "reason": pl.String},
    )
    run = pl.DataFrame(
        {"key": list(fields), "value": [json.dumps(v) for v in fields.values()]},
        schema={"key": pl.String, "value": pl.String},
    )
    with output_duckdb(path, final) as connection:
        connection.execute("CREATE TABLE scores AS SELECT * FROM read_parquet(?)", [str(scores)])
        for name, frame in (
            ("reasons", reasons),
            ("rejected", rejected),
            ("run", run),
        ):
            connection.register("frame", frame.to_arrow())
            connection.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
            connection.unregister("frame")


@contextmanager
def output_duckdb(path: Path, final: Path) -> Iterator[Any]:
    """A connection to a new DuckDB output file at `path` (under the small output memory
    limit), for the block to create tables in; then everything is written into the file.
    Errors name `final`, where the file will be."""
    import duckdb

    connection = duckdb.connect(str(path), config=OUTPUT_DUCKDB_CONFIG)
    try:
        yield connection
        # Write everything into the file now: a checkpoint that fails at close() is silent and
        # would leave the tables in a write-ahead log that a rename leaves behind.
        connection.execute("CHECKPOINT")
        connection.close()
    except duckdb.Error as exc:
        raise StoreError(f"{final}: cannot write: {str(exc).splitlines()[0]}") from exc
    finally:
        connection.close()  # a second close is a no-op
        wal = path.with_name(path.name + ".wal")
        incomplete = wal.exists()
        wal.unlink(missing_ok=True)
    if incomplete:
        raise StoreError(
            f"{final}: cannot write: DuckDB could not complete the file (is the disk full?)"
        )
