"""The vector jobs behind `screener extract` and `screener vectors import`, as library calls.

vector_file = extract(["evil"], model="embedded", out="my_vectors.safetensors")
vector_file = import_vectors([Path("evil_response_avg_diff.pt")], layer=20, out=...)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from screener.atomic import check_writable
from screener.errors import ConfigError
from screener.model import LoadedModel
from screener.options import ModelOptions, resolve_model
from screener.traits import TraitPack, load_pack
from screener.vectors.extract import ExtractionSettings, extract_trait
from screener.vectors.store import (
    TraitVector,
    VectorFile,
    import_reference_vectors,
    save_vectors,
)

# the reference implementation names its files `<trait>_response_avg_diff.pt`
REFERENCE_SUFFIX = "_response_avg_diff"


def extract(
    traits: Sequence[str | TraitPack],
    *,
    model: str | ModelOptions | LoadedModel = "embedded",
    settings: ExtractionSettings | None = None,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    command: str = "",
) -> VectorFile:
    """A persona vector per trait (a pack's name or path, or a TraitPack) for `model`; with
    `out`, saved there (checked writable before any work starts)."""
    packs = [t if isinstance(t, TraitPack) else load_pack(t) for t in traits]
    if not packs:
        raise ConfigError("--traits needs at least one trait name")
    if out is not None:
        check_writable(Path(out))  # before hours of work, without touching an existing file
    say = progress or (lambda message: None)
    loaded = resolve_model(model, say)
    settings = settings or ExtractionSettings()
    vectors = {}
    for pack in packs:
        result = extract_trait(loaded, pack, settings, progress=say)
        vectors[pack.name] = TraitVector(
            pack.name,
            result.vectors,
            result.chosen_layer,
            list(result.heldout_auroc),
            result.details,
        )
        for question, positive, negative in result.examples[:1]:
            say(f"  Q: {question}")
            say(f"  eliciting:   {positive[:160]!r}\n  suppressing: {negative[:160]!r}")
    vector_file = VectorFile.for_model(loaded, vectors, command)
    if out is not None:
        save_vectors(vector_file, Path(out))
    return vector_file


def import_vectors(
    files: Sequence[Path],
    *,
    layer: int,
    model: str | ModelOptions | LoadedModel = "embedded",
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    command: str = "",
) -> VectorFile:
    """Vectors saved by the reference implementation (`<trait>_response_avg_diff.pt`, one
    tensor of all layers each), checked against `model`, with `layer` as the chosen layer."""
    loaded = resolve_model(model, progress)
    traits = {}
    for path in files:
        trait = path.stem.removesuffix(REFERENCE_SUFFIX)
        traits[trait] = import_reference_vectors(path, trait, loaded, layer)
    vector_file = VectorFile.for_model(loaded, traits, command)
    if out is not None:
        save_vectors(vector_file, Path(out))
    return vector_file
