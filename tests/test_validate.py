"""`screener validate` on a tiny random model: subsets chosen by hand-checked rules, rows read
back by file and line, shifts equal to a naive finetune-and-measure recomputation, LoRA and
steering leave the model as it was, and the run directory gains validate.json, validate.png
and a report section."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from screener.cli import main
from screener.errors import ConfigError, ScreenerError
from screener.generate import GenerationSettings
from screener.model import LoadedModel
from screener.reader import FieldNames
from screener.screening import screen
from screener.traits import load_pack
from screener.validation.datasets import (
    TrainingSet,
    choose_subsets,
    load_subsets,
    relocate,
)
from screener.validation.finetune import FinetuneSettings, Steer, finetune
from screener.validation.result import Shift, TrainingRun, ValidationResult, pearson_r
from screener.validation.run import validate, validate_run
from screener.validation.shift import AnswerProjections, answer_projections
from screener.validation.training import ValidateSettings, trained_model
from screener.vectors import load_vectors
from tests.conftest import tiny_loaded
from tests.test_finetune import samples
from tests.test_screen import STEPS, rows, run, screen_options, tiny_vectors, write_jsonl

FULL = ValidateSettings(
    finetune=FinetuneSettings(learning_rate=1e-2, epochs=2, batch_size=3, autocast_bf16=False),
    method="full",
    generation=GenerationSettings(max_new_tokens=3),
)
GENTLE = ValidateSettings(  # a learning rate the tiny model keeps answering after
    finetune=FinetuneSettings(learning_rate=1e-3, batch_size=3, autocast_bf16=False),
    method="full",
    generation=FULL.generation,
)


def screen_rows(loaded: LoadedModel, tmp_path: Path, **options: Any) -> Path:
    """Screen `rows()` with the tiny vectors into tmp_path/run; return the data file."""
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    run(loaded, data, tmp_path, "run", **options)
    return data


@pytest.fixture
def loaded(tiny_tokenizer: PreTrainedTokenizerFast) -> LoadedModel:
    return tiny_loaded("llama", tiny_tokenizer)


def scores_table() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e", "f"],
            "source": ["d.jsonl"] * 6,
            "source_line": [1, 2, 3, 4, 5, 6],
            "delta_evil": [3.0, None, 5.0, 1.0, 5.0, -2.0],
            "delta_sycophancy": [1.0, 9.0, 2.0, 4.0, 6.0, 8.0],
        }
    )


def test_subsets_take_the_highest_and_lowest_rows_by_hand() -> None:
    top, bottom, random = choose_subsets(
        scores_table(), "evil", ["top", "bottom", "random"], 2, traits=["sycophancy"]
    )
    assert top.ids == ("c", "e")  # 5 and 5: the tie keeps input order
    assert top.keys == (("d.jsonl", 3), ("d.jsonl", 5))
    assert top.scores == {"evil": 5.0, "sycophancy": 4.0}
    assert bottom.ids == ("f", "d")  # lowest first
    assert bottom.scores == {"evil": -0.5, "sycophancy": 6.0}
    assert len(random.ids) == 2 and "b" not in random.ids  # b has no score
    table = scores_table().filter(pl.col("id").is_in(list(random.ids)))
    assert random.scores["evil"] == pytest.approx(table["delta_evil"].mean())
    again = choose_subsets(scores_table(), "evil", ["random"], 2, traits=["sycophancy"])[0]
    assert again.ids == random.ids, "the same seed draws the same rows"
    assert (top.name, bottom.name, random.name) == ("top-evil", "bottom-evil", "random")
    all_null = scores_table().with_columns(pl.lit(None, dtype=pl.Float64).alias("delta_sycophancy"))
    [top_again] = choose_subsets(all_null, "evil", ["top"], 2, traits=["sycophancy"])
    assert top_again.ids == ("c", "e") and math.isnan(top_again.scores["sycophancy"])


def test_subset_requests_that_cannot_be_met_are_refused() -> None:
    with pytest.raises(ConfigError, match="only 5 rows have a delta_evil score"):
        choose_subsets(scores_table(), "evil", ["top"], 6)
    with pytest.raises(ConfigError, match="unknown subset 'middle'"):
        choose_subsets(scores_table(), "evil", ["middle"], 2)
    with pytest.raises(ConfigError, match="no column delta_humorous"):
        choose_subsets(scores_table(), "humorous", ["top"], 2)
    with pytest.raises(ConfigError, match=r"would share rows \(5 have a score\): pass --size 2"):
        choose_subsets(scores_table(), "evil", ["top", "bottom"], 3)
    assert len(choose_subsets(scores_table(), "evil", ["top"], 3)[0].ids) == 3  # alone it may


def test_rows_are_read_back_by_file_and_line_and_changes_are_noticed(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", rows()[:4])
    table = pl.DataFrame(
        {
            "id": ["r0", "r1", "r2", "r3"],
            "source": [str(data)] * 4,
            "source_line": [1, 2, 3, 4],
            "delta_evil": [0.0, 4.0, 2.0, 1.0],
        }
    )
    [top] = choose_subsets(table, "evil", ["top"], 2)
    [training_set] = load_subsets([top], data)
    assert [s.id for s in training_set.samples] == ["r1", "r2"]
    assert training_set.samples[0].messages[-1].content == rows()[1]["messages"][1]["content"]
    assert training_set.trait == "evil"

    changed = rows()[:4]
    changed[1]["id"] = "renamed"
    write_jsonl(data, changed)
    with pytest.raises(ScreenerError, match=r"d.jsonl:2: the row's id is now 'renamed'"):
        load_subsets([top], data)
    write_jsonl(data, rows()[:1])
    with pytest.raises(ScreenerError, match=r"d.jsonl:2: .* cannot be read .*\(2 rows missing\)"):
        load_subsets([top], data)


def test_pearson_r_by_hand() -> None:
    # x and y centred: (-1, 0, 1) and (-1, 1, 0): r = 1 / sqrt(2 * 2)
    assert pearson_r([(1, 1), (2, 3), (3, 2)]) == pytest.approx(0.5)
    assert pearson_r([(1, 2), (2, 4), (3, 6)]) == pytest.approx(1.0)
    assert pearson_r([(1, 2), (2, 4)]) is None
    assert pearson_r([(1, 2), (1, 4), (1, 5)]) is None


def test_ordering_reads_the_unsteered_subset_runs() -> None:
    def run_of(name: str, shift: float, coef: float = 0.0) -> TrainingRun:
        return TrainingRun(
            name,
            coef,
            "evil" if coef else None,
            {"evil": Shift(shift, 0.1, 0, 3)},
            6,
            0,
            1,
            1,
            0,
            0,
            "",
        )

    result = ValidationResult(("evil",), FULL, [], {}, [])
    result.runs = [run_of("top-evil", 5), run_of("top-evil", -9, 8), run_of("random", 1)]
    assert result.ordering() == {}
    result.runs.append(run_of("bottom-evil", -1))
    assert result.ordering() == {
        "evil": {"shifts": {"top-evil": 5, "random": 1, "bottom-evil": -1}, "holds": True}
    }
    result.runs[2] = run_of("random", 7)
    assert result.ordering()["evil"]["holds"] is False
    result.runs[2] = run_of("random", math.nan)  # a model trained into silence
    assert result.ordering()["evil"]["holds"] is None


def logits(loaded: LoadedModel) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(torch.tensor([[5, 17, 42, 99, 7]])).logits


def test_lora_training_changes_the_copy_and_leaves_the_model_as_it_was(
    loaded: LoadedModel,
) -> None:
    pytest.importorskip("peft")
    before = logits(loaded)
    settings = ValidateSettings(
        finetune=FinetuneSettings(learning_rate=1e-2, epochs=2, batch_size=3, autocast_bf16=False)
    )
    steer = Steer(2, torch.ones(loaded.model.config.hidden_size), 4.0)
    with trained_model(loaded, samples(), settings, steer=steer) as (trained, log):
        assert log.losses[-1] < log.losses[0]
        assert not torch.allclose(logits(trained), before), "the adapters must change the model"
    torch.testing.assert_close(logits(loaded), before, rtol=0, atol=0)
    names = [name for name, _ in loaded.model.named_modules()]
    assert not any("lora" in name for name in names), "the adapters must be taken out"
    for module in loaded.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_full_finetuning_needs_fp32_weights(loaded: LoadedModel, tmp_path: Path) -> None:
    half = copy.copy(loaded)
    half.dtype = torch.bfloat16
    with (
        pytest.raises(ConfigError, match="full finetuning needs fp32 weights"),
        trained_model(half, samples(), FULL),
    ):
        pass
    vectors = load_vectors(tiny_vectors(loaded, tmp_path / "v.safetensors"))
    training = TrainingSet("mine", "test", samples(), {"evil": 1.0})
    with pytest.raises(ConfigError, match="full finetuning needs fp32"):  # before any measuring
        validate(half, vectors, [training], ["evil"], FULL, progress=pytest.fail)


def test_shifts_equal_a_naive_finetune_and_measure(loaded: LoadedModel, tmp_path: Path) -> None:
    vectors = load_vectors(tiny_vectors(loaded, tmp_path / "v.safetensors"), model=loaded)
    settings = ValidateSettings(
        finetune=FULL.finetune, method="full", steer_coefs=(0.0, 4.0), generation=FULL.generation
    )
    training = TrainingSet("mine", "test", samples(), {"evil": 1.5, "sycophancy": 0.0})
    before = logits(loaded)
    result = validate(loaded, vectors, [training], ["evil", "sycophancy"], settings)
    torch.testing.assert_close(logits(loaded), before, rtol=0, atol=0)

    def measured(model: torch.nn.Module, trait: str) -> float:
        copy_of_loaded = copy.copy(loaded)
        copy_of_loaded.model = model
        questions = load_pack(trait).eval_questions
        vector = vectors.trait(trait)
        return answer_projections(
            copy_of_loaded, questions, vector.unit(), vector.chosen_layer, FULL.generation
        ).mean

    assert [(r.training_set, r.steer_coef, r.steer_trait) for r in result.runs] == [
        ("mine", 0.0, None),
        ("mine", 4.0, "evil"),  # no trait chose the set: the first trait is steered
    ]
    for run_result, coef in zip(result.runs, (0.0, 4.0), strict=True):
        model = copy.deepcopy(loaded.model)
        evil = vectors.trait("evil")
        steer = Steer(evil.chosen_layer, evil.unit(), coef) if coef else None
        finetune(model, loaded.tokenizer, samples(), FULL.finetune, steer=steer)
        model.eval()
        for trait in ("evil", "sycophancy"):
            expected = measured(model, trait) - measured(loaded.model, trait)
            assert run_result.shifts[trait].shift == pytest.approx(expected, abs=1e-4)
            assert run_result.shifts[trait].standard_error > 0
    assert result.runs[0].shifts["evil"].shift != pytest.approx(result.runs[1].shifts["evil"].shift)


def test_validate_run_writes_json_plot_and_report_section(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    screen_rows(loaded, tmp_path, traits=["evil", "sycophancy"])
    run_dir = tmp_path / "run"
    result = validate_run(run_dir, model=loaded, size=3, settings=GENTLE, command="test")

    document = json.loads((run_dir / "validate.json").read_text())
    assert document["traits"] == ["evil"]  # the run's first trait by default
    assert [ts["name"] for ts in document["training_sets"]] == [
        "top-evil",
        "random",
        "bottom-evil",
    ]
    scores = pl.read_parquet(run_dir / "scores.parquet")
    for training_set in document["training_sets"]:
        chosen = scores.filter(pl.col("id").is_in(training_set["ids"]))
        assert training_set["samples"] == 3
        assert training_set["dataset_delta"]["evil"] == pytest.approx(chosen["delta_evil"].mean())
    ranked = scores.sort("delta_evil", descending=True)["id"].to_list()
    assert document["training_sets"][0]["ids"] == ranked[:3]
    assert document["training_sets"][2]["ids"] == ranked[-3:][::-1]
    assert [run["training_set"] for run in document["runs"]] == [
        "top-evil",
        "random",
        "bottom-evil",
    ]
    assert [run["samples_trained"] for run in document["runs"]] == [3, 3, 3]
    top, random, bottom = (run["shift"]["evil"]["shift"] for run in document["runs"])
    assert all(math.isfinite(value) for value in (top, random, bottom))
    assert document["ordering"]["evil"]["holds"] == (top > random > bottom)
    assert document["settings"]["method"] == "full" and document["command"] == "test"
    assert document["pearson_r"]["evil"] == result.correlation()["evil"]
    assert (run_dir / "validate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (run_dir / "report.html").read_text()
    assert 'id="validation"' in report and "bottom-evil" in report
    shift = document["runs"][0]["shift"]["evil"]["shift"]
    assert f"{shift:.2f}" in report


def test_cli_refuses_bad_options_with_one_line(
    loaded: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    screen_rows(loaded, tmp_path)
    assert main(["validate", str(tmp_path / "run"), "--size", "0"]) == 2
    assert "--size must be at least 1" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "run"), "--traits", "humorous"]) == 2
    error = capsys.readouterr().err
    assert "trait 'humorous' was not screened" in error and len(error.strip().splitlines()) == 1


def test_user_datasets_are_screened_for_their_delta_and_trained_on(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    screen_rows(loaded, tmp_path)
    first = write_jsonl(tmp_path / "first.jsonl", rows()[:4])
    second = write_jsonl(tmp_path / "second.jsonl", [*rows()[4:], {"id": "bad", "messages": 3}])
    result = validate_run(tmp_path / "run", model=loaded, datasets=[first, second], settings=GENTLE)
    sets = {ts.name: ts for ts in result.training_sets}
    assert list(sets) == ["first", "second"]
    assert [s.id for s in sets["first"].samples] == ["r0", "r1", "r2", "r3"]
    assert [s.id for s in sets["second"].samples] == ["r4", "r5", "r6", "r7"]
    assert (sets["first"].rejected, sets["second"].rejected) == (0, 1)
    for name, path in (("first", first), ("second", second)):
        screened = screen(
            path,
            model=loaded,
            traits=["evil"],
            **screen_options(
                vectors=tmp_path / "vectors.safetensors", calibration=None, max_new_tokens=STEPS
            ),
        )
        assert sets[name].scores["evil"] == pytest.approx(screened.dataset_scores["evil"].mean)
    assert [r.training_set for r in result.runs] == ["first", "second"]
    assert result.ordering() == {} and result.correlation() == {"evil": None}


def test_a_model_trained_into_silence_gets_no_shift_and_a_note(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = load_vectors(tiny_vectors(loaded, tmp_path / "v.safetensors"), model=loaded)
    untouched = loaded.model

    def silent_after_training(model: LoadedModel, questions, *args, **kwargs):  # type: ignore[no-untyped-def]
        if model.model is untouched:
            return answer_projections(model, questions, *args, **kwargs)
        return AnswerProjections([""] * len(questions), torch.zeros(0), ())  # nothing to say

    monkeypatch.setattr("screener.validation.run.answer_projections", silent_after_training)
    training = TrainingSet("harsh", "test", samples(), {"evil": 1.0})
    result = validate(loaded, vectors, [training], ["evil"], FULL)
    [run_result] = result.runs
    assert math.isnan(run_result.shifts["evil"].shift) and run_result.shifts["evil"].answers == 0
    assert "gave no usable answer to the questions of evil" in result.notes[0]
    document = result.to_json()
    assert document["runs"][0]["shift"]["evil"]["shift"] is None
    json.dumps(document, allow_nan=False)  # valid JSON: no NaN left


class LengthJudge:
    """Scores an answer by its length: min(100, characters of the judge prompt's answer)."""

    name = "length-judge"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def score(self, prompts: list[str]) -> list[float | None]:
        self.prompts += prompts
        return [float(min(100, len(p.rsplit("Answer", 1)[-1]))) for p in prompts]


def test_a_judge_scores_the_answers_before_and_after(loaded: LoadedModel, tmp_path: Path) -> None:
    vectors = load_vectors(tiny_vectors(loaded, tmp_path / "v.safetensors"), model=loaded)
    training = TrainingSet("mine", "test", samples(), {"evil": 1.0})
    judge = LengthJudge()
    result = validate(loaded, vectors, [training], ["evil"], FULL, judge=judge)
    pack = load_pack("evil")

    def judged(model: torch.nn.Module) -> float:
        copy_of_loaded = copy.copy(loaded)
        copy_of_loaded.model = model
        vector = vectors.trait("evil")
        answers = answer_projections(
            copy_of_loaded, pack.eval_questions, vector.unit(), vector.chosen_layer, FULL.generation
        ).answers
        prompts = [
            pack.judge_prompt(q, a) for q, a in zip(pack.eval_questions, answers, strict=True) if a
        ]
        return sum(LengthJudge().score(prompts)) / len(prompts)

    trained = copy.deepcopy(loaded.model)
    finetune(trained, loaded.tokenizer, samples(), FULL.finetune)
    assert result.baseline_judge["evil"] == pytest.approx(judged(loaded.model))
    expected = judged(trained.eval()) - judged(loaded.model)
    assert result.runs[0].shifts["evil"].judge_shift == pytest.approx(expected)
    answered = len(result.baseline["evil"].projections) + result.runs[0].shifts["evil"].answers
    assert len(judge.prompts) == answered  # every non-empty answer, before and after
    assert all("{answer}" not in p for p in judge.prompts)
    document = result.to_json()
    assert document["judge"] == "length-judge"
    assert document["baseline"]["evil"]["judge_mean"] == result.baseline_judge["evil"]


def test_moved_data_is_found_with_data_and_read_with_the_run_s_fields(tmp_path: Path) -> None:
    records = [{"key": f"k{i}", "q": f"question {i}", "a": f"answer {i}"} for i in range(4)]
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    data = write_jsonl(old_dir / "d.jsonl", records)
    fmt, fields = "prompt_response", FieldNames(prompt="q", response="a", id="key")
    table = pl.DataFrame(
        {"id": ["k0", "k1", "k2", "k3"], "source": [str(data)] * 4,
         "source_line": [1, 2, 3, 4], "delta_evil": [1.0, 3.0, 2.0, 0.0]}
    )  # fmt: skip
    [top] = choose_subsets(table, "evil", ["top"], 2)
    old_dir.rename(new_dir)
    with pytest.raises(ScreenerError, match="pass --data with its new path"):
        load_subsets([top], new_dir, fmt=fmt, fields=fields)
    [training_set] = load_subsets([top], new_dir, fmt=fmt, fields=fields, recorded=old_dir)
    assert [s.id for s in training_set.samples] == ["k1", "k2"]
    assert training_set.samples[0].messages[-1].content == "answer 1"
    assert relocate(str(old_dir / "d.jsonl"), old_dir, new_dir) == str(new_dir / "d.jsonl")
    assert relocate("elsewhere.jsonl", old_dir, new_dir) == "elsewhere.jsonl"


def test_several_traits_share_one_random_subset_and_a_new_screen_drops_the_validation(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    data = screen_rows(loaded, tmp_path, traits=["evil", "sycophancy"])
    gentle = ValidateSettings(
        finetune=FinetuneSettings(learning_rate=1e-4, batch_size=4, autocast_bf16=False),
        method="full",
        generation=FULL.generation,
    )
    result = validate_run(
        tmp_path / "run", model=loaded, traits=["evil", "sycophancy"], size=2, settings=gentle
    )
    names = [ts.name for ts in result.training_sets]
    assert names == ["top-evil", "random", "bottom-evil", "top-sycophancy", "bottom-sycophancy"]
    assert set(result.ordering()) == {"evil", "sycophancy"}
    assert result.correlation()["sycophancy"] is not None  # five sets, both traits measured
    assert (tmp_path / "run" / "validate.json").exists()
    run(loaded, data, tmp_path, "run", traits=["evil", "sycophancy"])  # screened again
    assert not (tmp_path / "run" / "validate.json").exists()
    assert not (tmp_path / "run" / "validate.png").exists()
    assert 'id="validation"' not in (tmp_path / "run" / "report.html").read_text()
