"""The run directory of a screen: the names of its files, how a run is written into one, and
reading it back. The report, export, validate and the gate read a run only through here.

    run = load_run(Path("reports/screen-data"))
    run.summary.traits["evil"].cut, run.summary.counts.flagged, run.scores["flagged"]

A directory holds exactly one run. A screen writes into a fresh sibling directory and, once
every file is there, puts it in the place of the directory (`staged_run`), so a previous run's
files never stay beside the new one's and a killed run leaves the previous one whole. A
directory holding files that are not a screener run is refused unless the caller asks to
replace it (`check_out_dir`). manifest.json lists the run's files; readers read only files it
lists, and jobs that add files later (validate, the gate, export) add them to it.

summary.json holds a `RunSummary` (run_summary.py), written by `summary_text`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from screener.atomic import process_alive, write_text_atomic
from screener.errors import ConfigError, ScreenerError
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
MANIFEST_JSON = "manifest.json"  # the run's files; what is not listed is not read
_STAGING = re.compile(r"^\.(.+)\.(partial|replaced)-(\d+)$")


def check_out_dir(out: Path, *, replace: bool = False) -> None:
    """Raise ConfigError now if a run could not be written to `out`: it is a file, its parent
    cannot be written, or it holds files that are not a screener run (unless `replace`)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file: pass a directory path")
    if out.is_dir() and not is_run(out) and not replace:
        present = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if present:
            more = f" and {len(present) - 5} more" if present[5:] else ""
            shown = ", ".join(present[:5]) + more
            raise ConfigError(
                f"--out {out} holds files that are not a screener run ({shown}): pass a new or "
                "empty directory, or --force to replace the directory with the run"
            )
    try:  # the run is written beside `out`, then renamed: its parent must take new entries
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.probe-"):
            pass
    except FileExistsError:  # a file where a directory above `out` should be
        raise ConfigError(f"cannot create output directory {out}: Not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {out}: {exc.strerror}") from None


def is_run(directory: Path) -> bool:
    """Whether `directory` holds a screener run: its manifest, or (written before manifests)
    both summary.json and scores.parquet."""
    if (directory / MANIFEST_JSON).exists():
        return True
    return (directory / SUMMARY_JSON).exists() and (directory / SCORES_PARQUET).exists()


@contextmanager
def staged_run(out: Path) -> Iterator[Path]:
    """A new directory beside `out` to write a run into. When the block ends without error,
    it replaces `out` (a previous run there is removed); when it fails, it is removed."""
    _remove_stale_staging(out.parent)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        # errors name the files where they belong, not where they were being written
        if isinstance(exc, ScreenerError) and exc.args:
            exc.args = (str(exc.args[0]).replace(str(staging), str(out)), *exc.args[1:])
        if isinstance(exc, OSError) and isinstance(exc.filename, str):
            exc.filename = exc.filename.replace(str(staging), str(out))
        raise
    if out.exists():
        previous = out.parent / f".{out.name}.replaced-{os.getpid()}"
        out.rename(previous)
        staging.rename(out)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        staging.rename(out)


def _remove_stale_staging(folder: Path) -> None:
    """Remove the staging directories that killed runs left in `folder`."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _STAGING.match(path.name)
        if match and path.is_dir() and not process_alive(int(match.group(3))):
            shutil.rmtree(path, ignore_errors=True)


def write_manifest(directory: Path, names: Sequence[str]) -> None:
    """List the run's files (paths relative to `directory`) in its manifest."""
    document = {"screener_run": 1, "files": sorted(set(names))}
    write_text_atomic(directory / MANIFEST_JSON, json.dumps(document, indent=1) + "\n")


def manifest_files(directory: Path) -> list[str]:
    """The files the run's manifest lists."""
    path = directory / MANIFEST_JSON
    if not path.exists():
        raise ConfigError(
            f"{directory}: no {MANIFEST_JSON}, so not a complete screener run (an interrupted "
            "one, or from before manifests): rerun `screener screen` with this --out"
        )
    document = read_json(path)
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ConfigError(f"{path}: not a screener manifest; rerun `screener screen`")
    return files


def add_to_manifest(directory: Path, *paths: Path) -> None:
    """Record files a later job wrote into the run directory (validate, gate, export); paths
    outside it are not the run's and are left out."""
    root = directory.resolve()
    names = [str(p.resolve().relative_to(root)) for p in paths if p.resolve().is_relative_to(root)]
    write_manifest(directory, [*manifest_files(directory), *names])


def run_file(directory: Path, name: str) -> Path:
    """The path of a file of the run, which its manifest must list."""
    if name not in manifest_files(directory):
        raise ConfigError(
            f"{directory / name}: not part of the run in {directory} (its {MANIFEST_JSON} does "
            "not list it); rerun `screener screen` with this --out"
        )
    return directory / name


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
    path = run_file(directory, SUMMARY_JSON)
    return summary_from_json(read_json(path), path)


def summary_text(summary: RunSummary) -> str:
    """summary.json's content."""
    return json.dumps(summary.as_json(), indent=2) + "\n"


def read_scores(directory: Path, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """A run's scores.parquet (all columns, or those of `columns` it has), with errors that
    name the file."""
    path = run_file(directory, SCORES_PARQUET)
    if not path.exists():
        raise ConfigError(f"{path}: missing; rerun `screener screen` with this --out")
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


def load_run(
    directory: Path, *, scores_columns: Callable[[RunSummary], Sequence[str]] | None = None
) -> RunFiles:
    """The run's summary, scores (all columns, or those `scores_columns(summary)` names),
    calibration reference and validation, with errors that name the file."""
    summary = read_summary(directory)
    listed = manifest_files(directory)
    reference = (
        read_json(directory / REFERENCE_JSON) if REFERENCE_JSON in listed else {"traits": {}}
    )
    validation = (
        read_json(directory / VALIDATE_JSON, "run `screener validate` again")
        if VALIDATE_JSON in listed
        else None
    )
    columns = None if scores_columns is None else scores_columns(summary)
    return RunFiles(directory, summary, read_scores(directory, columns), reference, validation)
