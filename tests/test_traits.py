"""Trait pack validation: every rule, with its message; and the shipped packs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from screener.errors import TraitPackError
from screener.traits import list_packs, load_pack, validate_pack

SHIPPED = ["apathetic", "evil", "hallucination", "humorous", "impolite", "optimistic", "sycophancy"]


def good_pack() -> dict[str, Any]:
    return {
        "name": "tidy",
        "description": "A tidy assistant keeps every answer neat and well ordered.",
        "instructions": [
            {"pos": f"Be tidy, way {i}.", "neg": f"Be messy, way {i}."} for i in range(5)
        ],
        "extraction_questions": [f"How do I sort drawer number {i}?" for i in range(20)],
        "eval_questions": [f"What goes on shelf number {i}?" for i in range(20)],
        "judge_rubric": "Question: {question}\nAnswer: {answer}\nRate tidiness from 0 to 100.",
    }


def test_shipped_packs_are_valid() -> None:
    assert [p.name for p in list_packs()] == SHIPPED
    assert validate_pack(good_pack()).name == "tidy"


def broken(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(good_pack())
    target = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = keys[-1]
    if value is KeyError:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return data


def with_answers(data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pack with written answers: one pos/neg pair per question."""
    data = copy.deepcopy(data or good_pack())
    for key, questions in (
        ("extraction_answers", "extraction_questions"),
        ("eval_answers", "eval_questions"),
    ):
        data[key] = [{"pos": f"Neatly: {q}", "neg": f"Whatever: {q}"} for q in data[questions]]
    return data


def broken_answers(path: str, value: Any) -> dict[str, Any]:
    data = with_answers()
    key, *rest = path.split(".")
    if rest:
        data[key][int(rest[0])] = value
    elif value is KeyError:
        del data[key]
    else:
        data[key] = value
    return data


RULES = [
    (broken("name", "Tidy!"), "`name` must be lowercase letters and underscores"),
    (broken("description", "tidy"), "`description` must be a sentence or more"),
    (broken("judge_rubric", KeyError), "missing keys ['judge_rubric']"),
    ({**good_pack(), "extra": 1}, "unknown keys ['extra']"),
    (broken("instructions", [{"pos": "a", "neg": "b"}] * 4), "exactly 5 pos/neg pairs"),
    (
        broken("instructions.2", {"pos": "a"}),
        "instructions[2] must be an object with exactly `pos` and `neg`",
    ),
    (broken("instructions.1", {"pos": "same", "neg": "same"}), "instructions[1] has the same text"),
    (
        broken("instructions.0", {"pos": "Be {trait}.", "neg": "x"}),
        "instructions[0] contains a placeholder",
    ),
    (broken("extraction_questions", ["q"] * 19), "exactly 20 entries, found 19"),
    (broken("eval_questions.3", ""), "`eval_questions` must be a list of non-empty strings"),
    (
        broken("eval_questions.4", "Tell me about [NAME]."),
        "eval_questions[4] contains a placeholder",
    ),
    (
        broken("eval_questions.5", "How do I sort drawer number 2?"),
        "eval_questions[5] duplicates extraction_questions[2]",
    ),
    (
        broken("judge_rubric", "Rate {answer} from 0 to 100."),
        "must contain {question} exactly once",
    ),
    (broken("judge_rubric", "{question} {answer} {extra} 0 to 100"), "has braces other than"),
    (broken("judge_rubric", "{question} {answer} rate it"), "score from 0 to 100"),
    (
        broken_answers("eval_answers", KeyError),
        "`extraction_answers` needs `eval_answers` too",
    ),
    (
        broken_answers("extraction_answers", [{"pos": "a", "neg": "b"}] * 19),
        "`extraction_answers` must hold exactly 20 pos/neg pairs, found 19",
    ),
    (broken_answers("eval_answers", "text"), "`eval_answers` must hold exactly 20"),
    (broken_answers("eval_answers.7", ["a", "b"]), "eval_answers[7] must be an object"),
    (
        broken_answers("extraction_answers.3", {"pos": " ", "neg": "b"}),
        "extraction_answers[3] needs non-empty `pos` and `neg` texts",
    ),
    (
        broken_answers("eval_answers.2", {"pos": "Same.", "neg": "Same."}),
        "eval_answers[2] has the same text for `pos` and `neg`",
    ),
    (
        broken_answers("eval_answers.9", {"pos": "Ask [NAME].", "neg": "No."}),
        "eval_answers[9] contains a placeholder",
    ),
    (
        broken_answers(
            "eval_answers.4", {"pos": "Unique.", "neg": "Whatever: How do I sort drawer number 0?"}
        ),
        "eval_answers[4].neg duplicates extraction_answers[0].neg",
    ),
]


@pytest.mark.parametrize(("data", "message"), RULES)
def test_every_rule_has_a_clear_message(data: dict[str, Any], message: str) -> None:
    with pytest.raises(TraitPackError) as info:
        validate_pack(data, "p.json")
    assert str(info.value).startswith("p.json: ")
    assert message in str(info.value)


def test_load_pack_by_path_and_unknown_name(tmp_path: Path) -> None:
    path = tmp_path / "tidy.json"
    path.write_text(json.dumps(good_pack()))
    assert load_pack(path).eval_questions[0] == "What goes on shelf number 0?"
    wrong = tmp_path / "other.json"
    wrong.write_text(json.dumps(good_pack()))
    with pytest.raises(TraitPackError, match=r"named 'tidy' but the file is other\.json"):
        load_pack(wrong)
    with pytest.raises(
        TraitPackError, match="unknown trait 'grumpy': known traits are apathetic, evil"
    ):
        load_pack("grumpy")


def test_judge_prompt_fills_the_placeholders() -> None:
    pack = validate_pack(good_pack())
    assert pack.judge_prompt("Q?", "A!") == "Question: Q?\nAnswer: A!\nRate tidiness from 0 to 100."
    assert len(pack.digest()) == 64 and pack.digest() == validate_pack(good_pack()).digest()


def test_written_answers_are_optional_and_round_trip() -> None:
    plain = validate_pack(good_pack())
    assert not plain.has_written_answers
    assert "extraction_answers" not in plain.to_json()
    assert validate_pack(plain.to_json()) == plain
    written = validate_pack(with_answers())
    assert written.has_written_answers
    assert written.extraction_answers is not None and written.eval_answers is not None
    assert written.eval_answers[3].pos == "Neatly: What goes on shelf number 3?"
    assert validate_pack(written.to_json()) == written
    assert written.digest() != plain.digest()


def test_shipped_packs_carry_written_answers() -> None:
    assert all(pack.has_written_answers for pack in list_packs())
