"""Screen a dataset for persona risk: the product's main job.

    result = screen("data.jsonl", out=Path("reports/screen-data"))
    result.scores          # polars DataFrame, one row per scored sample
    result.summary()       # counts, dataset-level ΔP with intervals, cuts, model, vectors

Stages, each over the `ScoredSample` records of the previous one:

1. read and render the rows, score them chunk by chunk (`Scorer`: base responses, activations,
   projections; everything computed is committed to the run store before the next chunk) and
   spill each chunk's scores to disk (`ScoredSamples`);
2. decide cuts per trait (`flags`), flag, rank by risk, and take dataset-level means with
   bootstrap intervals, from the score columns alone;
3. give each flagged sample a category (probe on prompt activations) and a cluster (k-means
   on response activations), then close the run store;
4. read the rows again, in step with the spilled scores, and write each one to exactly one of
   the filtered file, flagged.jsonl or rejected.jsonl; describe each cluster by the words of
   the samples it was fitted on;
5. write scores.parquet, screen.duckdb, summary.json and report.html, chunk by chunk where
   they hold a row per sample.

Memory does not grow with the dataset beyond a few numbers per sample (scores, risk), a few
per flagged sample (`Flags`: reasons, category, cluster, in arrays) and a record per rejected
row: rows, base answers and scores stream through.
Every input row ends up kept, flagged or rejected; the counts are checked at the end.
"""

from __future__ import annotations

import json
import math
import platform
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, overload

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch

from screener.activations import DEFAULT_BATCH_TOKENS, TokenizedInput
from screener.atomic import atomic_path, write_text_atomic
from screener.collect import prepare_out_dir
from screener.errors import ConfigError, ScreenerError, StoreError
from screener.generate import GenerationSettings
from screener.layers import LAYER_CONVENTION
from screener.model import (
    LoadedModel,
    dtype_name,
    generation_model,
    generation_torch_dtype,
    load_model,
)
from screener.reader import BadRowPolicy, FieldNames, read_dataset
from screener.records import Message, RejectedRow, Sample
from screener.render import RenderedSample, Renderer, token_limit
from screener.report import VALIDATE_JSON, VALIDATE_PLOT, write_report
from screener.screen.calibration import (
    DEFAULT_PERCENTILE,
    Calibration,
    default_calibration_path,
    load_calibration,
    usable_calibration,
)
from screener.screen.categories import (
    MAX_CLUSTER_FIT,
    OTHER,
    CategoryProbe,
    CategorySet,
    Cluster,
    ClusterModel,
    describe_clusters,
    fit_clusters,
    load_categories,
    number_clusters,
    training_labels,
)
from screener.screen.filtered import FilteredWriter
from screener.screen.flags import (
    FAMILY_RATE,
    Cut,
    DatasetShift,
    FlagRule,
    Flags,
    MeanInterval,
    bootstrap_mean,
    dataset_shift,
    decide_cut,
    family_percentile,
    risk_scores,
    z_scores,
)
from screener.screen.ray_engine import RayOptions, compute_with_ray, require_ray, worker_config
from screener.screen.scoring import (
    DEFAULT_BASE_TOKENS,
    ENGINES,
    Engine,
    Method,
    ScoredSample,
    Scorer,
    ScoringSettings,
    content_hash,
)
from screener.screen.spill import ScoredSamples
from screener.store import RunStore
from screener.vectors.store import VectorFile, load_vectors

