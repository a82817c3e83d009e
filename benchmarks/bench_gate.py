"""Benchmark: what the gate's baseline screen saves by skipping labels. Side by side in one run.

    .venv/bin/python benchmarks/bench_gate.py [--rows 100] [--repeats 3] [--dtype auto]

The gate's verdict needs only the baseline's row hashes, rejected rows and dataset means, so
`run_gate` screens the baseline with `label=False`: no category probe, no clustering, no second
read of the data. This screens the first --rows rows of sample_datasets/chat_mixed.jsonl with
the embedded model once to fill a scratch run store (base answers and activations), then times
the baseline screen both ways, alternating, --repeats times each: `labelled` (what the gate did
before) and `unlabelled` (what it does now). It checks that both give the same scores, flags
and means. Prints a table and writes benchmarks/results/gate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from polars.testing import assert_frame_equal

from screener.model import cpu_supports_bf16, dtype_name, load_model
from screener.options import ScoringOptions
from screener.screening import screen

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sample_datasets" / "chat_mixed.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "gate.json"
LABEL_COLUMNS = ["category", "category_probability", "cluster"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    loaded = load_model("embedded", dtype=args.dtype)
    seconds: dict[str, list[float]] = {"labelled": [], "unlabelled": []}
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "baseline.jsonl"
        data.write_text("".join(DATA.read_text().splitlines(keepends=True)[: args.rows]))
        scoring = ScoringOptions(store=Path(scratch) / "store.duckdb")
        warm = screen(data, model=loaded, scoring=scoring)  # fills the store
        results = {}
        for _ in range(args.repeats):
            for kind in seconds:
                started = time.perf_counter()
                results[kind] = screen(
                    data, model=loaded, scoring=scoring, label=kind == "labelled"
                )
                seconds[kind].append(time.perf_counter() - started)
    assert_frame_equal(
        results["unlabelled"].scores.drop(LABEL_COLUMNS), warm.scores.drop(LABEL_COLUMNS)
    )
    assert results["unlabelled"].dataset_scores == warm.dataset_scores
    median = {kind: statistics.median(values) for kind, values in seconds.items()}
    print(f"baseline screen of {args.rows} rows, warm store, median of {args.repeats}:")
    for kind, value in median.items():
        print(f"  {kind:<11} {value:6.2f} s")
    print(f"  saved       {median['labelled'] - median['unlabelled']:6.2f} s per gate run")
    record = {
        "rows": args.rows,
        "repeats": args.repeats,
        "seconds": {kind: [round(v, 3) for v in values] for kind, values in seconds.items()},
        "median_seconds": {kind: round(v, 3) for kind, v in median.items()},
        "same_scores_flags_means": True,
        "flagged": len(warm.flags),
        "machine": {
            "cores": os.cpu_count(),
            "bf16_matrix_units": cpu_supports_bf16(),
            "dtype": dtype_name(loaded.dtype),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
