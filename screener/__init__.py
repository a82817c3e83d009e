"""screener: screen finetuning data for persona risk with persona vectors, before training.

The library API; the `screener` command is a thin layer over it.
"""

from screener.activations import ActivationCollector, Activations, TokenizedInput
from screener.errors import (
    ConfigError,
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

__version__ = "0.1.0"

__all__ = [
    "ActivationCollector",
    "Activations",
    "ConfigError",
    "FieldNames",
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
    "Sample",
    "ScoringOptions",
    "ScreenerError",
    "TokenizedInput",
    "__version__",
    "fingerprint",
    "load_model",
    "read_dataset",
]
