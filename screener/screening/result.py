"""A finished screening run: its scores (on disk, read column by column), cuts, flags,
categories and clusters, and the summary every output and later job reads.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import polars as pl
import torch

from screener.errors import ScreenerError
from screener.layers import LAYER_CONVENTION
from screener.model import (
    LoadedModel,
    dtype_name,
    generation_torch_dtype,
)
from screener.options import ReadOptions
from screener.reader.memory import InMemoryData
from screener.records import RejectedRow
from screener.run_summary import (
    CalibrationSummary,
    Counts,
    GenerationSummary,
    ReferenceSummary,
    RunSummary,
    StyleSummary,
    TraitSummary,
    VectorsSummary,
)
from screener.screening.calibration import (
    Calibration,
)
from screener.screening.categories import (
    OTHER,
    Cluster,
)
from screener.screening.flags import (
    Cut,
    DatasetShift,
    Flags,
    MeanInterval,
)
from screener.screening.scoring import (
    Method,
    ScoringSettings,
)
from screener.screening.spill import ScoredSamples
from screener.vectors.store import VectorFile

if TYPE_CHECKING:
    import datasets


def score_kind(method: Method) -> str:
    """The score a method flags on: ΔP (`delta`) or the last-prompt projection."""
    return "delta" if method == "delta" else "prompt_last"


def score_column(samples: ScoredSamples, trait: str, kind: str) -> np.ndarray:
    """Every sample's score of one kind for `trait` (NaN where there is none)."""
    if kind == "delta":
        return samples.column(f"proj_{trait}") - samples.column(f"base_proj_{trait}")
    return samples.column(f"prompt_last_{trait}")


class ScoreColumns(Sequence[np.ndarray]):
    """Each trait's scores of one kind, read from the spill file when indexed (not kept)."""

    def __init__(self, samples: ScoredSamples, traits: Sequence[str], kind: str) -> None:
        self.samples, self.traits, self.kind = samples, tuple(traits), kind

    def __len__(self) -> int:
        return len(self.traits)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        return score_column(self.samples, self.traits[index], self.kind)


