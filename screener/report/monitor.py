"""The drift plot and the HTML page of `screener monitor checkpoints`: one self-contained file in
the screen report's style (its stylesheet, no script), made from monitor.json's content.
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.figure import Figure

from screener.report import template_environment
from screener.report.plots import REFERENCE_COLOUR, png, png_data_uri

Z_95 = 1.959963984540054  # error bars: the two-sided 95% interval


def drift_plot(document: dict[str, Any]) -> bytes:
    """PNG: per trait, the drift of each checkpoint in the order given (± its 95% interval),
    with the trait's --fail-above bound dashed."""
    names = [checkpoint["name"] for checkpoint in document["checkpoints"]]
    figure = Figure(figsize=(max(4.5, 1.1 * len(names) + 2.5), 3.4), layout="constrained")
    axes = figure.subplots()
    positions = list(range(len(names)))
    bounds = document["bounds"]["fail_above"]
    for offset, trait in enumerate(document["traits"]):
        drift = [checkpoint["drift"][trait] for checkpoint in document["checkpoints"]]
        y = [math.nan if d["shift"] is None else d["shift"] for d in drift]
        errors = [
            math.nan if d["standard_error"] is None else Z_95 * d["standard_error"] for d in drift
        ]
        shifted = [p + 0.06 * (offset - (len(document["traits"]) - 1) / 2) for p in positions]
        line = axes.errorbar(shifted, y, yerr=errors, marker="o", capsize=3, label=trait)
        if trait in bounds:
            colour = line.lines[0].get_color()
            axes.axhline(bounds[trait], color=colour, linestyle="--", linewidth=0.9)
    axes.axhline(0, color=REFERENCE_COLOUR, linewidth=0.8)
    axes.set_xlim(-0.5, len(names) - 0.5)  # traits sit side by side at each checkpoint
    axes.set_xticks(positions, [_short(name) for name in names], rotation=20, ha="right")
    axes.set_ylabel("drift: checkpoint minus base")
    axes.set_title("drift from the base model (± 95%)", fontsize="medium")
    axes.legend(fontsize="x-small", frameon=False)
    return png(figure)


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def render_monitor(document: dict[str, Any], plot: bytes) -> str:
    """monitor.html for monitor.json's `document` and its plot."""
    return (
        template_environment()
        .get_template("monitor.html.j2")
        .render(monitor=document, plot=png_data_uri(plot))
    )
