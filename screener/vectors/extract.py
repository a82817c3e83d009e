"""Extract a persona vector for a trait from its pack (docs/method.md, "Persona vectors").

1. For every (instruction pair, extraction question) and rollout, generate a response with the
   eliciting system prompt and one with the suppressing system prompt.
   (ours) Or, with `responses="written"`, take the pack's written answers instead: for every
   question one that shows the trait and one that does not, as plain (question, answer)
   conversations. For target models too weak to role-play on instruction: their generated
   "eliciting" answers do not show the trait, so the contrast would only capture the system
   prompt.
2. Collect the mean response activation at every layer, with the system prompt (if any) in
   context, and take `v_l = mean(pos) - mean(neg)`.
   With a judge, a pair is kept only if the eliciting answer scores >= 50 for the trait, the
   suppressing one < 50, and both >= 50 for coherence (thresholds configurable).
3. (ours) Score each layer on the held-out evaluation questions: eliciting and suppressing
   answers obtained the same way, rendered as plain (question, answer) conversations without
   the system prompt, as screening sees data; the AUROC of the projection and its effect size.
   The chosen layer has the best AUROC (ties to the larger effect size, then to the middle);
   `layer` overrides it.

    trait = extract_trait(loaded, load_pack("evil"), ExtractionSettings())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from screener.activations import ActivationCollector, TokenizedInput
from screener.answers import write_answers
from screener.batch_plan import default_budget
from screener.errors import ConfigError, ScreenerError
from screener.generate import GenerationSettings
from screener.judge import COHERENCE_RUBRIC, Judge
from screener.model import LoadedModel, dtype_name
from screener.records import Message, Sample
from screener.render import RenderedSample, Renderer
from screener.served import AnswerServer
from screener.traits import RESPONSE_SOURCES, ContrastPair, ResponseSource, TraitPack
from screener.vectors.separation import (
    auroc_per_layer,
    choose_layer,
    difference_of_means,
    separation_per_layer,
)

MIN_PAIRS = 10
Conversation = tuple[Message, ...]


@dataclass(frozen=True)
class ExtractionSettings:
    """How responses are generated, filtered and which layer is kept."""

    rollouts: int = 1  # generated responses only
    generation: GenerationSettings = field(
        default_factory=lambda: GenerationSettings(max_new_tokens=96)
    )
    layer: int | None = None  # None: choose by held-out AUROC
    max_batch_rows: int | None = None  # most prompts per generation batch; None: device default
    max_questions: int | None = None  # use only the first N questions of each set (quick runs)
    judge: Judge | None = None
    trait_threshold: float = 50.0
    coherence_threshold: float = 50.0
    min_pairs: int = MIN_PAIRS
    responses: ResponseSource = "generated"
    server: AnswerServer | None = None  # a server writes the generated responses instead

    def __post_init__(self) -> None:
        if self.responses not in RESPONSE_SOURCES:
            raise ConfigError(
                f"responses must be one of {', '.join(RESPONSE_SOURCES)}, not {self.responses!r}"
            )
        if self.rollouts < 1:
            raise ConfigError("rollouts must be at least 1")
        if self.max_questions is not None and self.max_questions < 1:
            raise ConfigError("max_questions must be at least 1")


@dataclass
class ExtractionResult:
    """A trait's vectors with the evidence behind them."""

    vectors: torch.Tensor  # (L+1, d)
    heldout_auroc: list[float]
    heldout_separation: list[float]
    chosen_layer: int
    details: dict[str, object]
    examples: list[tuple[str, str, str]]  # (question, eliciting answer, suppressing answer)


@dataclass(frozen=True)
class _Pair:
    """The eliciting and suppressing conversation for one (instruction, question, rollout)."""

    question: str
    positive: Conversation
    negative: Conversation


