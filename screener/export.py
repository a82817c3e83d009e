"""Export a screening run's scores table (one row per screened sample) for other tools.

    export_run(Path("reports/screen-data"), only="flagged", fmt="csv")

Rows come from the run's scores.parquet, in input order: `flagged` keeps the flagged samples,
`kept` the others, `all` both. The sample text stays in the run's filtered and flagged files;
this table carries ids, file positions and every score. CSV cannot hold lists, so list columns
(`flag_traits`, `warnings`) are joined with `; ` there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import polars as pl

from screener.atomic import atomic_path
from screener.errors import ConfigError, ScreenerError
from screener.run_directory import add_to_manifest, read_scores

Selection = Literal["flagged", "kept", "all"]
ExportFormat = Literal["jsonl", "csv", "parquet"]
SELECTIONS: tuple[str, ...] = get_args(Selection)
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)


def select_rows(scores: pl.DataFrame, only: Selection) -> pl.DataFrame:
    """The rows of a scores table that `only` asks for, in their original order."""
    if only not in SELECTIONS:
        raise ConfigError(f"--only must be one of {', '.join(SELECTIONS)}, not {only!r}")
    if only == "all":
        return scores
    return scores.filter(pl.col("flagged") if only == "flagged" else ~pl.col("flagged"))


def _flat(table: pl.DataFrame) -> pl.DataFrame:
    """List columns joined into text, for CSV."""
    lists = [name for name, dtype in table.schema.items() if isinstance(dtype, pl.List)]
    return table.with_columns(pl.col(name).list.join("; ") for name in lists)


def export_run(
    run_dir: Path, *, only: Selection = "all", fmt: ExportFormat = "jsonl", out: Path | None = None
) -> tuple[Path, int]:
    """Write the selected rows to `out` (default RUN_DIR/export-<only>.<fmt>); return the path
    and the number of rows written."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    rows = select_rows(read_scores(run_dir), only)
    target = out if out is not None else run_dir / f"export-{only}.{fmt}"
    try:
        with atomic_path(target) as tmp:
            if fmt == "parquet":
                rows.write_parquet(tmp)
            elif fmt == "csv":
                _flat(rows).write_csv(tmp)
            else:
                rows.write_ndjson(tmp)
    except OSError as exc:
        raise ScreenerError(f"cannot write {target}: {exc.strerror}") from None
    add_to_manifest(run_dir, target)  # when it is inside the run directory
    return target, len(rows)
