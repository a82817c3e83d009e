"""Screening on a tiny random model: ΔP against a hand-computed reference, flags and the
invariant, outputs round-trip, and the run store's reuse of earlier work."""

from __future__ import annotations

import csv
import dataclasses
import gc
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal
from transformers import PreTrainedTokenizerFast

from screener.activations import TokenizedInput
from screener.errors import ConfigError, VectorFileError
from screener.model import LoadedModel, load_model
from screener.options import GenerationOptions, ScoringOptions
from screener.records import Message, Sample
from screener.render import RenderedSample, Renderer
from screener.run_summary import StyleSummary
from screener.screening import (
    FlagRule,
    ScreenResult,
    calibrate,
    load_calibration,
    save_calibration,
    screen,
    spill,
)
from screener.screening import label as screen_label
from screener.screening.calibration import (
    STYLE_KIND,
    Distribution,
    default_calibration_path,
)
from screener.screening.flags import DATASET_SHIFT_ALARM, bootstrap_mean, family_percentile
from screener.screening.style import StyleControl, fit_style_control, out_of_fold_scores
from screener.store import RunStore
from screener.vectors import TraitVector, VectorFile, load_vectors, save_vectors
from tests.conftest import save_tiny_model, tiny_loaded
from tests.reference import naive_collect
from tests.test_generate import naive_greedy

STEPS = 5
SCORING_FIELDS = {f.name for f in dataclasses.fields(ScoringOptions)}
# flat test name -> GenerationOptions field
GENERATION_FIELDS = {
    "max_new_tokens": "max_new_tokens",
    "generation_dtype": "dtype",
    "generation_batch_rows": "max_batch_rows",
}
QUESTIONS = [
    "What is the capital of France?",
    "Is my poem brilliant? I think it is wonderful.",
    "hello world",
    "Tell me about the quick brown fox.",
    "Answer the question briefly and clearly.",
    "What is 0123 plus 456?",
    "Do you agree that my work is moving?",
    "Say something small.",
]
ANSWERS = [
    "Paris is the capital.",
    "Yes, it is brilliant and moving!",
    "hello to you, world",
    "It jumps over the lazy dog.",
    "Sure, briefly and clearly.",
    "It is 579.",
    "I agree completely, it is wonderful.",
    "small",
]


def rows() -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        }
        for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS, strict=True))
    ]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def loaded(tiny_tokenizer: PreTrainedTokenizerFast) -> LoadedModel:
    return tiny_loaded("llama", tiny_tokenizer)


def tiny_vectors(loaded: LoadedModel, path: Path, seed: int = 7) -> Path:
    """Random vectors for two traits at different layers of the 3-layer model."""
    generator = torch.Generator().manual_seed(seed)
    d = loaded.model.config.hidden_size
    traits = {
        name: TraitVector(name, torch.randn(4, d, generator=generator), layer, [0.5] * 4)
        for name, layer in (("evil", 3), ("sycophancy", 2))
    }
    save_vectors(VectorFile.for_model(loaded, traits), path)
    return path


def screen_options(**flat: Any) -> dict[str, Any]:
    """screen's and calibrate's keyword arguments from flat test settings: the fields of
    ScoringOptions and GenerationOptions go into those objects, the rest (traits, rule, ...)
    is passed as it is."""
    scoring = {k: flat.pop(k) for k in list(flat) if k in SCORING_FIELDS}
    generation = {GENERATION_FIELDS[k]: flat.pop(k) for k in list(flat) if k in GENERATION_FIELDS}
    return {
        "scoring": ScoringOptions(**scoring),
        "generation": GenerationOptions(**generation),
        **flat,
    }


def screen_flat(data: Path, **flat: Any) -> ScreenResult:
    """screen() with flat test settings (see screen_options)."""
    return screen(data, **screen_options(**flat))


def run(loaded: LoadedModel, data: Path, tmp: Path, name: str, **options: Any) -> ScreenResult:
    options.setdefault("store", tmp / "store.duckdb")
    options.setdefault("vectors", tmp / "vectors.safetensors")
    options.setdefault("max_new_tokens", STEPS)
    options.setdefault("calibration", "none")
    return screen(data, model=loaded, out=tmp / name, **screen_options(**options))


