"""Benchmark: how many style components make a cut hold across writing styles?

    .venv/bin/python benchmarks/bench_style.py [--model embedded] [--dtype auto] [--store PATH]

The shipped calibration reference has two styles: short chats (reference_chat.jsonl) and long
strong-assistant answers (reference_prose.jsonl). For each number of style components k, per
trait of the default three: fit the style control and the 95th-percentile cut (out of fold) on
one style only, and measure the share of the *other* style's rows above that cut. A cut that
holds across styles flags 5% there. The sum over traits and both directions of |share - 5%| is
the transfer error; the default STYLE_COMPONENTS was chosen where it is low, on the reference
alone (not on any evaluation data). Fitting on the 120 long answers allows at most 12
components. Prints a table and writes benchmarks/results/style.json.
"""

from __future__ import annotations

import argparse
import json
from itertools import islice
from pathlib import Path

import numpy as np
from machine import machine

from screener.model import load_model
from screener.reader import read_dataset
from screener.render import RenderedSample, Renderer
from screener.screening.preflight import DEFAULT_TRAITS
from screener.screening.scoring import Scorer, ScoringSettings
from screener.screening.style import (
    MIN_ROWS_PER_COMPONENT,
    fit_style_control,
    out_of_fold_scores,
)
from screener.store import RunStore
from screener.vectors.store import load_vectors

ROOT = Path(__file__).resolve().parent.parent
STYLES = {
    "chat": ROOT / "sample_datasets" / "reference_chat.jsonl",
    "prose": ROOT / "sample_datasets" / "reference_prose.jsonl",
}
RESULTS = ROOT / "benchmarks" / "results" / "style.json"
COMPONENTS = (0, 1, 2, 4, 8, 12, 16, 24, 32)


def differences(scorer: Scorer, renderer: Renderer, path: Path) -> dict[str, np.ndarray]:
    """Per trait, the reference rows' activation differences (answer minus own answer)."""
    parts: dict[str, list[np.ndarray]] = {}
    stream = renderer.render_stream(read_dataset(path), "reject")
    while chunk := [r for r in islice(stream, 256) if isinstance(r, RenderedSample)]:
        for trait, rows in scorer.differences(chunk).items():
            parts.setdefault(trait, []).append(rows[~np.isnan(rows).any(axis=1)])
    return {trait: np.concatenate(rows).astype(np.float64) for trait, rows in parts.items()}


def share_above(fit: np.ndarray, test: np.ndarray, unit: np.ndarray, k: int) -> float:
    """Share of `test` rows above the 95th percentile cut fitted on `fit` with k components."""
    k = min(k, len(fit) // MIN_ROWS_PER_COMPONENT)
    direction = fit_style_control(fit, unit, k).direction
    reference = out_of_fold_scores(fit, unit, k) if k else fit @ unit
    return float(np.mean(test @ direction > np.percentile(reference, 95)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--store", default=None, help="run store (default: the user's)")
    parser.add_argument("--dtype", default="auto", help="model precision (default: auto)")
    args = parser.parse_args()
    loaded = load_model(args.model, dtype=args.dtype)
    vectors = load_vectors("builtin", model=loaded)
    renderer = Renderer(loaded.tokenizer)
    with RunStore.open(args.store) as store:
        scorer = Scorer(loaded, vectors, ScoringSettings(DEFAULT_TRAITS), store, renderer)
        by_style = {name: differences(scorer, renderer, path) for name, path in STYLES.items()}
    rows = []
    for k in COMPONENTS:
        entry: dict[str, object] = {"components": k}
        error = 0.0
        for trait in DEFAULT_TRAITS:
            unit = vectors.unit(trait).double().numpy()
            chat, prose = by_style["chat"][trait], by_style["prose"][trait]
            shares = {
                "chat_to_prose": share_above(chat, prose, unit, k),
                "prose_to_chat": share_above(prose, chat, unit, k),
            }
            entry[trait] = shares
            error += sum(abs(share - 0.05) for share in shares.values())
        entry["transfer_error"] = round(error, 4)
        rows.append(entry)
    print(f"{'k':>3}  " + "  ".join(f"{t:>22}" for t in DEFAULT_TRAITS) + "  transfer error")
    for entry in rows:
        cells = "  ".join(
            f"{entry[t]['chat_to_prose']:>10.2f} / {entry[t]['prose_to_chat']:<9.2f}"  # type: ignore[index]
            for t in DEFAULT_TRAITS
        )
        print(f"{entry['components']:>3}  {cells}  {entry['transfer_error']:.2f}")
    print(
        "(share of the other style's rows above a 95% cut fitted on one style: chat->prose / "
        "prose->chat; 0.05 is right)"
    )
    record = {
        "references": {name: str(path.relative_to(ROOT)) for name, path in STYLES.items()},
        "model": loaded.name,
        "dtype": str(loaded.dtype),
        "rows": rows,
        "machine": machine(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