DEFAULT_TRAITS = ("evil", "sycophancy", "hallucination")
# The category probe reads the last prompt token two thirds of the way up the network, where
# the model has read the request but not yet committed to an answer.
CATEGORY_LAYER_FRACTION = 2 / 3
FEATURE_BATCH = 4096  # flagged samples whose activations are read from the store at once
# screen.duckdb is written by one thread under a small memory limit: copying a million-row
# scores.parquet in, DuckDB then holds about 90 MiB, against 115 MiB with two threads and 64MB.
OUTPUT_DUCKDB_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "memory_limit": "32MB",
    "threads": 1,
}


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
    reader: dict[str, Any] = field(default_factory=dict)  # how the data was read: format, fields

    @property
    def flagged(self) -> list[int]:
        """Indexes of the flagged samples, in input order."""
        return self.flags.indices.tolist()

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

    def summary(self) -> dict[str, Any]:
        """What summary.json holds: deterministic for the same inputs and settings."""
        import transformers

        from screener import __version__

        flagged = len(self.flags)
        category_counts: dict[str, int] = {}
        for position in range(flagged):
            name = self.category_at(position)[0]
            category_counts[name] = category_counts.get(name, 0) + 1
        method = self.settings.method
        return {
            "data": self.data,
            "reader": self.reader,
            "counts": {
                "rows_read": self.rows_read,
                "kept": self.kept,
                "flagged": flagged,
                "rejected": len(self.rejected),
                "invariant": f"{self.kept} kept + {flagged} flagged + "
                f"{len(self.rejected)} rejected = {self.rows_read} rows read",
            },
            "method": method,
            "approximate": method == "prompt-last",
            "score": self.score_kind,
            "traits": {
                trait: {
                    "layer": self.vectors.trait(trait).chosen_layer,
                    "dataset_" + self.score_kind: self.dataset_scores[trait].as_dict(),
                    "dataset_shift": shift.as_dict()
                    if (shift := self.dataset_shifts.get(trait))
                    else None,
                    "cut": self.cuts[trait].value,
                    "cut_rule": self.cuts[trait].rule,
                    "flagged": self.flags.count(trait),
                }
                for trait in self.settings.traits
            },
            "categories": dict(sorted(category_counts.items())),
            "clusters": [
                {"id": c.id, "size": c.size, "words": list(c.words)} for c in self.cluster_info
            ],
            "model": self.model.identity(),
            "vectors": {
                "path": self.vectors.path,
                "model": self.vectors.model_id,
                "layer_convention": LAYER_CONVENTION,
            },
            "calibration": None
            if self.calibration is None
            else {
                "path": self.calibration.path,
                "reference": self.calibration.reference,
                "traits": sorted(self.calibration.traits),
                "style_control": {
                    trait: {
                        "components": control.components,
                        "cosine": round(control.cosine, 4),
                        "explained": round(control.explained, 4),
                    }
                    for trait, control in sorted(self.calibration.style.items())
                },
            },
            "generation": {**self.settings.generation.as_dict(), "dtype": self.generation_dtype}
            if method == "delta"
            else None,
            "notes": self.notes,
            "versions": {
                "screener": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
            "command": self.command,
        }


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


def choose_traits(vectors: VectorFile, traits: Sequence[str] | None) -> tuple[str, ...]:
    """The traits to screen: those asked for (each must be in the file), else the default
    three when the file has them, else every trait in the file."""
    if traits:
        for trait in traits:
            vectors.trait(trait)  # raises naming the traits the file has
        return tuple(dict.fromkeys(traits))
    if all(t in vectors.traits for t in DEFAULT_TRAITS):
        return DEFAULT_TRAITS
    return tuple(vectors.traits)


def resolve_calibration(
    spec: str | Path | None, vectors_spec: str | Path, vectors: VectorFile, traits: tuple[str, ...]
) -> tuple[Calibration | None, list[str]]:
    """`auto`: the file beside the vectors if there is one; `none`/None: no calibration."""
    if spec is None or str(spec) == "none":
        return None, []
    if str(spec) == "auto":
        path = default_calibration_path(vectors_spec)
        if not path.exists():
            return None, [f"no calibration beside the vectors ({path}): run screener calibrate"]
    else:
        path = Path(spec)
        if not path.exists():
            raise ConfigError(f"--calibration {path}: no such file")
    calibration, warnings = usable_calibration(load_calibration(path), vectors, traits)
    return (calibration if calibration.traits else None), warnings


def category_layer(loaded: LoadedModel) -> int:
    num_layers = int(loaded.model.config.get_text_config().num_hidden_layers)
    return max(1, round(num_layers * CATEGORY_LAYER_FRACTION))


def probe_features(scorer: Scorer, prompts: list[str], layer: int) -> np.ndarray:
    """Last-prompt activations at `layer` of single-turn prompts (cached in the store).

    A prompt's last token does not see what follows it, so any one token stands in for the
    response the collector needs.
    """
    filler = scorer.loaded.tokenizer.eos_token_id or 0
    items = []
    for prompt in prompts:
        ids = scorer.renderer.prompt_ids((Message("user", prompt),))
        inputs = TokenizedInput([*ids, filler], len(ids))
        items.append((content_hash(inputs), inputs))
    values = scorer.activations(items)
    return np.stack([values[(key, layer)].last_prompt.numpy() for key, _ in items])


def screen(
    data: str | Path,
    *,
    model: str | LoadedModel = "embedded",
    vectors: str | Path = "builtin",
    traits: Sequence[str] | None = None,
    method: Method = "delta",
    max_new_tokens: int = DEFAULT_BASE_TOKENS,
    generation_dtype: str = "same",
    rule: FlagRule | None = None,
    calibration: str | Path | None = "auto",
    categories: Path | None = None,
    out: str | Path | None = None,
    store: str | Path | None = None,
    fmt: str = "auto",
    fields: FieldNames | None = None,
    on_bad_row: BadRowPolicy = "reject",
    max_tokens: int | None = None,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    generation_batch_size: int = 32,
    chunk_size: int = 256,
    dtype: str = "auto",
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
    command: str = "",
    engine: Engine = "local",
    ray_options: RayOptions | None = None,
    trust_remote_code: bool = False,
    style_control: bool = True,
) -> ScreenResult:
    """Screen `data` and, with `out`, write the run's outputs there (see the module doc).

    generation_dtype: the precision base responses are written in: `same` as the model's, or
        `fp32`/`bf16` (the same weights loaded a second time; fp32 base responses keep ΔP's
        ranking the same for bf16 and fp32 scores, see the README's "Determinism").
    calibration: `auto` (beside the vectors), a calibration file, or `none`.
    store: the run store's path (default under $SCREENER_HOME; `:memory:` caches nothing).
    trust_remote_code: let the model (and ray workers' copies) run code shipped with it.
    style_control: project ΔP on the calibration's style-controlled directions and cut on
        their reference distribution (screener.screen.style); False: on the vectors themselves.
    engine: `local` computes in this process; `ray` computes what the store lacks with Ray
        Data first (see screener.screen.ray_engine; `ray_options`: cluster and workers).
    """
    started = time.perf_counter()
    say = progress or (lambda message: None)
    if chunk_size < 1:
        raise ConfigError("chunk_size must be at least 1")
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    if engine == "ray":
        require_ray()
    out = None if out is None else Path(out)
    if out is not None:
        prepare_out_dir(out)
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    )
    vector_file = load_vectors(vectors, model=loaded)
    chosen = choose_traits(vector_file, traits)
    settings = ScoringSettings(
        chosen,
        method,
        GenerationSettings(max_new_tokens=max_new_tokens),
        generation_batch_size=generation_batch_size,
        max_batch_tokens=max_batch_tokens,
        generation_dtype=generation_dtype,
    )
    generator = (
        generation_model(loaded, generation_dtype, trust_remote_code=trust_remote_code)
        if method == "delta"
        else None
    )
    calibrated, notes = resolve_calibration(calibration, vectors, vector_file, chosen)
    styled = style_control and method == "delta"
    if calibrated is not None:
        calibrated = calibrated.for_scoring(styled)
        if styled and (unstyled := set(chosen) - set(calibrated.style)):
            notes.append(
                f"no style control in the calibration for {', '.join(sorted(unstyled))}: ΔP "
                "along the raw vectors (run screener calibrate to add it)"
            )
    if calibrated is not None and method == "delta":
        made_with = calibrated.generation.get("max_new_tokens")
        if made_with != max_new_tokens:
            notes.append(
                f"the calibration's base responses had max_new_tokens={made_with}, this run "
                f"{max_new_tokens}: cuts may be off (recalibrate with the same setting)"
            )
        calibrated_in = calibrated.generation.get("dtype")  # absent in older calibrations
        written_in = generation_dtype_name(loaded, generation_dtype)
        if calibrated_in is not None and calibrated_in != written_in:
            notes.append(
                f"the calibration's base responses were written in {calibrated_in}, this run's "
                f"in {written_in}: cuts may be off (recalibrate with the same --generation-dtype)"
            )
    category_set = load_categories(categories)
    probe_layer = category_layer(loaded)
    renderer = Renderer(loaded.tokenizer, max_tokens=token_limit(loaded.model.config, max_tokens))

    ray_options = ray_options or RayOptions()
    sent_to_ray = 0
    with RunStore.open(store) as run_store:
        scorer = Scorer(
            loaded,
            vector_file,
            settings,
            run_store,
            renderer,
            extra_layers=[probe_layer],
            progress=say,
            generator=generator,
            directions=None if calibrated is None else calibrated.directions(),
        )
        if engine == "ray":
            config = worker_config(
                loaded,
                vector_file.path,
                settings,
                scorer.layers,
                renderer.max_tokens,
                ray_options,
                trust_remote_code,
            )
            # the workers' device decides the keys
            scorer.model_key, scorer.base_key = config.model_key, config.base_key
            pending = _pending_samples(
                scorer,
                renderer.render_stream(read_dataset(data, fmt=fmt, fields=fields), "reject"),
                chunk_size,
            )
            sent_to_ray = compute_with_ray(pending, config, ray_options, run_store, say)
        reader = read_dataset(data, fmt=fmt, fields=fields, on_bad_row=on_bad_row)
        samples = ScoredSamples(chosen)
        rejected: list[RejectedRow] = []
        try:
            stream = renderer.render_stream(reader, on_bad_row)
            while chunk := list(islice(stream, chunk_size)):
                rejected.extend(r for r in chunk if isinstance(r, RejectedRow))
                ready = [r for r in chunk if isinstance(r, RenderedSample)]
                if ready:
                    samples.append(scorer.score(ready))
                say(f"scored {len(samples)} samples, rejected {len(rejected)} rows")
            samples.finish()
        except BaseException:
            samples.close()
            raise
        rows_read = reader.counts.rows
        if skipped := reader.counts.skipped_note():
            notes.append(skipped)
        if rows_read != len(samples) + len(rejected):
            raise ScreenerError(
                f"internal error: {rows_read} rows read but {len(samples)} scored and "
                f"{len(rejected)} rejected; please report this"
            )
        result = _decide(
            data,
            loaded,
            vector_file,
            settings,
            rows_read,
            samples,
            rejected,
            rule or FlagRule(),
            calibrated,
        )
        result.notes = notes + [
            shift.note(trait) for trait, shift in result.dataset_shifts.items() if shift.alarm
        ]
        result.command = command
        result.reader = {"format": fmt, "fields": asdict(fields or FieldNames())}
        scoring_stats = dict(scorer.counters)
        _categorize(result, scorer, category_set, probe_layer)
        fit_indices = _cluster_fit_indices(result.flagged)
        clustering = _cluster(result, scorer, probe_layer, fit_indices)
        scoring_stats["category_examples_collected"] = (
            scorer.counters["collected"] - scoring_stats["collected"]
        )
    # the store is closed (its memory given back) before the data is read a second time
    flagged_records = (
        FlaggedRecords(samples.directory / "flagged-unordered.jsonl") if out is not None else None
    )
    texts = _second_pass(result, data, fmt, fields, out, flagged_records, set(fit_indices))
    if clustering is not None:
        cluster_model, raw_labels = clustering
        words = describe_clusters(cluster_model, [texts[i] for i in fit_indices])
        ids, result.cluster_info = number_clusters(cluster_model, raw_labels, words)
        result.cluster_ids = np.asarray(ids, dtype=np.int64)
    result.stats = {
        **scoring_stats,
        "engine": engine,
        "sent_to_ray": sent_to_ray,
        "seconds": round(time.perf_counter() - started, 3),
        "store": str(store) if store is not None else "default",
    }
    if out is not None:
        assert flagged_records is not None
        result.out_dir = out
        with flagged_records:
            result.outputs += write_outputs(result, out, flagged_records)
        result.outputs.append(write_report(out))
    return result


