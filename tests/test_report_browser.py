"""The report in a real browser (headless Debian Chromium, installed by scripts/test.sh):
a screenshot is produced, the DOM has the expected sections, hostile sample text runs nothing
(also in the flagged-rows table and its search), and the table sorts, filters and searches. A
control page with the same payload left unescaped shows the marker does fire."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from screener.model import LoadedModel
from tests.test_report import SECTIONS, screen_everything
from tests.test_screen import loaded  # noqa: F401

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (scripts/test.sh installs it)"
)
MARKER = "XSS-RAN"  # what every payload in tests.test_report.PAYLOADS sets document.title to


def chromium(page: Path, profile: Path, *extra: str, fragment: str = "") -> str:
    """Run headless Chromium on a local file; return its stdout (the DOM with --dump-dom)."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=3000",  # let load and error handlers fire before the dump
            *extra,
            page.as_uri() + fragment,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def title_of(dom: str) -> str:
    return dom.split("<title>", 1)[1].split("</title>", 1)[0]


def test_report_renders_in_chromium_and_hostile_text_runs_nothing(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    report = screen_everything(loaded, tmp_path) / "report.html"
    dom = chromium(report, tmp_path / "profile", "--dump-dom")
    for section in SECTIONS:
        assert f'id="{section}"' in dom
    assert title_of(dom).startswith("screener report: ")
    assert MARKER not in title_of(dom)
    body = dom.split("</head>", 1)[1]
    assert body.count("<script") == 2  # the table's data and script: the payloads stayed text
    assert "&lt;script&gt;document.title='XSS-RAN'&lt;/script&gt;" in dom

    screenshot = tmp_path / "report.png"
    chromium(report, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,2000")
    header = screenshot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert (width, height) == (1280, 2000)
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_the_marker_fires_when_a_payload_is_left_unescaped(tmp_path: Path) -> None:
    page = tmp_path / "unsafe.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>safe</title></head><body>"
        "<img src=x onerror=\"document.title='XSS-RAN'\"></body></html>"
    )
    assert title_of(chromium(page, tmp_path / "profile", "--dump-dom")) == MARKER


def table_ids(dom: str) -> list[str]:
    """The ids in the flagged-rows table as the browser drew it, top to bottom."""
    body = dom.split('<table id="rows-table">', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr><td>([^<]*)</td>", body)


def test_the_flagged_rows_table_sorts_filters_and_searches(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    run_dir = screen_everything(loaded, tmp_path)
    report = run_dir / "report.html"
    scores = pl.read_parquet(run_dir / "scores.parquet").filter(pl.col("flagged"))
    by_risk = scores.sort(["risk", "source_line"])["id"].to_list()

    dom = chromium(report, tmp_path / "profile", "--dump-dom")
    assert table_ids(dom) == by_risk[::-1]  # every flagged row, highest risk first
    assert f"{len(by_risk)} of {len(by_risk)} rows shown" in dom

    dom = chromium(report, tmp_path / "p2", "--dump-dom", fragment="#rows?sort=risk&desc=0")
    assert table_ids(dom) == by_risk  # sorted by risk, lowest first

    hostile = chromium(report, tmp_path / "p3", "--dump-dom", fragment="#rows?q=xss-ran")
    found = [r for r in scores.iter_rows(named=True) if r["id"] in table_ids(hostile)]
    assert len(found) == 2 and MARKER not in title_of(hostile)  # the two payload rows, inert
    assert "&lt;img src=x onerror=" in hostile

    evil_max = scores.sort("delta_evil", descending=True)["id"].to_list()
    dom = chromium(report, tmp_path / "p4", "--dump-dom", fragment="#rows?trait=evil&sort=evil")
    assert table_ids(dom) == evil_max
    dom = chromium(report, tmp_path / "p5", "--dump-dom", fragment="#rows?category=no-such")
    assert table_ids(dom) == [] and f"0 of {len(by_risk)} rows shown" in dom
