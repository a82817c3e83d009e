"""The bad-input corpus (tests/corpus/bad, expected outcomes in its manifest.json) and inputs too
big to keep in git, each through `screener screen` on a tiny model: every row ends kept, flagged
or rejected with its file, line, field and reason, or the run stops with one line and exit 2."""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from screener.cli import main
from screener.model import load_model
from screener.vectors import TraitVector, VectorFile, save_vectors
from tests.conftest import save_tiny_model, tiny_loaded
from tests.test_screen import tiny_vectors

CORPUS = Path(__file__).parent / "corpus" / "bad"
MANIFEST: dict[str, dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())["cases"]
CONTEXT = 256  # the tiny model's max_position_embeddings


@pytest.fixture(scope="module")
def tiny(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> dict[str, Path]:
    """A tiny model directory, vectors for it and a run store shared by the module's runs."""
    folder = tmp_path_factory.mktemp("tiny")
    model_dir = save_tiny_model(folder / "model", "llama", tiny_tokenizer)
    loaded = load_model(str(model_dir), dtype="fp32", device="cpu")
    vectors = tiny_vectors(loaded, folder / "vectors.safetensors")
    return {"model": model_dir, "vectors": vectors, "store": folder / "store.duckdb"}


def screen_args(data: Path, out: Path, tiny: dict[str, Path], *extra: str) -> list[str]:
    return [
        "screen",
        str(data),
        "--model",
        str(tiny["model"]),
        "--dtype",
        "fp32",
        "--vectors",
        str(tiny["vectors"]),
        "--calibration",
        "none",
        "--max-new-tokens",
        "3",
        "--store",
        str(tiny["store"]),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_every_row_accounted(out: Path, rows: int) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Each row read is in scores.parquet or rejected.jsonl, exactly once; counts add up."""
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["counts"]
    scores = pl.read_parquet(out / "scores.parquet")
    rejected = read_jsonl(out / "rejected.jsonl")
    places = [(s, line) for s, line in zip(scores["source"], scores["source_line"], strict=True)]
    places += [(r["source"], r["line"]) for r in rejected]
    assert len(places) == len(set(places)) == rows
    assert counts["rows_read"] == rows
    assert counts["kept"] + counts["flagged"] + counts["rejected"] == rows
    assert counts["rejected"] == len(rejected)
    assert counts["flagged"] == int(scores["flagged"].sum())
    return scores, rejected


def expect_one_line_error(
    capsys: pytest.CaptureFixture[str], code: int, where: str, message: str
) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith(f"screener: error: {where}"), err
    assert message in err, err
    return err


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_corpus_case(
    name: str, tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = MANIFEST[name]
    data = tmp_path / name
    if (CORPUS / name).is_dir():
        shutil.copytree(CORPUS / name, data)
    else:
        shutil.copyfile(CORPUS / name, data)
    out = tmp_path / "out"
    code = main(screen_args(data, out, tiny))
    if "error" in case:
        file, line, message = case["error"]
        where = str(tmp_path / file) + ("" if line is None else f":{line}")
        expect_one_line_error(capsys, code, f"{where}: ", message)
        assert not out.exists() or not any(out.iterdir()), "an input error must stop before output"
        return
    assert code == 0, capsys.readouterr().err
    _, rejected = check_every_row_accounted(out, case["rows"])
    found = [(r["source"], r["line"], r["field"], r["reason"]) for r in rejected]
    expected = case["rejected"]
    assert len(found) == len(expected), found
    for (source, line, field, reason), (file, want_line, want_field, fragment) in zip(
        found, expected, strict=True
    ):
        assert (source, line, field) == (str(tmp_path / file), want_line, want_field)
        assert fragment in reason, reason
    if "note" in case:
        notes = json.loads((out / "summary.json").read_text())["notes"]
        assert any(case["note"] in note for note in notes), notes


def test_unicode_rows_keep_their_bytes(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Emoji, right-to-left text and combining marks come out of filtered/flagged unchanged."""
    source = CORPUS / "emoji_rtl.jsonl"
    out = tmp_path / "out"
    assert main(screen_args(source, out, tiny, "--top-k", "1")) == 0, capsys.readouterr().err
    lines = source.read_text(encoding="utf-8").splitlines()
    kept = (out / "filtered.jsonl").read_text(encoding="utf-8").splitlines()
    flagged = read_jsonl(out / "flagged.jsonl")
    assert len(kept) + len(flagged) == 3 and kept and flagged
    assert set(kept) < set(lines)
    rest = [json.loads(line)["messages"] for line in lines if line not in kept]
    assert [record["conversation"] for record in flagged] == rest


def test_ids_that_look_like_paths_write_nothing_outside_out(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    data = shutil.copyfile(CORPUS / "path_ids.jsonl", work / "path_ids.jsonl")
    escape = Path("/tmp/escape")
    existed = escape.exists()
    before = {p for p in tmp_path.rglob("*")}
    out = work / "out"
    assert main(screen_args(data, out, tiny)) == 0, capsys.readouterr().err
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == out or out in p.parents for p in created), created
    assert escape.exists() == existed
    ids = pl.read_parquet(out / "scores.parquet")["id"].to_list()
    assert ids == ["../../etc/passwd", "/tmp/escape", "..\\..\\windows", "a/b/../../../c"]


def chat_line(prompt: str, response: str) -> str:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return json.dumps({"messages": messages}) + "\n"


def test_a_50_mb_line_is_rejected_and_the_rows_around_it_kept(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "fifty_mb_line.jsonl"
    with data.open("w", encoding="utf-8") as handle:
        handle.write(chat_line("What is 2+2?", "4."))
        handle.write(chat_line("Say it again " * 4_000_000, "No."))  # about 52 MB
        handle.write(chat_line("Name a colour.", "Blue."))
    assert data.stat().st_size > 50_000_000
    out = tmp_path / "out"
    assert main(screen_args(data, out, tiny)) == 0, capsys.readouterr().err
    _, [rejected] = check_every_row_accounted(out, 3)
    assert (rejected["line"], rejected["field"]) == (2, "messages")
    assert "over the 16,000,000 limit for one row" in rejected["reason"]


def test_conversations_beyond_the_context_window(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 10,000-turn conversation and a prompt longer than the context are rejected; a long
    response after a short prompt is kept, truncated to the window, with a warning."""
    turns = []
    for i in range(5_000):
        turns += [{"role": "user", "content": f"turn {i}"}, {"role": "assistant", "content": "ok"}]
    data = tmp_path / "long.jsonl"
    data.write_text(
        json.dumps({"id": "turns", "messages": turns})
        + "\n"
        + chat_line("hello world " * 300, "Short answer.")
        + chat_line("Short question?", "the quick brown fox " * 300),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert main(screen_args(data, out, tiny)) == 0, capsys.readouterr().err
    scores, rejected = check_every_row_accounted(out, 3)
    assert [(r["line"], r["field"]) for r in rejected] == [(1, "messages"), (2, "messages")]
    for record in rejected:
        assert f"which leaves no room for the response in the {CONTEXT}-token" in record["reason"]
    [warnings] = scores["warnings"].to_list()
    assert any(f"to fit the {CONTEXT}-token context window" in w for w in warnings), warnings
    assert scores["prompt_tokens"][0] + scores["response_tokens"][0] == CONTEXT


def test_parquet_with_wrong_column_types(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "wrong_types.parquet"
    pl.DataFrame(
        {
            "id": [1, 2, 3],
            "prompt": [b"What is 2+2?", b"\xff\xfe", b"Name a colour."],
            "response": [4, 5, 6],
        }
    ).write_parquet(data)
    out = tmp_path / "out"
    assert main(screen_args(data, out, tiny)) == 0, capsys.readouterr().err
    _, rejected = check_every_row_accounted(out, 3)
    assert [(r["line"], r["field"]) for r in rejected] == [(n, "prompt") for n in (1, 2, 3)]
    assert all("content is binary data, expected a string" in r["reason"] for r in rejected)

    fixed = tmp_path / "numbers.parquet"
    pl.DataFrame({"prompt": ["What is 2+2?", "Half?"], "response": [4.0, None]}).write_parquet(
        fixed
    )
    assert main(screen_args(fixed, tmp_path / "out2", tiny)) == 0, capsys.readouterr().err
    _, rejected = check_every_row_accounted(tmp_path / "out2", 2)
    assert [r["reason"] for r in rejected] == [
        "content is a decimal number, expected a string",
        "content is null",
    ]


# --- vectors, traits and --out -------------------------------------------------------------


def vector_file_with(tiny: dict[str, Path], vectors: torch.Tensor, path: Path) -> Path:
    loaded = load_model(str(tiny["model"]), dtype="fp32", device="cpu")
    trait = TraitVector("evil", vectors, 2, [0.5] * vectors.shape[0])
    save_vectors(VectorFile.for_model(loaded, {"evil": trait}), path)
    return path


class Payload:
    """Unpickling this creates a marker file: the proof that code from data ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (self.marker.touch, ())


def test_bad_vector_files_and_traits_stop_with_one_line(
    tiny: dict[str, Path],
    tiny_tokenizer: PreTrainedTokenizerFast,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = CORPUS / "bom.jsonl"
    other = tmp_path / "other.safetensors"
    traits = {"evil": TraitVector("evil", torch.ones(4, 64), 2, [0.5] * 4)}
    save_vectors(VectorFile.for_model(tiny_loaded("llama", tiny_tokenizer, seed=1), traits), other)
    nan = torch.ones(4, 64)
    nan[2, 5] = float("nan")
    nan_file = vector_file_with(tiny, nan, tmp_path / "nan.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(tiny["vectors"].read_bytes()[:100])
    marker = tmp_path / "code-ran"
    pickled = tmp_path / "evil_response_avg_diff.pt"
    pickled.write_bytes(pickle.dumps(Payload(marker)))
    cases = [
        (["--vectors", str(other)], f"{other} belong to model tiny-llama"),
        (["--vectors", str(nan_file)], "trait evil contains NaN or infinite values"),
        (["--vectors", str(corrupt)], "not a readable safetensors vector file"),
        (["--vectors", str(pickled)], "not a readable safetensors vector file"),
        (["--traits", "evil,kindness"], "kindness"),
    ]
    capsys.readouterr()  # loading the model above printed progress
    for extra, message in cases:
        out = tmp_path / "out"
        code = main(screen_args(data, out, tiny, *extra))
        expect_one_line_error(capsys, code, "", message)
        assert not visible_files(out)  # nothing written, not even the directory
    code = main(
        [
            "vectors",
            "import",
            str(pickled),
            "--model",
            str(tiny["model"]),
            "--layer",
            "1",
            "--out",
            str(tmp_path / "imported.safetensors"),
            "--quiet",
        ]
    )
    expect_one_line_error(capsys, code, f"{pickled}: ", "holds pickled Python objects")
    assert not marker.exists() and not (tmp_path / "imported.safetensors").exists()


def test_out_that_cannot_be_used_fails_before_the_model_loads(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = CORPUS / "bom.jsonl"
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    missing_model = tmp_path / "no-model-here"  # would fail to load: proves the order of checks
    cases: list[tuple[Path, str]] = [
        (a_file, f"--out {a_file} is an existing file"),
        (a_file / "sub", f"cannot create output directory {a_file / 'sub'}: Not a directory"),
    ]
    if os.geteuid() == 0:  # root ignores permission bits, but not a read-only filesystem
        if Path("/sys").is_dir():
            cases.append((Path("/sys/screener-out"), "cannot create output directory /sys/"))
    else:
        locked = tmp_path / "locked"  # the run is written beside --out, in here
        locked.mkdir(mode=0o500)
        cases.append(
            (locked / "out", f"cannot create output directory {locked / 'out'}: Permission denied")
        )
    for out, message in cases:
        args = screen_args(data, out, tiny)
        args[args.index("--model") + 1] = str(missing_model)
        expect_one_line_error(capsys, main(args), "", message)
    assert a_file.read_text() == "keep me"


def test_a_model_shipping_code_does_not_run_it_unless_asked(
    tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    model_dir = save_tiny_model(tmp_path / "model", "llama", tiny_tokenizer)
    marker = tmp_path / "code-ran"
    (model_dir / "modeling_custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from transformers import LlamaForCausalLM\n\n\n"
        "class CustomModel(LlamaForCausalLM):\n    pass\n"
    )
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    assert type(load_model(str(model_dir), dtype="fp32").model).__name__ == "LlamaForCausalLM"
    assert not marker.exists()
    # control: asked to, transformers does run it
    loaded = load_model(str(model_dir), dtype="fp32", trust_remote_code=True)
    assert type(loaded.model).__name__ == "CustomModel" and marker.exists()


# --- a full disk and Ctrl-C, in real processes ----------------------------------------------


def run_limited(args: list[str], max_file_bytes: int | None) -> subprocess.CompletedProcess[str]:
    """Run the screener command with files capped at `max_file_bytes`: writes beyond it fail
    with EFBIG, as they would with ENOSPC on a full disk."""

    def cap() -> None:
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return subprocess.run(
        [sys.executable, "-m", "screener.cli", *args],
        capture_output=True,
        text=True,
        preexec_fn=cap,
        check=False,
    )


def visible_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def big_dataset(path: Path, rows: int = 120) -> Path:
    path.write_text(
        "".join(
            chat_line(f"Question {i}: hello world", f"Answer {i} " * 20).replace(
                '{"messages"', f'{{"id": "r{i}", "messages"'
            )
            for i in range(rows)
        )
    )
    return path


def test_a_full_disk_leaves_no_partial_file_and_a_rerun_finishes(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    data = big_dataset(tmp_path / "data.jsonl")
    store = tmp_path / "store.duckdb"

    def args(out: Path) -> list[str]:
        command = screen_args(data, out, tiny)
        command[command.index("--store") + 1] = str(store)
        return command

    # the run store cannot grow: nothing is kept of the failed chunk, the message says so
    failed = run_limited(args(tmp_path / "a"), 20_000)
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr.count("\n") == 1
    assert f"screener: error: cannot write to the run store {store}: " in failed.stderr
    assert "File too large" in failed.stderr and visible_files(tmp_path / "a") == set()

    reference_out = tmp_path / "reference"
    reference = run_limited(args(reference_out), None)
    assert reference.returncode == 0, reference.stderr

    # outputs that cannot be written: none left half-written under its final name
    for limit, where in ((30_000, "filtered.jsonl: File too large"), (400_000, "screen.duckdb")):
        out = tmp_path / f"out-{limit}"
        failed = run_limited(args(out), limit)
        assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
        assert failed.stderr.startswith(f"screener: error: {out}/{where}"), failed.stderr
        assert not {"screen.duckdb", "summary.json"} & visible_files(out)
        assert not [name for name in visible_files(out) if name.startswith(".")]
        done = run_limited(args(out), None)
        assert done.returncode == 0, done.stderr
        for name in ("scores.parquet", "filtered.jsonl", "flagged.jsonl", "rejected.jsonl"):
            assert (out / name).read_bytes() == (reference_out / name).read_bytes()
        summaries = [json.loads((d / "summary.json").read_text()) for d in (out, reference_out)]
        assert summaries[0] | {"command": ""} == summaries[1] | {"command": ""}


def test_ctrl_c_exits_130_with_one_line_and_a_rerun_finishes(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    data = big_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "out"
    args = [a for a in screen_args(data, out, tiny, "--chunk-rows", "10") if a != "--quiet"]
    command = [sys.executable, "-m", "screener.cli", *args]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "scored 10 samples" in line:
            process.send_signal(signal.SIGINT)
            break
    rest = process.stderr.read()
    assert process.wait() == 130, rest
    assert rest.splitlines()[-1] == "screener: interrupted"
    assert "Traceback" not in rest
    assert not visible_files(out) - {".gitkeep"}
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text())["counts"]["rows_read"] == 120
