"""screener: screen finetuning data for persona risk with persona vectors, before training.

The library API; the `screener` command is a thin layer over it.

    import screener
    result = screener.screen("data.jsonl", traits=["evil"])   # a path, or rows in memory
    result.to_dataset().filter(lambda row: not row["flagged"])

The jobs (`screen`, `calibrate`, `extract`, `validate`, `gate`) and `load_run`, which reads a
run directory back, are imported on first use, so that
`import screener` and the CLI start without loading their dependencies.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from screener.activations import ActivationCollector, Activations, TokenizedInput
from screener.errors import (
    ConfigError,
    EndpointError,
    InputError,
    MissingDependencyError,
    ModelLoadError,
    ScreenerError,
)
from screener.model import LoadedModel, fingerprint, load_model
from screener.options import (
    GenerationOptions,
    ModelOptions,
    RayOptions,
    ReadOptions,
    ScoringOptions,
)
from screener.reader import FieldNames, read_dataset
from screener.records import Message, RejectedRow, Sample
from screener.render import RenderedSample, Renderer
from screener.served import AnswerServer
from screener.vectors import load_vectors

if TYPE_CHECKING:
    from screener.gating import run_gate as gate
    from screener.run_directory import load_run
    from screener.run_summary import RunSummary
    from screener.screening.calibration_run import calibrate
    from screener.screening.flags import FlagRule
    from screener.screening.result import ScreenResult
    from screener.screening.run import screen
    from screener.validation.run import validate_run as validate
    from screener.vectors.jobs import extract

# name -> (module, attribute): the jobs, imported on first use
_JOBS = {
    "screen": ("screener.screening", "screen"),
    "calibrate": ("screener.screening", "calibrate"),
    "FlagRule": ("screener.screening", "FlagRule"),
    "ScreenResult": ("screener.screening", "ScreenResult"),
    "validate": ("screener.validation.run", "validate_run"),
    "gate": ("screener.gating", "run_gate"),
    "extract": ("screener.vectors.jobs", "extract"),
    "RunSummary": ("screener.run_summary", "RunSummary"),
    "load_run": ("screener.run_directory", "load_run"),
}


def __getattr__(name: str) -> Any:
    if name in _JOBS:
        module, attribute = _JOBS[name]
        return getattr(import_module(module), attribute)
    raise AttributeError(f"module 'screener' has no attribute {name!r}")


__all__ = [
    "ActivationCollector",
    "Activations",
    "AnswerServer",
    "ConfigError",
    "EndpointError",
    "FieldNames",
    "FlagRule",
    "GenerationOptions",
    "InputError",
    "LoadedModel",
    "Message",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelOptions",
    "RayOptions",
    "ReadOptions",
    "RejectedRow",
    "RenderedSample",
    "Renderer",
    "RunSummary",
    "Sample",
    "ScoringOptions",
    "ScreenResult",
    "ScreenerError",
    "TokenizedInput",
    "__version__",
    "calibrate",
    "extract",
    "fingerprint",
    "gate",
    "load_model",
    "load_run",
    "load_vectors",
    "read_dataset",
    "screen",
    "validate",
]
