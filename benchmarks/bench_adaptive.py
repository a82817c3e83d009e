"""Benchmark: would an adaptive answer length (stop once ΔP's base term has settled) pay?

    .venv/bin/python benchmarks/bench_adaptive.py [--data ../shared/data/paper-dev]
        [--answers /tmp/answers-128.json] [--dtype auto]

A base answer enters ΔP only through the mean of its projection on each trait's direction. The
candidate rule stops a row once that running mean has settled at every screened trait's layer:

    m_k(t)  = mean projection of the answer's first t tokens on trait k's scoring direction;
    stop at the first checkpoint t in {min, min+every, ...} where, for every trait k,
            |m_k(t) - m_k(t - every)| <= tol * sd_k,
    sd_k    = standard deviation of ΔP for trait k on the calibration reference;

otherwise the answer runs to its end of turn or to the token limit (128).

Decoding is causal and greedy, so the answer such a rule would produce is the first t tokens of
the full answer, and the projections its generator would observe are those of a forward pass
over the full answer. This benchmark therefore simulates every rule exactly from one set of
128-token answers: it projects each answer token by token (hidden_states at the traits'
layers), finds each row's stop, stores the shortened answers in a scratch run store, and runs
the unchanged pipeline (calibrate on the shipped references, screen, gate) as bench_length does.

Fixed limits (96, 64 and 32 by default) run beside the rules: an adaptive rule pays only if it
saves tokens at a smaller cost in ranking and flags than a fixed limit that saves as many.
Writes benchmarks/results/adaptive.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from bench_length import (
    REFERENCES,
    TRAITS,
    datasets,
    longest_answers,
    prompts_of,
    row_labels,
    screened_length,
)
from bench_paper_dev import DEFAULT_DATA, FILES
from machine import machine
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from screener.generate import GenerationSettings, answer_text
from screener.model import LoadedModel, dtype_name, load_model
from screener.options import DEFAULT_BASE_TOKENS
from screener.records import Message
from screener.render import Renderer
from screener.screening.calibration import default_calibration_path, load_calibration
from screener.screening.scoring import store_key
from screener.store import RunStore, token_hash
from screener.vectors.store import load_vectors

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "adaptive.json"
LIMIT = DEFAULT_BASE_TOKENS


@dataclass(frozen=True)
class StopRule:
    """Stop a row at the first checkpoint where every trait's running mean moved by at most
    `tol` reference standard deviations since the previous checkpoint."""

    min_tokens: int
    every: int
    tol: float

    @property
    def name(self) -> str:
        return f"adaptive min={self.min_tokens} every={self.every} tol={self.tol}"


def token_projections(
    loaded: LoadedModel,
    prompts: list[tuple[Message, ...]],
    tokens: list[list[int]],
    directions: dict[str, tuple[int, np.ndarray]],
) -> list[dict[str, np.ndarray]]:
    """Per answer and trait, the projection of each answer token's hidden state (at the trait's
    layer) on the trait's scoring direction."""
    renderer = Renderer(loaded.tokenizer)
    units = {t: torch.from_numpy(v).double() for t, (_, v) in directions.items()}
    found = []
    with torch.inference_mode():
        for prompt, answer in zip(prompts, tokens, strict=True):
            ids = renderer.prompt_ids(prompt)
            if not answer:
                found.append({t: np.zeros(0) for t in directions})
                continue
            output = loaded.model(
                input_ids=torch.tensor([ids + answer], device=loaded.model.device),
                output_hidden_states=True,
            )
            per_trait = {}
            for trait, (layer, _) in directions.items():
                hidden = output.hidden_states[layer][0, len(ids) :].double().cpu()
                per_trait[trait] = (hidden @ units[trait]).numpy()
            found.append(per_trait)
    return found


def stop_length(projections: dict[str, np.ndarray], scale: dict[str, float], rule: StopRule) -> int:
    """Tokens the rule keeps of one answer (its whole length when it never settles)."""
    length = min(len(next(iter(projections.values()))), LIMIT)
    running = {t: np.cumsum(p[:length]) / np.arange(1, length + 1) for t, p in projections.items()}
    for t in range(rule.min_tokens, length + 1, rule.every):
        if all(
            abs(running[k][t - 1] - running[k][t - 1 - rule.every]) <= rule.tol * scale[k]
            for k in running
        ):
            return t
    return length


def store_kept(
    store: Path,
    loaded: LoadedModel,
    prompts: list[tuple[Message, ...]],
    tokens: list[list[int]],
    kept: list[int],
) -> None:
    """Put each answer's first `kept` tokens where a run at the default limit looks."""
    renderer = Renderer(loaded.tokenizer)
    settings = json.dumps(GenerationSettings(max_new_tokens=LIMIT).as_dict(), sort_keys=True)
    answers = {
        token_hash(renderer.prompt_ids(p)): answer_text(loaded, t[:n])
        for p, t, n in zip(prompts, tokens, kept, strict=True)
    }
    with RunStore.open(store) as opened:
        opened.put_base_responses(store_key(loaded), settings, answers)


