"""Benchmark: screening speed and memory on the embedded model, side by side in one run.

    .venv/bin/python benchmarks/bench_screen.py [--prompts 24] [--max-new-tokens 128]

1. Base generation: the same prompts answered greedily in batches (the screener's path: KV
   cache, prompts bucketed by length, batch size 32) and one prompt at a time.
   `generation_ratio` = one-at-a-time seconds / batched seconds (target >= 4).
2. Reuse: a full screen of both chat sets of sample_datasets/ (chat_mixed.jsonl and
   reference_chat.jsonl, 400 rows) on a fresh run store, then a screen of the same rows plus 1%
   new ones (4 rows) on that store.
   `rerun_fraction` = rerun seconds / full seconds (target <= 0.05). The model is loaded once,
   before both, so neither pays for loading.
3. Memory: peak RSS of a `screener screen --method prompt-last` process (model loading
   included) as the row count grows 4x and 16x (rows are the candidate set repeated with new
   ids), to see whether it stays flat.

Prints a table and writes benchmarks/results/screen.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine

from screener.batch_plan import BatchBudget
from screener.generate import GenerationSettings, generate_responses
from screener.model import load_model
from screener.options import GenerationOptions, ScoringOptions
from screener.reader import read_dataset
from screener.records import Sample
from screener.screening import screen

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sample_datasets" / "chat_mixed.jsonl"
REFERENCE = ROOT / "sample_datasets" / "reference_chat.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "screen.json"
MEMORY_ROWS = (250, 1000, 4000)

MEMORY_CHILD = """
import resource, sys
from screener.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def rows(*files: Path) -> list[dict]:
    records = []
    for path in files or (DATA,):
        with path.open(encoding="utf-8") as handle:
            records.extend(json.loads(line) for line in handle)
    return records


def write_rows(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def generation(loaded, prompts: int, max_new_tokens: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    samples = [s for s in read_dataset(DATA) if isinstance(s, Sample)][:prompts]
    questions = [s.prompt for s in samples]
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    started = time.perf_counter()
    batched = generate_responses(loaded, questions, settings, budget=BatchBudget(32, 1 << 30))
    batched_seconds = time.perf_counter() - started
    started = time.perf_counter()
    single = generate_responses(loaded, questions, settings, budget=BatchBudget(1, 1 << 30))
    single_seconds = time.perf_counter() - started
    return {
        "prompts": prompts,
        "max_new_tokens": max_new_tokens,
        "batched_seconds": round(batched_seconds, 2),
        "one_at_a_time_seconds": round(single_seconds, 2),
        "same_answers": sum(a == b for a, b in zip(batched, single, strict=True)),
    }


def reuse(loaded, scratch: Path, max_new_tokens: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    records = rows(DATA, REFERENCE)
    extra = [
        {
            **records[i],
            "id": f"new-{i}",
            "messages": [
                {
                    "role": "user",
                    "content": f"(new row {i}) " + records[i]["messages"][-2]["content"],
                },
                records[i]["messages"][-1],
            ],
        }
        for i in range(max(1, len(records) // 100))
    ]
    full_data = write_rows(scratch / "full.jsonl", records)
    grown_data = write_rows(scratch / "grown.jsonl", records + extra)
    store = scratch / "reuse.duckdb"
    options = {
        "model": loaded,
        "scoring": ScoringOptions(store=store),
        "generation": GenerationOptions(max_new_tokens),
    }
    started = time.perf_counter()
    full = screen(full_data, out=scratch / "full", **options)
    full_seconds = time.perf_counter() - started
    started = time.perf_counter()
    rerun = screen(grown_data, out=scratch / "rerun", **options)
    rerun_seconds = time.perf_counter() - started
    return {
        "rows": len(records),
        "new_rows": len(extra),
        "full_seconds": round(full_seconds, 2),
        "rerun_seconds": round(rerun_seconds, 2),
        "full_generated": full.stats["generated"],
        "rerun_generated": rerun.stats["generated"],
        "rerun_collected": rerun.stats["collected"],
    }


def memory(scratch: Path) -> list[dict[str, float]]:
    records = rows()
    measured = []
    for count in MEMORY_ROWS:
        copies = [{**records[i % len(records)], "id": f"copy-{i}"} for i in range(count)]
        # distinct text per copy so that nothing is a duplicate conversation
        for i, record in enumerate(copies):
            record["messages"] = [
                *record["messages"][:-1],
                {"role": "assistant", "content": f"{record['messages'][-1]['content']} ({i})"},
            ]
        data = write_rows(scratch / f"rows-{count}.jsonl", copies)
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                MEMORY_CHILD,
                "screen",
                str(data),
                "--method",
                "prompt-last",
                "--store",
                str(scratch / f"memory-{count}.duckdb"),
                "--out",
                str(scratch / f"memory-{count}"),
                "--quiet",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        measured.append(
            {
                "rows": count,
                "peak_rss_mib": round(int(done.stdout.strip().splitlines()[-1]) / 1024, 1),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(f"  memory: {measured[-1]}")
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    loaded = load_model("embedded")
    print(f"model: {loaded.name} ({loaded.dtype})")
    gen = generation(loaded, args.prompts, args.max_new_tokens)
    print(f"  generation: {gen}")
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        rerun = reuse(loaded, scratch, args.max_new_tokens)
        print(f"  reuse: {rerun}")
        peaks = memory(scratch)
    generation_ratio = gen["one_at_a_time_seconds"] / gen["batched_seconds"]
    rerun_fraction = rerun["rerun_seconds"] / rerun["full_seconds"]
    growth = peaks[-1]["peak_rss_mib"] / peaks[0]["peak_rss_mib"]

    print()
    print(f"{'measure':<44}{'value':>12}{'target':>10}")
    print(
        f"{'base generation, one at a time / batched':<44}{generation_ratio:>11.1f}x{'>= 4x':>10}"
    )
    print(f"{'rerun after +1% rows / full run':<44}{rerun_fraction:>12.3f}{'<= 0.05':>10}")
    for peak in peaks:
        label = f"peak RSS at {peak['rows']} rows (MiB)"
        print(f"{label:<44}{peak['peak_rss_mib']:>12.0f}")
    print(f"{'peak RSS growth, 16x rows':<44}{growth:>11.2f}x{'flat':>10}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "model": loaded.name,
        "dtype": str(loaded.dtype),
        "generation_ratio": round(generation_ratio, 2),
        "rerun_fraction": round(rerun_fraction, 4),
        "generation": gen,
        "reuse": rerun,
        "memory": peaks,
        "peak_rss_growth": round(growth, 3),
        "machine": machine(),
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
