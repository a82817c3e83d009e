"""Benchmark: how well the screening scores find the labelled risky rows of the candidate set.

    .venv/bin/python benchmarks/bench_quality.py [--model embedded] [--dtype auto]
        [--vectors builtin] [--max-new-tokens 128] [--store PATH]
        [--results benchmarks/results/quality.json]

Screens sample_datasets/chat_mixed.jsonl (200 rows, a `label` field the scorer never reads:
normal, evil, sycophancy, hallucination) with the shipped vectors and calibration, then for
each trait reports the AUROC of three scores at separating the rows labelled with that trait
from all other rows, and from the `normal` rows only:

- ΔP (`delta_<trait>`): projection of the training response minus that of the model's own
  greedy response (the method's score);
- the raw projection of the training response (`proj_<trait>`);
- the last prompt token's projection (`prompt_last_<trait>`, the no-generation approximation);
- the projection of the model's own greedy answer (`base_proj_<trait>`): not a screening score
  but a diagnostic. When it separates the labelled rows too, the model already answers those
  prompts with the trait, so training on the rows would move it little and ΔP stays small.

Precision at the default cut (the calibration's 95th percentile of ΔP on the reference set):
of the rows flagged for a trait, the share labelled with that trait, and the share labelled
risky at all (any label but normal). Prints a table and writes
benchmarks/results/quality.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from machine import machine
from sklearn.metrics import roc_auc_score

from screener.options import GenerationOptions, ModelOptions, ScoringOptions
from screener.screening import screen

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sample_datasets" / "chat_mixed.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"
TARGET_AUROC = 0.90
SCORES = {
    "delta": "ΔP",
    "proj": "raw projection",
    "prompt_last": "prompt-last",
    "base_proj": "own answer",
}


def labels() -> dict[str, str]:
    with DATA.open(encoding="utf-8") as handle:
        return {row["id"]: row["label"] for row in map(json.loads, handle)}


def auroc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    if positive.all() or not positive.any():
        return None
    return round(float(roc_auc_score(positive, scores)), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="auto", help="model precision (default: auto)")
    parser.add_argument("--vectors", default="builtin")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--store", type=Path, default=None, help="run store (default: fresh)")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"JSON written (default: {RESULTS})"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        result = screen(
            DATA,
            model=ModelOptions(args.model, dtype=args.dtype),
            scoring=ScoringOptions(
                vectors=args.vectors, store=args.store or Path(scratch) / "store.duckdb"
            ),
            generation=GenerationOptions(args.max_new_tokens),
            progress=print,
        )
        seconds = time.perf_counter() - started
    label_of = labels()
    scores = result.scores.with_columns(pl.col("id").replace_strict(label_of).alias("label"))
    label = scores["label"].to_numpy()
    summary = result.summary.as_json()
    traits: dict[str, dict] = {}
    for trait in result.settings.traits:
        positive = label == trait
        normal_or_trait = (label == "normal") | positive
        entry: dict[str, object] = {"rows_with_label": int(positive.sum())}
        for kind in SCORES:
            values = scores[f"{kind}_{trait}"].to_numpy()
            entry[f"auroc_{kind}"] = auroc(positive, values)
            entry[f"auroc_{kind}_vs_normal"] = auroc(
                positive[normal_or_trait], values[normal_or_trait]
            )
        flagged = np.array([trait in t for t in scores["flag_traits"].to_list()])
        entry["cut"] = summary["traits"][trait]["cut"]
        entry["cut_rule"] = summary["traits"][trait]["cut_rule"]
        entry["flagged"] = int(flagged.sum())
        entry["precision_at_cut"] = (
            round(float(positive[flagged].mean()), 4) if flagged.any() else None
        )
        entry["precision_any_risky_label_at_cut"] = (
            round(float((label[flagged] != "normal").mean()), 4) if flagged.any() else None
        )
        entry["meets_target"] = (entry["auroc_delta"] or 0.0) >= TARGET_AUROC
        traits[trait] = entry

    print()
    print(
        f"{'trait':<14}{'n':>4}  " + "  ".join(f"{SCORES[k]:>15}" for k in SCORES) + "  "
        f"{'flagged':>8}{'precision':>10}"
    )
    for trait, entry in traits.items():
        cells = "  ".join(f"{entry[f'auroc_{k}'] or float('nan'):>15.3f}" for k in SCORES)
        precision = entry["precision_at_cut"]
        print(
            f"{trait:<14}{entry['rows_with_label']:>4}  {cells}  {entry['flagged']:>8}"
            f"{(precision if precision is not None else float('nan')):>10.2f}"
        )
    print(
        f"(AUROC of each score, rows with the trait's label vs all others; target ΔP >= "
        f"{TARGET_AUROC})"
    )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "data": str(DATA.relative_to(ROOT)),
        "model": summary["model"],
        "vectors": summary["vectors"],
        "calibration": summary["calibration"],
        "generation": summary["generation"],
        "target_auroc_delta": TARGET_AUROC,
        "traits": traits,
        "seconds": round(seconds, 1),
        "machine": machine(),
    }
    args.results.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
