"""Who writes the model's own answers: the model here (`generate.py`), or a server that serves
the same weights (`served.py`). Screening, calibration and extraction call `write_answers` and
do not care which.

    texts = write_answers(loaded, prompts, settings, server=None, describe=print)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from screener.batch_plan import BatchBudget
from screener.generate import GenerationSettings, generate_responses
from screener.model import LoadedModel
from screener.records import Message
from screener.render import Renderer
from screener.served import AnswerServer, served_responses


def served_key(loaded: LoadedModel, server: AnswerServer) -> str:
    """The run store's key for answers a server wrote for `loaded`: the weights' fingerprint
    and the served model's name, so answers of two backends or two served models never mix."""
    return f"{loaded.fingerprint}:served:{server.model}"


def write_answers(
    loaded: LoadedModel,
    prompts: Sequence[tuple[Message, ...]],
    settings: GenerationSettings,
    *,
    server: AnswerServer | None = None,
    budget: BatchBudget | None = None,
    progress: Callable[[int], None] | None = None,
    on_answer: Callable[[int, str], None] | None = None,
    describe: Callable[[str], None] | None = None,
) -> list[str]:
    """The answer to each prompt, in prompt order: written by `loaded` (batched by `budget`),
    or by `server` from the prompts rendered with `loaded`'s chat template.

    progress(n): answers done so far; on_answer(i, text): as each answer is ready (a caller
    keeps these if a later one fails); describe(line): once, how the answers are written."""
    if server is None:
        return generate_responses(
            loaded,
            prompts,
            settings,
            budget=budget,
            progress=progress,
            on_answer=on_answer,
            describe=describe,
        )
    renderer = Renderer(loaded.tokenizer)
    texts = [renderer.render_text(p, add_generation_prompt=True) for p in prompts]
    if describe is not None:
        describe(
            f"base responses: {len(prompts)} prompts from {server.model} at {server.url} "
            f"({server.concurrency} requests in flight)"
        )
    return served_responses(server, texts, settings, on_answer=on_answer, progress=progress)
