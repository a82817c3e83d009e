"""The GPU path, on a machine with CUDA only (skipped elsewhere; `-m gpu` selects these).

A tiny model screened on the GPU gives the CPU's scores and flags: in fp32 to float rounding,
in bf16 (the `auto` dtype on a GPU) by rank; and ray actors with `--gpus-per-worker 1` run the
model on their GPU and give the local GPU run's scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from screener.model import load_model
from screener.options import RayOptions
from screener.screening import FlagRule
from tests.conftest import save_tiny_model
from tests.reference import assert_same_scores
from tests.test_screen import rows, screen_flat, tiny_vectors, write_jsonl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
OPTIONS = {"max_new_tokens": 5, "calibration": "none", "rule": FlagRule(top_k=3)}


def tiny_run(tmp_path: Path, tokenizer: PreTrainedTokenizerFast) -> tuple[Path, Path, Path]:
    model_dir = save_tiny_model(tmp_path / "model", "llama", tokenizer)
    vectors = tiny_vectors(load_model(str(model_dir), dtype="fp32", device="cpu"), tmp_path / "v")
    return model_dir, vectors, write_jsonl(tmp_path / "data.jsonl", rows())


def test_cuda_fp32_scores_equal_the_cpu_scores(
    tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    model_dir, vectors, data = tiny_run(tmp_path, tiny_tokenizer)
    results = {}
    for device in ("cpu", "cuda"):
        loaded = load_model(str(model_dir), dtype="fp32", device=device)
        assert loaded.device.type == device
        results[device] = screen_flat(
            data, model=loaded, vectors=vectors, store=":memory:", out=tmp_path / device, **OPTIONS
        )
    assert_same_scores(results["cuda"].scores, results["cpu"].scores, 1e-4)
    assert (tmp_path / "cuda" / "filtered.jsonl").read_bytes() == (
        tmp_path / "cpu" / "filtered.jsonl"
    ).read_bytes()


def test_auto_on_a_gpu_is_cuda_in_bf16_and_ranks_like_fp32(
    tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    model_dir, vectors, data = tiny_run(tmp_path, tiny_tokenizer)
    auto = load_model(str(model_dir))
    assert (auto.device.type, auto.dtype) == ("cuda", torch.bfloat16)
    fp32 = load_model(str(model_dir), dtype="fp32", device="cuda")
    ranked = {}
    for name, loaded in (("auto", auto), ("fp32", fp32)):
        scores = screen_flat(
            data, model=loaded, vectors=vectors, store=":memory:", **OPTIONS
        ).scores
        ranked[name] = scores["proj_evil"]
    assert np.all(np.isfinite(ranked["auto"].to_numpy()))
    agreement = pl.DataFrame(ranked).select(pl.corr("auto", "fp32", method="spearman")).item()
    assert agreement > 0.9


def test_ray_actors_run_on_their_gpu(
    tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    ray = pytest.importorskip("ray")
    model_dir, vectors, data = tiny_run(tmp_path, tiny_tokenizer)
    loaded = load_model(str(model_dir), dtype="fp32", device="cuda")
    local = screen_flat(data, model=loaded, vectors=vectors, store=":memory:", **OPTIONS)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        distributed = screen_flat(
            data,
            model=loaded,
            vectors=vectors,
            store=tmp_path / "ray.duckdb",
            engine="ray",
            ray=RayOptions(workers=1, gpus_per_worker=1),
            out=tmp_path / "ray",
            **OPTIONS,
        )
    finally:
        ray.shutdown()
    assert distributed.stats["sent_to_ray"] == len(rows())
    assert_same_scores(distributed.scores, local.scores, 1e-4)
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["counts"]["rows_read"] == len(rows())
