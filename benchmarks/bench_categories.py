"""Benchmark: how often the category probe names a flagged sample's category right.

    .venv/bin/python benchmarks/bench_categories.py [--model embedded] [--store PATH]

Trains the probe exactly as a screen does (screener/screening/categories.json: the categories'
example prompts and the ordinary prompts as `other`, last-prompt-token activations at the
category layer) and labels benchmarks/data/category_prompts.jsonl: 300 prompts written for
the purpose, disjoint from the training examples, 40 per category and 100 ordinary (`other`).

Reports accuracy, per-label precision and recall, and the same once labels whose probability is
below CATEGORY_MIN_PROBABILITY are shown as `uncertain`: the precision of the categories that
get shown (everything but `other` and `uncertain`) is what a reviewer relies on. Prints a table
and writes benchmarks/results/categories.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from machine import machine

from screener.model import load_model
from screener.render import Renderer
from screener.screening.categories import (
    CATEGORY_MIN_PROBABILITY,
    OTHER,
    UNCERTAIN,
    Category,
    CategoryProbe,
    CategorySet,
    load_categories,
    training_labels,
)
from screener.screening.label import category_layer, probe_features
from screener.screening.preflight import DEFAULT_TRAITS
from screener.screening.scoring import Scorer, ScoringSettings
from screener.store import RunStore
from screener.vectors.store import load_vectors

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data" / "category_prompts.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "categories.json"


def whole_set(path: Path) -> CategorySet:
    """Categories and ordinary examples both from `path` (a categories.json of any version)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return CategorySet(
        tuple(
            Category(c["name"], c["title"], c["description"], tuple(c["examples"]))
            for c in data["categories"]
        ),
        tuple(data["ordinary_examples"]),
    )


def precision_recall(truth: list[str], predicted: list[str], label: str) -> dict[str, object]:
    hits = sum(t == p == label for t, p in zip(truth, predicted, strict=True))
    shown = predicted.count(label)
    return {
        "true": truth.count(label),
        "predicted": shown,
        "precision": round(hits / shown, 4) if shown else None,
        "recall": round(hits / truth.count(label), 4) if truth.count(label) else None,
    }


def evaluate(truth: list[str], predicted: list[str]) -> dict[str, object]:
    labels = sorted(set(truth) | set(predicted))
    right = sum(t == p for t, p in zip(truth, predicted, strict=True))
    shown = [(t, p) for t, p in zip(truth, predicted, strict=True) if p not in (OTHER, UNCERTAIN)]
    return {
        "accuracy": round(right / len(truth), 4),
        "shown": len(shown),
        "shown_precision": round(sum(t == p for t, p in shown) / len(shown), 4) if shown else None,
        "labels": {label: precision_recall(truth, predicted, label) for label in labels},
        "confusions": Counter(
            f"{t} -> {p}" for t, p in zip(truth, predicted, strict=True) if t != p
        ).most_common(8),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--store", default=None, help="run store (default: a fresh one)")
    parser.add_argument(
        "--categories",
        type=Path,
        default=None,
        help="category file to train on instead of the built-in one (compare versions)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON file to write")
    args = parser.parse_args()
    started = time.perf_counter()
    loaded = load_model(args.model)
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    categories = load_categories() if args.categories is None else whole_set(args.categories)
    prompts, labels = training_labels(categories)
    layer = category_layer(loaded)
    vectors = load_vectors("builtin", model=loaded)
    with tempfile.TemporaryDirectory() as scratch:
        store = args.store or str(Path(scratch) / "store.duckdb")
        with RunStore.open(store) as run_store:
            scorer = Scorer(
                loaded,
                vectors,
                ScoringSettings(DEFAULT_TRAITS, "prompt-last"),
                run_store,
                Renderer(loaded.tokenizer),
                extra_layers=[layer],
            )
            probe = CategoryProbe(probe_features(scorer, prompts, layer), labels)
            features = probe_features(scorer, [r["prompt"] for r in rows], layer)
            raw = [name for name, _ in probe.predict(features, min_probability=0.0)]
            shown = [name for name, _ in probe.predict(features)]
    truth = [r["category"] for r in rows]
    record = {
        "data": str(DATA.relative_to(ROOT)),
        "training": {"examples": Counter(labels)},
        "model": loaded.name,
        "layer": layer,
        "min_probability": CATEGORY_MIN_PROBABILITY,
        "argmax": evaluate(truth, raw),
        "with_uncertain": evaluate(truth, shown),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
    }
    print(
        f"{'label':<22}{'n':>4}{'precision':>11}{'recall':>8}   (with uncertain below "
        f"{CATEGORY_MIN_PROBABILITY})"
    )
    for label, entry in record["with_uncertain"]["labels"].items():  # type: ignore[index]
        cells = [
            f"{value:>{width}.2f}" if value is not None else f"{'-':>{width}}"
            for value, width in ((entry["precision"], 11), (entry["recall"], 8))
        ]
        print(f"{label:<22}{entry['true']:>4}{''.join(cells)}")
    for name in ("argmax", "with_uncertain"):
        entry = record[name]
        print(
            f"{name}: accuracy {entry['accuracy']:.3f}; categories shown {entry['shown']}, "
            f"precision {entry['shown_precision']}"
        )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