def _generate_pairs(
    loaded: LoadedModel,
    pack: TraitPack,
    questions: tuple[str, ...],
    rollouts: int,
    settings: ExtractionSettings,
    say: Callable[[str], None],
) -> tuple[list[_Pair], int]:
    """Answer every (instruction, question, rollout) both ways; keep pairs with two answers."""
    prompts = [
        (pair, question)
        for pair in pack.instructions
        for question in questions
        for _ in range(rollouts)
    ]
    pos = [(Message("system", p.pos), Message("user", q)) for p, q in prompts]
    neg = [(Message("system", p.neg), Message("user", q)) for p, q in prompts]
    total = len(pos) + len(neg)
    answers = write_answers(
        loaded,
        pos + neg,
        settings.generation,
        server=settings.server,
        budget=default_budget(loaded, settings.max_batch_rows),
        progress=lambda done: say(f"{pack.name}:   {done}/{total} responses"),
    )
    pairs = []
    for index, (_, question) in enumerate(prompts):
        yes, no = answers[index], answers[len(prompts) + index]
        if yes.strip() and no.strip():
            pairs.append(
                _Pair(
                    question,
                    (*pos[index], Message("assistant", yes)),
                    (*neg[index], Message("assistant", no)),
                )
            )
    return pairs, len(prompts)


def _written_pairs(
    questions: tuple[str, ...], answers: tuple[ContrastPair, ...]
) -> tuple[list[_Pair], int]:
    """The pack's written answers as plain (question, answer) conversations."""
    pairs = [
        _Pair(
            question,
            (Message("user", question), Message("assistant", answer.pos)),
            (Message("user", question), Message("assistant", answer.neg)),
        )
        for question, answer in zip(questions, answers, strict=True)
    ]
    return pairs, len(pairs)


def _pairs_for(
    loaded: LoadedModel,
    pack: TraitPack,
    heldout: bool,
    settings: ExtractionSettings,
    say: Callable[[str], None],
) -> tuple[list[_Pair], int]:
    """The extraction (or held-out) pairs the settings ask for, before any judge."""
    questions = pack.eval_questions if heldout else pack.extraction_questions
    used = slice(settings.max_questions)
    if settings.responses == "generated":
        rollouts = 1 if heldout else settings.rollouts
        return _generate_pairs(loaded, pack, questions[used], rollouts, settings, say)
    answers = pack.eval_answers if heldout else pack.extraction_answers
    if answers is None:
        raise ConfigError(
            f"trait pack {pack.name!r} has no written answers (`extraction_answers` and "
            "`eval_answers`): add them to the pack, or extract from generated responses"
        )
    return _written_pairs(questions[used], answers[used])


def _judged(pairs: list[_Pair], pack: TraitPack, settings: ExtractionSettings) -> list[_Pair]:
    """The pairs the judge confirms: the eliciting answer shows the trait, the suppressing one
    does not, and both are coherent."""
    judge = settings.judge
    if judge is None:
        return pairs
    answers = [(p.question, side[-1].content) for p in pairs for side in (p.positive, p.negative)]
    trait = judge.score([pack.judge_prompt(q, a) for q, a in answers])
    coherence = judge.score(
        [COHERENCE_RUBRIC.replace("{question}", q).replace("{answer}", a) for q, a in answers]
    )
    kept = []
    for index, pair in enumerate(pairs):
        pos_trait, neg_trait = trait[2 * index], trait[2 * index + 1]
        coherent = [coherence[2 * index], coherence[2 * index + 1]]
        if (
            pos_trait is not None
            and neg_trait is not None
            and pos_trait >= settings.trait_threshold > neg_trait
            and all(c is not None and c >= settings.coherence_threshold for c in coherent)
        ):
            kept.append(pair)
    return kept


def _activations(
    loaded: LoadedModel, conversations: list[Conversation], layers: list[int], source: str
) -> torch.Tensor:
    """Mean response activations (n, layers, d) of full conversations."""
    renderer = Renderer(loaded.tokenizer)
    inputs = []
    for index, messages in enumerate(conversations):
        rendered = renderer.render(
            Sample(f"{source}-{index}", source, index + 1, messages, {}, "messages")
        )
        if not isinstance(rendered, RenderedSample):
            raise ScreenerError(f"cannot render a {source} conversation: {rendered.reason}")
        inputs.append(TokenizedInput(rendered.input_ids, rendered.response_start))
    return ActivationCollector(loaded.model, layers).collect(inputs).response_mean