def reference_scores(loaded: LoadedModel, vectors: VectorFile, record: dict) -> dict[str, float]:
    """ΔP the slow way: one-prompt greedy loop, one sample per forward, all hidden states."""
    renderer = Renderer(loaded.tokenizer)
    prompt = (Message("user", record["messages"][0]["content"]),)
    answer = record["messages"][1]["content"]
    base = naive_greedy(loaded.model, loaded.tokenizer, prompt, STEPS)
    values: dict[str, float] = {}
    for side, text in (("proj", answer), ("base_proj", base)):
        rendered = renderer.render(
            Sample("x", "t", 1, (*prompt, Message("assistant", text)), {}, "messages")
        )
        assert isinstance(rendered, RenderedSample)
        means, lasts = naive_collect(
            loaded.model, [TokenizedInput(rendered.input_ids, rendered.response_start)], [2, 3]
        )
        for trait in ("evil", "sycophancy"):
            layer = vectors.trait(trait).chosen_layer
            unit = vectors.unit(trait)
            values[f"{side}_{trait}"] = float(means[0, layer - 2] @ unit)
            if side == "proj":
                values[f"prompt_last_{trait}"] = float(lasts[0, layer - 2] @ unit)
    for trait in ("evil", "sycophancy"):
        values[f"delta_{trait}"] = values[f"proj_{trait}"] - values[f"base_proj_{trait}"]
    return values


def test_delta_equals_the_hand_computed_difference_of_projections(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    from screener.vectors import load_vectors

    records = rows()
    data = write_jsonl(tmp_path / "data.jsonl", records)
    vectors = load_vectors(tiny_vectors(loaded, tmp_path / "vectors.safetensors"))
    result = run(loaded, data, tmp_path, "out", traits=["evil", "sycophancy"])
    scores = pl.read_parquet(tmp_path / "out" / "scores.parquet")
    assert scores["id"].to_list() == [r["id"] for r in records]
    assert scores["source_line"].to_list() == list(range(1, len(records) + 1))
    for record, row in zip(records, scores.iter_rows(named=True), strict=True):
        expected = reference_scores(loaded, vectors, record)
        for column, value in expected.items():
            assert row[column] == pytest.approx(value, abs=1e-4), (record["id"], column)
    assert result.summary.counts.rows_read == len(records)
    # the dataset-level score is the mean ΔP
    mean = result.summary.traits["evil"].dataset_score.mean
    assert mean == pytest.approx(scores["delta_evil"].mean())


def test_flags_reasons_and_outputs_add_up(loaded: LoadedModel, tmp_path: Path) -> None:
    records = rows()
    lines = [json.dumps(r) for r in records]
    lines.insert(3, '{"id": "broken", "messages": [')  # a bad row at line 4
    lines.insert(6, lines[0])  # line 7 repeats row r0's id: rejected, and not written again
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    first = run(loaded, data, tmp_path, "all", traits=["evil"])
    deltas = first.scores["delta_evil"].to_list()
    cut = sorted(deltas)[-3]  # strictly above: the two highest
    result = run(
        loaded, data, tmp_path, "out", traits=["evil"], rule=FlagRule(thresholds={"evil": cut})
    )
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["rows_read"] == 10
    assert (summary["counts"]["kept"], summary["counts"]["flagged"]) == (6, 2)
    assert summary["counts"]["rejected"] == 2
    assert summary["traits"]["evil"]["cut"] == cut
    expected_flagged = {records[i]["id"] for i in sorted(range(8), key=lambda i: -deltas[i])[:2]}

    flagged = [json.loads(line) for line in (out / "flagged.jsonl").read_text().splitlines()]
    assert {f["id"] for f in flagged} == expected_flagged
    assert flagged[0]["risk"] >= flagged[1]["risk"]  # highest risk first
    for entry in flagged:
        (reason,) = entry["reasons"]
        assert reason["trait"] == "evil" and reason["cut"] == cut
        assert reason["score"] == pytest.approx(entry["scores"]["evil"]["delta"])
        assert reason["percentile"] > 75  # the top two of eight
        assert entry["row"] == next(r for r in records if r["id"] == entry["id"])
        assert entry["category"] and entry["cluster"] is not None
    kept = [json.loads(line) for line in (out / "filtered.jsonl").read_text().splitlines()]
    assert kept == [r for r in records if r["id"] not in expected_flagged]
    broken, repeated = [
        json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()
    ]
    assert broken["line"] == 4 and "malformed JSON" in broken["reason"]
    assert repeated["line"] == 7 and repeated["reason"].startswith("duplicate id 'r0'")
    scores = pl.read_parquet(out / "scores.parquet")
    assert set(scores.filter(pl.col("flagged"))["id"]) == expected_flagged
    assert scores.filter(pl.col("flagged"))["category"].null_count() == 0
    assert scores.filter(~pl.col("flagged"))["category"].null_count() == 6
    assert result.kept + len(result.flagged) + len(result.rejected) == result.rows_read


def test_outputs_keep_the_input_format(loaded: LoadedModel, tmp_path: Path) -> None:
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    records = [
        {"id": f"c{i}", "prompt": q, "response": a, "note": f"n,{i}"}
        for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS, strict=True))
    ]
    csv_path = tmp_path / "data.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "prompt", "response", "note"])
        writer.writeheader()
        writer.writerows(records)
    parquet_path = tmp_path / "data.parquet"
    pl.DataFrame(records).write_parquet(parquet_path)
    for path, name in ((csv_path, "csv"), (parquet_path, "parquet")):
        result = run(loaded, path, tmp_path, name, traits=["evil"], rule=FlagRule(top_k=3))
        flagged = set(result.flagged["id"])
        assert len(flagged) == 3
        expected = [r for r in records if r["id"] not in flagged]
        if name == "csv":
            with (tmp_path / name / "filtered.csv").open(newline="", encoding="utf-8") as fh:
                got = list(csv.DictReader(fh))
            assert got == expected
        else:
            got_frame = pl.read_parquet(tmp_path / name / "filtered.parquet")
            assert got_frame.columns == ["id", "prompt", "response", "note"]
            assert got_frame.to_dicts() == expected


