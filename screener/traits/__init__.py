"""Trait packs: what a persona trait is and how to elicit it, as validated JSON files.

A pack holds a name, a description, 5 pairs of eliciting/suppressing system prompts, 20
extraction questions, 20 held-out evaluation questions and a judge rubric (docs/method.md,
"Persona vectors"). screener ships packs for seven traits in `packs/`; users can pass
a path to their own.

(ours) A pack may also carry written answers, `extraction_answers` and `eval_answers`: for every
question one answer that shows the trait (`pos`) and one that does not (`neg`). Extraction uses
them instead of generated responses when asked (`--responses written`), for target models too
weak to role-play the trait on instruction (the embedded 135M model is one).

    pack = load_pack("evil")          # a shipped pack, or a path to a .json file
    [p.name for p in list_packs()]
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from screener.errors import TraitPackError
from screener.paths import state_root

PACKS_DIR = Path(__file__).parent / "packs"


def user_packs_dir() -> Path:
    """Where `screener traits new` saves packs: `traits/` under the state root."""
    return state_root() / "traits"


NUM_PAIRS = 5
NUM_QUESTIONS = 20
_NAME = re.compile(r"^[a-z][a-z_]*$")
_PLACEHOLDER = re.compile(r"[{}\[\]<>]|\bTODO\b|\bXXX\b")
_KEYS = (
    "name",
    "description",
    "instructions",
    "extraction_questions",
    "eval_questions",
    "judge_rubric",
)
_ANSWER_KEYS = ("extraction_answers", "eval_answers")

# Where extraction takes its contrasting responses from: the target model's answers under the
# eliciting and suppressing system prompts, or the pack's written answers.
ResponseSource = Literal["generated", "written"]
RESPONSE_SOURCES: tuple[ResponseSource, ...] = ("generated", "written")


@dataclass(frozen=True)
class ContrastPair:
    """Two texts about the same thing: one that shows the trait (`pos`), one that does not
    (`neg`). System prompts that elicit and suppress it, or written answers to one question."""

    pos: str
    neg: str


@dataclass(frozen=True)
class TraitPack:
    """A validated trait pack."""

    name: str
    description: str
    instructions: tuple[ContrastPair, ...]
    extraction_questions: tuple[str, ...]
    eval_questions: tuple[str, ...]
    judge_rubric: str
    # Written answers, one pair per question in the same order, or None when the pack has none.
    extraction_answers: tuple[ContrastPair, ...] | None = None
    eval_answers: tuple[ContrastPair, ...] | None = None

    @property
    def has_written_answers(self) -> bool:
        return self.extraction_answers is not None and self.eval_answers is not None

    def to_json(self) -> dict[str, Any]:
        """The pack as the JSON object it is stored as (answer keys only when present)."""
        data = asdict(self)
        for key, value in list(data.items()):
            if value is None:
                del data[key]
            elif isinstance(value, tuple):
                data[key] = list(value)
        return data

    def digest(self) -> str:
        """SHA-256 of the pack's canonical JSON, to record which pack made a vector."""
        canonical = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def judge_prompt(self, question: str, answer: str) -> str:
        """The rubric with the question and answer filled in."""
        return self.judge_rubric.replace("{question}", question).replace("{answer}", answer)


def _strings(data: dict[str, Any], key: str, count: int, where: str) -> tuple[str, ...]:
    values = data.get(key)
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
        raise TraitPackError(f"{where}: `{key}` must be a list of non-empty strings")
    if len(values) != count:
        raise TraitPackError(
            f"{where}: `{key}` must hold exactly {count} entries, found {len(values)}"
        )
    for index, value in enumerate(values):
        if _PLACEHOLDER.search(value):
            raise TraitPackError(
                f"{where}: {key}[{index}] contains a placeholder or bracket: {value!r}"
            )
    return tuple(v.strip() for v in values)


def _refuse_duplicates(where: str, entries: Iterable[tuple[str, str]]) -> None:
    """Raise on the first text that repeats an earlier one, ignoring case and spacing; entries
    are (label for the message, text)."""
    seen: dict[str, str] = {}
    for label, text in entries:
        normal = " ".join(text.lower().split())
        if normal in seen:
            raise TraitPackError(f"{where}: {label} duplicates {seen[normal]}: {text!r}")
        seen[normal] = label


def _pairs(data: dict[str, Any], key: str, count: int, where: str) -> tuple[ContrastPair, ...]:
    """A list of exactly `count` {"pos": text, "neg": text} objects with different texts."""
    pairs = data[key]
    if not isinstance(pairs, list) or len(pairs) != count:
        found = f"{len(pairs)}" if isinstance(pairs, list) else "no list"
        raise TraitPackError(
            f"{where}: `{key}` must hold exactly {count} pos/neg pairs, found {found}"
        )
    parsed = []
    for index, pair in enumerate(pairs):
        if not isinstance(pair, dict) or set(pair) != {"pos", "neg"}:
            raise TraitPackError(
                f"{where}: {key}[{index}] must be an object with exactly `pos` and `neg`"
            )
        pos, neg = pair["pos"], pair["neg"]
        if not (isinstance(pos, str) and isinstance(neg, str) and pos.strip() and neg.strip()):
            raise TraitPackError(f"{where}: {key}[{index}] needs non-empty `pos` and `neg` texts")
        if pos.strip() == neg.strip():
            raise TraitPackError(f"{where}: {key}[{index}] has the same text for `pos` and `neg`")
        if _PLACEHOLDER.search(pos + neg):
            raise TraitPackError(f"{where}: {key}[{index}] contains a placeholder or bracket")
        parsed.append(ContrastPair(pos.strip(), neg.strip()))
    return tuple(parsed)


