"""Benchmarks that run in parts: the `--parts` option, and the results file in which the parts
not run keep their figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parts_option(parser: argparse.ArgumentParser, parts: tuple[str, ...]) -> None:
    parser.add_argument(
        "--parts",
        type=lambda text: text.split(","),
        default=list(parts),
        help=f"which parts to run, of {','.join(parts)} (default: all); the others keep their "
        "figures in the results file",
    )


def saved_results(path: Path) -> dict[str, Any]:
    """The results file's record, to update part by part (empty when there is none yet)."""
    return json.loads(path.read_text()) if path.exists() else {}
