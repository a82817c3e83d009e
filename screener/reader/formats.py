"""Dataset formats: detect which one a record uses and turn it into chat messages.

Supported formats:
- `messages`: `{"messages": [{"role": ..., "content": ...}, ...]}` (OpenAI style).
- `sharegpt`: `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}`.
- `prompt_response`: two columns (default `prompt` and `response`, names configurable); each a
  string, or a list of messages (TRL's conversational prompt/completion style).
- `alpaca`: `instruction`, optional `input`, and `output`.

Whatever the format, the last assistant turn is the response and every turn before it is the
prompt. Problems with one row raise `RowError` with the field at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from screener.errors import RowError
from screener.reader.sources import json_kind
from screener.records import ROLES, Message, Role

FORMATS = ("messages", "sharegpt", "prompt_response", "alpaca")
_SHAREGPT_ROLES: dict[str, Role] = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
    "system": "system",
}  # fmt: skip
_ROLE_ALIASES: dict[str, Role] = {"developer": "system"}


@dataclass(frozen=True)
class FieldNames:
    """Column names the reader looks for; override them for datasets that name things
    differently."""

    prompt: str = "prompt"
    response: str = "response"
    id: str = "id"


def detect_format(record: dict[str, Any], fields: FieldNames) -> str | None:
    """The format a record is in, or None when no known format fits its keys."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if fields.prompt in record and fields.response in record:
        return "prompt_response"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def format_fields(fmt: str, fields: FieldNames) -> list[str]:
    """The fields a record of format `fmt` must have (for error messages)."""
    return {
        "messages": ["messages"],
        "sharegpt": ["conversations"],
        "prompt_response": [fields.prompt, fields.response],
        "alpaca": ["instruction", "output"],
    }[fmt]


def _text(value: Any, field: str) -> str:
    """A turn's content as a string; text-only content-part lists are joined."""
    if isinstance(value, str):
        return value
    if value is None:
        raise RowError("content is null", field)
    if isinstance(value, list):
        texts = []
        for part in value:
            if (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                texts.append(part["text"])
            elif isinstance(part, dict):
                raise RowError(
                    f"content part of type {part.get('type')!r} is not text; only text content "
                    "can be screened",
                    field,
                )
            else:
                raise RowError(
                    f"content part is {json_kind(part)}, expected an object like "
                    '{"type": "text", "text": "..."}',
                    field,
                )
        return "".join(texts)
    raise RowError(f"content is {json_kind(value)}, expected a string", field)


def _turns(
    value: Any, field: str, role_key: str, content_key: str, roles: dict[str, Role]
) -> list[Message]:
    if isinstance(value, str):  # CSV cells hold the turns as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError("expected a list of turns, found text that is not JSON", field) from None
    if not isinstance(value, list):
        raise RowError(f"expected a list of turns, found {json_kind(value)}", field)
    messages = []
    for index, turn in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(turn, dict):
            raise RowError(f"turn is {json_kind(turn)}, expected an object", where)
        if role_key not in turn:
            raise RowError(f"turn has no {role_key!r} field", where)
        raw_role = turn.get(role_key)
        if not isinstance(raw_role, str) or raw_role.lower() not in roles:
            raise RowError(
                f"unknown role {raw_role!r}: expected one of {', '.join(sorted(roles))}",
                f"{where}.{role_key}",
            )
        messages.append(
            Message(roles[raw_role.lower()], _text(turn.get(content_key), f"{where}.{content_key}"))
        )
    return messages


def _chat_roles() -> dict[str, Role]:
    return {**{role: role for role in ROLES}, **_ROLE_ALIASES}


def _conversation(
    messages: list[Message],
    field: str,
    response_field: str | None = None,
    prompt_field: str | None = None,
) -> tuple[tuple[Message, ...], list[str]]:
    """Check a conversation and cut it at its last assistant turn.

    field: the record field holding the turns; response_field and prompt_field: the fields
    holding the response and the prompt when they are columns of their own.
    """
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
    if last is None:
        raise RowError(
            "no assistant turn: the last assistant turn is the response to screen", field
        )
    if not messages[last].content.strip():
        raise RowError(
            "the assistant response is empty", response_field or f"{field}[{last}].content"
        )
    users = [m for m in messages[:last] if m.role == "user"]
    if not users:
        raise RowError("the assistant response has no user turn before it", prompt_field or field)
    if not any(m.content.strip() for m in users):
        raise RowError("every user turn before the response is empty", prompt_field or field)
    warnings = []
    if last < len(messages) - 1:
        warnings.append(f"dropped {len(messages) - 1 - last} turn(s) after the last assistant turn")
    return tuple(messages[: last + 1]), warnings


def to_messages(
    record: dict[str, Any], fmt: str, fields: FieldNames
) -> tuple[tuple[Message, ...], list[str]]:
    """The conversation in `record` (read as `fmt`), plus warnings about what was changed."""
    if fmt == "messages":
        return _conversation(
            _turns(record.get("messages"), "messages", "role", "content", _chat_roles()), "messages"
        )
    if fmt == "sharegpt":
        turns = record.get("conversations")
        role_key, content_key = ("role", "content") if _uses_role_keys(turns) else ("from", "value")
        return _conversation(
            _turns(turns, "conversations", role_key, content_key, _SHAREGPT_ROLES), "conversations"
        )
    if fmt == "prompt_response":
        prompt = _side(record.get(fields.prompt), fields.prompt, "user")
        response = _side(record.get(fields.response), fields.response, "assistant")
        return _conversation(prompt + response, fields.response, fields.response, fields.prompt)
    if fmt == "alpaca":
        instruction = _text(record.get("instruction"), "instruction")
        extra = record.get("input")
        extra = "" if extra is None else _text(extra, "input")
        if not instruction.strip() and not extra.strip():
            raise RowError("the instruction is empty", "instruction")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return _conversation(
            [Message("user", user), Message("assistant", _text(record.get("output"), "output"))],
            "output",
            "output",
        )
    raise RowError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def _uses_role_keys(turns: Any) -> bool:
    return (
        isinstance(turns, list)
        and bool(turns)
        and isinstance(turns[0], dict)
        and "role" in turns[0]
    )


def _side(value: Any, field: str, role: Role) -> list[Message]:
    """A prompt or response column: plain text, or a list of message dicts."""
    if (
        isinstance(value, list)
        and value
        and all(isinstance(t, dict) and "role" in t for t in value)
    ):
        return _turns(value, field, "role", "content", _chat_roles())
    return [Message(role, _text(value, field))]