def _answers(data: dict[str, Any], where: str) -> tuple[tuple[ContrastPair, ...] | None, ...]:
    """The optional written answers: both lists or neither, no answer used twice."""
    present = [key for key in _ANSWER_KEYS if key in data]
    if not present:
        return None, None
    if len(present) == 1:
        missing = next(key for key in _ANSWER_KEYS if key not in data)
        raise TraitPackError(
            f"{where}: `{present[0]}` needs `{missing}` too (written answers come for both "
            "question sets or for neither)"
        )
    extraction = _pairs(data, "extraction_answers", NUM_QUESTIONS, where)
    evaluation = _pairs(data, "eval_answers", NUM_QUESTIONS, where)
    _refuse_duplicates(
        where,
        (
            (f"{key}[{index}].{side}", text)
            for key, pairs in (("extraction_answers", extraction), ("eval_answers", evaluation))
            for index, pair in enumerate(pairs)
            for side, text in (("pos", pair.pos), ("neg", pair.neg))
        ),
    )
    return extraction, evaluation


def validate_pack(data: Any, where: str = "trait pack") -> TraitPack:
    """Check every rule of the pack format; raise TraitPackError naming the first broken one."""
    if not isinstance(data, dict):
        raise TraitPackError(f"{where}: a trait pack must be a JSON object")
    missing = [key for key in _KEYS if key not in data]
    extra = sorted(set(data) - set(_KEYS) - set(_ANSWER_KEYS))
    if missing or extra:
        raise TraitPackError(
            f"{where}: missing keys {missing}, unknown keys {extra}; "
            f"a pack has exactly {list(_KEYS)}, and optionally {list(_ANSWER_KEYS)}"
        )
    name = data["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise TraitPackError(
            f"{where}: `name` must be lowercase letters and underscores, found {name!r}"
        )
    description = data["description"]
    if not isinstance(description, str) or len(description.split()) < 5:
        raise TraitPackError(
            f"{where}: `description` must be a sentence or more describing the trait"
        )
    instructions = _pairs(data, "instructions", NUM_PAIRS, where)
    extraction = _strings(data, "extraction_questions", NUM_QUESTIONS, where)
    evaluation = _strings(data, "eval_questions", NUM_QUESTIONS, where)
    _refuse_duplicates(
        where,
        (
            (f"{key}[{index}]", question)
            for key, questions in (
                ("extraction_questions", extraction),
                ("eval_questions", evaluation),
            )
            for index, question in enumerate(questions)
        ),
    )
    rubric = data["judge_rubric"]
    if not isinstance(rubric, str):
        raise TraitPackError(f"{where}: `judge_rubric` must be a string")
    for placeholder in ("{question}", "{answer}"):
        if rubric.count(placeholder) != 1:
            raise TraitPackError(f"{where}: `judge_rubric` must contain {placeholder} exactly once")
    if re.search(r"[{}]", rubric.replace("{question}", "").replace("{answer}", "")):
        raise TraitPackError(
            f"{where}: `judge_rubric` has braces other than {{question}} and {{answer}}"
        )
    if "100" not in rubric:
        raise TraitPackError(f"{where}: `judge_rubric` must ask for a score from 0 to 100")
    extraction_answers, eval_answers = _answers(data, where)
    return TraitPack(
        name,
        description.strip(),
        instructions,
        extraction,
        evaluation,
        rubric.strip(),
        extraction_answers,
        eval_answers,
    )


def load_pack(name_or_path: str | Path) -> TraitPack:
    """A shipped pack by name, or a pack file by path."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = PACKS_DIR / f"{name_or_path}.json"
        if not path.exists():
            path = user_packs_dir() / f"{name_or_path}.json"
        if not path.exists():
            known = ", ".join(known_trait_names())
            raise TraitPackError(
                f"unknown trait {name_or_path!r}: known traits are {known} "
                "(or pass the path of a pack .json file)"
            )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraitPackError(f"{path}: cannot read the trait pack: {exc}") from exc
    pack = validate_pack(data, str(path))
    if pack.name != path.stem:
        raise TraitPackError(f"{path}: the pack is named {pack.name!r} but the file is {path.name}")
    return pack


def known_trait_names() -> list[str]:
    """Names of the trait packs that ship with screener, then the user's own."""
    shipped = sorted(path.stem for path in PACKS_DIR.glob("*.json"))
    own = sorted(path.stem for path in user_packs_dir().glob("*.json") if path.stem not in shipped)
    return shipped + own


def list_packs() -> list[TraitPack]:
    """Every known trait pack: shipped ones by name, then the user's own."""
    return [load_pack(name) for name in known_trait_names()]
