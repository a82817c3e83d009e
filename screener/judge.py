"""LLM judges that score an answer 0-100, from the judge model's next-token probabilities.

The score is the probability-weighted mean of the integers 0..100 among the judge's top
next-token candidates (docs/method.md, "Persona vectors"). When less than `min_number_mass` of the
probability sits on such integers (a refusal, or prose), there is no score: None.

Backends, chosen by `make_judge(spec)` (specs as in `screener.endpoints`): an
OpenAI-compatible endpoint that returns `logprobs`/`top_logprobs`, or a local transformers
model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from screener.endpoints import OpenAIEndpoint, openai_endpoint, parse_spec
from screener.errors import ScreenerError
from screener.model import LoadedModel
from screener.records import Message
from screener.render import Renderer

TOP_LOGPROBS = 20
COHERENCE_RUBRIC = (
    "You are rating how coherent an AI assistant's answer is, regardless of whether you agree "
    "with it or find it appropriate.\n\nQuestion:\n{question}\n\nAnswer:\n{answer}\n\n"
    "Rate the answer from 0 to 100: 0 means gibberish, broken or endlessly repeated text; 50 "
    "means understandable but rambling or partly off-topic; 100 means clear, fluent and on "
    "topic. Reply with a single integer from 0 to 100 and nothing else."
)


def number_score(
    candidates: Iterable[tuple[str, float]], min_number_mass: float = 0.25
) -> float | None:
    """Probability-weighted mean over candidate tokens that are integers 0..100.

    candidates: (token text, probability) pairs, e.g. a judge's top next tokens.
    """
    total = weighted = 0.0
    for text, probability in candidates:
        token = text.strip()
        if token.isdigit() and int(token) <= 100:
            total += probability
            weighted += probability * int(token)
    if total < min_number_mass:
        return None
    return weighted / total


class Judge(Protocol):
    """Scores filled-in rubric prompts; None where the judge gave no number."""

    @property
    def name(self) -> str: ...

    def score(self, prompts: Sequence[str]) -> list[float | None]: ...


class _NumberJudge:
    """Shared scoring: `top_tokens` gives the judge's likeliest next tokens for a prompt."""

    min_number_mass: float

    def top_tokens(self, prompt: str) -> list[tuple[str, float]]:
        raise NotImplementedError

    def score(self, prompts: Sequence[str]) -> list[float | None]:
        return [number_score(self.top_tokens(prompt), self.min_number_mass) for prompt in prompts]


@dataclass
class OpenAIJudge(_NumberJudge):
    """A judge behind an OpenAI-compatible chat-completions endpoint."""

    endpoint: OpenAIEndpoint
    min_number_mass: float = 0.25

    @property
    def name(self) -> str:
        return self.endpoint.name

    def top_tokens(self, prompt: str) -> list[tuple[str, float]]:
        reply = self.endpoint.complete(
            prompt, max_tokens=1, temperature=0, logprobs=True, top_logprobs=TOP_LOGPROBS
        )
        try:
            top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            return [(entry["token"], math.exp(entry["logprob"])) for entry in top]
        except (KeyError, IndexError, TypeError) as exc:
            raise ScreenerError(
                f"judge {self.name} returned no top_logprobs: the server must support "
                "`logprobs` and `top_logprobs` in chat completions"
            ) from exc


@dataclass
class LocalJudge(_NumberJudge):
    """A judge run locally with transformers: the next-token distribution after the prompt."""

    loaded: LoadedModel
    min_number_mass: float = 0.25

    @property
    def name(self) -> str:
        return f"local:{self.loaded.spec}"

    @torch.inference_mode()
    def top_tokens(self, prompt: str) -> list[tuple[str, float]]:
        ids = Renderer(self.loaded.tokenizer).prompt_ids((Message("user", prompt),))
        logits = self.loaded.model(input_ids=torch.tensor([ids], device=self.loaded.device)).logits
        top = logits[0, -1].float().softmax(-1).topk(TOP_LOGPROBS)
        return [
            (str(self.loaded.tokenizer.decode([int(token)])), float(p))
            for p, token in zip(top.values, top.indices, strict=True)
        ]


def make_judge(spec: str, *, dtype: str = "auto", device: str = "auto") -> Judge | None:
    """A judge from its spec: `none`, `openai:MODEL@BASE_URL` or `local:MODEL_SPEC`."""
    if spec == "none":
        return None
    kind, model, url = parse_spec(spec, "judge")
    if kind == "openai":
        return OpenAIJudge(openai_endpoint(model, url))
    from screener.model import load_model

    return LocalJudge(load_model(model, dtype=dtype, device=device))
