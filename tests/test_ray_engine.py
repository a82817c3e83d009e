"""The ray engine against the local one: same scores (to float rounding), same flags, same
outputs; a rerun after adding rows sends only the new rows to Ray; without Ray installed,
`--engine ray` says how to install it. Ray runs locally, started here with two CPUs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from screener.cli import main
from screener.errors import ConfigError, ScreenerError
from screener.model import load_model
from screener.options import RayOptions
from screener.reader import read_dataset
from screener.screening import FlagRule
from screener.screening import run as screen_run
from tests.conftest import save_tiny_model, tiny_model
from tests.reference import assert_same_scores
from tests.test_screen import rows, screen_flat, tiny_vectors, write_jsonl

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_scores_equal_local_and_reruns_send_only_new_rows(
    local_ray: None,
    tiny_tokenizer: PreTrainedTokenizerFast,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model_dir = save_tiny_model(tmp_path / "model", "llama", tiny_tokenizer)
    loaded = load_model(str(model_dir), dtype="fp32", device="cpu")
    vectors = tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    records = [json.loads(json.dumps(r)) for r in rows() * 3]  # three independent copies
    for i, record in enumerate(records):
        record["id"] = f"row-{i}"
        record["messages"][0]["content"] += f" (copy {i})"
    data = write_jsonl(tmp_path / "data.jsonl", records)
    options = {
        "vectors": vectors,
        "max_new_tokens": 5,
        "calibration": "none",
        "rule": FlagRule(top_k=4),
        "chunk_size": 8,
    }
    local = screen_flat(data, model=loaded, out=tmp_path / "local", store=":memory:", **options)
    two_workers = RayOptions(workers=2, batch_rows=5)
    store = tmp_path / "ray.duckdb"
    reads: list[Path] = []

    def counted_read(path: Path, **kwargs: Any) -> Any:
        reads.append(path)
        return read_dataset(path, **kwargs)

    monkeypatch.setattr(screen_run, "read_dataset", counted_read)
    distributed = screen_flat(
        data,
        model=loaded,
        out=tmp_path / "ray",
        store=store,
        engine="ray",
        ray=two_workers,
        **options,
    )
    assert distributed.stats["sent_to_ray"] == len(records)
    assert reads == [data]  # one read to score (the workers' and the driver's): one more writes
    # everything was computed by the workers: the local pass only read the store
    assert distributed.stats["generated"] == distributed.stats["collected"] == 0
    assert_same_scores(distributed.scores, local.scores, 1e-5)
    for name in ("filtered.jsonl", "rejected.jsonl"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()
    flagged = [
        [
            (r["id"], r["category"], [x["trait"] for x in r["reasons"]])
            for r in map(json.loads, lines)
        ]
        for lines in (
            (tmp_path / folder / "flagged.jsonl").read_text().splitlines()
            for folder in ("ray", "local")
        )
    ]
    assert flagged[0] == flagged[1] and flagged[0]

    more = [*records, *[{**r, "id": f"new-{i}"} for i, r in enumerate(rows()[:3])]]
    for i, record in enumerate(more[len(records) :]):
        record["messages"] = [
            {"role": "user", "content": f"A new question {i}?"},
            {"role": "assistant", "content": f"A new answer {i}."},
        ]
    bigger = write_jsonl(tmp_path / "bigger.jsonl", more)
    rerun = screen_flat(
        bigger,
        model=loaded,
        out=tmp_path / "rerun",
        store=store,
        engine="ray",
        ray=two_workers,
        **options,
    )
    assert rerun.stats["sent_to_ray"] == 3
    assert rerun.stats["generated"] == rerun.stats["collected"] == 0
    local_bigger = screen_flat(bigger, model=loaded, store=":memory:", **options)
    assert_same_scores(rerun.scores, local_bigger.scores, 1e-5)


def test_ray_workers_write_base_responses_at_the_generation_dtype(
    local_ray: None, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    model_dir = save_tiny_model(tmp_path / "model", "llama", tiny_tokenizer)
    loaded = load_model(str(model_dir), dtype="bf16", device="cpu")
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    options = {
        "vectors": tiny_vectors(loaded, tmp_path / "vectors.safetensors"),
        "max_new_tokens": 5,
        "calibration": "none",
        "generation_dtype": "fp32",
    }
    local = screen_flat(data, model=loaded, store=":memory:", **options)
    distributed = screen_flat(
        data,
        model=loaded,
        store=tmp_path / "ray.duckdb",
        engine="ray",
        ray=RayOptions(workers=1, batch_rows=4),
        **options,
    )
    # the driver found the workers' fp32 base responses under the key it looks them up by
    assert distributed.stats["generated"] == distributed.stats["collected"] == 0
    assert distributed.scores["base_response"].to_list() == local.scores["base_response"].to_list()
    assert_same_scores(distributed.scores, local.scores, 1e-5)


def test_a_worker_with_other_weights_stops_the_run_with_one_message(
    local_ray: None, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    model_dir = save_tiny_model(tmp_path / "model", "llama", tiny_tokenizer)
    loaded = load_model(str(model_dir), dtype="fp32", device="cpu")
    vectors = tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    other_dir = tmp_path / "other"
    tiny_model("llama", seed=1).save_pretrained(other_dir)  # same shapes, other weights
    tiny_tokenizer.save_pretrained(other_dir)
    loaded.spec = str(other_dir)  # what the workers will load
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    with pytest.raises(ScreenerError) as failure:
        screen_flat(
            data,
            model=loaded,
            vectors=vectors,
            store=tmp_path / "store.duckdb",
            calibration="none",
            max_new_tokens=3,
            engine="ray",
        )
    message = str(failure.value)
    assert message.startswith("the ray engine failed after 0 of 8 samples")
    assert "the workers must see the same weights" in message and "\n" not in message


def test_asking_for_more_gpus_than_the_cluster_has_fails_at_once(
    local_ray: None, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    model_dir = save_tiny_model(tmp_path / "model", "llama", tiny_tokenizer)
    loaded = load_model(str(model_dir), dtype="fp32", device="cpu")
    vectors = tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    with pytest.raises(ConfigError, match="need 2 GPUs, the Ray cluster has 0"):
        screen_flat(
            data,
            model=loaded,
            vectors=vectors,
            store=":memory:",
            calibration="none",
            engine="ray",
            ray=RayOptions(workers=2, gpus_per_worker=1),
        )


@pytest.mark.slow
def test_ray_on_the_embedded_model_equals_local(local_ray: None, tmp_path: Path) -> None:
    lines = Path("sample_datasets/chat_mixed.jsonl").read_text().splitlines()[:4]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    loaded = load_model("embedded", dtype="fp32", device="cpu")
    options = {"max_new_tokens": 8, "store": ":memory:"}
    local = screen_flat(data, model=loaded, **options)
    distributed = screen_flat(
        data, model=loaded, engine="ray", ray=RayOptions(workers=1), **options
    )
    assert distributed.stats["sent_to_ray"] == 4
    assert_same_scores(distributed.scores, local.scores, 1e-5)


def test_without_ray_the_error_gives_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    code = main(["screen", str(data), "--engine", "ray", "--model", str(tmp_path / "absent")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "screener: error: --engine ray needs Ray, which is not installed: "
        "pip install 'screener[ray]'\n"
    )
    assert json.dumps(err)  # one line, printable
