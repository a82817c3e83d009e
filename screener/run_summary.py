"""`RunSummary`: what a screening run did and decided, as summary.json holds it.

    summary = summary_from_json(json.loads(text), path)   # ConfigError names the bad field
    summary.traits["evil"].cut, summary.counts.invariant, summary.as_json()

`as_json()` gives summary.json's content (keys in a fixed order); `summary_from_json` parses it
back, naming the file and the field when something is missing or of the wrong type. Fields
added since the first release (the reader, dataset shifts, style control) may be absent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from screener.errors import ConfigError
from screener.model import ModelIdentity
from screener.options import Method
from screener.reader.formats import FieldNames
from screener.screening.categories import Cluster
from screener.screening.flags import DatasetShift, MeanInterval


@dataclass(frozen=True)
class Counts:
    """Where every row read went: kept + flagged + rejected = rows_read."""

    rows_read: int
    kept: int
    flagged: int
    rejected: int

    @property
    def invariant(self) -> str:
        return (
            f"{self.kept} kept + {self.flagged} flagged + {self.rejected} rejected = "
            f"{self.rows_read} rows read"
        )


@dataclass(frozen=True)
class TraitSummary:
    """One screened trait: its layer, the dataset's mean score, its cut and how many rows it
    flagged."""

    layer: int
    dataset_score: MeanInterval  # mean of the run's score kind, with its 95% interval
    dataset_shift: DatasetShift | None  # against the calibration reference (None: uncalibrated)
    cut: float | None  # None when nothing could be flagged
    cut_rule: str
    flagged: int


@dataclass(frozen=True)
class VectorsSummary:
    path: str | None
    model: str
    layer_convention: str


@dataclass(frozen=True)
class ReferenceSummary:
    """The calibration's reference data, as the calibration file records it."""

    data: list[str]
    name: str
    rows_read: int
    scored: int
    rejected: int


@dataclass(frozen=True)
class StyleSummary:
    components: int
    cosine: float
    explained: float


@dataclass(frozen=True)
class CalibrationSummary:
    path: str | None
    reference: ReferenceSummary
    traits: list[str]
    style_control: dict[str, StyleSummary]


