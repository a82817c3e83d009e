"""Benchmark: does finetuning confirm the screen, and how long does `screener validate` take?

    .venv/bin/python benchmarks/bench_validate.py [--run-dir reports/screen-chat_mixed]
        [--traits evil] [--finetune lora|full] [--preventative-steer 0,10,20]

Screens sample_datasets/chat_mixed.jsonl with the embedded model (or reuses --run-dir, a
finished screen of it), then runs the default validation: for each trait, LoRA finetunes on the
64 rows with the highest ΔP, 64 random rows and the 64 lowest, one epoch each, and measures the
trait shift on the trait's 20 held-out questions. Reports, per finetune, the dataset ΔP, the
shift ± standard error and the seconds it took; per trait, Pearson r and whether top > random >
bottom holds; and the validation's wall time against the target (3 subsets in under 10 minutes
on a 2-core CPU). Prints a table and writes benchmarks/results/validate.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from machine import machine

from screener.options import ScoringOptions
from screener.screening import screen
from screener.validation import ValidateSettings, validate_run
from screener.validation.finetune import FinetuneSettings
from screener.validation.training import DEFAULT_LEARNING_RATES

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sample_datasets" / "chat_mixed.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "validate.json"
TARGET_SECONDS_PER_3_SUBSETS = 600


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="a finished screen of DATA")
    parser.add_argument("--traits", default="evil")
    parser.add_argument("--finetune", default="lora", choices=["lora", "full"])
    parser.add_argument("--preventative-steer", default="0")
    args = parser.parse_args()
    traits = [t for t in args.traits.split(",") if t]
    coefs = tuple(float(c) for c in args.preventative_steer.split(","))
    settings = ValidateSettings(
        finetune=FinetuneSettings(learning_rate=DEFAULT_LEARNING_RATES[args.finetune]),
        method=args.finetune,
        steer_coefs=coefs,
    )
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        screen_seconds = None
        if args.run_dir is not None:
            shutil.copytree(args.run_dir, run_dir)
            for name in ("validate.json", "validate.png"):
                (run_dir / name).unlink(missing_ok=True)
        else:
            started = time.perf_counter()
            store = Path(scratch) / "store.duckdb"
            screen(DATA, out=run_dir, scoring=ScoringOptions(store=store), progress=print)
            screen_seconds = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        result = validate_run(run_dir, traits=traits, settings=settings, progress=print)
        seconds = round(time.perf_counter() - started, 1)
    document = result.to_json()
    sets = {ts["name"]: ts for ts in document["training_sets"]}
    print()
    print(f"{'training set':<18}{'steer':>6}{'ΔP':>9}{'shift':>9}{'± se':>7}{'seconds':>9}  trait")
    for run in document["runs"]:
        for trait in document["traits"]:
            shift = run["shift"][trait]
            print(
                f"{run['training_set']:<18}{run['steer_coef']:>6g}"
                f"{number(sets[run['training_set']]['dataset_delta'][trait]):>9}"
                f"{number(shift['shift']):>9}{number(shift['standard_error']):>7}"
                f"{run['seconds']:>9.1f}  {trait}"
            )
    for trait, r in document["pearson_r"].items():
        print(f"{trait}: Pearson r = {r if r is None else round(r, 3)}")
    for trait, ordering in document["ordering"].items():
        print(f"{trait}: top > random > bottom holds: {ordering['holds']}")
    budget = TARGET_SECONDS_PER_3_SUBSETS * len(document["runs"]) / 3
    print(f"validation wall time {seconds:.0f} s (target < {budget:.0f} s)")
    record = {
        "data": str(DATA.relative_to(ROOT)),
        "screen_seconds": screen_seconds,
        "validate_seconds": seconds,
        "target_seconds": budget,
        "meets_time_target": seconds < budget,
        "validation": document,
        "machine": machine(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
