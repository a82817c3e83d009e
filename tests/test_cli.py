"""The screener command end to end: exit codes, messages and written files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from screener.activations import TokenizedInput
from screener.cli import main
from screener.model import load_model
from screener.reader import read_dataset
from screener.records import Sample
from screener.render import RenderedSample, Renderer
from tests.conftest import save_tiny_model
from tests.reference import naive_collect

NO_ASSISTANT = "no assistant turn: the last assistant turn is the response to screen"
CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    rows = [
        {"id": "a", "messages": CHAT},
        {"id": "b", "messages": [CHAT[0]]},
        {
            "id": "c",
            "messages": [
                {"role": "system", "content": "Be brief."},
                *CHAT[:1],
                {"role": "assistant", "content": "Paris."},
            ],
        },
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    return path


@pytest.fixture
def tiny_dir(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast) -> Path:
    return save_tiny_model(tmp_path / "tiny", "qwen2", tiny_tokenizer)


def test_check_lists_rejected_rows_and_counts(
    data_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(data_file)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"rejected {data_file}:2 [messages]: {NO_ASSISTANT}"
    assert out[1].startswith(f"rejected {data_file}:4: malformed JSON")
    assert out[2] == f"{data_file}: 4 rows = 2 usable + 2 rejected (data.jsonl: messages)"


def test_check_fail_policy_exits_2_with_one_line(
    data_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(data_file), "--on-bad-row", "fail"]) == 2
    err = capsys.readouterr().err
    assert err == f"screener: error: {data_file}:2 [messages]: {NO_ASSISTANT}\n"


def test_real_entry_point_reports_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "screener.cli", "check", str(missing)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"screener: error: {missing}: no such file or directory\n"


def test_collect_writes_outputs_that_match_the_reference(
    data_file: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "collect",
            str(data_file),
            "--model",
            str(tiny_dir),
            "--layers",
            "1,-1",
            "--dtype",
            "fp32",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    samples = pl.read_parquet(out / "samples.parquet")
    assert samples["id"].to_list() == ["a", "c"] and samples["line"].to_list() == [1, 3]
    assert samples.schema["prompt_tokens"] == pl.Int32
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejected] == [(2, "messages"), (4, None)]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows_read"], summary["collected"], summary["rejected"]) == (4, 2, 2)
    assert summary["layers"] == [1, 3]

    tensors = load_file(str(out / "activations.safetensors"))
    loaded = load_model(str(tiny_dir), dtype="fp32", device="cpu")
    renderer = Renderer(loaded.tokenizer)
    rendered = [renderer.render(s) for s in read_dataset(data_file) if isinstance(s, Sample)]
    inputs = [
        TokenizedInput(r.input_ids, r.response_start)
        for r in rendered
        if isinstance(r, RenderedSample)
    ]
    ref_mean, ref_last = naive_collect(loaded.model, inputs, [1, 3])
    torch.testing.assert_close(tensors["response_mean"], ref_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tensors["last_prompt"], ref_last, rtol=1e-4, atol=1e-5)
    assert "rows read: 4 = collected 2 + rejected 2" in (out / "summary.md").read_text()


def test_collect_rejects_bad_layer_with_exit_2(
    data_file: Path, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "collect",
            str(data_file),
            "--model",
            str(tiny_dir),
            "--layers",
            "9",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert code == 2
    assert "layer 9 does not exist: this model has hidden states 0..3" in capsys.readouterr().err


def test_collect_out_that_is_a_file_fails_before_loading(
    data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("x")
    code = main(["collect", str(data_file), "--model", "no-such/model", "--out", str(taken)])
    assert code == 2
    assert (
        capsys.readouterr().err
        == f"screener: error: --out {taken} is an existing file: pass a directory path\n"
    )


def test_collect_fail_policy_also_covers_rows_rejected_while_rendering(
    data_file: Path, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = tmp_path / "clean.jsonl"
    clean.write_text(data_file.read_text().splitlines()[0] + "\n")
    args = [
        "collect",
        str(clean),
        "--model",
        str(tiny_dir),
        "--device",
        "cpu",
        "--quiet",
        "--layers",
        "1",
        "--max-tokens",
        "5",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 0  # rejected with a reason, the run goes on
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["rejected"] == 1
    assert main([*args, "--on-bad-row", "fail"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"screener: error: {clean}:1 [messages]: the prompt is ")
    assert err.endswith(
        "tokens, which leaves no room for the response in the 5-token context window\n"
    )


def test_traits_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["traits", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in listed][:3] == ["apathetic", "evil", "hallucination"]
    assert main(["traits", "show", "evil"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("evil: ") and "held-out evaluation questions:" in out
    assert main(["traits", "show", "grumpy"]) == 2
    assert "unknown trait 'grumpy'" in capsys.readouterr().err


def test_vectors_import_then_show(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = torch.randn(4, 64)
    torch.save(rows, tmp_path / "evil_response_avg_diff.pt")
    out = tmp_path / "v.safetensors"
    code = main(
        [
            "vectors",
            "import",
            str(tmp_path / "evil_response_avg_diff.pt"),
            "--model",
            str(tiny_dir),
            "--device",
            "cpu",
            "--layer",
            "2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out == f"imported evil -> {out}\n"
    assert main(["vectors", "show", str(out), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["traits"]["evil"]["chosen_layer"] == 2
    assert meta["traits"]["evil"]["heldout_auroc"] == [None] * 4
    assert meta["command"].startswith("screener") and meta["model"]["num_layers"] == 3
    assert main(["vectors", "show", str(out)]) == 0
    table = capsys.readouterr().out
    assert "evil: chosen layer 2, held-out AUROC unknown" in table
    assert "\n    2           -*\n" in table


def test_failed_extract_leaves_an_existing_vector_file_alone(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "v.safetensors"
    out.write_bytes(b"previous vectors")
    args = [
        "extract",
        "--model",
        str(tiny_dir),
        "--device",
        "cpu",
        "--traits",
        "evil",
        "--layer",
        "99",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 2
    assert "--layer 99 is outside 1..3" in capsys.readouterr().err
    assert out.read_bytes() == b"previous vectors"
    assert main([*args[:-2], str(tmp_path), "--quiet"]) == 2
    assert "is a directory: pass a file path" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny", "v.safetensors"]  # no temp files
