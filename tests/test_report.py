"""The HTML report: sections, escaping of hostile sample text, the cap on samples shown, and
re-rendering from the run directory alone (tiny model, no browser; see test_report_browser)."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from screener.cli import main
from screener.model import LoadedModel
from screener.report import PREVIEW_CHARS, write_report
from screener.report.table import script_hash, table_script
from screener.screening import FlagRule
from tests.test_screen import loaded, rows, run, tiny_vectors, write_jsonl  # noqa: F401

PAYLOADS = [
    "<script>document.title='XSS-RAN'</script>",
    "<img src=x onerror=\"document.title='XSS-RAN'\">",
    "</table></div></article><b>bold?</b>",
]
SECTIONS = {"summary", "traits", "categories", "flagged"}


class Page(HTMLParser):
    """Tags, attributes and text of a page, as a browser's parser would split them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def hostile_rows() -> list[dict]:
    records = rows()
    for i, payload in enumerate(PAYLOADS):
        records[i]["messages"][0]["content"] = f"question {payload}"
        records[i]["messages"][1]["content"] = f"answer {payload}"
    return records


def screen_everything(loaded: LoadedModel, tmp: Path, name: str = "run") -> Path:  # noqa: F811
    """Screen the hostile rows with cuts that flag every one of them."""
    tiny_vectors(loaded, tmp / "vectors.safetensors")
    data = write_jsonl(tmp / "data.jsonl", hostile_rows())
    everything = FlagRule({"evil": -1e9, "sycophancy": -1e9})
    run(loaded, data, tmp, name, rule=everything)
    return tmp / name