def _pending_samples(
    scorer: Scorer, stream: Iterator[RenderedSample | RejectedRow], chunk_size: int
) -> Iterator[Sample]:
    """The samples of `stream` whose scores the run store cannot give yet."""
    while chunk := list(islice(stream, chunk_size)):
        ready = [r for r in chunk if isinstance(r, RenderedSample)]
        for index in scorer.pending(ready):
            yield ready[index].sample


def _decide(
    data: str | Path,
    loaded: LoadedModel,
    vectors: VectorFile,
    settings: ScoringSettings,
    rows_read: int,
    samples: ScoredSamples,
    rejected: list[RejectedRow],
    rule: FlagRule,
    calibration: Calibration | None,
) -> ScreenResult:
    """Cuts, flags with reasons, risk and dataset-level means. The score columns are read
    from the spill file one trait at a time (at a million rows each costs 8 MB)."""
    columns = ScoreColumns(samples, settings.traits, score_kind(settings.method))
    references = [
        None if calibration is None else calibration.distribution(trait, columns.kind)
        for trait in settings.traits
    ]
    cuts: dict[str, Cut] = {}
    dataset_scores: dict[str, MeanInterval] = {}
    dataset_shifts: dict[str, DatasetShift] = {}
    present = [r for r in references if r is not None]
    default_percentile = family_percentile(present) if present else DEFAULT_PERCENTILE
    default_rule = (
        f"default: {FAMILY_RATE:.0%} of reference rows flagged for any of "
        f"{', '.join(t for t, r in zip(settings.traits, references, strict=True) if r)}"
    )
    for trait, scores, reference in zip(settings.traits, columns, references, strict=True):
        cuts[trait] = decide_cut(trait, scores, rule, reference, default_percentile, default_rule)
        dataset_scores[trait] = bootstrap_mean(scores)
        if reference is not None and (shift := dataset_shift(dataset_scores[trait], reference)):
            dataset_shifts[trait] = shift
    flags = Flags.decide(settings.traits, list(cuts.values()), columns)
    risk = (
        risk_scores(z_scores(s, r) for s, r in zip(columns, references, strict=True))
        if len(samples)
        else np.zeros(0)
    )
    return ScreenResult(
        str(data),
        loaded,
        vectors,
        settings,
        rows_read,
        samples,
        rejected,
        cuts,
        flags,
        risk,
        dataset_scores,
        dataset_shifts,
        calibration=calibration,
    )


