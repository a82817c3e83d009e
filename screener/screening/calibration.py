"""Calibration: what ordinary chat scores, per (model, trait), so a cut means something.

`screener calibrate --reference DATA` screens a reference set of ordinary chat and stores, per
trait and score kind (`delta`, `prompt_last`), the distribution's percentiles, mean and standard
deviation (and the raw values for sets of up to MAX_STORED_VALUES rows, for histograms). The
default flag cut is the reference's 95th percentile. A calibration file sits beside its vector
file as `<stem>.calibration.json`, and records a digest of each trait's unit vector and layer:
a calibration made for other vectors of a trait is not used for it.

A calibration also holds each trait's style control (screener.screening.style): the direction ΔP
is projected on once the reference's author-style subspace is removed, and the distribution of
that style-controlled ΔP (`delta_style`, taken out of fold). `for_scoring` hands a run the
distributions and directions of the scoring it uses.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from screener.atomic import write_text_atomic
from screener.errors import ConfigError
from screener.screening.style import StyleControl
from screener.vectors.store import BUILTIN_FILE, VectorFile

FORMAT_VERSION = 1
DEFAULT_PERCENTILE = 95.0
MAX_STORED_VALUES = 5000
SCORE_KINDS = ("delta", "prompt_last")
STYLE_KIND = "delta_style"  # ΔP along the style-controlled direction, out of fold
# the projection of the model's own (base) answers to the reference prompts: the reference for
# what a deployed model says (`screener monitor conversations`)
ANSWER_KIND = "answer"


def vector_digest(vectors: VectorFile, trait: str) -> str:
    """sha256 of a trait's chosen layer and unit vector: what a calibration is valid for."""
    unit = vectors.unit(trait).float().contiguous().numpy()
    digest = hashlib.sha256(str(vectors.trait(trait).chosen_layer).encode())
    digest.update(unit.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Distribution:
    """Reference scores of one trait and score kind."""

    n: int
    mean: float
    std: float
    percentiles: list[float]  # at 0, 1, ..., 100
    values: list[float] | None = None

    @classmethod
    def of(cls, scores: list[float]) -> Distribution:
        array = np.asarray(scores, dtype=np.float64)
        if array.size == 0:
            raise ConfigError("cannot calibrate on an empty set of scores")
        return cls(
            int(array.size),
            float(array.mean()),
            float(array.std()),
            [float(v) for v in np.percentile(array, np.arange(101))],
            [float(v) for v in array] if array.size <= MAX_STORED_VALUES else None,
        )

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100), interpolated between whole percentiles."""
        return float(np.interp(q, np.arange(101), self.percentiles))


@dataclass
class Calibration:
    """Reference distributions for the traits of one vector file."""

    model_fingerprint: str
    reference: dict[str, Any]
    generation: dict[str, Any]
    traits: dict[str, dict[str, Distribution]]  # trait -> score kind -> distribution
    vector_digests: dict[str, str]
    command: str = ""
    screener_version: str = ""
    path: str | None = None
    style: dict[str, StyleControl] = field(default_factory=dict)  # trait -> its style control

    def as_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model_fingerprint": self.model_fingerprint,
            "reference": self.reference,
            "generation": self.generation,
            "screener_version": self.screener_version,
            "command": self.command,
            "traits": {
                trait: {
                    "vector_sha256": self.vector_digests[trait],
                    **{kind: vars(dist) for kind, dist in kinds.items()},
                    **(
                        {"style_control": self.style[trait].as_json()}
                        if trait in self.style
                        else {}
                    ),
                }
                for trait, kinds in self.traits.items()
            },
        }

    def distribution(self, trait: str, kind: str) -> Distribution | None:
        return self.traits.get(trait, {}).get(kind)

    def for_scoring(self, style_control: bool) -> Calibration:
        """The calibration as a run scores with it. With style control, each trait that has one
        keeps it and its `delta` distribution is the style-controlled one; without, no trait
        keeps a style control (ΔP is taken along the vectors themselves)."""
        if not style_control:
            return replace(self, style={})
        traits = {
            trait: (
                {**kinds, "delta": kinds[STYLE_KIND]}
                if trait in self.style and STYLE_KIND in kinds
                else kinds
            )
            for trait, kinds in self.traits.items()
        }
        return replace(self, traits=traits)

    def directions(self) -> dict[str, np.ndarray]:
        """Per trait with a style control, the direction ΔP is projected on."""
        return {trait: control.direction for trait, control in self.style.items()}


def default_calibration_path(vectors_path: str | Path) -> Path:
    path = BUILTIN_FILE if str(vectors_path) == "builtin" else Path(vectors_path)
    return path.with_name(f"{path.stem}.calibration.json")


def save_calibration(calibration: Calibration, path: Path) -> None:
    write_text_atomic(path, json.dumps(calibration.as_json(), indent=1) + "\n")


def load_calibration(path: Path) -> Calibration:
    """Read a calibration file; ConfigError says what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable calibration file ({exc})") from exc
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: not a screener calibration file (format {FORMAT_VERSION})")
    try:
        traits: dict[str, dict[str, Distribution]] = {}
        style: dict[str, StyleControl] = {}
        digests = {}
        for trait, info in data["traits"].items():
            digests[trait] = str(info["vector_sha256"])
            traits[trait] = {
                kind: Distribution(**info[kind])
                for kind in (*SCORE_KINDS, STYLE_KIND, ANSWER_KIND)
                if kind in info
            }
            if "style_control" in info:
                style[trait] = StyleControl.from_json(info["style_control"])
        return Calibration(
            str(data["model_fingerprint"]),
            dict(data["reference"]),
            dict(data["generation"]),
            traits,
            digests,
            str(data.get("command", "")),
            str(data.get("screener_version", "")),
            str(path),
            style,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: incomplete calibration file ({exc!r})") from exc


def usable_calibration(
    calibration: Calibration, vectors: VectorFile, traits: tuple[str, ...]
) -> tuple[Calibration, list[str]]:
    """The calibration restricted to the traits it is valid for, and a warning per trait that
    had to be dropped (other model, other vectors)."""
    warnings = []
    if calibration.model_fingerprint != vectors.fingerprint:
        warnings.append(
            f"calibration {calibration.path} is for another model (fingerprint "
            f"{calibration.model_fingerprint}); not used"
        )
        kept: dict[str, dict[str, Distribution]] = {}
    else:
        kept = {}
        for trait in traits:
            if trait not in calibration.traits:
                warnings.append(f"calibration {calibration.path} has no trait {trait}")
            elif calibration.vector_digests[trait] != vector_digest(vectors, trait):
                warnings.append(
                    f"calibration {calibration.path} was made with other {trait} vectors; "
                    f"not used for {trait} (run screener calibrate)"
                )
            else:
                kept[trait] = calibration.traits[trait]
    restricted = replace(
        calibration,
        traits=kept,
        vector_digests={t: calibration.vector_digests[t] for t in kept},
        style={t: c for t, c in calibration.style.items() if t in kept},
    )
    return restricted, warnings