def test_report_has_every_section_and_shows_hostile_text_as_text(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = screen_everything(loaded, tmp_path)
    html = (out / "report.html").read_text(encoding="utf-8")
    page = Page(html)
    assert {attrs.get("id") for _, attrs in page.tags} >= SECTIONS
    # nothing from the samples became markup: only the table's data block and its own script,
    # no handler, only our own images
    assert page.all("script") == [{"type": "application/json", "id": "rows-data"}, {}]
    data_block = html.split('<script type="application/json" id="rows-data">', 1)[1]
    data_block = data_block.split("</script>", 1)[0]
    assert "<" not in data_block and ">" not in data_block  # escaped: no markup can end it
    rows_data = json.loads(data_block)["rows"]
    assert {r["response"] for r in rows_data} >= {f"answer {p}" for p in PAYLOADS}
    script = html.split("<script>", 1)[1].split("</script>", 1)[0]
    assert script == table_script()
    assert all(not key.startswith("on") for _, attrs in page.tags for key in attrs)
    assert page.all("img") and all(
        (img["src"] or "").startswith("data:image/png;base64,") for img in page.all("img")
    )
    assert page.all("b") == [{}] * len(page.all("b"))  # only the template's own <b>
    text = "".join(page.text)
    for payload in PAYLOADS:
        assert f"question {payload}" in text and f"answer {payload}" in text
    # offline: no external URL anywhere, and a policy that forbids scripts and remote loads
    assert "http://" not in html and "https://" not in html
    policy = [m for m in page.all("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert policy and "default-src 'none'" in (policy[0]["content"] or "")
    assert f"script-src {script_hash()}" in (policy[0]["content"] or "")  # that script alone
    assert "0 kept + 8 flagged + 0 rejected = 8 rows read" in text


def test_top_samples_per_trait_are_the_highest_scoring_flagged_ones(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = screen_everything(loaded, tmp_path)
    target = write_report(out, out=tmp_path / "capped.html", max_samples=3)
    html = target.read_text(encoding="utf-8")
    scores = pl.read_parquet(out / "scores.parquet")
    for trait in ("evil", "sycophancy"):
        expected = scores.sort(f"delta_{trait}", descending=True)["id"].to_list()[:3]
        section = html.split(f'id="flagged-{trait}"')[1].split('<h3 id="flagged-')[0]
        shown = [part.split("</b>")[0] for part in section.split("<header>\n    <b>")[1:]]
        assert shown == expected
        assert f"5 more flagged for {trait}" in section


def test_report_rerenders_from_the_run_directory_alone(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = screen_everything(loaded, tmp_path)
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    (tmp_path / "vectors.safetensors").unlink()
    (tmp_path / "store.duckdb").unlink()
    (moved / "report.html").unlink()
    assert main(["report", str(moved)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {moved / 'report.html'}"
    # the same bytes as the report the screen wrote: plots and text are deterministic
    assert (moved / "report.html").read_bytes() == (out / "report.html").read_bytes()


def test_report_of_a_directory_that_is_not_a_run_says_which_file_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"screener: error: {tmp_path}: no manifest.json, so not a complete")
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_the_dataset_shift_and_its_alarm_are_shown_per_trait(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = screen_everything(loaded, tmp_path)
    cells = traits_table_cells((out / "report.html").read_text(encoding="utf-8"))
    assert cells["evil"][4] == cells["sycophancy"][4] == "n/a"  # no calibration, no reference
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["traits"]["evil"]["dataset_shift"] = {
        "shift": 0.8,
        "ci95_low": 0.62,
        "ci95_high": 0.97,
        "alarm_above": 0.5,
        "alarm": True,
    }
    summary["traits"]["sycophancy"]["dataset_shift"] = {
        "shift": -0.254,
        "ci95_low": -0.4,
        "ci95_high": -0.1,
        "alarm_above": 0.5,
        "alarm": False,
    }
    summary_path.write_text(json.dumps(summary), encoding="utf-8")
    cells = traits_table_cells(write_report(out).read_text(encoding="utf-8"))
    assert cells["evil"][4] == "+0.80 sd alarm"
    assert cells["sycophancy"][4] == "-0.25 sd"


def traits_table_cells(html: str) -> dict[str, list[str]]:
    """The cells of the traits table, per trait, as text with whitespace collapsed."""
    table = html.split('<section id="traits">')[1].split("</table>")[0]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in table.split("<tr>")[2:]]
    text = [[" ".join(re.sub(r"<[^>]+>", "", cell).split()) for cell in row] for row in rows]
    return {row[0]: row for row in text}


def test_the_contents_link_every_section_and_the_page_says_how_to_read_it(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    page = Page((screen_everything(loaded, tmp_path) / "report.html").read_text(encoding="utf-8"))
    ids = {attrs.get("id") for tag, attrs in page.tags if tag in ("section", "h3")} - {None}
    start = next(i for i, (tag, attrs) in enumerate(page.tags) if attrs.get("id") == "contents")
    end = next(i for i, (tag, _) in enumerate(page.tags[start:], start) if tag == "section")
    links = {attrs["href"] for tag, attrs in page.tags[start:end] if tag == "a"}
    assert {f"#{name}" for name in ids} == links  # every section and per-trait part, no other
    assert {"#flagged-evil", "#flagged-sycophancy", "#reading"} <= links
    text = " ".join(page.text)
    for term in ("ΔP (projection difference)", "Cut and flag", "Risk", "Percentile", "Scatter"):
        assert term in text


def test_long_texts_show_a_preview_and_the_whole_text_on_demand(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    records = rows()
    long_answer = "word " * 300 + "THE-END"  # 1,507 characters
    records[0]["messages"][1]["content"] = long_answer
    data = write_jsonl(tmp_path / "data.jsonl", records)
    run(loaded, data, tmp_path, "run", rule=FlagRule({"evil": -1e9, "sycophancy": -1e9}))
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "max-height" not in html  # no text scrolls inside a small box
    page = Page(html)
    assert "show all 1,507 characters" in page.text
    whole = [t for t in page.text if t.endswith("THE-END")]
    assert whole and all(t == long_answer for t in whole)  # the whole text, in <details> only
    previews = [t for t in page.text if t.startswith("word word") and t.endswith("…")]
    assert previews and all(len(t) == PREVIEW_CHARS + 1 for t in previews)
    assert len(page.all("details")) == len(whole)


def test_the_category_by_trait_table_counts_the_flagged_rows(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    run(loaded, data, tmp_path, "run", rule=FlagRule(top_k=3))
    scores = pl.read_parquet(tmp_path / "run" / "scores.parquet").filter(pl.col("flagged"))
    expected: dict[str, list[int]] = {}
    for category, flag_traits in scores.select("category", "flag_traits").iter_rows():
        counts = expected.setdefault(category, [0, 0, 0])
        counts[0] += 1
        for position, trait in enumerate(("evil", "sycophancy"), 1):
            counts[position] += trait in flag_traits
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    table = html.split('<table id="category-by-trait">', 1)[1].split("</table>", 1)[0]
    shown = {
        cells[0]: [int(c) for c in cells[1:]]
        for cells in (
            re.findall(r"<td[^>]*>(?:<a [^>]*>)?([^<]*)", row) for row in table.split("<tr>")[2:]
        )
    }
    assert shown == expected and sum(v[0] for v in shown.values()) == scores.height
    assert sum(v[1] for v in shown.values()) == 3  # top 3 per trait
