"""The gate's rules, from the `[gate]` table of `screener.toml`, parsed and checked:

[gate]
max_flag_rate = 0.10            # at most this share of the added rows may be flagged
flag_rate_confidence = 0.95     # ... judged by the lower bound of the share at this
                                # confidence (0: the observed share itself)
max_mean_rise = { evil = 1.0 }  # dataset-level score, candidate minus baseline, per trait
                                # (a number applies to every trait)
fail_categories = ["harmful_request"]  # any flagged added row of these fails the gate
max_rejected = 0                # added rows that cannot be read or rendered
thresholds = { evil = 4.0 }     # flag cuts (default: the calibrated 95th percentiles)
percentile = 95                 # or: cut at this percentile of the calibration reference
traits = ["evil", "sycophancy", "hallucination"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from screener.errors import ConfigError

CONFIG_NAME = "screener.toml"


@dataclass(frozen=True)
class GateRules:
    """What a change may add; see the module doc for the file format."""

    max_flag_rate: float = 0.10
    # The flag-rate rule fails when the lower bound of the added rows' flag rate, at this
    # one-sided confidence (Clopper-Pearson), is above max_flag_rate. A change of 12 ordinary
    # rows, each flagged with the calibrated 5%, then fails by chance about once in 450 changes
    # (it takes 4 flagged rows) instead of once in 8 (2 rows are 16.7%). 0: the observed rate.
    flag_rate_confidence: float = 0.95
    max_mean_rise: dict[str, float] | float | None = None
    fail_categories: tuple[str, ...] = ()
    max_rejected: int = 0
    thresholds: dict[str, float] = field(default_factory=dict)
    percentile: float | None = None
    traits: tuple[str, ...] | None = None

    def rise_limit(self, trait: str) -> float | None:
        if isinstance(self.max_mean_rise, dict):
            return self.max_mean_rise.get(trait)
        return self.max_mean_rise


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _trait_numbers(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table of trait = number, got {value!r}")
    return {str(k): _number(v, f"{where}.{k}") for k, v in value.items()}


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of names, got {value!r}")
    return tuple(value)


def parse_rules(table: dict[str, Any], where: str) -> GateRules:
    """Rules from a `[gate]` table; `where` names the file in error messages."""
    known = set(GateRules.__dataclass_fields__)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{where}: [gate] has unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    rules: dict[str, Any] = {}
    if "max_flag_rate" in table:
        rate = _number(table["max_flag_rate"], f"{where}: gate.max_flag_rate")
        if not 0 <= rate <= 1:
            raise ConfigError(f"{where}: gate.max_flag_rate must be within 0..1, not {rate}")
        rules["max_flag_rate"] = rate
    if "flag_rate_confidence" in table:
        confidence = _number(table["flag_rate_confidence"], f"{where}: gate.flag_rate_confidence")
        if not 0 <= confidence < 1:
            raise ConfigError(
                f"{where}: gate.flag_rate_confidence must be within 0..1 (1 excluded), not "
                f"{confidence}"
            )
        rules["flag_rate_confidence"] = confidence
    if "max_mean_rise" in table:
        value = table["max_mean_rise"]
        rules["max_mean_rise"] = (
            _trait_numbers(value, f"{where}: gate.max_mean_rise")
            if isinstance(value, dict)
            else _number(value, f"{where}: gate.max_mean_rise")
        )
    if "fail_categories" in table:
        rules["fail_categories"] = _names(
            table["fail_categories"], f"{where}: gate.fail_categories"
        )
    if "max_rejected" in table:
        count = table["max_rejected"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"{where}: gate.max_rejected must be a whole number >= 0")
        rules["max_rejected"] = count
    if "thresholds" in table:
        rules["thresholds"] = _trait_numbers(table["thresholds"], f"{where}: gate.thresholds")
    if "percentile" in table:
        rules["percentile"] = _number(table["percentile"], f"{where}: gate.percentile")
    if "traits" in table:
        rules["traits"] = _names(table["traits"], f"{where}: gate.traits")
    return GateRules(**rules)


def load_rules(path: Path | None) -> GateRules:
    """Rules from `path`, or from ./screener.toml when it exists, else the defaults."""
    if path is None:
        default = Path(CONFIG_NAME)
        if not default.exists():
            return GateRules()
        path = default
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    table = data.get("gate", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: `gate` must be a table ([gate])")
    return parse_rules(table, str(path))
