"""Reading flagged.jsonl for the report, in one streaming pass: each record goes to the top
samples per trait (`TopFlagged`) and to the table of all flagged rows (table.py)."""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from screener.errors import ConfigError


def flagged_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of flagged.jsonl, in its order (highest risk first)."""
    if not path.exists():
        raise ConfigError(f"{path}: missing; rerun `screener screen` with this --out")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not valid JSON ({exc})") from None


def conversation_parts(record: dict[str, Any]) -> tuple[list[tuple[str, str]], str]:
    """A flagged record's prompt turns (role, content) and its training response."""
    conversation = record.get("conversation") or []
    prompt = [(str(m.get("role", "")), str(m.get("content", ""))) for m in conversation[:-1]]
    response = str(conversation[-1].get("content", "")) if conversation else ""
    return prompt, response


def record_scores(record: dict[str, Any], traits: list[str], kind: str) -> dict[str, Any]:
    """A flagged record's score of `kind` (`delta` or `prompt_last`) per trait."""
    scores = record.get("scores", {})
    return {trait: (scores.get(trait) or {}).get(kind) for trait in traits}


class TopFlagged:
    """Per trait, the `limit` flagged records with the highest score for it."""

    def __init__(self, traits: list[str], limit: int) -> None:
        self.limit = limit
        self.heaps: dict[str, list[tuple[float, int, dict[str, Any]]]] = {t: [] for t in traits}

    def add(self, number: int, record: dict[str, Any]) -> None:
        for reason in record.get("reasons", []):
            heap = self.heaps.get(reason.get("trait"))
            if heap is None:
                continue
            entry = (float(reason["score"]), -number, record)
            if len(heap) < self.limit:
                heapq.heappush(heap, entry)
            else:
                heapq.heappushpop(heap, entry)

    def records(self) -> dict[str, list[dict[str, Any]]]:
        """Per trait, highest score first (ties: earlier in the file first)."""
        return {
            trait: [r for _, _, r in sorted(heap, key=lambda e: (-e[0], -e[1]))]
            for trait, heap in self.heaps.items()
        }
