"""Persona vector files: safetensors with one `[L+1, d]` float32 tensor per trait, plus JSON
metadata under the `screener` key.

The metadata records the model (id, fingerprint, L, d), the layer convention, and per trait the
chosen layer, the held-out AUROC of every layer and how the vector was made; also the screener
version and the exact command. Loading validates all of it; `check_model` refuses a file made
for another model. The shipped file for the embedded model is `builtin`.

    vectors = load_vectors("builtin", model=loaded)
    unit = vectors.unit("evil")        # (d,) unit vector at the chosen layer
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from screener.atomic import atomic_path
from screener.errors import VectorFileError
from screener.layers import LAYER_CONVENTION
from screener.model import LoadedModel

FORMAT_VERSION = 1
BUILTIN_DIR = Path(__file__).parent / "builtin"
BUILTIN_FILE = BUILTIN_DIR / "smollm2-135m-instruct.safetensors"


@dataclass
class TraitVector:
    """One trait's vectors for every layer, and how good each layer is."""

    trait: str
    vectors: torch.Tensor  # (L+1, d) float32, unnormalised
    chosen_layer: int
    heldout_auroc: list[float | None]  # per layer; None where unknown (imported vectors)
    details: dict[str, Any] = field(default_factory=dict)  # counts, settings, judge, source

    def unit(self, layer: int | None = None) -> torch.Tensor:
        """The unit vector at `layer` (default: the chosen layer), shape (d,)."""
        vector = self.vectors[self.chosen_layer if layer is None else layer]
        return vector / vector.norm()


@dataclass
class VectorFile:
    """Persona vectors of several traits for one model."""

    model_id: str
    fingerprint: str
    num_layers: int
    hidden_size: int
    traits: dict[str, TraitVector]
    command: str = ""
    screener_version: str = ""
    path: str | None = None

    @classmethod
    def for_model(
        cls, loaded: LoadedModel, traits: dict[str, TraitVector], command: str = ""
    ) -> VectorFile:
        """Vectors of `traits` for the loaded model, stamped with this screener version."""
        from screener import __version__

        config = loaded.model.config.get_text_config()
        return cls(
            loaded.name,
            loaded.fingerprint,
            int(config.num_hidden_layers),
            int(config.hidden_size),
            traits,
            command,
            __version__,
        )

    def trait(self, name: str) -> TraitVector:
        if name not in self.traits:
            where = self.path or "the vector file"
            raise VectorFileError(
                f"{where} has no vector for trait {name!r}; it has {', '.join(self.traits)}"
            )
        return self.traits[name]

    def unit(self, name: str) -> torch.Tensor:
        return self.trait(name).unit()

    def metadata(self) -> dict[str, Any]:
        """The JSON metadata stored in the file."""
        return {
            "format_version": FORMAT_VERSION,
            "model": {
                "id": self.model_id,
                "fingerprint": self.fingerprint,
                "num_layers": self.num_layers,
                "hidden_size": self.hidden_size,
            },
            "layer_convention": LAYER_CONVENTION,
            "screener_version": self.screener_version,
            "command": self.command,
            "traits": {
                name: {
                    "chosen_layer": t.chosen_layer,
                    "heldout_auroc": t.heldout_auroc,
                    **t.details,
                }
                for name, t in self.traits.items()
            },
        }

    def check_model(self, loaded: LoadedModel) -> None:
        """Refuse to pair these vectors with a model they were not extracted from."""
        config = loaded.model.config.get_text_config()
        hidden = getattr(config, "hidden_size", None)
        if loaded.fingerprint != self.fingerprint or hidden != self.hidden_size:
            raise VectorFileError(
                f"{self.path or 'these vectors'} belong to model {self.model_id} (fingerprint "
                f"{self.fingerprint}, hidden size {self.hidden_size}), not to {loaded.name} "
                f"(fingerprint {loaded.fingerprint}, hidden size {hidden}): extract vectors for "
                f"this model with `screener extract --model {loaded.spec}`"
            )


def save_vectors(vectors: VectorFile, path: Path) -> None:
    """Write a vector file atomically."""
    tensors = {name: t.vectors.float().contiguous() for name, t in vectors.traits.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"screener": json.dumps(vectors.metadata())})


