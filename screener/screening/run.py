"""Screen a dataset for persona risk: the product's main job.

    result = screen("data.jsonl", out=Path("reports/screen-data"))
    result.scores          # polars DataFrame, one row per scored sample
    result.summary         # counts, dataset-level ΔP with intervals, cuts, model, vectors

Stages, each over the `ScoredSample` records of the previous one:

1. read and render the rows, score them chunk by chunk (`Scorer`: base responses, activations,
   projections; everything computed is committed to the run store before the next chunk) and
   spill each chunk's scores to disk (`ScoredSamples`): here, with scoring.py and spill.py
   (with `engine="ray"`, Ray actors first compute what the store lacks, chunk by chunk:
   ray_engine.py);
2. decide cuts per trait (`flags`), flag, rank by risk, and take dataset-level means with
   bootstrap intervals, from the score columns alone (decide.py);
3. give each flagged sample a category (probe on prompt activations) and a cluster (k-means
   on response activations), then close the run store (label.py);
4. read the rows again, in step with the spilled scores, and write each one to exactly one of
   the filtered file, flagged.jsonl or rejected.jsonl; describe each cluster by the words of
   the samples it was fitted on;
5. write scores.parquet, screen.duckdb, summary.json and report.html, chunk by chunk where
   they hold a row per sample (write.py, for 4 and 5).

The result (result.py) holds what the stages decided; the summary is built from it.

Memory does not grow with the dataset beyond a few numbers per sample (scores, risk), a few
per flagged sample (`Flags`: reasons, category, cluster, in arrays) and a record per rejected
row: rows, base answers and scores stream through.
Every input row ends up kept, flagged or rejected; the counts are checked at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from itertools import islice
from pathlib import Path

import numpy as np

from screener.errors import ScreenerError
from screener.model import (
    LoadedModel,
    generation_model,
)
from screener.options import (
    GenerationOptions,
    ModelOptions,
    ReadOptions,
    ScoringOptions,
    resolve_model,
)
from screener.progress import Rate
from screener.reader import read_dataset
from screener.reader.files import expected_rows
from screener.reader.memory import InMemoryData
from screener.records import RejectedRow
from screener.render import RenderedSample, Renderer, token_limit
from screener.screening.categories import (
    describe_clusters,
    load_categories,
    number_clusters,
)
from screener.screening.decide import decide
from screener.screening.flags import (
    FlagRule,
)
from screener.screening.label import (
    categorize,
    category_layer,
    cluster,
    cluster_fit_indices,
    kept_text_sample,
)
from screener.screening.preflight import check_before_loading
from screener.screening.ray_engine import Chunk, RayScoring, worker_config
from screener.screening.result import (
    ScreenResult,
    generation_dtype_name,
)
from screener.screening.scoring import (
    Scorer,
    ScoringSettings,
)
from screener.screening.spill import ScoredSamples
from screener.screening.write import second_read, write_run
from screener.store import RunStore


def screen(
    data: str | Path | InMemoryData,
    *,
    model: str | ModelOptions | LoadedModel = "embedded",
    traits: Sequence[str] | None = None,
    scoring: ScoringOptions | None = None,
    generation: GenerationOptions | None = None,
    read: ReadOptions | None = None,
    rule: FlagRule | None = None,
    categories: Path | None = None,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    command: str = "",
    label: bool = True,
    force: bool = False,
) -> ScreenResult:
    """Screen `data` for `traits` (default: evil, sycophancy and hallucination where the
    vectors have them, else all of theirs) and, with `out`, write the run's outputs there
    (see the module doc).

    data: a path (a data file, a directory of them, a save_to_disk directory) or rows in
        memory (a list of dicts, a polars DataFrame, a datasets.Dataset).
    model: a model name or path, `ModelOptions`, or a model already loaded.
    scoring, generation, read: the options objects (screener.options); None: their defaults.
    rule: how cuts are chosen (default: the calibrated family-wise percentile).
    categories: a JSON file of extra risk categories.
    label: give flagged samples a category and a cluster (without `out`, the data is read
        again to name the clusters). False skips all three: scores, flags and means only.
    force: replace a directory at `out` that holds files but no screener run (a previous run
        there is always replaced whole).
    """
    started = time.perf_counter()
    say = progress or (lambda message: None)
    scoring = scoring or ScoringOptions()
    generation = generation or GenerationOptions()
    read = read or ReadOptions()
    out = None if out is None else Path(out)
    checked = check_before_loading(
        data, traits, scoring, read, out, say, replace_out=force, server=generation.server
    )
    loaded = resolve_model(model, say)
    vector_file, chosen = checked.vectors, checked.traits
    vector_file.check_model(loaded)
    settings = ScoringSettings.of(chosen, scoring, generation)
    generator = (
        generation_model(loaded, generation.dtype, trust_remote_code=loaded.trust_remote_code)
        if scoring.method == "delta"
        else None
    )
    calibrated, notes = checked.calibration, list(checked.notes)
    styled = scoring.style_control and scoring.method == "delta"
    if calibrated is not None:
        calibrated = calibrated.for_scoring(styled)
        if styled and (unstyled := set(chosen) - set(calibrated.style)):
            notes.append(
                f"no style control in the calibration for {', '.join(sorted(unstyled))}: ΔP "
                "along the raw vectors (run screener calibrate to add it)"
            )
    if calibrated is not None and scoring.method == "delta":
        made_with = calibrated.generation.get("max_new_tokens")
        if made_with != generation.max_new_tokens:
            notes.append(
                f"the calibration's base responses had max_new_tokens={made_with}, this run "
                f"{generation.max_new_tokens}: cuts may be off (recalibrate with the same setting)"
            )
        calibrated_in = calibrated.generation.get("dtype")  # absent in older calibrations
        written_in = generation_dtype_name(loaded, generation.dtype)
        if calibrated_in is not None and calibrated_in != written_in:
            notes.append(
                f"the calibration's base responses were written in {calibrated_in}, this run's "
                f"in {written_in}: cuts may be off (recalibrate with the same --generation-dtype)"
            )
    category_set = load_categories(categories)
    probe_layer = category_layer(loaded)
    renderer = Renderer(
        loaded.tokenizer, max_tokens=token_limit(loaded.model.config, scoring.max_tokens)
    )
    with RunStore.open(scoring.store, progress=say) as run_store:
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
        ray_scoring = None
        if scoring.engine == "ray":
            config = worker_config(
                loaded,
                vector_file.path,
                settings,
                scorer.layers,
                renderer.max_tokens,
                scoring.ray,
                loaded.trust_remote_code,
            )
            # the workers' device decides the keys
            scorer.model_key, scorer.base_key = config.model_key, config.base_key
            ray_scoring = RayScoring(config, scoring.ray, run_store, say)
        reader = read_dataset(data, fmt=read.fmt, fields=read.fields, on_bad_row=read.on_bad_row)
        samples = ScoredSamples(chosen)
        rejected: list[RejectedRow] = []
        try:
            with ray_scoring or nullcontext():
                stream = renderer.render_stream(reader, read.on_bad_row)
                chunks: Iterator[Chunk] = iter(lambda: list(islice(stream, scoring.chunk_size)), [])
                if ray_scoring is not None:  # each chunk comes once the workers have scored it
                    chunks = ray_scoring.computed(chunks, scorer.pending)
                rate = Rate()
                total = expected_rows(Path(data)) if isinstance(data, str | Path) else len(data)
                for chunk in chunks:
                    rejected.extend(r for r in chunk if isinstance(r, RejectedRow))
                    ready = [r for r in chunk if isinstance(r, RenderedSample)]
                    if ready:
                        samples.append(scorer.score(ready))
                    done = len(samples) + len(rejected)
                    read_so_far = "" if total is None else f"{done:,} of about {total:,} rows, "
                    say(
                        f"scored {len(samples)} samples, rejected {len(rejected)} rows "
                        f"({read_so_far}{rate.of(done, total)})"
                    )
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
        result = decide(
            data,
            read,
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
        scoring_stats = dict(scorer.counters)
        fit_indices: list[int] = []
        kept_sample: list[int] = []  # kept rows the clusters' words are contrasted with
        clustering = None
        if label:
            categorize(result, scorer, category_set, probe_layer)
            fit_indices = cluster_fit_indices(result.flags.indices.tolist())
            clustering = cluster(result, scorer, probe_layer, fit_indices)
            if clustering is not None:
                kept_sample = kept_text_sample(len(result.samples), result.flags.indices)
        scoring_stats["category_examples_collected"] = (
            scorer.counters["collected"] - scoring_stats["collected"]
        )

    def finish(texts: dict[int, str]) -> None:
        """Name the clusters by the words of the texts they were fitted on; record the stats."""
        if clustering is not None:
            cluster_model, raw_labels = clustering
            words = describe_clusters(
                cluster_model, [texts[i] for i in fit_indices], [texts[i] for i in kept_sample]
            )
            ids, result.cluster_info = number_clusters(cluster_model, raw_labels, words)
            result.cluster_ids = np.asarray(ids, dtype=np.int64)
        result.stats = {
            **scoring_stats,
            "engine": scoring.engine,
            "sent_to_ray": 0 if ray_scoring is None else ray_scoring.sent,
            "seconds": round(time.perf_counter() - started, 3),
            "store": str(scoring.store) if scoring.store is not None else "default",
        }

    # the store is closed (its memory given back) before the data is read a second time; with
    # `out`, that read also writes the outputs
    if out is not None:
        write_run(result, out, {*fit_indices, *kept_sample}, finish)
    elif label:
        finish(second_read(result, None, None, {*fit_indices, *kept_sample}))
    else:
        finish({})
    return result
