"""Benchmark: how screening scales with rows, local engine against ray with 1 and 2 workers.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 10000,100000,1000000]
        [--engines local,ray1,ray2] [--ray-sizes 10000,100000] [--method prompt-last|delta]

A synthetic chat dataset (distinct short conversations) is screened with a tiny randomly
initialised Llama (3 layers, hidden size 64) so that the model costs little and the engine's
own overheads show. Each measurement runs `screener screen` in a fresh process on a fresh run
store and reports rows/s and that process's peak RSS (for ray: the driver's; the actors are
separate processes). Targets (issue 7): peak RSS flat within 20% from the smallest to the
largest size, time linear in rows. `--ray-sizes` limits the ray engines to some sizes (a
million rows through ray on two cores takes most of an hour); the results of engines not run
are carried over from the existing results file. Prints a table and writes
benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import machine  # noqa: E402

from screener.model import load_model  # noqa: E402
from screener.vectors import TraitVector, VectorFile, save_vectors  # noqa: E402
from tests.conftest import make_tiny_tokenizer, save_tiny_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
MEASURE = """
import resource, sys
from screener.cli import main
code = main(sys.argv[1:])
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"PEAK_RSS_KIB {peak_kib}", file=sys.stderr)
sys.exit(code)
"""


def write_dataset(path: Path, rows: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            messages = [
                {"role": "user", "content": f"Question {i}: what is {i} plus {i % 97}?"},
                {"role": "assistant", "content": f"It is {i + i % 97}, I think."},
            ]
            handle.write(json.dumps({"id": f"row-{i}", "messages": messages}) + "\n")
    return path


def tiny_setup(folder: Path) -> tuple[Path, Path]:
    model_dir = save_tiny_model(folder / "model", "llama", make_tiny_tokenizer())
    loaded = load_model(str(model_dir), dtype="fp32", device="cpu")
    generator = torch.Generator().manual_seed(0)
    d = loaded.model.config.hidden_size
    layers = loaded.model.config.num_hidden_layers
    traits = {
        name: TraitVector(name, torch.randn(layers + 1, d, generator=generator), 2, [0.5] * 4)
        for name in ("evil", "sycophancy")
    }
    vectors = folder / "vectors.safetensors"
    save_vectors(VectorFile.for_model(loaded, traits), vectors)
    return model_dir, vectors


def measure(
    engine: str, data: Path, model_dir: Path, vectors: Path, method: str, scratch: Path
) -> dict[str, float]:
    args = [
        "screen",
        str(data),
        "--model",
        str(model_dir),
        "--dtype",
        "fp32",
        "--vectors",
        str(vectors),
        "--calibration",
        "none",
        "--method",
        method,
        "--max-new-tokens",
        "4",
        "--chunk-rows",
        "1024",
        "--store",
        str(scratch / f"store-{engine}-{data.stem}.duckdb"),
        "--out",
        str(scratch / f"out-{engine}-{data.stem}"),
        "--quiet",
    ]
    if engine.startswith("ray"):
        args += ["--engine", "ray", "--workers", engine.removeprefix("ray")]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{engine} on {data.name} failed:\n{done.stderr[-2000:]}")
    peak = next(
        int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS")
    )
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(peak / 1024, 1)}


def carried_over(engines: list[str]) -> list[dict[str, object]]:
    """The earlier results file's rows of engines not measured now, marked as such."""
    if not RESULTS.exists():
        return []
    earlier = json.loads(RESULTS.read_text(encoding="utf-8"))["results"]
    kept = [dict(r) for r in earlier if r["engine"] not in engines]
    for record in kept:
        record.setdefault("note", "carried over from an earlier run of this benchmark")
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--engines", default="local,ray1,ray2")
    parser.add_argument("--ray-sizes", default=None, help="sizes the ray engines run at")
    parser.add_argument("--method", default="prompt-last", choices=["prompt-last", "delta"])
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = args.engines.split(",")
    ray_sizes = sizes if args.ray_sizes is None else [int(s) for s in args.ray_sizes.split(",")]

    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        model_dir, vectors = tiny_setup(scratch)
        for rows in sizes:
            data = write_dataset(scratch / f"rows-{rows}.jsonl", rows)
            for engine in engines:
                if engine.startswith("ray") and rows not in ray_sizes:
                    continue
                measured = measure(engine, data, model_dir, vectors, args.method, scratch)
                record = {
                    "engine": engine,
                    "rows": rows,
                    **measured,
                    "rows_per_second": round(rows / measured["seconds"], 1),
                }
                results.append(record)
                print(record, flush=True)

    results += carried_over(engines)
    print()
    print(f"{'engine':<8}{'rows':>10}{'seconds':>10}{'rows/s':>10}{'peak RSS MiB':>14}")
    for r in results:
        print(
            f"{r['engine']:<8}{r['rows']:>10}{r['seconds']:>10}{r['rows_per_second']:>10}"
            f"{r['peak_rss_mib']:>14}"
        )
    growth = {}
    for engine in dict.fromkeys(str(r["engine"]) for r in results):
        runs = [r for r in results if r["engine"] == engine]
        if len(runs) > 1:
            ratio = float(runs[-1]["peak_rss_mib"]) / float(runs[0]["peak_rss_mib"])  # type: ignore[arg-type]
            growth[f"{engine} {runs[0]['rows']}->{runs[-1]['rows']}"] = round(ratio, 3)
    print(f"peak RSS growth, smallest to largest size (target <= 1.2): {growth}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "method": args.method,
                "model": "tiny random llama (3 layers, hidden 64)",
                "results": results,
                "peak_rss_growth": growth,
                "machine": machine(),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
