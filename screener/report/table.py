"""The report's table of flagged rows: the rows, embedded as JSON, and the small inline script
that sorts, filters and searches them.

The script is a fixed file (table.js); the page's Content-Security-Policy allows that script
alone, by its SHA-256, and no other. The rows are data, never markup: Jinja's `tojson` escapes
`<`, `>`, `&` and `'` in them, and the script puts every value into the page as text. A large
run embeds its MAX_TABLE_ROWS highest-risk flagged rows and says so.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from screener.report.flagged import conversation_parts, record_scores

MAX_TABLE_ROWS = 2000  # flagged rows embedded in the page, highest risk first
TEXT_CHARS = 300  # of the prompt and the response, per row


@cache
def table_script() -> str:
    """The table's script, as it goes into the page."""
    return resources.files("screener.report").joinpath("table.js").read_text(encoding="utf-8")


def script_hash() -> str:
    """The CSP source that allows the table's script and nothing else."""
    digest = hashlib.sha256(table_script().encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


class FlaggedTable:
    """The table's rows, from flagged.jsonl's records in their order (highest risk first):
    the first MAX_TABLE_ROWS, with the choices each filter offers and the count of all."""

    def __init__(self, traits: list[str], kind: str) -> None:
        self.traits, self.kind = traits, kind
        self.rows: list[dict[str, Any]] = []
        self.total = 0

    def add(self, number: int, record: dict[str, Any]) -> None:
        self.total += 1
        if len(self.rows) >= MAX_TABLE_ROWS:
            return
        prompt, response = conversation_parts(record)
        self.rows.append(
            {
                "order": number,
                "id": str(record.get("id")),
                "file": Path(str(record.get("source"))).name,
                "line": record.get("line"),
                "risk": record.get("risk"),
                "category": record.get("category"),
                "cluster": record.get("cluster"),
                "traits": [r.get("trait") for r in record.get("reasons", [])],
                "scores": record_scores(record, self.traits, self.kind),
                "prompt": " / ".join(content for _, content in prompt)[:TEXT_CHARS],
                "response": response[:TEXT_CHARS],
            }
        )

    def as_json(self) -> dict[str, Any]:
        rows = self.rows
        clusters = {str(r["cluster"]) for r in rows if r["cluster"] is not None}
        options = {
            "trait": list(self.traits),
            "category": sorted({str(r["category"]) for r in rows}),
            "cluster": sorted(clusters, key=int),
            "file": sorted({r["file"] for r in rows}),
        }
        return {"rows": rows, "traits": list(self.traits), "options": options, "total": self.total}
