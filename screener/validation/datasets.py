"""The datasets a validation finetunes on: equal-sized subsets of a screened dataset (the rows
with the highest ΔP for a trait, a random draw, the lowest), or whole datasets a user names.

    run = load_run(run_dir)
    chosen = choose_subsets(run.scores, "evil", ["top", "random", "bottom"], size=64, seed=0)
    sets = load_subsets(chosen, run.summary.data)  # re-reads the rows from the screened data

Each `TrainingSet` carries its samples and its dataset-level score per trait (the mean over its
rows), which is what the screen predicts about it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from screener.errors import ConfigError, ScreenerError
from screener.reader import FieldNames, read_dataset
from screener.records import Sample

SUBSET_KINDS = ("top", "random", "bottom")


@dataclass(frozen=True)
class SubsetChoice:
    """Which rows of a screen run a subset takes, as (source, line) keys: `kind` by `trait`
    (`random` is drawn from the rows that have a `trait` score and belongs to no trait)."""

    kind: str
    trait: str
    keys: tuple[tuple[str, int], ...]
    ids: tuple[str, ...]
    scores: dict[str, float]  # dataset-level score per trait: the mean over the chosen rows

    @property
    def name(self) -> str:
        return "random" if self.kind == "random" else f"{self.kind}-{self.trait}"


@dataclass
class TrainingSet:
    """Samples to finetune on, where they come from, and what the screen says about them."""

    name: str
    origin: str  # e.g. "top 64 rows by evil ΔP of reports/run" or a data path
    samples: list[Sample]
    scores: dict[str, float]  # dataset-level ΔP (or prompt-last score) per trait
    rejected: int = 0  # rows of a user dataset that could not be read
    ids: list[str] = field(default_factory=list)
    trait: str | None = None  # the trait a subset was chosen by (and is steered against)


def choose_subsets(
    scores: pl.DataFrame,
    trait: str,
    kinds: Sequence[str],
    size: int,
    *,
    seed: int = 0,
    score: str = "delta",
    traits: Sequence[str] = (),
) -> list[SubsetChoice]:
    """Equal-sized subsets of the scored rows: `top` (highest `score` for `trait` first, ties
    in input order), `bottom` (lowest first), `random` drawn with `seed`. Rows without a score
    (no base response) are left out, and top and bottom may not share rows. Each subset's
    dataset-level score is given for `traits` (default: `trait` only; NaN when none of its
    rows has that score)."""
    for kind in kinds:
        if kind not in SUBSET_KINDS:
            raise ConfigError(f"unknown subset {kind!r}: use {', '.join(SUBSET_KINDS)}")
    if size < 1:
        raise ConfigError("--size must be at least 1: the rows per subset")
    measured = list(dict.fromkeys([trait, *traits]))
    columns = [f"{score}_{t}" for t in measured]
    for column in columns:
        if column not in scores.columns:
            raise ConfigError(
                f"the run's scores have no column {column}: screen the data with that trait "
                "(screener screen --traits ...)"
            )
    column = f"{score}_{trait}"
    usable = (
        scores.with_row_index("_order")
        .filter(pl.col(column).is_not_null() & pl.col(column).is_not_nan())
        .select("_order", "id", "source", "source_line", *columns)
    )
    if usable.height < size:
        raise ConfigError(
            f"only {usable.height} rows have a {column} score, fewer than the subset size "
            f"{size}: pass a smaller --size"
        )
    if "top" in kinds and "bottom" in kinds and 2 * size > usable.height:
        raise ConfigError(
            f"the top and bottom {size} rows by {column} would share rows ({usable.height} have "
            f"a score): pass --size {usable.height // 2} or less"
        )
    ranked = usable.sort([column, "_order"], descending=[True, False])
    picked = {
        "top": ranked.head(size),
        "bottom": ranked.tail(size).reverse(),
        "random": usable.sample(size, seed=seed, shuffle=True),
    }
    choices = []
    for kind in kinds:
        rows = picked[kind]
        choices.append(
            SubsetChoice(
                kind,
                trait,
                tuple(zip(rows["source"], rows["source_line"], strict=True)),
                tuple(rows["id"]),
                {t: _mean(rows[f"{score}_{t}"]) for t in measured},
            )
        )
    return choices


def _mean(column: pl.Series) -> float:
    value = column.drop_nulls().drop_nans().mean()
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


def relocate(source: str, recorded: str | Path, data: str | Path) -> str:
    """Where a row's file is now: `source` was read under `recorded`, which has moved to
    `data` (a file, or a directory keeping its layout)."""
    recorded, data = str(recorded), str(data)
    if source == recorded:
        return data
    prefix = recorded.rstrip(os.sep) + os.sep
    if source.startswith(prefix):
        return str(Path(data) / source[len(prefix) :])
    return source


def load_subsets(
    choices: Sequence[SubsetChoice],
    data: str | Path,
    *,
    fmt: str = "auto",
    fields: FieldNames | None = None,
    run_name: str = "the run",
    recorded: str | Path | None = None,
) -> list[TrainingSet]:
    """Read the chosen rows again from the screened `data` (one pass for all subsets), and
    check each row still has the id the screen gave it. `recorded`: the path the screen read,
    when the data has moved to `data` since."""

    def now(key: tuple[str, int]) -> tuple[str, int]:
        return key if recorded is None else (relocate(key[0], recorded, data), key[1])

    wanted: dict[tuple[str, int], Sample | None] = {
        now(key): None for c in choices for key in c.keys
    }
    expected_ids = {now(key): id_ for c in choices for key, id_ in zip(c.keys, c.ids, strict=True)}
    for record in read_dataset(data, fmt=fmt, fields=fields, on_bad_row="reject"):
        key = (record.source, record.line)
        if key in wanted and isinstance(record, Sample):
            if record.id != expected_ids[key]:
                raise ScreenerError(
                    f"{record.source}:{record.line}: the row's id is now {record.id!r}, the "
                    f"screen saw {expected_ids[key]!r}: the data changed since {run_name}; "
                    "screen it again"
                )
            wanted[key] = record
    missing = [key for key, sample in wanted.items() if sample is None]
    if missing:
        source, line = missing[0]
        raise ScreenerError(
            f"{source}:{line}: {run_name} scored this row but it cannot be read from {data} now "
            f"({len(missing)} rows missing): the data moved or changed; pass --data with its "
            "new path, or screen it again"
        )
    sets = []
    for choice in choices:
        samples = [wanted[now(key)] for key in choice.keys]
        ranked = "" if choice.kind == "random" else f" by {choice.trait} score"
        sets.append(
            TrainingSet(
                choice.name,
                f"{choice.kind} {len(choice.keys)} rows{ranked} of {run_name}",
                [s for s in samples if s is not None],
                choice.scores,
                ids=list(choice.ids),
                trait=None if choice.kind == "random" else choice.trait,
            )
        )
    return sets
