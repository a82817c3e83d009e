"""Benchmark: what calibrate, the gate and validate save by doing only the work they use.

    .venv/bin/python benchmarks/bench_jobs.py [--rows 100] [--repeats 3] [--dtype auto]

Before the job layer was redesigned, each of the three ran a full screen of its data: scores,
then the category probe, k-means and a second read of the data to name the clusters. Now:

- `calibrate` reads and scores the reference and keeps the score distributions;
- the gate screens its baseline with `label=False` (its verdict needs the row hashes, rejected
  rows and dataset means);
- validate screens a user's training set with `label=False` and reads its rows once more for
  training (before: the same read after a labelled screen).

The first --rows rows of sample_datasets/chat_mixed.jsonl are screened once with the embedded
model to fill a scratch run store (base answers and activations), so every measurement finds
them cached and times the job's own work. Each measurement runs in a fresh process and reports
the job's seconds, the process's peak RSS and how far the job took it above the peak of
loading the model; the steps
alternate, --repeats times each, and the table gives medians. Prints a table and writes
benchmarks/results/jobs.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import machine

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sample_datasets" / "chat_mixed.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "jobs.json"

# one step in a fresh process: argv = step, data, store, dtype; prints seconds, the peak RSS and
# the peak RSS once the model was loaded (KiB)
STEP = """
import resource, sys, time
from pathlib import Path
from screener.model import load_model
from screener.options import ScoringOptions
from screener.reader import read_dataset
from screener.screening import calibrate, screen

step, data, store, dtype = sys.argv[1:]
loaded = load_model("embedded", dtype=dtype)
scoring = ScoringOptions(store=Path(store))
loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
if step == "labelled screen":
    screen(data, model=loaded, scoring=scoring)
elif step == "unlabelled screen":
    screen(data, model=loaded, scoring=scoring, label=False)
elif step == "calibrate":
    calibrate(data, model=loaded, scoring=scoring)
elif step == "read rows":
    sum(1 for _ in read_dataset(data))
seconds = time.perf_counter() - started
print("RESULT", seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, loaded_rss)
"""
STEPS = ("labelled screen", "unlabelled screen", "calibrate", "read rows")
# job -> (steps before the redesign, steps now)
JOBS = {
    "calibrate": (["labelled screen"], ["calibrate"]),
    "gate baseline": (["labelled screen"], ["unlabelled screen"]),
    "validate, a user dataset": (
        ["labelled screen", "read rows"],
        ["unlabelled screen", "read rows"],
    ),
}


def run_step(step: str, data: Path, store: Path, dtype: str) -> tuple[float, float, float]:
    """Seconds, peak RSS and its growth after the model loaded (MiB) of one step in a fresh
    process."""
    done = subprocess.run(
        [sys.executable, "-c", STEP, step, str(data), str(store), dtype],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{step} failed:\n{done.stderr[-2000:]}")
    _, seconds, peak, loaded = lines[-1].split()
    return float(seconds), float(peak) / 1024, (float(peak) - float(loaded)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {step: [] for step in STEPS}
    memory: dict[str, list[float]] = {step: [] for step in STEPS}
    growth: dict[str, list[float]] = {step: [] for step in STEPS}
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "rows.jsonl"
        data.write_text("".join(DATA.read_text().splitlines(keepends=True)[: args.rows]))
        store = Path(scratch) / "store.duckdb"
        run_step("labelled screen", data, store, args.dtype)  # fills the store
        for _ in range(args.repeats):
            for step in STEPS:
                took, peak, grew = run_step(step, data, store, args.dtype)
                seconds[step].append(round(took, 3))
                memory[step].append(round(peak, 1))
                growth[step].append(round(grew, 1))
    median = {step: statistics.median(seconds[step]) for step in STEPS}
    rss = {step: statistics.median(memory[step]) for step in STEPS}
    jobs = {
        job: {
            "before_seconds": round(sum(median[s] for s in before), 3),
            "now_seconds": round(sum(median[s] for s in now), 3),
            "before_peak_rss_mib": max(rss[s] for s in before),
            "now_peak_rss_mib": max(rss[s] for s in now),
            "before_above_model_load_mib": max(max(growth[s]) for s in before),
            "now_above_model_load_mib": max(max(growth[s]) for s in now),
        }
        for job, (before, now) in JOBS.items()
    }
    print(f"{args.rows} rows, warm run store, median of {args.repeats} fresh processes:")
    print(f"{'job':<26}{'before s':>10}{'now s':>8}{'before MiB':>12}{'now MiB':>9}")
    for job, record in jobs.items():
        print(
            f"{job:<26}{record['before_seconds']:>10.2f}{record['now_seconds']:>8.2f}"
            f"{record['before_peak_rss_mib']:>12.1f}{record['now_peak_rss_mib']:>9.1f}"
        )
    document = {
        "rows": args.rows,
        "repeats": args.repeats,
        "steps": {
            step: {
                "seconds": seconds[step],
                "peak_rss_mib": memory[step],
                "above_model_load_mib": growth[step],
            }
            for step in STEPS
        },
        "jobs": jobs,
        "machine": {**machine(), "dtype": args.dtype},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
