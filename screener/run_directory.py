"""The run directory of a screen: the names of its files, and reading them back. The report,
export, validate and the gate read a run only through here.

    run = load_run(Path("reports/screen-data"))
    run.summary.traits["evil"].cut, run.summary.counts.flagged, run.scores["flagged"]

summary.json holds a `RunSummary` (run_summary.py), written by `summary_text`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from screener.errors import ConfigError
from screener.run_summary import RunSummary, summary_from_json

SUMMARY_JSON = "summary.json"
SCORES_PARQUET = "scores.parquet"
FLAGGED_JSONL = "flagged.jsonl"
REJECTED_JSONL = "rejected.jsonl"
SCREEN_DUCKDB = "screen.duckdb"
REFERENCE_JSON = "reference.json"  # the calibration distributions the cuts came from
RUN_STATS_JSON = "run_stats.json"  # timings and memory: not deterministic, kept apart
REPORT_HTML = "report.html"
VALIDATE_JSON = "validate.json"  # written by `screener validate` into the run directory
VALIDATE_PLOT = "validate.png"
GATE_MD = "gate.md"  # written by `screener gate`


def read_json(path: Path, remedy: str = "rerun `screener screen`") -> Any:
    """A JSON file of a run directory, with errors that name it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: missing; is {path.parent} the --out directory of a `screener screen` run?"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); {remedy}") from None


def read_summary(directory: Path) -> RunSummary:
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory; pass the --out directory of a run")
    path = directory / SUMMARY_JSON
    return summary_from_json(read_json(path), path)


def summary_text(summary: RunSummary) -> str:
    """summary.json's content."""
    return json.dumps(summary.as_json(), indent=2) + "\n"


def read_scores(directory: Path, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """A run's scores.parquet (all columns, or those of `columns` it has), with errors that
    name the file."""
    path = directory / SCORES_PARQUET
    if not path.exists():
        raise ConfigError(
            f"{path}: missing; is {directory} the --out directory of a `screener screen` run?"
        )
    try:
        present = pl.read_parquet_schema(path)
        chosen = None if columns is None else [name for name in columns if name in present]
        scores = pl.read_parquet(path, columns=chosen)
    except Exception as exc:  # polars raises several unrelated types for a damaged file
        raise ConfigError(f"{path}: cannot be read ({exc}); rerun the screen") from None
    if "flagged" not in scores.columns:
        raise ConfigError(f"{path}: no `flagged` column; was it written by `screener screen`?")
    return scores


@dataclass(frozen=True)
class RunFiles:
    """What a run directory holds, parsed."""

    directory: Path
    summary: RunSummary
    scores: pl.DataFrame
    reference: dict[str, Any]  # reference.json: per trait, the calibration distribution
    validation: dict[str, Any] | None = None  # validate.json, after `screener validate`


def load_run(directory: Path, *, scores_columns: Sequence[str] | None = None) -> RunFiles:
    """The run's summary, scores (all columns, or those of `scores_columns`), calibration
    reference and validation, with errors that name the file."""
    summary = read_summary(directory)
    reference_path = directory / REFERENCE_JSON
    reference = read_json(reference_path) if reference_path.exists() else {"traits": {}}
    validation_path = directory / VALIDATE_JSON
    validation = (
        read_json(validation_path, "run `screener validate` again or delete the file")
        if validation_path.exists()
        else None
    )
    return RunFiles(
        directory, summary, read_scores(directory, scores_columns), reference, validation
    )
