"""Integration tests on the real embedded model (SmolLM2-135M-Instruct from its GGUF wheel)."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import polars as pl
import pytest
import torch

from screener.activations import ActivationCollector, TokenizedInput
from screener.generate import GenerationSettings
from screener.model import LoadedModel, embedded_model_file, load_model
from screener.reader import read_dataset
from screener.records import Message, Sample
from screener.render import RenderedSample, Renderer
from screener.traits import load_pack
from screener.validation.shift import answer_projections
from screener.vectors import load_vectors
from tests.reference import naive_collect

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent.parent / "sample_datasets"


def test_embedded_model_loads_with_its_chat_template(embedded_fp32: LoadedModel) -> None:
    config = embedded_fp32.model.config
    assert (config.num_hidden_layers, config.hidden_size) == (30, 576)
    assert embedded_fp32.dtype == torch.float32 and len(embedded_fp32.fingerprint) == 16
    assert embedded_model_file().name.endswith(".gguf")
    prompt = Renderer(embedded_fp32.tokenizer).render_text(
        (Message("user", "Hi"),), add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")


def test_collector_matches_naive_loop_on_two_real_samples(embedded_fp32: LoadedModel) -> None:
    renderer = Renderer(embedded_fp32.tokenizer)
    samples = [
        s for s in islice(read_dataset(DATA / "chat_mixed.jsonl"), 2) if isinstance(s, Sample)
    ]
    rendered = [renderer.render(s) for s in samples]
    assert all(isinstance(r, RenderedSample) and r.boundary == "tokens" for r in rendered)
    inputs = [
        TokenizedInput(r.input_ids, r.response_start)
        for r in rendered
        if isinstance(r, RenderedSample)
    ]
    layers = [0, 15, 20, 30]
    acts = ActivationCollector(embedded_fp32.model, layers, padding_side="left").collect(inputs)
    ref_mean, ref_last = naive_collect(embedded_fp32.model, inputs, layers)
    torch.testing.assert_close(acts.response_mean, ref_mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(acts.last_prompt, ref_last, rtol=1e-4, atol=1e-4)


def test_converted_copy_equals_the_gguf_load(
    embedded_fp32: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from screener import model as model_module

    monkeypatch.setattr(model_module, "_converted_gguf", lambda folder, gguf_file: None)
    direct = model_module.load_model("embedded", dtype="fp32", device="cpu")
    assert direct.fingerprint == embedded_fp32.fingerprint
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1345, 30]])
    with torch.no_grad():
        torch.testing.assert_close(
            direct.model(ids).logits, embedded_fp32.model(ids).logits, rtol=0, atol=0
        )


def test_extract_command_writes_a_complete_loadable_vector(tmp_path: Path) -> None:
    from screener.cli import main
    from screener.vectors import load_vectors

    out = tmp_path / "evil.safetensors"
    code = main(
        [
            "extract",
            "--traits",
            "evil",
            "--max-questions",
            "2",
            "--max-new-tokens",
            "12",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    vectors = load_vectors(out)
    meta = vectors.metadata()
    assert meta["model"]["num_layers"] == 30 and meta["model"]["hidden_size"] == 576
    assert meta["command"] == (
        f"screener extract --traits evil --max-questions 2 --max-new-tokens 12 --out {out} --quiet"
    )
    evil = meta["traits"]["evil"]
    assert 1 <= evil["chosen_layer"] <= 30 and len(evil["heldout_auroc"]) == 31
    assert evil["pairs"]["extraction_asked"] == 10 and evil["judge"] is None
    assert evil["generation"]["max_new_tokens"] == 12 and len(evil["pack_sha256"]) == 64
    assert vectors.trait("evil").vectors.shape == (31, 576)


def test_builtin_vectors_belong_to_the_embedded_model(embedded_fp32: LoadedModel) -> None:
    from screener.traits import known_trait_names
    from screener.vectors import load_vectors

    vectors = load_vectors("builtin", model=embedded_fp32)
    assert sorted(vectors.traits) == [n for n in known_trait_names() if n in vectors.traits]
    assert set(vectors.traits) == {
        "apathetic",
        "evil",
        "hallucination",
        "humorous",
        "impolite",
        "optimistic",
        "sycophancy",
    }
    assert vectors.command.startswith("screener extract --traits apathetic,evil,")

    for name, trait in vectors.traits.items():
        assert trait.details["pack_sha256"] == load_pack(name).digest(), (
            f"{name} pack changed since extraction"
        )
        assert trait.heldout_auroc[trait.chosen_layer] == max(trait.heldout_auroc[1:])


def test_screen_command_on_a_few_real_rows(tmp_path: Path) -> None:
    from screener.cli import main

    lines = (DATA / "chat_mixed.jsonl").read_text(encoding="utf-8").splitlines()
    broken = (DATA / "broken_rows.jsonl").read_text(encoding="utf-8").splitlines()
    data = tmp_path / "few.jsonl"
    data.write_text("\n".join([*lines[:5], broken[1], broken[10]]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    code = main(
        [
            "screen",
            str(data),
            "--max-new-tokens",
            "12",
            "--top-k",
            "1",
            "--store",
            str(tmp_path / "store.duckdb"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {
        "rows_read": 7,
        "kept": summary["counts"]["kept"],
        "flagged": summary["counts"]["flagged"],
        "rejected": 2,
        "invariant": summary["counts"]["invariant"],
    }
    counts = summary["counts"]
    assert counts["kept"] + counts["flagged"] == 5 and 1 <= counts["flagged"] <= 3
    assert set(summary["traits"]) == {"evil", "sycophancy", "hallucination"}
    scores = pl.read_parquet(out / "scores.parquet")
    assert scores["id"].to_list() == [json.loads(line)["id"] for line in lines[:5]]
    for trait in summary["traits"]:
        delta = scores[f"delta_{trait}"] - (scores[f"proj_{trait}"] - scores[f"base_proj_{trait}"])
        assert delta.abs().max() < 1e-4  # type: ignore[operator]
    flagged = [json.loads(x) for x in (out / "flagged.jsonl").read_text().splitlines()]
    assert len(flagged) == counts["flagged"]
    assert all(r["reasons"] and r["base_response"] and r["category"] for r in flagged)
    kept = (out / "filtered.jsonl").read_text().splitlines()
    assert len(kept) == counts["kept"] and set(kept) <= set(lines[:5])
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [6, 7]


def test_validate_command_on_tiny_subsets(tmp_path: Path) -> None:
    """screen six real rows (three evil), then validate on the top and bottom two by evil ΔP,
    unsteered and with preventative steering: one training step each."""
    from screener.cli import main

    lines = (DATA / "chat_mixed.jsonl").read_text(encoding="utf-8").splitlines()
    chosen = [
        lines[i - 1] for i in (1, 2, 6, 9, 10, 11)
    ]  # normal, normal, evil, evil, normal, evil
    data = tmp_path / "six.jsonl"
    data.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    store = ["--store", str(tmp_path / "store.duckdb")]
    screen_args = ["screen", str(data), "--traits", "evil", "--max-new-tokens", "24", *store]
    assert main([*screen_args, "--out", str(out), "--quiet"]) == 0
    code = main(
        [
            "validate",
            str(out),
            "--subsets",
            "top,bottom",
            "--size",
            "2",
            "--eval-tokens",
            "12",
            "--preventative-steer",
            "20",
            "--quiet",
        ]
    )
    assert code == 0
    document = json.loads((out / "validate.json").read_text())
    top, bottom = document["training_sets"]
    assert (top["name"], bottom["name"]) == ("top-evil", "bottom-evil")
    assert top["dataset_delta"]["evil"] > bottom["dataset_delta"]["evil"]
    labels = {json.loads(line)["id"]: json.loads(line)["label"] for line in chosen}
    assert [labels[i] for i in top["ids"]] == ["evil", "evil"], "ΔP ranks evil rows first"
    assert [(r["training_set"], r["steer_coef"], r["steer_trait"]) for r in document["runs"]] == [
        ("top-evil", 0.0, None),
        ("top-evil", 20.0, "evil"),
        ("bottom-evil", 0.0, None),
        ("bottom-evil", 20.0, "evil"),
    ]
    # the untouched model measured again, independently, in the dtype validate loaded it in
    vector = load_vectors("builtin").trait("evil")
    baseline = answer_projections(
        load_model("embedded"),
        load_pack("evil").eval_questions,
        vector.unit(),
        vector.chosen_layer,
        GenerationSettings(max_new_tokens=12),
    )
    assert document["baseline"]["evil"]["answers"] == len(baseline.projections) == 20
    assert document["baseline"]["evil"]["mean"] == pytest.approx(baseline.mean, abs=1e-4)
    for run in document["runs"]:
        shift = run["shift"]["evil"]
        assert run["steps"] == 1 and run["samples_trained"] == 2 and shift["answers"] == 20
        assert shift["shift"] == pytest.approx(shift["after_mean"] - baseline.mean, abs=1e-4)
        assert shift["standard_error"] > 0
    assert document["settings"]["method"] == "lora" and document["model"]["spec"] == "embedded"
    assert 'id="validation"' in (out / "report.html").read_text()


def test_fast_decoder_equals_transformers_generate_in_fp32(embedded_fp32: LoadedModel) -> None:
    """The invariant behind the run store's cached answers: in fp32 our decode loop writes the
    same greedy answers as transformers' `generate` did, whatever the batches."""
    from screener.batch_plan import BatchBudget
    from screener.generate import generate_responses

    samples = [
        s for s in islice(read_dataset(DATA / "chat_mixed.jsonl"), 8) if isinstance(s, Sample)
    ]
    prompts = [s.messages[:-1] for s in samples]
    settings = GenerationSettings(max_new_tokens=24)
    before = generate_responses(
        embedded_fp32, prompts, settings, budget=BatchBudget(32, 1 << 30), decoder="transformers"
    )
    for rows in (8, 3):
        found = generate_responses(
            embedded_fp32, prompts, settings, budget=BatchBudget(rows, 1 << 30), decoder="screener"
        )
        assert found == before
    assert all(before)
