"""Screening: score a dataset against persona vectors, flag, categorise and write the outputs."""

from screener.screen.calibrate import calibrate
from screener.screen.calibration import Calibration, load_calibration, save_calibration
from screener.screen.flags import FlagRule
from screener.screen.run import ScreenResult, screen
from screener.screen.scoring import DEFAULT_BASE_TOKENS, ScoredSample

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
