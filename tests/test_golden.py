"""Golden outputs: a screen of a small input in three formats, and a gate, give the files
recorded in tests/golden/.

They pin what a run writes while the job layer beneath changes: `summary.json`,
`scores.parquet` (as JSON lines), `filtered.*`, `flagged.jsonl`, `rejected.jsonl`,
`report.html` and `gate.md`. Text and integers must match exactly. Other numbers match within
a relative 1e-4 or one unit of their last printed digit, since fp32 kernels differ in the last
bits between CPU kinds. What belongs to the machine (the scratch folder, library versions,
the report's PNG bytes) is replaced by placeholders first.

    SCREENER_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py   # re-record
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import polars as pl
import pytest
import torch
import transformers

from screener import __version__
from screener.gate_rules import GateRules
from screener.gating import run_gate
from screener.model import LoadedModel
from screener.screening import FlagRule, calibrate, save_calibration
from screener.screening.calibration import default_calibration_path
from tests.test_screen import (  # noqa: F401
    STEPS,
    loaded,
    rows,
    run,
    screen_options,
    tiny_vectors,
    write_jsonl,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SCREENER_UPDATE_GOLDEN") == "1"
RUN_FILES = ("summary.json", "flagged.jsonl", "rejected.jsonl", "report.html")
NUMBER = re.compile(r"-?\d+(?:\.(\d+))?(?:[eE]([-+]?\d+))?")
PNG = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")
RELATIVE = 1e-4


def machine_free(text: str, scratch: Path) -> str:
    """`text` with what belongs to this machine and session replaced by placeholders."""
    text = PNG.sub("data:image/png;base64,<png>", text)
    for value, name in (
        (str(scratch), "<scratch>"),
        (torch.__version__, "<torch>"),
        (transformers.__version__, "<transformers>"),
        (platform.python_version(), "<python>"),
        (__version__, "<screener>"),
    ):
        text = text.replace(value, name)
    return text


def differences(expected: str, got: str, relative: float = RELATIVE) -> list[str]:
    """Where `got` differs from `expected`: text and integers exactly, other numbers within
    `relative` or one unit of their last printed digit."""
    numbers_a, numbers_b = list(NUMBER.finditer(expected)), list(NUMBER.finditer(got))
    text_a, text_b = NUMBER.sub("#", expected), NUMBER.sub("#", got)
    if len(numbers_a) != len(numbers_b) or text_a != text_b:
        at = next((i for i, (a, b) in enumerate(zip(text_a, text_b, strict=False)) if a != b), 0)
        return [f"text {text_a[at - 40 : at + 40]!r} against {text_b[at - 40 : at + 40]!r}"]
    found = []
    for match_a, match_b in zip(numbers_a, numbers_b, strict=True):
        if match_a.group(1) is None and match_a.group(2) is None:  # an integer: a count, an id
            if match_a.group() != match_b.group():
                found.append(f"integer {match_a.group()} against {match_b.group()}")
            continue
        a, b = float(match_a.group()), float(match_b.group())
        last_digit = 10.0 ** (int(match_a.group(2) or 0) - len(match_a.group(1) or ""))
        if abs(a - b) > max(relative * max(abs(a), abs(b)), last_digit * 1.001):
            found.append(f"number {match_a.group()} against {match_b.group()} at {match_a.start()}")
    return found


def outputs(out: Path, filtered: str) -> dict[str, str]:
    """The run's files as text; scores.parquet as JSON lines."""
    files = {name: (out / name).read_text(encoding="utf-8") for name in RUN_FILES}
    files[filtered] = (
        pl.read_parquet(out / filtered).write_ndjson()
        if filtered.endswith(".parquet")
        else (out / filtered).read_text(encoding="utf-8")
    )
    files["scores.jsonl"] = pl.read_parquet(out / "scores.parquet").write_ndjson()
    return files


def check(name: str, files: dict[str, str], scratch: Path) -> None:
    folder = GOLDEN / name
    problems = []
    for file, text in sorted(files.items()):
        text = machine_free(text, scratch)
        path = folder / (
            file.removesuffix(".parquet") + ".jsonl" if file.endswith(".parquet") else file
        )
        if UPDATE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            continue
        problems += [f"{name}/{file}: {d}" for d in differences(path.read_text("utf-8"), text)[:5]]
    assert not problems, "\n".join(problems)


def write_inputs(folder: Path) -> dict[str, Path]:
    """The same eight chats as JSONL (with a broken line and a row without an answer), CSV
    and parquet."""
    records = rows()
    lines = [json.dumps(r) for r in records]
    lines[3:3] = ['{"id": "broken", "messages": [', json.dumps({"id": "no-answer", "messages": []})]
    jsonl = folder / "chats.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    flat = pl.DataFrame(
        {
            "prompt": [r["messages"][0]["content"] for r in records],
            "response": [r["messages"][1]["content"] for r in records],
        }
    )
    flat.write_csv(folder / "pairs.csv")
    flat.write_parquet(folder / "pairs.parquet")
    return {"jsonl": jsonl, "csv": folder / "pairs.csv", "parquet": folder / "pairs.parquet"}


def test_screen_and_gate_outputs_match_the_recorded_ones(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    vectors = tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    reference = write_jsonl(tmp_path / "reference.jsonl", rows()[:6])
    calibration = calibrate(
        reference,
        model=loaded,
        **screen_options(vectors=vectors, max_new_tokens=STEPS, store=tmp_path / "s.db"),
    )
    save_calibration(calibration, default_calibration_path(vectors))
    for kind, data in write_inputs(tmp_path).items():
        # cuts low enough that rows are flagged, categorised and clustered
        run(loaded, data, tmp_path, f"run-{kind}", calibration="auto", rule=FlagRule(percentile=60))
        check(f"screen-{kind}", outputs(tmp_path / f"run-{kind}", f"filtered.{kind}"), tmp_path)

    baseline = write_jsonl(tmp_path / "baseline.jsonl", rows()[:5])
    candidate = write_jsonl(tmp_path / "candidate.jsonl", rows())
    run_gate(
        baseline,
        candidate,
        rules=GateRules(),
        out=tmp_path / "gate",
        model=loaded,
        **screen_options(vectors=vectors, max_new_tokens=STEPS, store=tmp_path / "store.duckdb"),
    )
    gate_files = outputs(tmp_path / "gate", "filtered.jsonl")
    gate_files["gate.md"] = (tmp_path / "gate" / "gate.md").read_text(encoding="utf-8")
    check("gate", gate_files, tmp_path)
    if UPDATE:
        pytest.skip("golden files re-recorded; run again without SCREENER_UPDATE_GOLDEN")


def test_the_comparison_allows_last_digit_noise_and_nothing_else() -> None:
    assert differences("ΔP 4.79 [1.5e-3] r1", "ΔP 4.80 [1.50001e-3] r1") == []
    assert differences("cut 11.205", "cut 11.207") != []
    assert differences("flagged 61", "flagged 62") != []
    assert differences("kept: yes", "kept: no") != []
    assert differences("a 1 b 2", "a 1 b") != []
