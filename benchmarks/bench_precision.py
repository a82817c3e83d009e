"""Benchmark: do bf16 and fp32 rank the samples alike? Side by side in one run.

    .venv/bin/python benchmarks/bench_precision.py [--rows 200] [--max-new-tokens 128]

Screens the first --rows rows of sample_datasets/chat_mixed.jsonl with the embedded model and
the shipped vectors three times, each on a fresh in-memory run store (nothing shared):

- `fp32`: loaded in fp32, base responses written in fp32 (the reference);
- `bf16`: loaded in bf16, base responses written in bf16 (`--dtype bf16`);
- `bf16_fp32_base`: loaded in bf16, base responses written by a second, fp32 copy of the
  weights (`--dtype bf16 --generation-dtype fp32`).

For each bf16 configuration and trait it reports the Spearman rank correlation with the fp32
run of:

- ΔP (`delta_<trait>`), the score flags are cut on (target >= 0.99);
- the projection of the training response alone (`proj_<trait>`), which involves no
  generation, so it isolates the forward pass's precision from greedy decoding diverging;
- the projection of the base response (`base_proj_<trait>`).

Also: how many base responses are word-for-word the fp32 run's, the overlap of the flagged sets
with the fp32 run's (Jaccard), and seconds per run. Prints a table and writes
benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
from machine import machine

from screener.model import load_model
from screener.options import GenerationOptions, ScoringOptions
from screener.screening import screen

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sample_datasets" / "chat_mixed.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "precision.json"
TRAITS = ("evil", "sycophancy", "hallucination")
TARGET = 0.99
# name: (--dtype, --generation-dtype)
CONFIGURATIONS = {
    "fp32": ("fp32", "same"),
    "bf16": ("bf16", "same"),
    "bf16_fp32_base": ("bf16", "fp32"),
}


def run(
    dtype: str, generation_dtype: str, data: Path, max_new_tokens: int
) -> tuple[pl.DataFrame, float]:
    loaded = load_model("embedded", dtype=dtype, device="cpu")
    started = time.perf_counter()
    result = screen(
        data,
        model=loaded,
        scoring=ScoringOptions(store=":memory:"),
        generation=GenerationOptions(max_new_tokens, dtype=generation_dtype),
    )
    return result.scores, round(time.perf_counter() - started, 1)


def spearman(a: pl.Series, b: pl.Series) -> float:
    frame = pl.DataFrame({"a": a, "b": b})
    return round(float(frame.select(pl.corr("a", "b", method="spearman")).item()), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    runs: dict[str, tuple[pl.DataFrame, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "rows.jsonl"
        lines = DATA.read_text(encoding="utf-8").splitlines()[: args.rows]
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        for name, (dtype, generation_dtype) in CONFIGURATIONS.items():
            runs[name] = run(dtype, generation_dtype, data, args.max_new_tokens)
            print(f"{name}: {runs[name][1]} s", flush=True)
    fp32 = runs["fp32"][0]
    flagged_fp32 = set(fp32.filter(pl.col("flagged"))["id"])
    compared: dict[str, dict[str, Any]] = {}
    for name, (frame, _) in runs.items():
        if name == "fp32":
            continue
        assert frame["id"].to_list() == fp32["id"].to_list()
        flagged = set(frame.filter(pl.col("flagged"))["id"])
        union = flagged | flagged_fp32
        compared[name] = {
            "spearman": {
                trait: {
                    kind: spearman(fp32[f"{kind}_{trait}"], frame[f"{kind}_{trait}"])
                    for kind in ("delta", "proj", "base_proj")
                }
                for trait in TRAITS
            },
            "identical_base_responses": int(
                (fp32["base_response"] == frame["base_response"]).sum()
            ),
            "flagged": len(flagged),
            "flagged_jaccard": round(len(flagged & flagged_fp32) / len(union), 3) if union else 1.0,
        }

    print()
    print(f"Spearman with the fp32 run, {len(fp32)} rows (target for ΔP >= {TARGET})")
    print(f"{'run':<16}{'trait':<15}{'ΔP':>8}{'proj':>8}{'base proj':>11}")
    for name, found in compared.items():
        for trait, values in found["spearman"].items():
            print(
                f"{name:<16}{trait:<15}{values['delta']:>8.4f}{values['proj']:>8.4f}"
                f"{values['base_proj']:>11.4f}"
            )
        print(
            f"{name:<16}identical base responses {found['identical_base_responses']}/{len(fp32)}; "
            f"flagged {found['flagged']} (fp32 {len(flagged_fp32)}), "
            f"Jaccard {found['flagged_jaccard']}"
        )
    record = {
        "model": "embedded",
        "rows": len(fp32),
        "max_new_tokens": args.max_new_tokens,
        "target_delta": TARGET,
        "configurations": {
            name: {"dtype": dtype, "generation_dtype": generation_dtype}
            for name, (dtype, generation_dtype) in CONFIGURATIONS.items()
        },
        "flagged_fp32": len(flagged_fp32),
        "against_fp32": compared,
        "seconds": {name: seconds for name, (_, seconds) in runs.items()},
        "machine": machine(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
