"""Property test: whatever rows a JSONL file holds, reading and rendering it never raises
anything but a one-line InputError about the whole file, and every non-blank line ends as
exactly one sample or one rejected row (so kept + flagged + rejected = rows read)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from screener.errors import InputError
from screener.reader import read_dataset
from screener.records import RejectedRow
from screener.render import RenderedSample, Renderer

KEYS = ["id", "messages", "conversations", "prompt", "response", "instruction", "input", "output"]
ROLES = ["user", "assistant", "system", "human", "gpt", "tool", "", "USER"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
turns = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(ROLES) | json_scalars,
        "content": st.text(max_size=40) | json_values,
        "from": st.sampled_from(ROLES),
        "value": st.text(max_size=40),
    },
)
records = st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=8),
    st.lists(turns, max_size=4) | st.text(max_size=40) | json_values,
    max_size=4,
)
lines = st.one_of(
    records.map(lambda r: json.dumps(r)),
    records.map(lambda r: json.dumps(r)[: len(json.dumps(r)) // 2]),  # cut off
    json_values.map(json.dumps),
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
FILE_ERRORS = (
    "no rows to read",
    "cannot tell the dataset format",
    "holds a JSON array",
)


def write(path: Path, rows: list[str]) -> list[int]:
    """Write one row per line (a newline inside a row would split it); return the numbers of
    the lines that are not blank, which are the rows the reader must account for."""
    cleaned = [row.replace("\n", " ").replace("\r", " ") for row in rows]
    path.write_text("".join(f"{row}\n" for row in cleaned), encoding="utf-8")
    return [number for number, row in enumerate(cleaned, start=1) if row.strip()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(lines, min_size=1, max_size=8), good_first=st.booleans())
@pytest.mark.filterwarnings("ignore")
def test_every_row_is_accounted_for(
    tiny_tokenizer: PreTrainedTokenizerFast, rows: list[str], good_first: bool
) -> None:
    if good_first:  # a readable first row, so the format is detected and every row is judged
        chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
        rows = [json.dumps({"messages": chat}), *rows]
    renderer = Renderer(tiny_tokenizer, max_tokens=64)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        expected_lines = write(path, rows)
        reader = read_dataset(path)
        outcomes: list[Any] = []
        try:
            outcomes = list(renderer.render_stream(reader, "reject"))
        except InputError as exc:
            assert any(fragment in str(exc) for fragment in FILE_ERRORS), exc
            assert "\n" not in str(exc) and str(exc).startswith(str(path))
            assert not good_first or "no rows" not in str(exc)
            return
    samples = [o for o in outcomes if isinstance(o, RenderedSample)]
    rejected = [o for o in outcomes if isinstance(o, RejectedRow)]
    assert len(samples) + len(rejected) == len(outcomes) == reader.counts.rows
    lines = [o.line if isinstance(o, RejectedRow) else o.sample.line for o in outcomes]
    assert lines == expected_lines
    assert all(row.reason and "\n" not in row.reason for row in rejected)
    ids = [s.sample.id for s in samples]
    assert len(ids) == len(set(ids))