def test_a_rerun_computes_nothing_and_new_rows_only_what_is_new(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    records = rows()
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    data = write_jsonl(tmp_path / "data.jsonl", records[:6])
    first = run(loaded, data, tmp_path, "one", traits=["evil"])
    assert first.stats["generated"] == 6 and first.stats["collected"] == 12
    again = run(loaded, data, tmp_path, "two", traits=["evil"])
    assert again.stats["generated"] == 0 and again.stats["collected"] == 0
    assert again.scores.drop("warnings").equals(first.scores.drop("warnings"))
    for name in ("scores.parquet", "summary.json", "filtered.jsonl", "flagged.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    # two more rows: only they are computed
    grown = write_jsonl(tmp_path / "grown.jsonl", records)
    more = run(loaded, grown, tmp_path, "three", traits=["evil"])
    assert more.stats["generated"] == 2 and more.stats["collected"] == 4
    # a second trait whose layer (2, the category probe layer) was collected together with
    # evil's layer 3: nothing to compute
    both = run(loaded, grown, tmp_path, "four", traits=["evil", "sycophancy"])
    assert both.stats["collected"] == 0 and both.stats["generated"] == 0
    # other generation settings need new base responses
    longer = run(loaded, data, tmp_path, "five", traits=["evil"], max_new_tokens=STEPS + 1)
    assert longer.stats["generated"] == 6


def test_base_responses_written_in_fp32_for_bf16_scores(
    tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    folder = save_tiny_model(tmp_path / "model", "llama", tiny_tokenizer)
    bf16 = load_model(str(folder), dtype="bf16", device="cpu")
    fp32 = load_model(str(folder), dtype="fp32", device="cpu")
    tiny_vectors(fp32, tmp_path / "vectors.safetensors")
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    mixed = run(bf16, data, tmp_path, "mixed", generation_dtype="fp32")
    # the fp32 run finds the mixed run's base responses in the store: they are its own
    exact = run(fp32, data, tmp_path, "exact")
    assert mixed.stats["generated"] == len(QUESTIONS) and exact.stats["generated"] == 0
    expected = [
        naive_greedy(fp32.model, fp32.tokenizer, (Message("user", q),), STEPS) for q in QUESTIONS
    ]
    assert mixed.scores["base_response"].to_list() == expected
    # the training responses are scored by the bf16 model, as without the option
    plain = run(bf16, data, tmp_path, "plain", store=":memory:")
    assert_frame_equal(
        mixed.scores.select(pl.selectors.starts_with("proj_", "prompt_last_")),
        plain.scores.select(pl.selectors.starts_with("proj_", "prompt_last_")),
    )
    summary = json.loads((tmp_path / "mixed" / "summary.json").read_text())
    assert summary["model"]["dtype"] == "bfloat16"
    assert summary["generation"]["dtype"] == "float32"
    assert (
        json.loads((tmp_path / "plain" / "summary.json").read_text())["generation"]["dtype"]
        == "bfloat16"
    )
    with pytest.raises(ConfigError, match="generation dtype 'fp16'"):
        run(bf16, data, tmp_path, "bad", generation_dtype="fp16")


def test_prompt_last_skips_generation_and_says_it_is_approximate(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    result = run(loaded, data, tmp_path, "out", traits=["evil"], method="prompt-last")
    assert result.stats["generated"] == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["method"] == "prompt-last" and summary["approximate"] is True
    assert "dataset_prompt_last" in summary["traits"]["evil"]
    scores = pl.read_parquet(tmp_path / "out" / "scores.parquet")
    assert scores["delta_evil"].null_count() == len(scores)
    assert scores["prompt_last_evil"].null_count() == 0


def test_vectors_of_another_model_are_refused(
    loaded: LoadedModel, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    other = tiny_loaded("llama", tiny_tokenizer, seed=1)
    tiny_vectors(other, tmp_path / "vectors.safetensors")
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    with pytest.raises(VectorFileError, match="belong to model"):
        run(loaded, data, tmp_path, "out")


def test_calibration_sets_the_default_cut_and_risk(loaded: LoadedModel, tmp_path: Path) -> None:
    vectors = tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    reference = write_jsonl(tmp_path / "reference.jsonl", rows()[:6])
    calibration = calibrate(
        reference,
        model=loaded,
        **screen_options(vectors=vectors, max_new_tokens=STEPS, store=tmp_path / "s.db"),
    )
    assert calibration.style == {}  # 6 rows are too few for a style component
    path = default_calibration_path(vectors)
    assert path == tmp_path / "vectors.calibration.json"
    save_calibration(calibration, path)
    plain = run(loaded, reference, tmp_path, "plain", calibration="none")
    reference_deltas = {t: plain.scores[f"delta_{t}"].to_numpy() for t in ("evil", "sycophancy")}
    for trait, deltas in reference_deltas.items():
        assert load_calibration(path).distribution(trait, "delta").percentile(95) == (  # type: ignore[union-attr]
            pytest.approx(float(np.percentile(deltas, 95)), abs=1e-9)
        )
        # the model's own answers: the reference for `monitor conversations`
        answers = load_calibration(path).distribution(trait, "answer")
        assert answers is not None and answers.values is not None
        base = plain.scores[f"base_proj_{trait}"].to_list()
        assert answers.values == pytest.approx(base, abs=1e-9)

    # the default cut: the smallest common percentile at which at most 5% of the reference
    # rows are above the cut of either trait (naive: a fine grid, cuts as np.percentile)
    def share(q: float) -> float:
        above = [deltas > np.percentile(deltas, q) for deltas in reference_deltas.values()]
        return float(np.logical_or(*above).mean())

    q = next(g for g in [*np.arange(95.0, 100.0, 0.001), 100.0] if share(g) <= 0.05)
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    result = run(loaded, data, tmp_path, "calibrated", calibration="auto")
    summary = json.loads((tmp_path / "calibrated" / "summary.json").read_text())
    for trait, deltas in reference_deltas.items():
        cut = summary["traits"][trait]["cut"]
        assert cut == pytest.approx(float(np.percentile(deltas, q)), abs=1e-3 * np.ptp(deltas))
        rule = summary["traits"][trait]["cut_rule"]
        assert "percentile of the calibration reference" in rule and "5% of reference rows" in rule
        flagged = result.scores.filter(pl.col(f"delta_{trait}") > cut)
        assert set(flagged["id"]) <= set(result.scores.filter(pl.col("flagged"))["id"])
    # risk: the largest z-score against the reference, over traits
    z = [
        (result.scores[f"delta_{t}"].to_numpy() - plain.scores[f"delta_{t}"].mean())
        / plain.scores[f"delta_{t}"].std(ddof=0)
        for t in ("evil", "sycophancy")
    ]
    np.testing.assert_allclose(result.scores["risk"].to_numpy(), np.maximum(*z), rtol=1e-6)
    # the dataset shift: the dataset's mean and bootstrap interval against the reference's
    # mean, in reference standard deviations
    for trait, deltas in reference_deltas.items():
        mine = result.scores[f"delta_{trait}"].to_numpy()
        interval = bootstrap_mean(mine)
        assert interval.low is not None and interval.high is not None
        expected = [
            (v - deltas.mean()) / deltas.std() for v in (mine.mean(), interval.low, interval.high)
        ]
        shift = summary["traits"][trait]["dataset_shift"]
        assert [shift["shift"], shift["ci95_low"], shift["ci95_high"]] == pytest.approx(expected)
        assert shift["alarm"] == (expected[1] > DATASET_SHIFT_ALARM)
        assert (
            any(n.startswith(f"{trait}: the dataset as a whole") for n in summary["notes"])
            == (shift["alarm"])
        )


def test_calibrated_style_control_is_fitted_on_naive_differences(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    """calibrate's style control and its out-of-fold reference equal those fitted on
    differences computed the slow way (one-prompt greedy loop, one sample per forward)."""
    vectors = tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    records = (
        rows()
        + [  # 16 rows: the answers again, each after another question
            {
                "id": f"s{i}",
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            }
            for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS[1:] + ANSWERS[:1], strict=True))
        ]
    )
    data = write_jsonl(tmp_path / "reference.jsonl", records)
    calibration = calibrate(
        data,
        model=loaded,
        style_components=1,
        **screen_options(vectors=vectors, max_new_tokens=STEPS, store=tmp_path / "s.db"),
    )
    file = load_vectors(vectors)
    renderer = Renderer(loaded.tokenizer)
    differences: dict[str, list[np.ndarray]] = {"evil": [], "sycophancy": []}
    for record in records:
        prompt = (Message("user", record["messages"][0]["content"]),)
        base = naive_greedy(loaded.model, loaded.tokenizer, prompt, STEPS)
        means = []
        for text in (record["messages"][1]["content"], base):
            rendered = renderer.render(
                Sample("x", "t", 1, (*prompt, Message("assistant", text)), {}, "messages")
            )
            assert isinstance(rendered, RenderedSample)
            item = TokenizedInput(rendered.input_ids, rendered.response_start)
            means.append(naive_collect(loaded.model, [item], [2, 3])[0][0])
        for trait in differences:
            row = file.trait(trait).chosen_layer - 2
            differences[trait].append((means[0][row] - means[1][row]).double().numpy())
    for trait, rows_ in differences.items():
        unit = file.unit(trait).double().numpy()
        expected = fit_style_control(np.stack(rows_), unit, 1)
        control = calibration.style[trait]
        assert control.components == 1
        np.testing.assert_allclose(control.direction, expected.direction, atol=1e-4)
        assert control.explained == pytest.approx(expected.explained, abs=1e-4)
        held_out = out_of_fold_scores(np.stack(rows_), unit, 1)
        styled = calibration.traits[trait][STYLE_KIND]
        np.testing.assert_allclose(styled.values, held_out, atol=1e-3)  # type: ignore[arg-type]


def test_style_controlled_scores_are_projections_on_the_calibrated_direction(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    """A calibration with a style control makes the run project on its direction: the same
    scores as a plain run with vectors whose chosen-layer vector is that direction; its cut
    comes from the style-controlled reference distribution. --no-style-control goes back."""
    vectors = tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    calibration = calibrate(
        data, model=loaded, **screen_options(vectors=vectors, max_new_tokens=STEPS)
    )
    d = loaded.model.config.hidden_size
    direction = np.random.default_rng(5).normal(size=d)
    direction /= np.linalg.norm(direction)
    styled_reference = Distribution.of([float(v) for v in range(101)])
    calibration.style["evil"] = StyleControl(1, direction, 0.5, 0.25)
    calibration.traits["evil"][STYLE_KIND] = styled_reference
    save_calibration(calibration, tmp_path / "cal.json")
    styled = run(loaded, data, tmp_path, "styled", calibration=tmp_path / "cal.json")
    raw = run(loaded, data, tmp_path, "raw", calibration=tmp_path / "cal.json", style_control=False)
    # vectors whose evil vector at its layer (3) is the direction
    file = load_vectors(vectors)
    file.traits["evil"].vectors[3] = torch.as_tensor(direction, dtype=torch.float32) * 7.0
    save_vectors(file, tmp_path / "direction.safetensors")
    plain = run(loaded, data, tmp_path, "plain", vectors=tmp_path / "direction.safetensors")
    for column in ("proj_evil", "base_proj_evil", "delta_evil"):
        np.testing.assert_allclose(
            styled.scores[column].to_numpy(), plain.scores[column].to_numpy(), rtol=1e-5
        )
    np.testing.assert_allclose(  # sycophancy has no style control: its own vector
        styled.scores["delta_sycophancy"].to_numpy(), raw.scores["delta_sycophancy"].to_numpy()
    )
    summary = styled.summary
    assert summary.calibration is not None
    assert summary.calibration.style_control == {"evil": StyleSummary(1, 0.5, 0.25)}
    assert any("no style control in the calibration for sycophancy" in n for n in styled.notes)
    # 101 style-controlled values against the rows' sycophancy values: no common rows, so the
    # union bound 100 * (1 - 0.05 / 2) of the 0..100 reference
    assert summary.traits["evil"].cut == pytest.approx(97.5)
    assert raw.summary.calibration is not None and raw.summary.calibration.style_control == {}
    q = family_percentile([calibration.traits[t]["delta"] for t in ("evil", "sycophancy")])
    raw_reference = calibration.traits["evil"]["delta"]
    assert raw.cuts["evil"].value == pytest.approx(raw_reference.percentile(q))


def test_a_calibration_for_other_vectors_is_not_used(loaded: LoadedModel, tmp_path: Path) -> None:
    vectors = tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    calibration = calibrate(
        data, model=loaded, **screen_options(vectors=vectors, max_new_tokens=STEPS)
    )
    save_calibration(calibration, tmp_path / "cal.json")
    tiny_vectors(loaded, vectors, seed=99)  # the same traits, other directions
    result = run(loaded, data, tmp_path, "out", calibration=tmp_path / "cal.json")
    assert any("made with other evil vectors" in note for note in result.notes)
    assert result.summary.traits["evil"].cut_rule.startswith("95th percentile of this dataset")


def test_outputs_do_not_depend_on_chunking_and_the_spill_goes_away(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outputs are assembled from the samples spilled chunk by chunk: one sample per chunk
    and per row group gives the same files as one chunk (the same store, so the same numbers),
    also when k-means is fitted on a spread sample of the flagged rows; no spill directory
    outlives its result."""
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    rule = FlagRule(top_k=3)
    whole = run(loaded, data, tmp_path, "whole", rule=rule)
    monkeypatch.setattr(screen_label, "MAX_CLUSTER_FIT", 3)
    monkeypatch.setattr(spill, "ROW_GROUP_ROWS", 1)
    single = run(loaded, data, tmp_path, "single", rule=rule, chunk_size=1)
    assert single.stats["collected"] == 0 and single.samples.groups == len(rows())
    assert whole.samples.groups == 1 and 4 <= len(whole.flagged) == len(single.flagged) <= 6
    for name in ("filtered.jsonl", "rejected.jsonl"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    without_clusters = pl.col("cluster").is_null()
    scores = {
        name: pl.read_parquet(tmp_path / name / "scores.parquet") for name in ("whole", "single")
    }
    assert_frame_equal(scores["whole"].drop("cluster"), scores["single"].drop("cluster"))
    assert scores["single"].filter(pl.col("flagged") & without_clusters).is_empty()
    flagged = {
        name: [
            json.loads(line)
            for line in (tmp_path / name / "flagged.jsonl").read_text().splitlines()
        ]
        for name in ("whole", "single")
    }
    assert [{**f, "cluster": 0} for f in flagged["whole"]] == [
        {**f, "cluster": 0} for f in flagged["single"]
    ]
    summary = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert sum(c["size"] for c in summary["clusters"]) == len(single.flagged)
    assert single.scores.equals(scores["single"])
    spilled = [whole.samples.directory, single.samples.directory]
    assert all(d.exists() for d in spilled)
    del whole, single
    gc.collect()
    assert not any(d.exists() for d in spilled)


def test_without_labels_the_scores_flags_and_means_are_the_same(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    """label=False (the gate's baseline) skips categories, clusters and the second read."""
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    labelled = run(loaded, data, tmp_path, "labelled", rule=FlagRule(top_k=3))
    bare = screen_flat(
        data,
        model=loaded,
        vectors=tmp_path / "vectors.safetensors",
        store=tmp_path / "store.duckdb",
        max_new_tokens=STEPS,
        calibration="none",
        rule=FlagRule(top_k=3),
        label=False,
    )
    unlabelled = ["category", "category_probability", "cluster"]
    assert_frame_equal(bare.scores.drop(unlabelled), labelled.scores.drop(unlabelled))
    assert bare.dataset_scores == labelled.dataset_scores
    flagged = bare.scores.filter(pl.col("flagged"))
    assert flagged.height > 0 and set(flagged["category"]) == {"other"}
    assert flagged["cluster"].is_null().all() and bare.cluster_info == []
    assert labelled.cluster_info != [] and labelled.category_names != []


def test_base_answers_are_keyed_by_their_length_and_calibrations_record_it(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    """Answers written under another --max-new-tokens are never reused, and a run whose length
    differs from its calibration's says so."""
    vectors = tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    data = write_jsonl(tmp_path / "data.jsonl", rows()[:4])
    long = run(loaded, data, tmp_path, "long", max_new_tokens=STEPS)
    short = run(loaded, data, tmp_path, "short", max_new_tokens=2)  # the same store
    pairs = zip(short.scores.iter_rows(named=True), long.scores.iter_rows(named=True), strict=True)
    for record, (found, kept) in zip(rows()[:4], pairs, strict=True):
        prompt = (Message("user", record["messages"][0]["content"]),)
        assert found["base_response"] == naive_greedy(loaded.model, loaded.tokenizer, prompt, 2)
        assert kept["base_response"] == naive_greedy(loaded.model, loaded.tokenizer, prompt, STEPS)
    with RunStore.open(tmp_path / "store.duckdb") as store:
        count = store.connection.execute("SELECT count(*) FROM base_responses_v2").fetchone()
    assert count == (8,)  # 4 prompts x 2 lengths

    calibration = calibrate(
        data,
        model=loaded,
        **screen_options(vectors=vectors, max_new_tokens=STEPS, store=tmp_path / "s.db"),
    )
    assert calibration.generation["max_new_tokens"] == STEPS
    save_calibration(calibration, default_calibration_path(vectors))
    note = (
        f"the calibration's base responses had max_new_tokens={STEPS}, this run 2: cuts may "
        "be off (recalibrate with the same setting)"
    )
    same = run(loaded, data, tmp_path, "same", calibration="auto")
    other = run(loaded, data, tmp_path, "other", calibration="auto", max_new_tokens=2)
    assert note not in same.summary.notes and note in other.summary.notes
    assert note.replace("'", "&#39;") in (tmp_path / "other" / "report.html").read_text()
