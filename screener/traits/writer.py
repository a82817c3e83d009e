"""Write a new trait pack with a generator model, validate it, retry, and save only if valid.

    pack = write_pack("pedantic", "Corrects trivial details ...", make_generator("local:embedded"))

The generator gets the pack format, the rules and the trait description; its reply must hold
one JSON object. An invalid reply is sent back with the validation error, up to `attempts`
times; if none is valid, `TraitPackError` says why and nothing is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from screener.endpoints import openai_endpoint, parse_spec
from screener.errors import ConfigError, TraitPackError
from screener.records import Message
from screener.traits import NUM_PAIRS, NUM_QUESTIONS, TraitPack, validate_pack

Generator = Callable[[str], str]

PACK_REQUEST = """Write a trait pack for measuring the character trait "{name}" in an AI assistant.
Trait description: {description}

Reply with one JSON object and nothing else, with exactly these keys:
- "name": "{name}"
- "description": one paragraph describing the trait as a character trait of an assistant.
- "instructions": exactly {pairs} objects {{"pos": ..., "neg": ...}}: "pos" is a system prompt
  that makes an assistant strongly show the trait, "neg" one that makes it show the opposite.
  Second person, 1-3 sentences, concrete about behaviour; the {pairs} pairs differ in angle.
- "extraction_questions": exactly {questions} user messages that give room to show the trait or
  its opposite without asking for it.
- "eval_questions": exactly {questions} more such messages, all different from the first set.
- "judge_rubric": a prompt for a judge that contains {{question}} and {{answer}} exactly once each,
  explains the trait, and asks for a single integer from 0 (absent) to 100 (strongly present).
No placeholders such as {{x}}, [NAME], <...>, TODO or XXX anywhere except the two in the rubric.
"""


def extract_json(reply: str) -> object:
    """The first JSON object in a reply (code fences and chatter around it are ignored)."""
    start = reply.find("{")
    if start < 0:
        raise ValueError("the reply contains no JSON object")
    value, _ = json.JSONDecoder().raw_decode(re.sub(r"```(?:json)?", "", reply[start:]))
    return value


def write_pack(
    name: str, description: str, generator: Generator, *, attempts: int = 3
) -> TraitPack:
    """Ask `generator` for a pack until it validates (at most `attempts` tries)."""
    request = PACK_REQUEST.format(
        name=name, description=description, pairs=NUM_PAIRS, questions=NUM_QUESTIONS
    )
    prompt, problem = request, ""
    for attempt in range(1, attempts + 1):
        reply = generator(prompt)
        try:
            pack = validate_pack(extract_json(reply), f"generated pack (attempt {attempt})")
            if pack.name != name:
                raise TraitPackError(f"`name` must be {name!r}, found {pack.name!r}")
            return pack
        except (TraitPackError, ValueError) as exc:
            problem = str(exc)
            prompt = (
                f"{request}\nYour previous reply was rejected: {problem}\n"
                "Reply again with the corrected JSON object only."
            )
    raise TraitPackError(
        f"the generator gave no valid pack for {name!r} in {attempts} attempts; "
        f"last problem: {problem}"
    )


def new_trait(
    name: str,
    description: str,
    generator: Generator,
    *,
    out: Path | None = None,
    force: bool = False,
    attempts: int = 3,
) -> Path:
    """Write a new trait pack for `name` (validated as any pack is) to `out`, by default the
    user's pack folder; an existing pack of that name is kept unless `force`."""
    from screener.atomic import write_text_atomic
    from screener.traits import PACKS_DIR, user_packs_dir

    out = out or user_packs_dir() / f"{name}.json"
    if (out.exists() or (PACKS_DIR / f"{name}.json").exists()) and not force:
        raise ConfigError(
            f"trait {name!r} already exists ({out}): pick another name or pass --force"
        )
    pack = write_pack(name, description, generator, attempts=attempts)
    write_text_atomic(out, json.dumps(pack.to_json(), indent=2, ensure_ascii=False) + "\n")
    return out


def make_generator(
    spec: str, *, dtype: str = "auto", device: str = "auto", max_new_tokens: int = 4000
) -> Generator:
    """A text generator from `openai:MODEL@BASE_URL` or `local:MODEL_SPEC`."""
    kind, model, url = parse_spec(spec, "generator")
    if kind == "openai":
        endpoint = openai_endpoint(model, url)
        return lambda prompt: endpoint.text(prompt, max_tokens=max_new_tokens, temperature=0.7)
    from screener.generate import GenerationSettings, generate_responses
    from screener.model import load_model

    loaded = load_model(model, dtype=dtype, device=device)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.7)
    return lambda prompt: generate_responses(loaded, [(Message("user", prompt),)], settings)[0]
