"""The extraction pipeline on a tiny model, recomputed by hand from its own generations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

import screener
from screener.activations import TokenizedInput
from screener.errors import ConfigError, ScreenerError
from screener.generate import GenerationSettings, generate_responses
from screener.records import Message, Sample
from screener.render import RenderedSample, Renderer
from screener.traits import TraitPack, validate_pack
from screener.vectors import load_vectors
from screener.vectors.extract import ExtractionSettings, extract_trait
from screener.vectors.jobs import import_vectors
from screener.vectors.separation import (
    auroc_per_layer,
    choose_layer,
    difference_of_means,
    separation_per_layer,
)
from tests.conftest import tiny_loaded
from tests.reference import naive_collect
from tests.test_traits import good_pack, with_answers

SETTINGS = ExtractionSettings(generation=GenerationSettings(max_new_tokens=4), max_questions=3)


def naive_activations(loaded, conversations: list[tuple[Message, ...]]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    renderer = Renderer(loaded.tokenizer)
    inputs = []
    for messages in conversations:
        rendered = renderer.render(Sample("x", "t", 1, messages, {}, "messages"))
        assert isinstance(rendered, RenderedSample)
        inputs.append(TokenizedInput(rendered.input_ids, rendered.response_start))
    means, _ = naive_collect(loaded.model, inputs, list(range(4)))
    return means


def sides(pack: TraitPack, questions: tuple[str, ...]) -> tuple[list, list]:
    pos = [
        (Message("system", p.pos), Message("user", q)) for p in pack.instructions for q in questions
    ]
    neg = [
        (Message("system", p.neg), Message("user", q)) for p in pack.instructions for q in questions
    ]
    return pos, neg


def test_vectors_and_layer_scores_equal_a_hand_recomputation(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    pack = validate_pack(good_pack())
    result = extract_trait(loaded, pack, SETTINGS)

    pos, neg = sides(pack, pack.extraction_questions[:3])
    answers = generate_responses(loaded, pos + neg, SETTINGS.generation)
    assert all(answers), "the tiny model must answer every prompt for this test to mean something"
    pos_conv = [
        (*p, Message("assistant", a)) for p, a in zip(pos, answers[: len(pos)], strict=True)
    ]
    neg_conv = [
        (*p, Message("assistant", a)) for p, a in zip(neg, answers[len(pos) :], strict=True)
    ]
    vectors = difference_of_means(
        naive_activations(loaded, pos_conv), naive_activations(loaded, neg_conv)
    )
    torch.testing.assert_close(result.vectors, vectors, rtol=1e-4, atol=1e-5)

    eval_pos, eval_neg = sides(pack, pack.eval_questions[:3])
    eval_answers = generate_responses(loaded, eval_pos + eval_neg, SETTINGS.generation)
    plain_pos = [
        (p[1], Message("assistant", a))
        for p, a in zip(eval_pos, eval_answers[: len(eval_pos)], strict=True)
    ]
    plain_neg = [
        (p[1], Message("assistant", a))
        for p, a in zip(eval_neg, eval_answers[len(eval_pos) :], strict=True)
    ]
    aurocs = auroc_per_layer(
        naive_activations(loaded, plain_pos), naive_activations(loaded, plain_neg), vectors
    )
    assert result.heldout_auroc == pytest.approx(aurocs, abs=1e-6)
    separations = separation_per_layer(
        naive_activations(loaded, plain_pos), naive_activations(loaded, plain_neg), vectors
    )
    assert result.heldout_separation == pytest.approx(separations, rel=1e-3, abs=1e-4)
    assert result.chosen_layer == choose_layer(aurocs, separations)
    assert result.details["pairs"] == {
        "extraction_asked": 15,
        "extraction_answered": 15,
        "extraction_kept": 15,
        "heldout_asked": 15,
        "heldout_answered": 15,
        "heldout_kept": 15,
    }


def written(pack: TraitPack, heldout: bool, count: int) -> tuple[list, list]:
    """The pack's first `count` written answers as (question, answer) conversations."""
    questions = pack.eval_questions if heldout else pack.extraction_questions
    answers = pack.eval_answers if heldout else pack.extraction_answers
    assert answers is not None
    pairs = list(zip(questions, answers, strict=True))[:count]
    pos = [(Message("user", q), Message("assistant", a.pos)) for q, a in pairs]
    neg = [(Message("user", q), Message("assistant", a.neg)) for q, a in pairs]
    return pos, neg


