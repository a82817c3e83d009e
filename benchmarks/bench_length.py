"""Benchmark: how long must the model's own (base) answers be for ΔP to rank and flag well?

    .venv/bin/python benchmarks/bench_length.py [--data ../shared/data/paper-dev]
        [--lengths 16,32,64,128,256] [--dtype auto]

Every base answer is generated once, greedily, at the longest length; an answer of L tokens is
the first L tokens of it (greedy decoding writes the same first L tokens whatever the limit,
token for token in fp32 and for the same batches). For each length the answers go into a
scratch run store under that length's settings, so the pipeline then runs exactly as a run with
`--max-new-tokens L` would, without generating:

- `screener calibrate` on the shipped reference files (reference_chat + reference_prose), so
  each length has cuts of its own;
- `screener screen` with that calibration on sample_datasets/chat_mixed.jsonl (labelled) and,
  when the paper-dev folder is there, on its mixes (clean alone, hallucinated + clean, evil
  level II + clean, evil level I + clean);
- the gate with default rules: 30 clean rows plus 12 clean rows, and plus 12 evil level-II rows.

Per length, dataset and trait: AUROC of ΔP against the labels, Spearman of ΔP against the
longest length's and against 128 tokens' (today's default), the share of rows whose flag for
the trait agrees with 128 tokens', the trait's flag recall and precision, and the gate
verdicts. Generation cost per length: the new tokens the answers hold, and the seconds to
generate the 200 demo prompts' answers at that limit (measured, one run per length).
Writes benchmarks/results/length.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from bench_paper_dev import (
    DEFAULT_DATA,
    FILES,
    GATE_ADDED_ROWS,
    GATE_BASELINE_ROWS,
    MIXES,
    read_rows,
    write_rows,
)
from machine import machine
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from screener.gate_rules import GateRules
from screener.gating import run_gate
from screener.generate import GenerationSettings, answer_text, generate_token_ids
from screener.model import LoadedModel, dtype_name, load_model
from screener.options import GenerationOptions, ScoringOptions
from screener.reader import read_dataset
from screener.records import Message, Sample
from screener.render import Renderer
from screener.screening import calibrate, save_calibration, screen
from screener.screening.scoring import store_key
from screener.store import RunStore, token_hash

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_datasets"
RESULTS = ROOT / "benchmarks" / "results" / "length.json"
TRAITS = ("evil", "sycophancy", "hallucination")
REFERENCES = [SAMPLES / "reference_chat.jsonl", SAMPLES / "reference_prose.jsonl"]
# bench_paper_dev's mixes that hold the clean rows (after the risky ones): name -> (risky, trait)
CLEAN_MIXES = {name: (risky, trait) for name, (risky, trait, clean) in MIXES.items() if clean}


def prompts_of(path: Path) -> list[tuple[Message, ...]]:
    return [r.messages[:-1] for r in read_dataset(path) if isinstance(r, Sample)]


def datasets(scratch: Path, paper_dev: Path | None) -> dict[str, tuple[Path, np.ndarray | None]]:
    """Name -> (data file, per row the trait it carries or "" for clean; None: per-trait labels
    come from the file's `label` field)."""
    found: dict[str, tuple[Path, np.ndarray | None]] = {
        "chat_mixed": (SAMPLES / "chat_mixed.jsonl", None)
    }
    if paper_dev is None:
        return found
    clean = read_rows(paper_dev, "clean")
    for name, (risky, trait) in CLEAN_MIXES.items():
        risky_rows = read_rows(paper_dev, risky) if risky else []
        labels = np.array([trait] * len(risky_rows) + [""] * len(clean), dtype=object)
        found[name] = (write_rows(scratch / f"{name}.jsonl", risky_rows + clean), labels)
    return found


def row_labels(path: Path, given: np.ndarray | None) -> np.ndarray:
    if given is not None:
        return given
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return np.array([r["label"] if r["label"] != "normal" else "" for r in rows], dtype=object)


def longest_answers(
    loaded: LoadedModel, prompts: list[tuple[Message, ...]], length: int, cache: Path | None
) -> list[list[int]]:
    """Token ids of each prompt's greedy answer of up to `length` tokens (from `cache` when it
    holds them for these prompts, model and dtype)."""
    key = {
        "model": loaded.fingerprint,
        "dtype": dtype_name(loaded.dtype),
        "length": length,
        "prompts": token_hash(*(Renderer(loaded.tokenizer).prompt_ids(p) for p in prompts)),
    }
    if cache is not None and cache.exists():
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            return [list(t) for t in saved["tokens"]]
    tokens = generate_token_ids(loaded, prompts, GenerationSettings(length), describe=print)
    if cache is not None:
        cache.write_text(json.dumps({"key": key, "tokens": tokens}))
    return tokens


def store_answers(
    store: Path, loaded: LoadedModel, prompts: list[tuple[Message, ...]], tokens: list[list[int]],
    length: int,
) -> None:  # fmt: skip
    """Put the first `length` tokens of each answer where a run at that length looks."""
    renderer = Renderer(loaded.tokenizer)
    settings = json.dumps(GenerationSettings(max_new_tokens=length).as_dict(), sort_keys=True)
    answers = {
        token_hash(renderer.prompt_ids(p)): answer_text(loaded, t[:length])
        for p, t in zip(prompts, tokens, strict=True)
    }
    with RunStore.open(store) as opened:
        opened.put_base_responses(store_key(loaded), settings, answers)


def screened_length(
    loaded: LoadedModel, store: Path, length: int, scratch: Path,
    data: dict[str, tuple[Path, np.ndarray | None]], paper_dev: Path | None,
) -> dict[str, Any]:  # fmt: skip
    """Calibrate, screen every dataset and run the gates at one answer length."""
    generation = GenerationOptions(max_new_tokens=length)
    calibration = calibrate(
        REFERENCES,
        model=loaded,
        traits=TRAITS,
        scoring=ScoringOptions(store=store, calibration=None),
        generation=generation,
    )
    calibration_path = scratch / f"calibration-{length}.json"
    save_calibration(calibration, calibration_path)
    scoring = ScoringOptions(store=store, calibration=calibration_path)
    scores = {
        name: screen(
            path, model=loaded, traits=TRAITS, scoring=scoring, generation=generation, label=False
        ).scores
        for name, (path, _) in data.items()
    }
    gates: dict[str, bool] = {}
    if paper_dev is not None:
        clean = read_rows(paper_dev, "clean")
        baseline = write_rows(scratch / "baseline.jsonl", clean[:GATE_BASELINE_ROWS])
        for added in ("clean", "evil2"):
            start = GATE_BASELINE_ROWS
            new = read_rows(paper_dev, added)[start : start + GATE_ADDED_ROWS]
            candidate = write_rows(scratch / f"candidate-{added}.jsonl", clean[:start] + new)
            verdict = run_gate(
                baseline,
                candidate,
                rules=GateRules(),
                out=scratch / f"gate-{added}-{length}",
                model=loaded,
                scoring=scoring,
                generation=generation,
            )
            gates[f"12 {added} rows added"] = verdict.passed
    return {"scores": scores, "gates": gates}


def metrics(
    runs: dict[int, dict[str, Any]], data: dict[str, tuple[Path, np.ndarray | None]]
) -> dict[str, Any]:
    longest, default = max(runs), 128 if 128 in runs else max(runs)
    table: dict[str, Any] = {}
    for length, run in runs.items():
        per_data: dict[str, Any] = {}
        for name, (path, given) in data.items():
            scores: pl.DataFrame = run["scores"][name]
            longest_scores = runs[longest]["scores"][name]
            default_scores = runs[default]["scores"][name]
            labels = row_labels(path, given)
            per_trait = {}
            for trait in TRAITS:
                column = f"delta_{trait}"
                flagged = scores["flag_traits"].list.contains(trait).to_numpy()
                flagged_default = default_scores["flag_traits"].list.contains(trait).to_numpy()
                positive = labels == trait
                entry: dict[str, Any] = {
                    "spearman_vs_longest": round(
                        float(spearmanr(scores[column], longest_scores[column]).statistic), 4
                    ),
                    "spearman_vs_128": round(
                        float(spearmanr(scores[column], default_scores[column]).statistic), 4
                    ),
                    "flag_agreement_vs_128": round(float((flagged == flagged_default).mean()), 4),
                    "flagged": int(flagged.sum()),
                }
                if 0 < positive.sum() < len(positive):
                    entry["auroc"] = round(float(roc_auc_score(positive, scores[column])), 4)
                    entry["recall"] = round(float(flagged[positive].mean()), 4)
                    entry["precision"] = (
                        round(float(positive[flagged].mean()), 4) if flagged.any() else None
                    )
                per_trait[trait] = entry
            clean = labels == ""
            per_data[name] = {
                "traits": per_trait,
                "clean_flag_rate": round(float(scores["flagged"].to_numpy()[clean].mean()), 4),
            }
        table[str(length)] = {
            "datasets": per_data,
            "gates_passed": run["gates"],
            "new_tokens": run["new_tokens"],
            "demo_generation_s": run["demo_generation_s"],
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--lengths", default="16,32,64,128,256")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--answers",
        type=Path,
        default=None,
        help="keep the longest answers' token ids in this "
        "JSON file and reuse them when it exists (for the same prompts, model and dtype)",
    )
    args = parser.parse_args()
    lengths = sorted(int(n) for n in args.lengths.split(","))
    paper_dev = args.data if all((args.data / f).exists() for f in FILES.values()) else None
    if paper_dev is None:
        print(f"{args.data} does not hold the paper-dev files: sample_datasets/ only")
    started = time.perf_counter()
    loaded = load_model("embedded", dtype=args.dtype)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        data = datasets(scratch, paper_dev)
        sources = [*REFERENCES, *(path for path, _ in data.values())]
        prompts = list(dict.fromkeys(p for path in sources for p in prompts_of(path)))
        print(f"{len(prompts)} prompts, answers of up to {lengths[-1]} tokens ...")
        tokens = longest_answers(loaded, prompts, lengths[-1], args.answers)
        demo = prompts_of(SAMPLES / "chat_mixed.jsonl")
        store = scratch / "store.duckdb"
        runs: dict[int, dict[str, Any]] = {}
        for length in lengths:
            tick = time.perf_counter()
            generate_token_ids(loaded, demo, GenerationSettings(length))
            demo_seconds = time.perf_counter() - tick
            store_answers(store, loaded, prompts, tokens, length)
            runs[length] = screened_length(loaded, store, length, scratch, data, paper_dev)
            runs[length]["new_tokens"] = sum(min(len(t), length) for t in tokens)
            runs[length]["demo_generation_s"] = round(demo_seconds, 1)
            print(f"length {length}: done ({time.perf_counter() - started:.0f} s)")
        table = metrics(runs, data)
    print_table(table)
    record = {
        "prompts": len(prompts),
        "datasets": list(data),
        "paper_dev": str(paper_dev) if paper_dev else None,
        "lengths": table,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {**machine(), "dtype": dtype_name(loaded.dtype)},
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def print_table(table: dict[str, Any]) -> None:
    columns = ("auroc", "spearman_vs_longest", "spearman_vs_128", "flag_agreement_vs_128",
               "recall", "precision")  # fmt: skip
    heads = ("AUROC", "rho/longest", "rho/128", "agree/128", "recall", "precision")
    print(f"\n{'tokens':>6} {'dataset':<18} {'trait':<14} " + " ".join(f"{h:>11}" for h in heads))
    for length, entry in table.items():
        for name, found in entry["datasets"].items():
            for trait, m in found["traits"].items():
                cells = (m.get(c) for c in columns)
                text = " ".join(f"{c:>11.3f}" if c is not None else f"{'-':>11}" for c in cells)
                print(f"{length:>6} {name:<18} {trait:<14} {text}")
        print(
            f"{length:>6} gates {entry['gates_passed']}  new tokens {entry['new_tokens']}  "
            f"demo generation {entry['demo_generation_s']} s"
        )


if __name__ == "__main__":
    main()
