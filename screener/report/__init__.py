"""The HTML report of a screening run: one self-contained file (inline CSS, plots as data URIs,
no script, no external URL), readable offline and printable.

    write_report(Path("reports/screen-data"))  # -> reports/screen-data/report.html

Everything comes from the run directory's files, read through `screener.run_directory`
(summary.json, scores.parquet, flagged.jsonl, reference.json), so `screener report RUN_DIR`
re-renders a report without the model. Sample
text goes through Jinja2 with autoescaping only; a Content-Security-Policy that allows no
script backs that up.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import polars as pl
from markupsafe import Markup

from screener.atomic import write_text_atomic
from screener.errors import ConfigError, ScreenerError
from screener.report import plots
from screener.report.flagged import (
    TopFlagged,
    conversation_parts,
    flagged_records,
    record_scores,
)
from screener.report.table import FlaggedTable, script_hash, table_script
from screener.run_directory import (
    FLAGGED_JSONL,
    REPORT_HTML,
    RunFiles,
    load_run,
    run_file,
)
from screener.run_summary import RunSummary
from screener.screening.flags import DATASET_SHIFT_ALARM

DEFAULT_MAX_SAMPLES = 10  # flagged samples shown per trait
PREVIEW_CHARS = 600  # longer texts show this much, and the whole text on demand
MAX_SCATTER_TRAITS = 4  # scatter panels for the first traits only (6 pairs at most)
SCORE_NAMES = {"delta": "ΔP (projection difference)", "prompt_last": "last-prompt projection"}
SHORT_SCORE_NAMES = {"delta": "ΔP", "prompt_last": "last-prompt projection"}


def drawn_columns(summary: RunSummary) -> list[str]:
    """The scores columns the report draws (not a large run's whole table)."""
    return ["flagged", "flag_traits", "category", *(f"{summary.score}_{t}" for t in summary.traits)]


def _column(scores: pl.DataFrame, name: str) -> np.ndarray:
    if name not in scores.columns:
        raise ConfigError(f"scores.parquet has no column {name}; was it written by this version?")
    return scores[name].cast(pl.Float64).fill_null(float("nan")).to_numpy()


def _reference_values(entry: dict[str, Any] | None) -> np.ndarray | None:
    """The reference scores, or their 101 percentiles standing in for them."""
    if not entry:
        return None
    values = entry.get("values") or entry.get("percentiles")
    return None if not values else np.asarray(values, dtype=np.float64)


def _sample_view(record: dict[str, Any], traits: list[str], kind: str) -> dict[str, Any]:
    """The parts of a flagged record the template shows (text stays raw: Jinja escapes it)."""
    prompt, response = conversation_parts(record)
    return {
        "id": str(record.get("id")),
        "where": f"{record.get('source')}:{record.get('line')}",
        "risk": record.get("risk"),
        "category": record.get("category"),
        "category_probability": record.get("category_probability"),
        "cluster": record.get("cluster"),
        "prompt": prompt,
        "response": response,
        "base_response": record.get("base_response"),
        "reasons": record.get("reasons", []),
        "scores": list(record_scores(record, traits, kind).items()),
    }


def category_breakdown(
    scores: pl.DataFrame, counts: dict[str, int], traits: list[str]
) -> list[dict[str, Any]]:
    """Per category (most flagged first): its flagged rows in all, and for each trait how many
    of them are flagged for it (a row flagged for two traits counts under both)."""
    by_trait: dict[tuple[str, str], int] = {}
    if {"category", "flag_traits"} <= set(scores.columns):
        flagged = scores.filter(pl.col("flagged")).select("category", "flag_traits")
        for category, flag_traits in flagged.iter_rows():
            for trait in flag_traits or []:
                by_trait[(category, trait)] = by_trait.get((category, trait), 0) + 1
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [
        {
            "category": category,
            "flagged": total,
            "traits": [by_trait.get((category, trait), 0) for trait in traits],
        }
        for category, total in ordered
    ]


def _validation_view(document: dict[str, Any]) -> dict[str, Any]:
    """The validation section's rows: one per finetune, in the order they ran."""
    traits = list(document.get("traits", []))
    score = document.get("score", "delta")
    sets = {ts["name"]: ts for ts in document.get("training_sets", [])}
    settings = document.get("settings", {})
    rows = []
    for run in document.get("runs", []):
        training_set = sets.get(run["training_set"], {})
        rows.append(
            {
                "name": run["training_set"],
                "origin": training_set.get("origin", ""),
                "samples": training_set.get("samples"),
                "scores": [training_set.get(f"dataset_{score}", {}).get(t) for t in traits],
                "steer_trait": run.get("steer_trait"),
                "steer_coef": run.get("steer_coef"),
                "shifts": [run["shift"][t] for t in traits],
                "first_loss": run.get("first_loss"),
                "last_loss": run.get("last_loss"),
            }
        )
    return {
        "traits": traits,
        "score_label": plots.SHORT_SCORE_NAMES.get(score, score),
        "method": settings.get("method"),
        "finetune": settings.get("finetune", {}),
        "ordering": document.get("ordering") or {},
        "pearson_r": document.get("pearson_r", {}),
        "judge": document.get("judge"),
        "rows": rows,
        "plot": plots.png_data_uri(plots.validation_plot(document)),
        "command": document.get("command", ""),
    }


def _number(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{float(value):.{digits}f}"


def template_environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("screener", "report"),
        autoescape=True,  # every {{ value }} is HTML-escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["number"] = _number
    return environment


def render_report(run: RunFiles, *, max_samples: int = DEFAULT_MAX_SAMPLES) -> str:
    """The report's HTML for a loaded run."""
    if max_samples < 0:
        raise ConfigError("max_samples must be 0 or more")
    summary = run.summary
    traits = list(summary.traits)
    kind = summary.score
    flagged = (
        run.scores["flagged"].to_numpy().astype(bool) if len(run.scores) else np.zeros(0, bool)
    )
    columns = {t: _column(run.scores, f"{kind}_{t}") for t in traits}

    top_flagged, table = TopFlagged(traits, max_samples), FlaggedTable(traits, kind)
    for number, record in flagged_records(run_file(run.directory, FLAGGED_JSONL)):
        top_flagged.add(number, record)  # one pass over flagged.jsonl feeds both
        table.add(number, record)
    top = top_flagged.records()
    trait_views = []
    for trait in traits:
        info = summary.traits[trait]
        interval = info.dataset_score
        reference = _reference_values(run.reference.get("traits", {}).get(trait))
        trait_views.append(
            {
                "name": trait,
                "layer": info.layer,
                "cut": info.cut,
                "cut_rule": info.cut_rule,
                "flagged": info.flagged,
                "mean": interval.mean,
                "low": interval.low,
                "high": interval.high,
                "shift": info.dataset_shift,
                "reference_n": None if reference is None else run.reference["traits"][trait]["n"],
                "plot": plots.histogram(
                    trait,
                    columns[trait],
                    reference,
                    info.cut,
                    (interval.mean, interval.low, interval.high),
                    SCORE_NAMES.get(kind, kind),
                ),
                "samples": [_sample_view(r, traits, kind) for r in top[trait]],
                "more": max(0, info.flagged - len(top[trait])),
            }
        )
    pairs = list(combinations(traits[:MAX_SCATTER_TRAITS], 2))
    scatter = (
        plots.scatter(pairs, columns, flagged, SHORT_SCORE_NAMES.get(kind, kind))
        if pairs and len(run.scores)
        else None
    )
    categories = category_breakdown(run.scores, summary.categories, traits)
    return (
        template_environment()
        .get_template("report.html.j2")
        .render(
            summary=summary,
            shift_alarm=DATASET_SHIFT_ALARM
            if any(info.dataset_shift for info in summary.traits.values())
            else None,
            counts=summary.counts,
            score_name=SCORE_NAMES.get(kind, kind),
            traits=trait_views,
            scatter=scatter,
            scatter_capped=int((~flagged).sum()) > plots.MAX_SCATTER_POINTS,
            max_scatter=plots.MAX_SCATTER_POINTS,
            categories=categories,
            clusters=summary.clusters,
            max_samples=max_samples,
            preview_chars=PREVIEW_CHARS,
            table=table.as_json(),
            table_script=Markup(table_script()),
            script_hash=script_hash(),
            validation=None if run.validation is None else _validation_view(run.validation),
        )
    )


def write_report(
    directory: Path, *, out: Path | None = None, max_samples: int = DEFAULT_MAX_SAMPLES
) -> Path:
    """Render the run in `directory` to `out` (default: report.html inside it)."""
    target = out if out is not None else directory / REPORT_HTML
    html = render_report(load_run(directory, scores_columns=drawn_columns), max_samples=max_samples)
    try:
        write_text_atomic(target, html)
    except OSError as exc:
        raise ScreenerError(f"cannot write the report to {target}: {exc.strerror}") from None
    return target
