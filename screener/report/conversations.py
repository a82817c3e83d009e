"""report.html of `screener monitor conversations`: the counts, the rule, and for each of the
first flagged conversations a small time series of its turns' projections (the cut drawn, the
turn that tripped the flag marked) with that turn's text. Same style as the screen report.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from screener.atomic import write_text_atomic
from screener.report import template_environment
from screener.report.plots import REFERENCE_COLOUR, png, png_data_uri

MAX_SHOWN = 20  # flagged conversations drawn in the report; all are in flagged.jsonl


def turn_series(record: dict[str, Any], cuts: dict[str, float]) -> bytes:
    """PNG: each flagged trait's projection per turn, its cut dashed, tripped turns circled."""
    traits = list(dict.fromkeys(flag["trait"] for flag in record["flags"]))
    figure = Figure(figsize=(4.2, 2.4), layout="constrained")
    axes = figure.subplots()
    turns = [turn["turn"] for turn in record["turns"]]
    for trait in traits:
        values = [turn["projection"][trait] for turn in record["turns"]]
        (line,) = axes.plot(turns, values, marker="o", markersize=3, label=trait)
        axes.axhline(cuts[trait], color=line.get_color(), linestyle="--", linewidth=0.8)
        for flag in record["flags"]:
            if flag["trait"] == trait and flag["turn"] in turns:
                at = turns.index(flag["turn"])
                axes.plot(turns[at], values[at], "o", markersize=9, fillstyle="none",
                          color=REFERENCE_COLOUR)  # fmt: skip
    axes.set_xlabel("assistant turn")
    axes.set_ylabel("projection")
    axes.set_xticks(turns)
    axes.legend(fontsize="x-small", frameon=False)
    return png(figure)


def _view(record: dict[str, Any], cuts: dict[str, float]) -> dict[str, Any]:
    first = min(flag["turn"] for flag in record["flags"])
    turn = next(t for t in record["turns"] if t["turn"] == first)
    messages = record["messages"]
    return {
        "id": record["id"],
        "where": f"{record['source']}:{record['line']}",
        "reasons": record["reasons"],
        "turns": len(record["turns"]),
        "plot": png_data_uri(turn_series(record, cuts)),
        "first_turn": first,
        "prompt": messages[turn["message"] - 1]["content"] if turn["message"] else "",
        "response": messages[turn["message"]]["content"],
        "prompt_last": turn["prompt_last"],
    }


def write_conversations_report(directory: Path, summary: dict[str, Any]) -> Path:
    """Render report.html into `directory` from its summary and flagged.jsonl."""
    cuts = {trait: info["cut"] for trait, info in summary["traits"].items()}
    with (directory / "flagged.jsonl").open(encoding="utf-8") as flagged:
        shown = [_view(json.loads(line), cuts) for line in islice(flagged, MAX_SHOWN)]
    html = (
        template_environment()
        .get_template("conversations.html.j2")
        .render(summary=summary, shown=shown, max_shown=MAX_SHOWN)
    )
    target = directory / "report.html"
    write_text_atomic(target, html)
    return target
