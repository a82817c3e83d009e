"""The records that flow through screener's stages.

A data file becomes a stream of `Sample` (a usable conversation) and `RejectedRow` (a row that
cannot be used, with the reason) records, in file order. Later stages add to a sample; they
never drop one silently: a sample either carries on or becomes a `RejectedRow`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        """The OpenAI-style dict that chat templates take."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Sample:
    """One training example: a conversation whose last turn is the assistant response.

    id: the row's own id, or a content hash when it has none.
    source, line: the file and 1-based line (JSONL, JSON, CSV) or row (parquet, datasets) it
        came from.
    messages: the prompt turns followed by the response turn.
    original: the untouched input record, so outputs can be written in the input's format.
    format: the dataset format it was read as (`messages`, `sharegpt`, `alpaca`,
        `prompt_response`).
    warnings: things changed or worth knowing (dropped trailing turns, a truncated response).
    """

    id: str
    source: str
    line: int
    messages: tuple[Message, ...]
    original: dict[str, Any]
    format: str
    warnings: tuple[str, ...] = ()

    @property
    def prompt(self) -> tuple[Message, ...]:
        """Every turn before the response, system turns included."""
        return self.messages[:-1]

    @property
    def response(self) -> str:
        """The text of the last assistant turn."""
        return self.messages[-1].content


@dataclass(frozen=True)
class RejectedRow:
    """An input row that cannot be screened, and why."""

    source: str
    line: int
    reason: str
    field: str | None = None
    id: str | None = None
    raw: str | None = None  # the start of an unparseable row, for the rejects file

    def describe(self) -> str:
        """One line naming the file, line and field: `data.jsonl:12 [messages]: reason`."""
        where = f"{self.source}:{self.line}"
        if self.field:
            where += f" [{self.field}]"
        return f"{where}: {self.reason}"
