"""The report's plots: matplotlib figures rendered to PNG data URIs, so the HTML stays one file.

Only numbers and trait names reach a plot; sample text never does.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # not pyplot: no global state, no display backend

DATASET_COLOUR = "#c0392b"
REFERENCE_COLOUR = "#7f8c8d"
FLAGGED_COLOUR = "#c0392b"
KEPT_COLOUR = "#95a5a6"
SHORT_SCORE_NAMES = {"delta": "ΔP", "prompt_last": "last-prompt projection"}
MAX_SCATTER_POINTS = 20_000  # kept samples drawn at most; every flagged sample is drawn


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # A fixed Software tag and no date keep the bytes the same from one run to the next.
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": "screener"})
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _data_uri(figure: Figure) -> str:
    return png_data_uri(png(figure))


def histogram(
    trait: str,
    scores: np.ndarray,
    reference: np.ndarray | None,
    cut: float | None,
    interval: tuple[float | None, float | None, float | None],
    score_name: str,
) -> str:
    """The dataset's score distribution against the calibration reference, with the flag cut
    and the dataset-level mean and its 95% interval marked."""
    figure = Figure(figsize=(5.2, 2.8), layout="constrained")
    axes = figure.subplots()
    finite = scores[np.isfinite(scores)]
    pooled = finite if reference is None else np.concatenate([finite, reference])
    if pooled.size:
        low, high = float(pooled.min()), float(pooled.max())
        bins = np.linspace(low, high if high > low else low + 1.0, 41).tolist()
        if reference is not None and reference.size:
            axes.hist(
                reference,
                bins=bins,
                density=True,
                color=REFERENCE_COLOUR,
                alpha=0.45,
                label=f"reference ({reference.size})",
            )
        if finite.size:
            axes.hist(
                finite,
                bins=bins,
                density=True,
                histtype="step",
                linewidth=1.8,
                color=DATASET_COLOUR,
                label=f"this dataset ({finite.size})",
            )
    if cut is not None:
        axes.axvline(cut, color="black", linestyle="--", linewidth=1.2, label=f"cut {cut:.2f}")
    mean, ci_low, ci_high = interval
    if ci_low is not None and ci_high is not None:
        axes.axvspan(ci_low, ci_high, color=DATASET_COLOUR, alpha=0.15, label="mean, 95% CI")
    if mean is not None:
        axes.axvline(mean, color=DATASET_COLOUR, linewidth=1.0)
    axes.set_title(trait)
    axes.set_xlabel(f"{score_name} [activation units]")
    axes.set_ylabel("density [1 / unit]")
    if axes.get_legend_handles_labels()[0]:  # below the plot: it never covers the bars
        figure.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    else:  # every row was rejected: nothing to draw
        axes.text(0.5, 0.5, "no scores", ha="center", va="center", transform=axes.transAxes)
    return _data_uri(figure)


def scatter(
    pairs: list[tuple[str, str]],
    columns: dict[str, np.ndarray],
    flagged: np.ndarray,
    score_name: str = "ΔP",
) -> str:
    """One panel per pair of traits; flagged samples in colour. Kept samples are subsampled
    (evenly, the same every time) beyond MAX_SCATTER_POINTS."""
    kept_index = np.flatnonzero(~flagged)
    if kept_index.size > MAX_SCATTER_POINTS:
        kept_index = kept_index[np.linspace(0, kept_index.size - 1, MAX_SCATTER_POINTS).astype(int)]
    flagged_index = np.flatnonzero(flagged)
    figure = Figure(figsize=(3.4 * len(pairs), 3.2), layout="constrained")
    grid = figure.subplots(1, len(pairs), squeeze=False)
    for axes, (x_trait, y_trait) in zip(grid[0], pairs, strict=True):
        x, y = columns[x_trait], columns[y_trait]
        axes.scatter(x[kept_index], y[kept_index], s=6, color=KEPT_COLOUR, label="kept")
        axes.scatter(x[flagged_index], y[flagged_index], s=8, color=FLAGGED_COLOUR, label="flagged")
        axes.set_xlabel(f"{x_trait} {score_name} [activation units]")
        axes.set_ylabel(f"{y_trait} {score_name} [activation units]")
    figure.legend(
        *grid[0][0].get_legend_handles_labels(),
        loc="outside lower center",
        ncols=2,
        fontsize="small",
        frameon=False,
    )
    return _data_uri(figure)


def validation_plot(document: dict[str, Any]) -> bytes:
    """PNG of a validation (validate.json's content): per trait, each training set's
    dataset-level score against the measured shift of the unsteered model (± standard error),
    with Pearson r; beside it, when steering was swept, the shift against the coefficient. One
    row of panels per trait."""
    traits = list(document["traits"])
    score = document.get("score", "delta")
    score_name = SHORT_SCORE_NAMES.get(score, score)
    scores = {ts["name"]: ts[f"dataset_{score}"] for ts in document["training_sets"]}
    runs = document["runs"]
    coefs = sorted({run["steer_coef"] for run in runs})
    columns = 2 if len(coefs) > 1 else 1
    figure = Figure(figsize=(4.0 * columns, 3.3 * len(traits)), layout="constrained")
    grid = figure.subplots(len(traits), columns, squeeze=False)
    for row, trait in enumerate(traits):
        axes = grid[row][0]
        plain = [
            run
            for run in runs
            if run["steer_coef"] == 0
            and run["shift"][trait]["shift"] is not None
            and scores[run["training_set"]].get(trait) is not None
        ]
        x = [scores[run["training_set"]][trait] for run in plain]
        y = [run["shift"][trait]["shift"] for run in plain]
        errors = [
            np.nan
            if run["shift"][trait]["standard_error"] is None
            else run["shift"][trait]["standard_error"]
            for run in plain
        ]
        axes.errorbar(x, y, yerr=errors, fmt="o", color=DATASET_COLOUR, capsize=3)
        for run, x_value, y_value in zip(plain, x, y, strict=True):
            axes.annotate(
                run["training_set"],
                (x_value, y_value),
                fontsize="x-small",
                xytext=(4, 4),
                textcoords="offset points",
            )
        axes.axhline(0, color=REFERENCE_COLOUR, linewidth=0.8)
        r = document.get("pearson_r", {}).get(trait)
        axes.set_title(f"{trait}: r = {r:.2f}" if r is not None else trait, fontsize="medium")
        axes.set_xlabel(f"dataset {score_name} ({trait})")
        axes.set_ylabel("measured shift after finetuning")
        if columns == 2:
            sweep = grid[row][1]
            for name in dict.fromkeys(run["training_set"] for run in runs):
                points = sorted(
                    (run["steer_coef"], run["shift"][trait]["shift"])
                    for run in runs
                    if run["training_set"] == name and run["shift"][trait]["shift"] is not None
                )
                if points:
                    sweep.plot(*zip(*points, strict=True), marker="o", label=name)
            sweep.axhline(0, color=REFERENCE_COLOUR, linewidth=0.8)
            sweep.set_xlabel("preventative steering coefficient")
            sweep.set_ylabel(f"{trait} shift")
            sweep.legend(fontsize="x-small", frameon=False)
    return png(figure)
