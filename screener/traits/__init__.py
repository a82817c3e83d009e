"""Trait packs: what a persona trait is and how to elicit it, as validated JSON files.

A pack holds a name, a description, 5 pairs of eliciting/suppressing system prompts, 20
extraction questions, 20 held-out evaluation questions and a judge rubric (METHOD.md,
"Extracting a persona vector"). screener ships packs for seven traits in `packs/`; users can pass
a path to their own.

    pack = load_pack("evil")          # a shipped pack, or a path to a .json file
    [p.name for p in list_packs()]
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class InstructionPair:
    """System prompts that elicit (`pos`) and suppress (`neg`) the trait."""

    pos: str
    neg: str


@dataclass(frozen=True)
class TraitPack:
    """A validated trait pack."""

    name: str
    description: str
    instructions: tuple[InstructionPair, ...]
    extraction_questions: tuple[str, ...]
    eval_questions: tuple[str, ...]
    judge_rubric: str

    def to_json(self) -> dict[str, Any]:
        """The pack as the JSON object it is stored as."""
        data = asdict(self)
        for key in ("instructions", "extraction_questions", "eval_questions"):
            data[key] = list(data[key])
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


def validate_pack(data: Any, where: str = "trait pack") -> TraitPack:
    """Check every rule of the pack format; raise TraitPackError naming the first broken one."""
    if not isinstance(data, dict):
        raise TraitPackError(f"{where}: a trait pack must be a JSON object")
    missing = [key for key in _KEYS if key not in data]
    extra = sorted(set(data) - set(_KEYS))
    if missing or extra:
        raise TraitPackError(
            f"{where}: missing keys {missing}, unknown keys {extra}; "
            f"a pack has exactly {list(_KEYS)}"
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
    pairs = data["instructions"]
    if not isinstance(pairs, list) or len(pairs) != NUM_PAIRS:
        raise TraitPackError(f"{where}: `instructions` must hold exactly {NUM_PAIRS} pos/neg pairs")
    instructions = []
    for index, pair in enumerate(pairs):
        if not isinstance(pair, dict) or set(pair) != {"pos", "neg"}:
            raise TraitPackError(
                f"{where}: instructions[{index}] must be an object with exactly `pos` and `neg`"
            )
        pos, neg = pair["pos"], pair["neg"]
        if not (isinstance(pos, str) and isinstance(neg, str) and pos.strip() and neg.strip()):
            raise TraitPackError(
                f"{where}: instructions[{index}] needs non-empty `pos` and `neg` texts"
            )
        if pos.strip() == neg.strip():
            raise TraitPackError(
                f"{where}: instructions[{index}] has the same text for `pos` and `neg`"
            )
        if _PLACEHOLDER.search(pos + neg):
            raise TraitPackError(
                f"{where}: instructions[{index}] contains a placeholder or bracket"
            )
        instructions.append(InstructionPair(pos.strip(), neg.strip()))
    extraction = _strings(data, "extraction_questions", NUM_QUESTIONS, where)
    evaluation = _strings(data, "eval_questions", NUM_QUESTIONS, where)
    seen: dict[str, str] = {}
    for key, questions in (("extraction_questions", extraction), ("eval_questions", evaluation)):
        for index, question in enumerate(questions):
            normal = " ".join(question.lower().split())
            if normal in seen:
                raise TraitPackError(
                    f"{where}: {key}[{index}] duplicates {seen[normal]}: {question!r}"
                )
            seen[normal] = f"{key}[{index}]"
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
    return TraitPack(
        name, description.strip(), tuple(instructions), extraction, evaluation, rubric.strip()
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