def compare(
    run: dict[str, Any], fixed: dict[str, Any], data: dict[str, tuple[Path, np.ndarray | None]]
) -> dict[str, Any]:
    """Per dataset and trait: AUROC, Spearman and flag agreement against the fixed limit."""
    per_data: dict[str, Any] = {}
    for name, (path, given) in data.items():
        scores: pl.DataFrame = run["scores"][name]
        reference: pl.DataFrame = fixed["scores"][name]
        labels = row_labels(path, given)
        per_trait = {}
        for trait in TRAITS:
            column = f"delta_{trait}"
            flagged = scores["flag_traits"].list.contains(trait).to_numpy()
            flagged_fixed = reference["flag_traits"].list.contains(trait).to_numpy()
            positive = labels == trait
            entry: dict[str, Any] = {
                "spearman_vs_128": round(
                    float(spearmanr(scores[column], reference[column]).statistic), 4
                ),
                "flag_agreement_vs_128": round(float((flagged == flagged_fixed).mean()), 4),
            }
            if 0 < positive.sum() < len(positive):
                entry["auroc"] = round(float(roc_auc_score(positive, scores[column])), 4)
            per_trait[trait] = entry
        clean = labels == ""
        per_data[name] = {
            "traits": per_trait,
            "clean_flag_rate": round(float(scores["flagged"].to_numpy()[clean].mean()), 4),
        }
    return per_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--answers", type=Path, default=None, help="cache of the 128-token answers")
    parser.add_argument("--fixed", default="96,64,32", help="fixed limits beside 128")
    parser.add_argument("--min-tokens", default="16")
    parser.add_argument("--tolerances", default="0.05,0.1,0.2,0.3")
    parser.add_argument("--every", type=int, default=8)
    args = parser.parse_args()
    paper_dev = args.data if all((args.data / f).exists() for f in FILES.values()) else None
    started = time.perf_counter()
    loaded = load_model("embedded", dtype=args.dtype)
    vectors = load_vectors("builtin", model=loaded)
    calibration = load_calibration(default_calibration_path("builtin")).for_scoring(True)
    steering = calibration.directions()
    directions = {t: (vectors.trait(t).chosen_layer, steering[t]) for t in TRAITS}
    scale = {t: calibration.traits[t]["delta"].std for t in TRAITS}
    rules: dict[str, Any] = {"fixed 128": None}
    rules |= {f"fixed {n}": int(n) for n in args.fixed.split(",")}
    for minimum in (int(n) for n in args.min_tokens.split(",")):
        for tol in (float(x) for x in args.tolerances.split(",")):
            rule = StopRule(minimum, args.every, tol)
            rules[rule.name] = rule
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        data = datasets(scratch, paper_dev)
        sources = [*REFERENCES, *(path for path, _ in data.values())]
        prompts = list(dict.fromkeys(p for path in sources for p in prompts_of(path)))
        print(f"{len(prompts)} prompts, answers of up to {LIMIT} tokens ...")
        tokens = longest_answers(loaded, prompts, LIMIT, args.answers)
        projections = token_projections(loaded, prompts, tokens, directions)
        print(f"projected token by token ({time.perf_counter() - started:.0f} s)")
        runs: dict[str, dict[str, Any]] = {}
        for name, rule in rules.items():
            if rule is None:
                kept = [len(t) for t in tokens]
            elif isinstance(rule, int):
                kept = [min(len(t), rule) for t in tokens]
            else:
                kept = [stop_length(p, scale, rule) for p in projections]
            store = scratch / f"store-{len(runs)}.duckdb"
            store_kept(store, loaded, prompts, tokens, kept)
            run = screened_length(loaded, store, LIMIT, scratch, data, paper_dev)
            run["new_tokens"] = sum(kept)
            runs[name] = run
            print(f"{name}: {sum(kept)} tokens ({time.perf_counter() - started:.0f} s)")
        table = {
            name: {
                "new_tokens": run["new_tokens"],
                "token_share_vs_128": round(run["new_tokens"] / runs["fixed 128"]["new_tokens"], 4),
                "gates_passed": run["gates"],
                "datasets": compare(run, runs["fixed 128"], data),
            }
            for name, run in runs.items()
        }
    print_table(table)
    record = {
        "prompts": len(prompts),
        "limit": LIMIT,
        "scale": "tol is in units of the reference's ΔP standard deviation per trait",
        "reference_sd": {t: round(s, 4) for t, s in scale.items()},
        "datasets": list(data),
        "paper_dev": str(paper_dev) if paper_dev else None,
        "rules": table,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {**machine(), "dtype": dtype_name(loaded.dtype)},
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def print_table(table: dict[str, Any]) -> None:
    print(f"\n{'rule':<36} {'tokens':>7} {'dataset':<18} {'trait':<14} AUROC  rho/128 agree/128")
    for name, entry in table.items():
        for data_name, found in entry["datasets"].items():
            for trait, m in found["traits"].items():
                auroc = f"{m['auroc']:.3f}" if "auroc" in m else "  -  "
                print(
                    f"{name:<36} {entry['token_share_vs_128']:>7.2f} {data_name:<18} {trait:<14} "
                    f"{auroc} {m['spearman_vs_128']:7.3f} {m['flag_agreement_vs_128']:9.3f}"
                )
        print(f"{name:<36} gates {entry['gates_passed']}")


if __name__ == "__main__":
    main()