def _resolve(spec: str | Path) -> Path:
    if str(spec) == "builtin":
        if not BUILTIN_FILE.exists():
            raise VectorFileError(
                f"the builtin vector file {BUILTIN_FILE} is missing: reinstall screener"
            )
        return BUILTIN_FILE
    return Path(spec)


def load_vectors(spec: str | Path, *, model: LoadedModel | None = None) -> VectorFile:
    """Read and validate a vector file (`builtin` for the shipped one); with `model`, also
    check that the vectors belong to it."""
    path = _resolve(spec)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            meta = json.loads((handle.metadata() or {}).get("screener", "null"))
    except (OSError, SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise VectorFileError(f"{path}: not a readable safetensors vector file ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise VectorFileError(
            f"{path}: no screener metadata (format {FORMAT_VERSION}); "
            "import reference .pt vectors with `screener vectors import`"
        )
    try:
        model_meta, trait_meta = meta["model"], meta["traits"]
        num_layers, hidden = int(model_meta["num_layers"]), int(model_meta["hidden_size"])
        traits = {}
        for name, info in trait_meta.items():
            details = {k: v for k, v in info.items() if k not in ("chosen_layer", "heldout_auroc")}
            traits[name] = TraitVector(
                name, tensors[name], int(info["chosen_layer"]), list(info["heldout_auroc"]), details
            )
        vector_file = VectorFile(
            model_meta["id"],
            model_meta["fingerprint"],
            num_layers,
            hidden,
            traits,
            meta.get("command", ""),
            meta.get("screener_version", ""),
            str(path),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VectorFileError(f"{path}: incomplete screener metadata ({exc!r})") from exc
    for trait in traits.values():
        validate_trait_vector(trait, num_layers, hidden, str(path))
    if model is not None:
        vector_file.check_model(model)
    return vector_file


def validate_trait_vector(
    trait: TraitVector, num_layers: int, hidden_size: int, where: str
) -> None:
    """Shape, finiteness and layer range of one trait's vectors."""
    expected = (num_layers + 1, hidden_size)
    if tuple(trait.vectors.shape) != expected:
        raise VectorFileError(
            f"{where}: trait {trait.trait} has shape {tuple(trait.vectors.shape)}, "
            f"expected {expected} (L+1 rows, one per hidden-state layer)"
        )
    if not torch.isfinite(trait.vectors).all():
        raise VectorFileError(f"{where}: trait {trait.trait} contains NaN or infinite values")
    if not 0 <= trait.chosen_layer <= num_layers:
        raise VectorFileError(
            f"{where}: trait {trait.trait} chose layer {trait.chosen_layer}, "
            f"outside 0..{num_layers}"
        )
    if len(trait.heldout_auroc) != num_layers + 1 or any(
        a is not None and not (isinstance(a, float) and math.isfinite(a))
        for a in trait.heldout_auroc
    ):
        raise VectorFileError(
            f"{where}: trait {trait.trait} needs one held-out AUROC (or null) per layer"
        )


def import_reference_vectors(
    path: Path, trait: str, loaded: LoadedModel, chosen_layer: int
) -> TraitVector:
    """A `{trait}_response_avg_diff.pt` tensor from the reference implementation ([L+1, d]),
    loaded with `weights_only=True` (no pickled code runs), checked against `loaded`."""
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of any non-torch pickle
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            value = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's advice to unpickle anyway is not repeated
        raise VectorFileError(
            f"{path}: not a plain tensor file: it holds pickled Python objects, which screener "
            "never loads (save the tensor alone with torch.save(tensor, path))"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... for broken files
        raise VectorFileError(
            f"{path}: not a plain tensor file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(value, torch.Tensor):
        raise VectorFileError(
            f"{path}: holds a {type(value).__name__}, expected one [L+1, d] tensor"
        )
    config = loaded.model.config.get_text_config()
    num_layers, hidden = int(config.num_hidden_layers), int(config.hidden_size)
    vector = TraitVector(
        trait,
        value.float(),
        chosen_layer,
        [None] * (num_layers + 1),
        {"source": f"imported from {path.name}"},
    )
    validate_trait_vector(vector, num_layers, hidden, str(path))
    return vector
