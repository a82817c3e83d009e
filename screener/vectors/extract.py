"""Extract a persona vector for a trait from its pack (METHOD.md, "Extracting a persona vector").

1. For every (instruction pair, extraction question) and rollout, generate a response with the
   eliciting system prompt and one with the suppressing system prompt.
2. Collect the mean response activation at every layer, with the system prompt in context,
   and take `v_l = mean(pos) - mean(neg)`.
3. (ours) Score each layer on the held-out evaluation questions: generate eliciting and
   suppressing answers the same way, render them as plain (question, answer) conversations
   without the system prompt, as screening sees data, and compute the AUROC of the projection.
   The chosen layer is the best (ties to the middle); `layer` overrides it.

    trait = extract_trait(loaded, load_pack("evil"), ExtractionSettings())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from screener.activations import ActivationCollector, TokenizedInput
from screener.errors import ConfigError, ScreenerError
from screener.generate import GenerationSettings, generate_responses
from screener.model import LoadedModel
from screener.records import Message, Sample
from screener.render import RenderedSample, Renderer
from screener.traits import TraitPack
from screener.vectors.separation import auroc_per_layer, choose_layer, difference_of_means

MIN_PAIRS = 10


@dataclass(frozen=True)
class ExtractionSettings:
    """How responses are generated and which layer is kept."""

    rollouts: int = 1
    generation: GenerationSettings = field(
        default_factory=lambda: GenerationSettings(max_new_tokens=96)
    )
    layer: int | None = None  # None: choose by held-out AUROC
    batch_size: int = 32
    max_questions: int | None = None  # use only the first N questions of each set (quick runs)

    def __post_init__(self) -> None:
        if self.rollouts < 1:
            raise ConfigError("rollouts must be at least 1")
        if self.max_questions is not None and self.max_questions < 1:
            raise ConfigError("max_questions must be at least 1")


@dataclass
class ExtractionResult:
    """A trait's vectors with the evidence behind them."""

    vectors: torch.Tensor  # (L+1, d)
    heldout_auroc: list[float]
    chosen_layer: int
    details: dict[str, object]
    examples: list[tuple[str, str, str]]  # (question, eliciting answer, suppressing answer)


def _prompts(pack: TraitPack, questions: tuple[str, ...], rollouts: int) -> tuple[list, list]:
    pos, neg = [], []
    for pair in pack.instructions:
        for question in questions:
            for _ in range(rollouts):
                pos.append((Message("system", pair.pos), Message("user", question)))
                neg.append((Message("system", pair.neg), Message("user", question)))
    return pos, neg


def _activations(
    loaded: LoadedModel, conversations: list[tuple[Message, ...]], layers: list[int], source: str
) -> torch.Tensor:
    """Mean response activations (n, layers, d) of full conversations."""
    renderer = Renderer(loaded.tokenizer)
    inputs = []
    for index, messages in enumerate(conversations):
        sample = Sample(f"{source}-{index}", source, index + 1, messages, {}, "messages")
        rendered = renderer.render(sample)
        if not isinstance(rendered, RenderedSample):
            raise ScreenerError(f"cannot render a {source} conversation: {rendered.reason}")
        inputs.append(TokenizedInput(rendered.input_ids, rendered.response_start))
    collector = ActivationCollector(
        loaded.model, layers, pad_token_id=loaded.tokenizer.pad_token_id or 0
    )
    return collector.collect(inputs).response_mean


def _answered(prompts: list, answers: list[str]) -> list[tuple[Message, ...]]:
    """Conversations for the prompts that got a non-empty answer."""
    return [
        (*prompt, Message("assistant", answer))
        for prompt, answer in zip(prompts, answers, strict=True)
        if answer.strip()
    ]


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
    pos_prompts, neg_prompts = _prompts(
        pack, pack.extraction_questions[questions], settings.rollouts
    )
    say(f"{pack.name}: generating {2 * len(pos_prompts)} extraction responses")
    answers = generate_responses(
        loaded, pos_prompts + neg_prompts, settings.generation, batch_size=settings.batch_size
    )
    pos = _answered(pos_prompts, answers[: len(pos_prompts)])
    neg = _answered(neg_prompts, answers[len(pos_prompts) :])
    if min(len(pos), len(neg)) < MIN_PAIRS:
        raise ScreenerError(
            f"{pack.name}: only {len(pos)} eliciting and {len(neg)} suppressing responses "
            f"were usable (need {MIN_PAIRS} each): raise --rollouts or --max-new-tokens"
        )
    say(f"{pack.name}: collecting activations at {len(layers)} layers")
    vectors = difference_of_means(
        _activations(loaded, pos, layers, "eliciting"),
        _activations(loaded, neg, layers, "suppressing"),
    )

    eval_pos_prompts, eval_neg_prompts = _prompts(pack, pack.eval_questions[questions], 1)
    say(f"{pack.name}: generating {2 * len(eval_pos_prompts)} held-out responses")
    eval_answers = generate_responses(
        loaded,
        eval_pos_prompts + eval_neg_prompts,
        settings.generation,
        batch_size=settings.batch_size,
    )
    # Held-out answers are scored without their system prompt, as screening sees data.
    without_system = [prompt[1:] for prompt in eval_pos_prompts + eval_neg_prompts]
    n = len(eval_pos_prompts)
    eval_pos = _answered(without_system[:n], eval_answers[:n])
    eval_neg = _answered(without_system[n:], eval_answers[n:])
    aurocs = auroc_per_layer(
        _activations(loaded, eval_pos, layers, "held-out eliciting"),
        _activations(loaded, eval_neg, layers, "held-out suppressing"),
        vectors,
    )
    chosen = settings.layer if settings.layer is not None else choose_layer(aurocs)
    details: dict[str, object] = {
        "pack": pack.name,
        "pack_sha256": pack.digest(),
        "responses_kept": {
            "eliciting": len(pos),
            "suppressing": len(neg),
            "heldout_eliciting": len(eval_pos),
            "heldout_suppressing": len(eval_neg),
        },
        "rollouts": settings.rollouts,
        "questions_used": len(pack.extraction_questions[questions]),
        "generation": settings.generation.as_dict(),
        "judge": None,
        "layer_choice": "given by --layer"
        if settings.layer is not None
        else "best held-out AUROC (ties to the middle)",
    }
    # With the first instruction pair, prompt i * rollouts asks extraction question i.
    examples = [
        (
            question,
            answers[i * settings.rollouts],
            answers[len(pos_prompts) + i * settings.rollouts],
        )
        for i, question in enumerate(pack.extraction_questions[questions][:3])
    ]
    return ExtractionResult(vectors, aurocs, chosen, details, examples)
