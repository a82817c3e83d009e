"""Same input, same output: two runs from scratch write byte-identical files, fp32 scores do
not depend on how rows are batched, and screening opens no network connection."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

from screener.model import LoadedModel
from screener.screening import FlagRule
from tests.reference import assert_same_scores
from tests.test_resume import COMPARED
from tests.test_screen import loaded, rows, run, tiny_vectors, write_jsonl

__all__ = ["loaded"]  # the fixture, imported for the tests below


def test_two_runs_from_scratch_write_identical_files(loaded: LoadedModel, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    run(loaded, data, tmp_path, "first", store=tmp_path / "a.duckdb", rule=FlagRule(top_k=2))
    run(loaded, data, tmp_path, "second", store=tmp_path / "b.duckdb", rule=FlagRule(top_k=2))
    for name in COMPARED:
        assert (tmp_path / "first" / name).read_bytes() == (
            tmp_path / "second" / name
        ).read_bytes(), name


def test_fp32_scores_do_not_depend_on_batching(loaded: LoadedModel, tmp_path: Path) -> None:
    """One row at a time with a tiny token budget against the defaults (whole chunks, padded
    batches): same base responses, scores equal to float rounding, same flags."""
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    top3 = FlagRule(top_k=3)
    batched = run(loaded, data, tmp_path, "batched", store=":memory:", rule=top3).scores
    single = run(
        loaded,
        data,
        tmp_path,
        "single",
        store=":memory:",
        rule=top3,
        max_batch_tokens=1,
        generation_batch_rows=1,
        chunk_size=1,
    ).scores
    assert_same_scores(single, batched, 1e-5)
    assert batched.height == len(rows()) and pl.Series(batched["risk"]).n_unique() > 1


NETWORK_GUARD = """
import socket, sys

_attempts = open({log!r}, "a")


def _refuse(*args, **kwargs):
    _attempts.write(repr(args[:2]) + "\\n")
    _attempts.flush()
    raise OSError("network access attempted during a test that forbids it")


socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


@pytest.mark.slow
def test_screening_the_embedded_model_opens_no_connection(tmp_path: Path) -> None:
    """With the hub's offline switches unset, every socket connection and DNS lookup refused
    and recorded, and (where the kernel allows) no network namespace at all, a full screen on
    the embedded model succeeds and made no attempt."""
    guard = tmp_path / "guard"
    guard.mkdir()
    log = tmp_path / "attempts.log"
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD.format(log=str(log)))
    data = tmp_path / "data.jsonl"
    data.write_text(
        "\n".join(Path("sample_datasets/chat_mixed.jsonl").read_text().splitlines()[:3]) + "\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(guard), env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "-m",
        "screener.cli",
        "screen",
        str(data),
        "--max-new-tokens",
        "4",
        "--store",
        str(tmp_path / "store.duckdb"),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode
        == 0
    ):
        command = ["unshare", "-n", *command]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert not log.exists() or log.read_text() == ""
    # control: the guard does catch a connection attempt
    probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9/', timeout=1)"
    subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, check=False)
    assert log.read_text().count("\n") >= 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"]["rows_read"] == 3


def test_a_store_shared_by_two_precisions_keeps_them_apart(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    """bf16 and fp32 greedy answers differ, so a bf16 run must not reuse fp32 results."""
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    store = tmp_path / "store.duckdb"
    first = run(loaded, data, tmp_path, "fp32", store=store)
    half = dataclasses.replace(
        loaded, model=copy.deepcopy(loaded.model).to(torch.bfloat16), dtype=torch.bfloat16
    )
    second = run(half, data, tmp_path, "bf16", store=store)
    again = run(loaded, data, tmp_path, "fp32-again", store=store)
    assert first.stats["generated"] == second.stats["generated"] == len(rows())
    assert again.stats["generated"] == 0 and again.stats["collected"] == 0
