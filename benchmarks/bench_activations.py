"""Benchmark: batched activation collector vs the naive one-sample loop on the embedded model.

    .venv/bin/python benchmarks/bench_activations.py [--layer 20] [--dtype auto] [--repeats 3]

Both run in the same process, dtype and inputs: 200 chat samples from sample_datasets/ (all of
chat_mixed.jsonl, then reference_chat.jsonl). The naive loop is what a first implementation
does: one sample per forward pass with `output_hidden_states=True`, then slice the layer. The
FLOP limit is 2 x (parameters of the decoder blocks the collector computes) x tokens over a
bf16/fp32 matrix-multiply rate measured here (attention score FLOPs are not counted, so the
share is a lower bound). Prints a table and writes benchmarks/results/activations.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from itertools import chain, islice
from pathlib import Path

import torch

from screener.activations import DEFAULT_BATCH_TOKENS, ActivationCollector, TokenizedInput
from screener.layers import find_layout
from screener.model import load_model
from screener.reader import read_dataset
from screener.records import Sample
from screener.render import RenderedSample, Renderer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "activations.json"
SAMPLES = 200


def chat_inputs(renderer: Renderer) -> list[TokenizedInput]:
    files = [
        ROOT / "sample_datasets" / "chat_mixed.jsonl",
        ROOT / "sample_datasets" / "reference_chat.jsonl",
    ]
    records = chain.from_iterable(read_dataset(f) for f in files)
    samples = islice((r for r in records if isinstance(r, Sample)), SAMPLES)
    rendered = [renderer.render(s) for s in samples]
    return [
        TokenizedInput(r.input_ids, r.response_start)
        for r in rendered
        if isinstance(r, RenderedSample)
    ]


@torch.inference_mode()
def naive_loop(model: torch.nn.Module, inputs: list[TokenizedInput], layer: int) -> None:
    for item in inputs:
        states = model(
            input_ids=torch.tensor([list(item.input_ids)]), output_hidden_states=True
        ).hidden_states
        states[layer][0, item.response_start :].float().mean(0)


def matmul_rate(dtype: torch.dtype, m: int, k: int, n: int, repeats: int = 10) -> float:
    """Best FLOP/s of an (m x k) @ (k x n) product in `dtype` over `repeats` runs."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * m * k * n / best


def interleaved_best(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each run, alternating them so machine noise hits all alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", type=int, default=20, help="layer to collect (default 20 of 30)")
    parser.add_argument("--dtype", default="auto", help="auto, bf16 or fp32 (same for both paths)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path; the best is kept")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    args = parser.parse_args()

    loaded = load_model("embedded", dtype=args.dtype, device="cpu")
    inputs = chat_inputs(Renderer(loaded.tokenizer))
    tokens = sum(len(i.input_ids) for i in inputs)
    collector = ActivationCollector(loaded.model, [args.layer], max_batch_tokens=args.batch_tokens)
    blocks = find_layout(loaded.model).blocks
    block_params = sum(
        p.numel() for block in blocks[: collector.layers[-1]] for p in block.parameters()
    )

    collector.collect(inputs[:8])  # warm-up both paths
    naive_loop(loaded.model, inputs[:2], args.layer)
    times = interleaved_best(
        {
            "collector": lambda: collector.collect(inputs),
            "naive": lambda: naive_loop(loaded.model, inputs, args.layer),
        },
        args.repeats,
    )
    collector_s, naive_s = times["collector"], times["naive"]
    # The limit is the faster of a large square product and the model's own MLP shape.
    hidden = loaded.model.config.hidden_size
    square = matmul_rate(loaded.dtype, 2048, 2048, 2048)
    mlp_shaped = matmul_rate(
        loaded.dtype, args.batch_tokens, hidden, loaded.model.config.intermediate_size
    )
    rate = max(square, mlp_shaped)
    flops_per_s = 2 * block_params * tokens / collector_s

    result = {
        "model": loaded.name, "dtype": str(loaded.dtype).replace("torch.", ""),
        "layer": collector.layers[-1], "samples": len(inputs), "tokens": tokens,
        "collector_tokens_per_s": round(tokens / collector_s, 1),
        "naive_tokens_per_s": round(tokens / naive_s, 1),
        "ratio": round(naive_s / collector_s, 3),
        "computed_block_params": block_params,
        "collector_gflops": round(flops_per_s / 1e9, 1),
        "matmul_gflops": round(rate / 1e9, 1),
        "matmul_square_gflops": round(square / 1e9, 1),
        "matmul_mlp_shaped_gflops": round(mlp_shaped / 1e9, 1),
        "flop_share": round(flops_per_s / rate, 3),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "batch_tokens": args.batch_tokens, "repeats": args.repeats,
    }  # fmt: skip
    rows = [
        ("samples / tokens", f"{len(inputs)} / {tokens}"),
        ("dtype, layer", f"{result['dtype']}, {result['layer']} of {len(blocks)}"),
        ("naive loop tokens/s", f"{result['naive_tokens_per_s']:.0f}"),
        ("collector tokens/s", f"{result['collector_tokens_per_s']:.0f}"),
        ("ratio (target >= 3)", f"{result['ratio']:.2f}x"),
        ("collector GFLOP/s (2 x block params x tokens)", f"{result['collector_gflops']:.0f}"),
        (
            f"{result['dtype']} matmul GFLOP/s, 2048^3 / MLP-shaped",
            f"{square / 1e9:.0f} / {mlp_shaped / 1e9:.0f}",
        ),
        ("FLOP share (target >= 0.5)", f"{result['flop_share']:.2f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
