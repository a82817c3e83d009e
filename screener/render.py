"""Render samples with the model's chat template and find where the response tokens start.

The response tokens of a sample are the tokens of the whole rendered conversation that come
after the rendered prompt (prompt turns + `add_generation_prompt=True`), as docs/method.md defines.
Both are rendered as text and tokenized whole; the pieces are never tokenized apart. The
boundary is found, in order of preference:

1. `tokens`: the prompt's tokens are a prefix of the conversation's tokens (most templates).
2. `text`: the prompt's text is a prefix of the conversation's text but a token straddles the
   seam; the straddling token counts as a response token (needs a fast tokenizer's offsets).
3. `content`: the template renders earlier turns differently once the answer is present (some
   reasoning-model templates do); the response starts where its text appears in the rendering.

A conversation the template refuses, or whose response the template drops, becomes a
`RejectedRow`. Models without a chat template get PLAIN_CHAT_TEMPLATE and a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from screener.errors import InputError, RowError
from screener.reader import BadRowPolicy
from screener.records import Message, RejectedRow, Sample

log = logging.getLogger(__name__)
_RESPONSE_MARKER = "SCREENERRESPONSEMARKER"

# Used for models without a chat template: "System: ...", "User: ...", "Assistant: ..." blocks.
PLAIN_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}"
    "{{ '\\n\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass(frozen=True)
class RenderedSample:
    """A sample as token ids, with the index of its first response token."""

    sample: Sample
    input_ids: tuple[int, ...]
    response_start: int
    boundary: str  # how response_start was found: tokens, text or content
    warnings: tuple[str, ...] = ()

    @property
    def num_prompt_tokens(self) -> int:
        return self.response_start

    @property
    def num_response_tokens(self) -> int:
        return len(self.input_ids) - self.response_start


def context_window(config: Any) -> int | None:
    """The longest sequence the model was built for, from its config, if it says."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def token_limit(config: Any, max_tokens: int | None) -> int | None:
    """The longest sequence to render: `max_tokens` or the model's context window, whichever is
    smaller (None when neither is known)."""
    limits = [x for x in (max_tokens, context_window(config)) if x is not None]
    return min(limits) if limits else None


class Renderer:
    """Turns samples into `RenderedSample`s for one tokenizer.

    max_tokens: sequences longer than this keep their prompt and a truncated response (with a
        warning); a prompt that leaves no room for a response token is rejected.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_tokens: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.template: str | None = None
        if not getattr(tokenizer, "chat_template", None):
            log.warning(
                "the tokenizer has no chat template: using screener's plain "
                "'User: ... Assistant: ...' format (see screener.render.PLAIN_CHAT_TEMPLATE)"
            )
            self.template = PLAIN_CHAT_TEMPLATE

    def render_text(self, messages: tuple[Message, ...], *, add_generation_prompt: bool) -> str:
        """The chat-template text of `messages`."""
        try:
            text = self.tokenizer.apply_chat_template(
                [m.as_dict() for m in messages],
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                chat_template=self.template,
            )
        except Exception as exc:  # jinja raises TemplateError, templates may raise anything
            raise RowError(
                f"the chat template refused this conversation: {exc}", "messages"
            ) from exc
        if not isinstance(text, str):
            raise RowError(
                f"the chat template returned {type(text).__name__}, not text", "messages"
            )
        return text

    def prompt_ids(self, messages: tuple[Message, ...]) -> list[int]:
        """Token ids of a prompt ready for generation (`add_generation_prompt=True`); raises
        RowError when the template refuses it."""
        return self._ids(self.render_text(messages, add_generation_prompt=True))

    def _ids(self, text: str) -> list[int]:
        # The template writes any BOS token itself, so the tokenizer must not add another.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render_stream(
        self, records: Iterable[Sample | RejectedRow], on_bad_row: BadRowPolicy
    ) -> Iterator[RenderedSample | RejectedRow]:
        """Render each sample; rows rejected here obey the same bad-row policy as the
        reader's (`fail` raises an InputError naming the row)."""
        for record in records:
            rendered = record if isinstance(record, RejectedRow) else self.render(record)
            if on_bad_row == "fail" and isinstance(rendered, RejectedRow):
                raise InputError(
                    rendered.reason,
                    source=rendered.source,
                    line=rendered.line,
                    field=rendered.field,
                )
            yield rendered

    def render(self, sample: Sample) -> RenderedSample | RejectedRow:
        """Token ids and response boundary of `sample`, or why it cannot be rendered."""
        try:
            prompt_text = self.render_text(sample.prompt, add_generation_prompt=True)
            full_text = self.render_text(sample.messages, add_generation_prompt=False)
            full_ids, start, boundary = self._boundary(sample, prompt_text, full_text)
        except RowError as exc:
            return RejectedRow(sample.source, sample.line, exc.reason, exc.field, sample.id)
        warnings = list(sample.warnings)
        if boundary != "tokens":
            warnings.append(
                f"response boundary found by {boundary}: the template's prompt "
                "tokens are not a prefix of the conversation's"
            )
        if self.max_tokens is not None and len(full_ids) > self.max_tokens:
            if start >= self.max_tokens:
                return RejectedRow(
                    sample.source,
                    sample.line,
                    f"the prompt is {start} tokens, which leaves no room for the response in "
                    f"the {self.max_tokens}-token context window",
                    "messages",
                    sample.id,
                )
            warnings.append(
                f"response truncated to {self.max_tokens - start} of {len(full_ids) - start} "
                f"tokens to fit the {self.max_tokens}-token context window"
            )
            full_ids = full_ids[: self.max_tokens]
        return RenderedSample(sample, tuple(full_ids), start, boundary, tuple(warnings))

    def _response_offset(self, sample: Sample, full_text: str) -> int:
        """Where the response text starts in `full_text`, for templates that render the prompt
        differently once the answer is present: render again with a marker in place of the
        response, and require everything before the marker to match."""
        marked = (*sample.messages[:-1], Message("assistant", _RESPONSE_MARKER))
        marked_text = self.render_text(marked, add_generation_prompt=False)
        offset = marked_text.find(_RESPONSE_MARKER)
        response = sample.response
        if offset < 0 or full_text[:offset] != marked_text[:offset]:
            raise RowError(
                "the chat template renders this response in a way screener cannot "
                "locate (the text before it depends on the response)",
                "messages",
            )
        if not (
            full_text.startswith(response, offset) or full_text.startswith(response.strip(), offset)
        ):
            raise RowError("the chat template does not reproduce the response text", "messages")
        return offset

    def _boundary(
        self, sample: Sample, prompt_text: str, full_text: str
    ) -> tuple[list[int], int, str]:
        prompt_ids = self._ids(prompt_text)
        encoded = self.tokenizer(
            full_text, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast
        )
        full_ids = list(encoded["input_ids"])
        if len(full_ids) > len(prompt_ids) and full_ids[: len(prompt_ids)] == prompt_ids:
            return full_ids, len(prompt_ids), "tokens"
        if full_text.startswith(prompt_text):
            char, boundary = len(prompt_text), "text"
        else:
            char, boundary = self._response_offset(sample, full_text), "content"
        if not self.tokenizer.is_fast:
            raise RowError(
                "the prompt's tokens are not a prefix of the conversation's, and this (slow) "
                "tokenizer gives no character offsets to place the boundary: use a fast tokenizer",
                "messages",
            )
        offsets = encoded["offset_mapping"]
        start = next((i for i, (_, end) in enumerate(offsets) if end > char), len(full_ids))
        if start >= len(full_ids):
            raise RowError("the rendered conversation has no response tokens", "messages")
        return full_ids, start, boundary