def _batches(indices: Sequence[int], size: int = FEATURE_BATCH) -> Iterator[Sequence[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _stored_features(
    result: ScreenResult, scorer: Scorer, indices: Sequence[int], layer: int, kind: str
) -> np.ndarray:
    """The `response_mean` or `last_prompt` activations at `layer` of the samples at sorted
    `indices`, from the run store (screening put them there)."""
    hashes = result.samples.take("content_hash", indices)
    values = scorer.store.get_activations(scorer.model_key, list(dict.fromkeys(hashes)), [layer])
    return np.stack([getattr(values[(h, layer)], kind).numpy() for h in hashes])


def _categorize(result: ScreenResult, scorer: Scorer, categories: CategorySet, layer: int) -> None:
    """Give each flagged sample its category (probe on prompt activations)."""
    flagged = result.flagged
    if not flagged:
        return
    prompts, labels = training_labels(categories)
    probe = CategoryProbe(probe_features(scorer, prompts, layer), labels)
    codes: dict[str, int] = {}
    result.category_codes = np.zeros(len(flagged), dtype=np.int32)
    result.category_probability = np.zeros(len(flagged))
    position = 0
    for batch in _batches(flagged):
        features = _stored_features(result, scorer, batch, layer, "last_prompt")
        for name, probability in probe.predict(features):
            result.category_codes[position] = codes.setdefault(name, len(codes))
            result.category_probability[position] = probability
            position += 1
    result.category_names = list(codes)


def _cluster_fit_indices(flagged: list[int]) -> list[int]:
    """The flagged samples k-means is fitted on: all, or MAX_CLUSTER_FIT spread evenly in input
    order (k-means and the silhouette grow quadratically; the rest join the nearest centre)."""
    if len(flagged) <= MAX_CLUSTER_FIT:
        return flagged
    positions = np.linspace(0, len(flagged) - 1, MAX_CLUSTER_FIT).round().astype(int)
    return [flagged[p] for p in sorted(set(positions.tolist()))]


def _cluster(
    result: ScreenResult, scorer: Scorer, layer: int, fit_indices: list[int]
) -> tuple[ClusterModel, np.ndarray] | None:
    """k-means on the response activations of the samples at `fit_indices`, and the raw
    cluster label of every flagged sample (None when nothing is flagged). The clusters are
    described once the second read has found the fitted samples' texts."""
    if not fit_indices:
        return None
    model = fit_clusters(_stored_features(result, scorer, fit_indices, layer, "response_mean"))
    raw = [
        model.assign(_stored_features(result, scorer, batch, layer, "response_mean"))
        for batch in _batches(result.flagged)
    ]
    return model, np.concatenate(raw)


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


def _second_pass(
    result: ScreenResult,
    data: str | Path,
    fmt: str,
    fields: FieldNames | None,
    out: Path | None,
    flagged_records: FlaggedRecords | None,
    text_wanted: set[int],
) -> dict[int, str]:
    """Read the rows again, in step with the scored samples: write kept rows to the filtered
    file(s) and flagged ones to `flagged_records` (with `out`); return the conversation text
    of the flagged samples in `text_wanted`, for clustering."""
    scored = enumerate(result.samples)
    current = next(scored, None)
    flag_indices = result.flags.indices
    texts: dict[int, str] = {}
    kept = flagged = 0
    writer = FilteredWriter(data, out) if out is not None else None
    with writer if writer is not None else nullcontext():
        # Rows rejected on the first read (duplicate ids among them) are skipped below: they
        # are not the next scored sample. So the second read need not track ids.
        reread = read_dataset(data, fmt=fmt, fields=fields, check_duplicates=False)
        for record in reread:
            if not isinstance(record, Sample) or current is None:
                continue
            index, sample = current
            if (record.source, record.line) != (sample.source, sample.line):
                continue  # rejected on the first read, or when rendered
            current = next(scored, None)
            if flagged < len(flag_indices) and flag_indices[flagged] == index:
                if index in text_wanted:
                    texts[index] = "\n".join(m.content for m in record.messages)
                if flagged_records is not None:
                    flagged_records.add(_flagged_record(result, flagged, sample, record))
                flagged += 1
            else:
                kept += 1
                if writer is not None:
                    writer.write(record.source, record.original)
    if writer is not None:
        result.outputs += writer.paths
    if current is not None or kept != result.kept or flagged != len(result.flags):
        raise ScreenerError(
            f"the data changed while it was screened ({kept} kept and {flagged} flagged "
            f"on the second read, {result.kept} and {len(result.flags)} expected): rerun "
            "screener on a file that is not being written to"
        )
    return texts


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
            "flagged.jsonl",
            "rejected.jsonl",
            "scores.parquet",
            "screen.duckdb",
            "summary.json",
            "reference.json",
            "run_stats.json",
        )
    }
    for stale in (VALIDATE_JSON, VALIDATE_PLOT):  # a validation of an earlier run's rows
        (out / stale).unlink(missing_ok=True)
    flagged_records.write(paths["flagged.jsonl"], order, result.cluster_at)
    write_text_atomic(paths["rejected.jsonl"], rejected_text)
    with atomic_path(paths["scores.parquet"]) as tmp:
        _write_scores(result, tmp)
    summary = result.summary()
    with atomic_path(paths["screen.duckdb"]) as tmp:
        _write_duckdb(tmp, paths["screen.duckdb"], result, paths["scores.parquet"], summary)
    write_text_atomic(paths["summary.json"], json.dumps(summary, indent=2) + "\n")
    write_text_atomic(paths["reference.json"], json.dumps(_reference(result), indent=1) + "\n")
    write_text_atomic(paths["run_stats.json"], json.dumps(result.stats, indent=2) + "\n")
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
    path: Path, final: Path, result: ScreenResult, scores: Path, summary: dict[str, Any]
) -> None:
    """Write the run's tables into a new DuckDB file at `path` (a temporary beside `final`);
    the scores table is read from the `scores` parquet file."""
    import duckdb

    path.unlink()  # atomic_path made an empty file; DuckDB wants to create its own
    flags = result.flags
    # one row per (flagged sample, trait it is flagged for), samples in input order
    rows, traits = np.nonzero(flags.flagged_for)
    ids = pl.Series(result.samples.take("id", result.flagged), dtype=pl.String)
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
        {"key": list(summary), "value": [json.dumps(v) for v in summary.values()]},
        schema={"key": pl.String, "value": pl.String},
    )
    connection = duckdb.connect(str(path), config=OUTPUT_DUCKDB_CONFIG)
    try:
        connection.execute("CREATE TABLE scores AS SELECT * FROM read_parquet(?)", [str(scores)])
        for name, frame in (
            ("reasons", reasons),
            ("rejected", rejected),
            ("run", run),
        ):
            connection.register("frame", frame.to_arrow())
            connection.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
            connection.unregister("frame")
        # Write everything into the file now: a checkpoint that fails at close() is silent and
        # would leave the tables in a write-ahead log that the rename below leaves behind.
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
