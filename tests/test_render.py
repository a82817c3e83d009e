"""Rendering with chat templates and the response-token boundary, including awkward templates."""

from __future__ import annotations

import copy
import logging

import pytest
from transformers import PreTrainedTokenizerFast

from screener.records import Message, RejectedRow, Sample
from screener.render import RenderedSample, Renderer


def sample(*turns: tuple[str, str]) -> Sample:
    messages = tuple(Message(role, content) for role, content in turns)  # type: ignore[arg-type]
    return Sample("s1", "data.jsonl", 4, messages, {}, "messages")


QA = sample(("user", "What is the capital of France?"), ("assistant", "Paris is the capital."))


def rendered(result: RenderedSample | RejectedRow) -> RenderedSample:
    assert isinstance(result, RenderedSample), result
    return result


def with_template(
    tokenizer: PreTrainedTokenizerFast, template: str | None
) -> PreTrainedTokenizerFast:
    copied = copy.deepcopy(tokenizer)
    copied.chat_template = template
    return copied


def test_chatml_boundary_is_the_prompt_token_prefix(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    result = rendered(Renderer(tiny_tokenizer).render(QA))
    assert result.boundary == "tokens" and result.warnings == ()
    prompt_text = tiny_tokenizer.apply_chat_template(
        [m.as_dict() for m in QA.prompt], tokenize=False, add_generation_prompt=True
    )
    assert tiny_tokenizer.decode(result.input_ids[: result.response_start]) == prompt_text
    # The injected default system prompt is in both renderings, so it is prompt, not response.
    assert "You are a tiny test assistant." in prompt_text
    response = tiny_tokenizer.decode(result.input_ids[result.response_start :])
    assert response == "Paris is the capital.<|im_end|>\n"


def test_straddling_token_goes_to_the_response(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    # The generation prompt ends in a space that BPE merges into the first response word.
    template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n"
        "{% else %}A: {{ m['content'] }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}A: {% endif %}"
    )
    tokenizer = with_template(tiny_tokenizer, template)
    result = rendered(Renderer(tokenizer).render(QA))
    assert result.boundary == "text"
    assert "boundary found by text" in result.warnings[0]
    prompt_ids = tokenizer("Q: What is the capital of France?\nA: ", add_special_tokens=False)[
        "input_ids"
    ]
    assert list(result.input_ids[: len(prompt_ids)]) != prompt_ids  # really not a token prefix
    assert tokenizer.decode(result.input_ids[result.response_start :]) == " Paris is the capital.\n"


# Like reasoning templates: an empty think block only in the generation prompt.
THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think></think>\n{% endif %}"
)


@pytest.mark.parametrize("response", ["Paris is the capital.", "im", "end", "\n"])
def test_content_boundary_finds_short_responses_that_also_occur_in_markup(
    tiny_tokenizer: PreTrainedTokenizerFast, response: str
) -> None:
    conversation = sample(("user", "Capital?"), ("assistant", response))
    result = rendered(Renderer(with_template(tiny_tokenizer, THINK_TEMPLATE)).render(conversation))
    assert result.boundary == "content"
    expected = f"{response}<|im_end|>\n"
    assert tiny_tokenizer.decode(result.input_ids[result.response_start :]) == expected


def test_content_boundary_rejects_templates_whose_prefix_depends_on_the_response(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    # The text before the answer changes with the answer's length: nothing can be located.
    template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}[{{ m['content'] | length }}]"
        "{% endif %}{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    result = Renderer(with_template(tiny_tokenizer, template)).render(QA)
    assert isinstance(result, RejectedRow)
    assert "the text before it depends on the response" in result.reason


def test_missing_template_uses_plain_format_with_warning(
    tiny_tokenizer: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    tokenizer = with_template(tiny_tokenizer, None)
    with caplog.at_level(logging.WARNING):
        renderer = Renderer(tokenizer)
    assert "no chat template" in caplog.text
    result = rendered(renderer.render(QA))
    assert tokenizer.decode(result.input_ids[: result.response_start]) == (
        "User: What is the capital of France?\n\nAssistant:"
    )
    assert tokenizer.decode(result.input_ids[result.response_start :]) == (
        " Paris is the capital.<|im_end|>\n\n"
    )


def test_template_errors_become_rejected_rows(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    two_users = sample(("user", "a"), ("user", "b"), ("assistant", "c"))
    result = Renderer(with_template(tiny_tokenizer, template)).render(two_users)
    assert isinstance(result, RejectedRow)
    assert (result.source, result.line, result.field, result.id) == (
        "data.jsonl",
        4,
        "messages",
        "s1",
    )
    assert "roles must alternate" in result.reason


def test_long_response_is_truncated_with_warning(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    full = rendered(Renderer(tiny_tokenizer).render(QA))
    limit = full.response_start + 2
    result = rendered(Renderer(tiny_tokenizer, max_tokens=limit).render(QA))
    assert result.input_ids == full.input_ids[:limit]
    assert result.num_response_tokens == 2
    total = full.num_response_tokens
    assert result.warnings == (
        f"response truncated to 2 of {total} tokens to fit the {limit}-token context window",
    )


def test_prompt_longer_than_context_is_rejected(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    full = rendered(Renderer(tiny_tokenizer).render(QA))
    result = Renderer(tiny_tokenizer, max_tokens=full.response_start).render(QA)
    assert isinstance(result, RejectedRow)
    assert result.reason.startswith(f"the prompt is {full.response_start} tokens")