def _without_system(conversation: Conversation) -> Conversation:
    return tuple(m for m in conversation if m.role != "system")


def extract_trait(
    loaded: LoadedModel,
    pack: TraitPack,
    settings: ExtractionSettings,
    *,
    progress: Callable[[str], None] | None = None,
) -> ExtractionResult:
    """Generate contrastive responses, take the difference of means, score every layer."""
    say = progress or (lambda message: None)
    num_layers = int(loaded.model.config.get_text_config().num_hidden_layers)
    layers = list(range(num_layers + 1))
    if settings.layer is not None and not 1 <= settings.layer <= num_layers:
        raise ConfigError(f"--layer {settings.layer} is outside 1..{num_layers} for this model")
    questions = slice(settings.max_questions)

    say(f"{pack.name}: {settings.responses} extraction responses")
    generated, asked = _pairs_for(loaded, pack, False, settings, say)
    pairs = _judged(generated, pack, settings)
    if len(pairs) < settings.min_pairs:
        if settings.judge is not None:
            why = "the judge rejected the rest"
        elif settings.responses == "written":
            why = "the pack's written answers in use, see --max-questions"
        else:
            why = "the others had an empty answer"
        raise ScreenerError(
            f"{pack.name}: only {len(pairs)} of {asked} response pairs survived ({why}); at least "
            f"{settings.min_pairs} are needed: raise --rollouts, improve the trait pack's "
            "instructions, or use a stronger model"
        )
    say(f"{pack.name}: collecting activations at {len(layers)} layers from {len(pairs)} pairs")
    vectors = difference_of_means(
        _activations(loaded, [p.positive for p in pairs], layers, "eliciting"),
        _activations(loaded, [p.negative for p in pairs], layers, "suppressing"),
    )

    say(f"{pack.name}: {settings.responses} held-out responses")
    heldout_generated, heldout_asked = _pairs_for(loaded, pack, True, settings, say)
    heldout = _judged(heldout_generated, pack, settings)
    if len(heldout) < 2:
        raise ScreenerError(
            f"{pack.name}: only {len(heldout)} held-out pairs survived; need at least 2"
        )
    # Held-out answers are scored without their system prompt, as screening sees data.
    heldout_pos = _activations(
        loaded, [_without_system(p.positive) for p in heldout], layers, "held-out eliciting"
    )
    heldout_neg = _activations(
        loaded, [_without_system(p.negative) for p in heldout], layers, "held-out suppressing"
    )
    aurocs = auroc_per_layer(heldout_pos, heldout_neg, vectors)
    separations = separation_per_layer(heldout_pos, heldout_neg, vectors)
    chosen = settings.layer if settings.layer is not None else choose_layer(aurocs, separations)
    details: dict[str, object] = {
        "pack": pack.name,
        "pack_sha256": pack.digest(),
        "responses": settings.responses,
        "dtype": dtype_name(loaded.dtype),  # activations in another precision differ by ~1%
        "pairs": {
            "extraction_asked": asked,
            "extraction_answered": len(generated),
            "extraction_kept": len(pairs),
            "heldout_asked": heldout_asked,
            "heldout_answered": len(heldout_generated),
            "heldout_kept": len(heldout),
        },
        "rollouts": settings.rollouts if settings.responses == "generated" else None,
        "questions_used": len(pack.extraction_questions[questions]),
        "generation": settings.generation.as_dict() if settings.responses == "generated" else None,
        "heldout_separation": [round(value, 4) for value in separations],
        "judge": None
        if settings.judge is None
        else {
            "name": settings.judge.name,
            "trait_threshold": settings.trait_threshold,
            "coherence_threshold": settings.coherence_threshold,
        },
        "layer_choice": "given by --layer"
        if settings.layer is not None
        else "best held-out AUROC over layers 1..L (ties to the larger effect size, then to the "
        "middle)",
    }
    examples = [(p.question, p.positive[-1].content, p.negative[-1].content) for p in pairs[:3]]
    return ExtractionResult(vectors, aurocs, separations, chosen, details, examples)
