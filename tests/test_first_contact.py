"""What a newcomer's mistakes cost: every check that needs no model runs before it loads (the
model path given here does not exist, so a check that came after loading would report that
instead), and a run store another run holds is waited for instead of failing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from screener.cli import main
from screener.errors import ConfigError
from screener.store import RunStore
from tests.test_bad_inputs import expect_one_line_error, screen_args, tiny  # noqa: F401
from tests.test_screen import rows, write_jsonl


def no_model_args(data: Path, tmp_path: Path, tiny: dict[str, Path], *extra: str) -> list[str]:  # noqa: F811
    args = screen_args(data, tmp_path / "out", tiny, *extra)
    args[args.index("--model") + 1] = str(tmp_path / "no-model-here")
    return args


@pytest.mark.parametrize(
    ("make", "extra", "where", "message"),
    [
        (lambda d: d / "missing.jsonl", (), "missing.jsonl", "no such file or directory"),
        (
            lambda d: write_jsonl(d / "d.jsonl", rows()),
            ("--traits", "evill"),
            "",
            "evill",
        ),
        (
            lambda d: write_jsonl(d / "d.jsonl", [{"text": "hello"}]),
            (),
            "d.jsonl:1",
            "cannot tell the dataset format: the columns are text",
        ),
        (lambda d: write_jsonl(d / "d.jsonl", []), (), "d.jsonl", "no rows to read"),
        (
            lambda d: write_jsonl(d / "d.jsonl", rows()),
            ("--id-field", "uid"),
            "d.jsonl:1 [uid]",
            "no column 'uid' (from --id-field): the columns are id, messages",
        ),
        (
            lambda d: write_jsonl(d / "d.jsonl", rows()),
            ("--calibration", "absent.json"),
            "",
            "--calibration absent.json: no such file",
        ),
        (
            lambda d: write_jsonl(d / "d.jsonl", rows()),
            ("--generator", "openai", "--generator-model", "m"),
            "",
            "--generator openai needs --generator-url (e.g. http://localhost:8000/v1)",
        ),
        (
            lambda d: write_jsonl(d / "d.jsonl", rows()),
            (
                "--generator",
                "openai",
                "--generator-model",
                "m",
                "--generator-url",
                "http://127.0.0.1:9/v1",
            ),
            "",
            "openai:m@http://127.0.0.1:9/v1 is not reachable ([Errno 111] Connection refused): "
            "is the server running at http://127.0.0.1:9/v1?",
        ),
    ],
)
def test_mistakes_are_reported_before_the_model_loads(
    make: object,
    extra: tuple[str, ...],
    where: str,
    message: str,
    tiny: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = make(tmp_path)  # type: ignore[operator]
    args = no_model_args(data, tmp_path, tiny, *extra)
    if "--calibration" in extra:  # the flag given twice: the last one counts
        args.remove("none")
        args.remove("--calibration")
    expect_one_line_error(capsys, main(args), f"{tmp_path}/{where}" if where else "", message)


HOLD_STORE = textwrap.dedent(
    """
    import sys, time
    import duckdb
    connection = duckdb.connect(sys.argv[1])
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    connection.close()
    """
)


def hold_store(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the store's lock for `seconds`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_STORE, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_store_held_by_another_run_is_waited_for(tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    holder = hold_store(store, 2.0)
    said: list[str] = []
    started = time.monotonic()
    with RunStore.open(store, progress=said.append, wait_seconds=60) as opened:
        assert opened.path == str(store)
    assert time.monotonic() - started > 0.5  # it did wait for the holder
    holder.wait()
    assert len(said) == 1 and "is in use by another screener run: waiting" in said[0]


def test_a_store_held_past_the_wait_stops_before_the_model_loads(
    tiny: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    holder = hold_store(tiny["store"], 30.0)
    try:
        with (
            pytest.raises(ConfigError, match=r"did not finish within 0\.2 s"),
            RunStore.open(tiny["store"], wait_seconds=0.2),
        ):
            pass
        monkeypatch.setenv("SCREENER_STORE_WAIT", "0.2")
        data = write_jsonl(tmp_path / "d.jsonl", rows())
        expect_one_line_error(
            capsys,
            main(no_model_args(data, tmp_path, tiny)),
            "",
            "pass --store with a path of this run's own",
        )
    finally:
        holder.kill()
        holder.wait()


def test_two_screens_started_together_both_finish(
    tiny: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", rows())
    store = tmp_path / "shared.duckdb"
    runs = []
    for name in ("first", "second"):
        args = screen_args(data, tmp_path / name, tiny)
        args[args.index("--store") + 1] = str(store)
        args.remove("--quiet")
        runs.append(
            subprocess.Popen(
                [sys.executable, "-m", "screener.cli", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
        assert f"= {len(rows())} rows read" in out
    first, second = (pl.read_parquet(tmp_path / n / "scores.parquet") for n in ("first", "second"))
    assert_frame_equal(first, second)


def test_an_out_directory_of_other_files_is_refused_unless_forced(
    tiny: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", rows())
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    args = no_model_args(data, tmp_path, tiny)
    args[args.index("--out") + 1] = str(out)
    expect_one_line_error(
        capsys,
        main(args),
        "",
        f"--out {out} holds files that are not a screener run (notes.txt): pass a new or empty "
        "directory, or --force to replace the directory with the run",
    )
    assert (out / "notes.txt").read_text() == "my notes"
    assert main([*screen_args(data, out, tiny), "--force"]) == 0
    assert not (out / "notes.txt").exists() and (out / "summary.json").exists()


def test_a_new_run_replaces_the_previous_one_whole(
    tiny: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows())
    parquet = tmp_path / "d.parquet"
    pl.read_ndjson(jsonl).write_parquet(parquet)
    out = tmp_path / "run"
    assert main(screen_args(jsonl, out, tiny)) == 0
    assert main(["export", str(out), "--only", "all", "--format", "csv"]) == 0
    first = {p.name for p in out.iterdir()}
    assert {"filtered.jsonl", "export-all.csv", "manifest.json"} <= first
    assert main(screen_args(parquet, out, tiny)) == 0
    second = {p.name for p in out.iterdir()}
    assert "filtered.parquet" in second
    assert not {"filtered.jsonl", "export-all.csv"} & second  # nothing of the earlier run
    listed = json.loads((out / "manifest.json").read_text())["files"]
    assert set(listed) == second - {"manifest.json"}
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".replaced-" in p.name]


def test_a_run_from_before_manifests_is_replaced_not_refused(
    tiny: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", rows())
    out = tmp_path / "old-run"
    assert main(screen_args(data, out, tiny)) == 0
    (out / "manifest.json").unlink()  # as an earlier version left it
    (out / "export-all.csv").write_text("id\n")
    assert main(screen_args(data, out, tiny)) == 0
    assert (out / "manifest.json").exists() and not (out / "export-all.csv").exists()
