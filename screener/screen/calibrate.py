"""`calibrate`: measure what ordinary chat scores, so that a flag cut means something.

A reference is one or more files of ordinary, correct chat in the styles users' data comes in
(the shipped one: short chats and long strong-assistant prose). For every row it computes ΔP
and the last prompt token's projection, and, per trait, fits the style control
(screener.screen.style) on the rows' activation differences. It stores the distributions of
raw ΔP, prompt-last and style-controlled ΔP (out of fold) with the controlled directions.

    calibration = calibrate(["ref_chat.jsonl", "ref_prose.jsonl"])
    save_calibration(calibration, default_calibration_path("builtin"))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path

import numpy as np

from screener.activations import DEFAULT_BATCH_TOKENS
from screener.errors import ConfigError
from screener.generate import GenerationSettings
from screener.model import LoadedModel, generation_model, load_model
from screener.reader import FieldNames, read_dataset
from screener.render import RenderedSample, Renderer, token_limit
from screener.screen.calibration import (
    STYLE_KIND,
    Calibration,
    Distribution,
    vector_digest,
)
from screener.screen.result import generation_dtype_name
from screener.screen.run import choose_traits
from screener.screen.scoring import DEFAULT_BASE_TOKENS, Scorer, ScoringSettings
from screener.screen.style import (
    MIN_ROWS_PER_COMPONENT,
    STYLE_COMPONENTS,
    fit_style_control,
    out_of_fold_scores,
)
from screener.store import RunStore
from screener.vectors.store import load_vectors

CHUNK_ROWS = 256


def calibrate(
    references: str | Path | Sequence[str | Path],
    *,
    model: str | LoadedModel = "embedded",
    vectors: str | Path = "builtin",
    traits: Sequence[str] | None = None,
    max_new_tokens: int = DEFAULT_BASE_TOKENS,
    generation_dtype: str = "same",
    style_components: int = STYLE_COMPONENTS,
    store: str | Path | None = None,
    fmt: str = "auto",
    fields: FieldNames | None = None,
    max_tokens: int | None = None,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    dtype: str = "auto",
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
    command: str = "",
) -> Calibration:
    """Score the reference files and describe each trait's score distributions, with the
    style control of `style_components` components (at most one per MIN_ROWS_PER_COMPONENT
    usable rows; 0: none, later runs take ΔP along the raw vectors)."""
    from screener import __version__

    paths = [references] if isinstance(references, str | Path) else list(references)
    if not paths:
        raise ConfigError("calibrate needs at least one reference file")
    say = progress or (lambda message: None)
    loaded = (
        model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)
    )
    vector_file = load_vectors(vectors, model=loaded)
    chosen = choose_traits(vector_file, traits)
    settings = ScoringSettings(
        chosen,
        "delta",
        GenerationSettings(max_new_tokens=max_new_tokens),
        max_batch_tokens=max_batch_tokens,
        generation_dtype=generation_dtype,
    )
    renderer = Renderer(loaded.tokenizer, max_tokens=token_limit(loaded.model.config, max_tokens))
    deltas: dict[str, list[float]] = {t: [] for t in chosen}
    lasts: dict[str, list[float]] = {t: [] for t in chosen}
    differences: dict[str, list[np.ndarray]] = {t: [] for t in chosen}
    counts = {"rows_read": 0, "scored": 0, "rejected": 0}
    with RunStore.open(store) as run_store:
        scorer = Scorer(
            loaded,
            vector_file,
            settings,
            run_store,
            renderer,
            progress=say,
            generator=generation_model(loaded, generation_dtype),
        )
        for path in paths:
            reader = read_dataset(path, fmt=fmt, fields=fields)
            stream = renderer.render_stream(reader, "reject")
            while chunk := list(islice(stream, CHUNK_ROWS)):
                ready = [r for r in chunk if isinstance(r, RenderedSample)]
                counts["rejected"] += len(chunk) - len(ready)
                if not ready:
                    continue
                for sample in scorer.score(ready):
                    for trait in chosen:
                        if (delta := sample.delta(trait)) is not None:
                            deltas[trait].append(delta)
                        lasts[trait].append(sample.prompt_last[trait])
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
            "dtype": generation_dtype_name(loaded, generation_dtype),
        },
        distributions,
        {trait: vector_digest(vector_file, trait) for trait in chosen},
        command,
        __version__,
        style=style,
    )