def test_written_answers_give_the_hand_computed_vectors_and_layer(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    pack = validate_pack(with_answers())
    settings = ExtractionSettings(responses="written", max_questions=12)
    result = extract_trait(loaded, pack, settings)

    pos, neg = written(pack, False, 12)
    vectors = difference_of_means(naive_activations(loaded, pos), naive_activations(loaded, neg))
    torch.testing.assert_close(result.vectors, vectors, rtol=1e-4, atol=1e-5)
    held_pos, held_neg = (naive_activations(loaded, side) for side in written(pack, True, 12))
    aurocs = auroc_per_layer(held_pos, held_neg, vectors)
    separations = separation_per_layer(held_pos, held_neg, vectors)
    assert result.heldout_auroc == pytest.approx(aurocs, abs=1e-6)
    assert result.heldout_separation == pytest.approx(separations, rel=1e-3, abs=1e-4)
    assert result.chosen_layer == choose_layer(aurocs, separations)
    assert result.details["responses"] == "written"
    assert result.details["dtype"] == "float32"  # the precision the activations were taken in
    assert result.details["generation"] is None and result.details["rollouts"] is None
    assert result.details["pairs"] == {
        "extraction_asked": 12,
        "extraction_answered": 12,
        "extraction_kept": 12,
        "heldout_asked": 12,
        "heldout_answered": 12,
        "heldout_kept": 12,
    }
    assert result.examples[0] == (
        pack.extraction_questions[0],
        *(m[-1].content for m in (pos[0], neg[0])),
    )


def test_written_responses_need_a_pack_with_answers(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    with pytest.raises(ConfigError, match="trait pack 'tidy' has no written answers"):
        extract_trait(loaded, validate_pack(good_pack()), ExtractionSettings(responses="written"))
    with pytest.raises(
        ScreenerError, match=r"only 3 of 3 response pairs survived .*--max-questions"
    ):
        extract_trait(
            loaded,
            validate_pack(with_answers()),
            ExtractionSettings(responses="written", max_questions=3),
        )
    with pytest.raises(ConfigError, match="responses must be one of generated, written"):
        ExtractionSettings(responses="typed")  # type: ignore[arg-type]


class ScriptedJudge:
    """Trait score 80 for the first 12 answers of each batch of prompts it sees in pairs, then
    20; coherence always 90. Records what it was asked."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def score(self, prompts: list[str]) -> list[float | None]:
        self.calls.append(list(prompts))
        if "coherent" in prompts[0]:
            return [90.0] * len(prompts)
        # prompts alternate eliciting, suppressing: keep pairs 0..5, reject the rest
        return [(80.0 if i % 2 == 0 and i < 12 else 20.0) for i in range(len(prompts))]


def test_judge_keeps_only_confirmed_pairs(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    pack = validate_pack(good_pack())
    judge = ScriptedJudge()
    settings = ExtractionSettings(
        generation=GenerationSettings(max_new_tokens=4), max_questions=3, judge=judge, min_pairs=6
    )
    result = extract_trait(loaded, pack, settings)
    assert result.details["pairs"]["extraction_kept"] == 6  # type: ignore[index]
    assert result.details["judge"] == {
        "name": "scripted",
        "trait_threshold": 50.0,
        "coherence_threshold": 50.0,
    }
    first_prompt = judge.calls[0][0]
    assert first_prompt.startswith("Question: How do I sort drawer number 0?\nAnswer: ")
    with pytest.raises(
        ScreenerError, match=r"only 6 of 15 response pairs survived \(the judge rejected"
    ):
        extract_trait(
            loaded,
            pack,
            ExtractionSettings(
                generation=GenerationSettings(max_new_tokens=4),
                max_questions=3,
                judge=ScriptedJudge(),
            ),
        )


def test_layer_override_and_bad_settings(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    pack = validate_pack(good_pack())
    fixed = ExtractionSettings(
        generation=GenerationSettings(max_new_tokens=2), layer=1, max_questions=2
    )
    assert extract_trait(loaded, pack, fixed).chosen_layer == 1
    with pytest.raises(ConfigError, match=r"outside 1\.\.3"):
        extract_trait(loaded, pack, ExtractionSettings(layer=7))
    with pytest.raises(ConfigError, match="rollouts must be at least 1"):
        ExtractionSettings(rollouts=0)


def test_the_extract_job_saves_what_extract_trait_finds(
    tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    pack = validate_pack(with_answers())
    settings = ExtractionSettings(responses="written", max_questions=12)
    expected = extract_trait(loaded, pack, settings)
    said: list[str] = []
    out = tmp_path / "v.safetensors"
    vector_file = screener.extract(
        [pack], model=loaded, settings=settings, out=out, progress=said.append
    )
    for saved in (vector_file, load_vectors(out)):
        trait = saved.trait(pack.name)
        torch.testing.assert_close(trait.vectors, expected.vectors)
        assert trait.chosen_layer == expected.chosen_layer
        assert trait.heldout_auroc == pytest.approx(expected.heldout_auroc)
    assert said[0].startswith(f"{pack.name}: ")  # the job's progress, from extract_trait on
    # the checks that need no model come first: this model name is never loaded
    with pytest.raises(ConfigError, match="at least one trait"):
        screener.extract([], model="no-such-model", out=out)
    with pytest.raises(ConfigError, match="is a directory"):
        screener.extract([pack], model="no-such-model", out=tmp_path)


def test_imported_reference_vectors_are_the_saved_tensor(
    tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    rows = torch.randn(loaded.model.config.num_hidden_layers + 1, loaded.model.config.hidden_size)
    torch.save(rows, tmp_path / "evil_response_avg_diff.pt")
    vector_file = import_vectors([tmp_path / "evil_response_avg_diff.pt"], layer=2, model=loaded)
    assert list(vector_file.traits) == ["evil"]
    torch.testing.assert_close(vector_file.trait("evil").vectors, rows)
    assert vector_file.trait("evil").chosen_layer == 2
