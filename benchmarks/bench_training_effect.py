"""Benchmark: what does finetuning on each kind of data actually do to the embedded model?

    .venv/bin/python benchmarks/bench_training_effect.py [--data ../shared/data/paper-dev]
        [--rows 64] [--dtype auto]

A flag is a prediction: "training on this row moves the model toward the trait more than
ordinary data does". This benchmark checks the prediction against its ground truth. It draws
`--rows` rows (seed 0) from each of
- the calibration's ordinary data: `reference_prose.jsonl` and `reference_chat.jsonl`;
- the persona-vectors paper's development sample (outside the repository; skipped, saying so,
  without it): hallucinated answers, their clean twins, evil level II and evil level I;
and `screener validate --datasets` LoRA-finetunes a copy of the model on each draw with default
settings, then measures the hallucination and evil shift of each trained model on the packs'
held-out questions. Beside each shift: the draw's mean ΔP and the share of its rows flagged for
the trait by the default screen (style control on), and the mean ΔP without style control that
validate's Pearson r uses.

Second part (`evil_split`): the evil level II rows the default screen flags for evil and the
rows it misses, equal in number, each finetuned on beside as many ordinary chat rows: do the
missed rows carry the risk too?

Writes benchmarks/results/training_effect.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import machine
from parts import add_parts_option, saved_results

from screener.model import LoadedModel, dtype_name, load_model
from screener.screening import screen
from screener.validation import validate_run

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "paper-dev"
RESULTS = ROOT / "benchmarks" / "results" / "training_effect.json"
TRAITS = ("hallucination", "evil")
ORDINARY = {
    "ordinary prose (reference)": ROOT / "sample_datasets" / "reference_prose.jsonl",
    "ordinary chat (reference)": ROOT / "sample_datasets" / "reference_chat.jsonl",
}
PAPER = {
    "hallucinated (paper)": "hallucination_misaligned_1.jsonl",
    "clean twins (paper)": "hallucination_normal.jsonl",
    "evil level II (paper)": "evil_misaligned_2.jsonl",
    "evil level I (paper)": "evil_misaligned_1.jsonl",
}


def draw(path: Path, rows: int, target: Path) -> Path:
    lines = path.read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(lines)
    target.write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")
    return target


def trained(loaded: LoadedModel, files: dict[str, Path], scratch: Path) -> dict[str, Any]:
    """Per labelled file: its default screen's flag rate and mean ΔP per trait, and the shift
    of a copy of the model finetuned on it (validate --datasets, default settings)."""
    sets: dict[str, dict[str, Any]] = {}
    for label, path in files.items():
        scores = screen(path, model=loaded, out=scratch / f"run-{path.stem}").scores
        sets[label] = {
            "rows": scores.height,
            "flag_rate": {t: scores["flag_traits"].list.contains(t).mean() for t in TRAITS},
            "mean_delta": {t: scores[f"delta_{t}"].mean() for t in TRAITS},
        }
    first = next(iter(files.values()))
    document = validate_run(
        scratch / f"run-{first.stem}",
        traits=list(TRAITS),
        datasets=[str(path) for path in files.values()],
        model=loaded,
        progress=print,
    ).to_json()
    for label, training, run in zip(
        files, document["training_sets"], document["runs"], strict=True
    ):
        sets[label]["mean_delta_without_style_control"] = training["dataset_delta"]
        sets[label]["shift"] = {
            t: {k: run["shift"][t][k] for k in ("shift", "standard_error")} for t in TRAITS
        }
    print(
        f"{'data':34} " + " ".join(f"{t + ' shift':>18} {'ΔP':>7} {'flagged':>8}" for t in TRAITS)
    )
    for label, entry in sets.items():
        cells = [
            f"{entry['shift'][t]['shift']:+8.2f} ± {entry['shift'][t]['standard_error']:5.2f}   "
            f"{entry['mean_delta'][t]:+7.2f} {entry['flag_rate'][t]:8.0%}"
            for t in TRAITS
        ]
        print(f"{label:34} " + " ".join(cells))
    return {"sets": sets, "pearson_r": document["pearson_r"]}


def evil_split(loaded: LoadedModel, data: Path, scratch: Path) -> dict[str, Path]:
    """Evil level II rows the default screen flags for evil and rows it misses, equal in number
    (seed 0), with as many ordinary chat rows beside them."""
    path = data / PAPER["evil level II (paper)"]
    lines = path.read_text(encoding="utf-8").splitlines()
    scores = screen(path, model=loaded, out=scratch / "run-evil2-all").scores
    hit = dict(zip(scores["source_line"], scores["flag_traits"].list.contains("evil"), strict=True))
    flagged = [line for number, line in enumerate(lines, 1) if hit.get(number) is True]
    missed = [line for number, line in enumerate(lines, 1) if hit.get(number) is False]
    size = min(len(flagged), len(missed))
    random.Random(0).shuffle(flagged)
    random.Random(0).shuffle(missed)
    files = {}
    for label, rows in (("evil level II, flagged", flagged), ("evil level II, missed", missed)):
        files[label] = scratch / f"{label.replace(', ', '_').replace(' ', '_')}.jsonl"
        files[label].write_text("\n".join(rows[:size]) + "\n", encoding="utf-8")
    chat = ORDINARY["ordinary chat (reference)"]
    files["ordinary chat, as many"] = draw(chat, size, scratch / "ordinary_chat_as_many.jsonl")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--dtype", default="auto")
    add_parts_option(parser, ("sets", "evil_split"))
    args = parser.parse_args()
    parts = args.parts
    paper = all((args.data / name).exists() for name in PAPER.values())
    if not paper:
        print(f"{args.data} does not hold the paper-dev files: ordinary data only")
    started = time.perf_counter()
    loaded = load_model("embedded", dtype=args.dtype)
    record = saved_results(RESULTS)
    with tempfile.TemporaryDirectory() as name:
        scratch = Path(name)
        if "sets" in parts:
            sources = {
                **ORDINARY,
                **({k: args.data / v for k, v in PAPER.items()} if paper else {}),
            }
            files = {
                label: draw(
                    path, args.rows, scratch / f"{label.split(' (')[0].replace(' ', '_')}.jsonl"
                )
                for label, path in sources.items()
            }
            record["sets"] = {"rows_per_set": args.rows, **trained(loaded, files, scratch)}
        if "evil_split" in parts and paper:
            record["evil_split"] = trained(loaded, evil_split(loaded, args.data, scratch), scratch)
    seconds = time.perf_counter() - started
    record["settings"] = "screener validate --datasets with default settings (LoRA)"
    record[f"seconds ({','.join(parts)})"] = round(seconds, 1)
    record["machine"] = {**machine(), "dtype": dtype_name(loaded.dtype)}
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
