"""Screening: score a dataset against persona vectors, flag, categorise and write the outputs."""

from screener.screening.calibrate import calibrate
from screener.screening.calibration import Calibration, load_calibration, save_calibration
from screener.screening.flags import FlagRule
from screener.screening.run import ScreenResult, screen
from screener.screening.scoring import DEFAULT_BASE_TOKENS, ScoredSample

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
