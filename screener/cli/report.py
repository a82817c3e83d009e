"""`screener report` and `screener export`: re-render a run's HTML report, export its scores."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from screener.cli.common import EXIT_OK
from screener.errors import ConfigError
from screener.export import EXPORT_FORMATS, SELECTIONS


def register(commands: Any) -> None:
    """Add the report and export subcommands."""
    report = commands.add_parser(
        "report",
        help="re-render report.html of a screening run",
        description="Render report.html from a run directory (the --out of `screener screen`): "
        "summary, score histograms against the calibration reference, categories, clusters and "
        "the top flagged samples. One self-contained file; no model needed.",
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a screen run's --out")
    report.add_argument(
        "--out", type=Path, default=None, help="file to write (default RUN_DIR/report.html)"
    )
    report.add_argument(
        "--max-samples",
        type=int,
        default=10,
        help="flagged samples shown per trait (default 10; the rest are counted)",
    )
    report.set_defaults(run=_run_report)

    export = commands.add_parser(
        "export",
        help="export a screening run's scores table",
        description="Write the rows of a run's scores table (ids, file and line, every score, "
        "risk, flags, category) that --only selects, in input order, as JSONL, CSV or parquet.",
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a screen run's --out")
    export.add_argument("--only", default="all", choices=SELECTIONS, help="rows (default all)")
    export.add_argument("--format", default="jsonl", choices=EXPORT_FORMATS, help="default jsonl")
    export.add_argument(
        "--out", type=Path, default=None, help="file (default RUN_DIR/export-ONLY.FORMAT)"
    )
    export.set_defaults(run=_run_export)


def _run_report(args: argparse.Namespace) -> int:
    from screener.report import write_report

    if args.max_samples < 0:
        raise ConfigError("--max-samples must be 0 or more")
    path = write_report(args.run_dir, out=args.out, max_samples=args.max_samples)
    print(f"wrote {path}")
    return EXIT_OK


def _run_export(args: argparse.Namespace) -> int:
    from screener.export import export_run

    path, count = export_run(args.run_dir, only=args.only, fmt=args.format, out=args.out)
    label = "" if args.only == "all" else f"{args.only} "
    print(f"wrote {count} {label}rows to {path}")
    return EXIT_OK
