"""Vector files: round trip, validation, model checks, and import of reference .pt tensors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from screener.errors import VectorFileError
from screener.model import LoadedModel
from screener.vectors import TraitVector, VectorFile, load_vectors, save_vectors
from screener.vectors.store import import_reference_vectors
from tests.conftest import tiny_loaded

L, D = 3, 64  # tiny models: 3 blocks, hidden size 64


@pytest.fixture
def loaded(tiny_tokenizer: PreTrainedTokenizerFast) -> LoadedModel:
    return tiny_loaded("llama", tiny_tokenizer)


def vector_file(loaded: LoadedModel, vectors: torch.Tensor | None = None) -> VectorFile:
    rows = (
        torch.arange((L + 1) * D, dtype=torch.float32).reshape(L + 1, D)
        if vectors is None
        else vectors
    )
    trait = TraitVector("evil", rows, 2, [0.5, 0.75, 0.9, 0.8], {"rollouts": 1, "judge": None})
    return VectorFile(
        "tiny-llama", loaded.fingerprint, L, D, {"evil": trait}, "screener extract ...", "0.1.0"
    )


def test_round_trip_keeps_vectors_and_metadata(loaded: LoadedModel, tmp_path: Path) -> None:
    original = vector_file(loaded)
    save_vectors(original, tmp_path / "v.safetensors")
    again = load_vectors(tmp_path / "v.safetensors", model=loaded)
    assert again.metadata() == original.metadata()
    torch.testing.assert_close(again.trait("evil").vectors, original.trait("evil").vectors)
    row = original.trait("evil").vectors[2]
    torch.testing.assert_close(again.unit("evil"), row / row.norm())
    meta = again.metadata()
    assert meta["layer_convention"].startswith("row l = hidden_states[l]")
    assert (
        meta["traits"]["evil"]["chosen_layer"] == 2
        and meta["model"]["fingerprint"] == loaded.fingerprint
    )
    with pytest.raises(VectorFileError, match="has no vector for trait 'sycophancy'; it has evil"):
        again.trait("sycophancy")


def test_a_file_for_another_model_is_refused(
    loaded: LoadedModel, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    save_vectors(vector_file(loaded), tmp_path / "v.safetensors")
    other = tiny_loaded("llama", tiny_tokenizer, seed=1)
    with pytest.raises(
        VectorFileError, match=r"belong to model tiny-llama .* extract vectors for this model"
    ):
        load_vectors(tmp_path / "v.safetensors", model=other)


def test_invalid_files_are_refused(loaded: LoadedModel, tmp_path: Path) -> None:
    nan = torch.zeros(L + 1, D)
    nan[1, 3] = float("nan")
    save_vectors(vector_file(loaded, nan), tmp_path / "nan.safetensors")
    with pytest.raises(VectorFileError, match="contains NaN or infinite values"):
        load_vectors(tmp_path / "nan.safetensors")
    save_vectors(vector_file(loaded, torch.ones(L, D)), tmp_path / "short.safetensors")
    with pytest.raises(VectorFileError, match=r"shape \(3, 64\), expected \(4, 64\)"):
        load_vectors(tmp_path / "short.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(VectorFileError, match="not a readable safetensors vector file"):
        load_vectors(corrupt)
    from safetensors.torch import save_file

    save_file({"evil": torch.ones(L + 1, D)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(VectorFileError, match="no screener metadata"):
        load_vectors(tmp_path / "bare.safetensors")


def test_import_reference_pt_keeps_the_layer_offset(loaded: LoadedModel, tmp_path: Path) -> None:
    # Reference files have L+1 rows; row l pairs with hidden_states[l]. Mark each row by its index.
    rows = torch.arange(L + 1, dtype=torch.float32)[:, None].expand(L + 1, D).clone()
    path = tmp_path / "evil_response_avg_diff.pt"
    torch.save(rows, path)
    trait = import_reference_vectors(path, "evil", loaded, chosen_layer=2)
    assert trait.vectors[2, 0].item() == 2.0 and trait.vectors[0, 0].item() == 0.0
    torch.testing.assert_close(trait.unit(), torch.full((D,), 1 / D**0.5))
    assert trait.heldout_auroc == [None] * (L + 1)
    vectors = VectorFile("tiny-llama", loaded.fingerprint, L, D, {"evil": trait})
    save_vectors(vectors, tmp_path / "imported.safetensors")
    assert (
        load_vectors(tmp_path / "imported.safetensors", model=loaded).trait("evil").chosen_layer
        == 2
    )


class Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path("/tmp/screener-pwned").touch, ())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_import_never_unpickles_code(loaded: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "evil_response_avg_diff.pt"
    with path.open("wb") as fh:
        pickle.dump(Payload(), fh)
    with pytest.raises(VectorFileError, match="not a plain tensor file"):
        import_reference_vectors(path, "evil", loaded, chosen_layer=1)
    assert not Path("/tmp/screener-pwned").exists()
    torch.save(torch.ones(L, D), path)
    with pytest.raises(VectorFileError, match=r"expected \(4, 64\) \(L\+1 rows"):
        import_reference_vectors(path, "evil", loaded, chosen_layer=1)