@dataclass(frozen=True)
class GenerationSummary:
    """How the model's own (base) answers were written. `server`: the served model and URL
    that wrote them (`MODEL@URL`), None when the model wrote them in-process; `dtype` is then
    the in-process precision the run asked for, not the server's."""

    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    dtype: str
    server: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The summary.json object: `server` only when a server wrote the answers."""
        found = asdict(self)
        if self.server is None:
            del found["server"]
        return found


@dataclass(frozen=True)
class RunSummary:
    """What a screening run did and decided: the content of summary.json."""

    data: str
    reader_format: str
    fields: FieldNames
    counts: Counts
    method: Method
    score: str  # the score flagged on: `delta` (ΔP) or `prompt_last`
    traits: dict[str, TraitSummary]
    categories: dict[str, int]  # flagged rows per category
    clusters: list[Cluster]
    model: ModelIdentity
    vectors: VectorsSummary
    calibration: CalibrationSummary | None
    generation: GenerationSummary | None  # None for prompt-last, which writes no answers
    notes: list[str]
    versions: dict[str, str]  # package -> version
    command: str

    @property
    def approximate(self) -> bool:
        """True for the prompt-last method, which predicts ΔP without writing answers."""
        return self.method == "prompt-last"

    def as_json(self) -> dict[str, Any]:
        """The summary as summary.json writes it (keys in a fixed order)."""
        return {
            "data": self.data,
            "reader": {"format": self.reader_format, "fields": asdict(self.fields)},
            "counts": {**asdict(self.counts), "invariant": self.counts.invariant},
            "method": self.method,
            "approximate": self.approximate,
            "score": self.score,
            "traits": {
                trait: {
                    "layer": info.layer,
                    f"dataset_{self.score}": info.dataset_score.as_dict(),
                    "dataset_shift": None
                    if info.dataset_shift is None
                    else info.dataset_shift.as_dict(),
                    "cut": info.cut,
                    "cut_rule": info.cut_rule,
                    "flagged": info.flagged,
                }
                for trait, info in self.traits.items()
            },
            "categories": dict(self.categories),
            "clusters": [
                {"id": c.id, "size": c.size, "words": list(c.words)} for c in self.clusters
            ],
            "model": asdict(self.model),
            "vectors": asdict(self.vectors),
            "calibration": None if self.calibration is None else asdict(self.calibration),
            "generation": None if self.generation is None else self.generation.as_dict(),
            "notes": list(self.notes),
            "versions": dict(self.versions),
            "command": self.command,
        }


T = TypeVar("T")


class _Fields:
    """Typed reads from one JSON object of a file, with errors that name the file and field."""

    def __init__(self, data: Any, path: Path, where: str) -> None:
        if not isinstance(data, Mapping):
            raise _wrong(path, where, "an object")
        self.data, self.path, self.where = data, path, where

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type[T] | tuple[type, ...], *, optional: bool = False) -> T:
        """The value of `key`, which must be of `kind` (or None, when `optional`)."""
        if key not in self.data:
            raise ConfigError(
                f"{self.path}: field {self._name(key)} is missing; rerun `screener screen` "
                "(the run was written by another version, or the file was edited)"
            )
        value = self.data[key]
        if value is None and optional:
            return cast(T, None)
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise _wrong(self.path, self._name(key), _describe(kind))
        if not isinstance(value, kind):
            raise _wrong(self.path, self._name(key), _describe(kind))
        return cast(T, value)

    def number(self, key: str) -> float:
        return float(self.get(key, (int, float)))

    def optional_number(self, key: str) -> float | None:
        value: float | None = self.get(key, (int, float), optional=True)
        return None if value is None else float(value)

    def child(self, key: str) -> _Fields:
        return _Fields(self.get(key, dict), self.path, self._name(key))

    def children(self, key: str) -> dict[str, _Fields]:
        return {
            name: _Fields(value, self.path, f"{self._name(key)}.{name}")
            for name, value in self.get(key, dict).items()
        }

    def optional_child(self, key: str, parse: Callable[[_Fields], T]) -> T | None:
        return None if self.get(key, dict, optional=True) is None else parse(self.child(key))

    def has(self, key: str) -> bool:
        """Whether `key` is present (fields added since the first release may be absent)."""
        return key in self.data

    def strings(self, key: str) -> list[str]:
        values = self.get(key, list)
        if not all(isinstance(v, str) for v in values):
            raise _wrong(self.path, self._name(key), "a list of strings")
        return list(values)


def _describe(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "a whole number", dict: "an object", list: "a list"}
    return "a number" if isinstance(kind, tuple) else names.get(kind, kind.__name__)


def _wrong(path: Path, field: str, expected: str) -> ConfigError:
    return ConfigError(f"{path}: field {field or '(top)'} should be {expected}; rerun the screen")


def _trait(fields: _Fields, score: str) -> TraitSummary:
    interval = fields.child(f"dataset_{score}")
    mean = MeanInterval(
        interval.optional_number("mean"),
        interval.optional_number("ci95_low"),
        interval.optional_number("ci95_high"),
        interval.get("n", int),
    )
    shift = (
        fields.optional_child(
            "dataset_shift",
            lambda f: DatasetShift(f.number("shift"), f.number("ci95_low"), f.number("ci95_high")),
        )
        if fields.has("dataset_shift")  # absent in runs before the shift alarm
        else None
    )
    return TraitSummary(
        layer=fields.get("layer", int),
        dataset_score=mean,
        dataset_shift=shift,
        cut=fields.optional_number("cut"),
        cut_rule=fields.get("cut_rule", str),
        flagged=fields.get("flagged", int),
    )


def _calibration(fields: _Fields) -> CalibrationSummary:
    reference = fields.child("reference")
    return CalibrationSummary(
        path=fields.get("path", str, optional=True),
        reference=ReferenceSummary(
            data=reference.strings("data"),
            name=reference.get("name", str),
            rows_read=reference.get("rows_read", int),
            scored=reference.get("scored", int),
            rejected=reference.get("rejected", int),
        ),
        traits=fields.strings("traits"),
        style_control={
            trait: StyleSummary(
                control.get("components", int),
                control.number("cosine"),
                control.number("explained"),
            )
            for trait, control in (
                fields.children("style_control") if fields.has("style_control") else {}
            ).items()
        },
    )


def summary_from_json(data: Any, path: Path) -> RunSummary:
    """A RunSummary from the parsed content of `path` (ConfigError names the bad field)."""
    top = _Fields(data, path, "")
    score = top.get("score", str)
    counts, model, vectors = (top.child(k) for k in ("counts", "model", "vectors"))
    method = top.get("method", str)
    if method not in ("delta", "prompt-last"):
        raise _wrong(path, "method", "delta or prompt-last")
    reader_format, fields = "auto", FieldNames()  # runs before the reader was recorded
    if top.has("reader"):
        reader = top.child("reader")
        names = reader.child("fields")
        reader_format = reader.get("format", str)
        fields = FieldNames(*(names.get(k, str) for k in ("prompt", "response", "id")))
    return RunSummary(
        data=top.get("data", str),
        reader_format=reader_format,
        fields=fields,
        counts=Counts(*(counts.get(k, int) for k in ("rows_read", "kept", "flagged", "rejected"))),
        method=cast(Method, method),
        score=score,
        traits={name: _trait(info, score) for name, info in top.children("traits").items()},
        categories={
            name: top.child("categories").get(name, int) for name in top.get("categories", dict)
        },
        clusters=[
            Cluster(c.get("id", int), c.get("size", int), tuple(c.strings("words")))
            for c in (
                _Fields(value, path, f"clusters[{i}]")
                for i, value in enumerate(top.get("clusters", list))
            )
        ],
        model=ModelIdentity(*(model.get(k, str) for k in ("spec", "name", "fingerprint", "dtype"))),
        vectors=VectorsSummary(
            vectors.get("path", str, optional=True),
            vectors.get("model", str),
            vectors.get("layer_convention", str),
        ),
        calibration=top.optional_child("calibration", _calibration),
        generation=top.optional_child(
            "generation",
            lambda g: GenerationSummary(
                g.get("max_new_tokens", int),
                g.number("temperature"),
                g.number("top_p"),
                g.get("seed", int),
                g.get("dtype", str),
                g.get("server", str) if g.has("server") else None,
            ),
        ),
        notes=top.strings("notes"),
        versions={name: top.child("versions").get(name, str) for name in top.get("versions", dict)},
        command=top.get("command", str),
    )
