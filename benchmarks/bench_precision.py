"""Benchmark: do bf16 and fp32 rank the samples alike? Side by side in one run.

    .venv/bin/python benchmarks/bench_precision.py [--rows 200] [--max-new-tokens 128]

Screens the first --rows rows of sample_datasets/chat_mixed.jsonl with the embedded model and
the shipped vectors twice, once loaded in fp32 and once in bf16, each on a fresh in-memory run
store (nothing shared, so each precision generates its own base responses). For each trait it
reports the Spearman rank correlation between the two runs of:

- ΔP (`delta_<trait>`), the score flags are cut on (target >= 0.99);
- the projection of the training response alone (`proj_<trait>`), which involves no
  generation, so it isolates the forward pass's precision from greedy decoding diverging;
- the projection of the base response (`base_proj_<trait>`).

Also: how many base responses are word-for-word the same, the overlap of the flagged sets
(Jaccard), and seconds per run. Prints a table and writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import polars as pl

from screener.model import load_model
from screener.screen import screen

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sample_datasets" / "chat_mixed.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "precision.json"
TRAITS = ("evil", "sycophancy", "hallucination")
TARGET = 0.99


def run(dtype: str, data: Path, max_new_tokens: int) -> tuple[pl.DataFrame, float]:
    loaded = load_model("embedded", dtype=dtype, device="cpu")
    started = time.perf_counter()
    result = screen(data, model=loaded, store=":memory:", max_new_tokens=max_new_tokens)
    return result.scores, round(time.perf_counter() - started, 1)


def spearman(a: pl.Series, b: pl.Series) -> float:
    frame = pl.DataFrame({"a": a, "b": b})
    return round(float(frame.select(pl.corr("a", "b", method="spearman")).item()), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "rows.jsonl"
        lines = DATA.read_text(encoding="utf-8").splitlines()[: args.rows]
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        fp32, fp32_seconds = run("fp32", data, args.max_new_tokens)
        print(f"fp32: {fp32_seconds} s")
        bf16, bf16_seconds = run("bf16", data, args.max_new_tokens)
        print(f"bf16: {bf16_seconds} s")
    assert fp32["id"].to_list() == bf16["id"].to_list()

    traits = {}
    for trait in TRAITS:
        traits[trait] = {
            kind: spearman(fp32[f"{kind}_{trait}"], bf16[f"{kind}_{trait}"])
            for kind in ("delta", "proj", "base_proj")
        }
    same_base = int((fp32["base_response"] == bf16["base_response"]).sum())
    flagged = [set(frame.filter(pl.col("flagged"))["id"]) for frame in (fp32, bf16)]
    union = flagged[0] | flagged[1]
    jaccard = round(len(flagged[0] & flagged[1]) / len(union), 3) if union else 1.0

    print()
    print(f"Spearman, fp32 vs bf16, {len(fp32)} rows (target for ΔP >= {TARGET})")
    print(f"{'trait':<15}{'ΔP':>8}{'proj':>8}{'base proj':>11}")
    for trait, values in traits.items():
        print(
            f"{trait:<15}{values['delta']:>8.4f}{values['proj']:>8.4f}{values['base_proj']:>11.4f}"
        )
    print(f"identical base responses: {same_base}/{len(fp32)}")
    print(f"flagged sets: fp32 {len(flagged[0])}, bf16 {len(flagged[1])}, Jaccard {jaccard}")
    record = {
        "model": "embedded",
        "rows": len(fp32),
        "max_new_tokens": args.max_new_tokens,
        "spearman": traits,
        "target_delta": TARGET,
        "identical_base_responses": same_base,
        "flagged": {"fp32": len(flagged[0]), "bf16": len(flagged[1]), "jaccard": jaccard},
        "seconds": {"fp32": fp32_seconds, "bf16": bf16_seconds},
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
