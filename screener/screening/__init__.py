"""Screening: score a dataset against persona vectors, flag, categorise and write the outputs.

The names below are imported on first use, so that a module of this package (the flags, the
categories) can be imported without loading the whole screening job.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from screener.screening.calibration import Calibration, load_calibration, save_calibration
    from screener.screening.calibration_run import calibrate
    from screener.screening.flags import FlagRule
    from screener.screening.result import ScreenResult
    from screener.screening.run import screen
    from screener.screening.scoring import DEFAULT_BASE_TOKENS, ScoredSample

_MODULE_OF = {
    "calibrate": "calibration_run",
    "Calibration": "calibration",
    "load_calibration": "calibration",
    "save_calibration": "calibration",
    "FlagRule": "flags",
    "ScreenResult": "result",
    "screen": "run",
    "DEFAULT_BASE_TOKENS": "scoring",
    "ScoredSample": "scoring",
}


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(import_module(f"screener.screening.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'screener.screening' has no attribute {name!r}")


__all__ = [
    "DEFAULT_BASE_TOKENS",
    "Calibration",
    "FlagRule",
    "ScoredSample",
    "ScreenResult",
    "calibrate",
    "load_calibration",
    "save_calibration",
    "screen",
]
