"""`calibrate`: measure what ordinary chat scores, so that a flag cut means something.

A reference is one or more files of ordinary, correct chat in the styles users' data comes in
(the shipped one: short chats and long strong-assistant prose). For every row it computes ΔP
and the last prompt token's projection, and, per trait, fits the style control
(screener.screening.style) on the rows' activation differences. It stores the distributions of
raw ΔP, prompt-last and style-controlled ΔP (out of fold) with the controlled directions.

    calibration = calibrate(["ref_chat.jsonl", "ref_prose.jsonl"])
    save_calibration(calibration, default_calibration_path("builtin"))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np

from screener.errors import ConfigError
from screener.model import LoadedModel, generation_model
from screener.options import (
    GenerationOptions,
    ModelOptions,
    ReadOptions,
    ScoringOptions,
    resolve_model,
)
from screener.reader import read_dataset
from screener.render import RenderedSample, Renderer, token_limit
from screener.screening.calibration import (
    ANSWER_KIND,
    STYLE_KIND,
    Calibration,
    Distribution,
    vector_digest,
)
from screener.screening.preflight import choose_traits, peek, wait_for_store
from screener.screening.result import generation_dtype_name
from screener.screening.scoring import Scorer, ScoringSettings
from screener.screening.style import (
    MIN_ROWS_PER_COMPONENT,
    STYLE_COMPONENTS,
    fit_style_control,
    out_of_fold_scores,
)
from screener.served import check_server
from screener.store import RunStore
from screener.vectors.store import load_vectors


def calibrate(
    references: str | Path | Sequence[str | Path],
    *,
    model: str | ModelOptions | LoadedModel = "embedded",
    traits: Sequence[str] | None = None,
    scoring: ScoringOptions | None = None,
    generation: GenerationOptions | None = None,
    read: ReadOptions | None = None,
    style_components: int = STYLE_COMPONENTS,
    progress: Callable[[str], None] | None = None,
    command: str = "",
) -> Calibration:
    """Score the reference files and describe each trait's score distributions, with the
    style control of `style_components` components (at most one per MIN_ROWS_PER_COMPONENT
    usable rows; 0: none, later runs take ΔP along the raw vectors).

    The options are screen's: `scoring` gives the vectors, store and batching (its method is
    ΔP whatever it says), `generation` how the model's own answers are written."""
    from screener import __version__

    paths = [references] if isinstance(references, str | Path) else list(references)
    if not paths:
        raise ConfigError("calibrate needs at least one reference file")
    scoring = replace(scoring or ScoringOptions(), method="delta")
    generation = generation or GenerationOptions()
    read = read or ReadOptions()
    say = progress or (lambda message: None)
    for path in paths:  # every check that needs no model, before it loads
        peek(path, read)
    vector_file = load_vectors(scoring.vectors)
    chosen = choose_traits(vector_file, traits)
    wait_for_store(scoring.store, say)
    if generation.server is not None:
        check_server(generation.server)
    loaded = resolve_model(model, say)
    vector_file.check_model(loaded)
    settings = ScoringSettings.of(chosen, scoring, generation)
    renderer = Renderer(
        loaded.tokenizer, max_tokens=token_limit(loaded.model.config, scoring.max_tokens)
    )
    deltas: dict[str, list[float]] = {t: [] for t in chosen}
    lasts: dict[str, list[float]] = {t: [] for t in chosen}
    answers: dict[str, list[float]] = {t: [] for t in chosen}
    differences: dict[str, list[np.ndarray]] = {t: [] for t in chosen}
    counts = {"rows_read": 0, "scored": 0, "rejected": 0}
    with RunStore.open(scoring.store, progress=say) as run_store:
        scorer = Scorer(
            loaded,
            vector_file,
            settings,
            run_store,
            renderer,
            progress=say,
            generator=generation_model(
                loaded, generation.dtype, trust_remote_code=loaded.trust_remote_code
            ),
        )
        for path in paths:
            reader = read_dataset(path, fmt=read.fmt, fields=read.fields)
            stream = renderer.render_stream(reader, "reject")
            while chunk := list(islice(stream, scoring.chunk_size)):
                ready = [r for r in chunk if isinstance(r, RenderedSample)]
                counts["rejected"] += len(chunk) - len(ready)
                if not ready:
                    continue
                for sample in scorer.score(ready):
                    for trait in chosen:
                        if (delta := sample.delta(trait)) is not None:
                            deltas[trait].append(delta)
                        lasts[trait].append(sample.prompt_last[trait])
                        if sample.base_projection is not None:
                            answers[trait].append(sample.base_projection[trait])
                for trait, rows in scorer.differences(ready).items():
                    differences[trait].append(rows[~np.isnan(rows).any(axis=1)])
                counts["scored"] += len(ready)
                say(f"calibrated on {counts['scored']} rows")
            counts["rows_read"] += reader.counts.rows
    if not counts["scored"]:
        raise ConfigError(f"{', '.join(map(str, paths))}: no usable rows to calibrate on")
    distributions: dict[str, dict[str, Distribution]] = {}
    style = {}
    for trait in chosen:
        distributions[trait] = {
            "delta": Distribution.of(deltas[trait]),
            "prompt_last": Distribution.of(lasts[trait]),
        }
        if answers[trait]:
            distributions[trait][ANSWER_KIND] = Distribution.of(answers[trait])
        stacked = np.concatenate(differences[trait])
        # a small reference supports fewer components (MIN_ROWS_PER_COMPONENT rows each)
        components = min(style_components, len(stacked) // MIN_ROWS_PER_COMPONENT)
        if components:
            unit = vector_file.unit(trait).double().numpy()
            style[trait] = fit_style_control(stacked, unit, components)
            scores = out_of_fold_scores(stacked, unit, components)
            distributions[trait][STYLE_KIND] = Distribution.of(scores.tolist())
    return Calibration(
        loaded.fingerprint,
        {
            "data": [str(p) for p in paths],
            "name": " + ".join(Path(p).name for p in paths),
            **counts,
        },
        {
            **settings.generation.as_dict(),
            "dtype": generation_dtype_name(loaded, generation.dtype),
        },
        distributions,
        {trait: vector_digest(vector_file, trait) for trait in chosen},
        command,
        __version__,
        style=style,
    )
