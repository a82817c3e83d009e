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
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from screener.errors import ConfigError

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


def table_rows(flagged: Path, traits: list[str], kind: str) -> dict[str, Any]:
    """The flagged rows of flagged.jsonl (already in risk order), the first MAX_TABLE_ROWS of
    them, with the choices each filter offers."""
    rows: list[dict[str, Any]] = []
    total = 0
    with flagged.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            total += 1
            if len(rows) >= MAX_TABLE_ROWS:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{flagged}:{number}: not valid JSON ({exc})") from None
            conversation = record.get("conversation") or []
            prompt = " / ".join(str(turn.get("content", "")) for turn in conversation[:-1])
            response = str(conversation[-1].get("content", "")) if conversation else ""
            scores = record.get("scores", {})
            rows.append(
                {
                    "order": number,
                    "id": str(record.get("id")),
                    "file": Path(str(record.get("source"))).name,
                    "line": record.get("line"),
                    "risk": record.get("risk"),
                    "category": record.get("category"),
                    "cluster": record.get("cluster"),
                    "traits": [r.get("trait") for r in record.get("reasons", [])],
                    "scores": {t: (scores.get(t) or {}).get(kind) for t in traits},
                    "prompt": prompt[:TEXT_CHARS],
                    "response": response[:TEXT_CHARS],
                }
            )
    options = {
        "trait": list(traits),
        "category": sorted({str(r["category"]) for r in rows}),
        "cluster": sorted({str(r["cluster"]) for r in rows if r["cluster"] is not None}, key=int),
        "file": sorted({r["file"] for r in rows}),
    }
    return {"rows": rows, "traits": list(traits), "options": options, "total": total}