@dataclass
class ScreenResult:
    """A finished screening run. Samples are in input order, kept on disk (`ScoredSamples`);
    what is known of flagged samples only (reasons, category, cluster) is kept in arrays by
    their row in `flags`."""

    data: str
    model: LoadedModel
    vectors: VectorFile
    settings: ScoringSettings
    rows_read: int
    samples: ScoredSamples
    rejected: list[RejectedRow]
    cuts: dict[str, Cut]
    flags: Flags  # which samples are flagged and why
    risk: np.ndarray
    dataset_scores: dict[str, MeanInterval]
    dataset_shifts: dict[str, DatasetShift] = field(default_factory=dict)  # calibrated traits
    category_names: list[str] = field(default_factory=list)  # what category_codes point at
    category_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    category_probability: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cluster_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cluster_info: list[Cluster] = field(default_factory=list)
    calibration: Calibration | None = None
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    outputs: list[Path] = field(default_factory=list)
    command: str = ""
    input: str | Path | InMemoryData = ""  # the data as given: a path, or rows in memory
    read: ReadOptions = field(default_factory=ReadOptions)  # how it was read

    def write(self, out: str | Path, *, force: bool = False) -> list[Path]:
        """Write every output of the run to the directory `out`, as `screener screen --out`
        does (the data is read again; a previous run there is replaced whole, other files only
        with `force`); returns the files written."""
        from screener.run_directory import check_out_dir
        from screener.screening.write import write_run

        check_out_dir(Path(out), replace=force)
        write_run(self, Path(out))
        return self.outputs

    def to_dataset(self) -> datasets.Dataset:
        """The screened input rows (rejected ones left out), in input order, as a
        `datasets.Dataset` with the screen's columns added: `flagged`, `flag_traits`, `risk`
        and each trait's score (`delta_<trait>`, or `prompt_last_<trait>`). The rows are read
        again and held in memory. `.filter(lambda row: not row["flagged"])` keeps the rest."""
        from datasets import Dataset

        from screener.screening.reread import screened_rows

        added = ["flagged", "flag_traits", "risk"]
        added += [f"{self.score_kind}_{trait}" for trait in self.settings.traits]
        values = self.scores.select(added).rows(named=True)
        rows = []
        for index, _, record in screened_rows(self.samples, self.input, self.read):
            if clash := sorted(set(record.original) & set(added)):
                raise ScreenerError(
                    f"{record.source}:{record.line}: the data has column(s) {', '.join(clash)}, "
                    "which to_dataset() adds: rename them first, or use .scores"
                )
            rows.append({**record.original, **values[index]})
        columns = dict.fromkeys(name for row in rows for name in row)  # files may differ
        return Dataset.from_list([{name: row.get(name) for name in columns} for row in rows])

    @property
    def flagged(self) -> pl.DataFrame:
        """The scores of the flagged samples, in input order (`source`, `source_line` and
        `id` say which rows they are; `flag_traits` why)."""
        return self.scores.filter(pl.col("flagged"))

    @property
    def kept(self) -> int:
        return len(self.samples) - len(self.flags)

    def category_at(self, position: int) -> tuple[str, float]:
        """The category and its probability of the flagged sample at row `position` of
        `flags` (`other` before categories are given)."""
        if position >= len(self.category_codes):
            return OTHER, 0.0
        code = int(self.category_codes[position])
        return self.category_names[code], float(self.category_probability[position])

    def cluster_at(self, position: int) -> int | None:
        """The cluster id of the flagged sample at row `position` of `flags`, if clustered."""
        if position >= len(self.cluster_ids):
            return None
        return int(self.cluster_ids[position])

    @property
    def score_kind(self) -> str:
        return score_kind(self.settings.method)

    @property
    def generation_dtype(self) -> str:
        """The precision the base responses were written in (`float32`, `bfloat16`, ...)."""
        return generation_dtype_name(self.model, self.settings.generation_dtype)

    @property
    def scores(self) -> pl.DataFrame:
        """One row per scored sample, with every score (see `scores_schema`); this loads the
        whole table: `score_frames` gives it one chunk at a time."""
        frames = list(self.score_frames())
        if not frames:
            return pl.DataFrame(schema=scores_schema(self.settings.traits))
        return pl.concat(frames)

    def score_frames(self) -> Iterator[pl.DataFrame]:
        """The scores table, one chunk of samples at a time."""
        traits = self.settings.traits
        schema = scores_schema(traits)
        for group in range(self.samples.groups):
            start = self.samples.group_start(group)
            table = pl.DataFrame(self.samples.group_table(group))
            first, last = self.flags.positions(start, start + table.height)
            row_of = {int(self.flags.indices[p]) - start: p for p in range(first, last)}
            rows = [row_of.get(i) for i in range(table.height)]
            categories = [(None, None) if p is None else self.category_at(p) for p in rows]
            columns: dict[str, Any] = {
                "id": table["id"],
                "source": table["source"],
                "source_line": table["line"],
                "format": table["format"],
                "prompt_tokens": table["prompt_tokens"],
                "response_tokens": table["response_tokens"],
                "base_response_tokens": table["base_response_tokens"],
            }
            for trait in traits:
                columns[f"delta_{trait}"] = table[f"proj_{trait}"] - table[f"base_proj_{trait}"]
                columns[f"proj_{trait}"] = table[f"proj_{trait}"]
                columns[f"base_proj_{trait}"] = table[f"base_proj_{trait}"]
                columns[f"prompt_last_{trait}"] = table[f"prompt_last_{trait}"]
            risk = pl.Series(self.risk[start : start + table.height], dtype=pl.Float64)
            columns["risk"] = risk.fill_nan(None)
            columns["flagged"] = [p is not None for p in rows]
            columns["flag_traits"] = [
                [] if p is None else [r.trait for r in self.flags.reasons_at(p)] for p in rows
            ]
            columns["category"] = [name for name, _ in categories]
            columns["category_probability"] = [probability for _, probability in categories]
            columns["cluster"] = [None if p is None else self.cluster_at(p) for p in rows]
            columns["base_response"] = table["base_response"]
            columns["warnings"] = table["warnings"]
            yield pl.DataFrame(columns, schema=schema)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def summary(self) -> RunSummary:
        """What the run did and decided (summary.json): deterministic for the same inputs and
        settings."""
        import transformers

        from screener import __version__

        category_counts: dict[str, int] = {}
        for position in range(len(self.flags)):
            name = self.category_at(position)[0]
            category_counts[name] = category_counts.get(name, 0) + 1
        calibration, served = self.calibration, self.settings.generation_server
        return RunSummary(
            data=self.data,
            reader_format=self.read.fmt,
            fields=self.read.fields,
            counts=Counts(self.rows_read, self.kept, len(self.flags), len(self.rejected)),
            method=self.settings.method,
            score=self.score_kind,
            traits={
                trait: TraitSummary(
                    layer=self.vectors.trait(trait).chosen_layer,
                    dataset_score=self.dataset_scores[trait],
                    dataset_shift=self.dataset_shifts.get(trait),
                    cut=self.cuts[trait].value,
                    cut_rule=self.cuts[trait].rule,
                    flagged=self.flags.count(trait),
                )
                for trait in self.settings.traits
            },
            categories=dict(sorted(category_counts.items())),
            clusters=list(self.cluster_info),
            model=self.model.identity(),
            vectors=VectorsSummary(self.vectors.path, self.vectors.model_id, LAYER_CONVENTION),
            calibration=None
            if calibration is None
            else CalibrationSummary(
                path=calibration.path,
                reference=ReferenceSummary(**calibration.reference),
                traits=sorted(calibration.traits),
                style_control={
                    trait: StyleSummary(
                        control.components, round(control.cosine, 4), round(control.explained, 4)
                    )
                    for trait, control in sorted(calibration.style.items())
                },
            ),
            generation=GenerationSummary(
                **self.settings.generation.as_dict(),
                dtype=self.generation_dtype,
                server=None if served is None else f"{served.model}@{served.url}",
            )
            if self.settings.method == "delta"
            else None,
            notes=list(self.notes),
            versions={
                "screener": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
            command=self.command,
        )


def generation_dtype_name(loaded: LoadedModel, generation_dtype: str) -> str:
    """The precision base responses are written in (`float32`, `bfloat16`, ...) when `loaded`
    scores and `generation_dtype` is asked for."""
    return dtype_name(generation_torch_dtype(loaded, generation_dtype))


def scores_schema(traits: Sequence[str]) -> dict[str, pl.DataType | type[pl.DataType]]:
    """The explicit column types of scores.parquet."""
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "id": pl.String,
        "source": pl.String,
        "source_line": pl.Int64,
        "format": pl.String,
        "prompt_tokens": pl.Int32,
        "response_tokens": pl.Int32,
        "base_response_tokens": pl.Int32,
    }
    for trait in traits:
        for prefix in ("delta", "proj", "base_proj", "prompt_last"):
            schema[f"{prefix}_{trait}"] = pl.Float64
    schema.update(
        {
            "risk": pl.Float64,
            "flagged": pl.Boolean,
            "flag_traits": pl.List(pl.String),
            "category": pl.String,
            "category_probability": pl.Float64,
            "cluster": pl.Int32,
            "base_response": pl.String,
            "warnings": pl.List(pl.String),
        }
    )
    return schema
