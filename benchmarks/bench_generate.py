"""Benchmark: base-answer generation, the decoders and batch plans side by side in one process.

    .venv/bin/python benchmarks/bench_generate.py [--prompts 64] [--max-new-tokens 128]
        [--dtypes fp32,bf16] [--shape embedded|7b|tiny] [--device cpu|cuda] [--rows 64,128]

The same prompts (the user turns of sample_datasets/chat_mixed.jsonl, then reference_chat.jsonl)
go through:

- `before`: transformers' `generate` over batches of 32 prompts, longest first: what screener
  did until this benchmark's change;
- `screener`: our decode loop over the default token-budget plan (finished rows leave the
  batch), and the same with other row limits (`--rows`).

Per dtype it records seconds, new tokens (the answers re-tokenized), new tokens per second,
the speed-up over `before` and how many answers are identical to `before`'s.

`--shape 7b` builds a randomly initialised model of a 7B Llama's shape (hidden 4096, 32 layers,
8 KV heads) with the embedded model's tokenizer: no download. Use it with `--device cuda`.
`--shape tiny` is the same code path at a toy size (a check that the script runs).
Writes benchmarks/results/generate.json (entries keyed by machine, shape, device and prompts).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from itertools import chain, islice
from pathlib import Path
from typing import Any

import torch
from machine import machine
from parts import saved_results
from transformers import LlamaConfig, LlamaForCausalLM

from screener.batch_plan import BatchBudget, default_budget
from screener.generate import Decoder, GenerationSettings, generate_responses
from screener.model import DTYPES, LoadedModel, cpu_supports_bf16, fingerprint, load_model
from screener.reader import read_dataset
from screener.records import Message, Sample

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "generate.json"
SHAPES = {
    "7b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
}  # fmt: skip


def chat_prompts(count: int) -> list[tuple[Message, ...]]:
    files = [
        ROOT / "sample_datasets" / "chat_mixed.jsonl",
        ROOT / "sample_datasets" / "reference_chat.jsonl",
    ]
    samples = (r for r in chain.from_iterable(read_dataset(f) for f in files))
    prompts = [s.messages[:-1] for s in samples if isinstance(s, Sample)]
    return list(islice(chain.from_iterable([prompts] * (1 + count // len(prompts))), count))


def random_model(shape: str, dtype: str, device: str) -> LoadedModel:
    """A random-weight Llama of `shape` with the embedded model's tokenizer."""
    tokenizer = load_model("embedded", dtype="fp32", device="cpu").tokenizer
    config = LlamaConfig(vocab_size=len(tokenizer), **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(DTYPES[dtype]).eval()
    name = f"random-{shape}"
    return LoadedModel(
        model, tokenizer, name, name, DTYPES[dtype], torch.device(device), fingerprint(model)
    )


def timed(run: Callable[[], list[str]], device: str) -> tuple[list[str], float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    answers = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return answers, time.perf_counter() - start


def measure(args: argparse.Namespace, dtype: str) -> list[dict[str, Any]]:
    loaded = (
        load_model("embedded", dtype=dtype, device=args.device)
        if args.shape == "embedded"
        else random_model(args.shape, dtype, args.device)
    )
    prompts = chat_prompts(args.prompts)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    variants: list[tuple[str, BatchBudget, Decoder]] = [
        ("before: transformers generate, 32 per batch", BatchBudget(32, 1 << 40), "transformers"),
    ]
    default = default_budget(loaded)
    variants.append((f"screener, default plan ({default.max_rows} rows)", default, "screener"))
    for rows in args.rows:
        if rows != default.max_rows:
            budget = default_budget(loaded, rows)
            variants.append((f"screener, {rows} rows", budget, "screener"))
    generate_responses(loaded, prompts[:2], GenerationSettings(max_new_tokens=4))  # warm-up
    results: list[dict[str, Any]] = []
    before: list[str] = []
    for name, budget, decoder in variants:
        run = partial(generate_responses, loaded, prompts, settings, budget=budget, decoder=decoder)
        answers, seconds = timed(run, args.device)
        before = before or answers
        tokens = sum(len(loaded.tokenizer(a)["input_ids"]) for a in answers)
        row = {
            "variant": name,
            "dtype": dtype,
            "max_rows": budget.max_rows,
            "max_cached_tokens": budget.max_tokens,
            "seconds": round(seconds, 2),
            "new_tokens": tokens,
            "new_tokens_per_s": round(tokens / seconds, 1),
            "speedup": round(results[0]["seconds"] / seconds, 2) if results else 1.0,
            "identical_to_before": sum(a == b for a, b in zip(answers, before, strict=True)),
            "prompts": len(prompts),
        }
        results.append(row)
        print(
            f"{dtype:5} {name:48} {row['seconds']:8.1f} s {row['new_tokens_per_s']:8.0f} tok/s "
            f"x{row['speedup']:<5} identical {row['identical_to_before']}/{len(prompts)}"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtypes", default=None, help="default: fp32, and bf16 where fast")
    parser.add_argument("--shape", choices=["embedded", *SHAPES], default="embedded")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", default="", help="other row limits to try, e.g. 32,128")
    args = parser.parse_args()
    args.rows = [int(r) for r in args.rows.split(",") if r]
    fast_bf16 = args.device.startswith("cuda") or cpu_supports_bf16()
    dtypes = (args.dtypes or ("fp32,bf16" if fast_bf16 else "fp32")).split(",")
    results = [row for dtype in dtypes for row in measure(args, dtype)]
    info = machine()
    # the kernels torch runs: ATEN_CPU_CAPABILITY=avx2 (with ONEDNN_MAX_CPU_ISA=AVX2 and
    # MKL_ENABLE_INSTRUCTIONS=AVX2) measures a CPU without AVX-512 on one that has it
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(args.device)
    key = (
        f"{info['cpu']} ({info['cpu_capability']} kernels) | {args.shape} | {args.device} | "
        f"{args.prompts} prompts"
    )
    saved = saved_results(RESULTS)
    saved[key] = {
        "machine": info,
        "threads": torch.get_num_threads(),
        "shape": args.shape,
        "device": args.device,
        "max_new_tokens": args.max_new_tokens,
        "results": results,
    }
    RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
